#!/usr/bin/env bash
# The first command on a fresh machine: build in release mode, generate a capture of realistic
# traffic with lb-testkit's generator, and show what lb-core's wire layer makes of it.
#
#   scripts/run.sh [COUNT]          # COUNT frames (default 10000)
#   SEED=7 MIX=uniform VERBOSE=1 scripts/run.sh 2000
#
# Output: target/demo/traffic.pcap (open it in Wireshark too) and the `lb-dpdk inspect` summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

COUNT="${1:-10000}"
SEED="${SEED:-42}"
MIX="${MIX:-realistic}"
OUT_DIR=target/demo
PCAP="$OUT_DIR/traffic.pcap"
BIN="${CARGO_TARGET_DIR:-target}/release"

if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

echo "==> cargo build --release (lb-testkit, lb-dpdk)"
cargo build --release -p lb-testkit -p lb-dpdk

echo "==> lb-gen: $COUNT frames, seed $SEED, mix $MIX -> $PCAP"
mkdir -p "$OUT_DIR"
"$BIN/lb-gen" --count "$COUNT" --seed "$SEED" --mix "$MIX" --out "$PCAP"

echo "==> lb-dpdk inspect --pcap $PCAP${VERBOSE:+ --verbose}"
"$BIN/lb-dpdk" inspect --pcap "$PCAP" ${VERBOSE:+--verbose}
