#!/usr/bin/env bash
# `make demo`: the fake API on loopback, two syncs into qfsync.db, then the run history.
# Needs no credentials: the fake's demo keys are public by design.
set -euo pipefail
port=${1:-8765}
jobs=${2:-3000}
qfsync=.venv/bin/qfsync

$qfsync fake-api --port "$port" --jobs "$jobs" 2>/dev/null &
fake=$!
trap 'kill $fake 2>/dev/null; wait $fake 2>/dev/null || true' EXIT

export QIANFAN_CONSOLE_API_BASE_URL="http://127.0.0.1:$port"
export QIANFAN_ACCESS_KEY=qfsync-demo-ak QIANFAN_SECRET_KEY=qfsync-demo-sk
export QFSYNC_DATABASE_URL=sqlite:///qfsync.db
rm -f qfsync.db qfsync.db-wal qfsync.db-shm  # the demo starts from an empty database
for _ in $(seq 50); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 $fake 2>/dev/null || { echo "demo: the fake API did not start (port $port taken? try DEMO_PORT=...)" >&2; exit 1; }
  sleep 0.1
done

echo "== first sync: $jobs jobs from the fake API at $QIANFAN_CONSOLE_API_BASE_URL into qfsync.db"
$qfsync sync
echo "== second sync: nothing changed, so nothing is inserted or updated"
$qfsync sync
echo "== qfsync runs"
$qfsync runs --limit 5
echo "== next: .venv/bin/qfsync report, or query the views, e.g. finetuning_jobs_current, in qfsync.db"
