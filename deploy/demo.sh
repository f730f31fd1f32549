#!/usr/bin/env bash
# The main job on one machine: the hub with its embedded MQTT broker, a few local edge agents
# (process runtime) enrolled with one-time tokens, a sample image imported, a release deployed
# to a label group, and the fleet left running until Ctrl-C.
#
#   deploy/demo.sh                 # 3 agents, HTTP on 127.0.0.1:8080, MQTT on 127.0.0.1:1883
#   AGENTS=5 HTTP_PORT=9080 MQTT_PORT=9883 deploy/demo.sh
#   DEMO_SECONDS=60 deploy/demo.sh # stop by itself after a minute (used by CI smoke runs)
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-3}
DIR=${FLEET_DEMO_DIR:-$PWD/fleet-demo}
# The default ports, unless taken (a system mosquitto on 1883, say): then any free port.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
HTTP_PORT=${HTTP_PORT:-8080}
MQTT_PORT=${MQTT_PORT:-1883}
in_use "$HTTP_PORT" && HTTP_PORT=0
in_use "$MQTT_PORT" && MQTT_PORT=0

echo "== building (first run takes a few minutes)"
cargo build --quiet --bins
BIN=$PWD/target/debug

rm -rf "$DIR" && mkdir -p "$DIR"
pids=()
cleanup() {
  echo "== stopping the demo"
  # SIGTERM: the agents run with --stop-workloads-on-exit, so their workloads stop with them.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== starting the hub with its embedded broker"
"$BIN/cloud-hub" serve --data-dir "$DIR/hub" --http "127.0.0.1:$HTTP_PORT" --mqtt "127.0.0.1:$MQTT_PORT" \
  >"$DIR/hub.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -f "$DIR/hub/hub.json" ] && break; sleep 0.1; done
[ -f "$DIR/hub/hub.json" ] || { echo "hub did not start; see $DIR/hub.log"; tail -20 "$DIR/hub.log"; exit 1; }
# The addresses the hub actually bound.
HUB=$(sed -n 's/.*"http": *"\([^"]*\)".*/\1/p' "$DIR/hub/hub.json")
MQTT=$(sed -n 's/.*"mqtt": *"\([^"]*\)".*/\1/p' "$DIR/hub/hub.json")
echo "   HTTP $HUB, MQTT $MQTT"
export FLEET_HUB_URL=$HUB FLEET_TOKEN
FLEET_TOKEN=$(cat "$DIR/hub/admin.token")

echo "== importing a sample image"
mkdir -p "$DIR/image/app"
cat >"$DIR/image/app/run.sh" <<'SH'
#!/bin/sh
# A tiny service: a heartbeat line every two seconds.
echo "sensor-agent v1 starting as $FLEET_WORKLOAD"
while true; do echo "heartbeat $(date +%s)"; sleep 2; done
SH
chmod 755 "$DIR/image/app/run.sh"
digest=$("$BIN/fleetctl" --field digest images import "$DIR/image" --name sensor-agent)
echo "   $digest"

echo "== importing the sample function (deploy/functions/hello)"
fn_digest=$("$BIN/fleetctl" --field digest images import "$PWD/deploy/functions/hello" --name hello-fn)
echo "   $fn_digest"

cat >"$DIR/release.json" <<JSON
{"name": "sensors", "version": "1.0.0", "workloads": [
  {"name": "sensor", "image": "$digest", "command": ["app/run.sh"], "restart": "always",
   "resources": {"memory_bytes": 67108864, "pids": 64},
   "health": {"probe": {"type": "exec", "command": ["/bin/true"]}, "interval_secs": 5, "timeout_secs": 2, "retries": 3}},
  {"name": "hello", "image": "$fn_digest", "command": ["./run.sh"],
   "function": {"triggers": [{"type": "http", "route": "/hello"}], "idle_timeout_secs": 30}}
]}
JSON
release=$("$BIN/fleetctl" --field id releases create "$DIR/release.json")
"$BIN/fleetctl" groups put demo --selector site=demo >/dev/null

echo "== enrolling $AGENTS agents"
for i in $(seq 1 "$AGENTS"); do
  token=$("$BIN/fleetctl" tokens enroll --label site=demo)
  "$BIN/edge-agent" --data-dir "$DIR/agent-$i" enroll --hub "$HUB" --token "$token" \
    --device-id "demo-$i" --profile local-dev
  FLEET_AGENT_STATUS_INTERVAL_SECS=5 FLEET_AGENT_FUNCTIONS_LISTEN=127.0.0.1:$((18080 + i)) "$BIN/edge-agent" --data-dir "$DIR/agent-$i" run --stop-workloads-on-exit \
    >"$DIR/agent-$i.log" 2>&1 &
  pids+=($!)
done

echo "== deploying release $release to group demo"
"$BIN/fleetctl" deployments create --release "$release" --group demo >/dev/null

echo "== waiting for the fleet to converge"
"$BIN/fleetctl" devices wait --converged "$AGENTS" --timeout 120
"$BIN/fleetctl" devices list
echo "== invoking the function on demo-1 (cold start, then warm)"
curl -s -d world http://127.0.0.1:18081/hello
curl -s http://127.0.0.1:18081/hello/again
sleep 6
"$BIN/fleetctl" functions
cat <<TXT

The fleet is running.
  console    $HUB/console/   (sign in with the token below)
  API        $HUB/api/v1   (OpenAPI: $HUB/api/v1/openapi.json)
  token      $FLEET_TOKEN
  try        FLEET_HUB_URL=$HUB FLEET_TOKEN=\$(cat $DIR/hub/admin.token) $BIN/fleetctl devices list
             $BIN/fleetctl events demo-1
             curl -d hi http://127.0.0.1:1808N/hello   (the sample function on demo-N), then
             $BIN/fleetctl functions
  logs       $DIR/hub.log, $DIR/agent-N.log, $DIR/agent-N/logs/sensor.log
Ctrl-C stops the hub, the agents and their workloads.
TXT
if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else wait; fi
