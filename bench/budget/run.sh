#!/usr/bin/env bash
# Budget benchmark: the rate-limited GitHub requests of each workflow kind (triage, QA plan,
# patch) and of a waiting proposal per hour, counted at the fake GitHub (bench/budget/budget_bench.rs).
#   usage: bench/budget/run.sh        env: OUT=dir (default bench/results/budget-<time>)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/orch-bench-target}
out=${OUT:-$root/bench/results/budget-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" --bin orch --example budget_bench
"$CARGO_TARGET_DIR/release/examples/budget_bench" "$CARGO_TARGET_DIR/release/orch" | tee "$out/budget.txt"
