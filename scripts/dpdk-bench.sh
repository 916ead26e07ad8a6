#!/usr/bin/env bash
# Forwarding rate of the DPDK port against DPDK's own testpmd, on virtual devices (no NIC, no
# hugepages): a capture of the generator's realistic mix, replayed forever by net_pcap
# (infinite_rx=1), forwarded to net_null (which drops what it is sent, and receives nothing).
#
#   scripts/dpdk-bench.sh [SECONDS]     # each run measures for SECONDS (default 10)
#   COUNT=4000 SEED=42 ROUNDS=2 scripts/dpdk-bench.sh
#
#   1. dpdk-testpmd, one forwarding lcore, --forward-mode=macswap: the ceiling of the vdevs on this
#      machine (its Rx-pps lines, averaged over the run).
#   2. lb-dpdk run --dpdk (the MUX of examples/demo-mux.node.json) with 1 worker lcore, then with 2
#      (two rx queues: net_pcap gets the capture twice): the rate from the program's own counters,
#      between its status lines after a warm-up, and the engine's own time a frame (its summary).
#
# The three runs are repeated ROUNDS times (default 2), interleaved, and each keeps its best round:
# on a shared machine whose speed drifts from one minute to the next (other tenants), the best of a
# few runs is what the software can do, and every contender gets the same treatment.
#
# Prints each round's rates, with lb-dpdk's ratio to that round's testpmd and its engine time, then
# the three best rates and the ratio of lb-dpdk to testpmd. Needs the system DPDK (libdpdk-dev,
# dpdk-dev for dpdk-testpmd, libclang-dev, pkg-config). The main lcore runs the control plane, so
# 2 workers use 3 lcores: on a machine with fewer cores than that, lcores share cores (then expect
# the 2-worker rate to be noisy, even below the 1-worker one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cpu.sh
. scripts/cpu.sh

SECONDS_PER_RUN="${1:-10}"
COUNT="${COUNT:-4000}"
SEED="${SEED:-42}"
ROUNDS="${ROUNDS:-2}"
CONFIG="${CONFIG:-examples/demo-mux.node.json}"
OUT_DIR=target/dpdk-bench
PCAP="$OUT_DIR/traffic.pcap"
BIN="${CARGO_TARGET_DIR:-target}/release"
WARMUP=3

for tool in cargo dpdk-testpmd pkg-config; do
    command -v "$tool" >/dev/null 2>&1 || { echo "dpdk-bench.sh: $tool not found" >&2; exit 1; }
done
pkg-config --exists libdpdk || { echo "dpdk-bench.sh: pkg-config finds no libdpdk" >&2; exit 1; }

# Lcores for N workers plus the main lcore, on the CPUs this process may use (lcore i on the i-th
# allowed CPU, wrapping around when there are fewer CPUs than lcores).
mapfile -t CPUS < <(python3 -c 'import os; print("\n".join(map(str, sorted(os.sched_getaffinity(0)))))')
lcores() {
    local n="$1" i spec=""
    for ((i = 0; i < n; i++)); do
        spec+="${spec:+,}$i@${CPUS[i % ${#CPUS[@]}]}"
    done
    echo "$spec"
}
EAL_COMMON=(--no-huge --no-pci -m 512 --no-shconf --log-level='*:warning')

echo "==> cargo build --release -p lb-testkit -p lb-dpdk --features lb-dpdk/dpdk"
cargo build --release -p lb-testkit -p lb-dpdk --features lb-dpdk/dpdk

mkdir -p "$OUT_DIR"
echo "==> lb-gen: $COUNT frames, seed $SEED -> $PCAP"
"$BIN/lb-gen" --count "$COUNT" --seed "$SEED" --mix realistic --out "$PCAP" >/dev/null

# Mbufs: net_pcap holds the whole capture in mbufs for each rx queue, plus the rings and caches.
MBUFS=$((4 * COUNT + 16384))

# lb-dpdk's rate from its status lines: rx counter and uptime at the first line after the warm-up
# and at the last line.
lb_rate() {
    awk -v warm="$WARMUP" '
        /^\[ *[0-9.]+s\] in / {
            t = $2; sub(/s\]/, "", t); t += 0
            for (i = 1; i <= NF; i++) if ($i == "rx") rx = $(i + 1)
            if (t >= warm && !have) { t0 = t; r0 = rx; have = 1 }
            t1 = t; r1 = rx
        }
        END { if (have && t1 > t0) printf "%.3f", (r1 - r0) / (t1 - t0) / 1e6; else print "nan" }' "$1"
}

run_lb() {
    local workers="$1" log="$OUT_DIR/lb-dpdk-$1.log" rx=() i
    for ((i = 0; i < workers; i++)); do
        rx+=("rx_pcap=$PCAP")
    done
    local vdev
    vdev="net_pcap0,$(IFS=,; echo "${rx[*]}"),infinite_rx=1"
    set +e
    timeout -s INT "$((SECONDS_PER_RUN + WARMUP))" "$BIN/lb-dpdk" run --dpdk --config "$CONFIG" --no-probes \
        --status-interval 1 --dpdk-tx-port 1 --dpdk-mbufs "$MBUFS" -- \
        "${EAL_COMMON[@]}" --lcores "$(lcores $((workers + 1)))" --vdev="$vdev" --vdev=net_null0,no-rx=1 \
        >"$log" 2>&1 </dev/null
    set -e
    lb_rate "$log"
}

run_testpmd() {
    local TESTPMD_LOG="$OUT_DIR/testpmd.log"
    set +e
    # testpmd takes a few seconds to start (it fills its pool): its stats lines count from the start of
    # forwarding, so it gets that time on top.
    timeout -s INT "$((SECONDS_PER_RUN + WARMUP + 8))" dpdk-testpmd "${EAL_COMMON[@]}" --lcores "$(lcores 2)" \
        --vdev="net_pcap0,rx_pcap=$PCAP,infinite_rx=1" --vdev=net_null0,no-rx=1 -- \
        --forward-mode=macswap --nb-cores=1 --port-topology=chained --total-num-mbufs="$MBUFS" \
        --stats-period 1 -a >"$TESTPMD_LOG" 2>&1 </dev/null
    set -e
    # Port 0's "Rx-pps" lines (one a second), after the warm-up, SECONDS_PER_RUN of them at most.
    awk -v warm="$WARMUP" -v secs="$SECONDS_PER_RUN" '
        /NIC statistics for port 0/ { p0 = 1 }
        /NIC statistics for port 1/ { p0 = 0 }
        p0 && /Rx-pps:/ { n++; if (n > warm && k < secs) { sum += $2; k++ } }
        END { if (k) printf "%.3f", sum / k / 1e6; else print "nan" }' "$TESTPMD_LOG"
}

ratio() { awk -v a="$1" -v t="$2" 'BEGIN { if (t + 0 > 0 && a != "nan") printf "%.0f%%", 100 * a / t; else print "?" }'; }
# The engine's own time a frame (polling and I/O excluded) in the last run with this many workers.
engine_ns() {
    local ns
    ns=$(sed -n 's/^engine time \([0-9.]*\) ns a frame.*/\1/p' "$OUT_DIR/lb-dpdk-$1.log" | tail -1)
    echo "${ns:-?}"
}
best() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || a == "nan" || (b != "nan" && b + 0 > a + 0)) print b; else print a }'; }
TESTPMD_PPS="" LB1="" LB2=""
for ((round = 1; round <= ROUNDS; round++)); do
    echo "==> round $round of $ROUNDS: dpdk-testpmd (1 forwarding lcore, macswap), then lb-dpdk with 1 and 2 workers, ${SECONDS_PER_RUN}s each"
    t=$(run_testpmd)
    echo "testpmd: $t Mpps"
    TESTPMD_PPS=$(best "$TESTPMD_PPS" "$t")
    for workers in 1 2; do
        r=$(run_lb "$workers")
        # This round's ratio too: on a shared machine a round's three runs see the most similar conditions.
        echo "lb-dpdk, $workers worker(s): $r Mpps ($(ratio "$r" "$t") of this round's testpmd;" \
            "engine $(engine_ns "$workers") ns a frame)"
        if [ "$workers" = 1 ]; then LB1=$(best "$LB1" "$r"); else LB2=$(best "$LB2" "$r"); fi
    done
done

echo
echo "CPUs available: ${#CPUS[@]} (${CPUS[*]}); best of $ROUNDS rounds; logs (last round) in $OUT_DIR"
printf "testpmd (1 lcore, macswap)   %8s Mpps\n" "$TESTPMD_PPS"
printf "lb-dpdk MUX, 1 worker        %8s Mpps  (%s of testpmd)\n" "$LB1" "$(ratio "$LB1" "$TESTPMD_PPS")"
printf "lb-dpdk MUX, 2 workers       %8s Mpps  (%s of testpmd)\n" "$LB2" "$(ratio "$LB2" "$TESTPMD_PPS")"
# What a frame cost the MUX itself (the program's "engine time", polling and I/O excluded), in the
# last round: the rest of a frame's time is the vdevs' and the poll loop's.
for workers in 1 2; do
    echo "lb-dpdk, $workers worker(s): the MUX engine took $(engine_ns "$workers") ns a frame (last round)"
done
