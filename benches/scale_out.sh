#!/usr/bin/env bash
# Several petrel nodes on one shared PostgreSQL (issue 16): local delivery
# and the mixed IMAP workload with one, two and three nodes on one
# database, and one node on the embedded store, same run, alternately:
# benches/scale_out.py. Installs PostgreSQL and Postfix (for smtp-source)
# from Debian's packages if missing (no system instance is used: a private
# server is initdb'ed into a temporary directory), builds petrel and
# benches/imap_load.rs in release mode. Run as root.
#   benches/scale_out.sh                              # everything, 3 runs
#   RUNS=1 DELIVERIES=300 CLIENTS="4" USERS=8 SECONDS_PER_RUN=5 benches/scale_out.sh
#   PARTS=mixed CONFIGS="pg-1 pg-3" benches/scale_out.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || [ ! -x /usr/sbin/smtp-source ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update
  apt-get install -y --no-install-recommends postgresql postfix
fi
cargo build --release --quiet
IMAP_LOAD=$(cargo bench --bench imap_load --no-run 2>&1 | grep -o '[^ (]*/release/deps/imap_load-[0-9a-f]*' | head -1)
export IMAP_LOAD
exec python3 benches/scale_out.py
