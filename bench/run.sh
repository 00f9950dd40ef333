#!/usr/bin/env bash
# The benchmark entry point: builds release binaries once, then runs in one session, on this
# machine, one after the other (nothing else should run meanwhile):
#   1. ingest    — Probot peer, the HTTP+HMAC ceiling, orch on SQLite and on PostgreSQL (bench/ingest.sh)
#   2. pipeline  — 1,000 triage workflows end to end: GitHub's limits off (SQLite and PostgreSQL),
#                  and on, on a scaled clock (bench/pipeline/run.sh)
#   3. policy    — Gate 2 on a 10,000-file, 200,000-line patch (bench/policy/run.sh)
#   4. footprint — start to ready, idle RSS (bench/footprint/run.sh)
#   5. budget    — rate-limited GitHub requests per workflow kind and per waiting proposal-hour (bench/budget/run.sh)
#   6. context   — the patch context's recall and tokens on real crates' sources (bench/context/run.sh)
# Every output lands in bench/results/run-<time>/ (not committed); summary.txt collects the figures.
#   usage: bench/run.sh            env: SKIP_PG=1 (no PostgreSQL runs), WORKFLOWS=1000
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/orch-bench-target}
run=${OUT:-$root/bench/results/run-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$run"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
pg_isready -q -h 127.0.0.1 2>/dev/null || [ -n "${SKIP_PG:-}" ] || { echo "PostgreSQL is not answering on 127.0.0.1:5432 (or set SKIP_PG=1)" >&2; exit 1; }

echo "== building release binaries ($CARGO_TARGET_DIR)"
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" --bin orch --example pipeline_bench --example policy_bench --example budget_bench --example context_bench
{
  echo "== bench/run.sh $(date -u +%FT%TZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), commit $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo '+changes')"
} | tee "$run/summary.txt"

echo "== 1. ingest"
OUT=$run/ingest "$here/ingest.sh" | tee "$run/ingest.txt"
echo "== 2. pipeline"
OUT=$run/pipeline "$here/pipeline/run.sh" "${WORKFLOWS:-1000}" | tee "$run/pipeline.txt"
echo "== 3. policy"
OUT=$run/policy "$here/policy/run.sh" 30 | tee "$run/policy.txt"
echo "== 4. footprint"
"$here/footprint/run.sh" 5 | tee "$run/footprint.txt"
echo "== 5. budget"
OUT=$run/budget "$here/budget/run.sh" | tee "$run/budget.txt"
echo "== 6. context"
OUT=$run/context "$here/context/run.sh" | tee "$run/context.txt"

{
  echo
  echo "-- ingest (wrk -t1 -c32, 10 s after 3 s warm-up, same signed payload)"
  python3 "$here/summarize.py" "$run/ingest"
  echo
  echo "-- pipeline"
  grep -hE '^(==|[0-9]+ triage|per workflow|orch RSS|orch ready|database|limits on)' "$run/pipeline.txt" || true
  echo
  echo "-- policy"
  grep -hE 'gate2|median' "$run/policy.txt" | head -8 || true
  echo
  echo "-- footprint"
  grep -h 'median' "$run/footprint.txt"
  echo
  echo "-- budget (rate-limited requests)"
  grep -hvE '^==' "$run/budget.txt" || true
  echo
  echo "-- context (patch retrieval)"
  grep -hE '^(==|cases|recall|tokens per pack)' "$run/context.txt" || true
} | tee -a "$run/summary.txt"
echo "results in $run"
