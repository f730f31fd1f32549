#!/usr/bin/env bash
# Cross-builds the edge agent for 64-bit ARM gateways and runs it once under qemu-user as a smoke
# test. Needs Debian's gcc-aarch64-linux-gnu and qemu-user-static (installed below when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user-static libc6-arm64-cross
fi
rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
cargo build --release --target aarch64-unknown-linux-gnu -p edge-agent
bin=target/aarch64-unknown-linux-gnu/release/edge-agent
ls -l "$bin"
qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" --version
