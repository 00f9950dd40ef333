#!/usr/bin/env bash
# Webhook ingest benchmark: orch (SQLite and PostgreSQL, every delivery durably stored before the
# answer) against the Probot peer and the HTTP+HMAC ceiling, same signed payload, same wrk
# settings (1 thread, 32 connections, 10 s after a 3 s warm-up), same session.
#   usage: bench/ingest.sh [BODY_JSON] [CONNECTIONS] [SECONDS]
#   env:   ORCH_DURABILITY=fsync|os (default fsync), SKIP_PEER=1, SKIP_CEILING=1, SKIP_PG=1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
shared=$(cd "$root/../shared" && pwd)
body=${1:-$shared/reference/webhooks/issue_comment/created.with-installation.payload.json}
conns=${2:-32}
secs=${3:-10}
secret=bench-secret
port=${ORCH_PORT:-3997}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/orch-bench-target}
out=${OUT:-$root/bench/results/ingest-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
bin=$CARGO_TARGET_DIR/release/orch
sig=$(openssl dgst -sha256 -hmac "$secret" "$body" | sed 's/.*= //')

run_orch() { # $1 label, $2 database url (ORCH_* variables in the environment pass through)
  local label=$1 url=$2 dir
  dir=$(mktemp -d /tmp/orch-bench.XXXXXX)
  ORCH_BIND=127.0.0.1:$port ORCH_DATABASE_URL=$url ORCH_WEBHOOK_SECRET=$secret ORCH_PAYLOAD_DIR=$dir/payloads \
    ORCH_DURABILITY=${ORCH_DURABILITY:-fsync} RUST_LOG=warn "$bin" serve >"$out/$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/health" && break; sleep 0.1; done
  echo "orch $label idle rss_kb: $(ps -o rss= -p $pid | tr -d ' ')" | tee "$out/$label.txt"
  BODY=$body SIG=$sig WPATH=/webhook wrk -t1 -c"$conns" -d3s -s "$shared/bench/peer-probot/post.lua" "http://127.0.0.1:$port" >/dev/null
  BODY=$body SIG=$sig WPATH=/webhook wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$shared/bench/peer-probot/post.lua" \
    "http://127.0.0.1:$port" | tee -a "$out/$label.txt"
  echo "orch $label loaded rss_kb: $(ps -o rss= -p $pid | tr -d ' ')" | tee -a "$out/$label.txt"
  echo "orch $label at end of load: $(curl -s 127.0.0.1:$port/health)" | tee -a "$out/$label.txt"
  # Processing yields to ingest under pressure; measure how long the queue takes to drain.
  local t0 depth
  t0=$(date +%s.%N)
  while [ "${ORCH_WORKERS:-16}" != 0 ]; do
    depth=$(curl -s 127.0.0.1:$port/health | python3 -c 'import json,sys; print(json.load(sys.stdin)["queueDepth"])')
    [ "$depth" = 0 ] && break
    sleep 0.2
  done
  echo "orch $label drain_secs: $(python3 -c "import time; print(round(time.time() - $t0, 1))")" | tee -a "$out/$label.txt"
  echo "orch $label after drain: $(curl -s 127.0.0.1:$port/health)" | tee -a "$out/$label.txt"
  kill -TERM $pid; wait $pid || true
  rm -rf "$dir"
}

echo "== payload $(wc -c <"$body") bytes, $conns connections, ${secs}s, durability ${ORCH_DURABILITY:-fsync}"
if [ -z "${SKIP_PEER:-}" ]; then
  echo "== Probot peer"; "$shared/bench/peer-probot/run.sh" "$body" "$secret" "$conns" "$secs" | tee "$out/probot.txt"
fi
if [ -z "${SKIP_CEILING:-}" ]; then
  echo "== ceiling (HTTP + HMAC only)"; MODE=none "$shared/bench/ceiling/run.sh" "$body" "$secret" "$conns" "$secs" | tee "$out/ceiling.txt"
fi
echo "== orch on SQLite"
run_orch sqlite "sqlite:///tmp/orch-bench-$$.db"
rm -f /tmp/orch-bench-$$.db*
if [ -z "${SKIP_PG:-}" ]; then
  echo "== orch on PostgreSQL"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS orch_bench WITH (FORCE)" -c "CREATE DATABASE orch_bench"
  run_orch postgres "postgres://postgres@127.0.0.1:5432/orch_bench"
  echo "== orch on PostgreSQL, raw bodies in the local archive (ORCH_PAYLOAD_STORE=archive)"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS orch_bench WITH (FORCE)" -c "CREATE DATABASE orch_bench"
  ORCH_PAYLOAD_STORE=archive run_orch postgres-archive "postgres://postgres@127.0.0.1:5432/orch_bench"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS orch_bench WITH (FORCE)"
fi
python3 "$here/summarize.py" "$out"
