#!/usr/bin/env python3
"""The control plane live: three MUXes and two host agents in etcd mode (the node file's `etcd`
section, no `loadBalancerFile`) follow what `lbctl` stores in a real 3-member etcd, while real
kernel connections go through the VIPs.

    client ns ──┐                     ┌── mux1 ns 198.18.2.2  ┐ lb-dpdk --live afxdp + ExaBGP,
  198.18.1.2-5  │                     ├── mux2 ns 198.18.6.2  │ AS 65001; mux3 with maglevSize 7
                ├── router ns ────────┼── mux3 ns 198.18.7.2  ┘
  adm ns ───────┤  BIRD 2, AS 65000   ├── host 1 ns 198.18.3.2 ── B11, B12   host agents, returnPath
  198.18.33.2   │  ECMP, L4 hash      └── host 2 ns 198.18.4.2 ── B21, B22   "direct"
  (lbctl,       ├── etcd1 ns 198.18.30.2 ┐
   etcdctl)     ├── etcd2 ns 198.18.31.2 ├ etcd 3.4, static bootstrap, heartbeat 50 ms, election 500 ms
                └── etcd3 ns 198.18.32.2 ┘

scaleout.py's topology (scripts/live/scaleout.py) with the etcd members (etcdcluster.py) and an
admin namespace; each backend also serves HTTP on ports 8098-8120 (the rules the steps add need
backend ports of their own: without floating IP, one listener a backend port). Every node starts
with no load balancer, registers under its lease (`/lb/v1/nodes/<id>`) and follows etcd.

Steps (each bounded in count and time; what a user would check, and the figures):
  1. `lbctl apply` Front (VIP 198.19.0.10: HTTP 80 -> 8080, echo 7 -> 7007 over B11, B12, B21, B22,
     HTTP probe): every node reports its revision in `lbctl status`; the router has the VIP from all
     three MUXes; every MUX has the four backends up (health from the hosts, through etcd); 200 new
     HTTP connections all answered, by all four; 32 long-lived echo streams start (bytes checked)
     beside new HTTP connections at 20/s, which go on through check 5 below.
  2. Second (VIP 198.19.0.21) applied and answering; Front gains a rule (81 -> 8100): it answers;
     B21's weight goes to 3: it takes the largest share; B22 leaves the pool: no new connection
     reaches it; Second deleted: its VIP is withdrawn and stops answering, Front's go on. Every
     change reaches every node; no new connection fails.
  3. Wide (VIP 198.19.0.22, a pool of 8: four backends and four addresses that do not exist): mux3
     (maglevSize 7) cannot run it and reports the refusal for that revision in its status, keeps
     its revision and does not announce the VIP; mux1 and mux2 serve it. Deleted: mux3 current
     again.
  4. kill -9 the etcd leader: a new leader, applies go on, no new connection fails. Every member
     stopped (SIGTERM): lbctl exits 2; for longer than the nodes' lease, new connections and the
     streams go on, the VIPs stay announced. Started again: B22 back in the pool (applied then)
     reaches every node and takes connections.
  5. B11's server stops: host 1 publishes it down (health/h1), every MUX takes it out (lb_backend_up
     0) at the same etcd revision, no new connection fails once they all did; the streams on the
     other backends go on. Started again: up everywhere.
  (the streams end: every one on a backend the steps kept completes, byte for byte)
  6. Figures: 20 applies, each adding a port: time from lbctl apply returning to each of the 5
     nodes reporting the revision (median, max) and to the VIP answering on the port (first
     connection, and 12 in a row); then 1,000 VIPs over 10,000 backends (10 load balancers, no
     probes, backends in 198.18.64.0/18 that do not answer, on two hosts outside the test): time from the applies to every node
     running them, and each node's VmRSS before and after; then their deletion.

Addresses: 198.18.0.0/15 and 2001:2::/48 only; namespaces `lbe<pid>-ROLE`, removed on exit, on
failure and on Ctrl-C; etcd's data in a temporary folder, removed too. As root:

    python3 scripts/live/controlplane.py [--logs DIR] [--deadline S] [--steps 1,2,3,4,5,6]
    python3 scripts/live/controlplane.py --no-nodes     # the harness without lb-dpdk: etcd, lbctl
                                                        # with every configuration the steps apply
    scripts/etcd-test.sh                                # installs what is missing, builds, runs this
"""

import argparse
import concurrent.futures
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, Deadline, ip_batch, log, nsrun, run  # noqa: E402
import topology as T  # noqa: E402
import scaleout as S  # noqa: E402
import etcdcluster as E  # noqa: E402
from lbconfig import PROBE_COUNT, PROBE_INTERVAL, rule  # noqa: E402

MUXES = S.MUXES
HOSTS = ["h1", "h2"]
NODES = MUXES + HOSTS
LEASE = 5
DRAIN = 2
SMALL_MAGLEV_MUX, SMALL_MAGLEV = "mux3", 7

VIP = T.VIP_WEB4                 # Front: HTTP 80 -> 8080, echo 7 -> 7007
VIP_SECOND = "198.19.0.21"       # Second: HTTP 80 -> 8099, no probe
VIP_WIDE = "198.19.0.22"         # Wide: HTTP 80 -> 8098, a pool of 8
PORT_WIDE, PORT_SECOND, PORT_ADDED = 8098, 8099, 8100
TIMING_APPLIES = 20              # Front gains 1001+k -> 8101+k
EXTRA_PORTS = list(range(8098, 8101 + TIMING_APPLIES))
STREAMS, NEW_RATE = 32, 20
# Addresses on the hosts' backend side that nothing answers (routed to be0, where no backend has
# them): Wide's extra members and the large configuration's backends.
FAKE_NET = {"h1": "198.18.64.0/19", "h2": "198.18.96.0/19"}
FAKE_BASE = {"h1": (198, 18, 64, 0), "h2": (198, 18, 96, 0)}
# The large configuration's members sit on hosts outside the test (no host agent has them): a host
# agent resolves each local backend's MAC in its kernel, and 5,000 addresses nothing answers would
# overflow the kernel's neighbour table (gc_thresh3, 1,024 by default) that every namespace shares.
LARGE_HOSTS = {"h1": "198.18.40.1", "h2": "198.18.40.2"}
LARGE_LBS, LARGE_VIPS_EACH, LARGE_POOL = 10, 100, 5  # 1,000 VIPs, 2 pools of 5 each: 10,000 backends

BY_NAME = {b[0]: b for b in T.BACKENDS}


def fake_addr(host, n):
    a, b, c, d = FAKE_BASE[host]
    v = (c << 8) + d + 10 + n
    return "%d.%d.%d.%d" % (a, b, v >> 8, v & 255)


# ---------------------------------------------------------------------------------------------------
# Load balancers

def member(name, weight=None):
    b = BY_NAME[name]
    props = {"ipAddress": b[3], "hostAddress": T.HOST_UNDERLAY[b[1]]}
    if weight is not None:
        props["weight"] = weight
    return {"name": name, "properties": props}


def http_probe(name, port):
    return {"name": name, "properties": {"protocol": "Http", "port": port, "requestPath": "/health",
                                         "intervalInSeconds": PROBE_INTERVAL, "numberOfProbes": PROBE_COUNT}}


def front(extra=(), weights=None, without=()):
    """Front: the VIP of scaleout.py, HTTP and echo over the four backends (but `without`), with
    `extra` rules (name, frontend port, backend port) on the same pool and probe."""
    weights = weights or {}
    members = [member(b[0], weights.get(b[0])) for b in T.BACKENDS if b[0] not in without]
    rules = [rule("Http4", "Web4", "Web", "Tcp", 80, T.PORT_HTTP),
             rule("Echo4", "Web4", "Web", "Tcp", 7, T.PORT_ECHO, idle_minutes=30)]
    rules += [rule(n, "Web4", "Web", "Tcp", fp, bp) for n, fp, bp in extra]
    return {"name": "Front", "properties": {
        "frontendIPConfigurations": [{"name": "Web4", "properties": {"publicIPAddress": {"ipAddress": VIP}}}],
        "backendAddressPools": [{"name": "Web", "properties": {"loadBalancerBackendAddresses": members}}],
        "probes": [http_probe("Http", T.PORT_HTTP)], "loadBalancingRules": rules}}


def second():
    return {"name": "Second", "properties": {
        "frontendIPConfigurations": [{"name": "Web4", "properties": {"publicIPAddress": {"ipAddress": VIP_SECOND}}}],
        "backendAddressPools": [{"name": "Web", "properties": {
            "loadBalancerBackendAddresses": [member(b[0]) for b in T.BACKENDS]}}],
        "loadBalancingRules": [rule("Http4", "Web4", "Web", "Tcp", 80, PORT_SECOND, probe=None)]}}


def wide():
    """A pool of 8 (more than mux3's Maglev table of 7 can hold): the four backends and four
    addresses nothing answers, two on each host."""
    members = [member(b[0]) for b in T.BACKENDS]
    members += [{"name": "Ghost%s%d" % (h, i), "properties": {"ipAddress": fake_addr(h, i),
                                                               "hostAddress": T.HOST_UNDERLAY[h]}}
                for h in HOSTS for i in range(2)]
    return {"name": "Wide", "properties": {
        "frontendIPConfigurations": [{"name": "Web4", "properties": {"publicIPAddress": {"ipAddress": VIP_WIDE}}}],
        "backendAddressPools": [{"name": "Wide", "properties": {"loadBalancerBackendAddresses": members}}],
        "probes": [http_probe("Http", PORT_WIDE)],
        "loadBalancingRules": [rule("Http4", "Web4", "Wide", "Tcp", 80, PORT_WIDE)]}}


def large(i):
    """Large<i>: 100 VIPs (198.19.16.1 up), each with TCP 80 and 443 to pools of 5, no probes; the
    members alternate between two hosts outside the test (LARGE_HOSTS), at addresses nothing
    answers."""
    fes, pools, rules = [], [], []
    for j in range(LARGE_VIPS_EACH):
        v = i * LARGE_VIPS_EACH + j
        n = (16 << 8) + 1 + v
        fes.append({"name": "F%03d" % j, "properties": {"publicIPAddress": {"ipAddress": "198.19.%d.%d" % (n >> 8, n & 255)}}})
        for half, port in (("a", 80), ("b", 443)):
            p = 2 * v + (half == "b")
            members = []
            for m in range(LARGE_POOL):
                k = p * LARGE_POOL + m
                host = HOSTS[k % 2]
                members.append({"name": "M%05d" % k, "properties": {"ipAddress": fake_addr(host, k // 2),
                                                                     "hostAddress": LARGE_HOSTS[host]}})
            pools.append({"name": "P%03d%s" % (j, half), "properties": {"loadBalancerBackendAddresses": members}})
            rules.append(rule("R%03d%s" % (j, half), "F%03d" % j, "P%03d%s" % (j, half), "Tcp", port, port, probe=None))
    return {"name": "Large%02d" % i, "properties": {"frontendIPConfigurations": fes, "backendAddressPools": pools,
                                                     "loadBalancingRules": rules}}


# ---------------------------------------------------------------------------------------------------
# Node files

def write_nodes(directory):
    os.makedirs(directory, exist_ok=True)
    paths = {}

    def dump(name, obj):
        paths[name] = os.path.join(directory, name + ".json")
        with open(paths[name], "w") as f:
            json.dump(obj, f, indent=2)

    def etcd(node_id):
        return {"endpoints": E.ENDPOINTS, "nodeId": node_id, "leaseSeconds": LEASE}

    for m in MUXES:
        node = {"role": "mux", "underlay": S.underlay(m), "interfaces": {"fabric": "fab0"}, "mtu": T.MTU,
                "flowCapacity": 100000, "stateDirectory": "state-" + m,
                "bgp": {"localAsn": S.MUX_ASN, "peers": [{"address": S.router_side(m), "asn": S.ROUTER_ASN}],
                        "holdTimeSeconds": S.HOLD_TIME, "drainSeconds": DRAIN},
                "etcd": etcd(m)}
        if m == SMALL_MAGLEV_MUX:
            node["maglevSize"] = SMALL_MAGLEV
        dump(m, node)
    for h, addr in T.HOST_UNDERLAY.items():
        dump(h, {"role": "host", "underlay": addr, "interfaces": {"fabric": "fab0", "backends": ["be0", "be1"]},
                 "muxes": [S.underlay(m) for m in MUXES], "returnPath": "direct", "mssClamp": T.MSS_CLAMP,
                 "mtu": T.MTU, "flowCapacity": 100000, "etcd": etcd(h)})
    return paths


# ---------------------------------------------------------------------------------------------------
class CPTopology(S.ScaleTopology):
    """scaleout.py's namespaces; each backend serves HTTP on EXTRA_PORTS too, and each host routes
    its addresses nobody answers to be0. The etcd members and the admin namespace are added by
    EtcdCluster.build()."""

    def backend_cmd(self, name):
        cmd = super().backend_cmd(name)
        for p in EXTRA_PORTS:
            cmd += ["--float", "[::]:%d" % p]
        return cmd

    def up(self, servers=True):
        super().up(servers=servers)
        for h in HOSTS:
            ip_batch(self.ns(h), ["route add %s dev be0" % FAKE_NET[h]])


# ---------------------------------------------------------------------------------------------------
def digest(key, value):
    """What the watcher keeps of a status or health value: revisions, refusals, the backends
    down (up to 64), and any other scalar field (a health revision, say)."""
    try:
        v = json.loads(value)
    except ValueError:
        return {"bad": value[:200]}
    if not isinstance(v, dict):
        return {"bad": value[:200]}
    if "/loadbalancers/" in key:
        return {"bytes": len(value)}
    backends = v.get("backends") or []
    down = sorted(str(b.get("address")) for b in backends if not b.get("up"))
    known = {"role", "revision", "refused", "vips", "snatPortsInUse", "backends", "updated"}
    return {"revision": v.get("revision"), "refused": v.get("refused"), "role": v.get("role"),
            "n": len(backends), "down": down if len(down) <= 64 else None, "vips": len(v.get("vips") or []),
            "extra": {k: x for k, x in v.items() if k not in known and not isinstance(x, (list, dict))}}


def node_id(key):
    return key.rsplit("/", 1)[-1]


class CP(S.Scale):
    """The nodes, BIRD, lbctl and the watcher (scaleout.Scale's helpers for processes, metrics
    and the router's routes)."""

    def __init__(self, topo, binary, cluster):
        self.t = topo
        self.binary = binary
        self.c = cluster
        self.nodes = write_nodes(os.path.join(topo.logdir, "nodes"))
        self.bird_sock = os.path.join(topo.logdir, "bird.ctl")
        self.lbdir = os.path.join(topo.logdir, "lbs")
        os.makedirs(self.lbdir, exist_ok=True)
        self.w = None
        self.napplies = 0

    # ---- lbctl ----
    def apply(self, lb):
        """lbctl apply; returns (exit code, revision or None, message, seconds, time it returned)."""
        self.napplies += 1
        path = os.path.join(self.lbdir, "%03d-%s.json" % (self.napplies, lb["name"]))
        with open(path, "w") as f:
            json.dump(lb, f, indent=1)
        code, out, err, secs = self.c.lbctl("apply", path)
        t_ret = time.time()
        m = re.search(r"revision (\d+)", out)
        lines = (out + err).strip().splitlines() or [""]
        msg = lines[0] + (" (+%d VNIs assigned)" % (len(lines) - 1) if len(lines) > 1 else "")
        return code, int(m.group(1)) if m else None, msg, secs, t_ret

    def delete(self, name):
        code, out, err, secs = self.c.lbctl("delete", name)
        t_ret = time.time()
        m = re.search(r"revision (\d+)", out)
        return code, int(m.group(1)) if m else None, (out + err).strip(), secs, t_ret

    # ---- nodes ----
    def start_nodes(self):
        for n in NODES:
            self.start_lb(n)

    def early_exits(self):
        return {n: self.t.procs.read("lb-" + n, "err")[-1500:] for n in NODES if not self.t.procs.alive("lb-" + n)}

    def rss(self):
        out = {}
        for n in NODES:
            try:
                with open("/proc/%d/status" % self.t.procs.pid("lb-" + n)) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            out[n] = int(line.split()[1]) // 1024
            except (OSError, KeyError):
                out[n] = None
        return out

    def wait_nodes(self, pred, after_rev, t0, timeout, nodes=NODES):
        """Waits until `pred(digest)` holds for each node's status: from the watcher (a status
        written after revision `after_rev`, the time it arrived) or, as a fallback, from
        `lbctl status` polled each second. Returns ({node: seconds after t0 or None}, last status)."""
        seen = {}
        end = time.time() + timeout
        last_poll, st = 0.0, None
        while time.time() < end and len(seen) < len(nodes):
            for t, key, d, mod in self.w.snapshot():
                if "/nodes/" not in key or d is None or mod <= after_rev:
                    continue
                n = node_id(key)
                if n in nodes and n not in seen and pred(d):
                    seen[n] = t - t0
            if time.time() - last_poll > 1.0 and len(seen) < len(nodes):
                last_poll = time.time()
                st = self.c.status()
                for n, v in ((st or {}).get("nodes") or {}).items():
                    if n in nodes and n not in seen and isinstance(v, dict) and pred(digest("/nodes/" + n, json.dumps(v))):
                        seen[n] = time.time() - t0
            time.sleep(0.02)
        return {n: (round(seen[n], 3) if n in seen else None) for n in nodes}, st

    def wait_revision(self, rev, t0, timeout, nodes=NODES):
        return self.wait_nodes(lambda d: (d.get("revision") or 0) >= rev, rev, t0, timeout, nodes)

    def current(self, st, rev, nodes=NODES):
        """{node: (revision, refused)} from `lbctl status --json`, and whether every one runs `rev`."""
        view = {}
        for n in nodes:
            v = ((st or {}).get("nodes") or {}).get(n)
            view[n] = (v.get("revision"), v.get("refused")) if isinstance(v, dict) else None
        good = all(view[n] is not None and (view[n][0] or 0) >= rev for n in nodes)
        return view, good

    def backend_up(self, role, address, lb="Front"):
        """A MUX's lb_backend_up for `address` in load balancer `lb`'s pools (None: no row)."""
        rows = []
        for k, v in self.metrics(role).items():
            if k.startswith("lb_backend_up{") and 'address="%s"' % address in k:
                rows.append((k, v))
        mine = [v for k, v in rows if 'pool="%s/' % lb in k] or [v for _, v in rows]
        return min(mine) if mine else None

    def wait_backend_up(self, muxes, address, up, timeout, lb="Front"):
        want = 1.0 if up else 0.0
        seen, t0 = {}, time.time()
        end = t0 + timeout
        while time.time() < end and len(seen) < len(muxes):
            for m in muxes:
                if m not in seen and self.backend_up(m, address, lb) == want:
                    seen[m] = round(time.time() - t0, 2)
            time.sleep(0.1)
        return {m: seen.get(m) for m in muxes}

    def nexthops_of(self, vip):
        out = run(["ip", "-n", self.t.ns("rt"), "-j", "route", "show", vip + "/32"], check=False, quiet=True)
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

    def wait_hops(self, vip, want, timeout):
        t0 = time.monotonic()
        hops = self.nexthops_of(vip)
        while sorted(hops) != sorted(want):
            if time.monotonic() - t0 > timeout:
                return None, hops
            time.sleep(0.05)
            hops = self.nexthops_of(vip)
        return round(time.monotonic() - t0, 2), hops

    def burst(self, vip, port, count, timeout=2.0, conc=16):
        return nsjson_run(self.t.ns("client"), [sys.executable, os.path.abspath(__file__), "burst", "--vip", vip,
                                                "--port", str(port), "--count", str(count), "--timeout", str(timeout),
                                                "--concurrency", str(conc), "--sources", ",".join(T.CLIENT_V4)],
                          timeout=count * timeout + 30)


def nsjson_run(ns, cmd, timeout):
    out = nsrun(ns, cmd, timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------
# Clients (run in the client namespace)

def http_get(src, vip, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect((vip, port))
        s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        data = b""
        while len(data) < 65536:
            b = s.recv(65536)
            if not b:
                break
            data += b
        if not data.startswith(b"HTTP/1.0 200"):
            return None, "bad answer"
        body = data.split(b"\r\n\r\n", 1)[-1]
        try:
            return json.loads(body).get("backend", "?"), None
        except ValueError:
            return "?", None
    except OSError as e:
        return None, type(e).__name__ + ": " + str(e)
    finally:
        s.close()


def cmd_burst(a):
    sources = a.sources.split(",")
    by, errors, slow = {}, {}, 0
    lock = threading.Lock()

    def one(i):
        nonlocal slow
        t0 = time.monotonic()
        who, err = http_get(sources[i % len(sources)], a.vip, a.port, a.timeout)
        with lock:
            if who:
                by[who] = by.get(who, 0) + 1
                slow += time.monotonic() - t0 > 0.9
            else:
                errors[err] = errors.get(err, 0) + 1

    with concurrent.futures.ThreadPoolExecutor(a.concurrency) as ex:
        list(ex.map(one, range(a.count)))
    print(json.dumps({"ok": sum(by.values()), "failed": sum(errors.values()), "by_backend": dict(sorted(by.items())),
                      "errors": errors, "slow": slow}), flush=True)


def cmd_portwatch(a):
    """Reads ports from stdin; for each, starts a connection to VIP:port every `--every` seconds
    until `--streak` in a row are answered; prints when the first and the streak's last were."""
    sources = a.sources.split(",")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        port = int(line)
        t_start = time.time()
        results = {}
        lock = threading.Lock()

        def one(i):
            who, err = http_get(sources[i % len(sources)], a.vip, port, a.timeout)
            with lock:
                results[i] = (time.time(), who)

        threads, i, done_at, first = [], 0, None, None
        end = t_start + a.limit
        while time.time() < end:
            th = threading.Thread(target=one, args=(i,), daemon=True)
            th.start()
            threads.append(th)
            i += 1
            time.sleep(a.every)
            with lock:
                oks = sorted(k for k, (t, who) in results.items() if who)
                if oks and first is None:
                    first = min(results[k][0] for k in oks)
                # `streak` attempts in a row (by start order) answered.
                run_len, best_end = 0, None
                for k in range(i):
                    r = results.get(k)
                    if r and r[1]:
                        run_len += 1
                        if run_len >= a.streak:
                            best_end = max(results[j][0] for j in range(k - a.streak + 1, k + 1))
                            break
                    else:
                        run_len = 0
            if best_end:
                done_at = best_end
                break
        print(json.dumps({"port": port, "t_start": t_start, "t_first": first, "t_all": done_at, "attempts": i}),
              flush=True)


# ---------------------------------------------------------------------------------------------------
def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": round(statistics.median(xs), 3), "max": round(max(xs), 3), "min": round(min(xs), 3), "n": len(xs)}


class Run:
    def __init__(self, cp, deadline, steps):
        self.cp, self.t, self.c = cp, cp.t, cp.c
        self.deadline = deadline
        self.steps = steps
        self.ok = True
        self.fig = {}
        self.results = {}  # step -> passed
        self.step = "setup"
        self.client = None
        self.events = os.path.join(self.t.logdir, "client-events.jsonl")
        self.windows = {}

    def check(self, cond, what):
        log(("ok    " if cond else "FAIL  ") + "[%s] " % self.step + what)
        if not cond:
            self.ok = False
            self.results[self.step] = False
        else:
            self.results.setdefault(self.step, True)
        return bool(cond)

    def begin(self, step):
        self.step = step
        log("==== step %s ====" % step)
        self.windows[step] = [time.time(), None]

    def end(self):
        if self.step in self.windows:
            self.windows[self.step][1] = time.time()

    def apply_and_wait(self, lb, what, timeout=15, nodes=NODES):
        code, rev, msg, secs, t_ret = self.cp.apply(lb)
        if not self.check(code == 0 and rev, "lbctl apply %s: exit %s, %s (%.3f s)" % (what, code, msg.replace("\n", "; "), secs)):
            return None, None, t_ret
        seen, _ = self.cp.wait_revision(rev, t_ret, self.deadline.cap(timeout), nodes)
        st = self.c.status()
        view, good = self.cp.current(st, rev, nodes)
        self.check(good, "every node runs revision %d (%s): seconds after apply returned %s"
               % (rev, "; ".join("%s %s%s" % (n, v[0] if v else "-", " refused %s" % v[1] if v and v[1] else "")
                                 for n, v in view.items()), seen))
        return rev, seen, t_ret

    # ---- steps --------------------------------------------------------------------------------
    def setup(self):
        cp, c = self.cp, self.c
        self.begin("setup")
        self.fig["etcd_start_s"] = round(c.start_all(), 2)
        leader, _ = c.wait_leader(10)
        self.check(leader is not None, "etcd: 3 members healthy after %s s, leader %s" % (self.fig["etcd_start_s"], leader))
        cp.w = c.watcher(E.PREFIX, digest=digest).start()
        cp.start_bird()
        cp.start_nodes()
        time.sleep(2)
        gone = cp.early_exits()
        if gone:
            etcd_words = any("etcd" in e or "loadBalancer" in e for e in gone.values())
            self.check(False, "lb-dpdk exited at start%s: %s" % (
                " (it does not accept the node file's etcd section yet)" if etcd_words else "",
                json.dumps({n: e.strip().splitlines()[-3:] for n, e in gone.items()})))
            return False
        t0 = time.time()
        seen, st = cp.wait_nodes(lambda d: d.get("role") in ("mux", "host"), 0, t0, self.deadline.cap(20))
        roles = {n: ((st or {}).get("nodes") or {}).get(n, {}).get("role") for n in NODES}
        self.check(all(v is not None for v in seen.values()),
                   "every node registered in etcd (lbctl status: %s; seconds %s)" % (roles, seen))
        rss = cp.rss()
        self.fig["rss_empty_mb"] = rss
        self.end()
        return all(v is not None for v in seen.values())

    def step1(self):
        cp = self.cp
        self.begin("1")
        rev, seen, t_ret = self.apply_and_wait(front(), "Front (VIP %s)" % VIP)
        self.fig["s1_nodes_s"] = seen
        secs, hops = cp.wait_hops(VIP, [S.underlay(m) for m in MUXES], self.deadline.cap(25))
        self.fig["s1_announced_s"] = round(time.time() - t_ret, 2) if secs is not None else None
        self.check(secs is not None, "the router has %s from all three MUXes, %s s after the apply (%s)"
                   % (VIP, self.fig["s1_announced_s"], ", ".join(hops)))
        ups = {b[0]: cp.wait_backend_up(MUXES, b[3], True, self.deadline.cap(25)) for b in T.BACKENDS}
        self.fig["s1_up_s"] = round(time.time() - t_ret, 2)
        self.check(all(v is not None for u in ups.values() for v in u.values()),
                   "every MUX has the four backends up (health from the hosts through etcd), all %s s after the apply: %s"
                   % (self.fig["s1_up_s"], ups))
        st = self.c.status() or {}
        health = {h: sorted((b["address"], b["up"]) for b in (st.get("health", {}).get(h) or {}).get("backends", []))
                  for h in HOSTS}
        self.check(all(len(v) >= 2 and all(u for _, u in v) for v in health.values()),
                   "lbctl status: the hosts publish their backends up: %s" % health)
        before = self.azure_metrics()
        r = cp.burst(VIP, 80, 200)
        self.check(r["failed"] == 0 and len(r["by_backend"]) == 4, "200 new HTTP connections to %s:80: %s" % (VIP, r))
        # Azure's metrics, summed over the MUXes: the SYNs and packets of those connections, and
        # each backend's probe status (100: up) for the rule on every MUX.
        time.sleep(1.5)
        after = self.azure_metrics()
        syns = after["syn"] - before["syn"]
        packets = after["packets"] - before["packets"]
        self.check(syns >= 200 and packets >= 3 * 200 and after["probe_up"] == 3 * 4,
                   "metrics (Azure's names) on %s:80 over the MUXes: lb_syn_count_total +%d, lb_packet_count_total "
                   "+%d, lb_byte_count_total +%d; lb_health_probe_status 100 for %d of 12 (MUX, backend)"
                   % (VIP, syns, packets, after["bytes"] - before["bytes"], after["probe_up"]))
        # The long-lived streams and the new connections at 20/s (scaleout.py's client).
        seconds = self.deadline.cap(220)
        self.client = self.t.procs.start("client", self.t.ns("client"), [
            sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaleout.py"), "traffic",
            "--vip", VIP, "--streams", str(STREAMS), "--rate", str(NEW_RATE), "--seconds", str(seconds),
            "--sources", ",".join(T.CLIENT_V4), "--events", self.events])
        end = time.time() + 20
        while time.time() < end and not any(e.get("event") == "streams_started" for e in S.read_events(self.events)):
            time.sleep(0.2)
        flows = [e for e in S.read_events(self.events) if e.get("event") == "stream"]
        self.check(len(flows) == STREAMS, "%d of %d long-lived echo streams established" % (len(flows), STREAMS))
        time.sleep(1)
        self.end()

    def azure_metrics(self):
        """Front's HTTP rule in Azure-named metrics, summed over the MUXes: SYNs, packets, bytes, and
        how many (MUX, backend) pairs have lb_health_probe_status 100."""
        out = {"syn": 0, "packets": 0, "bytes": 0, "probe_up": 0}
        rule = 'frontend_ip_address="%s",frontend_port="80"' % VIP
        for m in MUXES:
            for k, v in self.cp.metrics(m).items():
                if rule not in k:
                    continue
                if k.startswith("lb_syn_count_total{"):
                    out["syn"] += int(v)
                elif k.startswith("lb_packet_count_total{"):
                    out["packets"] += int(v)
                elif k.startswith("lb_byte_count_total{"):
                    out["bytes"] += int(v)
                elif k.startswith("lb_health_probe_status{") and v == 100:
                    out["probe_up"] += 1
        return out

    def step2(self):
        cp = self.cp
        self.begin("2")
        rev, seen, t_ret = self.apply_and_wait(second(), "Second (VIP %s)" % VIP_SECOND)
        self.fig["s2_second_nodes_s"] = seen
        secs, hops = cp.wait_hops(VIP_SECOND, [S.underlay(m) for m in MUXES], self.deadline.cap(20))
        self.check(secs is not None, "the router has %s from all three MUXes (%s)" % (VIP_SECOND, ", ".join(hops)))
        r = cp.burst(VIP_SECOND, 80, 60)
        self.check(r["failed"] == 0 and len(r["by_backend"]) == 4, "Second answers on %s:80: %s" % (VIP_SECOND, r))

        added = front(extra=[("Http81", 81, PORT_ADDED)])
        rev, seen, t_ret = self.apply_and_wait(added, "Front with a rule 81 -> %d" % PORT_ADDED)
        self.fig["s2_rule_nodes_s"] = seen
        pw = self.portwatch_one(81, t_ret)
        self.fig["s2_port81"] = pw
        r = cp.burst(VIP, 81, 100)
        self.check(r["failed"] == 0 and len(r["by_backend"]) == 4, "the new port answers, %s s after the apply: %s"
                   % (pw, r))

        weighted = front(extra=[("Http81", 81, PORT_ADDED)], weights={"B21": 3})
        rev, seen, t_ret = self.apply_and_wait(weighted, "Front with B21's weight 3")
        r = cp.burst(VIP, 80, 300)
        by = r["by_backend"]
        self.check(r["failed"] == 0 and by.get("B21", 0) > max(v for k, v in by.items() if k != "B21"),
                   "B21 takes the largest share of 300 new connections (weight 3 of 6): %s" % r)

        self.streams_b22 = self.streams_on("B22")
        removed = front(extra=[("Http81", 81, PORT_ADDED)], weights={"B21": 3}, without=("B22",))
        rev, seen, t_ret = self.apply_and_wait(removed, "Front without B22")
        self.fig["s2_remove_nodes_s"] = seen
        t_removed = time.time()
        r1 = cp.burst(VIP, 80, 200)
        r2 = cp.burst(VIP, 81, 100)
        self.check(r1["failed"] == 0 and r2["failed"] == 0 and "B22" not in r1["by_backend"] and "B22" not in r2["by_backend"],
                   "B22 out of the pool: no new connection reaches it (port 80: %s; 81: %s)" % (r1, r2))
        self.t_b22_removed = t_removed

        code, drev, msg, secs, t_ret = cp.delete("Second")
        self.check(code == 0 and drev, "lbctl delete Second: exit %s, %s" % (code, msg))
        if drev:
            seen, _ = cp.wait_revision(drev, t_ret, self.deadline.cap(15))
            st = self.c.status()
            view, good = cp.current(st, drev)
            self.check(good, "every node runs revision %d (Second deleted): seconds %s" % (drev, seen))
        secs, hops = cp.wait_hops(VIP_SECOND, [], self.deadline.cap(15))
        self.check(secs is not None, "%s withdrawn from the router %s s after the delete" % (VIP_SECOND, secs))
        r = cp.burst(VIP_SECOND, 80, 20, timeout=1.0)
        self.check(r["ok"] == 0, "%s:80 answers no more: %s" % (VIP_SECOND, r))
        r = cp.burst(VIP, 80, 100)
        self.check(r["failed"] == 0, "%s:80 goes on: %s" % (VIP, r))
        self.end()

    def step3(self):
        cp = self.cp
        self.begin("3")
        code, rev, msg, secs, t_ret = cp.apply(wide())
        self.check(code == 0 and rev, "lbctl apply Wide (VIP %s, a pool of 8): exit %s, %s" % (VIP_WIDE, code, msg.replace("\n", "; ")))
        if not rev:
            return self.end()
        others = [n for n in NODES if n != SMALL_MAGLEV_MUX]
        seen, _ = cp.wait_revision(rev, t_ret, self.deadline.cap(15), others)
        refused, _ = cp.wait_nodes(lambda d: (d.get("refused") or {}).get("revision", 0) >= rev, rev, t_ret,
                                   self.deadline.cap(10), [SMALL_MAGLEV_MUX])
        st = self.c.status()
        view, good = cp.current(st, rev, others)
        self.check(good, "mux1, mux2 and the hosts run revision %d: %s (seconds %s)" % (rev, view, seen))
        v = ((st or {}).get("nodes") or {}).get(SMALL_MAGLEV_MUX) or {}
        ref = v.get("refused") or {}
        self.fig["s3_refusal"] = ref
        self.check(ref.get("revision", 0) >= rev and ref.get("error") and (v.get("revision") or 0) < rev,
                   "%s (maglevSize %d) refuses revision %d and keeps running %s; its status says: %s%s"
                   % (SMALL_MAGLEV_MUX, SMALL_MAGLEV, rev, v.get("revision"), json.dumps(ref),
                      "" if ref else " (no refusal reported: the node side does not report refusals yet?)"))
        self.check(self.t.procs.alive("lb-" + SMALL_MAGLEV_MUX), "%s still runs" % SMALL_MAGLEV_MUX)
        want = [S.underlay(m) for m in MUXES if m != SMALL_MAGLEV_MUX]
        secs, hops = cp.wait_hops(VIP_WIDE, want, self.deadline.cap(20))
        self.check(secs is not None, "the router has %s from mux1 and mux2 only (%s)" % (VIP_WIDE, ", ".join(hops) or "none"))
        ups = {b[0]: cp.wait_backend_up(["mux1", "mux2"], b[3], True, self.deadline.cap(20), lb="Wide")
               for b in T.BACKENDS}
        self.check(all(x is not None for u in ups.values() for x in u.values()),
                   "mux1 and mux2 have Wide's four real backends up: %s" % ups)
        r = cp.burst(VIP_WIDE, 80, 100)
        self.check(r["failed"] == 0 and len(r["by_backend"]) == 4, "Wide answers through mux1 and mux2: %s" % r)
        r = cp.burst(VIP, 80, 100)
        self.check(r["failed"] == 0, "Front goes on through all three: %s" % r)
        code, drev, msg, secs, t_ret = cp.delete("Wide")
        self.check(code == 0 and drev, "lbctl delete Wide: %s" % msg)
        if drev:
            seen, _ = cp.wait_revision(drev, t_ret, self.deadline.cap(15))
            st = self.c.status()
            view, good = cp.current(st, drev)
            self.check(good, "every node, %s too, runs revision %d again: %s (seconds %s)"
                       % (SMALL_MAGLEV_MUX, drev, view, seen))
        secs, hops = cp.wait_hops(VIP_WIDE, [], self.deadline.cap(15))
        self.check(secs is not None, "%s withdrawn (%s)" % (VIP_WIDE, hops))
        self.end()

    def step4(self):
        cp, c = self.cp, self.c
        self.begin("4")
        leader = c.leader()
        t0 = time.monotonic()
        c.kill(leader)
        new, _ = c.wait_leader(10, exclude=(leader,))
        self.fig["s4_reelect_s"] = round(time.monotonic() - t0, 3)
        self.check(new is not None, "kill -9 %s (the leader): %s leads after %s s" % (leader, new, self.fig["s4_reelect_s"]))
        lb = front(extra=[("Http81", 81, PORT_ADDED)], without=("B22",))
        rev, seen, t_ret = self.apply_and_wait(lb, "Front, B21's weight 1 again, with 2 of 3 members")
        self.fig["s4_two_members_nodes_s"] = seen
        r = cp.burst(VIP, 80, 100)
        self.check(r["failed"] == 0, "new connections with one member down: %s" % r)
        c.start(leader)
        c.wait_healthy([leader], self.deadline.cap(20))
        self.check(True, "%s started again, healthy" % leader)

        t_stop = time.time()
        codes = c.stop_all()
        self.fig["s4_stop_s"] = round(time.time() - t_stop, 2)
        code, _, err, _ = c.lbctl("status", timeout=20)
        self.check(code == 2, "every member stopped (SIGTERM, %s s): lbctl status exits %s: %s"
                   % (self.fig["s4_stop_s"], code, err.strip()[:160]))
        down = []
        # Longer than the nodes' lease: forwarding does not depend on etcd.
        end = t_stop + LEASE + 4
        while time.time() < end:
            down.append(cp.burst(VIP, 80, 40, timeout=2.0))
            time.sleep(0.5)
        alive = {n: self.t.procs.alive("lb-" + n) for n in NODES}
        hops = cp.nexthops_of(VIP)
        ups = {m: cp.backend_up(m, BY_NAME["B11"][3]) for m in MUXES}
        failed = sum(r["failed"] for r in down)
        self.fig["s4_etcd_down"] = {"seconds": round(time.time() - t_stop, 1), "connections": sum(r["ok"] + r["failed"] for r in down),
                                    "failed": failed}
        self.check(failed == 0 and all(alive.values()) and len(hops) == 3,
                   "etcd down for %.1f s: %d new connections, %d failed; nodes alive %s; next hops %s; B11 up on MUXes %s"
                   % (time.time() - t_stop, sum(r["ok"] + r["failed"] for r in down), failed, alive, hops, ups))
        t_start = time.time()
        c.start_all(self.deadline.cap(30))
        self.fig["s4_etcd_back_s"] = round(time.time() - t_start, 2)
        self.check(True, "every member started again, healthy after %s s" % self.fig["s4_etcd_back_s"])
        lb = front(extra=[("Http81", 81, PORT_ADDED)])
        rev, seen, t_ret = self.apply_and_wait(lb, "Front with B22 back, after etcd's restart", timeout=40)
        self.fig["s4_after_restart_nodes_s"] = seen
        ups = cp.wait_backend_up(MUXES, BY_NAME["B22"][3], True, self.deadline.cap(25))
        self.check(all(v is not None for v in ups.values()), "B22 up on every MUX again (seconds %s)" % ups)
        r = cp.burst(VIP, 80, 200)
        self.check(r["failed"] == 0 and "B22" in r["by_backend"], "B22 takes new connections again: %s" % r)
        self.end()

    def step5(self):
        cp = self.cp
        self.begin("5")
        b11 = BY_NAME["B11"][3]
        watched_from = len(cp.w.snapshot())
        t_stop = time.time()
        self.t.stop_backend("B11")
        self.t_b11_stop = t_stop
        limit = PROBE_INTERVAL * PROBE_COUNT
        out = cp.wait_backend_up(MUXES, b11, False, self.deadline.cap(limit + 15))
        t_all_out = time.time()
        self.t_b11_all_out = t_all_out
        self.fig["s5_out_s"] = out
        self.check(all(v is not None for v in out.values()),
                   "every MUX took B11 out (lb_backend_up 0), seconds after its server stopped: %s" % out)
        time.sleep(1.5)
        evs = cp.w.snapshot()[watched_from:]
        health = [(t, mod, d) for t, key, d, mod in evs if key.endswith("/health/h1") and d and b11 in (d.get("down") or [])]
        h_rev = health[0][1] if health else None
        h_t = round(health[0][0] - t_stop, 2) if health else None
        first_down = {}
        for t, key, d, mod in evs:
            n = node_id(key)
            if "/nodes/" in key and n in MUXES and n not in first_down and d and b11 in (d.get("down") or []):
                first_down[n] = (mod, round(t - t_stop, 2), d.get("extra"))
        self.fig["s5_health"] = {"health_rev": h_rev, "health_s": h_t, "muxes": first_down}
        self.check(h_rev is not None, "host 1 published B11 down in health/h1 at revision %s, %s s after the stop" % (h_rev, h_t))
        # Each MUX applies the verdict of etcd: none says B11 is down in a status written before the
        # host's verdict, and each status that names a health revision names that one.
        named = {n: [v for k, v in (x[2] or {}).items() if "health" in k.lower()] for n, x in first_down.items()}
        same = all(h_rev and x[0] > h_rev for x in first_down.values()) and len(first_down) == len(MUXES)
        if any(named.values()):
            same = same and all(v == [h_rev] for v in named.values())
            how = "the health revision each MUX's status names: %s" % named
        else:
            spread = max(v for v in out.values() if v is not None) - min(v for v in out.values() if v is not None) \
                if all(v is not None for v in out.values()) else None
            how = ("the statuses name no health revision: each MUX's first status with B11 down was written after "
                   "revision %s; lb_backend_up fell %s s apart across the MUXes" % (h_rev, spread))
        self.check(same, "every MUX took B11 out at health revision %s (first status with B11 down: %s); %s"
                   % (h_rev, {n: x[:2] for n, x in first_down.items()}, how))
        time.sleep(2)
        self.t_b11_check_after = time.time()
        r = cp.burst(VIP, 80, 200)
        self.check(r["failed"] == 0 and "B11" not in r["by_backend"], "new connections once every MUX took B11 out: %s" % r)
        self.t.start_backend("B11")
        self.t.wait_servers(["B11"])
        back = cp.wait_backend_up(MUXES, b11, True, self.deadline.cap(limit + 15))
        self.t_b11_back = time.time()
        self.check(all(v is not None for v in back.values()), "B11 listens again: up on every MUX after %s s" % back)
        self.end()

    def end_traffic(self):
        self.step = "streams"
        if self.client is None:
            return
        self.t.procs.send("client", signal.SIGTERM)
        try:
            self.client.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.t.procs.stop("client", grace=5)
        lines = [line for line in self.t.procs.read("client").splitlines() if line.strip()]
        summary = json.loads(lines[-1]) if lines else {}
        self.fig["streams"] = {k: (len(v) if k == "broken" else v) for k, v in summary.items()}
        flow_of = {str(e["i"]): (e["src"], e["sport"]) for e in S.read_events(self.events) if e.get("event") == "stream"}
        served = {}
        for b in T.BACKENDS:
            for e in S.read_events(self.t.events_path(b[0])):
                if e.get("event") == "open" and e.get("service") == "echo":
                    served[(e["client"], e["port"])] = b[0]
        on = {i: served.get(f) for i, f in flow_of.items()}
        broken = summary.get("broken", {})
        # B11's stop ends the streams it served; those B22 served when it left the pool may end too.
        expected = {"B11", "B22"}
        elsewhere = {i: dict(r, backend=on.get(str(i))) for i, r in broken.items() if on.get(str(i)) not in expected}
        per = {}
        for i, b in on.items():
            per.setdefault(b, [0, 0])
            per[b][0] += 1
            per[b][1] += str(i) in broken or i in broken
        self.fig["streams_by_backend"] = {b: "%d of %d ended early" % (v[1], v[0]) for b, v in sorted(per.items(), key=str)}
        if elsewhere:
            log("streams that ended on kept backends: %s" % json.dumps(elsewhere)[:1500])
        self.check(summary.get("finished") == STREAMS and not elsewhere,
                   "the %d long-lived streams: every one on a backend no step removed or stopped completes, bytes echoed "
                   "byte for byte (%s; by backend: %s; longest stall %s s)"
                   % (STREAMS, {k: v for k, v in self.fig["streams"].items() if k != "max_stall"},
                      self.fig["streams_by_backend"], summary.get("max_stall")))
        news = [e for e in S.read_events(self.events) if e.get("event") == "new"]
        phases = {}
        for step, (a, b) in self.windows.items():
            if step in ("1", "2", "3", "4", "5") and b:
                if step == "5":
                    phases["5 until out"] = S.phase_stats(news, a, self.t_b11_all_out)
                    phases["5 after"] = S.phase_stats(news, self.t_b11_all_out, b)
                else:
                    phases[step] = S.phase_stats(news, a, b)
        self.fig["new_by_step"] = phases
        bad = {k: v for k, v in phases.items() if v["failed"] and k != "5 until out"}
        self.check(not bad, "new connections at %d/s through the steps (failed, by step): %s"
                   % (NEW_RATE, {k: "%d/%d" % (v["failed"], v["started"]) for k, v in phases.items()}))

    def streams_on(self, backend):
        served = {(e["client"], e["port"]) for e in S.read_events(self.t.events_path(backend))
                  if e.get("event") == "open" and e.get("service") == "echo"}
        return sum(1 for e in S.read_events(self.events) if e.get("event") == "stream" and (e["src"], e["sport"]) in served)

    def portwatch_one(self, port, t_ret):
        """A one-off: how long after `t_ret` VIP:port answers (first connection)."""
        t0 = time.time()
        while time.time() - t0 < 10:
            r = self.cp.burst(VIP, port, 1, timeout=0.5, conc=1)
            if r["ok"]:
                return round(time.time() - t_ret, 3)
        return None

    def step6(self):
        cp, c = self.cp, self.c
        self.begin("6")
        # ---- 20 applies, each adding a port ----
        pw = self.t.procs.start("portwatch", self.t.ns("client"), [
            sys.executable, os.path.abspath(__file__), "portwatch", "--vip", VIP, "--sources", ",".join(T.CLIENT_V4),
            "--every", "0.02", "--streak", "12", "--timeout", "1.0", "--limit", "10"], stdin=subprocess.PIPE)
        extra = [("Http81", 81, PORT_ADDED)]
        node_lags, port_first, port_all, apply_secs = {n: [] for n in NODES}, [], [], []
        all_lag = []
        results_seen = 0
        for k in range(TIMING_APPLIES):
            if self.deadline.left() < 100:
                log("step 6: the deadline is near, %d applies done" % k)
                break
            port = 1001 + k
            extra = extra + [("T%d" % port, port, 8101 + k)]
            pw.stdin.write(("%d\n" % port).encode())
            pw.stdin.flush()
            time.sleep(0.1)
            code, rev, msg, secs, t_ret = cp.apply(front(extra=extra))
            apply_secs.append(secs)
            if code != 0 or not rev:
                self.check(False, "apply %d: exit %s, %s" % (k, code, msg))
                break
            seen, _ = cp.wait_revision(rev, t_ret, 10)
            for n, s in seen.items():
                node_lags[n].append(s)
            all_lag.append(max(seen.values()) if all(v is not None for v in seen.values()) else None)
            end = time.time() + 12
            got = None
            while time.time() < end and got is None:
                lines = [json.loads(x) for x in self.t.procs.read("portwatch").splitlines() if x.strip()]
                if len(lines) > results_seen:
                    got = lines[results_seen]
                time.sleep(0.05)
            if got is not None:
                results_seen += 1
                port_first.append(got["t_first"] - t_ret if got["t_first"] else None)
                port_all.append(got["t_all"] - t_ret if got["t_all"] else None)
        self.t.procs.stop("portwatch", grace=2)
        n_ok = sum(1 for x in all_lag if x is not None)
        self.fig["s6_applies"] = len(all_lag)
        self.fig["s6_apply_s"] = stats(apply_secs)
        self.fig["s6_all_nodes_s"] = stats(all_lag)
        self.fig["s6_per_node_s"] = {n: stats(v) for n, v in node_lags.items()}
        self.fig["s6_port_first_s"] = stats(port_first)
        self.fig["s6_port_all_s"] = stats(port_all)
        self.check(n_ok == len(all_lag) and all_lag, "%d applies: every node reported each revision (from apply "
                   "returning to the 5th node: %s)" % (len(all_lag), self.fig["s6_all_nodes_s"]))
        self.check(port_first and all(x is not None for x in port_all),
                   "each new port answered (first connection %s; 12 in a row %s)"
                   % (self.fig["s6_port_first_s"], self.fig["s6_port_all_s"]))

        # ---- 1,000 VIPs over 10,000 backends ----
        self.fig["rss_before_large_mb"] = cp.rss()
        t_first = time.time()
        times, last_rev, failed = [], None, False
        for i in range(LARGE_LBS):
            code, rev, msg, secs, t_ret = cp.apply(large(i))
            times.append(secs)
            if code != 0 or not rev:
                self.check(False, "lbctl apply Large%02d: exit %s, %s" % (i, code, msg[:300]))
                failed = True
                break
            last_rev = rev
        t_last = time.time()
        self.fig["large_apply_s"] = {"total": round(t_last - t_first, 2), "each": stats(times)}
        if not failed:
            seen, _ = cp.wait_revision(last_rev, t_last, self.deadline.cap(90))
            st = c.status()
            view, good = cp.current(st, last_rev)
            self.fig["large_nodes_s"] = seen
            self.fig["large_from_first_s"] = {n: (round(v + t_last - t_first, 2) if v is not None else None)
                                              for n, v in seen.items()}
            self.check(good, "1,000 VIPs over 10,000 backends (%d load balancers applied in %.1f s): every node runs "
                       "revision %d, seconds after the last apply: %s" % (LARGE_LBS, t_last - t_first, last_rev, seen))
            time.sleep(1)
            self.fig["rss_large_mb"] = cp.rss()
            # The MUXes announce 1,000 routes each through ExaBGP: bounded wait until the router
            # has them all.
            end = time.time() + self.deadline.cap(60)
            while True:
                vips = run(["ip", "-n", self.t.ns("rt"), "route", "show", "root", "198.19.16.0/22"],
                           check=False, quiet=True)
                n_routes = sum(1 for line in vips.splitlines() if line and not line[0].isspace())
                if n_routes == LARGE_LBS * LARGE_VIPS_EACH or time.time() >= end:
                    break
                time.sleep(0.5)
            self.fig["large_routes"] = n_routes
            self.fig["large_routes_s"] = round(time.time() - t_last, 2)
            self.check(n_routes == LARGE_LBS * LARGE_VIPS_EACH, "the router has %d of the 1,000 VIPs, %.1f s after "
                       "the last apply" % (n_routes, time.time() - t_last))
            r = cp.burst(VIP, 80, 100)
            self.check(r["failed"] == 0, "Front answers beside them: %s" % r)
        # Deleted again: time until every node runs without them.
        t_first = time.time()
        last_rev = None
        for i in range(LARGE_LBS):
            code, rev, msg, secs, t_ret = cp.delete("Large%02d" % i)
            if code == 0 and rev:
                last_rev = rev
        t_last = time.time()
        if last_rev:
            seen, _ = cp.wait_revision(last_rev, t_last, self.deadline.cap(60))
            self.fig["large_delete_nodes_s"] = seen
            self.fig["large_delete_s"] = round(t_last - t_first, 2)
            self.check(all(v is not None for v in seen.values()), "deleted in %.1f s: every node runs revision %d, "
                       "seconds after the last delete: %s" % (t_last - t_first, last_rev, seen))
            time.sleep(1)
            self.fig["rss_after_delete_mb"] = cp.rss()
        self.end()


# ---------------------------------------------------------------------------------------------------
def print_figures(fig, results):
    p = lambda *a: print(*a, flush=True)  # noqa: E731

    def fmt(x):
        return json.dumps(x) if isinstance(x, (dict, list)) else str(x)

    rows = [
        ("etcd: 3 members healthy after start (s)", fig.get("etcd_start_s")),
        ("1: apply -> each node runs it (s)", fig.get("s1_nodes_s")),
        ("1: apply -> VIP announced by all 3 MUXes (s)", fig.get("s1_announced_s")),
        ("1: apply -> 4 backends up on every MUX (s)", fig.get("s1_up_s")),
        ("2: Second applied -> each node (s)", fig.get("s2_second_nodes_s")),
        ("2: rule added -> each node (s)", fig.get("s2_rule_nodes_s")),
        ("2: rule added -> port 81 answers (s)", fig.get("s2_port81")),
        ("2: B22 removed -> each node (s)", fig.get("s2_remove_nodes_s")),
        ("3: mux3's refusal", fig.get("s3_refusal")),
        ("4: leader killed -> new leader (s)", fig.get("s4_reelect_s")),
        ("4: apply with 2 of 3 members -> each node (s)", fig.get("s4_two_members_nodes_s")),
        ("4: SIGTERM to all members -> all gone (s)", fig.get("s4_stop_s")),
        ("4: etcd down: new connections", fig.get("s4_etcd_down")),
        ("4: members started -> healthy (s)", fig.get("s4_etcd_back_s")),
        ("4: apply after restart -> each node (s)", fig.get("s4_after_restart_nodes_s")),
        ("5: B11 stopped -> out on each MUX (s)", fig.get("s5_out_s")),
        ("5: health key and MUX statuses (revision, s)", fig.get("s5_health")),
        ("streams", fig.get("streams")),
        ("streams by backend", fig.get("streams_by_backend")),
        ("new connections by step", {k: "%d/%d failed, %d slow" % (v["failed"], v["started"], v["slow"])
                                     for k, v in (fig.get("new_by_step") or {}).items()} or None),
        ("6: applies timed", fig.get("s6_applies")),
        ("6: lbctl apply itself (s)", fig.get("s6_apply_s")),
        ("6: apply returned -> all 5 nodes report it (s)", fig.get("s6_all_nodes_s")),
        ("6: ... per node (s)", fig.get("s6_per_node_s")),
        ("6: apply returned -> new port answers, first (s)", fig.get("s6_port_first_s")),
        ("6: apply returned -> new port, 12 in a row (s)", fig.get("s6_port_all_s")),
        ("6: 1,000 VIPs / 10,000 backends: applies (s)", fig.get("large_apply_s")),
        ("6: last apply -> each node runs them (s)", fig.get("large_nodes_s")),
        ("6: first apply -> each node runs them (s)", fig.get("large_from_first_s")),
        ("6: router routes to the 1,000 VIPs", fig.get("large_routes")),
        ("6: seconds from the last apply to the routes", fig.get("large_routes_s")),
        ("6: deleted: last delete -> each node (s)", fig.get("large_delete_nodes_s")),
        ("VmRSS MB, no load balancer", fig.get("rss_empty_mb")),
        ("VmRSS MB, before the large configuration", fig.get("rss_before_large_mb")),
        ("VmRSS MB, running it", fig.get("rss_large_mb")),
        ("VmRSS MB, after its deletion", fig.get("rss_after_delete_mb")),
    ]
    p("== control plane figures ==")
    width = max(len(r[0]) for r in rows)
    for name, v in rows:
        if v is not None:
            p("%-*s  %s" % (width, name, fmt(v)))
    p("steps: " + ", ".join("%s %s" % (k, "passed" if v else "FAILED") for k, v in results.items()))


def no_nodes(topo, c, cp, deadline):
    """The harness without lb-dpdk: every configuration the steps apply goes through lbctl against
    the cluster in its namespaces, with a member killed and all stopped on the way."""
    r = Run(cp, deadline, set())
    r.begin("cluster")
    r.fig["etcd_start_s"] = round(c.start_all(), 2)
    leader, _ = c.wait_leader(10)
    r.check(leader is not None, "3 members healthy after %s s, leader %s" % (r.fig["etcd_start_s"], leader))
    cp.w = c.watcher(E.PREFIX, digest=digest).start()
    cp.start_bird()
    r.begin("configurations")
    extra = [("Http81", 81, PORT_ADDED)]
    for what, lb in [("Front", front()), ("Second", second()), ("Front + 81", front(extra=extra)),
                     ("Front, B21 weight 3", front(extra=extra, weights={"B21": 3})),
                     ("Front without B22", front(extra=extra, weights={"B21": 3}, without=("B22",))),
                     ("Wide", wide())]:
        code, rev, msg, secs, _ = cp.apply(lb)
        r.check(code == 0 and rev, "lbctl apply %s: %s (%.3f s)" % (what, msg.replace("\n", "; "), secs))
    for name in ("Second", "Wide"):
        code, rev, msg, secs, _ = cp.delete(name)
        r.check(code == 0 and rev, "lbctl delete %s: %s" % (name, msg))
    for k in range(TIMING_APPLIES):
        extra = extra + [("T%d" % (1001 + k), 1001 + k, 8101 + k)]
    code, rev, msg, secs, _ = cp.apply(front(extra=extra))
    r.check(code == 0 and rev, "lbctl apply Front with the 20 timing rules: %s (%.3f s)" % (msg, secs))
    times = []
    for i in range(LARGE_LBS):
        code, rev, msg, secs, _ = cp.apply(large(i))
        times.append(secs)
        if not r.check(code == 0 and rev, "lbctl apply Large%02d (%d bytes): %s" % (i, len(json.dumps(large(i))), msg[:200])):
            break
    r.fig["large_apply_s"] = {"total": round(sum(times), 2), "each": stats(times)}
    code, out, err, secs = c.lbctl("list")
    r.check(code == 0 and len(out.splitlines()) == 1 + 1 + LARGE_LBS, "lbctl list: %d load balancers (%.2f s)"
            % (len(out.splitlines()) - 1, secs))
    r.begin("members")
    leader = c.leader()
    t0 = time.monotonic()
    c.kill(leader)
    new, _ = c.wait_leader(10, exclude=(leader,))
    r.fig["s4_reelect_s"] = round(time.monotonic() - t0, 3)
    r.check(new is not None, "kill -9 %s (leader): %s leads after %s s" % (leader, new, r.fig["s4_reelect_s"]))
    code, rev, msg, secs, _ = cp.apply(front())
    r.check(code == 0 and rev, "apply with 2 of 3: %s (%.3f s)" % (msg, secs))
    c.start(leader)
    c.wait_healthy([leader], 20)
    t0 = time.time()
    c.stop_all()
    r.fig["s4_stop_s"] = round(time.time() - t0, 2)
    code, _, err, secs = c.lbctl("apply", os.path.join(cp.lbdir, "001-Front.json"))
    r.check(code == 2, "every member stopped (%s s): lbctl apply exits %s (%.2f s): %s"
            % (r.fig["s4_stop_s"], code, secs, err.strip()[:150]))
    r.fig["s4_etcd_back_s"] = round(c.start_all(), 2)
    code, rev, msg, secs, _ = cp.apply(front(without=("B22",)))
    r.check(code == 0 and rev, "started again (%s s): apply %s" % (r.fig["s4_etcd_back_s"], msg))
    st = c.status()
    r.check(st is not None and len(st["loadBalancers"]) == 1 + LARGE_LBS,
            "lbctl status --json: %d load balancers, config revision %s"
            % (len((st or {}).get("loadBalancers", [])), (st or {}).get("configRevision")))
    for i in range(LARGE_LBS):
        cp.delete("Large%02d" % i)
    time.sleep(1)
    evs = cp.w.snapshot()
    lbkeys = {key for _, key, _, _ in evs if "/loadbalancers/" in key}
    r.check(len(lbkeys) >= 1 + LARGE_LBS, "the watcher saw %d changes on %d load balancer keys" % (len(evs), len(lbkeys)))
    hops = cp.birdc("show", "protocols")
    r.check("mux1" in hops, "BIRD runs in the router namespace (protocols: %s)"
            % ", ".join(line.split()[0] for line in hops.splitlines()[2:] if line.strip()))
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("burst", help="(internal) COUNT HTTP connections, in the client namespace")
    b.add_argument("--vip", required=True)
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--count", type=int, default=100)
    b.add_argument("--timeout", type=float, default=2.0)
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--sources", required=True)
    w = sub.add_parser("portwatch", help="(internal) how soon ports read from stdin answer")
    w.add_argument("--vip", required=True)
    w.add_argument("--sources", required=True)
    w.add_argument("--every", type=float, default=0.02)
    w.add_argument("--streak", type=int, default=12)
    w.add_argument("--timeout", type=float, default=1.0)
    w.add_argument("--limit", type=float, default=10)
    p.add_argument("--logs", help="keep logs, node files and load balancers in this folder")
    p.add_argument("--deadline", type=float, default=300)
    p.add_argument("--steps", default="1,2,3,4,5,6", help="steps to run (1 always runs)")
    p.add_argument("--no-nodes", action="store_true", help="no lb-dpdk: the cluster, lbctl and every configuration")
    p.add_argument("--binary", default=os.environ.get("LB_DPDK", os.path.join(REPO, "target/release/lb-dpdk")))
    p.add_argument("--lbctl", default=os.environ.get("LBCTL", os.path.join(REPO, "target/release/lbctl")))
    a = p.parse_args()
    if a.cmd == "burst":
        return cmd_burst(a)
    if a.cmd == "portwatch":
        return cmd_portwatch(a)
    T.require_root()
    import shutil
    for tool in ("bird", "birdc", "exabgp", "etcd", "etcdctl", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit("controlplane: %s is missing (apt-get install bird2 exabgp etcd-server etcd-client curl)" % tool)
    for path in ([a.lbctl] if a.no_nodes else [a.lbctl, a.binary]):
        if not os.access(path, os.X_OK):
            raise SystemExit("controlplane: %s is missing (cargo build --release -p lb-dpdk -p lb-control)" % path)
    steps = {s.strip() for s in a.steps.split(",") if s.strip()} | {"1"}
    deadline = Deadline(a.deadline)
    t_start = time.time()
    topo = CPTopology(prefix="lbe%d-" % os.getpid(), logdir=a.logs)
    T.guard(topo)
    c = cp = r = None
    try:
        topo.up()
        c = E.EtcdCluster(topo, lbctl=a.lbctl)
        c.build()
        cp = CP(topo, a.binary, c)
        if a.no_nodes:
            r = no_nodes(topo, c, cp, deadline)
        else:
            r = Run(cp, deadline, steps)
            if r.setup():
                r.step1()
                for s, fn in (("2", r.step2), ("3", r.step3), ("4", r.step4), ("5", r.step5)):
                    if s in steps and deadline.left() > 60:
                        fn()
                    elif s in steps:
                        r.step = s
                        r.check(False, "skipped: the deadline is near")
                r.end_traffic()
                if "6" in steps:
                    r.step6()
    except KeyboardInterrupt:
        log("interrupted")
        if r:
            r.ok = False
    except Exception as e:  # noqa: BLE001 - the figures so far and the teardown still happen
        import traceback
        traceback.print_exc()
        log("controlplane: %s" % e)
        if r:
            r.ok = False
            r.results[r.step] = False
    finally:
        ok = bool(r and r.ok)
        if r:
            print_figures(r.fig, r.results)
        if cp is not None and not a.no_nodes:
            try:
                cp.stop_muxes()
            except Exception as e:  # noqa: BLE001 - teardown goes on
                log("stopping the MUXes: %s" % e)
            if not ok:
                for n in NODES:
                    err = topo.procs.read("lb-" + n, "err").strip().splitlines()
                    if err:
                        log("lb-%s stderr (last lines):\n%s" % (n, "\n".join(err[-12:])))
        if c is not None:
            c.remove_data()
        topo.down()
    left = [n for n in run(["ip", "netns", "list"]).split() if n.startswith(topo.prefix)]
    if left:
        log("FAIL  namespaces left: %s" % ", ".join(left))
        ok = False
    print("controlplane%s: %s in %.0f s" % (" (no nodes)" if a.no_nodes else "", "passed" if ok else "FAILED",
                                           time.time() - t_start), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main() or 0)
