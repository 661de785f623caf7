#!/usr/bin/env bash
# petrel against Postfix on this machine, in the same run, alternately.
# Installs Postfix from Debian's packages if missing (unconfigured: no system
# instance starts), builds petrel in release mode, then runs
# benches/compare.py. Run as root (Postfix's master needs it).
#   benches/compare.sh                       # both workloads, 1, 4, 64 KiB x 1, 20, 100 sessions, 3 runs each
#   WORKLOAD=new RUNS=5 SIZES="4096" SESSIONS="20" benches/compare.sh
#   SCALE=0.2 benches/compare.sh             # fewer messages per run (a quick look)
# With sender authentication on (issue 14; see compare.py's docstring):
#   AUTH=sign-ed25519|sign-rsa|verify-ed25519|verify-rsa|sign|verify|all
#   AUTH=all SIZES=4096 SESSIONS=20 benches/compare.sh
# sign-*: petrel DKIM-signs what a relay_from client relays; verify-*: petrel
# as an edge checks SPF, DKIM, DMARC, ARC (enforce) of dkimpy-signed mail from
# an untrusted client and ARC-seals it, with dnsmasq on loopback for DNS.
# Postfix relays the same messages without milters. AUTH unset: neither.
# AUTH other than off installs dnsmasq-base and python3-dkim if missing (the
# check of one message before the runs verifies petrel's headers with dkimpy).
# CARGO_TARGET_DIR is honoured (the binary run is $CARGO_TARGET_DIR/release/
# petrel, or PETREL=path).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/sbin/postfix ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update
  apt-get install -y --no-install-recommends postfix
fi
case "${AUTH:-off}" in
  *sign*|*verify*|*all*)
    if ! command -v dnsmasq >/dev/null || ! /usr/bin/python3 -c 'import dkim' 2>/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y --no-install-recommends dnsmasq-base python3-dkim
    fi ;;
esac
cargo build --release --quiet
exec python3 benches/compare.py
