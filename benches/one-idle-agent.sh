# Sourced by the agent benchmarks (not run on its own): starts a hub in a temp dir, imports a
# sleeping image, creates a release of 5 workloads (each with an exec health check every 10 s),
# enrolls one agent as `bench-1`, starts it, deploys the release to it and waits until it
# reports converged. Expects BIN (the hub and fleetctl binaries) and AGENT_BIN; sets DIR, HUB,
# MQTT and `agent` (the agent's pid; AGENT_RUST_LOG, if set, is its RUST_LOG), and removes everything on exit, workloads included.
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
"$AGENT_BIN" --data-dir "$DIR/agent" enroll --hub "$HUB" --token "$token" --device-id bench-1 >/dev/null
env ${AGENT_RUST_LOG:+RUST_LOG=$AGENT_RUST_LOG} "$AGENT_BIN" --data-dir "$DIR/agent" run >"$DIR/agent.log" 2>&1 &
agent=$!
pids+=($agent)
"$BIN/fleetctl" deployments create --release 1 --device bench-1 >/dev/null
for _ in $(seq 1 120); do
  state=$("$BIN/fleetctl" --json devices show bench-1 | python3 -c 'import json,sys; print((json.load(sys.stdin).get("status") or {}).get("convergence"))')
  [ "$state" = converged ] && break
  sleep 1
done
[ "$state" = converged ] || { echo "agent did not converge"; tail -20 "$DIR/agent.log"; exit 1; }
