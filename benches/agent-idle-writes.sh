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
AGENT_RUST_LOG=warn
# shellcheck source=benches/one-idle-agent.sh
. benches/one-idle-agent.sh
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
