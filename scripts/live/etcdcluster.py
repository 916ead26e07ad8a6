#!/usr/bin/env python3
"""A real 3-member etcd cluster (Debian's etcd-server 3.4) in network namespaces, for the control
plane's live tests, and `lbctl` and `etcdctl` run against it from an admin namespace.

    etcd1 ns 198.18.30.2 ──┐
    etcd2 ns 198.18.31.2 ──┼── router ns (forwards; .1 on each link)
    etcd3 ns 198.18.32.2 ──┤
    adm   ns 198.18.33.2 ──┘   lbctl, etcdctl, the watcher of the nodes' status keys

Each member runs in the foreground as a child of the harness (kept by PID), with a data directory
of its own under a temporary folder that is removed at the end, a static bootstrap
(`--initial-cluster`), and short timers (`--heartbeat-interval 50 --election-timeout 500`) so that
a leader's loss is decided in well under a second. A member killed (SIGKILL) or stopped (SIGTERM)
and started again rejoins from its data directory. Clients: port 2379, peers: port 2380, on the
member's own address only; nothing listens on or reaches any other address.

The router the members hang off is anyone's: `EtcdCluster.build(topo)` links the members and the
admin namespace to the topology's router namespace (`topo.ns("rt")`), records them in
`topo.created` (so that the topology's teardown deletes them) and starts nothing. With no topology
of its own to join, `selftest` builds a router alone:

    python3 scripts/live/etcdcluster.py selftest [--lbctl target/release/lbctl] [--logs DIR] [--client-tests BIN]

starts the cluster, applies, lists, shows and deletes a load balancer with lbctl from the admin
namespace, kills the leader (-9) and applies through the other two, stops every member (lbctl
then exits 2), starts them again and finds the data kept, and prints the times it measured.
"""

import argparse
import re
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, CommandError, ip_batch, log, run, sysctls  # noqa: E402
import topology as T  # noqa: E402

# The members' links to the router (topology.py's numbering: link N is 198.18.N.0/24, router .1,
# node .2); 30-33 are free in topology.py and scaleout.py.
MEMBER_LINKS = {"etcd1": 30, "etcd2": 31, "etcd3": 32}
MEMBERS = list(MEMBER_LINKS)
ADMIN, ADMIN_LINK = "adm", 33
CLIENT_PORT, PEER_PORT = 2379, 2380
HEARTBEAT_MS, ELECTION_MS = 50, 500
# The large configurations (thousands of backends) are split over several load balancers, each
# well under this; etcd's default (1.5 MiB) would refuse a single one of 1,000 VIPs.
MAX_REQUEST_BYTES = 8 << 20
PREFIX = "/lb/v1/"


def member_ip(m):
    return "198.18.%d.2" % MEMBER_LINKS[m]


def client_url(m):
    return "http://%s:%d" % (member_ip(m), CLIENT_PORT)


def peer_url(m):
    return "http://%s:%d" % (member_ip(m), PEER_PORT)


ENDPOINTS = [client_url(m) for m in MEMBERS]


class EtcdCluster:
    """The three members and the tools that talk to them. `topo` is a topology.Topology (or a
    subclass): its `ns()`, `procs`, `created` and `logdir` are used; its router namespace is `rt`."""

    def __init__(self, topo, lbctl=None, heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS):
        self.t = topo
        self.lbctl_path = lbctl or os.environ.get("LBCTL", os.path.join(REPO, "target/release/lbctl"))
        self.heartbeat_ms, self.election_ms = heartbeat_ms, election_ms
        self.token = topo.prefix + "etcd"
        # Data directories: temporary whatever happens to the logs (a large configuration's history
        # takes tens of megabytes), removed by remove_data().
        self.datadir = tempfile.mkdtemp(prefix=topo.prefix + "etcd-data-")
        self.started = set()

    # ---- namespaces ----------------------------------------------------------------------------
    def build(self):
        """Adds the members' and the admin namespaces, each on a veth to the router."""
        for role, n in list(MEMBER_LINKS.items()) + [(ADMIN, ADMIN_LINK)]:
            T.LINKS.setdefault(role, n)
            name = self.t.ns(role)
            run(["ip", "netns", "add", name])
            self.t.created.append(name)
            ip_batch(name, ["link set lo up"])
            self.t._node_link(role)
        sysctls(self.t.ns("rt"), [("net.ipv4.ip_forward", 1)])

    @property
    def admin_ns(self):
        return self.t.ns(ADMIN)

    # ---- members -------------------------------------------------------------------------------
    def command(self, m):
        cluster = ",".join("%s=%s" % (x, peer_url(x)) for x in MEMBERS)
        return ["etcd", "--name", m, "--data-dir", os.path.join(self.datadir, m),
                "--listen-client-urls", "%s,http://127.0.0.1:%d" % (client_url(m), CLIENT_PORT),
                "--advertise-client-urls", client_url(m),
                "--listen-peer-urls", peer_url(m), "--initial-advertise-peer-urls", peer_url(m),
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", str(self.heartbeat_ms), "--election-timeout", str(self.election_ms),
                "--max-request-bytes", str(MAX_REQUEST_BYTES),
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]

    def start(self, m):
        """Starts member `m` (again: it rejoins from its data directory)."""
        self.t.procs.start("etcd-" + m, self.t.ns(m), self.command(m))
        self.started.add(m)

    def start_all(self, timeout=30):
        """Starts every member not running, and waits until each answers healthy; returns the
        seconds that took."""
        t0 = time.monotonic()
        for m in MEMBERS:
            if not self.alive(m):
                self.start(m)
        self.wait_healthy(MEMBERS, timeout)
        return time.monotonic() - t0

    def alive(self, m):
        return self.t.procs.alive("etcd-" + m)

    def pid(self, m):
        return self.t.procs.pid("etcd-" + m)

    def kill(self, m):
        """kill -9 member `m` (by its PID) and reaps it."""
        os.kill(self.pid(m), signal.SIGKILL)
        self.t.procs.stop("etcd-" + m, grace=5)

    def stop(self, m):
        """SIGTERM, as an operator stops it; returns its exit code."""
        return self.t.procs.stop("etcd-" + m, grace=10)

    def stop_all(self):
        for m in MEMBERS:
            self.t.procs.send("etcd-" + m, signal.SIGTERM)
        return {m: self.stop(m) for m in MEMBERS}

    def remove_data(self):
        """Stops what still runs and removes the data directories."""
        for m in MEMBERS:
            try:
                self.t.procs.stop("etcd-" + m, grace=3)
            except Exception as e:  # noqa: BLE001 - teardown goes on
                log("stopping etcd-%s: %s" % (m, e))
        shutil.rmtree(self.datadir, ignore_errors=True)

    def health(self, m):
        """Whether member `m` answers /health with true (from the admin namespace)."""
        out = run(["ip", "netns", "exec", self.admin_ns, "curl", "-s", "-m", "1", client_url(m) + "/health"],
                  check=False, quiet=True, timeout=5)
        try:
            return json.loads(out).get("health") in (True, "true")
        except ValueError:
            return False

    def wait_healthy(self, members, timeout):
        end = time.monotonic() + timeout
        for m in members:
            while not self.health(m):
                if not self.alive(m):
                    raise RuntimeError("etcd member %s exited: %s" % (m, self.t.procs.read("etcd-" + m, "err")[-2000:]))
                if time.monotonic() > end:
                    raise RuntimeError("etcd member %s not healthy after %ss: %s"
                                       % (m, timeout, self.t.procs.read("etcd-" + m, "err")[-2000:]))
                time.sleep(0.05)

    # ---- tools in the admin namespace ------------------------------------------------------------
    def endpoints(self, members=None):
        return [client_url(m) for m in (members or MEMBERS)]

    def lbctl(self, *args, timeout=60, endpoints=None, input=None):
        """Runs lbctl in the admin namespace; returns (exit code, stdout, stderr, seconds)."""
        cmd = ["ip", "netns", "exec", self.admin_ns, self.lbctl_path, "--endpoints",
               ",".join(endpoints or self.endpoints()), "--timeout", "3"] + [str(a) for a in args]
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            return None, "", "timed out after %ss" % timeout, time.monotonic() - t0
        return p.returncode, p.stdout, p.stderr, time.monotonic() - t0

    def status(self):
        """`lbctl status --json` parsed, or None (etcd unavailable)."""
        code, out, _, _ = self.lbctl("status", "--json", timeout=20)
        if code != 0:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return None

    def etcdctl(self, *args, timeout=20, check=True):
        cmd = ["ip", "netns", "exec", self.admin_ns, "etcdctl", "--endpoints", ",".join(self.endpoints()),
               "--command-timeout=3s", "--dial-timeout=2s"] + list(args)
        return run(cmd, check=check, quiet=not check, timeout=timeout)

    def members_status(self):
        """{member: {"leader": bool, "raft_term": N, "revision": N}} of the members that answer."""
        out = {}
        for m in MEMBERS:
            if not self.alive(m):
                continue
            text = run(["ip", "netns", "exec", self.admin_ns, "etcdctl", "--endpoints", client_url(m),
                        "--command-timeout=2s", "--dial-timeout=1s", "endpoint", "status", "-w", "json"],
                       check=False, quiet=True, timeout=10)
            try:
                st = json.loads(text)[0]["Status"]
            except (ValueError, IndexError, KeyError, TypeError):
                continue
            # No leader yet: etcdctl leaves `leader` out (0).
            head = st.get("header") or {}
            out[m] = {"leader": bool(st.get("leader")) and st.get("leader") == head.get("member_id"),
                      "raft_term": st.get("raft_term"), "revision": head.get("revision")}
        return out

    def leader(self):
        for m, st in self.members_status().items():
            if st["leader"]:
                return m
        return None

    def wait_leader(self, timeout, exclude=()):
        """Polls until a member other than `exclude` leads; returns (member, seconds)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            m = self.leader()
            if m and m not in exclude:
                return m, time.monotonic() - t0
            time.sleep(0.02)
        return None, None

    def get(self, key, prefix=False, rev=None):
        """The key-values at `key` (with `--prefix`), decoded: [{"key", "value", "mod_revision",
        "create_revision", "lease"}], and the store's revision."""
        args = ["get", key, "-w", "json"] + (["--prefix"] if prefix else []) + (["--rev", str(rev)] if rev else [])
        resp = json.loads(self.etcdctl(*args) or "{}")
        kvs = []
        for kv in resp.get("kvs", []):
            kvs.append({"key": base64.b64decode(kv["key"]).decode(errors="replace"),
                        "value": base64.b64decode(kv.get("value", "")).decode(errors="replace"),
                        "mod_revision": int(kv.get("mod_revision", 0)),
                        "create_revision": int(kv.get("create_revision", 0)),
                        "lease": int(kv.get("lease", 0))})
        return kvs, int(resp.get("header", {}).get("revision", 0))

    def watcher(self, prefix, name="watch", digest=None):
        return Watcher(self, prefix, name, digest)


class Watcher:
    """`etcdctl watch --prefix PREFIX -w json` in the admin namespace: every change under the prefix
    with the time it arrived here (wall clock, comparable with the other namespaces' clocks), so
    that figures do not depend on a polling period. It follows the cluster through member loss.
    `digest(key, value)` (if given) turns each value into what is kept of it (large values need
    not stay in memory)."""

    def __init__(self, cluster, prefix, name, digest=None):
        self.c = cluster
        self.prefix = prefix
        self.name = "etcdctl-" + name
        self.digest = digest
        self.events = []  # (t, key, value or digest, or None for a delete; mod_revision)
        self.lock = threading.Lock()
        self.p = None
        self.thread = None

    def start(self, from_rev=None):
        cmd = ["etcdctl", "--endpoints", ",".join(self.c.endpoints()), "--dial-timeout=2s",
               "watch", "--prefix", self.prefix, "-w", "json"] + (["--rev", str(from_rev)] if from_rev else [])
        self.p = self.c.t.procs.start(self.name, self.c.admin_ns, cmd, stdin=subprocess.DEVNULL)
        # Procs writes stdout to a file: it is followed as it grows.
        path = os.path.join(self.c.t.logdir, self.name + ".out")
        self.thread = threading.Thread(target=self._follow, args=(path,), daemon=True)
        self.thread.start()
        return self

    def _follow(self, path):
        pos, buf = 0, ""
        while self.p is not None and (self.p.poll() is None or pos < os.path.getsize(path)):
            try:
                with open(path) as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except OSError:
                chunk = ""
            now = time.time()
            if not chunk:
                time.sleep(0.005)
                continue
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    resp = json.loads(line)
                except ValueError:
                    continue
                for ev in resp.get("Events") or resp.get("events") or []:
                    kv = ev.get("kv", {})
                    key = base64.b64decode(kv.get("key", "")).decode(errors="replace")
                    deleted = ev.get("type") in (1, "DELETE")
                    value = None if deleted else base64.b64decode(kv.get("value", "")).decode(errors="replace")
                    if value is not None and self.digest is not None:
                        value = self.digest(key, value)
                    with self.lock:
                        self.events.append((now, key, value, int(kv.get("mod_revision", 0))))

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def stop(self):
        self.c.t.procs.stop(self.name, grace=2)
        p, self.p = self.p, None
        if self.thread:
            self.thread.join(timeout=3)
        return p


# ---------------------------------------------------------------------------------------------------
class EtcdTopology(T.Topology):
    """A router namespace alone, for the members to hang off (the self-test)."""

    @property
    def all_roles(self):
        return ["rt"]

    def up(self, servers=False):
        log("building namespaces %s* (logs in %s)" % (self.prefix, self.logdir))
        for role in self.all_roles:
            run(["ip", "netns", "add", self.ns(role)])
            self.created.append(self.ns(role))
            ip_batch(self.ns(role), ["link set lo up"])


def sample_lb(name="Sample", vip="198.19.0.10", port=80):
    from lbconfig import rule
    members = [{"name": b[0], "properties": {"ipAddress": b[3], "hostAddress": T.HOST_UNDERLAY[b[1]]}}
               for b in T.BACKENDS]
    return {"name": name, "properties": {
        "frontendIPConfigurations": [{"name": "Web4", "properties": {"publicIPAddress": {"ipAddress": vip}}}],
        "backendAddressPools": [{"name": "Web", "properties": {"loadBalancerBackendAddresses": members}}],
        "loadBalancingRules": [rule("Http4", "Web4", "Web", "Tcp", port, T.PORT_HTTP, probe=None)]}}


def selftest(a):
    T.require_root()
    for tool in ("etcd", "etcdctl", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit("etcdcluster: %s is missing (apt-get install etcd-server etcd-client curl)" % tool)
    topo = EtcdTopology(prefix="lbk%d-" % os.getpid(), logdir=a.logs)
    T.guard(topo)
    c = None
    ok, fig = True, {}

    def check(cond, what):
        nonlocal ok
        log(("ok    " if cond else "FAIL  ") + what)
        ok = ok and bool(cond)

    try:
        topo.up()
        c = EtcdCluster(topo, lbctl=a.lbctl)
        c.build()
        fig["start_s"] = round(c.start_all(), 3)
        leader, _ = c.wait_leader(10)
        check(leader is not None, "3 members healthy after %s s, leader %s" % (fig["start_s"], leader))
        if a.client_tests:
            # lb-control's tests against this cluster (each under a prefix of its own).
            t0 = time.monotonic()
            p = subprocess.run(["ip", "netns", "exec", c.admin_ns, "env", "LB_ETCD_ENDPOINTS=" + ",".join(c.endpoints()),
                                a.client_tests, "--test-threads=1"], capture_output=True, text=True, timeout=300)
            summary = [x for x in p.stdout.splitlines() if x.startswith("test result")]
            check(p.returncode == 0 and "skipped" not in p.stderr,
                  "lb-control's tests against the cluster: exit %s in %.1f s, %s"
                  % (p.returncode, time.monotonic() - t0, summary[-1] if summary else p.stdout[-300:] + p.stderr[-300:]))
        lbfile = os.path.join(topo.logdir, "sample.json")
        with open(lbfile, "w") as f:
            json.dump(sample_lb(), f)
        code, out, err, secs = c.lbctl("apply", lbfile)
        check(code == 0 and "created Sample" in out, "lbctl apply: exit %s, %s%s (%.3f s)" % (code, out.strip(), err.strip(), secs))
        m = re.search(r"at revision (\d+)", out)
        first = int(m.group(1)) if m else 0
        w = c.watcher(PREFIX).start(from_rev=first + 1)
        code, out, err, _ = c.lbctl("list")
        check(code == 0 and "Sample" in out and "198.19.0.10" in out, "lbctl list:\n" + out.rstrip())
        code, out, err, _ = c.lbctl("show", "Sample")
        check(code == 0 and json.loads(out)["name"] == "Sample", "lbctl show Sample: %d bytes of JSON" % len(out))
        st = c.status()
        check(st is not None and [x["name"] for x in st["loadBalancers"]] == ["Sample"],
              "lbctl status --json: config revision %s, nodes %s" % (st and st["configRevision"], st and st["nodes"]))
        bad = sample_lb("Bad")
        bad["properties"]["loadBalancingRules"][0]["properties"]["idleTimeoutInMinutes"] = 2
        code, out, err, _ = c.lbctl("apply", "-", input=json.dumps(bad))
        check(code == 1 and "Bad" in err, "lbctl apply of an invalid load balancer: exit %s, %s" % (code, err.strip()))
        clash = sample_lb("Clash")
        code, out, err, _ = c.lbctl("apply", "-", input=json.dumps(clash))
        check(code == 1 and "Sample" in err, "lbctl apply of a listener another has: exit %s, %s" % (code, err.strip()))

        # kill -9 the leader: a new one, and applies go on through the other two.
        leader = c.leader()
        t0 = time.monotonic()
        c.kill(leader)
        new, secs = c.wait_leader(10, exclude=(leader,))
        fig["reelect_s"] = round(time.monotonic() - t0, 3)
        check(new is not None, "kill -9 %s (leader): %s leads after %s s" % (leader, new, fig["reelect_s"]))
        lb2 = sample_lb("Sample", port=81)
        with open(lbfile, "w") as f:
            json.dump(lb2, f)
        code, out, err, secs = c.lbctl("apply", lbfile)
        fig["apply_2of3_s"] = round(secs, 3)
        check(code == 0 and "updated Sample" in out, "apply with 2 of 3 members: exit %s, %s%s (%.3f s)"
              % (code, out.strip(), err.strip(), secs))
        c.start(leader)
        c.wait_healthy([leader], 20)
        check(True, "%s started again and healthy" % leader)

        # Every member stopped: lbctl says etcd is unavailable (2); started again, the data is there.
        t0 = time.monotonic()
        codes = c.stop_all()
        # etcd 3.4 ends on SIGTERM by the signal itself, once it has handed leadership on.
        check(all(v in (0, -signal.SIGTERM) for v in codes.values()),
              "SIGTERM to every member: exit codes %s, all gone after %.2f s" % (codes, time.monotonic() - t0))
        code, out, err, secs = c.lbctl("status", timeout=30)
        check(code == 2, "lbctl status with no member: exit %s after %.2f s: %s" % (code, secs, err.strip()[:200]))
        fig["restart_s"] = round(c.start_all(), 3)
        code, out, err, _ = c.lbctl("show", "Sample")
        check(code == 0 and json.loads(out)["properties"]["loadBalancingRules"][0]["properties"]["frontendPort"] == 81,
              "every member started again (healthy after %s s): Sample kept as last applied" % fig["restart_s"])
        code, out, err, _ = c.lbctl("delete", "Sample")
        check(code == 0, "lbctl delete Sample: %s%s" % (out.strip(), err.strip()))
        code, out, err, _ = c.lbctl("delete", "Sample")
        check(code == 1, "lbctl delete Sample again: exit %s, %s" % (code, err.strip()))
        # The watch that ran through the kill and the stop saw the second apply; etcdctl's own
        # reconnection after every member stopped follows gRPC's back-off, which is etcdctl's
        # business. What the cluster kept is checked by a watch from the revision after the first
        # apply, started now: the second apply and the delete, through the kill -9 and the restart.
        before = sorted({r for _, _, _, r in w.snapshot()})
        w.stop()
        w2 = c.watcher(PREFIX, name="watch-after").start(from_rev=first + 1)
        end = time.monotonic() + 15
        while time.monotonic() < end and not any(v is None for _, _, v, _ in w2.snapshot()):
            time.sleep(0.1)
        evs = w2.snapshot()
        w2.stop()
        keys = sorted({k for _, k, _, _ in evs})
        revs = sorted({r for _, _, _, r in evs})
        check(revs == [first + 1, first + 2] and PREFIX + "loadbalancers/Sample" in keys
              and len(evs) == 4,
              "etcdctl watch saw revision %s before the stop; a watch from revision %d after the restart sees %d "
              "changes at revisions %s (%s)" % (before, first + 1, len(evs), revs, ", ".join(keys)))
    except KeyboardInterrupt:
        ok = False
        log("interrupted")
    except Exception as e:  # noqa: BLE001 - teardown still happens
        import traceback
        traceback.print_exc()
        log("etcdcluster: %s" % e)
        ok = False
    finally:
        if c is not None:
            c.remove_data()
        topo.down()
    left = [n for n in run(["ip", "netns", "list"]).split() if n.startswith(topo.prefix)]
    check(not left, "no namespace left (%s)" % (", ".join(left) or "ip netns list has none of %s*" % topo.prefix))
    print("etcd cluster: started in %s s, leader re-elected %s s after kill -9, apply with 2 of 3: %s s, "
          "restart of all: %s s" % (fig.get("start_s"), fig.get("reelect_s"), fig.get("apply_2of3_s"),
                                    fig.get("restart_s")), flush=True)
    print("etcdcluster selftest: %s" % ("passed" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["selftest"])
    p.add_argument("--lbctl", default=os.environ.get("LBCTL", os.path.join(REPO, "target/release/lbctl")))
    p.add_argument("--logs", help="keep logs in this folder")
    p.add_argument("--client-tests", help="lb-control's etcd_live test binary, run against the cluster")
    a = p.parse_args()
    return selftest(a)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CommandError as e:
        raise SystemExit(str(e))
