#!/usr/bin/env bash
# petrel against Postfix on this machine, in the same run, alternately.
# Installs Postfix from Debian's packages if missing (unconfigured: no system
# instance starts), builds petrel in release mode, then runs
# benches/compare.py. Run as root (Postfix's master needs it).
#   benches/compare.sh                       # both workloads, 1, 4, 64 KiB x 1, 20, 100 sessions, 3 runs each
#   WORKLOAD=new RUNS=5 SIZES="4096" SESSIONS="20" benches/compare.sh
#   SCALE=0.2 benches/compare.sh             # fewer messages per run (a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/sbin/postfix ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update
  apt-get install -y --no-install-recommends postfix
fi
cargo build --release --quiet
exec python3 benches/compare.py
