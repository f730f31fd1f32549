#!/usr/bin/env bash
# Agent footprint: stripped release binary size, and idle RSS with 5 running workloads, next to a
# named baseline measured in the same run: mosquitto_sub (Debian's minimal C MQTT client) idle
# on the same broker. Needs mosquitto-clients.
#
#   benches/agent-footprint.sh            # builds release binaries first
#   SKIP_BUILD=1 AGENT_BIN=/path/to/another/edge-agent benches/agent-footprint.sh
#
# Ends with where the agent's RSS goes (benches/rss-breakdown.py: its code, heap, stacks...).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --quiet -p cloud-hub
  # On its own: built together with the hub, the agent would get the features the hub's
  # dependencies ask for too.
  cargo build --release --quiet -p edge-agent
fi
BIN=$PWD/target/release
AGENT_BIN=${AGENT_BIN:-$BIN/edge-agent}
# shellcheck source=benches/one-idle-agent.sh
. benches/one-idle-agent.sh
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
size=$(stat -c %s "$AGENT_BIN")
echo "| measure | edge-agent | baseline (mosquitto_sub) | ratio |"
echo "| --- | --- | --- | --- |"
echo "| stripped binary (x86_64, release) | $((size / 1024)) KiB | $(( $(stat -c %s "$(command -v mosquitto_sub)") / 1024 )) KiB + libmosquitto | - |"
echo "| idle RSS, $running workloads converged | ${agent_kb} KiB | ${base_kb} KiB | $(python3 -c "print(f'{$agent_kb/$base_kb:.1f}x')") |"
echo
benches/rss-breakdown.py "$agent"
