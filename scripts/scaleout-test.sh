#!/usr/bin/env bash
# Scale-out harness (test.sh's step 10): three MUXes behind a BIRD 2 router's ECMP, each announcing the
# VIP over BGP through ExaBGP (the node file's `bgp` section), hosts on Direct Server Return; kill -9
# a MUX, restart it, SIGTERM another, reload one, stop a backend's server while MUXes come and go,
# and print what the connections and the MUXes saw (scripts/live/scaleout.py, docs/bgp.md). As root: installs bird2, exabgp and the live harness's tools, builds the release
# binary (unless LB_DPDK names one), and runs the harness under a hard timeout.
#
#   scripts/scaleout-test.sh
#   SCALEOUT_LOGS=/tmp/scaleout scripts/scaleout-test.sh     # keep node files and logs there
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scaleout-test.sh: needs root (network namespaces, XDP, BGP)" >&2
    exit 1
fi
# shellcheck source=scripts/cpu.sh
. scripts/cpu.sh
# shellcheck source=scripts/apt.sh
. scripts/apt.sh

missing=()
for pair in bird:bird2 birdc:bird2 exabgp:exabgp ip:iproute2 ethtool:ethtool curl:curl clang:clang python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ -e /usr/include/bpf/libbpf.h ] || missing+=(libbpf-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "scaleout-test.sh: installing ${missing[*]}"
    # bird2's package starts a daemon of its own where systemd runs; the harness runs its own BIRD
    # in the router's namespace.
    apt_install "${missing[@]}" || { echo "scaleout-test.sh: apt-get install failed" >&2; exit 1; }
fi

if [ -z "${LB_DPDK:-}" ]; then
    ensure_c_tools
    echo "==> cargo build --release -p lb-dpdk"
    LB_XDP_REQUIRED=1 cargo build --release -p lb-dpdk || exit 1
fi
export LB_DPDK="${LB_DPDK:-$PWD/${CARGO_TARGET_DIR:-target}/release/lb-dpdk}"

deadline="${SCALEOUT_DEADLINE:-400}"
args=(--deadline "$deadline")
[ -n "${SCALEOUT_LOGS:-}" ] && args+=(--logs "$SCALEOUT_LOGS")
# A hard bound over the harness's own deadline: teardown happens on SIGTERM too.
timeout --signal=TERM --kill-after=60 "$((deadline + 120))" python3 scripts/live/scaleout.py "${args[@]}"
