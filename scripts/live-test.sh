#!/usr/bin/env bash
# Live tests: real kernel sockets in network namespaces through lb-dpdk's live ports (see
# scripts/live/README.md). As root: installs the tools it needs, builds the release binary, runs
# every check on AF_XDP, a subset on AF_PACKET and with the MUX on DPDK's net_af_xdp and
# net_af_packet, and ends with
# `live: N passed, M failed`.
#
#   scripts/live-test.sh                      # afxdp (all checks), afpacket and the DPDK modes (subsets)
#   LIVE_MODES="standin afxdp" scripts/live-test.sh
#   LIVE_ONLY=balance,pmtu scripts/live-test.sh    # the same checks in every mode
#
# Environment: LIVE_MODES (default "afxdp afpacket dpdk dpdk-afpacket"; "standin" runs the kernel stand-in),
# LIVE_ONLY, LIVE_IDLE_SECONDS (the idle-timeout check's timeout, default 20), LIVE_DEADLINE
# (seconds a mode may take, default 900 for afxdp and the stand-in, 300 for the others), LB_DPDK
# (a binary to use instead of building one), LIVE_LOGS (keep logs and node files in this folder).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/cpu.sh
. scripts/cpu.sh
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
require_root

MODES="${LIVE_MODES:-afxdp afpacket dpdk dpdk-afpacket}"

# tool:package pairs the checks and the data planes use.
missing=()
for pair in ip:iproute2 ethtool:ethtool nft:nftables conntrack:conntrack curl:curl tcpdump:tcpdump \
    clang:clang python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ -e /usr/include/bpf/libbpf.h ] || missing+=(libbpf-dev)
case " $MODES " in
*" dpdk"*) { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libdpdk; } ||
    missing+=(libdpdk-dev dpdk-dev libclang-dev pkg-config) ;;
esac
if [ "${#missing[@]}" -gt 0 ]; then
    echo "live-test.sh: installing ${missing[*]}"
    apt_install "${missing[@]}" || echo "live-test.sh: apt-get install failed; going on with what is there" >&2
fi

needs_binary=0
for m in $MODES; do [ "$m" != standin ] && needs_binary=1; done
if [ "$needs_binary" -eq 1 ] && [ -z "${LB_DPDK:-}" ]; then
    ensure_c_tools
    features=()
    case " $MODES " in *" dpdk"*) pkg-config --exists libdpdk 2>/dev/null && features=(--features dpdk) ;; esac
    echo "==> cargo build --release -p lb-dpdk ${features[*]}"
    if ! cargo build --release -p lb-dpdk "${features[@]}"; then
        echo "live: 0 passed, 1 failed"
        exit 1
    fi
fi
export LB_DPDK="${LB_DPDK:-$PWD/${CARGO_TARGET_DIR:-target}/release/lb-dpdk}"

summary="$(mktemp /tmp/lb-live-summary.XXXXXX)"
trap 'rm -f "$summary"' EXIT
status=0
for mode in $MODES; do
    case "$mode" in
    afxdp | standin) only="${LIVE_ONLY:-}" deadline="${LIVE_DEADLINE:-900}" ;;
    afpacket) only="${LIVE_ONLY:-balance,pmtu,outbound,download}" deadline="${LIVE_DEADLINE:-300}" ;;
    dpdk) only="${LIVE_ONLY:-balance,download}" deadline="${LIVE_DEADLINE:-300}" ;;
    dpdk-afpacket) only="${LIVE_ONLY:-balance}" deadline="${LIVE_DEADLINE:-300}" ;;
    *) echo "live-test.sh: unknown mode $mode" >&2; status=1; continue ;;
    esac
    args=(--mode "$mode" --deadline "$deadline" --idle-seconds "${LIVE_IDLE_SECONDS:-20}" --summary "$summary")
    [ -n "$only" ] && args+=(--only "$only")
    [ -n "${LIVE_LOGS:-}" ] && args+=(--logs "$LIVE_LOGS/$mode")
    echo "==> live checks, mode $mode${only:+ ($only)}"
    # A hard bound over the harness's own deadline: teardown happens on SIGTERM too.
    timeout --signal=TERM --kill-after=60 "$((deadline + 120))" python3 scripts/live/checks.py "${args[@]}" || status=1
done

passed=0 failed=0
while read -r line; do
    p="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["passed"])' "$line")"
    f="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["failed"])' "$line")"
    passed=$((passed + p)) failed=$((failed + f))
done <"$summary"
# A mode whose harness died before writing its counts is one failure.
ran="$(wc -l <"$summary")"
for _ in $MODES; do ran=$((ran - 1)); done
[ "$ran" -lt 0 ] && failed=$((failed - ran))
echo "live: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
