//! The topologies the tests, benches and fuzz targets run.
//!
//! - [`web_app`]: what a MUX sees of a public web application (Azure's quickstart shape): HTTP and
//!   HTTPS over three VMs behind a probe, DNS with source-IP affinity, SSH through an inbound NAT
//!   rule and a NAT pool on a second VIP, an HA-ports VIP for network virtual appliances, and an
//!   IPv6 VIP.
//! - [`two_hosts`]: the whole path through host agents: two web VMs on host A and one on host B (so
//!   that the MUX's backend tag matters), port translation, floating IP, UDP, IPv4 and IPv6, and an
//!   outbound rule on an address of its own.
//! - [`two_hosts_scarce_snat`]: [`two_hosts`] with SNAT ports to run out of, on two IPv4 addresses
//!   and one IPv6 address.
//! - [`one_host`]: every backend on host A, for benchmarking one host agent.

use core::net::Ipv4Addr;

use lb_core::config::*;

use crate::addr::*;
use crate::build::*;

/// Member `i` of [`web_app`]'s pools: `vm{i}` (IPv4) or `vm{i}-v6`, on host `i % 4` of [`HOSTS`].
pub fn web_app_member(i: u8, ipv6: bool) -> Backend {
    let (name, address) = if ipv6 { (format!("vm{i}-v6"), v6(i)) } else { (format!("vm{i}"), v4(i)) };
    backend(name, address, HOSTS[usize::from(i) % 4])
}

/// The web application a MUX serves:
///
/// | frontend           | address       | rules                                                       |
/// |--------------------|---------------|-------------------------------------------------------------|
/// | 0 PublicFrontend   | [`VIP`]       | HTTP-Rule 80, HTTPS-Rule 443 (TCP), DNS-Sticky 53 (UDP) → pool 0 |
/// | 1 NatFrontend      | [`VIP_NAT`]   | SSH-to-VM1 60001 → vm1:2222; SSH-Pool 50000-50099 → pool 0 port 22 |
/// | 2 NvaFrontend      | 10.0.9.100    | HA-Ports → pool 1                                           |
/// | 3 V6Frontend       | [`VIP6`]      | V6-HTTP 80 → pool 2                                         |
///
/// Pools: 0 WebServersPool (vm0-vm2), 1 NvaPool (vm10, vm11), 2 V6Pool (vm0-v6 - vm2-v6); every
/// load-balancing rule is watched by the HTTP probe and asks for TCP resets.
pub fn web_app() -> LoadBalancer {
    let web = |name: &str, frontend, pool, protocol, port| {
        rule(name, frontend, pool, protocol, port, port).probe(0).tcp_reset(true)
    };
    LbBuilder::new("MyLoadBalancer")
        .frontend("PublicFrontend", VIP)
        .frontend("NatFrontend", VIP_NAT)
        .frontend("NvaFrontend", Ipv4Addr::new(10, 0, 9, 100))
        .frontend("V6Frontend", VIP6)
        .pool("WebServersPool", 0x1001, (0..3).map(|i| web_app_member(i, false)))
        .pool("NvaPool", 0x1002, (10..12).map(|i| web_app_member(i, false)))
        .pool("V6Pool", 0x1003, (0..3).map(|i| web_app_member(i, true)))
        .probe(http_probe("HTTP-Probe", 80, "/health"))
        .rule(web("HTTP-Rule", 0, 0, Protocol::Tcp, 80))
        .rule(web("HTTPS-Rule", 0, 0, Protocol::Tcp, 443))
        .rule(ha_ports("HA-Ports", 2, 1).probe(0).tcp_reset(true))
        .rule(web("V6-HTTP", 3, 2, Protocol::Tcp, 80))
        .rule(web("DNS-Sticky", 0, 0, Protocol::Udp, 53).distribution(LoadDistribution::SourceIp))
        .nat_rule(nat_rule("SSH-to-VM1", 1, Protocol::Tcp, 60001, 2222, (0, 1)).tcp_reset(true))
        .nat_pool(nat_pool("SSH-Pool", 1, Protocol::Tcp, 50000..=50099, 22, 0))
        .build()
}

/// Two hosts behind the MUX:
///
/// - frontends: 0 Public ([`VIP`]), 1 Public6 ([`VIP6`]), 2 Outbound ([`SNAT_IP`]);
/// - pools: 0 Web (vm0, vm1 on [`HOST_A`], vm2 on [`HOST_B`]; [`dip4`]), 1 Web6 (vm0-6 on host A,
///   vm2-6 on host B; [`dip6`]);
/// - rules on each VIP, all with TCP resets and without outbound SNAT: HTTP 80 → 8080,
///   HTTP-Floating 81 (floating IP), DNS 53 (UDP), DNS-Floating 54 (UDP, floating IP); the IPv6 ones
///   are named HTTP6, HTTP6-Floating, DNS6, DNS6-Floating;
/// - outbound rule 0 Outbound: pool Web through frontend 2, every protocol, `ports_per_backend` SNAT
///   ports each, with TCP resets.
pub fn two_hosts(ports_per_backend: u32) -> LoadBalancer {
    let mut b = LbBuilder::new("lb")
        .frontend("Public", VIP)
        .frontend("Public6", VIP6)
        .frontend("Outbound", SNAT_IP)
        .pool(
            "Web",
            0x1001,
            [backend("vm0", v4(0), HOST_A), backend("vm1", v4(1), HOST_A), backend("vm2", v4(2), HOST_B)],
        )
        .pool("Web6", 0x1003, [backend("vm0-6", v6(0), HOST_A), backend("vm2-6", v6(2), HOST_B)]);
    for (frontend, suffix) in [(0, ""), (1, "6")] {
        for (service, protocol, port, backend_port, floating) in [
            ("HTTP", Protocol::Tcp, 80, 8080, false),
            ("HTTP", Protocol::Tcp, 81, 81, true),
            ("DNS", Protocol::Udp, 53, 53, false),
            ("DNS", Protocol::Udp, 54, 54, true),
        ] {
            let name = format!("{service}{suffix}{}", if floating { "-Floating" } else { "" });
            let r = rule(&name, frontend, frontend, protocol, port, backend_port).tcp_reset(true).no_outbound_snat();
            b = b.rule(if floating { r.floating_ip() } else { r });
        }
    }
    b.outbound(outbound_rule("Outbound", &[2], 0, Protocol::All, Some(ports_per_backend)).tcp_reset(true)).build()
}

/// [`two_hosts`] with `ports_per_backend` SNAT ports to run out of: the IPv4 outbound rule also
/// takes frontend 3 Outbound2 ([`SNAT_IP2`]), so a backend can hold blocks on two addresses; outbound
/// rule 1 Outbound6 gives pool Web6 TCP only through frontend 4 Outbound6 ([`SNAT_IP6`]), without
/// resets. The floating-IP HTTP rules (port 81) send no resets either.
pub fn two_hosts_scarce_snat(ports_per_backend: u32) -> LoadBalancer {
    let mut lb = two_hosts(ports_per_backend);
    lb.frontends.extend([frontend("Outbound2", SNAT_IP2), frontend("Outbound6", SNAT_IP6)]);
    for r in lb.rules.iter_mut().filter(|r| r.frontend_port == 81) {
        r.tcp_reset = false;
    }
    lb.outbound_rules[0].frontends.push(3);
    lb.outbound_rules.push(outbound_rule("Outbound6", &[4], 1, Protocol::Tcp, Some(ports_per_backend)));
    lb
}

/// `web4` IPv4 and `web6` IPv6 backends (vm0.. and vm6-0..), all on [`HOST_A`]: HTTP 80 → 8080 on
/// [`VIP`] and on [`VIP6`] (no resets, no outbound SNAT), and an outbound rule for the IPv4 pool
/// through [`SNAT_IP`] with `ports_per_backend` ports each, without resets.
pub fn one_host(web4: u8, web6: u8, ports_per_backend: u32) -> LoadBalancer {
    let http = |name: &str, frontend| rule(name, frontend, frontend, Protocol::Tcp, 80, 8080).no_outbound_snat();
    LbBuilder::new("bench")
        .frontend("Public", VIP)
        .frontend("Public6", VIP6)
        .frontend("Outbound", SNAT_IP)
        .pool("web4", 0x1001, (0..web4).map(|i| backend(format!("vm{i}"), v4(i), HOST_A)))
        .pool("web6", 0x1003, (0..web6).map(|i| backend(format!("vm6-{i}"), v6(i), HOST_A)))
        .rule(http("http", 0))
        .rule(http("http6", 1))
        .outbound(outbound_rule("outbound", &[2], 0, Protocol::All, Some(ports_per_backend)))
        .build()
}
