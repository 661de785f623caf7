#!/usr/bin/env bash
# petrel's store and IMAP against Dovecot (and Postfix delivering to it over
# LMTP), same machine, same run, alternately: benches/imap_compare.py.
# Installs Dovecot and Postfix from Debian's packages if missing (no system
# instance is used), builds petrel and benches/imap_load.rs in release mode.
# Run as root.
#   benches/imap_compare.sh                          # everything, 3 runs each
#   PARTS="mixed" CLIENTS="10" RUNS=1 benches/imap_compare.sh
#   BIG=20000 PARTS=big benches/imap_compare.sh      # a smaller big folder
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/sbin/dovecot ] || [ ! -x /usr/lib/dovecot/lmtp ] || [ ! -x /usr/sbin/postfix ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update
  apt-get install -y --no-install-recommends dovecot-imapd dovecot-lmtpd postfix
fi
cargo build --release --quiet
IMAP_LOAD=$(cargo bench --bench imap_load --no-run 2>&1 | grep -o '[^ (]*/release/deps/imap_load-[0-9a-f]*' | head -1)
export IMAP_LOAD
exec python3 benches/imap_compare.py
