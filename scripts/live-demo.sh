#!/usr/bin/env bash
# The live demo: network namespaces with a client, a router, a MUX, two hosts and four HTTP servers;
# lb-dpdk runs the MUX and both host agents (AF_XDP by default) and real requests are balanced over
# real servers. Prints the answers, the MUX's status line while traffic runs and the final reports.
# Needs root; removes everything it made when it ends (also on Ctrl-C).
#
#   sudo scripts/live-demo.sh              # lb-dpdk --live afxdp
#   sudo scripts/live-demo.sh afpacket     # or the AF_PACKET port
#   sudo scripts/live-demo.sh standin      # kernel parts only (VxLAN device, nftables), no build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE="${1:-afxdp}"
# shellcheck source=scripts/cpu.sh
. scripts/cpu.sh
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
require_root
install_tools ip:iproute2 ethtool:ethtool nft:nftables curl:curl python3:python3
if [ "$MODE" != standin ] && [ -z "${LB_DPDK:-}" ]; then
    ensure_c_tools
    echo "==> cargo build --release -p lb-dpdk"
    cargo build --release -p lb-dpdk
fi
exec python3 scripts/live/demo.py --mode "$MODE"
