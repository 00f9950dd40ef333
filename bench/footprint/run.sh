#!/usr/bin/env bash
# Footprint: time from spawning a release `orch serve` (embedded defaults: a fresh SQLite file,
# migrations run at start) to its first 200 from /health, and its RSS once idle. Repeated RUNS
# times; prints each run and the median.
#   usage: bench/footprint/run.sh [RUNS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/orch-bench-target}
runs=${1:-5}
port=${ORCH_PORT:-3996}
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" --bin orch
bin=$CARGO_TARGET_DIR/release/orch
results=()
for i in $(seq "$runs"); do
  dir=$(mktemp -d /tmp/orch-footprint.XXXXXX)
  t0=$(date +%s%N)
  ORCH_BIND=127.0.0.1:$port ORCH_DATABASE_URL="sqlite://$dir/orch.db" ORCH_WEBHOOK_SECRET=footprint-secret \
    ORCH_PAYLOAD_DIR=$dir/payloads RUST_LOG=warn "$bin" serve >"$dir/orch.log" 2>&1 &
  pid=$!
  until curl -sf -o /dev/null "127.0.0.1:$port/health"; do
    kill -0 $pid 2>/dev/null || { cat "$dir/orch.log"; exit 1; }
    sleep 0.002
  done
  t1=$(date +%s%N)
  sleep 2
  rss=$(ps -o rss= -p $pid | tr -d ' ')
  ready_ms=$(( (t1 - t0) / 1000000 ))
  echo "run $i: ready after ${ready_ms} ms, idle RSS $(awk "BEGIN{printf \"%.1f\", $rss/1024}") MB"
  results+=("$ready_ms $rss")
  kill -TERM $pid; wait $pid || true
  rm -rf "$dir"
done
printf '%s\n' "${results[@]}" | sort -n | awk '{r[NR]=$1} END{printf "median ready after %d ms\n", r[int((NR+1)/2)]}'
printf '%s\n' "${results[@]}" | sort -k2 -n | awk '{m[NR]=$2} END{printf "median idle RSS %.1f MB (max %.1f MB)\n", m[int((NR+1)/2)]/1024, m[NR]/1024}'
