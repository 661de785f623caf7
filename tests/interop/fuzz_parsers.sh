#!/usr/bin/env bash
# Runs the parser property tests (tests/parser_properties.rs) in release
# mode, batch after batch, for at least SECONDS (default 600), and prints
# how many cases ran. Any failure stops it with proptest's minimal case.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_WANTED=${1:-600}
BATCH=${BATCH:-50000}
cargo test --release --test parser_properties --no-run >/dev/null 2>&1
start=$(date +%s); batches=0
while [ $(( $(date +%s) - start )) -lt "$SECONDS_WANTED" ]; do
  PROPTEST_CASES=$BATCH cargo test --release --test parser_properties -q >/dev/null 2>&1 || {
    echo "FAILED in batch $((batches + 1))"; PROPTEST_CASES=$BATCH cargo test --release --test parser_properties; exit 1; }
  batches=$((batches + 1))
done
elapsed=$(( $(date +%s) - start ))
echo "parser properties: $batches batches x 5 properties x $BATCH cases = $((batches * 5 * BATCH)) cases in ${elapsed}s, no failure"
