#!/usr/bin/env python3
"""Network namespaces for the live checks, the demo and the benchmark, built from nothing as root.

    client ns ──┐                         ┌── MUX ns (underlay 198.18.2.2)
                │                         │
   internet ns ─┼── router ns (forwards) ─┼── host 1 ns (198.18.3.2) ── backends B11, B12
                │                         │
                                          └── host 2 ns (198.18.4.2) ── backends B21, B22

Every address is inside the benchmarking ranges 198.18.0.0/15 and 2001:2::/48, and no namespace is
linked to the root namespace, so nothing the harness sends can leave the machine:

  router <-> node N     198.18.N.0/24, 2001:2:0:N::/64; router .1, node .2 (N: 1 client, 2 MUX,
                        3 host 1, 4 host 2, 5 internet)
  client addresses      198.18.1.2-.5, 2001:2:0:1::2-5
  backends of host H    198.18.1H.0/24, 2001:2:0:1H::/64: the gateway .1 (::1) on each of the host's
                        backend veths, backends .10 and .11 (::10, ::11)
  VIPs                  198.19.0.0/24 and 2001:2:ff::/64, routed by the router to the MUX
  SYN-flood sources     198.18.200.0/21 (2001:2:0:200::/56), blackholed by the router: the SYN-ACKs
                        of a flood end there

The router routes each host's backend subnet to that host: the MUX's health probes reach the
backends through the hosts' kernels (the management route), and the backends' answers to the MUX's
underlay address go back the same way.

MTU: every link is 1500. With VxLAN's 50 bytes, a full-size client packet does not fit the underlay
after encapsulation: TCP is kept under it by clamping the MSS to 1360 on the hosts (`mssClamp`; IPv6
inside VxLAN needs 1390 or less), and
the path-MTU check sends a 1500-byte UDP datagram with DF, which must come back as ICMP
"fragmentation needed" (MTU 1450).

Checksum offload: `ethtool -K IF tx off tso off gso off` on the veths of the kernel senders (clients, backends,
internet server): AF_XDP hands a user-space forwarder frames whose TCP/UDP checksum the sender left
partial, and it cannot complete them, so the receiver would drop them as checksum errors. With
AF_PACKET the senders keep their checksum offload (`tx on`, TSO and GSO off): the port completes the
partial checksums the kernel reports.

Neighbours are resolved by the kernels (ARP, ND), except with DPDK's net_af_xdp, which takes every
frame of its interface: then every link has permanent entries at both ends.

    topology.py up [--prefix P]     build it and wait (Ctrl-C tears it down)
    topology.py --cleanup PREFIX    delete leftovers of a run: its namespaces and their processes
"""

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Procs, ip_batch, log, nsrun, run, sysctls, PY, HERE  # noqa: E402

MTU = 1500
VXLAN_MTU = MTU - 50
# The MSS the hosts clamp to: a TCP segment over IPv6 (40 + 20 bytes of headers) inside VxLAN over
# the IPv4 underlay (50) must fit 1500: 1390 at most; 1360 leaves room for IPv4 options too.
MSS_CLAMP = 1360

# Link numbers of the router's point-to-point veths.
LINKS = {"client": 1, "mux": 2, "h1": 3, "h2": 4, "inet": 5}
CLIENT_V4 = ["198.18.1.%d" % i for i in range(2, 6)]
CLIENT_V6 = ["2001:2:0:1::%d" % i for i in range(2, 6)]
MUX_UNDERLAY = "198.18.2.2"
MUX_UNDERLAY6 = "2001:2:0:2::2"
HOST_UNDERLAY = {"h1": "198.18.3.2", "h2": "198.18.4.2"}
INET_V4 = "198.18.5.2"
INET_V6 = "2001:2:0:5::2"
INET_PORT = 9000

# Backends: name, host, index on the host, IPv4, IPv6.
BACKENDS = [
    ("B11", "h1", 0, "198.18.11.10", "2001:2:0:11::10"),
    ("B12", "h1", 1, "198.18.11.11", "2001:2:0:11::11"),
    ("B21", "h2", 0, "198.18.12.10", "2001:2:0:12::10"),
    ("B22", "h2", 1, "198.18.12.11", "2001:2:0:12::11"),
]
BACKEND_NET = {"h1": ("198.18.11", "2001:2:0:11"), "h2": ("198.18.12", "2001:2:0:12")}

VIP_NET4, VIP_NET6 = "198.19.0.0/24", "2001:2:ff::/64"
VIP_WEB4 = "198.19.0.10"      # HTTP 80 -> 8080, UDP 53 -> 5353, echo 7 -> 7007 (idle timeout)
VIP_FLOAT4 = "198.19.0.11"    # HTTP 80 -> 80 with floating IP (the backends listen on the VIP)
VIP_BENCH4 = "198.19.0.12"    # benchmark: HTTP 80 -> 8081 (a fast responder), iperf3 5201 by source
VIP_WEB6 = "2001:2:ff::10"    # HTTP 80 -> 8080 over IPv6
VIP_OUT4 = "198.19.0.20"      # the outbound rule's frontend: backends' SNAT address
VIP_HAPROXY4 = "198.19.0.30"  # HAProxy's listener in the MUX namespace (benchmark)
FLOOD_NET4, FLOOD_NET6 = "198.18.200.0/21", "2001:2:0:200::/56"

PORT_HTTP, PORT_FAST, PORT_UDP, PORT_ECHO, PORT_IPERF = 8080, 8081, 5353, 7007, 5201


# The senders' veths: no partial checksums (AF_XDP cannot complete them) and no frames larger than
# the MTU (GSO super-frames, which AF_PACKET drops as oversize).
OFFLOADS_OFF = ["tx", "off", "tso", "off", "gso", "off"]


def mac(a, b):
    return "02:00:c6:12:%02x:%02x" % (a, b)


class Topology:
    """The namespaces and their kernel configuration, plus the servers. `up()` builds it all;
    `down()` stops every process by PID and deletes every namespace by name, whatever state the
    build reached."""

    def __init__(self, prefix=None, logdir=None, keep_logs=False, static_neighbours=False, checksum_offload=False):
        self.prefix = prefix or "lbt%d-" % os.getpid()
        # Permanent neighbour entries only where a data plane takes ARP and ND from the kernel
        # (DPDK's net_af_xdp program takes every frame); elsewhere the kernels resolve them, and
        # the load balancer learns its next hops and backends from their tables.
        self.static_neighbours = static_neighbours
        # The senders' checksum offload stays on (a data plane that completes partial checksums).
        self.offloads = OFFLOADS_OFF[2:] if checksum_offload else OFFLOADS_OFF
        self.logdir = logdir or tempfile.mkdtemp(prefix=self.prefix)
        os.makedirs(self.logdir, exist_ok=True)
        self.keep_logs = keep_logs or bool(logdir)
        self.procs = Procs(self.logdir)
        self.created = []
        self._down = False

    def ns(self, role):
        return self.prefix + role

    @property
    def all_roles(self):
        return ["rt", "client", "mux", "h1", "h2", "inet"] + [b[0].lower() for b in BACKENDS]

    # ---- build ---------------------------------------------------------------------------------
    def up(self, servers=True):
        log("building namespaces %s* (logs in %s)" % (self.prefix, self.logdir))
        for role in self.all_roles:
            name = self.ns(role)
            run(["ip", "netns", "add", name])
            self.created.append(name)
            ip_batch(name, ["link set lo up"])
        self._router()
        for role in ("client", "mux", "h1", "h2", "inet"):
            self._node_link(role)
        ip_batch(self.ns("rt"), self._router_routes)
        for b in BACKENDS:
            self._backend_link(*b)
        self._sysctls()
        # The senders' veths: a user-space forwarder cannot complete partial checksums (see above).
        for role in ["client", "inet"]:
            nsrun(self.ns(role), ["ethtool", "-K", "fab0"] + self.offloads, quiet=True)
        for b in BACKENDS:
            nsrun(self.ns(b[0].lower()), ["ethtool", "-K", "eth0"] + self.offloads, quiet=True)
        if servers:
            self.start_servers()
        log("topology up")

    def _router(self):
        rt = self.ns("rt")
        cmds = [
            "route add %s via %s" % (VIP_NET4, MUX_UNDERLAY),
            "route add %s via 2001:2:0:2::2" % VIP_NET6,
            "route add blackhole %s" % FLOOD_NET4,
            "route add blackhole %s" % FLOOD_NET6,
        ]
        for h, n in (("h1", 3), ("h2", 4)):
            v4, v6 = BACKEND_NET[h]
            cmds += ["route add %s.0/24 via 198.18.%d.2" % (v4, n), "route add %s::/64 via 2001:2:0:%d::2" % (v6, n)]
        self._router_routes = cmds

    def _node_link(self, role):
        n = LINKS[role]
        node, rt = self.ns(role), self.ns("rt")
        rdev = "%s0" % role
        m_node, m_rt = mac(n, 2), mac(n, 1)
        ip_batch(node, ["link add fab0 address %s mtu %d type veth peer name %s address %s mtu %d netns %s"
                        % (m_node, MTU, rdev, m_rt, MTU, rt)])
        addrs4 = CLIENT_V4 if role == "client" else ["198.18.%d.2" % n]
        addrs6 = CLIENT_V6 if role == "client" else ["2001:2:0:%d::2" % n]
        cmds = ["addr add %s/24 dev fab0" % a for a in addrs4]
        cmds += ["addr add %s/64 dev fab0 nodad" % a for a in addrs6]
        cmds += ["link set fab0 up",
                 "route add default via 198.18.%d.1" % n,
                 "route add default via 2001:2:0:%d::1" % n,
                 "neigh replace 198.18.%d.1 lladdr %s dev fab0 nud permanent" % (n, m_rt),
                 "neigh replace 2001:2:0:%d::1 lladdr %s dev fab0 nud permanent" % (n, m_rt)]
        ip_batch(node, self._neigh(cmds))
        rcmds = ["addr add 198.18.%d.1/24 dev %s" % (n, rdev),
                 "addr add 2001:2:0:%d::1/64 dev %s nodad" % (n, rdev),
                 "link set %s up" % rdev]
        rcmds += ["neigh replace %s lladdr %s dev %s nud permanent" % (a, m_node, rdev) for a in addrs4]
        rcmds += ["neigh replace %s lladdr %s dev %s nud permanent" % (a, m_node, rdev) for a in addrs6]
        ip_batch(rt, self._neigh(rcmds))

    def _neigh(self, cmds):
        """`cmds` without the permanent neighbour entries, unless the topology keeps them."""
        return cmds if self.static_neighbours else [c for c in cmds if not c.startswith("neigh ")]

    def _backend_link(self, name, host, idx, v4, v6):
        hn, bn = self.ns(host), self.ns(name.lower())
        hnum = int(host[1])
        net4, net6 = BACKEND_NET[host]
        m_host, m_be = mac(0x10 + hnum, 0x10 + 2 * idx), mac(0x10 + hnum, 0x11 + 2 * idx)
        dev = "be%d" % idx
        ip_batch(hn, self._neigh(["link add %s address %s mtu %d type veth peer name eth0 address %s mtu %d netns %s"
                      % (dev, m_host, MTU, m_be, MTU, bn),
                      # Each backend veth of the host carries the backends' gateway address.
                      "addr add %s.1/32 dev %s" % (net4, dev),
                      "addr add %s::1/128 dev %s nodad" % (net6, dev),
                      "link set %s up" % dev,
                      "route add %s/32 dev %s src %s.1" % (v4, dev, net4),
                      "route add %s/128 dev %s" % (v6, dev),
                      "neigh replace %s lladdr %s dev %s nud permanent" % (v4, m_be, dev),
                      "neigh replace %s lladdr %s dev %s nud permanent" % (v6, m_be, dev)]))
        ip_batch(bn, self._neigh(["addr add %s/24 dev eth0" % v4,
                      "addr add %s/64 dev eth0 nodad" % v6,
                      "link set eth0 up",
                      "route add default via %s.1 dev eth0" % net4,
                      "route add default via %s::1 dev eth0" % net6,
                      "neigh replace %s.1 lladdr %s dev eth0 nud permanent" % (net4, m_host),
                      "neigh replace %s::1 lladdr %s dev eth0 nud permanent" % (net6, m_host),
                      # The floating-IP rule delivers with the VIP as destination.
                      "addr add %s/32 dev lo" % VIP_FLOAT4]))

    def _sysctls(self):
        fwd = [("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1),
               ("net.ipv4.conf.all.rp_filter", 0), ("net.ipv4.conf.default.rp_filter", 0),
               ("net.ipv4.conf.all.send_redirects", 0)]
        # The router forwards; the hosts forward too (the management route to their backends and
        # the backends' answers to the MUX's probes). The MUX forwards only in the stand-in.
        sysctls(self.ns("rt"), fwd + [("net.ipv4.fib_multipath_hash_policy", 1)])
        for h in ("h1", "h2"):
            sysctls(self.ns(h), fwd + [("net.ipv4.fib_multipath_hash_policy", 1),
                                       ("net.ipv6.fib_multipath_hash_policy", 1)])
        sysctls(self.ns("mux"), [("net.ipv4.conf.all.rp_filter", 0), ("net.ipv4.conf.default.rp_filter", 0),
                                 ("net.ipv4.fib_multipath_hash_policy", 1), ("net.ipv6.fib_multipath_hash_policy", 1)])
        # Clients open thousands of connections in a few seconds (wrk, the 1,000-request checks).
        sysctls(self.ns("client"), [("net.ipv4.ip_local_port_range", "10000 65000"), ("net.ipv4.tcp_tw_reuse", 1)])
        for b in BACKENDS:
            sysctls(self.ns(b[0].lower()), [("net.ipv4.ip_local_port_range", "10000 65000"),
                                            ("net.core.somaxconn", 4096)])
        sysctls(self.ns("inet"), [("net.core.somaxconn", 4096)])

    def set_mux_forwarding(self, on):
        v = 1 if on else 0
        sysctls(self.ns("mux"), [("net.ipv4.ip_forward", v), ("net.ipv6.conf.all.forwarding", v)])

    # ---- servers --------------------------------------------------------------------------------
    def backend_cmd(self, name):
        return [PY, os.path.join(HERE, "servers.py"), "backend", "--name", name, "--http", str(PORT_HTTP),
                "--float", "%s:80" % VIP_FLOAT4, "--udp", str(PORT_UDP), "--echo", str(PORT_ECHO),
                "--log", self.events_path(name)]

    def events_path(self, name):
        return os.path.join(self.logdir, "events-%s.jsonl" % name)

    def start_backend(self, name):
        self.procs.start("srv-" + name, self.ns(name.lower()), self.backend_cmd(name))

    def stop_backend(self, name):
        self.procs.stop("srv-" + name, grace=2)

    def start_servers(self):
        for b in BACKENDS:
            self.start_backend(b[0])
        self.procs.start("inet", self.ns("inet"), [PY, os.path.join(HERE, "servers.py"), "inet", "--port", str(INET_PORT)])
        self.wait_servers()

    def wait_servers(self, names=None, timeout=20):
        """Waits until each backend's HTTP port answers from its own namespace."""
        names = names or [b[0] for b in BACKENDS]
        end = time.time() + timeout
        for n in names:
            while True:
                out = nsrun(self.ns(n.lower()), ["ss", "-Hltn", "sport = :%d" % PORT_HTTP], check=False, quiet=True)
                if out.strip():
                    break
                if time.time() > end:
                    raise RuntimeError("backend %s does not listen: %s" % (n, self.procs.read("srv-" + n, "err")))
                time.sleep(0.1)

    # ---- teardown -------------------------------------------------------------------------------
    def down(self):
        if self._down:
            return
        self._down = True
        self.procs.stop_all()
        for name in reversed(self.created):
            kill_ns_pids(name)
            run(["ip", "netns", "del", name], check=False, quiet=True)
        self.created = []
        if not self.keep_logs:
            shutil.rmtree(self.logdir, ignore_errors=True)
        log("topology %s* removed" % self.prefix)


def kill_ns_pids(name):
    """Processes still inside one of the harness's namespaces were started by the harness (servers,
    clients, data planes); they are ended by PID before the namespace goes."""
    out = run(["ip", "netns", "pids", name], check=False, quiet=True)
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def cleanup(prefix):
    """Deletes the namespaces whose names start with `prefix` (and their processes)."""
    if not prefix.startswith("lb"):
        raise SystemExit("refusing a prefix that does not start with 'lb': %r" % prefix)
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]
    gone = 0
    for name in names:
        if name.startswith(prefix):
            kill_ns_pids(name)
            run(["ip", "netns", "del", name], check=False, quiet=True)
            gone += 1
    log("cleanup %s: %d namespaces deleted" % (prefix, gone))


def guard(topo):
    """Tears `topo` down on exit, on an exception, on Ctrl-C and on SIGTERM/SIGHUP."""
    atexit.register(topo.down)

    def on_signal(sig, frame):
        raise KeyboardInterrupt("signal %d" % sig)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)


def require_root():
    if os.geteuid() != 0:
        raise SystemExit("the live harness needs root (network namespaces)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=["up"], help="build the topology and wait until Ctrl-C")
    p.add_argument("--prefix")
    p.add_argument("--cleanup", metavar="PREFIX", help="delete leftover namespaces named PREFIX*")
    p.add_argument("--seconds", type=float, default=3600, help="how long `up` waits (bounded)")
    a = p.parse_args()
    require_root()
    if a.cleanup:
        cleanup(a.cleanup)
        return
    if a.action != "up":
        p.print_help()
        return
    topo = Topology(a.prefix, keep_logs=True)
    guard(topo)
    try:
        topo.up()
        print("namespaces: " + " ".join(topo.ns(r) for r in topo.all_roles), flush=True)
        print("logs: " + topo.logdir, flush=True)
        time.sleep(a.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        topo.down()


if __name__ == "__main__":
    main()
