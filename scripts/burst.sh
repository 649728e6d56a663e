#!/bin/bash
# What the worker keeps after a backlog: `scripts/burst.sh <gancho binary> <out prefix>`.
# Eight minutes at 1,000 events/s, fan-out 1 over 100 endpoints (`gancho bench --soak`); the
# worker is stopped (SIGSTOP) for 20 s at minutes 2, 4 and 6, so it meets a backlog of about
# 20,000 deliveries each time. Writes the worker's VmRSS every 5 s to <out>.rss (seconds, KiB)
# and the bench's report to <out>.json. Run two builds one after the other to compare them.
set -euo pipefail
BIN=$(realpath "$1")
OUT=$2
export PATH="$(dirname "$0")/../.tools/bin:$PATH"
"$BIN" bench --endpoints 100 --fan-out 1 --rate 1000 --soak 8m --warm-up 1m --json \
  > "$OUT.json" 2> "$OUT.err" &
BENCH=$!
WORKER=""
for _ in $(seq 1 60); do
  WORKER=$(pgrep -f "^$BIN worker" | head -1 || true)
  [ -n "$WORKER" ] && break
  sleep 1
done
[ -n "$WORKER" ] || { echo "no worker process of $BIN started" >&2; exit 1; }
: > "$OUT.rss"
START=$(date +%s)
STOPPED=""
while kill -0 "$BENCH" 2>/dev/null; do
  NOW=$(( $(date +%s) - START ))
  RSS=$(awk '/VmRSS/{print $2}' "/proc/$WORKER/status" 2>/dev/null || true)
  [ -n "$RSS" ] && echo "$NOW $RSS" >> "$OUT.rss"
  for AT in 120 240 360; do
    if [ "$NOW" -ge "$AT" ] && [[ " $STOPPED " != *" $AT "* ]]; then
      STOPPED="$STOPPED $AT"
      kill -STOP "$WORKER"; sleep 20; kill -CONT "$WORKER"
    fi
  done
  sleep 5
done
wait "$BENCH"
