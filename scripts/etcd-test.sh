#!/usr/bin/env bash
# Control-plane harness (CI runs it: scripts/test.sh step 11): a real 3-member etcd in network namespaces, three MUXes
# behind a BIRD 2 router's ECMP and two host agents, every node in etcd mode (the node file's
# `etcd` section), load balancers applied, changed, refused and deleted with lbctl while kernel
# connections go through the VIPs; etcd members killed and stopped; a backend stopped; and the
# figures: apply -> every node, apply -> a new port answers, 1,000 VIPs over 10,000 backends
# (scripts/live/controlplane.py, scripts/live/README.md). As root: installs bird2, exabgp,
# etcd-server, etcd-client and the live harness's tools, builds the release binaries (unless
# LB_DPDK and LBCTL name them), and runs the harness under a hard timeout.
#
#   scripts/etcd-test.sh
#   ETCD_TEST_LOGS=/tmp/etcd-test scripts/etcd-test.sh   # keep node files, load balancers and logs there
#   ETCD_TEST_STEPS=1,2,6 scripts/etcd-test.sh             # some of the steps (1 always runs)
#   ETCD_TEST_NO_NODES=1 scripts/etcd-test.sh              # no lb-dpdk: etcd, lbctl and every configuration
#   scripts/etcd-test.sh selftest                          # etcdcluster.py's self-test alone, with
#                                                          # lb-control's tests against its cluster
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/cpu.sh
. scripts/cpu.sh
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
require_root

missing=()
for pair in bird:bird2 birdc:bird2 exabgp:exabgp etcd:etcd-server etcdctl:etcd-client ip:iproute2 \
    ethtool:ethtool curl:curl clang:clang python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ -e /usr/include/bpf/libbpf.h ] || missing+=(libbpf-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    # De-duplicated (bird and birdc are one package). bird2's and etcd-server's packages start
    # daemons of their own where systemd runs; the harness runs its own in namespaces.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "etcd-test.sh: installing ${missing[*]}"
    apt_install "${missing[@]}" || { echo "etcd-test.sh: apt-get install failed" >&2; exit 1; }
fi

no_nodes="${ETCD_TEST_NO_NODES:-0}"
[ "${1:-}" = selftest ] && no_nodes=1
packages=()
[ -z "${LBCTL:-}" ] && packages+=(-p lb-control)
[ -z "${LB_DPDK:-}" ] && [ "$no_nodes" != 1 ] && packages+=(-p lb-dpdk)
if [ "${#packages[@]}" -gt 0 ]; then
    ensure_c_tools
    echo "==> cargo build --release ${packages[*]}"
    LB_XDP_REQUIRED=1 nice -n 10 cargo build --release "${packages[@]}" || exit 1
fi
target="$PWD/${CARGO_TARGET_DIR:-target}/release"
export LB_DPDK="${LB_DPDK:-$target/lb-dpdk}"
export LBCTL="${LBCTL:-$target/lbctl}"

if [ "${1:-}" = selftest ]; then
    args=()
    [ -n "${ETCD_TEST_LOGS:-}" ] && args+=(--logs "$ETCD_TEST_LOGS")
    # lb-control's tests against the cluster (tests/etcd_live.rs, skipped without an etcd).
    echo "==> cargo test -p lb-control --test etcd_live --no-run"
    client_tests="$(nice -n 10 cargo test -p lb-control --test etcd_live --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "etcd_live":
        print(m["executable"])')"
    [ -x "$client_tests" ] || { echo "etcd-test.sh: lb-control's etcd_live tests did not build" >&2; exit 1; }
    args+=(--client-tests "$client_tests")
    exec timeout --signal=TERM --kill-after=30 120 python3 scripts/live/etcdcluster.py selftest "${args[@]}"
fi

deadline="${ETCD_TEST_DEADLINE:-300}"
args=(--deadline "$deadline")
[ -n "${ETCD_TEST_LOGS:-}" ] && args+=(--logs "$ETCD_TEST_LOGS")
[ -n "${ETCD_TEST_STEPS:-}" ] && args+=(--steps "$ETCD_TEST_STEPS")
[ "$no_nodes" = 1 ] && args+=(--no-nodes)
# A hard bound over the harness's own deadline: teardown happens on SIGTERM too.
timeout --signal=TERM --kill-after=60 "$((deadline + 90))" python3 scripts/live/controlplane.py "${args[@]}"
