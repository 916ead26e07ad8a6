"""The load balancer (Azure's resource JSON) and the node files the live harness runs lb-dpdk with."""

import json
import os

from topology import (BACKENDS, HOST_UNDERLAY, MSS_CLAMP, MTU, MUX_UNDERLAY, MUX_UNDERLAY6, mac, LINKS, PORT_ECHO, PORT_FAST, PORT_HTTP,
                      PORT_IPERF, PORT_UDP, VIP_BENCH4, VIP_FLOAT4, VIP_OUT4, VIP_WEB4, VIP_WEB6)

PROBE_INTERVAL = 5  # the smallest intervalInSeconds the configuration takes
PROBE_COUNT = 2
OUTBOUND_PORTS = 4096  # per backend: the 1,000-connection check needs 1,000 at once


def ref(kind, name):
    return {"id": "/subscriptions/0/resourceGroups/live/providers/Microsoft.Network/loadBalancers/LiveLB/%s/%s"
            % (kind, name)}


def rule(name, frontend, pool, protocol, fport, bport, probe="Http", floating=False, idle_minutes=4,
         reset=True, dist="Default", idle_seconds=None):
    p = {"frontendIPConfiguration": ref("frontendIPConfigurations", frontend),
         "backendAddressPool": ref("backendAddressPools", pool),
         "protocol": protocol, "frontendPort": fport, "backendPort": bport,
         "enableFloatingIP": floating, "idleTimeoutInMinutes": idle_minutes,
         "enableTcpReset": reset, "loadDistribution": dist, "disableOutboundSnat": True}
    if probe:
        p["probe"] = ref("probes", probe)
    if idle_seconds is not None:
        # An extension of Azure's schema, whose smallest idle timeout is 4 minutes: the
        # idle-timeout check runs in seconds. It replaces the minutes (both are refused).
        del p["idleTimeoutInMinutes"]
        p["idleTimeoutInSeconds"] = idle_seconds
    return {"name": name, "properties": p}


def load_balancer(idle_seconds=None, probe6=True):
    """Frontends, pools, probes and rules of the checks: one pool of the four IPv4 backends and one of
    their IPv6 addresses, each tunnelled to its host's IPv4 underlay."""
    fe = lambda name, addr: {"name": name, "properties": {"publicIPAddress": {"ipAddress": addr}}}  # noqa: E731

    def pool(name, vni, idx):
        return {"name": name, "properties": {"vni": vni, "loadBalancerBackendAddresses": [
            {"name": b[0] if idx == 3 else b[0] + "v6",
             "properties": {"ipAddress": b[idx], "hostAddress": HOST_UNDERLAY[b[1]]}} for b in BACKENDS]}}

    probe = lambda name: {"name": name, "properties": {  # noqa: E731
        "protocol": "Http", "port": PORT_HTTP, "requestPath": "/health",
        "intervalInSeconds": PROBE_INTERVAL, "numberOfProbes": PROBE_COUNT}}
    rules = [
        rule("Http4", "Web4", "Web", "Tcp", 80, PORT_HTTP),
        rule("Udp4", "Web4", "Web", "Udp", 53, PORT_UDP),
        rule("Echo4", "Web4", "Web", "Tcp", 7, PORT_ECHO, idle_seconds=idle_seconds),
        rule("Float4", "Float4", "Web", "Tcp", 80, 80, floating=True),
        rule("Fast4", "Bench4", "Web", "Tcp", 80, PORT_FAST),
        # iperf3 opens a control connection and data connections to one server: by source address.
        rule("Iperf4", "Bench4", "Web", "Tcp", PORT_IPERF, PORT_IPERF, dist="SourceIP"),
        rule("Http6", "Web6", "Web6", "Tcp", 80, PORT_HTTP, probe="Http6" if probe6 else None),
    ]
    return {
        "name": "LiveLB",
        "properties": {
            "frontendIPConfigurations": [fe("Web4", VIP_WEB4), fe("Float4", VIP_FLOAT4), fe("Bench4", VIP_BENCH4),
                                         fe("Web6", VIP_WEB6), fe("Out4", VIP_OUT4)],
            "backendAddressPools": [pool("Web", 5001, 3), pool("Web6", 5006, 4)],
            "probes": [probe("Http"), probe("Http6")],
            "loadBalancingRules": rules,
            "outboundRules": [{"name": "Out", "properties": {
                "frontendIPConfigurations": [ref("frontendIPConfigurations", "Out4")],
                "backendAddressPool": ref("backendAddressPools", "Web"),
                "protocol": "All", "allocatedOutboundPorts": OUTBOUND_PORTS,
                "idleTimeoutInMinutes": 4, "enableTcpReset": True}}],
        },
    }


# The MUX's fabric veth and the router's end of it (topology.py names them by link number).
MUX_MAC = mac(LINKS["mux"], 2)
MUX_GATEWAY_MAC = mac(LINKS["mux"], 1)


def write_nodes(directory, idle_seconds=None, flow_capacity=1000000, probe6=True, dpdk_mux=False):
    """Writes lb.json and the node files; returns {name: path}. The hosts have one file per return
    path: h1.json (through the MUX) and h1-direct.json (Direct Server Return)."""
    os.makedirs(directory, exist_ok=True)
    paths = {}

    def dump(name, obj):
        path = os.path.join(directory, name + ".json")
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
        paths[name] = path

    dump("lb", load_balancer(idle_seconds, probe6))
    # mac and gatewayMac are absent: the program takes them from the interface and the kernel.
    mux = {"role": "mux", "underlay": MUX_UNDERLAY, "interfaces": {"fabric": "fab0"},
           "mtu": MTU, "flowCapacity": flow_capacity, "loadBalancerFile": "lb.json"}
    if dpdk_mux:
        # DPDK's ports learn nothing from the kernel: the MUX on net_af_xdp is given its MACs.
        mux.update(mac=MUX_MAC, gatewayMac=MUX_GATEWAY_MAC)
    dump("mux", mux)
    for h, underlay in HOST_UNDERLAY.items():
        for rp, suffix in (("mux", ""), ("direct", "-direct")):
            dump(h + suffix, {"role": "host", "underlay": underlay,
                              # The MUX probes the IPv6 backends from its IPv6 address: their
                              # answers go through the host's kernel, as the IPv4 ones do.
                              "interfaces": {"fabric": "fab0", "backends": ["be0", "be1"],
                                             "management": [MUX_UNDERLAY6]},
                              "muxes": [MUX_UNDERLAY], "returnPath": rp, "mssClamp": MSS_CLAMP, "mtu": MTU,
                              "flowCapacity": flow_capacity, "loadBalancerFile": "lb.json"})
    return paths
