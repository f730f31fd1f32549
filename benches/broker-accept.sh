#!/usr/bin/env bash
# The embedded broker against mosquitto, side by side in one run (issue 16):
#
#   benches/broker-accept.sh [N] [ROUNDS]      (defaults: 10000 devices, 2 rounds)
#
# Enrolls N simulated devices once (fleet-sim, through the API of a hub with its embedded
# broker), then, ROUNDS times and alternating, starts a fresh hub on the same data directory
#   - with its embedded broker (mqtt5), or
#   - publishing through a fresh Debian mosquitto (anonymous, sized as deploy/mosquitto),
# and has fleet-sim connect all N at once (no jitter): every device connects, subscribes,
# publishes its presence and status. Per round: the time until all N are connected
# (`connect_s`), the peak RSS (VmHWM) of the hub and of mosquitto, their RSS after, and the
# hub's open files. The hub's `mqtt_max_connections` is set to 100,000 so that only the
# process's file limit caps it (`accept::fit_caps`: three descriptors per embedded-broker
# connection). Everything lives in a temp dir removed on exit.
set -euo pipefail
N=${1:-10000}
ROUNDS=${2:-2}
TIMEOUT=${TIMEOUT:-120}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
[ -x "$BIN/cloud-hub" ] && [ -x "$BIN/fleet-sim" ] || {
  echo "build first: cargo build --release -p cloud-hub -p fleet-sim" >&2
  exit 1
}
DIR=$(mktemp -d)
hub_pid=
mosq_pid=
stop_all() {
  [ -n "$hub_pid" ] && { kill "$hub_pid" 2>/dev/null || true; wait "$hub_pid" 2>/dev/null || true; }
  [ -n "$mosq_pid" ] && { kill "$mosq_pid" 2>/dev/null || true; wait "$mosq_pid" 2>/dev/null || true; }
  hub_pid= mosq_pid=
}
trap 'stop_all; rm -rf "$DIR"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
status() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
cat >"$DIR/hub.toml" <<CONF
[limits]
mqtt_max_connections = 100000
CONF

start_hub() { # [external broker address]
  rm -f "$DIR/hub/hub.json"
  local ext=()
  [ -n "${1:-}" ] && ext=(--external-mqtt "$1")
  "$BIN/cloud-hub" serve --config "$DIR/hub.toml" --data-dir "$DIR/hub" --http 127.0.0.1:0 \
    --mqtt 127.0.0.1:0 "${ext[@]}" >>"$DIR/hub.log" 2>&1 &
  hub_pid=$!
  for _ in $(seq 1 300); do [ -f "$DIR/hub/hub.json" ] && break; sleep 0.1; done
  HUB=$(field "$DIR/hub/hub.json" http)
}

start_mosquitto() {
  MQ_PORT=$(free_port)
  cat >"$DIR/mosquitto.conf" <<CONF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_packet_size 1048576
max_inflight_messages 1000
max_queued_messages 1000000
CONF
  mosquitto -c "$DIR/mosquitto.conf" >>"$DIR/mosquitto.log" 2>&1 &
  mosq_pid=$!
  for _ in $(seq 1 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$MQ_PORT),0.2)" 2>/dev/null && break
    sleep 0.1
  done
}

sim() { # broker address, report file
  MALLOC_MMAP_THRESHOLD_=131072 "$BIN/fleet-sim" -n "$N" --hub "$HUB" \
    --token "@$DIR/hub/admin.token" --state "$DIR/sim.json" --broker "$1" \
    --enroll-concurrency 16 --jitter-ms 0 --keep-alive-secs 60 --timeout-secs "$TIMEOUT" \
    --scenario connect >"$2" 2>>"$DIR/sim.log" || true
}

report() { # label, report file
  python3 - "$1" "$2" "$3" "$4" "$5" "$6" "$7" <<'PY'
import json, sys
label, path, hub_hwm, hub_rss, mq_hwm, mq_rss, fds = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{label}: no report ({e})"); sys.exit()
p, s = r["phases"], r["summary"]
kib = lambda v: f"{int(v) / 1024:.1f} MiB" if v else "-"
print(f"{label}: ok={r['ok']} enroll_s={p.get('enroll_s', 0):.2f} connect_s={p['connect_s']:.2f} "
      f"connected={s['connected']}/{s['devices']} timed_out={r.get('timed_out')} "
      f"hub_peak={kib(hub_hwm)} hub_after={kib(hub_rss)} "
      f"mosquitto_peak={kib(mq_hwm)} mosquitto_after={kib(mq_rss)} hub_fds={fds}")
PY
}

measure() { # label, broker address
  local out="$DIR/$1.json"
  sim "$2" "$out"
  local fds hh hr mh= mr=
  fds=$(ls "/proc/$hub_pid/fd" | wc -l)
  hh=$(status "$hub_pid" VmHWM)
  hr=$(status "$hub_pid" VmRSS)
  if [ -n "$mosq_pid" ]; then mh=$(status "$mosq_pid" VmHWM); mr=$(status "$mosq_pid" VmRSS); fi
  report "$1" "$out" "$hh" "$hr" "$mh" "$mr" "$fds"
}

echo "N=$N rounds=$ROUNDS open-file limit $(ulimit -n) load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Enrollment (and a first, cold connect through the embedded broker).
start_hub
measure enroll+embedded-cold "$(field "$DIR/hub/hub.json" mqtt)"
stop_all
for r in $(seq 1 "$ROUNDS"); do
  start_hub
  measure "round$r-embedded" "$(field "$DIR/hub/hub.json" mqtt)"
  stop_all
  start_mosquitto
  start_hub "127.0.0.1:$MQ_PORT"
  measure "round$r-mosquitto" "127.0.0.1:$MQ_PORT"
  stop_all
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
