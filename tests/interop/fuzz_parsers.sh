#!/usr/bin/env bash
# Runs the parser property tests (tests/parser_properties.rs for SMTP,
# tests/imap_parser_properties.rs for IMAP) batch after batch, for at least
# SECONDS (default 600), and prints how many cases ran. Any failure stops it
# with proptest's minimal case. PROFILE=debug skips the release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_WANTED=${1:-600}
BATCH=${BATCH:-50000}
SUITES=${SUITES:-"parser_properties imap_parser_properties"}
if [ "${PROFILE:-release}" = release ]; then release=--release; else release=; fi
args=()
for s in $SUITES; do args+=(--test "$s"); done
cargo test $release "${args[@]}" --no-run >/dev/null 2>&1
properties=$(cargo test $release "${args[@]}" -- --list 2>/dev/null | grep -c ': test$')
start=$(date +%s); batches=0
while [ $(( $(date +%s) - start )) -lt "$SECONDS_WANTED" ]; do
  PROPTEST_CASES=$BATCH cargo test $release "${args[@]}" -q >/dev/null 2>&1 || {
    echo "FAILED in batch $((batches + 1))"; PROPTEST_CASES=$BATCH cargo test $release "${args[@]}"; exit 1; }
  batches=$((batches + 1))
done
elapsed=$(( $(date +%s) - start ))
echo "parser properties ($SUITES): $batches batches x $properties properties x $BATCH cases = $((batches * properties * BATCH)) cases in ${elapsed}s, no failure"
