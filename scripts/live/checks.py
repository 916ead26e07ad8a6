#!/usr/bin/env python3
"""The live checks: real kernel sockets in network namespaces (topology.py) through a data plane,
either lb-dpdk (`--mode afxdp|afpacket|dpdk`) or the kernel stand-in (`--mode standin`: a VxLAN
device on the MUX, nftables DNAT on the hosts; see dataplane.py).

  balance   1,000 HTTP requests on fresh connections to each rule: IPv4 with port translation
            (80 -> 8080), IPv6, floating IP (the backends listen on the VIP), and UDP
            request/response; every one answered, each backend's share within a tolerance, the
            servers see the clients' own addresses and ports
  pmtu      a 1500-byte UDP datagram with DF, too large for the 1500-byte underlay after VxLAN: ICMP
            "fragmentation needed" comes back, a datagram of the reported MTU is answered, and a
            256 KB upload on TCP arrives intact
  outbound  a backend's connection to the internet server leaves with the outbound frontend's address;
            1,000 concurrent connections from one backend
  download  200 MB through the MUX return path and through Direct Server Return (the hosts restarted
            with the other node file): SHA-256, bounded retransmissions, and the MUX carrying the
            replies or not
  health    a backend's server stopped: no new connection reaches it within intervalInSeconds x
            numberOfProbes, the others never fail, and established connections to the others keep
            going; restarted, it takes new connections again within 3 x intervalInSeconds + 3 s
  idle      an idle connection past its rule's idle timeout gets a TCP reset at both ends
            (--idle-seconds; Azure's smallest timeout is 4 minutes)
  flood     hundreds of thousands of spoofed SYNs at a VIP while 64 established connections transfer:
            none breaks, and the flood shows in the data plane's counters

Each check prints what it measured; on failure, which connection failed and the data plane's
counters. `--only a,b` runs some; the whole run is bounded by `--deadline`. The last line is
`live MODE: N passed, M failed` (skipped checks are named, not counted as passed).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, PY, REPO, CommandError, Deadline, link_stats, log, nsjson, nsrun, read_snmp  # noqa: E402
import topology as T  # noqa: E402
from dataplane import LbDpdk, StandIn  # noqa: E402
from lbconfig import PROBE_COUNT, PROBE_INTERVAL  # noqa: E402

CLIENTS = os.path.join(HERE, "clients.py")
ORDER = ["balance", "pmtu", "outbound", "download", "health", "idle", "flood"]
LETTERS = dict(zip("abcdefg", ["balance", "download", "outbound", "health", "idle", "flood", "pmtu"]))


class Skip(Exception):
    pass


class Ctx:
    def __init__(self, topo, dp, args, deadline):
        self.t, self.dp, self.a, self.deadline = topo, dp, args, deadline

    def client(self, sub, *args, ns="client", seconds=60):
        """Runs clients.py SUB in namespace `ns` and returns its JSON result."""
        secs = self.deadline.cap(seconds)
        return nsjson(self.t.ns(ns), [PY, CLIENTS, sub, "--seconds", str(round(secs, 1))] + [str(x) for x in args],
                      timeout=secs + 30)

    def popen_client(self, sub, *args, ns="client", seconds=60):
        """Starts clients.py SUB in the background (its output is read line by line)."""
        secs = self.deadline.cap(seconds)
        cmd = ["ip", "netns", "exec", self.t.ns(ns), PY, "-u", CLIENTS, sub, "--seconds", str(round(secs, 1))]
        return subprocess.Popen(cmd + [str(x) for x in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)


def share_ok(backends, names, total, low=0.5, high=1.6):
    """Each backend's share within [low, high] x its fair share. Maglev's table gives each of n
    equal members 1/n of the slots to within a fraction of a percent; the rest is the binomial spread
    of N random 5-tuples (for 1,000 over 4, a standard deviation of 14 around 250)."""
    fair = total / len(names)
    bad = [n for n in names if not (low * fair <= backends.get(n, 0) <= high * fair)]
    return not bad, bad


def check_balance(c):
    names = [b[0] for b in T.BACKENDS]
    n = c.a.requests
    cases = [
        ("IPv4 80->8080", "http", T.VIP_WEB4, 80, T.CLIENT_V4),
        ("IPv6 80->8080", "http", T.VIP_WEB6, 80, T.CLIENT_V6),
        ("floating IP", "http", T.VIP_FLOAT4, 80, T.CLIENT_V4),
        ("UDP 53->5353", "udp", T.VIP_WEB4, 53, T.CLIENT_V4),
    ]
    ok, lines = True, []
    for label, kind, vip, port, sources in cases:
        r = c.client(kind, "--host", vip, "--port", port, "--count", n, "--sources", ",".join(sources), seconds=90)
        fine, bad = share_ok(r["backends"], names, n)
        problems = []
        if r["ok"] != n:
            problems.append("%d of %d answered" % (r["ok"], n))
        if not fine:
            problems.append("shares out of tolerance: %s" % ", ".join(bad))
        if r["mismatches"]:
            problems.append("%d servers saw another client address" % r["mismatches"])
        if label == "floating IP" and set(r.get("locals", {})) != {T.VIP_FLOAT4}:
            problems.append("destinations seen by the backends: %s (want the VIP)" % r.get("locals"))
        extra = " retries %d" % r["retries"] if "retries" in r else ""
        lines.append("%-14s %d/%d answered in %.1fs%s; per backend %s%s" % (
            label, r["ok"], n, r["seconds"], extra, " ".join("%s=%d" % (k, r["backends"].get(k, 0)) for k in names),
            "" if not problems else "  <-- " + "; ".join(problems)))
        for f in r["failed"][:5] + r["mismatch"][:5]:
            lines.append("    " + f)
        ok = ok and not problems
    return ok, lines


def check_pmtu(c):
    client = c.t.ns("client")
    nsrun(client, ["ip", "route", "flush", "cache"], check=False, quiet=True)
    before = " ".join(nsrun(client, ["ip", "-4", "route", "get", T.VIP_WEB4]).split())
    r = c.client("pmtu", "--host", T.VIP_WEB4, "--port", 53, "--size", T.MTU - 28, seconds=20)
    after = " ".join(nsrun(client, ["ip", "-4", "route", "get", T.VIP_WEB4]).split())
    post = c.client("post", "--host", T.VIP_WEB4, "--port", 80, "--kb", 256, seconds=30)
    # Full-size segments over IPv6 both ways: the clamp must leave room for IPv6's longer header.
    post6 = c.client("post", "--host", T.VIP_WEB6, "--port", 80, "--kb", 256, seconds=30)
    down6 = c.client("download", "--host", T.VIP_WEB6, "--port", 80, "--mb", 8, seconds=30)
    ok = (r["icmp"] and not r["answered_big"] and r["path_mtu"] <= T.VXLAN_MTU and r["answered_small"]
          and post["ok"] and post6["ok"] and down6["ok"] and "mtu" not in before)
    lines = ["UDP %d bytes with DF from port %d: ICMP fragmentation needed %s, path MTU now %d (route: %s)"
             % (T.MTU, r["sport"], "received" if r["icmp"] else "NOT received", r["path_mtu"], after),
             "UDP %d bytes then: %s%s" % (r["small_size"] + 28, "answered by " + str(r.get("backend")) if r["answered_small"]
                                         else "NOT answered", " (%s)" % r["small_error"] if "small_error" in r else ""),
             "TCP upload of 256 KB (MSS clamped to %d on the hosts): %s" % (
                 T.MSS_CLAMP, "digest matches, backend %s" % post.get("backend") if post["ok"] else "FAILED %s" % post),
             "IPv6: upload of 256 KB %s; download of 8 MB %s" % (
                 "intact (backend %s)" % post6.get("backend") if post6["ok"] else "FAILED %s" % post6,
                 "intact (backend %s, port %s)" % (down6.get("backend"), down6.get("sport")) if down6["ok"]
                 else "FAILED %s" % down6)]
    if r["answered_big"]:
        lines.append("the oversized datagram was answered: the underlay carried it (no PMTU limit on the path)")
    return ok, lines


def check_outbound(c):
    one = c.client("outbound", "--server", T.INET_V4, "--port", T.INET_PORT, "--count", 1, ns="b11", seconds=15)
    many = c.client("outbound", "--server", T.INET_V4, "--port", T.INET_PORT, "--count", c.a.outbound, ns="b11",
                    seconds=60)
    ok = (one["seen"] == {T.VIP_OUT4: 1} and many["seen"] == {T.VIP_OUT4: c.a.outbound}
          and many["distinct_ports"] == c.a.outbound)
    lines = ["B11 -> %s:%d: the server sees %s" % (T.INET_V4, T.INET_PORT, one["seen"] or one["failed"]),
             "%d concurrent from B11: %d answered, sources seen %s, %d distinct ports, %d failures"
             % (c.a.outbound, many["answered"], many["seen"], many["distinct_ports"], many["failures"])]
    lines += ["    " + f for f in many["failed"][:8]]
    return ok, lines


def backend_retrans(c):
    """The backends' retransmitted segments, and those the receiver's D-SACKs showed needless (a
    segment that was late, not lost: veth hands a flow's frames to whichever CPU sends them, and two
    CPUs reorder)."""
    total = spurious = 0
    for b in T.BACKENDS:
        s = read_snmp(c.t.ns(b[0].lower()))
        total += s.get("Tcp.RetransSegs", 0)
        spurious += s.get("TcpExt.TCPDSACKRecvSegs", s.get("TcpExt.TCPDSACKRecv", 0))
    return total, spurious


def check_download(c):
    ok, lines = True, []
    mb = c.a.download_mb
    for rp in ("mux", "direct"):
        c.dp.set_return_path(rp)
        r0, s0 = backend_retrans(c)
        m0 = link_stats(c.t.ns("mux"), "fab0")["tx_bytes"]
        r = c.client("download", "--host", T.VIP_WEB4, "--port", 80, "--mb", mb, "--source", T.CLIENT_V4[0],
                     seconds=180)
        r1, s1 = backend_retrans(c)
        retrans, spurious = r1 - r0, s1 - s0
        mux_tx = link_stats(c.t.ns("mux"), "fab0")["tx_bytes"] - m0
        segments = (mb << 20) // T.MSS_CLAMP
        limit = max(200, int(segments * c.a.max_retrans_pct / 100))
        # Through the MUX every byte of the reply leaves the MUX again; with DSR only the client's
        # ACKs do. Bytes, not frames: the kernel stand-in's VxLAN device merges segments (GRO).
        path_ok = mux_tx >= (mb << 20) * 0.9 if rp == "mux" else mux_tx < (mb << 20) * 0.2
        # Needless retransmissions (reordering) do not count against the limit: lost segments do.
        good = r["ok"] and retrans - spurious <= limit and path_ok
        lines.append("%-6s %d MB from %s (port %s): %s, %.1fs, %.0f Mbit/s, sender retransmissions %d, %d of them "
                     "needless by D-SACK (limit %d on the rest), "
                     "MUX sent %.1f MB%s" % (
                         rp, mb, r.get("backend"), r.get("sport"), "SHA-256 matches" if r.get("sha_ok") else
                         "FAILED: %s" % (r.get("error") or "digest differs, %s bytes" % r.get("bytes")),
                         r["seconds"], r["mbit_s"], retrans, spurious, limit, mux_tx / 1048576.0, "" if path_ok else "  <-- not the %s path" % rp))
        ok = ok and good
    c.dp.set_return_path("mux")
    return ok, lines


def read_lines(p, until, sink):
    """Reads JSON lines of `p` into `sink` until time `until` (monotonic) or its end."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    while time.monotonic() < until:
        if not sel.select(timeout=max(0.0, min(0.5, until - time.monotonic()))):
            if p.poll() is not None:
                break
            continue
        line = p.stdout.readline()
        if not line:
            break
        try:
            sink.append(json.loads(line))
        except ValueError:
            pass


def check_health(c):
    victim = "B11"
    interval, count = PROBE_INTERVAL, PROBE_COUNT
    down_limit = interval * count + 1.5
    # Two successes bring it back: the next probe comes up to one interval after the restart, the
    # second one later; an interval more covers the server's start and the probes' phase.
    up_limit = interval * 3 + 3.0
    total = 4 + down_limit + 4 + 3 + up_limit + 4
    if c.deadline.left() < total + 30:
        raise Skip("not enough time left before the deadline (%.0fs)" % c.deadline.left())
    # Established connections to every backend, held for the whole check.
    longp = c.popen_client("long", "--host", T.VIP_WEB4, "--port", 80, "--conns", 16, "--hold", total + 2,
                           "--sources", ",".join(T.CLIENT_V4), seconds=total + 40)
    first = json.loads(longp.stdout.readline() or "{}")
    watch = c.popen_client("watch", "--host", T.VIP_WEB4, "--port", 80, "--rate", 10, "--seconds", total + 5,
                           seconds=total + 10)
    ev = []
    t_start = time.time()
    read_lines(watch, time.monotonic() + 4, ev)
    c.t.stop_backend(victim)
    t_kill = time.time()
    log("health: %s stopped" % victim)
    read_lines(watch, time.monotonic() + down_limit + 4, ev)
    c.t.start_backend(victim)
    c.t.wait_servers([victim])
    t_restart = time.time()
    log("health: %s restarted" % victim)
    read_lines(watch, time.monotonic() + up_limit + 4, ev)
    watch.kill()
    watch.wait()
    before = [e for e in ev if "t" in e and e["t"] < t_kill]
    dead = [e for e in ev if "t" in e and t_kill <= e["t"] < t_restart]
    after = [e for e in ev if "t" in e and e["t"] >= t_restart]
    # While it is down in the probes' view, a new connection sent to it is refused by its kernel.
    victim_fail = [e for e in dead if "error" in e and "refused" in e["error"].lower()]
    other_fail = [e for e in dead + before if "error" in e and "refused" not in e["error"].lower()]
    last_victim = max([e["t"] for e in victim_fail] + [t_kill])
    down_after = last_victim - t_kill
    back = [e for e in after if e.get("backend") == victim]
    back_after = (back[0]["t"] - t_restart) if back else None
    after_fail = [e for e in after if "error" in e]
    longr = {}
    rest = longp.communicate(timeout=max(5, total + 60 - (time.time() - t_start)))[0]
    for line in rest.splitlines():
        try:
            longr = json.loads(line)
        except ValueError:
            pass
    per = longr.get("per_backend", {})
    others_broken = sum(v[1] for k, v in per.items() if k != victim)
    ok = (before and any(e.get("backend") == victim for e in before) and down_after <= down_limit
          and not other_fail and back_after is not None and back_after <= up_limit and not after_fail
          and others_broken == 0 and first.get("established") == 16)
    lines = ["probes: every %ds, %d failures to go down: limit %.1fs down, %.1fs back up" % (interval, count, down_limit, up_limit),
             "before: %d requests, %s among them" % (len(before), sorted({e.get("backend") for e in before if "backend" in e})),
             "%s stopped: its new connections refused for %.1fs (%d requests), then none sent to it; "
             "other failures %d" % (victim, down_after, len(victim_fail), len(other_fail)),
             "%s restarted: new connections again after %s; failures since %d" % (
                 victim, "%.1fs" % back_after if back_after is not None else "NEVER", len(after_fail)),
             "16 long connections: per backend [completed, broken] %s" % json.dumps(per, sort_keys=True)]
    lines += ["    " + e["error"] for e in (other_fail + after_fail)[:6]]
    return ok, lines


def backend_events(c, name):
    out = []
    try:
        with open(c.t.events_path(name)) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def check_idle(c):
    if "idle" in c.dp.unsupported:
        raise Skip(c.dp.unsupported["idle"])
    idle = c.a.idle_seconds or 240
    slack = 15  # the flow table's sweep visits every bucket about every 5 s under load; more when idle
    if c.deadline.left() < idle + slack + 20:
        raise Skip("idle timeout %ds does not fit before the deadline" % idle)
    r = c.client("idle", "--host", T.VIP_WEB4, "--port", 7, "--idle", idle, "--slack", slack, seconds=idle + slack + 30)
    time.sleep(1)
    seen = [e for b in T.BACKENDS for e in backend_events(c, b[0])
            if e.get("event") == "close" and e.get("port") == r.get("sport") and e.get("client") == T.CLIENT_V4[0]]
    server_reset = any(e.get("how") == "reset" for e in seen)
    ok = r.get("got") == "reset" and server_reset and idle - 1 <= r.get("after", 0) <= idle + slack
    lines = ["rule Echo4 idle timeout %ds (%s), connection from port %s: client got %s after %ss; backend: %s" % (
        idle, "idleTimeoutInSeconds" if c.a.idle_seconds else "idleTimeoutInMinutes 4", r.get("sport"), r.get("got"),
        r.get("after"), ", ".join("%s %s" % (e["backend"], e["how"]) for e in seen) or "connection still open")]
    if r.get("got") == "timeout":
        lines.append("no reset within %ds: does the program take the rule's idle timeout in seconds?" % (idle + slack))
    return ok, lines


def check_flood(c):
    hold = c.a.flood_seconds + 15
    if c.deadline.left() < hold + 40:
        raise Skip("not enough time left before the deadline")
    before = c.dp.flood_count()
    longp = c.popen_client("long", "--host", T.VIP_WEB4, "--port", 80, "--conns", 64, "--hold", hold,
                           "--sources", ",".join(T.CLIENT_V4), seconds=hold + 40)
    first = json.loads(longp.stdout.readline() or "{}")
    time.sleep(2)
    fl = c.client("synflood", "--dst", T.VIP_WEB4, "--dport", 80, "--src-net", T.FLOOD_NET4,
                  "--count", c.a.flood_count, seconds=c.a.flood_seconds)
    during = c.dp.flood_count()
    try:
        out = longp.communicate(timeout=hold + 60)[0]
    except subprocess.TimeoutExpired:
        longp.kill()
        out = longp.communicate()[0]
    lr = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    shown = during - before
    ok = (first.get("established") == 64 and lr.get("completed") == 64 and fl["sent"] >= min(c.a.flood_count, 100000)
          and shown >= 0.5 * fl["sent"])
    lines = ["%d spoofed SYNs from %s in %.1fs (%d/s) at %s:80; counted by the data plane: %d" % (
        fl["sent"], T.FLOOD_NET4, fl["seconds"], fl["pps"], T.VIP_WEB4, shown),
        "64 long connections: %d established, %d completed, longest stall %.2fs, %d bytes" % (
            first.get("established", 0), lr.get("completed", 0), lr.get("max_gap", 0), lr.get("bytes", 0))]
    for k, v in list(lr.get("broken", {}).items())[:8]:
        lines.append("    broken %s: %s" % (k, v))
    return ok, lines


CHECKS = {"balance": check_balance, "pmtu": check_pmtu, "outbound": check_outbound, "download": check_download,
          "health": check_health, "idle": check_idle, "flood": check_flood}


def make_dataplane(topo, a):
    if a.mode == "standin":
        return StandIn(topo)
    binary = a.binary or os.environ.get("LB_DPDK") or os.path.join(REPO, "target", "release", "lb-dpdk")
    if not os.access(binary, os.X_OK):
        raise SystemExit("no lb-dpdk binary at %s (build it, or set LB_DPDK)" % binary)
    return LbDpdk(topo, a.mode, binary, idle_seconds=a.idle_seconds or None, probe6=not a.no_probe6)



def select(only, skip):
    names = []
    for part in (only or ",".join(ORDER)).split(","):
        part = part.strip()
        if not part:
            continue
        name = LETTERS.get(part, part)
        if name not in CHECKS:
            raise SystemExit("unknown check %r (have %s, or a-g)" % (part, ", ".join(ORDER)))
        names.append(name)
    skipped = {LETTERS.get(s, s) for s in (skip or "").split(",") if s}
    return [n for n in ORDER if n in names and n not in skipped]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["standin", "afxdp", "afpacket", "dpdk", "dpdk-afpacket"], default="standin")
    p.add_argument("--only", help="checks to run: names or letters a-g, comma-separated")
    p.add_argument("--skip", help="checks to leave out")
    p.add_argument("--deadline", type=float, default=1200, help="seconds for the whole run (default 1200)")
    p.add_argument("--binary", help="lb-dpdk (default $LB_DPDK, then target/release/lb-dpdk)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--outbound", type=int, default=1000)
    p.add_argument("--download-mb", type=int, default=200)
    p.add_argument("--max-retrans-pct", type=float, default=2.0,
                   help="the download's sender retransmissions, at most this share of its segments (default 2%%):"
                        " veth drops a burst beyond the receive backlog (1,000 frames) of a CPU")
    p.add_argument("--flood-count", type=int, default=300000)
    p.add_argument("--flood-seconds", type=float, default=30)
    p.add_argument("--idle-seconds", type=int, default=20,
                   help="the idle-timeout rule's timeout in seconds, 1..127 (idleTimeoutInSeconds; 0: Azure's 4 minutes)")
    p.add_argument("--no-probe6", action="store_true",
                   help="the IPv6 rule without a probe: the MUX probes IPv6 backends from its IPv6 address, whose"
                        " answers a host agent passes to its kernel only if it knows that address")
    p.add_argument("--prefix", help="namespace prefix (default lbt<pid>-)")
    p.add_argument("--logs", help="keep logs and node files in this directory")
    p.add_argument("--summary", help="append a JSON line with the counts to this file")
    a = p.parse_args()
    T.require_root()
    names = select(a.only, a.skip)
    deadline = Deadline(a.deadline)
    topo = T.Topology(a.prefix, logdir=a.logs, static_neighbours=a.mode.startswith("dpdk"),
                      checksum_offload=a.mode == "afpacket")
    T.guard(topo)
    results = []
    dp = None
    try:
        topo.up()
        dp = make_dataplane(topo, a)
        dp.start()
        c = Ctx(topo, dp, a, deadline)
        for name in names:
            if deadline.left() < 10:
                results.append((name, "FAIL", ["the run's deadline passed before it started"]))
                print("FAIL %s: deadline" % name, flush=True)
                continue
            t0 = time.monotonic()
            log("check %s" % name)
            try:
                ok, lines = CHECKS[name](c)
                status = "PASS" if ok else "FAIL"
            except Skip as e:
                status, lines = "SKIP", [str(e)]
            except (CommandError, RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                status, lines = "FAIL", ["error: %s" % e] + traceback.format_exc().splitlines()[-4:]
            print("%s %s (%s, %.0fs)" % (status, name, a.mode, time.monotonic() - t0), flush=True)
            for line in lines:
                print("    " + line, flush=True)
            if status == "FAIL":
                print("    data plane counters:", flush=True)
                try:
                    for line in dp.counters().splitlines():
                        print("      " + line, flush=True)
                except Exception as e:  # the counters are extra evidence; their absence is said
                    print("      (unavailable: %s)" % e, flush=True)
            results.append((name, status, lines))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        results.append(("interrupted", "FAIL", []))
    except (CommandError, RuntimeError) as e:
        print("FAIL setup (%s): %s" % (a.mode, e), flush=True)
        results.append(("setup", "FAIL", [str(e)]))
    finally:
        if dp is not None:
            try:
                dp.stop()
                report = dp.final_report()
                if report.strip():
                    print("final report (%s):" % a.mode)
                    print(report, flush=True)
            except Exception as e:
                print("stopping the data plane: %s" % e, flush=True)
        topo.down()
    passed = sum(1 for r in results if r[1] == "PASS")
    failed = sum(1 for r in results if r[1] == "FAIL")
    skipped = [r[0] for r in results if r[1] == "SKIP"]
    if a.summary:
        with open(a.summary, "a") as f:
            f.write(json.dumps({"mode": a.mode, "passed": passed, "failed": failed, "skipped": skipped}) + "\n")
    if skipped:
        print("skipped (%s): %s" % (a.mode, ", ".join(skipped)), flush=True)
    print("live-%s: %d passed, %d failed, %d skipped" % (a.mode, passed, failed, len(skipped)), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
