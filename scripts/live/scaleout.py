#!/usr/bin/env python3
"""Scale-out: three MUXes behind a BIRD 2 router's ECMP, the VIP announced by each MUX over BGP
(lb-dpdk's `bgp` section: ExaBGP as the MUX's child), and what happens to connections when a MUX
dies, comes back, or is stopped gracefully.

    client ns ──┐                     ┌── mux1 ns 198.18.2.2  ┐
  198.18.1.2-5  │                     ├── mux2 ns 198.18.6.2  ├ lb-dpdk --live afxdp + ExaBGP, AS 65001
                ├── router ns ────────┼── mux3 ns 198.18.7.2  ┘
                    BIRD 2, AS 65000  ├── host 1 ns 198.18.3.2 ── B11, B12   lb-dpdk host agents,
                    ECMP, L4 hash     └── host 2 ns 198.18.4.2 ── B21, B22   returnPath "direct"

The router learns 198.19.0.10/32 from every MUX that announces it and installs it as one ECMP route
(`merge paths on`, fib_multipath_hash_policy=1). The hosts answer straight to the router (Direct
Server Return), so replies do not depend on which MUX is alive; a connection whose packets the
router moves to another MUX keeps its backend, since every MUX picks it by the same Maglev table
(same hashSeed, maglevSize and backends' health) and the host agent holds the connection.

Steps, each bounded in count and time:
  1. BIRD has the VIP as one route with 3 next hops.
  2. 64 long-lived TCP connections to the VIP's echo rule, each sending a numbered pseudo-random
     1 KiB chunk and checking its echo byte for byte, and new HTTP connections at 50/s.
  3. B22 joins the pool (the nodes start with three backends) and 2 s later kill -9 one MUX: time
     until the router withdrew it, new connections failed (and for how long), the moved
     connections the new table would send elsewhere, sent on by the second chance.
  4. Start it again: time until it is announced again, how many of the 64 the router moved.
  5. SIGTERM another MUX: it withdraws, forwards for drainSeconds, exits; nothing fails.
  6. SIGHUP a MUX whose load balancer lost the VIP's rules: withdrawn; back: announced.
  7. B11's server stops while mux2 is killed and restarted and mux3 restarted: every MUX takes B11
     out within intervalInSeconds × numberOfProbes (its lb_backend_up), starts no flow to it
     after (lb_backend_new_flows_total), the new MUXes announce only once they did, no new
     connection fails after; B11 started again comes back on every MUX.
  8. The 64 end: every one on the other backends complete, the right bytes, no reset (those B11
     served end with its server).

Addresses: 198.18.0.0/15 and 2001:2::/48 only; namespaces `lbs<pid>-ROLE`, removed on exit, on
failure and on Ctrl-C. As root:

    python3 scripts/live/scaleout.py [--logs DIR] [--deadline SECONDS]
    scripts/scaleout-test.sh              # installs bird2 and exabgp, builds, runs this
"""

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, Deadline, ip_batch, log, nsrun, run, sysctls  # noqa: E402
import topology as T  # noqa: E402
from lbconfig import PROBE_COUNT, PROBE_INTERVAL, ref, rule  # noqa: E402

# The MUXes' links to the router (the router's end .1, the MUX .2): link 2 is the single MUX's of
# topology.py; 6 and 7 are free there.
MUX_LINKS = {"mux1": 2, "mux2": 6, "mux3": 7}
MUXES = list(MUX_LINKS)
VIP = T.VIP_WEB4
ROUTER_ASN, MUX_ASN = 65000, 65001
HOLD_TIME, DRAIN = 3, 5
STREAMS, NEW_RATE = 64, 50
CHUNK = 1024
# A chunk whose echo takes longer than this is reported (the round trip is well under 1 ms).
STALL = 0.1
METRICS_PORT = 9100
# The backend whose server the harness stops while MUXes come and go.
DOWN_BACKEND = "B11"
# The backend the pool gains just before a MUX is killed (the nodes start without it).
ADDED_BACKEND = "B22"


def underlay(mux):
    return "198.18.%d.2" % MUX_LINKS[mux]


def router_side(mux):
    return "198.18.%d.1" % MUX_LINKS[mux]


# ---------------------------------------------------------------------------------------------------
class ScaleTopology(T.Topology):
    """topology.py's pieces (links, backends, sysctls of the hosts, servers) with three MUX
    namespaces in place of one and no internet namespace. The router's VIP route is BIRD's."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        # _node_link() numbers a node's link by its role: the MUXes' numbers join the table.
        for m, n in MUX_LINKS.items():
            T.LINKS.setdefault(m, n)

    @property
    def all_roles(self):
        return ["rt", "client"] + MUXES + ["h1", "h2"] + [b[0].lower() for b in T.BACKENDS]

    def up(self, servers=True):
        log("building namespaces %s* (logs in %s)" % (self.prefix, self.logdir))
        for role in self.all_roles:
            run(["ip", "netns", "add", self.ns(role)])
            self.created.append(self.ns(role))
            ip_batch(self.ns(role), ["link set lo up"])
        # Before any link exists (LIVE.md): a route whose next hop's link is down is not used, so a
        # dead MUX's link takes its next hop out at once.
        sysctls(self.ns("rt"), [("net.ipv4.conf.all.ignore_routes_with_linkdown", 1),
                                ("net.ipv4.conf.default.ignore_routes_with_linkdown", 1),
                                ("net.ipv6.conf.all.ignore_routes_with_linkdown", 1),
                                ("net.ipv6.conf.default.ignore_routes_with_linkdown", 1)])
        for role in ["client"] + MUXES + ["h1", "h2"]:
            self._node_link(role)
        # The management route: each host's backends through that host (the MUXes' probes).
        routes = []
        for h, n in (("h1", 3), ("h2", 4)):
            v4, v6 = T.BACKEND_NET[h]
            routes += ["route add %s.0/24 via 198.18.%d.2" % (v4, n), "route add %s::/64 via 2001:2:0:%d::2" % (v6, n)]
        ip_batch(self.ns("rt"), routes)
        for b in T.BACKENDS:
            self._backend_link(*b)
        fwd = [("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1),
               ("net.ipv4.conf.all.rp_filter", 0), ("net.ipv4.conf.default.rp_filter", 0),
               ("net.ipv4.conf.all.send_redirects", 0)]
        sysctls(self.ns("rt"), fwd + [("net.ipv4.fib_multipath_hash_policy", 1),
                                      ("net.ipv6.fib_multipath_hash_policy", 1)])
        for h in ("h1", "h2"):
            sysctls(self.ns(h), fwd)
        for m in MUXES:
            sysctls(self.ns(m), [("net.ipv4.conf.all.rp_filter", 0), ("net.ipv4.conf.default.rp_filter", 0),
                                 ("net.ipv4.ip_forward", 0), ("net.ipv6.conf.all.forwarding", 0)])
        sysctls(self.ns("client"), [("net.ipv4.ip_local_port_range", "10000 65000"), ("net.ipv4.tcp_tw_reuse", 1)])
        for b in T.BACKENDS:
            sysctls(self.ns(b[0].lower()), [("net.core.somaxconn", 4096)])
        nsrun(self.ns("client"), ["ethtool", "-K", "fab0"] + self.offloads, quiet=True)
        for b in T.BACKENDS:
            nsrun(self.ns(b[0].lower()), ["ethtool", "-K", "eth0"] + self.offloads, quiet=True)
        if servers:
            for b in T.BACKENDS:
                self.start_backend(b[0])
            self.wait_servers()
        log("topology up")


# ---------------------------------------------------------------------------------------------------
def load_balancer(without=()):
    """One VIP: HTTP 80 -> 8080 and echo 7 -> 7007 over the four backends (but those `without`),
    probed over HTTP."""
    pool = {"name": "Web", "properties": {"vni": 5001, "loadBalancerBackendAddresses": [
        {"name": b[0], "properties": {"ipAddress": b[3], "hostAddress": T.HOST_UNDERLAY[b[1]]}}
        for b in T.BACKENDS if b[0] not in without]}}
    probe = {"name": "Http", "properties": {"protocol": "Http", "port": T.PORT_HTTP, "requestPath": "/health",
                                            "intervalInSeconds": PROBE_INTERVAL, "numberOfProbes": PROBE_COUNT}}
    return {"name": "ScaleLB", "properties": {
        "frontendIPConfigurations": [{"name": "Web4", "properties": {"publicIPAddress": {"ipAddress": VIP}}}],
        "backendAddressPools": [pool], "probes": [probe],
        "loadBalancingRules": [rule("Http4", "Web4", "Web", "Tcp", 80, T.PORT_HTTP),
                               rule("Echo4", "Web4", "Web", "Tcp", 7, T.PORT_ECHO, idle_minutes=30)]}}


def write_nodes(directory):
    os.makedirs(directory, exist_ok=True)
    paths = {}

    def dump(name, obj):
        paths[name] = os.path.join(directory, name + ".json")
        with open(paths[name], "w") as f:
            json.dump(obj, f, indent=2)

    dump("lb", load_balancer())
    # The pool before it gains ADDED_BACKEND: what every node starts with.
    dump("lb-before", load_balancer(without=(ADDED_BACKEND,)))
    # The same load balancer without the VIP's rules: a reload to it withdraws the VIP.
    empty = load_balancer()
    empty["properties"]["loadBalancingRules"] = []
    dump("lb-empty", empty)
    for m in MUXES:
        dump(m, {"role": "mux", "underlay": underlay(m), "interfaces": {"fabric": "fab0"}, "mtu": T.MTU,
                 "flowCapacity": 100000, "loadBalancerFile": "lb-before.json",
                 # A restarted MUX recalls the pools it ran before the last change (second chances).
                 "stateDirectory": "state-" + m,
                 "bgp": {"localAsn": MUX_ASN, "peers": [{"address": router_side(m), "asn": ROUTER_ASN}],
                         "holdTimeSeconds": HOLD_TIME, "drainSeconds": DRAIN}})
    for h, addr in T.HOST_UNDERLAY.items():
        # Direct Server Return: replies go to the router, not back through a MUX that may be gone.
        # `muxes` still lists them: the backends' answers to their probes go to the hosts' kernels.
        dump(h, {"role": "host", "underlay": addr, "interfaces": {"fabric": "fab0", "backends": ["be0", "be1"]},
                 "muxes": [underlay(m) for m in MUXES], "returnPath": "direct", "mssClamp": T.MSS_CLAMP,
                 "mtu": T.MTU, "flowCapacity": 100000, "loadBalancerFile": "lb-before.json"})
    return paths


def bird_config():
    """BIRD 2 on the router: one eBGP connection a MUX, VIP host routes only, merged into one ECMP
    route in the kernel. Timers from LIVE.md (bird's default error wait keeps a flapped peer idle
    for minutes)."""
    conf = ["router id 198.18.1.1;",
            "protocol device { scan time 10; }",
            "protocol kernel {",
            "  ipv4 { import none; export where source = RTS_BGP; };",
            "  merge paths on;",
            "}"]
    for m in MUXES:
        conf += ["protocol bgp %s {" % m,
                 "  local %s as %d;" % (router_side(m), ROUTER_ASN),
                 "  neighbor %s as %d;" % (underlay(m), MUX_ASN),
                 "  hold time %d; keepalive time 1; connect retry time 2; error wait time 1, 5; check link on;"
                 % HOLD_TIME,
                 "  ipv4 { import where net ~ [ 198.19.0.0/16{32,32} ]; export none; };",
                 "}"]
    return "\n".join(conf) + "\n"


# ---------------------------------------------------------------------------------------------------
class Scale:
    def __init__(self, topo, binary):
        self.t = topo
        self.binary = binary
        self.nodes = write_nodes(os.path.join(topo.logdir, "nodes"))
        self.bird_sock = os.path.join(topo.logdir, "bird.ctl")

    # ---- processes ----
    def start_bird(self):
        path = os.path.join(self.t.logdir, "bird.conf")
        with open(path, "w") as f:
            f.write(bird_config())
        self.t.procs.start("bird", self.t.ns("rt"), ["bird", "-f", "-c", path, "-s", self.bird_sock])

    def birdc(self, *cmd):
        return run(["birdc", "-s", self.bird_sock] + list(cmd), check=False, quiet=True, timeout=10)

    def start_lb(self, role):
        # The metrics page is rendered with each status line: every second, so that a MUX's view
        # of a backend's health is read within a second of its change.
        cmd = [self.binary, "run", "--config", self.nodes[role], "--live", "afxdp", "--status-interval", "1",
               "--metrics", "127.0.0.1:%d" % METRICS_PORT]
        self.t.procs.start("lb-" + role, self.t.ns(role), cmd, env={"RUST_BACKTRACE": "1"})

    def set_lb_file(self, role, name):
        """Points a node's file at another load balancer (a reload takes it: the file name is no
        node setting)."""
        with open(self.nodes[role]) as f:
            node = json.load(f)
        node["loadBalancerFile"] = name
        with open(self.nodes[role], "w") as f:
            json.dump(node, f, indent=2)

    def counter(self, role, name):
        """A node's unlabelled counter `name` (0 if it does not answer)."""
        return self.metrics(role).get(name, 0.0)

    def stop_muxes(self):
        """SIGTERM to every MUX at once, then each waited for past its drain."""
        names = ["lb-" + m for m in MUXES if self.t.procs.alive("lb-" + m)]
        for n in names:
            self.t.procs.send(n, signal.SIGTERM)
        for n in names:
            self.t.procs.stop(n, grace=DRAIN + 10)

    def metrics(self, role):
        out = nsrun(self.t.ns(role), ["curl", "-s", "-m", "2", "http://127.0.0.1:%d/metrics" % METRICS_PORT],
                    check=False, quiet=True, timeout=5)
        m = {}
        for line in out.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    m[k] = float(v)
                except ValueError:
                    pass
        return m

    def wait_up(self, roles, backends=len(T.BACKENDS) - 1, timeout=40):
        end = time.time() + timeout
        for role in roles:
            while True:
                if not self.t.procs.alive("lb-" + role):
                    raise RuntimeError("lb-dpdk (%s) exited: %s" % (role, self.t.procs.read("lb-" + role, "err")[-3000:]))
                m = self.metrics(role)
                ups = [v for k, v in m.items() if k.startswith("lb_backend_up")]
                if m and (role in ("h1", "h2") or (len(ups) == backends and all(ups))):
                    break
                if time.time() > end:
                    raise RuntimeError("lb-dpdk (%s) not ready after %ds" % (role, timeout))
                time.sleep(0.3)

    def backend_metric(self, role, name, backend):
        """A MUX's metric `name` for one backend (None: the MUX does not answer or has no row)."""
        for k, v in self.metrics(role).items():
            if k.startswith(name + "{") and 'backend="%s"' % backend in k:
                return v
        return None

    def wait_backend(self, roles, backend, up, t0, timeout):
        """Polls each MUX's lb_backend_up for `backend` until it is `up` on all of them; returns
        {mux: (seconds since t0, lb_backend_new_flows_total then)}, None for one that never got there."""
        seen, end = {}, time.time() + timeout
        while len(seen) < len(roles) and time.time() < end:
            for m in roles:
                if m in seen:
                    continue
                if self.backend_metric(m, "lb_backend_up", backend) == (1.0 if up else 0.0):
                    seen[m] = (round(time.time() - t0, 2), self.backend_metric(m, "lb_backend_new_flows_total", backend))
            time.sleep(0.05)
        return {m: seen.get(m) for m in roles}

    # ---- the router's view ----
    def nexthops(self):
        """The gateways of the router's kernel route to the VIP (empty: no route)."""
        out = run(["ip", "-n", self.t.ns("rt"), "-j", "route", "show", VIP + "/32"], check=False, quiet=True)
        try:
            routes = json.loads(out or "[]")
        except ValueError:
            return []
        hops = []
        for r in routes:
            if "gateway" in r:
                hops.append(r["gateway"])
            hops += [n["gateway"] for n in r.get("nexthops", []) if "gateway" in n]
        return sorted(hops)

    def wait_nexthops(self, want, timeout, step=0.005):
        """Polls the router's route until `want(hops)`; returns (seconds, hops) or (None, hops)."""
        t0 = time.monotonic()
        hops = self.nexthops()
        while not want(hops):
            if time.monotonic() - t0 > timeout:
                return None, hops
            time.sleep(step)
            hops = self.nexthops()
        return time.monotonic() - t0, hops

    def route_of(self, flows):
        """Which MUX the router sends each flow (source address, port) to now: `ip route get` with
        the flow's ports, hashed as the router hashes it (fib_multipath_hash_policy=1)."""
        lines = ["route get %s from %s iif client0 ipproto tcp sport %d dport 7" % (VIP, src, port)
                 for src, port in flows]
        out = run(["ip", "-n", self.t.ns("rt"), "-batch", "-"], input="\n".join(lines) + "\n", check=False,
                  quiet=True, timeout=20)
        via = []
        for line in out.splitlines():
            if line.startswith(VIP):
                w = line.split()
                via.append(w[w.index("via") + 1] if "via" in w else None)
        return dict(zip(flows, via)) if len(via) == len(flows) else {}


# ---------------------------------------------------------------------------------------------------
# The client: runs in the client namespace (`scaleout.py traffic ...`), writes one JSON line an
# event to --events and its summary as the last line of stdout.

def cmd_traffic(a):
    import resource
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        pass
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    events = open(a.events, "a", buffering=1)

    def emit(**kv):
        with lock:
            events.write(json.dumps(kv) + "\n")

    sources = a.sources.split(",")
    results = {}

    def stream(i):
        rng = random.Random(1000 + i)
        r = {"sent": 0, "echoed": 0, "max_stall": 0.0, "chunks": 0}
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.bind((sources[i % len(sources)], 0))
            s.connect((a.vip, 7))
            r["flow"] = list(s.getsockname()[:2])
            emit(event="stream", i=i, src=r["flow"][0], sport=r["flow"][1])
            k = 0
            while not stop.is_set() and k < a.max_chunks:
                chunk = struct.pack("!II", i, k) + rng.randbytes(CHUNK - 8)
                t0 = time.monotonic()
                s.sendall(chunk)
                got = b""
                while len(got) < len(chunk):
                    b = s.recv(len(chunk) - len(got))
                    if not b:
                        raise ConnectionError("closed by the peer after %d bytes" % r["echoed"])
                    got += b
                if got != chunk:
                    raise ValueError("chunk %d came back different" % k)
                r["sent"] += len(chunk)
                r["echoed"] += len(got)
                rtt = time.monotonic() - t0
                r["max_stall"] = max(r["max_stall"], rtt)
                if rtt > STALL:
                    # A chunk that waited (a packet lost on a MUX that died, then retransmitted):
                    # when its echo came, for the time from a change to each connection's next byte.
                    emit(event="stall", i=i, t=round(time.time(), 4), dt=round(rtt, 4))
                k += 1
                stop.wait(a.gap)
            r["chunks"] = k
            s.shutdown(socket.SHUT_WR)
            rest = s.recv(1)
            r["end"] = "eof" if rest == b"" else "extra bytes"
        except (OSError, ValueError, ConnectionError) as e:
            r["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            s.close()
        r["max_stall"] = round(r["max_stall"], 3)
        with lock:
            results[i] = r

    def one(n):
        src = sources[n % len(sources)]
        t0 = time.time()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(a.timeout)
        where = {}
        try:
            s.bind((src, 0))
            where = {"src": src, "sport": s.getsockname()[1]}
            s.connect((a.vip, 80))
            s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
            ok = data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200")
            emit(event="new", t=t0, dt=round(time.time() - t0, 4), ok=ok, **where,
                 **({} if ok else {"error": "bad answer"}))
        except OSError as e:
            emit(event="new", t=t0, dt=round(time.time() - t0, 4), ok=False, error=str(e), **where)
        finally:
            s.close()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(a.streams)]
    for th in threads:
        th.start()
        time.sleep(0.01)
    emit(event="streams_started")
    end = time.monotonic() + a.seconds
    n = 0
    nxt = time.monotonic()
    pending = []
    while not stop.is_set() and time.monotonic() < end:
        th = threading.Thread(target=one, args=(n,), daemon=True)
        th.start()
        pending.append(th)
        n += 1
        nxt += 1.0 / a.rate
        stop.wait(max(0.0, nxt - time.monotonic()))
        pending = [p for p in pending if p.is_alive()]
    stop.set()
    for th in threads:
        th.join(timeout=60)
    for th in pending:
        th.join(timeout=a.timeout + 1)
    broken = {i: r for i, r in results.items() if "error" in r or r.get("end") != "eof" or r["sent"] != r["echoed"]}
    print(json.dumps({"streams": a.streams, "finished": len(results), "complete": len(results) - len(broken),
                      "broken": broken, "bytes": sum(r["echoed"] for r in results.values()),
                      "max_stall": max([r["max_stall"] for r in results.values()] or [0]),
                      "new_started": n}), flush=True)


# ---------------------------------------------------------------------------------------------------
def phase_stats(news, t0, t1):
    """New connections started in [t0, t1): count, failed, the window from the first failure's
    start to the last one's end, and the slow ones (> 0.9 s: a SYN retransmitted)."""
    inside = [e for e in news if t0 <= e["t"] < t1]
    failed = [e for e in inside if not e["ok"]]
    slow = [e for e in inside if e["ok"] and e["dt"] > 0.9]
    window = (max(e["t"] + e["dt"] for e in failed) - min(e["t"] for e in failed)) if failed else 0.0
    return {"started": len(inside), "failed": len(failed), "failure_window_s": round(window, 3), "slow": len(slow),
            "errors": sorted({e.get("error", "?") for e in failed})[:5]}


def read_events(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def last_byte_after(stalls, t0):
    """Seconds from `t0` to the echo of the last chunk that was on its way at `t0` and waited
    (None: no chunk waited longer than STALL, so every connection's next byte came within it)."""
    hit = [s["t"] - t0 for s in stalls if s["t"] - s["dt"] <= t0 + 0.2 and t0 <= s["t"] <= t0 + 10]
    return round(max(hit), 3) if hit else None


def moved(before, after):
    both = [f for f in before if f in after]
    return sum(1 for f in both if before[f] != after[f]), len(both)


def share(routes):
    c = {}
    for via in routes.values():
        c[via] = c.get(via, 0) + 1
    return {m: c.get(underlay(m), 0) for m in MUXES}


def scenario(sc, deadline):
    t, fig, ok = sc.t, {}, True

    def check(cond, what):
        nonlocal ok
        log(("ok    " if cond else "FAIL  ") + what)
        ok = ok and bool(cond)

    all3 = sorted(underlay(m) for m in MUXES)
    log("starting the host agents, BIRD and three MUXes")
    for h in ("h1", "h2"):
        sc.start_lb(h)
    sc.start_bird()
    for m in MUXES:
        sc.start_lb(m)
    sc.wait_up(["h1", "h2"] + MUXES)
    secs, hops = sc.wait_nexthops(lambda h: h == all3, deadline.cap(30), step=0.1)
    fig["bird"] = sc.birdc("show", "route", "for", VIP, "all").strip()
    fig["kernel_route"] = run(["ip", "-n", t.ns("rt"), "route", "show", VIP + "/32"], check=False, quiet=True).strip()
    check(secs is not None, "the router has %s as one ECMP route with 3 next hops (%s)" % (VIP, ", ".join(hops)))
    if secs is None:
        log(sc.birdc("show", "protocols", "all"))
        return False, fig

    events = os.path.join(t.logdir, "client-events.jsonl")
    seconds = deadline.cap(150)
    client = t.procs.start("client", t.ns("client"), [sys.executable, os.path.abspath(__file__), "traffic", "--vip", VIP,
                           "--streams", str(STREAMS), "--rate", str(NEW_RATE), "--seconds", str(seconds),
                           "--sources", ",".join(T.CLIENT_V4), "--events", events])
    end = time.time() + 20
    while time.time() < end and not any(e.get("event") == "streams_started" for e in read_events(events)):
        time.sleep(0.2)
    flows = [(e["src"], e["sport"]) for e in read_events(events) if e.get("event") == "stream"]
    check(len(flows) == STREAMS, "%d of %d long-lived connections established" % (len(flows), STREAMS))
    time.sleep(3)
    r0 = sc.route_of(flows)
    fig["share_3"] = share(r0)
    log("the router spreads the 64 over the MUXes: %s" % fig["share_3"])

    # ---- a backend added, then kill -9 ----
    # The pool gains B22 on every node (the hosts first, which must know a backend before a MUX
    # sends to it); a few seconds later a MUX dies. The connections it carried move to MUXes that
    # never saw them, whose new table gives some of them (the slots B22 took, and a few Maglev moved
    # between the others) another backend than theirs: the second chance sends those on to their
    # backend's host (the previous table's choice).
    for role in ["h1", "h2"] + MUXES:
        sc.set_lb_file(role, "lb.json")
    for role in ("h1", "h2"):
        t.procs.send("lb-" + role, signal.SIGHUP)
    time.sleep(0.5)
    for m in MUXES:
        t.procs.send("lb-" + m, signal.SIGHUP)
    added = sc.wait_backend(MUXES, ADDED_BACKEND, True, time.time(), deadline.cap(10))
    check(all(added.values()), "%s added to the pool: up on every MUX %s" % (ADDED_BACKEND, added))
    time.sleep(2)
    chances0 = {r: sc.counter(r, "lb_second_chance_total") for r in ["h1", "h2"] + MUXES}
    victim = "mux2"
    t_kill = time.time()
    os.kill(t.procs.pid("lb-" + victim), signal.SIGKILL)
    secs, hops = sc.wait_nexthops(lambda h: underlay(victim) not in h, deadline.cap(10))
    fig["kill_withdraw_s"] = secs
    check(secs is not None and secs <= HOLD_TIME + 0.5,
          "kill -9 %s: the router withdrew it after %s s (next hops now %s)"
          % (victim, "%.3f" % secs if secs is not None else "more than 10", ", ".join(hops)))
    t.procs.stop("lb-" + victim)  # reaps it
    time.sleep(0.3)
    r1 = sc.route_of(flows)
    fig["kill_moved"] = moved(r0, r1)
    time.sleep(8)
    # Connections the MUXes that took them over sent with a second chance (their first packet
    # there): those that, without it, would have gone to another backend and been reset.
    fig["kill_second_chances"] = {r: int(sc.counter(r, "lb_second_chance_total") - chances0[r])
                                  for r in ["h1", "h2"] + MUXES if r != victim}
    log("second chances after the kill (MUX: connections flagged; host: packets forwarded): %s"
        % fig["kill_second_chances"])

    # ---- restart ----
    t_restart = time.time()
    sc.start_lb(victim)
    secs, hops = sc.wait_nexthops(lambda h: h == all3, deadline.cap(40), step=0.05)
    fig["rejoin_s"] = secs
    check(secs is not None, "%s restarted: announced again after %s s" % (victim, "%.2f" % secs if secs else "?"))
    time.sleep(0.3)
    r2 = sc.route_of(flows)
    fig["rejoin_moved"] = moved(r1, r2)
    fig["rejoin_to_victim"] = sum(1 for f in flows if r2.get(f) == underlay(victim))
    fig["share_rejoined"] = share(r2)
    time.sleep(8)

    # ---- SIGTERM: graceful ----
    gentle = "mux3"
    t_term = time.time()
    t.procs.send("lb-" + gentle, signal.SIGTERM)
    secs, hops = sc.wait_nexthops(lambda h: underlay(gentle) not in h, deadline.cap(10))
    fig["term_withdraw_s"] = secs
    check(secs is not None, "SIGTERM %s: withdrawn after %s s" % (gentle, "%.3f" % secs if secs is not None else "?"))
    r3 = sc.route_of(flows)
    fig["term_moved"] = moved(r2, r3)
    exit_end = time.time() + DRAIN + 15
    while t.procs.alive("lb-" + gentle) and time.time() < exit_end:
        time.sleep(0.1)
    fig["term_exit_s"] = round(time.time() - t_term, 2)
    code = t.procs.stop("lb-" + gentle)
    check(code == 0 and fig["term_exit_s"] >= DRAIN,
          "%s drained and exited %s s after SIGTERM (drainSeconds %d), exit %s" % (gentle, fig["term_exit_s"], DRAIN, code))
    time.sleep(3)

    # ---- SIGHUP: the VIP leaves one MUX's configuration, then comes back ----
    reloaded = "mux1"
    t_hup = time.time()
    sc.set_lb_file(reloaded, "lb-empty.json")
    t.procs.send("lb-" + reloaded, signal.SIGHUP)
    secs, hops = sc.wait_nexthops(lambda h: underlay(reloaded) not in h, deadline.cap(10))
    fig["reload_withdraw_s"] = secs
    check(secs is not None, "SIGHUP %s without the VIP: withdrawn after %s s (next hops %s)"
          % (reloaded, "%.3f" % secs if secs is not None else "-", ", ".join(hops)))
    time.sleep(2)
    sc.set_lb_file(reloaded, "lb.json")
    t.procs.send("lb-" + reloaded, signal.SIGHUP)
    want2 = sorted(underlay(m) for m in MUXES if m != gentle)
    secs, hops = sc.wait_nexthops(lambda h: h == want2, deadline.cap(10))
    fig["reload_announce_s"] = secs
    check(secs is not None, "SIGHUP %s with the VIP back: announced after %s s"
          % (reloaded, "%.3f" % secs if secs is not None else "-"))
    time.sleep(3)

    # ---- a backend stops while MUXes come and go ----
    # B11's server stops; mux2 is killed (kill -9) and started again and mux3 (drained above)
    # started again: each has to take B11 out on its own probes, the new ones before they announce.
    # Then B11 comes back, on every MUX.
    r_pre = sc.route_of(flows)
    t_b = time.time()
    limit = PROBE_INTERVAL * PROBE_COUNT
    t.stop_backend(DOWN_BACKEND)
    os.kill(t.procs.pid("lb-mux2"), signal.SIGKILL)
    t.procs.stop("lb-mux2")
    t_mux_start = time.time()
    for m in ("mux2", "mux3"):
        sc.start_lb(m)
    # When the router has each new MUX's next hop, watched beside the MUXes' metrics.
    announced = {}

    def watch_route():
        end = time.time() + limit + 10
        while len(announced) < 2 and time.time() < end:
            hops = sc.nexthops()
            for m in ("mux2", "mux3"):
                if m not in announced and underlay(m) in hops:
                    announced[m] = round(time.time() - t_mux_start, 2)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_route, daemon=True)
    watcher.start()
    out = sc.wait_backend(MUXES, DOWN_BACKEND, False, t_b, deadline.cap(limit + 10))
    fig["down_seen"] = out
    for m in MUXES:
        since = "stop" if m == "mux1" else "its start %.2f s after the stop" % (t_mux_start - t_b)
        check(out[m] is not None and out[m][0] <= limit + 1.0,
              "%s took %s out %s s after its server stopped (since %s; bound %d s + 1 s metrics refresh)"
              % (m, DOWN_BACKEND, out[m][0] if out[m] else "never", since, limit))
    t_all_out = time.time()
    watcher.join(timeout=limit + 15)
    r_post = sc.route_of(flows)
    fig["down_rejoin_s"] = announced
    # Announced before their verdict, they would have started flows to B11 (a quarter of theirs).
    check(len(announced) == 2 and all(out[m] and out[m][1] == 0 for m in ("mux2", "mux3")),
          "mux2 and mux3 announced %s s after their start, and had started no flow to %s when their probes took "
          "it out (%s s after their start, metrics read each second)"
          % (announced, DOWN_BACKEND, {m: round(out[m][0] - (t_mux_start - t_b), 2) for m in ("mux2", "mux3")
                                       if out[m]}))
    time.sleep(5)
    after = {m: sc.backend_metric(m, "lb_backend_new_flows_total", DOWN_BACKEND) for m in MUXES}
    fig["down_new_flows_after"] = {m: (out[m][1] if out[m] else None, after[m]) for m in MUXES}
    check(all(out[m] and out[m][1] is not None and after[m] == out[m][1] for m in MUXES),
          "no MUX started a flow to %s once it took it out (new flows then, 5 s later: %s)"
          % (DOWN_BACKEND, fig["down_new_flows_after"]))
    t_b_back = time.time()
    t.start_backend(DOWN_BACKEND)
    t.wait_servers([DOWN_BACKEND])
    # From the moment it listens: 2 answered probes bring it back.
    back = sc.wait_backend(MUXES, DOWN_BACKEND, True, time.time(), deadline.cap(limit + 10))
    fig["up_seen"] = back
    check(all(back[m] is not None for m in MUXES), "%s listens again: up on every MUX after %s s"
          % (DOWN_BACKEND, {m: back[m][0] if back[m] else None for m in MUXES}))
    time.sleep(3)
    grown = {m: (sc.backend_metric(m, "lb_backend_new_flows_total", DOWN_BACKEND) or 0) - (back[m][1] or 0)
             for m in MUXES if back[m]}
    fig["up_new_flows"] = grown
    check(sum(grown.values()) > 0, "%s takes new flows again (3 s, by MUX: %s)" % (DOWN_BACKEND, grown))
    t_end = time.time()

    # ---- the end of the 64 ----
    t.procs.send("client", signal.SIGTERM)
    try:
        client.wait(timeout=90)
    except subprocess.TimeoutExpired:
        t.procs.stop("client", grace=5)
    lines = [line for line in t.procs.read("client").splitlines() if line.strip()]
    summary = json.loads(lines[-1]) if lines else {}
    fig["streams"] = summary
    news = [e for e in read_events(events) if e.get("event") == "new"]
    stalls = [e for e in read_events(events) if e.get("event") == "stall"]
    fig["kill_last_byte_s"] = last_byte_after(stalls, t_kill)
    fig["term_last_byte_s"] = last_byte_after(stalls, t_term)
    fig["new_before"] = phase_stats(news, 0, t_kill)
    fig["new_kill"] = phase_stats(news, t_kill, t_restart)
    fig["new_restart"] = phase_stats(news, t_restart, t_term)
    fig["new_term"] = phase_stats(news, t_term, t_hup)
    fig["new_reload"] = phase_stats(news, t_hup, t_b)
    fig["new_down_until_out"] = phase_stats(news, t_b, t_all_out)
    fig["new_down_after_out"] = phase_stats(news, t_all_out, t_b_back)
    fig["new_down_back"] = phase_stats(news, t_b_back, t_end + 3600)
    # The long-lived connections B11 served end with its server; every other one goes on.
    b11_streams = {(e["client"], e["port"]) for e in read_events(t.events_path(DOWN_BACKEND))
                   if e.get("event") == "open" and e.get("service") == "echo"}
    flow_of = {str(e["i"]): (e["src"], e["sport"]) for e in read_events(events) if e.get("event") == "stream"}
    broken = summary.get("broken", {})
    on_b11 = sum(1 for f in flow_of.values() if f in b11_streams)
    broken_elsewhere = [i for i in broken if flow_of.get(str(i)) not in b11_streams]
    fig["streams_on_b11"] = on_b11
    fig["broken_elsewhere"] = len(broken_elsewhere)
    # Any of them that ended otherwise is a loss: printed with the MUX the router sent it to
    # before and after the step, and failed.
    def via(routes, i):
        return routes.get(flow_of.get(str(i)))

    fig["moved_in_step"] = moved(r_pre, r_post)
    if broken_elsewhere:
        log("NOTE  %d long-lived connection(s) on other backends than %s ended (%s of %s moved in the step): %s"
            % (len(broken_elsewhere), DOWN_BACKEND, fig["moved_in_step"][0], fig["moved_in_step"][1],
               json.dumps({i: dict(broken[i], via_before=via(r_pre, i), via_after=via(r_post, i))
                           for i in broken_elsewhere})[:1500]))
    check(summary.get("finished") == STREAMS and not broken_elsewhere,
          "the %d long-lived connections on the other backends complete, bytes echoed byte for byte; the "
          "%d on %s ended with its server (%s complete of %s, %d reset elsewhere; %s bytes; longest stall %s s)"
          % (STREAMS - on_b11, on_b11, DOWN_BACKEND, summary.get("complete"), summary.get("streams"),
             len(broken_elsewhere), summary.get("bytes"), summary.get("max_stall")))
    check(fig["new_before"]["failed"] == 0, "new connections before any change: %s" % fig["new_before"])
    log("new connections around kill -9: %s" % fig["new_kill"])
    check(fig["new_restart"]["failed"] == 0, "new connections while %s rejoined: %s" % (victim, fig["new_restart"]))
    check(fig["new_term"]["failed"] == 0, "new connections around SIGTERM and the drain: %s" % fig["new_term"])
    check(fig["new_reload"]["failed"] == 0, "new connections around the reloads: %s" % fig["new_reload"])
    log("new connections from %s's stop until every MUX took it out (those sent to it fail): %s"
        % (DOWN_BACKEND, fig["new_down_until_out"]))
    # A new connection whose 5-tuple an earlier one used (a refused connection leaves no TIME_WAIT,
    # so the client's port comes round soon) meets that connection's flow, which names B11: the
    # MUX opens it anew on a healthy backend (lb_syn_reopened_total).
    fig["syn_reopened"] = {m: int(sc.counter(m, "lb_syn_reopened_total")) for m in MUXES}
    check(fig["new_down_after_out"]["failed"] == 0 and fig["new_down_after_out"]["slow"] == 0,
          "new connections once every MUX took %s out: %s (SYNs on a flow of %s's opened anew, by MUX: %s)"
          % (DOWN_BACKEND, fig["new_down_after_out"], DOWN_BACKEND, fig["syn_reopened"]))
    check(fig["new_down_back"]["failed"] == 0, "new connections after %s came back: %s"
          % (DOWN_BACKEND, fig["new_down_back"]))
    return ok, fig


def print_figures(fig):
    p = lambda *a: print(*a, flush=True)  # noqa: E731
    p("== scale-out figures ==")
    p("router's route:\n  " + fig.get("kernel_route", "").replace("\n", "\n  "))
    if "share_3" in fig:
        p("64 connections over mux1/mux2/mux3: %s" % fig["share_3"])
    if "kill_withdraw_s" in fig:
        s = fig["kill_withdraw_s"]
        p("kill -9 mux2: route withdrawn after %s s; %s of %s connections moved; new connections: %s"
          % ("%.3f" % s if s is not None else "-", fig["kill_moved"][0], fig["kill_moved"][1], fig.get("new_kill")))
    if "kill_last_byte_s" in fig:
        p("  the last connection that waited got its next byte %s s after the kill (None: none waited over %s s); "
          "after SIGTERM: %s" % (fig["kill_last_byte_s"], STALL, fig.get("term_last_byte_s")))
    if "kill_second_chances" in fig:
        p("  (B22 added to the pool 2 s before) second chances: %s" % fig["kill_second_chances"])
    if "rejoin_s" in fig:
        s = fig["rejoin_s"]
        p("mux2 restarted: announced after %s s; %s of %s connections moved (%s now to mux2); %s; new connections: %s"
          % ("%.2f" % s if s else "-", fig["rejoin_moved"][0], fig["rejoin_moved"][1], fig["rejoin_to_victim"],
             fig["share_rejoined"], fig.get("new_restart")))
    if "term_withdraw_s" in fig:
        s = fig["term_withdraw_s"]
        p("SIGTERM mux3: route withdrawn after %s s, exit after %s s; %s of %s moved; new connections: %s"
          % ("%.3f" % s if s is not None else "-", fig.get("term_exit_s"), fig["term_moved"][0], fig["term_moved"][1],
             fig.get("new_term")))
    if "reload_withdraw_s" in fig:
        w, b = fig["reload_withdraw_s"], fig.get("reload_announce_s")
        p("SIGHUP mux1 without the VIP: withdrawn after %s s; with it back: announced after %s s; new connections: %s"
          % ("%.3f" % w if w is not None else "-", "%.3f" % b if b is not None else "-", fig.get("new_reload")))
    if "down_seen" in fig:
        p("%s's server stopped; mux2 killed and restarted, mux3 restarted: %s out (seconds after the stop, "
          "new flows to it then) %s; mux2/mux3 announced %s s after their start; new flows to it 5 s later %s"
          % (DOWN_BACKEND, DOWN_BACKEND, fig["down_seen"], fig.get("down_rejoin_s"), fig.get("down_new_flows_after")))
        p("  new connections until every MUX took it out: %s; after: %s" % (fig.get("new_down_until_out"),
                                                                           fig.get("new_down_after_out")))
    if "up_seen" in fig:
        p("%s started again: up on each MUX (seconds after it listens, new flows to it then) %s; new connections then: %s"
          % (DOWN_BACKEND, fig["up_seen"], fig.get("new_down_back")))
    if "streams" in fig:
        st = dict(fig["streams"])
        st["broken"] = len(st.get("broken", {}))
        p("the 64: %s" % st)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    tr = sub.add_parser("traffic", help="(internal) the client, in the client namespace")
    tr.add_argument("--vip", required=True)
    tr.add_argument("--streams", type=int, default=STREAMS)
    tr.add_argument("--rate", type=float, default=NEW_RATE)
    tr.add_argument("--seconds", type=float, default=150)
    tr.add_argument("--sources", required=True)
    tr.add_argument("--events", required=True)
    tr.add_argument("--gap", type=float, default=0.05, help="seconds between a stream's chunks")
    tr.add_argument("--max-chunks", type=int, default=100000)
    tr.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--logs", help="keep logs and node files in this folder")
    p.add_argument("--deadline", type=float, default=400)
    p.add_argument("--binary", default=os.environ.get("LB_DPDK", os.path.join(REPO, "target/release/lb-dpdk")))
    a = p.parse_args()
    if a.cmd == "traffic":
        return cmd_traffic(a)
    T.require_root()
    for tool in ("bird", "birdc", "exabgp"):
        if subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).returncode != 0:
            raise SystemExit("scaleout: %s is missing (apt-get install bird2 exabgp)" % tool)
    deadline = Deadline(a.deadline)
    topo = ScaleTopology(prefix="lbs%d-" % os.getpid(), logdir=a.logs)
    T.guard(topo)
    ok, fig, sc = False, {}, None
    try:
        topo.up()
        sc = Scale(topo, a.binary)
        ok, fig = scenario(sc, deadline)
    except KeyboardInterrupt:
        log("interrupted")
    except Exception as e:  # the figures so far and the teardown still happen
        import traceback
        traceback.print_exc()
        log("scaleout: %s" % e)
    finally:
        print_figures(fig)
        if sc is not None:
            # Each MUX drains before it ends (the teardown's grace is shorter than drainSeconds).
            try:
                sc.stop_muxes()
            except Exception as e:  # noqa: BLE001 - teardown goes on
                log("stopping the MUXes: %s" % e)
        if not ok:
            for name in ["lb-" + m for m in MUXES]:
                err = topo.procs.read(name, "err").strip().splitlines()
                if err:
                    log("%s stderr (last lines):\n%s" % (name, "\n".join(err[-15:])))
        topo.down()
    print("scaleout: %s" % ("passed" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main() or 0)
