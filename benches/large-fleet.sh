#!/usr/bin/env bash
# A fleet larger than one process can connect (issue 16: 100,000 devices on one hub):
#
#   benches/large-fleet.sh [ENROLL] [CONNECT]     (defaults: 100000 enrolled, 19000 connected)
#
# Debian's mosquitto (anonymous, sized as deploy/mosquitto) and a release hub publishing
# through it. fleet-sim enrolls ENROLL devices through the API (`--scenario enroll`, 16 in
# flight), then connects the first CONNECT of them and deploys a release to the whole label
# (every enrolled device gets a signed state; the connected ones must verify it and have
# every event acked: `--scenario deploy`). A process holds at most `ulimit -n` descriptors
# (20,000 on the machine measured, and it cannot be raised without CAP_SYS_RESOURCE), and
# mosquitto needs one per connection, so CONNECT stays below it. Prints both reports, the
# peak RSS of hub and mosquitto, and the hub's fleet summary. Everything lives in a temp dir
# removed on exit.
set -euo pipefail
ENROLL=${1:-100000}
CONNECT=${2:-19000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
[ -x "$BIN/cloud-hub" ] && [ -x "$BIN/fleet-sim" ] || {
  echo "build first: cargo build --release -p cloud-hub -p fleet-sim" >&2
  exit 1
}
DIR=$(mktemp -d)
hub_pid=
mosq_pid=
cleanup() {
  [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null || true
  [ -n "$mosq_pid" ] && kill "$mosq_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
status() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$DIR/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_packet_size 1048576
max_inflight_messages 1000
max_queued_messages 1000000
CONF
mosquitto -c "$DIR/mosquitto.conf" >>"$DIR/mosquitto.log" 2>&1 &
mosq_pid=$!
sleep 0.5
"$BIN/cloud-hub" serve --data-dir "$DIR/hub" --http 127.0.0.1:0 --external-mqtt "127.0.0.1:$PORT" \
  >"$DIR/hub.log" 2>&1 &
hub_pid=$!
for _ in $(seq 1 100); do [ -f "$DIR/hub/hub.json" ] && break; sleep 0.1; done
HUB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$DIR/hub/hub.json")
TOKEN=$(cat "$DIR/hub/admin.token")
sim() {
  MALLOC_MMAP_THRESHOLD_=131072 "$BIN/fleet-sim" --hub "$HUB" --token "@$DIR/hub/admin.token" \
    --broker "127.0.0.1:$PORT" --state "$DIR/sim.json" --enroll-concurrency 16 \
    --keep-alive-secs 60 --timeout-secs 600 "$@" 2>>"$DIR/sim.log"
}
echo "enroll $ENROLL, connect $CONNECT; open-file limit $(ulimit -n); load $(cut -d' ' -f1-3 /proc/loadavg)"
sim -n "$ENROLL" --scenario enroll | python3 -c 'import json,sys; r=json.load(sys.stdin); print("enroll:", r["ok"], r["phases"], "enrolled", r["summary"]["enrolled"])'
echo "hub after enrolling: RSS $(status $hub_pid VmRSS) KiB, peak $(status $hub_pid VmHWM) KiB"
sim -n "$CONNECT" --scenario deploy --jitter-ms 10000 >"$DIR/deploy.json" || true
python3 - "$DIR/deploy.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]
print("deploy:", "ok" if r["ok"] else f"NOT ok ({r.get('timed_out')} {r.get('error')})", r["phases"])
print("  connected", s["connected"], "of", s["devices"], "delivered", s["delivered_since_mark"],
      "events", s["events"], "delivery", s["delivery"], "sim rss", s["rss_mib"], "MiB")
PY
echo "hub: RSS $(status $hub_pid VmRSS) KiB, peak $(status $hub_pid VmHWM) KiB, open files $(ls /proc/$hub_pid/fd | wc -l)"
echo "mosquitto: RSS $(status $mosq_pid VmRSS) KiB, peak $(status $mosq_pid VmHWM) KiB"
curl -s -H "authorization: Bearer $TOKEN" "$HUB/metrics" | grep -E '^fleet_hub_devices' || true
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
