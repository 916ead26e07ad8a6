#!/usr/bin/env python3
"""The live benchmark: on one set of namespaces (topology.py), one data plane after the other:

  lb-dpdk   the MUX and both host agents (--mode afxdp by default), VIP 198.19.0.12
  stand-in  the kernel: VxLAN device on the MUX, nftables DNAT on the hosts, same VIP
  haproxy   Debian's HAProxy in TCP mode in the MUX namespace (198.19.0.30), to the same backends
            over the management route (no tunnel, no host agent: a proxy, not an Ananta path)

and for each: requests a second on new connections (wrk, `Connection: close`, 64 connections, against
a fast responder in each backend: HAProxy's `http-request return`, so that the servers are not what
is measured), throughput of one and of eight TCP streams (iperf3, client to backend: the direction
that crosses the MUX), and CPU time per packet: the data plane's own (lb-dpdk and HAProxy from
/proc/PID/stat over the packets they handled; the stand-in's work is kernel softirq time, which no
process carries) and the whole machine's (every CPU's busy time from /proc/stat over the packets the
router sent to the MUX), which includes the clients and servers and so compares the three alike.

    bench.py [--mode afxdp|afpacket|dpdk] [--seconds 10] [--only lb,standin,haproxy]
"""

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, CommandError, link_stats, log, nsrun  # noqa: E402
import topology as T  # noqa: E402
from dataplane import HAProxy, LbDpdk, StandIn  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """utime + stime of `pid`, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / TICK


def start_bench_servers(topo):
    """A fast HTTP responder (HAProxy) and an iperf3 server in each backend."""
    for b in T.BACKENDS:
        cfg = os.path.join(topo.logdir, "fast-%s.cfg" % b[0])
        with open(cfg, "w") as f:
            f.write("""global
  maxconn 8000
defaults
  mode http
  timeout client 10s
  timeout server 10s
  timeout connect 5s
frontend fast
  bind :::%d v4v6
  http-request return status 200 content-type text/plain string "%s\\n"
""" % (T.PORT_FAST, b[0]))
        ns = topo.ns(b[0].lower())
        topo.procs.start("fast-" + b[0], ns, ["haproxy", "-db", "-f", cfg])
        topo.procs.start("iperf-" + b[0], ns, ["iperf3", "-s", "-p", str(T.PORT_IPERF)])
    time.sleep(1)


class Meter:
    """CPU and packet counters over one measurement."""

    def __init__(self, topo, dp):
        self.t, self.dp = topo, dp

    def snap(self):
        pids = self.dp.pids()
        s = {"busy": machine_busy(), "dp_cpu": sum(proc_cpu(p) for p in pids.values()),
             "to_mux": link_stats(self.t.ns("rt"), "mux0")["tx_packets"]}
        mux = link_stats(self.t.ns("mux"), "fab0")
        s["mux_pkts"] = mux["rx_packets"] + mux["tx_packets"]
        if isinstance(self.dp, LbDpdk):
            s["lb_rx"] = sum(self.dp.metrics(r).get(("lb_rx_frames_total", ""), 0) for r in ("mux", "h1", "h2"))
        return s


def run_wrk(topo, vip, seconds):
    out = nsrun(topo.ns("client"), ["wrk", "-t2", "-c64", "-d%ds" % seconds, "-H", "Connection: close",
                                    "http://%s/" % vip], timeout=seconds + 30)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0,
            "errors": (errors.group(1) if errors else "") + (" non-2xx %s" % non2xx.group(1) if non2xx else "")}


def run_iperf(topo, vip, streams, seconds):
    out = nsrun(topo.ns("client"), ["iperf3", "-c", vip, "-p", str(T.PORT_IPERF), "-t", str(seconds), "-P", str(streams),
                                    "-J"], timeout=seconds + 30, check=False)
    try:
        j = json.loads(out)
        return j["end"]["sum_received"]["bits_per_second"] / 1e9, j["end"]["sum_sent"].get("retransmits", 0)
    except (ValueError, KeyError):
        return 0.0, "error: %s" % out[-200:]


def measure(topo, dp, vip, seconds):
    m = Meter(topo, dp)
    a = m.snap()
    w = run_wrk(topo, vip, seconds)
    one = run_iperf(topo, vip, 1, seconds)
    eight = run_iperf(topo, vip, 8, seconds)
    b = m.snap()
    d = {k: b[k] - a[k] for k in a}
    row = {"rps": w["rps"], "wrk_errors": w["errors"], "gbit1": one[0], "retr1": one[1], "gbit8": eight[0],
           "retr8": eight[1], "machine_ns": d["busy"] / d["to_mux"] * 1e9 if d["to_mux"] else None,
           "packets_to_mux": d["to_mux"]}
    if isinstance(dp, LbDpdk) and d.get("lb_rx"):
        row["dp_ns"] = d["dp_cpu"] / d["lb_rx"] * 1e9
        row["dp_packets"] = int(d["lb_rx"])
    elif isinstance(dp, HAProxy) and d["mux_pkts"]:
        row["dp_ns"] = d["dp_cpu"] / d["mux_pkts"] * 1e9
        row["dp_packets"] = d["mux_pkts"]
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["afxdp", "afpacket", "dpdk"], default="afxdp")
    p.add_argument("--binary")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--only", default="standin,haproxy,lb")
    p.add_argument("--prefix")
    p.add_argument("--logs")
    a = p.parse_args()
    T.require_root()
    topo = T.Topology(a.prefix, logdir=a.logs, static_neighbours=a.mode == "dpdk",
                      checksum_offload=a.mode == "afpacket")
    T.guard(topo)
    rows = []
    try:
        topo.up()
        start_bench_servers(topo)
        for which in a.only.split(","):
            if which == "standin":
                dp, vip, label = StandIn(topo, probes=False), T.VIP_BENCH4, "kernel stand-in"
            elif which == "haproxy":
                dp, vip, label = HAProxy(topo), T.VIP_HAPROXY4, "HAProxy (TCP mode)"
            elif which == "lb":
                binary = a.binary or os.environ.get("LB_DPDK") or os.path.join(REPO, "target", "release", "lb-dpdk")
                dp, vip, label = LbDpdk(topo, a.mode, binary, probes=False), T.VIP_BENCH4, "lb-dpdk (%s)" % a.mode
            else:
                raise SystemExit("unknown data plane %r" % which)
            log("benchmark: %s" % label)
            try:
                dp.start()
                time.sleep(1)
                row = measure(topo, dp, vip, a.seconds)
            except (CommandError, RuntimeError, OSError) as e:
                row = {"error": str(e).splitlines()[0][:120]}
            finally:
                try:
                    dp.stop()
                except Exception as e:  # the next data plane needs the namespaces clean; say what failed
                    log("stopping %s: %s" % (label, e))
            rows.append((label, row))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        topo.down()
    fmt = "%-22s %12s %14s %14s %16s %18s"
    print()
    print(fmt % ("data plane", "new conn/s", "1 stream Gb/s", "8 streams Gb/s", "DP CPU ns/pkt", "machine CPU ns/pkt"))
    for label, r in rows:
        if "error" in r:
            print("%-22s %s" % (label, "n/a: " + r["error"]))
            continue
        f = lambda v, spec: (spec % v) if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(fmt % (label, f(r["rps"], "%.0f"), f(r["gbit1"], "%.2f"), f(r["gbit8"], "%.2f"),
                     f(r.get("dp_ns"), "%.0f"), f(r.get("machine_ns"), "%.0f")))
    print("\nwrk: 2 threads, 64 connections, Connection: close, %ds; iperf3 client -> backend, %ds; "
          "packets to the MUX counted on the router's link." % (a.seconds, a.seconds))
    for label, r in rows:
        if "error" not in r and (r.get("wrk_errors") or r.get("retr1") or r.get("retr8")):
            print("%s: wrk %s; iperf3 retransmits %s / %s" % (label, r.get("wrk_errors") or "no errors",
                                                             r.get("retr1"), r.get("retr8")))


if __name__ == "__main__":
    main()
