"""The data planes the harness runs on the topology:

  StandIn   kernel parts only: a VxLAN device on the MUX, routed to the hosts by ECMP (L4 hash), and
            nftables DNAT/SNAT on the hosts (conntrack keeps each connection on its backend). It
            proves the harness without lb-dpdk and is the benchmark's kernel baseline.
  LbDpdk    lb-dpdk on the MUX and on both hosts: `--live afxdp`, `--live afpacket` or DPDK's
            net_af_xdp.
  HAProxy   Debian's HAProxy in TCP mode in the MUX namespace, to the backends (benchmark only).

Each offers start(), stop(), set_return_path("mux"|"direct"), counters() (what the checks print on
failure) and flood_count() (the SYN-flood check's evidence in the counters)."""

import json
import os
import re
import subprocess
import threading
import time

from common import HERE, PY, CommandError, ip_batch, link_stats, log, nsrun, run
from lbconfig import PROBE_COUNT, PROBE_INTERVAL, write_nodes
from topology import (BACKEND_NET, BACKENDS, FLOOD_NET4, HOST_UNDERLAY, MSS_CLAMP, MUX_UNDERLAY, PORT_ECHO,
                      PORT_FAST, PORT_HTTP, PORT_IPERF, PORT_UDP, VIP_BENCH4, VIP_FLOAT4, VIP_HAPROXY4, VIP_NET4,
                      VIP_NET6, VIP_OUT4, VIP_WEB4, VIP_WEB6, mac)

METRICS_PORT = 9100


def nft(ns, text):
    run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text)


# ---------------------------------------------------------------------------------------------------
class StandIn:
    name = "standin"
    # What kernel parts cannot do: no reset on idle timeout (conntrack forgets silently).
    unsupported = {"idle": "conntrack expires an idle connection silently: no TCP reset to either end"}
    VX_NET4, VX_NET6 = "198.18.250", "2001:2:0:250"
    SNAT_PORTS = {"h1": "1024-32767", "h2": "32768-65535"}

    def __init__(self, topo, probes=True):
        self.t = topo
        self.probes = probes
        self.healthy = {b[0] for b in BACKENDS}
        self.return_path = "mux"
        self.lock = threading.Lock()
        self.events = []  # prober's changes, for the health check

    def vxmac(self, i):
        return mac(0xfa, i)

    def start(self, return_path="mux"):
        t = self.t
        t.set_mux_forwarding(True)
        mux = t.ns("mux")
        hosts = {"h1": 3, "h2": 4}
        cmds = ["link add vx0 address %s type vxlan id 100 local %s dstport 4789 nolearning dev fab0"
                % (self.vxmac(1), MUX_UNDERLAY),
                "addr add %s.1/24 dev vx0" % self.VX_NET4,
                "addr add %s::1/64 dev vx0 nodad" % self.VX_NET6,
                "link set vx0 up"]
        for h, i in hosts.items():
            cmds += ["neigh replace %s.%d lladdr %s dev vx0 nud permanent" % (self.VX_NET4, i, self.vxmac(i)),
                     "neigh replace %s::%d lladdr %s dev vx0 nud permanent" % (self.VX_NET6, i, self.vxmac(i))]
        # Every VIP to both hosts by an L4 hash (fib_multipath_hash_policy=1), as ECMP over MUXes does.
        cmds += ["route add %s nexthop via %s.3 dev vx0 nexthop via %s.4 dev vx0" % (VIP_NET4, self.VX_NET4, self.VX_NET4),
                 "route add %s nexthop via %s::3 dev vx0 nexthop via %s::4 dev vx0" % (VIP_NET6, self.VX_NET6, self.VX_NET6),
                 # Replies to SNAT ports go to the host whose port range holds them (fwmark below); the
                 # iperf3 rule goes by source address, so all of a test's connections go to host 1.
                 "route add %s via %s.3 dev vx0 table 101" % (VIP_NET4, self.VX_NET4),
                 "route add %s via %s.4 dev vx0 table 102" % (VIP_NET4, self.VX_NET4),
                 "rule add fwmark 1 lookup 101 pref 101",
                 "rule add fwmark 2 lookup 102 pref 102"]
        ip_batch(mux, cmds)
        for h, i in hosts.items():
            nsrun(mux, ["bridge", "fdb", "append", self.vxmac(i), "dev", "vx0", "dst", HOST_UNDERLAY[h]])
        nft(mux, """
table ip lbt {
  counter vip {}
  counter flood {}
  chain pre {
    type filter hook prerouting priority mangle; policy accept;
    ip daddr %(vipnet)s counter name vip
    ip saddr %(flood)s counter name flood
    ip daddr %(out)s meta l4proto { tcp, udp } th dport 1024-32767 meta mark set 1
    ip daddr %(out)s meta l4proto { tcp, udp } th dport 32768-65535 meta mark set 2
    ip daddr %(bench)s tcp dport %(iperf)d meta mark set 1
  }
}
""" % {"vipnet": VIP_NET4, "flood": FLOOD_NET4, "out": VIP_OUT4, "bench": VIP_BENCH4, "iperf": PORT_IPERF})
        for h, i in hosts.items():
            self._host(h, i)
        self.set_return_path(return_path)
        if self.probes:
            self._start_prober()
        log("stand-in up (kernel VxLAN on the MUX, nftables on the hosts)")

    def _host(self, h, i):
        ns = self.t.ns(h)
        net4, net6 = BACKEND_NET[h]
        ip_batch(ns, ["link add vx0 address %s type vxlan id 100 local %s dstport 4789 nolearning dev fab0"
                      % (self.vxmac(i), HOST_UNDERLAY[h]),
                      "addr add %s.%d/24 dev vx0" % (self.VX_NET4, i),
                      "addr add %s::%d/64 dev vx0 nodad" % (self.VX_NET6, i),
                      "link set vx0 up",
                      "neigh replace %s.1 lladdr %s dev vx0 nud permanent" % (self.VX_NET4, self.vxmac(1)),
                      "neigh replace %s::1 lladdr %s dev vx0 nud permanent" % (self.VX_NET6, self.vxmac(1)),
                      # Floating IP: the VIP stays the destination; a mark from a hash of the source
                      # address and port (nftables, below) picks the backend's route. (A multipath
                      # route does not spread here: after decapsulation it hashes every flow alike.)
                      "route add %s/32 via %s.10 dev be0 table 111" % (VIP_FLOAT4, net4),
                      "route add %s/32 via %s.11 dev be1 table 112" % (VIP_FLOAT4, net4),
                      "rule add fwmark 11 lookup 111 pref 111",
                      "rule add fwmark 12 lookup 112 pref 112",
                      # The return path through the MUX: what the backends send goes back in VxLAN.
                      "route add default via %s.1 dev vx0 table 100" % self.VX_NET4,
                      "route add default via %s::1 dev vx0 table 100" % self.VX_NET6])
        nsrun(ns, ["bridge", "fdb", "append", self.vxmac(1), "dev", "vx0", "dst", MUX_UNDERLAY])
        self._host_nft(h)

    def _host_nft(self, h):
        net4, net6 = BACKEND_NET[h]
        mine = [b for b in BACKENDS if b[1] == h and b[0] in self.healthy]

        def pick(idx, port, l4="tcp", how="numgen random"):
            addrs = [b[idx] for b in mine]
            if not addrs:
                return None
            m = ", ".join("%d : %s" % (k, a) for k, a in enumerate(addrs))
            return "dnat to %s mod %d map { %s } : %d" % (how, len(addrs), m, port)

        rules4 = []
        for match, target in (
                ("ip daddr %s tcp dport 80" % VIP_WEB4, pick(3, PORT_HTTP)),
                ("ip daddr %s udp dport 53" % VIP_WEB4, pick(3, PORT_UDP)),
                ("ip daddr %s tcp dport 7" % VIP_WEB4, pick(3, PORT_ECHO)),
                ("ip daddr %s tcp dport 80" % VIP_BENCH4, pick(3, PORT_FAST)),
                ("ip daddr %s tcp dport %d" % (VIP_BENCH4, PORT_IPERF), pick(3, PORT_IPERF, how="jhash ip saddr"))):
            if target:
                rules4.append("%s %s" % (match, target))
        marks = ", ".join("%d : %d" % (k, 11 + b[2]) for k, b in enumerate(mine))
        floating = ("ip daddr %s tcp dport 80 meta mark set jhash ip saddr . tcp sport mod %d map { %s }"
                    % (VIP_FLOAT4, len(mine), marks)) if mine else ""
        t6 = pick(4, PORT_HTTP)
        rules6 = ["ip6 daddr %s tcp dport 80 %s" % (VIP_WEB6, t6)] if t6 else []
        text = """
table ip lbt {}
delete table ip lbt
table ip lbt {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    %(rules4)s
  }
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr %(net4)s.0/24 oifname { "fab0", "vx0" } meta l4proto { tcp, udp } snat to %(out)s:%(ports)s
  }
  chain clamp {
    type filter hook forward priority mangle; policy accept;
    tcp flags syn tcp option maxseg size > %(mss)d tcp option maxseg size set %(mss)d
  }
  chain floating {
    type filter hook prerouting priority mangle; policy accept;
    %(floating)s
  }
}
table ip6 lbt {}
delete table ip6 lbt
table ip6 lbt {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    %(rules6)s
  }
  chain clamp {
    type filter hook forward priority mangle; policy accept;
    tcp flags syn tcp option maxseg size > %(mss)d tcp option maxseg size set %(mss)d
  }
}
""" % {"rules4": "\n    ".join(rules4), "rules6": "\n    ".join(rules6), "net4": net4, "out": VIP_OUT4,
       "ports": self.SNAT_PORTS[h], "mss": MSS_CLAMP,
       "floating": floating}
        nft(self.t.ns(h), text)

    def set_return_path(self, rp):
        """"mux": the backends' traffic goes back in VxLAN to the MUX (policy routing by incoming
        interface); "direct": straight to the router (Direct Server Return)."""
        for h in ("h1", "h2"):
            ns = self.t.ns(h)
            for dev in ("be0", "be1"):
                for fam in ("-4", "-6"):
                    run(["ip", "-n", ns, fam, "rule", "del", "iif", dev, "lookup", "100"], check=False, quiet=True)
                    if rp == "mux":
                        run(["ip", "-n", ns, fam, "rule", "add", "iif", dev, "lookup", "100", "pref", "100"])
        self.return_path = rp

    def _start_prober(self):
        targets = ["--target=%s=%s:%d" % (b[0], b[3], PORT_HTTP) for b in BACKENDS]
        p = self.t.procs.start("standin-prober", self.t.ns("mux"),
                               [PY, "-u", os.path.join(HERE, "servers.py"), "prober", "--interval", str(PROBE_INTERVAL),
                                "--count", str(PROBE_COUNT)] + targets)
        # The prober's output is its log file; a thread follows it and applies each change.
        path = os.path.join(self.t.logdir, "standin-prober.out")
        threading.Thread(target=self._follow, args=(path, p), daemon=True).start()

    def _follow(self, path, p):
        pos = 0
        while p.poll() is None:
            try:
                with open(path) as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except OSError:
                chunk = ""
            for line in chunk.splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") in ("up", "down"):
                    with self.lock:
                        self.events.append(ev)
                        (self.healthy.add if ev["event"] == "up" else self.healthy.discard)(ev["backend"])
                    host = next(b[1] for b in BACKENDS if b[0] == ev["backend"])
                    try:
                        self._host_nft(host)
                        log("stand-in prober: %s %s, %s's DNAT maps rewritten" % (ev["backend"], ev["event"], host))
                    except CommandError as e:
                        log("stand-in prober: %s" % e)
            time.sleep(0.2)

    def wait_ready(self, timeout=20):
        return True

    def backend_up(self):
        with self.lock:
            return {b[0]: b[0] in self.healthy for b in BACKENDS}

    def flood_count(self):
        out = nsrun(self.t.ns("mux"), ["nft", "-j", "list", "counter", "ip", "lbt", "flood"])
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return item["counter"]["packets"]
        return 0

    def counters(self):
        lines = []
        for ns, dev in (("mux", "fab0"), ("h1", "fab0"), ("h2", "fab0")):
            s = link_stats(self.t.ns(ns), dev)
            lines.append("%s %s: rx %d tx %d rx_dropped %d" % (ns, dev, s["rx_packets"], s["tx_packets"], s["rx_dropped"]))
        lines.append(nsrun(self.t.ns("mux"), ["nft", "list", "counters"], check=False, quiet=True).strip())
        for h in ("h1", "h2"):
            cnt = nsrun(self.t.ns(h), ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], check=False, quiet=True)
            lines.append("%s conntrack entries: %s" % (h, cnt.strip()))
        return "\n".join(lines)

    def pids(self):
        return {}

    def restart_hosts(self, return_path):
        self.set_return_path(return_path)

    def stop(self):
        self.report = self.counters()
        self.t.procs.stop("standin-prober")
        t = self.t
        run(["ip", "-n", t.ns("mux"), "link", "del", "vx0"], check=False, quiet=True)
        for c in (["rule", "del", "pref", "101"], ["rule", "del", "pref", "102"]):
            run(["ip", "-n", t.ns("mux")] + c, check=False, quiet=True)
        nsrun(t.ns("mux"), ["nft", "flush", "ruleset"], check=False, quiet=True)
        for h in ("h1", "h2"):
            self.set_return_path("direct")
            run(["ip", "-n", t.ns(h), "link", "del", "vx0"], check=False, quiet=True)
            for pref in ("111", "112"):
                run(["ip", "-n", t.ns(h), "rule", "del", "pref", pref], check=False, quiet=True)
            for table in ("100", "111", "112"):
                run(["ip", "-n", t.ns(h), "route", "flush", "table", table], check=False, quiet=True)
                run(["ip", "-n", t.ns(h), "-6", "route", "flush", "table", table], check=False, quiet=True)
            nsrun(t.ns(h), ["nft", "flush", "ruleset"], check=False, quiet=True)
            # conntrack of the stand-in would otherwise NAT the next data plane's packets.
            nsrun(t.ns(h), ["sh", "-c", "command -v conntrack >/dev/null && conntrack -F"], check=False, quiet=True)
        t.set_mux_forwarding(False)
        log("stand-in down")

    def final_report(self):
        return getattr(self, "report", "")


# ---------------------------------------------------------------------------------------------------
def parse_metrics(text):
    """Prometheus text into {(name, labels-string): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', line)
        if m:
            try:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def label(labels, key):
    m = re.search(r'%s="([^"]*)"' % key, labels)
    return m.group(1) if m else None


class LbDpdk:
    """lb-dpdk on the MUX and the two hosts. mode: afxdp, afpacket, dpdk (the MUX on DPDK's
    net_af_xdp) or dpdk-afpacket (the MUX on DPDK's net_af_packet)."""

    unsupported = {}

    def __init__(self, topo, mode, binary, idle_seconds=None, probes=True, extra_args=None, probe6=True):
        self.t = topo
        self.mode = mode
        self.name = mode
        self.binary = binary
        self.probes = probes and not mode.startswith("dpdk")
        self.extra = extra_args or []
        self.nodes = write_nodes(os.path.join(topo.logdir, "nodes"), idle_seconds=idle_seconds, probe6=probe6,
                                 dpdk_mux=mode.startswith("dpdk"))
        self.return_path = "mux"
        self.reports = {}

    def _cmd(self, role, node):
        cmd = [self.binary, "run", "--config", node, "--status-interval", "1",
               "--metrics", "127.0.0.1:%d" % METRICS_PORT]
        # DPDK mode: the MUX on DPDK's net_af_xdp; the host agents, whose backends live behind
        # interfaces of their own, on the AF_XDP live port.
        dpdk = self.mode.startswith("dpdk") and role == "mux"
        if dpdk:
            cmd.insert(2, "--dpdk")
        else:
            cmd += ["--live", "afxdp" if self.mode.startswith("dpdk") else self.mode]
        if role == "mux" and not self.probes:
            cmd.append("--no-probes")
        cmd += self.extra
        if dpdk:
            cmd += ["--", "--no-huge", "--no-pci", "-m", "512", "--file-prefix", self.t.prefix + role,
                    "--vdev=net_af_packet0,iface=fab0" if self.mode == "dpdk-afpacket" else "--vdev=net_af_xdp0,iface=fab0"]
        return cmd

    def _guard(self, on):
        """AF_PACKET does not take frames from the kernel (LIVE.md, pitfall 2): the namespaces' kernels
        would answer the tunnels with ICMP port unreachable and forward the backends' un-NATed replies
        (the client would reset them). These nftables rules keep the kernels out of the way, but for
        the management route (the probes and their answers)."""
        for role in ("mux", "h1", "h2"):
            ns = self.t.ns(role)
            if not on:
                nsrun(ns, ["nft", "delete", "table", "inet", "lbguard"], check=False, quiet=True)
                continue
            fwd = ""
            if role != "mux":
                fwd = """
  chain forward_guard {
    type filter hook forward priority filter; policy accept;
    iifname { "be0", "be1" } ip daddr != %s drop
    iifname { "be0", "be1" } ip6 daddr != 2001:2:0:2::2 drop
  }""" % MUX_UNDERLAY
            nft(ns, """
table inet lbguard {
  chain in {
    type filter hook input priority filter; policy accept;
    udp dport 4789 drop
  }%s
}
""" % fwd)

    def start(self, return_path="mux"):
        self.t.set_mux_forwarding(False)
        if self.mode == "afpacket":
            self._guard(True)
        self._start("mux", self.nodes["mux"])
        self._start_hosts(return_path)
        self.wait_ready()

    def _start(self, role, node):
        self.t.procs.start("lb-" + role, self.t.ns(role), self._cmd(role, node), env={"RUST_BACKTRACE": "1"})

    def _start_hosts(self, rp):
        for h in ("h1", "h2"):
            self._start(h, self.nodes[h if rp == "mux" else h + "-direct"])
        self.return_path = rp

    def wait_ready(self, timeout=30):
        """Until each instance serves its metrics, and the MUX's probes hold every backend up."""
        end = time.time() + timeout
        for role in ("mux", "h1", "h2"):
            while True:
                if not self.t.procs.alive("lb-" + role):
                    raise RuntimeError("lb-dpdk (%s) exited: %s" % (role, self.t.procs.read("lb-" + role, "err")[-3000:]))
                if self.metrics(role):
                    break
                if time.time() > end:
                    raise RuntimeError("lb-dpdk (%s) serves no metrics after %ds" % (role, timeout))
                time.sleep(0.5)
        if self.probes:
            while time.time() < end + PROBE_INTERVAL * 3:
                up = self.backend_up()
                if up and all(up.values()):
                    break
                time.sleep(0.5)
        return True

    def restart_hosts(self, return_path):
        """The return path is a node setting, which takes a restart (a reload refuses it)."""
        for h in ("h1", "h2"):
            self.reports[h + "-" + self.return_path] = self._stop("lb-" + h)
        self._start_hosts(return_path)
        self.wait_ready()

    def set_return_path(self, rp):
        if rp != self.return_path:
            self.restart_hosts(rp)

    def metrics(self, role):
        out = nsrun(self.t.ns(role), ["curl", "-s", "-m", "2", "http://127.0.0.1:%d/metrics" % METRICS_PORT],
                    check=False, quiet=True, timeout=5)
        return parse_metrics(out)

    def backend_up(self):
        m = self.metrics("mux")
        up = {}
        for (name, labels), v in m.items():
            if name == "lb_backend_up" and label(labels, "pool") == "Web":
                up[label(labels, "backend")] = v >= 1
        return up

    def backend_flows(self, role="mux"):
        m = self.metrics(role)
        return {label(lb, "backend"): v for (n, lb), v in m.items() if n == "lb_backend_new_flows_total"}

    def flood_count(self):
        """New flows on the MUX: each spoofed SYN is one."""
        return int(sum(self.backend_flows("mux").values()))

    def counters(self):
        lines = []
        for role in ("mux", "h1", "h2"):
            m = self.metrics(role)
            keep = sorted((k, v) for k, v in m.items() if v and k[0] != "lb_engine_seconds_total")

            def short(name, labels):
                # lb_drops_total{reason="no_vip"} -> drops[no_vip]; per backend: [pool/backend]
                name = name[3:].replace("_total", "")
                if not labels:
                    return name
                which = label(labels, "reason") or "%s/%s" % (label(labels, "pool"), label(labels, "backend"))
                return "%s[%s]" % (name, which)

            lines.append("%s: %s" % (role, ", ".join("%s=%g" % (short(*k), v) for k, v in keep)))
            err = self.t.procs.read("lb-" + role, "err").strip().splitlines()
            if err:
                lines.append("%s status: %s" % (role, err[-1]))
        return "\n".join(lines)

    def pids(self):
        return {r: self.t.procs.pid("lb-" + r) for r in ("mux", "h1", "h2") if self.t.procs.alive("lb-" + r)}

    def _stop(self, name):
        import signal
        code = self.t.procs.stop(name, grace=10, sig=signal.SIGINT)
        report = self.t.procs.read(name, "out")
        if code not in (0, None):
            report += "\n(exit %s)" % code
        return report

    def stop(self):
        for role in ("mux", "h1", "h2"):
            self.reports[role] = self._stop("lb-" + role)
        if self.mode == "afpacket":
            self._guard(False)
        log("lb-dpdk (%s) stopped" % self.mode)

    def final_report(self):
        return "\n".join("== %s ==\n%s" % (k, v.strip()) for k, v in self.reports.items() if v.strip())


# ---------------------------------------------------------------------------------------------------
class HAProxy:
    """HAProxy in TCP mode on VIP_HAPROXY4 in the MUX namespace: round robin over the backends'
    fast responders (port 80) and by source to their iperf3 servers. The MUX reaches the backends
    over the management route."""

    name = "haproxy"

    def __init__(self, topo):
        self.t = topo

    def start(self):
        servers = lambda port: "\n".join("  server %s %s:%d" % (b[0], b[3], port) for b in BACKENDS)  # noqa: E731
        cfg = """global
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fast
  bind %(vip)s:80
  default_backend fast
backend fast
  balance roundrobin
%(fast)s
frontend iperf
  bind %(vip)s:%(iperf)d
  default_backend iperf
backend iperf
  balance source
%(iperfs)s
""" % {"vip": VIP_HAPROXY4, "fast": servers(PORT_FAST), "iperf": PORT_IPERF, "iperfs": servers(PORT_IPERF)}
        path = os.path.join(self.t.logdir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        mux = self.t.ns("mux")
        run(["ip", "-n", mux, "addr", "add", VIP_HAPROXY4 + "/32", "dev", "lo"], check=False, quiet=True)
        self.t.procs.start("haproxy", mux, ["haproxy", "-db", "-f", path])
        time.sleep(1)
        if not self.t.procs.alive("haproxy"):
            raise RuntimeError("haproxy exited: " + self.t.procs.read("haproxy", "err"))

    def pids(self):
        return {"haproxy": self.t.procs.pid("haproxy")} if self.t.procs.alive("haproxy") else {}

    def stop(self):
        self.t.procs.stop("haproxy")
        run(["ip", "-n", self.t.ns("mux"), "addr", "del", VIP_HAPROXY4 + "/32", "dev", "lo"], check=False, quiet=True)
