#!/usr/bin/env bash
# Start the Docker engine in the background unless one already answers.
# No bridge and no iptables (this sandbox has neither): containers run with --network host.
# Prints nothing when the engine is already up; the pid of an engine started here goes to
# /run/agentbus-dockerd.pid and its log to /var/log/agentbus-dockerd.log.
set -euo pipefail

DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker
PIDFILE=/run/agentbus-dockerd.pid
LOG=/var/log/agentbus-dockerd.log

if "$DOCKER" info >/dev/null 2>&1; then
  exit 0
fi

echo "starting dockerd (log: $LOG)"
nohup dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
  >"$LOG" 2>&1 </dev/null &
echo $! >"$PIDFILE"

for _ in $(seq 1 120); do
  if "$DOCKER" info >/dev/null 2>&1; then
    exit 0
  fi
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "dockerd exited at start-up:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  sleep 0.5
done
echo "dockerd did not answer within 60s:" >&2
tail -n 30 "$LOG" >&2
exit 1
