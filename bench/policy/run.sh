#!/usr/bin/env bash
# Policy benchmark: Gate 2 on 10,000 changed files / 200,000 changed lines against 200 path rules
# and 50 configured dangerous patterns, on one core (taskset -c 0). Builds in release first.
#   usage: bench/policy/run.sh [ITERATIONS] [FILES] [LINES_PER_FILE]
#   env:   OUT=dir (default bench/results/policy-<time>), PERF=1 also records a perf profile
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/orch-bench-target}
out=${OUT:-$root/bench/results/policy-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" --example policy_bench
bin=$CARGO_TARGET_DIR/release/examples/policy_bench
pin=()
command -v taskset >/dev/null && pin=(taskset -c 0)

{
  echo "== $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  "${pin[@]}" "$bin" "$@"
} | tee "$out/policy.txt"

if [ -n "${PERF:-}" ]; then
  "${pin[@]}" perf record -q -g -o "$out/perf.data" "$bin" "${1:-30}" "${@:2}" >/dev/null 2>&1
  perf report -i "$out/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25 | tee "$out/profile.txt"
fi
