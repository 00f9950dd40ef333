#!/usr/bin/env bash
# Long fuzz runs (issue 8, item 5): every target of tests/fuzz.rs in a release build for
# FUZZ_SECS seconds each (default 150), printing per target the cases run, the time taken, the
# rate and the seed. A failure prints the seed and case number that replay it in tests/fuzz.rs
# (ORCH_FUZZ_SEED=... ORCH_FUZZ_CASE=... cargo test --test fuzz <target>).
#
#   bench/fuzz.sh                      # 4 targets x 150 s, one after the other (~10 min)
#   FUZZ_SECS=30 FUZZ_THREADS=2 bench/fuzz.sh
#   ORCH_FUZZ_SEED=1234 bench/fuzz.sh  # replay a whole run
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECS:-150}"
threads="${FUZZ_THREADS:-1}"
seed="${ORCH_FUZZ_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
log="$(mktemp -d)/fuzz.log"
echo "fuzz: seed $seed, $secs s per target, $threads at a time, release build, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
cargo build --locked --release --test fuzz --quiet
status=0
ORCH_FUZZ_SEED="$seed" ORCH_FUZZ_SECS="$secs" \
    cargo test --locked --release --test fuzz --quiet -- --nocapture --test-threads="$threads" >"$log" 2>&1 || status=$?
grep -E '^FUZZ [a-z]+: [0-9]|failed:|^replay:|^test result' "$log" || true
echo "full log: $log"
exit "$status"
