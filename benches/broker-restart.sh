#!/usr/bin/env bash
# Broker restart under N simulated devices (checklist C57), with release builds:
#
#   benches/broker-restart.sh [N]        (default 10000)
#   RESEND_SECS=30 JITTER_MS=10000 benches/broker-restart.sh   (defaults: 10 s, the agent's
#   resend_secs, and 10 s of reconnect jitter)
#   SCENARIO=partition benches/broker-restart.sh   (the same set-up; a tenth of the devices cut
#   for 10 s and healed instead of the restart)
#
# Starts Debian's mosquitto (anonymous, sized for a fleet as deploy/mosquitto/mosquitto.conf,
# no persistence: a restart loses every retained message and session), a hub publishing through
# it, and fleet-sim with N devices enrolled through the API. fleet-sim deploys a release to all,
# waits until every device verified it and everything is acked, then kills mosquitto (-9) and
# starts it again; every device appends an event, reconnects after its own jittered back-off,
# and the run ends when all are back with every event acked and the hub lists all N online and
# converged. Prints fleet-sim's JSON report (`phases.restart_s`: restart → all back) and the
# hub's own MQTT reconnects from its metrics. Everything lives in a temp dir removed on exit.
set -euo pipefail
N=${1:-10000}
RESEND_SECS=${RESEND_SECS:-10}
JITTER_MS=${JITTER_MS:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
[ -x "$BIN/cloud-hub" ] && [ -x "$BIN/fleet-sim" ] || {
  echo "build first: cargo build --release -p cloud-hub -p fleet-sim" >&2
  exit 1
}
DIR=$(mktemp -d)
hub_pid=
cleanup() {
  [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null || true
  [ -f "$DIR/mosquitto.pid" ] && kill -9 "$(cat "$DIR/mosquitto.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$DIR/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_packet_size 1048576
max_inflight_messages 1000
max_queued_messages 1000000
CONF
# A background job with its pid kept in a file: `mosquitto -d` with its pid and log files in
# $DIR (0700) exits at once, having dropped root for its own user.
start_mosquitto="mosquitto -c $DIR/mosquitto.conf >>$DIR/mosquitto.log 2>&1 & echo \$! >$DIR/mosquitto.pid"
sh -c "$start_mosquitto"
for _ in $(seq 1 50); do
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null && break
  sleep 0.1
done
"$BIN/cloud-hub" serve --data-dir "$DIR/hub" --http 127.0.0.1:0 --external-mqtt "127.0.0.1:$PORT" \
  >"$DIR/hub.log" 2>&1 &
hub_pid=$!
for _ in $(seq 1 100); do [ -f "$DIR/hub/hub.json" ] && break; sleep 0.1; done
HUB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$DIR/hub/hub.json")
# glibc's mmap threshold pinned: reconnect churn otherwise leaves every connection's table
# resident (tests/sim/README.md).
if [ "${SCENARIO:-restart}" = partition ]; then
  scenario=(--cut 10 --hold-secs 10)
else
  scenario=(--restart-cmd "kill -9 \$(cat $DIR/mosquitto.pid); sleep 1; $start_mosquitto")
fi
MALLOC_MMAP_THRESHOLD_=131072 "$BIN/fleet-sim" -n "$N" --hub "$HUB" --token "@$DIR/hub/admin.token" \
  --broker "127.0.0.1:$PORT" --enroll-concurrency 16 --jitter-ms "$JITTER_MS" --keep-alive-secs 60 \
  --resend-secs "$RESEND_SECS" --timeout-secs 300 "${scenario[@]}"
echo "hub still running: $(kill -0 "$hub_pid" 2>/dev/null && echo yes || echo no)"
curl -s -H "authorization: Bearer $(cat "$DIR/hub/admin.token")" "$HUB/metrics" |
  grep -E '^fleet_hub_(broker_connects_total|broker_link_up|devices)' || true
grep -E "lost the broker|connected to broker" "$DIR/hub.log" | cut -c1-110 || true
