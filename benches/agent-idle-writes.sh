#!/usr/bin/env bash
# Agent writes at rest: what an idle agent with converged workloads writes to storage in a
# minute. Starts a hub, enrolls one agent, deploys a release of 5 workloads (each with an exec
# health check every 10 s), waits until the device reports converged and then 15 s more, and
# measures 60 s of idling:
#   - bytes the agent process caused to be written to storage (/proc/<pid>/io write_bytes; its
#     stderr goes to a file and logs nothing at the warn level it runs with),
#   - fsync and fdatasync calls (strace -f -c on the agent),
#   - files of the data directory that changed (size or mtime), workload logs (logs/) aside.
# The workloads' own output goes to logs/ and is not the agent's; these sleep and write nothing.
#
#   benches/agent-idle-writes.sh                      # builds release binaries first
#   BUILD=debug benches/agent-idle-writes.sh          # the debug binaries (same writes, quicker build)
#   AGENT_BIN=/path/to/edge-agent benches/agent-idle-writes.sh   # another agent, e.g. an older one
# Needs strace.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-release}
if [ "$BUILD" = release ]; then
  cargo build --release --quiet --bins
else
  cargo build --quiet --bins
fi
BIN=$PWD/target/$BUILD
AGENT_BIN=${AGENT_BIN:-$BIN/edge-agent}
SECS=${SECS:-60}
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
RUST_LOG=warn "$AGENT_BIN" --data-dir "$DIR/agent" run >"$DIR/agent.log" 2>&1 &
agent=$!
pids+=($agent)
"$BIN/fleetctl" deployments create --release 1 --device bench-1 >/dev/null
for _ in $(seq 1 120); do
  state=$("$BIN/fleetctl" --json devices show bench-1 | python3 -c 'import json,sys; print((json.load(sys.stdin).get("status") or {}).get("convergence"))')
  [ "$state" = converged ] && break
  sleep 1
done
[ "$state" = converged ] || { echo "agent did not converge"; tail -20 "$DIR/agent.log"; exit 1; }
sleep 15
snapshot() { (cd "$DIR/agent" && find . -path ./logs -prune -o -type f -printf '%p %s %T@\n' | sort); }
wb() { awk '/^write_bytes/ {print $2}' "/proc/$agent/io"; }
before=$(snapshot); wb0=$(wb)
timeout -s INT "$SECS" strace -f -c -e trace=fsync,fdatasync -p "$agent" -o "$DIR/strace.txt" 2>/dev/null || true
after=$(snapshot); wb1=$(wb)
fsyncs=$(awk '$NF ~ /^(fsync|fdatasync)$/ {n += $4} END {print n + 0}' "$DIR/strace.txt")
changed=$(diff <(echo "$before") <(echo "$after") | grep -c '^>' || true)
echo "agent: $AGENT_BIN"
echo "| measure, ${SECS} s idle, 5 workloads converged | edge-agent |"
echo "| --- | --- |"
echo "| bytes written (write_bytes) | $((wb1 - wb0)) |"
echo "| fsync + fdatasync calls | $fsyncs |"
echo "| data directory files changed (logs/ aside) | $changed |"
diff <(echo "$before") <(echo "$after") | grep '^>' | sed 's/^> /  changed: /' || true
