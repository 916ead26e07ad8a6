#!/usr/bin/env bash
# The live benchmark, on one set of network namespaces: lb-dpdk (MUX and host agents, AF_XDP by
# default), the kernel stand-in (VxLAN device and nftables DNAT) and HAProxy in TCP mode, one after
# the other, to the same backends. Per data plane: new connections a second (wrk), one and eight TCP
# streams (iperf3), the data plane's CPU time a packet and the machine's. Prints a table.
#
#   sudo scripts/live-bench.sh [SECONDS]           # each measurement SECONDS long (default 10)
#   BENCH_MODE=afpacket sudo scripts/live-bench.sh
#   BENCH_ONLY=standin,haproxy sudo scripts/live-bench.sh   # without lb-dpdk
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_EACH="${1:-10}"
ONLY="${BENCH_ONLY:-standin,haproxy,lb}"
# shellcheck source=scripts/cpu.sh
. scripts/cpu.sh
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
require_root
install_tools ip:iproute2 ethtool:ethtool nft:nftables conntrack:conntrack wrk:wrk iperf3:iperf3 haproxy:haproxy \
    curl:curl python3:python3
case ",$ONLY," in
*,lb,*)
    if [ -z "${LB_DPDK:-}" ]; then
        ensure_c_tools
        echo "==> cargo build --release -p lb-dpdk"
        if ! cargo build --release -p lb-dpdk; then
            # The other data planes are still measured; the table says lb-dpdk is missing.
            echo "live-bench.sh: the build failed: measuring without lb-dpdk" >&2
            ONLY="$(echo ",$ONLY," | sed 's/,lb,/,/; s/^,//; s/,$//')"
        fi
    fi
    ;;
esac
exec python3 scripts/live/bench.py --mode "${BENCH_MODE:-afxdp}" --seconds "$SECONDS_EACH" --only "$ONLY"
