#!/usr/bin/env bash
# Pipeline benchmark: WORKFLOWS triage workflows end to end (signed `issues.labeled` webhook into a
# release `orch serve` → proposal comment at the fake GitHub), on SQLite and on PostgreSQL.
#   usage: bench/pipeline/run.sh [WORKFLOWS] [SEND_CONCURRENCY]
#   env:   OUT=dir (default bench/results/pipeline-<time>), SKIP_PG=1, ORCH_* passed to orch
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/orch-bench-target}
out=${OUT:-$root/bench/results/pipeline-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
n=${1:-1000}
conc=${2:-32}

cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" --bin orch --example pipeline_bench
bench=$CARGO_TARGET_DIR/release/examples/pipeline_bench
bin=$CARGO_TARGET_DIR/release/orch

echo "== pipeline, orch on SQLite: $n triage workflows, $conc webhooks in flight"
"$bench" "$bin" "$n" "$conc" | tee "$out/pipeline-sqlite.txt"
if [ -z "${SKIP_PG:-}" ]; then
  echo "== pipeline, orch on PostgreSQL"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS orch_pipeline WITH (FORCE)" -c "CREATE DATABASE orch_pipeline"
  BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/orch_pipeline "$bench" "$bin" "$n" "$conc" | tee "$out/pipeline-postgres.txt"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS orch_pipeline WITH (FORCE)"
fi
