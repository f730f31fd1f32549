#!/usr/bin/env bash
# Agent footprint: stripped release binary size, and idle RSS with 5 running workloads, next to a
# named baseline measured in the same run: mosquitto_sub (Debian's minimal C MQTT client) idle
# on the same broker. Needs mosquitto-clients.
#
#   benches/agent-footprint.sh            # builds release binaries first
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
BIN=$PWD/target/release
DIR=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for rec in "$DIR"/agent/runtime/*.json; do
    [ -f "$rec" ] || continue
    pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["instance"]["state"].get("Running",{}).get("pid",""))' "$rec" 2>/dev/null || true)
    [ -n "$pid" ] && kill -9 -- "-$pid" 2>/dev/null || true
  done
  rm -rf "$DIR"
}
trap cleanup EXIT
"$BIN/cloud-hub" serve --data-dir "$DIR/hub" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 >"$DIR/hub.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -f "$DIR/hub/hub.json" ] && break; sleep 0.1; done
HUB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$DIR/hub/hub.json")
MQTT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mqtt"])' "$DIR/hub/hub.json")
export FLEET_HUB_URL=$HUB FLEET_TOKEN
FLEET_TOKEN=$(cat "$DIR/hub/admin.token")
mkdir -p "$DIR/img"
printf '#!/bin/sh\nexec sleep 100000\n' >"$DIR/img/run.sh"
chmod 755 "$DIR/img/run.sh"
digest=$("$BIN/fleetctl" --json images import "$DIR/img" --name idle 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
python3 - "$digest" >"$DIR/release.json" <<'PY'
import json, sys
d = sys.argv[1]
print(json.dumps({"name": "idle", "version": "1", "workloads": [
    {"name": f"w{i}", "image": d, "command": ["./run.sh"],
     "health": {"probe": {"type": "exec", "command": ["/bin/true"]}, "interval_secs": 10, "timeout_secs": 2, "retries": 3}}
    for i in range(5)]}))
PY
"$BIN/fleetctl" releases create "$DIR/release.json" >/dev/null
token=$("$BIN/fleetctl" tokens enroll)
"$BIN/edge-agent" --data-dir "$DIR/agent" enroll --hub "$HUB" --token "$token" --device-id bench-1 >/dev/null
"$BIN/edge-agent" --data-dir "$DIR/agent" run >"$DIR/agent.log" 2>&1 &
agent=$!
pids+=($agent)
"$BIN/fleetctl" deployments create --release 1 --device bench-1 >/dev/null
for _ in $(seq 1 120); do
  state=$("$BIN/fleetctl" --json devices show bench-1 | python3 -c 'import json,sys; print((json.load(sys.stdin).get("status") or {}).get("convergence"))')
  [ "$state" = converged ] && break
  sleep 1
done
[ "$state" = converged ] || { echo "agent did not converge"; tail -20 "$DIR/agent.log"; exit 1; }
running=$(ls "$DIR"/agent/runtime/*.json | wc -l)
# Baseline: a minimal MQTT subscriber (Debian's mosquitto_sub) idle on a local mosquitto.
bport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$bport" >"$DIR/m.conf"
mosquitto -c "$DIR/m.conf" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
mosquitto_sub -h 127.0.0.1 -p "$bport" -t fleet/v1/trust >/dev/null 2>&1 &
base=$!
pids+=($base)
sleep 15
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
agent_kb=$(rss "$agent"); base_kb=$(rss "$base")
size=$(stat -c %s "$BIN/edge-agent")
echo "| measure | edge-agent | baseline (mosquitto_sub) | ratio |"
echo "| --- | --- | --- | --- |"
echo "| stripped binary (x86_64, release) | $((size / 1024)) KiB | $(( $(stat -c %s "$(command -v mosquitto_sub)") / 1024 )) KiB + libmosquitto | - |"
echo "| idle RSS, $running workloads converged | ${agent_kb} KiB | ${base_kb} KiB | $(python3 -c "print(f'{$agent_kb/$base_kb:.1f}x')") |"
