#!/usr/bin/env bash
# The first command on a fresh machine: build in release mode, generate a capture of realistic
# client traffic with lb-testkit's generator, and run the load balancer's MUX on it with the pure-Rust
# pcap port (no DPDK, no NIC needed). Prints the status line, then the counters, the drops by reason
# and the distribution over the backends, one bar each.
#
#   scripts/run.sh [COUNT]          # COUNT frames (default 10000)
#   SEED=7 MIX=uniform CONFIG=examples/demo-mux.node.json scripts/run.sh 2000
#
# Output: target/demo/traffic.pcap (the clients' frames) and target/demo/mux-out.pcap (what the MUX
# sent: VxLAN to the backends' hosts); open them in Wireshark too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cpu.sh
. scripts/cpu.sh
# shellcheck source=scripts/apt.sh
. scripts/apt.sh

COUNT="${1:-10000}"
SEED="${SEED:-42}"
MIX="${MIX:-realistic}"
CONFIG="${CONFIG:-examples/demo-mux.node.json}"
OUT_DIR=target/demo
PCAP="$OUT_DIR/traffic.pcap"
OUT="$OUT_DIR/mux-out.pcap"
BIN="${CARGO_TARGET_DIR:-target}/release"

if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi
ensure_c_tools

echo "==> cargo build --release (lb-testkit, lb-dpdk)"
cargo build --release -p lb-testkit -p lb-dpdk

echo "==> lb-gen: $COUNT frames, seed $SEED, mix $MIX -> $PCAP"
mkdir -p "$OUT_DIR"
"$BIN/lb-gen" --count "$COUNT" --seed "$SEED" --mix "$MIX" --out "$PCAP"

echo "==> lb-dpdk run --config $CONFIG --pcap-in $PCAP --pcap-out $OUT --no-probes"
"$BIN/lb-dpdk" run --config "$CONFIG" --pcap-in "$PCAP" --pcap-out "$OUT" --no-probes
