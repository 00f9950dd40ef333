#!/usr/bin/env bash
# Retrieval benchmark (issue 15): the patch context orch builds (src/llm/retrieval.rs and the
# context pack) for each case of cases.json, over the sources of real crates in cargo's registry
# (`cargo fetch --locked` brings them). Prints each case, recall and the tokens of the packs, at
# the default patch budget (32,000 tokens) and at a quarter of it.
#   usage: bench/context/run.sh [BUDGET ...]     env: OUT=dir (default bench/results/context-<time>)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/orch-bench-target}
out=${OUT:-$root/bench/results/context-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
cargo fetch --locked --quiet --manifest-path "$root/Cargo.toml"
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" --example context_bench
bin=$CARGO_TARGET_DIR/release/examples/context_bench
budgets=("$@")
[ ${#budgets[@]} -gt 0 ] || budgets=(32000 8000)
for budget in "${budgets[@]}"; do
  echo "== budget $budget tokens, $(date -u +%FT%TZ), commit $(git -C "$root" rev-parse --short HEAD)"
  "$bin" "$here/cases.json" "$budget" | tee "$out/context-$budget.txt"
done
