#!/usr/bin/env bash
# `make demo`: the fake API on loopback, a sync with tasks into qfsync.db, an hour of the tasks'
# time, a second sync, then the run history, a few tasks and the report.
# Needs no credentials: the fake's demo keys are public by design.
set -euo pipefail
port=${1:-8765}
jobs=${2:-3000}
qfsync=.venv/bin/qfsync

# --real-time dates the jobs up to an hour ago, so that the report's "last 7 days" has tasks.
$qfsync fake-api --port "$port" --jobs "$jobs" --real-time 2>/dev/null &
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

echo "== first sync: $jobs jobs and their tasks from the fake API at $QIANFAN_CONSOLE_API_BASE_URL into qfsync.db"
$qfsync sync --tasks
echo "== an hour passes on the fake (SIGUSR1): tasks progress and finish, old jobs get new tasks"
kill -USR1 $fake
sleep 0.2
echo "== second sync: no job changed; unfinished tasks are followed, finished jobs' tasks are not listed again"
$qfsync sync --tasks
echo "== the nightly kind: --tasks-max-age 1s lists every job's tasks, and finds the new ones on old jobs"
$qfsync sync --tasks --tasks-max-age 1s
echo "== qfsync runs"
$qfsync runs --limit 5
echo "== qfsync tasks: the tasks of the newest job with any, as JSON Lines (no database)"
newest=$(.venv/bin/python -c "
import sqlite3; c = sqlite3.connect('qfsync.db')
print(c.execute('SELECT job_id FROM finetuning_tasks ORDER BY created_at DESC LIMIT 1').fetchone()[0])")
$qfsync tasks --job-id "$newest" | cut -c1-160
echo "== qfsync report"
$qfsync report
