#!/usr/bin/env bash
# Pipeline benchmark: WORKFLOWS triage workflows end to end (signed `issues.labeled` webhook into a
# release `orch serve` → proposal comment at the fake GitHub), in two figures:
#   1. limits off: the fake applies no rate limit (orch's own overhead), on SQLite and on PostgreSQL;
#   2. limits on: the same burst under GitHub's limits (5,000 requests/h, 80 content-creating/min,
#      500/h per installation) on a clock TIME_SCALE× real time (default 60: an hour of GitHub's
#      time is a real minute), on SQLite; the least time the limits allow and orch's ratio to it.
#   usage: bench/pipeline/run.sh [WORKFLOWS] [SEND_CONCURRENCY]
#   env:   OUT=dir (default bench/results/pipeline-<time>), SKIP_PG=1, SKIP_LIMITS=1, TIME_SCALE=60,
#          ORCH_* passed to orch
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

echo "== pipeline, limits off, orch on SQLite: $n triage workflows, $conc webhooks in flight"
BENCH_GITHUB_LIMITS=off "$bench" "$bin" "$n" "$conc" | tee "$out/pipeline-sqlite.txt"
if [ -z "${SKIP_PG:-}" ]; then
  echo "== pipeline, limits off, orch on PostgreSQL"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS orch_pipeline WITH (FORCE)" -c "CREATE DATABASE orch_pipeline"
  BENCH_GITHUB_LIMITS=off BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/orch_pipeline "$bench" "$bin" "$n" "$conc" | tee "$out/pipeline-postgres.txt"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS orch_pipeline WITH (FORCE)"
fi
if [ -z "${SKIP_LIMITS:-}" ]; then
  echo "== pipeline, limits on (GitHub's, clock x${TIME_SCALE:-60}), orch on SQLite: $n triage workflows"
  # A failed run is reported (the bench says why) and does not stop the other figures.
  BENCH_GITHUB_LIMITS=real BENCH_TIME_SCALE=${TIME_SCALE:-60} "$bench" "$bin" "$n" "$conc" 2>&1 | tee "$out/pipeline-limits-sqlite.txt" \
    || echo "limits on: the run failed (see above)"
fi
