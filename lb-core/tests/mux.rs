//! The MUX end to end: client frames in, VxLAN frames out, every output read back with etherparse
//! (an independent parser): outer addresses, VNI, the inner frame byte for byte, and the counters.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{PacketBuilder, VlanId};
use lb_core::config::*;
use lb_core::paths::{Action, DropCause, DropReason, Mux, MuxError, MuxNode, Node, NodeRole, Side, Verdict};
use lb_core::tables::{Health, Transition};
use lb_core::wire::{MacAddr, VxlanEncap};
use lb_fixtures::*;

/// Runs a frame through the MUX; returns the host it was tunnelled to (or the drop reason).
fn run(mux: &mut Mux, frame: &[u8]) -> Result<[u8; 4], DropReason> {
    let mut buf = with_headroom(frame);
    match mux.process(&mut buf, HEADROOM, frame.len(), 1000) {
        Verdict::Forward { start, len } => {
            let t = vxlan_from_mux(&buf[start..start + len]);
            assert!(t.dont_fragment);
            assert_eq!(t.inner, frame, "inner frame unchanged");
            Ok(t.dst)
        }
        Verdict::Drop(r) => Err(r),
    }
}

fn vni_of(mux: &mut Mux, frame: &[u8]) -> u32 {
    let mut buf = with_headroom(frame);
    let Verdict::Forward { start, .. } = mux.process(&mut buf, HEADROOM, frame.len(), 1000) else { panic!() };
    u32::from_be_bytes([0, buf[start + 46], buf[start + 47], buf[start + 48]])
}

#[test]
fn new_flows_spread_and_established_flows_stick() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let mut per_host = std::collections::HashMap::new();
    let mut first = Vec::new();
    for i in 0..3000u32 {
        let host = run(&mut mux, &tcp4(client4(i), 40000 + (i % 2000) as u16, VIP, 80, true)).unwrap();
        *per_host.entry(host).or_insert(0u32) += 1;
        first.push(host);
    }
    assert_eq!(per_host.len(), 3, "all three web servers get flows: {per_host:?}");
    for n in per_host.values() {
        assert!((800..1200).contains(n), "roughly even: {per_host:?}");
    }
    for i in 0..3000u32 {
        let host = run(&mut mux, &tcp4(client4(i), 40000 + (i % 2000) as u16, VIP, 80, false)).unwrap();
        assert_eq!(host, first[i as usize], "flow {i} stays on its backend");
    }
    let c = mux.counters();
    assert_eq!(c.vips[0].packets, 6000);
    assert_eq!(c.vips[0].new_flows, 3000);
    assert_eq!(c.rules[0].new_flows, 3000);
    assert_eq!(c.backends[0].iter().map(|b| b.new_flows).sum::<u64>(), 3000);
    assert_eq!(vni_of(&mut mux, &tcp4(client4(1), 40001, VIP, 80, false)), 0x1001);
}

#[test]
fn unhealthy_backend_keeps_its_flows_but_gets_no_new_ones() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let flows: Vec<_> = (0..600u32).map(|i| (tcp4(client4(i), 50000, VIP, 80, true), i)).collect();
    let before: Vec<_> = flows.iter().map(|(f, _)| run(&mut mux, f).unwrap()).collect();
    assert_eq!(mux.report_probe(0, 0, 1, false).unwrap(), Transition::None, "one failure is not enough");
    assert_eq!(mux.report_probe(0, 0, 1, false).unwrap(), Transition::WentDown);
    assert_eq!(mux.health(0, 1), Some(Health::Down));
    for (i, (_, n)) in flows.iter().enumerate() {
        let again = run(&mut mux, &tcp4(client4(*n), 50000, VIP, 80, false)).unwrap();
        assert_eq!(again, before[i], "existing connections remain active");
    }
    for i in 1000..1600u32 {
        let h = run(&mut mux, &tcp4(client4(i), 50000, VIP, 80, true)).unwrap();
        assert_ne!(h, HOSTS[1], "new connections avoid the unhealthy backend");
    }
    assert_eq!(mux.report_probe(0, 0, 1, true).unwrap(), Transition::None);
    assert_eq!(mux.report_probe(0, 0, 1, true).unwrap(), Transition::CameUp);
    let back = (2000..2600u32)
        .filter(|&i| run(&mut mux, &tcp4(client4(i), 50000, VIP, 80, true)).unwrap() == HOSTS[1])
        .count();
    assert!(back > 100, "the recovered backend takes new flows again ({back})");
    assert!(mux.report_probe(0, 0, 9, true).is_err());
}

/// New flows to `port` (from 600 clients, from client number `from` on) that go to host `host`.
fn new_flows_to(mux: &mut Mux, port: u16, from: u32, host: [u8; 4]) -> usize {
    (from..from + 600).filter(|&i| run(mux, &tcp4(client4(i), 40000, VIP, port, true)).unwrap() == host).count()
}

#[test]
fn each_rule_steers_by_its_own_probe() {
    // Azure Load Balancer gives each load-balancing rule its own probe: here the HTTP and HTTPS rules
    // of one pool each have one.
    let mut cfg = web_app();
    cfg.probes.push(Probe { protocol: ProbeProtocol::Https, ..http_probe("HTTPS-Probe", 443, "/health") });
    cfg.rules[1].probe = Some(1);
    let mut mux = Mux::new(mux_node(1), cfg).unwrap();
    // The second web server's HTTPS service fails its probe; its HTTP service answers.
    assert_eq!(mux.report_probe(0, 1, 1, false).unwrap(), Transition::None);
    assert_eq!(mux.report_probe(0, 1, 1, false).unwrap(), Transition::WentDown);
    assert_eq!(mux.report_probe(0, 0, 1, true).unwrap(), Transition::None);
    assert_eq!(mux.probe_health(0, 1, 1), Some(Health::Down));
    assert_eq!(mux.probe_health(0, 0, 1), Some(Health::Up));
    assert_eq!(mux.health(0, 1), Some(Health::Down), "some rule sends it no new flows");
    assert_eq!(new_flows_to(&mut mux, 443, 0, HOSTS[1]), 0, "HTTPS flows avoid it");
    assert!(new_flows_to(&mut mux, 80, 0, HOSTS[1]) > 100, "HTTP flows still go to it");
    // A probe that no rule of the pool uses names nothing.
    assert_eq!(mux.report_probe(1, 1, 0, false), Err(MuxError::NotProbed { pool: 1, probe: 1 }));
    assert_eq!(mux.probe_health(1, 1, 0), None);
}

#[test]
fn a_pool_no_probe_watches_any_more_has_every_member_up() {
    let mut cfg = web_app();
    let mut mux = Mux::new(mux_node(1), cfg.clone()).unwrap();
    mux.report_probe(0, 0, 1, false).unwrap();
    assert_eq!(mux.report_probe(0, 0, 1, false).unwrap(), Transition::WentDown);
    assert_eq!(new_flows_to(&mut mux, 80, 0, HOSTS[1]), 0);
    // The rules drop their probe: nothing will ever probe the member again, so it is up.
    for r in &mut cfg.rules {
        r.probe = None;
    }
    mux.update(cfg.clone()).unwrap();
    assert_eq!(mux.health(0, 1), Some(Health::Up));
    assert!(new_flows_to(&mut mux, 80, 1000, HOSTS[1]) > 100, "the member takes new flows again");
    assert!(matches!(mux.report_probe(0, 0, 1, false), Err(MuxError::NotProbed { .. })));
    // Probed again, it starts up.
    cfg.rules[0].probe = Some(0);
    mux.update(cfg).unwrap();
    assert_eq!(mux.probe_health(0, 0, 1), Some(Health::Up));
}

#[test]
fn a_maglev_size_that_is_not_prime_is_refused_whatever_the_rules() {
    let node = MuxNode { maglev_size: 25, ..mux_node(1) };
    let no_rules = LoadBalancer { rules: Vec::new(), ..web_app() };
    assert!(matches!(Mux::new(node.clone(), no_rules), Err(MuxError::Maglev(_))));
    assert!(matches!(Mux::new(node, web_app()), Err(MuxError::Maglev(_))));
}

#[test]
fn a_batch_of_probe_results_takes_effect_when_applied() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    for _ in 0..2 {
        mux.record_probe(0, 0, 1, false).unwrap();
        mux.record_probe(0, 0, 2, false).unwrap();
    }
    assert_eq!(mux.health(0, 1), Some(Health::Down));
    assert_eq!(mux.health(0, 2), Some(Health::Down));
    // Recorded, not yet applied: the table is the one built before.
    assert!(new_flows_to(&mut mux, 80, 0, HOSTS[2]) > 100);
    mux.apply_probes().unwrap();
    assert_eq!(new_flows_to(&mut mux, 443, 0, HOSTS[0]), 600, "one rebuild took both out");
}

#[test]
fn two_muxes_agree_whatever_the_order() {
    let mut a = Mux::new(mux_node(7), web_app()).unwrap();
    let mut b = Mux::new(mux_node(7), web_app()).unwrap();
    let frames: Vec<_> = (0..500u32).map(|i| tcp4(client4(i), 1024 + i as u16, VIP, 443, true)).collect();
    let fwd: Vec<_> = frames.iter().map(|f| run(&mut a, f).unwrap()).collect();
    let mut rev: Vec<_> = frames.iter().rev().map(|f| run(&mut b, f).unwrap()).collect();
    rev.reverse();
    assert_eq!(fwd, rev);
}

#[test]
fn drops_have_reasons_and_counters() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    assert_eq!(run(&mut mux, &tcp4(client4(1), 1, [20, 50, 60, 99], 80, true)), Err(DropReason::NoVip));
    assert_eq!(run(&mut mux, &tcp4(client4(1), 1, VIP, 81, true)), Err(DropReason::NoRule));
    assert_eq!(run(&mut mux, &tcp4(client4(1), 1, VIP, 80, true)[..30]), Err(DropReason::Malformed));
    let frame = tcp4(client4(1), 1, VIP, 80, true);
    let mut small = vec![0u8; 10 + frame.len()];
    small[10..].copy_from_slice(&frame);
    assert_eq!(mux.process(&mut small, 10, frame.len(), 0), Verdict::Drop(DropReason::Encap));
    assert_eq!(mux.process(&mut small, 10, frame.len() + 1, 0), Verdict::Drop(DropReason::Malformed));
    let d = mux.counters().drops;
    assert_eq!(d[DropReason::NoVip as usize], 1);
    assert_eq!(d[DropReason::NoRule as usize], 1);
    assert_eq!(d[DropReason::Malformed as usize], 2);
    assert_eq!(d[DropReason::Encap as usize], 1);
}

#[test]
fn inbound_nat_rule_and_pool_pick_their_member() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    // SSH-Pool: 50000 + i -> member i of WebServersPool.
    for m in 0..3u16 {
        assert_eq!(run(&mut mux, &tcp4(client4(5), 33000, VIP_NAT, 50000 + m, true)), Ok(HOSTS[usize::from(m)]));
    }
    assert_eq!(run(&mut mux, &tcp4(client4(5), 33000, VIP_NAT, 50003, true)), Err(DropReason::NoBackend));
    assert_eq!(run(&mut mux, &tcp4(client4(5), 33000, VIP_NAT, 60001, true)), Ok(HOSTS[1]), "SSH-to-VM1");
}

#[test]
fn a_nat_pools_connections_idle_out_after_its_own_timeout() {
    for (minutes, kept) in [(4u8, false), (30, true)] {
        let mut cfg = web_app();
        cfg.nat_pools[0].idle_timeout = IdleTimeout::from_minutes(minutes).unwrap();
        let mut mux = Mux::new(mux_node(1), cfg).unwrap();
        let t0 = 1000;
        for (syn, at) in [(true, t0), (false, t0 + 1)] {
            let f = tcp4(client4(5), 33000, VIP_NAT, 50001, syn);
            let mut buf = with_headroom(&f);
            assert!(matches!(mux.process(&mut buf, HEADROOM, f.len(), at), Verdict::Forward { .. }));
        }
        assert_eq!(mux.flows().len(), 1);
        // Five minutes of silence.
        mux.flows().sweep(0, usize::MAX, t0 + 1 + 5 * 60);
        assert_eq!(mux.flows().len() == 1, kept, "idle timeout {minutes} minutes");
    }
}

#[test]
fn ha_ports_take_every_protocol_and_port() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let nva = [10, 0, 9, 100];
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6]).ipv4([10, 0, 2, 7], nva, 64).udp(5000, 12345).write(&mut v, b"x").unwrap();
    assert!(run(&mut mux, &v).is_ok());
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 2, 7], nva, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut v, b"ping")
        .unwrap();
    let h = run(&mut mux, &v).unwrap();
    assert!(h == HOSTS[2] || h == HOSTS[3], "NVA pool hosts: {h:?}");
    assert!(run(&mut mux, &tcp4([10, 0, 2, 7], 1, nva, 3389, true)).is_ok());
}

#[test]
fn source_ip_distribution_sticks_a_client_to_one_backend() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    for c in 0..50u32 {
        let hosts: std::collections::HashSet<_> = (0..20u16)
            .map(|p| {
                let mut v = Vec::new();
                PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ipv4(client4(c), VIP, 64)
                    .udp(20000 + p, 53)
                    .write(&mut v, b"q")
                    .unwrap();
                run(&mut mux, &v).unwrap()
            })
            .collect();
        assert_eq!(hosts.len(), 1, "client {c} went to {hosts:?}");
    }
}

#[test]
fn vlan_tagged_and_ipv6_clients() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .single_vlan(VlanId::try_new(10).unwrap())
        .ipv4(client4(3), VIP, 64)
        .tcp(40000, 80, 1, 1000)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    assert!(run(&mut mux, &v).is_ok());
    let mut v = Vec::new();
    let src = [0x20, 0x01, 0x0d, 0xb8, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6(src, VIP6, 64)
        .tcp(40000, 80, 1, 1000)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    assert!(run(&mut mux, &v).is_ok());
    assert_eq!(mux.counters().vips[3].packets, 1);
    assert_eq!(vni_of(&mut mux, &v), 0x1003);
}

/// IPv4 fragments of one UDP datagram: `offsets` in 8-byte units, first fragment carries the header.
fn udp_fragment(id: u16, offset_units: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 5, 10, 0x08, 0x00];
    let total = 20 + payload.len() as u16;
    let flags = if more { 0x2000 } else { 0 } | offset_units;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    ip.extend_from_slice(&client4(9));
    ip.extend_from_slice(&VIP);
    let c = lb_core::wire::checksum::ipv4_header(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    // UDP header (port 53 -> DNS-Sticky rule) + 8 bytes in the first fragment, 16 more later.
    let mut first = vec![0x30, 0x39, 0x00, 0x35, 0x00, 32, 0, 0];
    first.extend_from_slice(&[0xaa; 8]);
    let h1 = run(&mut mux, &udp_fragment(77, 0, true, &first)).unwrap();
    let h2 = run(&mut mux, &udp_fragment(77, 2, false, &[0xbb; 16])).unwrap();
    assert_eq!(h1, h2);
    assert_eq!(run(&mut mux, &udp_fragment(78, 2, false, &[0xbb; 16])), Err(DropReason::FragmentUnknown));
}

/// A fragment of an IPv6 datagram from client `c` to the IPv6 VIP: a Fragment header whose next
/// header is `next`, then `data` (the fragmentable part from byte `offset_units * 8`).
fn ipv6_fragment(c: u8, ident: u32, next: u8, offset_units: u16, more: bool, data: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 5, 10, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
    f.extend_from_slice(&[44, 64]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, c]);
    f.extend_from_slice(&VIP6);
    f.extend_from_slice(&[next, 0]);
    f.extend_from_slice(&(offset_units << 3 | u16::from(more)).to_be_bytes());
    f.extend_from_slice(&ident.to_be_bytes());
    f.extend_from_slice(data);
    f
}

#[test]
fn ipv6_fragments_follow_their_first_fragment_behind_destination_options() {
    // RFC 8200 puts a Destination Options header for the final destination in the fragmentable
    // part: the first fragment holds it and the TCP header (to V6-HTTP, port 80), and a later
    // fragment's Fragment header names it (60) as its next header, not TCP.
    let mut mux = Mux::new(mux_node(4), web_app()).unwrap();
    let mut hosts = std::collections::HashSet::new();
    for c in 1..=24u8 {
        let mut first = vec![6, 0, 1, 4, 0, 0, 0, 0]; // Destination Options: next TCP, PadN
        let mut tcp = vec![0x9c, 0x40 + c, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0];
        first.append(&mut tcp);
        first.extend_from_slice(&[0xaa; 20]);
        let ident = 0x1000 + u32::from(c);
        let h1 = run(&mut mux, &ipv6_fragment(c, ident, 60, 0, true, &first)).unwrap();
        let h2 = run(&mut mux, &ipv6_fragment(c, ident, 60, 6, false, &[0xbb; 16]));
        assert_eq!(h2, Ok(h1), "client {c}: the later fragment follows the first");
        let other = run(&mut mux, &ipv6_fragment(c, ident + 1, 60, 6, false, &[0xbb; 16]));
        assert_eq!(other, Err(DropReason::FragmentUnknown), "another datagram's fragment");
        hosts.insert(h1);
    }
    assert!(hosts.len() > 1, "datagrams spread over the V6 pool's hosts: {hosts:?}");
}

#[test]
fn icmp_errors_reach_the_backend_of_the_quoted_flow() {
    let mut mux = Mux::new(mux_node(3), web_app()).unwrap();
    for i in 0..200u32 {
        let syn = tcp4(client4(i), 41000, VIP, 80, true);
        let host = run(&mut mux, &syn).unwrap();
        // A router on the way back says "fragmentation needed" about the backend's SYN-ACK, which
        // left with the VIP as source: the error comes to the VIP and quotes VIP:80 -> client.
        let reply = tcp4(VIP, 80, client4(i), 41000, true);
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([203, 0, 113, 1], VIP, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(&mut v, &reply[14..14 + 28])
            .unwrap();
        assert_eq!(run(&mut mux, &v), Ok(host), "flow {i}");
    }
}

#[test]
fn reconfiguration_keeps_established_flows() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let frames: Vec<_> = (0..300u32).map(|i| tcp4(client4(i), 42000, VIP, 80, true)).collect();
    let before: Vec<_> = frames.iter().map(|f| run(&mut mux, f).unwrap()).collect();
    let mut cfg = web_app();
    cfg.pools[0].backends.push(web_app_member(3, false));
    mux.update(cfg).unwrap();
    for (f, h) in frames.iter().zip(&before) {
        assert_eq!(run(&mut mux, f).as_ref(), Ok(h), "established flow moved by an update");
    }
    let new_host = (1000..1600u32)
        .filter(|&i| run(&mut mux, &tcp4(client4(i), 42000, VIP, 80, true)).unwrap() == HOSTS[3])
        .count();
    assert!(new_host > 80, "the added backend takes new flows ({new_host})");
    let mut bad = web_app();
    bad.rules[0].pool = 9;
    assert!(mux.update(bad).is_err(), "an invalid configuration is refused");
    assert_eq!(mux.config().pools[0].backends.len(), 4, "and the running one kept");
}

/// A host's frame back through the MUX: VxLAN to the MUX's underlay address around `inner`.
fn from_host(inner: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 10, 20], [2, 0, 0, 0, 5, 10])
        .ipv4(HOSTS[0], [172, 16, 5, 10], 64)
        .udp(50000, 4789)
        .write(&mut v, &[&[0x08u8, 0, 0, 0, 0, 0x10, 0x01, 0][..], inner].concat())
        .unwrap();
    v
}

#[test]
fn host_traffic_is_relayed_only_from_a_vip() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let response = tcp4(VIP, 80, client4(5), 40000, false);
    let mut buf = from_host(&response);
    let n = buf.len();
    let Verdict::Forward { start, len } = mux.process(&mut buf, 0, n, 1000) else { panic!("relayed") };
    let out = &buf[start..start + len];
    assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 1], "to the fabric router");
    assert_eq!(&out[6..12], &[2, 0, 0, 0, 5, 10], "from the MUX");
    assert_eq!(&out[12..], &response[12..], "the inner packet untouched");
    assert_eq!(mux.counters().relayed.packets, 1);
    // A backend's private address is never relayed (no open relay, no leak).
    let leak = tcp4([10, 0, 1, 4], 80, client4(5), 40000, false);
    let mut buf = from_host(&leak);
    let n = buf.len();
    assert_eq!(mux.process(&mut buf, 0, n, 1000), Verdict::Drop(DropReason::NotFromVip));
    // Garbage inside the tunnel.
    let mut buf = from_host(&[0u8; 20]);
    let n = buf.len();
    assert_eq!(mux.process(&mut buf, 0, n, 1000), Verdict::Drop(DropReason::Malformed));
    // VxLAN to someone else is just traffic to no VIP.
    let mut other = from_host(&response);
    other[30..34].copy_from_slice(&[172, 16, 5, 99]);
    let n = other.len();
    assert_eq!(mux.process(&mut other, 0, n, 1000), Verdict::Drop(DropReason::NoVip));
    assert_eq!(mux.counters().drops[DropReason::NotFromVip as usize], 1);
}

#[test]
fn bursts_give_the_verdicts_and_bytes_of_one_frame_at_a_time() {
    let mut one = Mux::new(mux_node(5), web_app()).unwrap();
    let mut burst = Mux::new(mux_node(5), web_app()).unwrap();
    // 70 frames: several bursts of 32 and a tail; new flows, repeats, drops, VLAN and IPv6.
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for i in 0..70u32 {
        frames.push(match i % 5 {
            0 => tcp4(client4(i), 1000 + i as u16, VIP, 80, true),
            1 => tcp4(client4(i - 1), 1000 + i as u16 - 1, VIP, 80, false),
            2 => tcp4(client4(i), 2000, [9, 9, 9, 9], 80, true),
            3 => vec![0u8; 30],
            _ => tcp4(client4(i), 3000, VIP_NAT, 50001, true),
        });
    }
    let mut a: Vec<Vec<u8>> = frames.iter().map(|f| [vec![0u8; HEADROOM], f.clone()].concat()).collect();
    let mut b = a.clone();
    let va: Vec<Verdict> =
        a.iter_mut().zip(&frames).map(|(buf, f)| one.process(buf, HEADROOM, f.len(), 1000)).collect();
    let mut refs: Vec<(&mut [u8], usize, usize)> =
        b.iter_mut().zip(&frames).map(|(buf, f)| (&mut buf[..], HEADROOM, f.len())).collect();
    let mut vb = vec![Verdict::Drop(DropReason::Malformed); frames.len()];
    burst.process_burst(&mut refs, 1000, &mut vb);
    assert_eq!(va, vb);
    assert_eq!(a, b, "the same bytes on the wire");
    assert_eq!(one.counters(), burst.counters());
    assert!(va.iter().filter(|v| matches!(v, Verdict::Forward { .. })).count() >= 40);
}

#[test]
fn number_of_probes_comes_from_the_rules_probe_and_follows_a_reload() {
    let mut cfg = web_app();
    // The pool's first rule has no probe; the second names one with numberOfProbes 3.
    cfg.rules[0].probe = None;
    cfg.probes[0].number_of_probes = 3;
    let mut mux = Mux::new(mux_node(1), cfg.clone()).unwrap();
    assert_eq!(mux.report_probe(0, 0, 2, false).unwrap(), Transition::None);
    assert_eq!(mux.report_probe(0, 0, 2, false).unwrap(), Transition::None);
    assert_eq!(mux.report_probe(0, 0, 2, false).unwrap(), Transition::WentDown);
    assert_eq!(mux.report_probe(0, 0, 2, true).unwrap(), Transition::None);
    // A reload to numberOfProbes 1 keeps the member down, and its streak: a second success brings it
    // back (recovery takes two, whatever numberOfProbes is: `tables::health::RECOVERY_SUCCESSES`).
    cfg.probes[0].number_of_probes = 1;
    mux.update(cfg).unwrap();
    assert_eq!(mux.health(0, 2), Some(Health::Down));
    assert_eq!(mux.report_probe(0, 0, 2, true).unwrap(), Transition::CameUp);
}

#[test]
fn counters_follow_their_resource_across_a_reconfiguration() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    for i in 0..50u32 {
        run(&mut mux, &tcp4(client4(i), 40000, VIP, 80, true)).unwrap();
    }
    let before = mux.counters().clone();
    assert_eq!(before.vips[0].packets, 50);
    // A new frontend and a new rule first: every index shifts by one.
    let mut cfg = web_app();
    cfg.frontends.insert(
        0,
        Frontend { name: "NewFrontend".into(), address: IpAddr::V4(Ipv4Addr::new(20, 50, 60, 99)), internal: false },
    );
    for r in &mut cfg.rules {
        r.frontend += 1;
    }
    for r in &mut cfg.nat_rules {
        r.frontend += 1;
    }
    for r in &mut cfg.nat_pools {
        r.frontend += 1;
    }
    // Floating IP: HTTP-Rule already sends to port 80 of the pool's backends.
    cfg.rules.insert(0, rule("NewRule", 0, 0, Protocol::Tcp, 80, 80).probe(0).tcp_reset(true).floating_ip());
    mux.update(cfg).unwrap();
    let after = mux.counters();
    assert_eq!(after.vips[0], Default::default(), "the new frontend starts at zero");
    assert_eq!(after.vips[1], before.vips[0], "PublicFrontend keeps its counts");
    assert_eq!(after.rules[0], Default::default());
    assert_eq!(after.rules[1], before.rules[0], "HTTP-Rule keeps its counts");
    assert_eq!(after.backends, before.backends, "the pools did not change");
}

#[test]
fn established_flows_follow_their_rule_through_a_reconfiguration() {
    // Established flows are steered by the listener they remember, without looking their VIP and
    // port up again: an update that renumbers, renames or removes rules must not make that memory
    // lie, and must not walk the table.
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let http: Vec<_> = (0..50u32).map(|i| run(&mut mux, &tcp4(client4(i), 40000, VIP, 80, true)).unwrap()).collect();
    let https: Vec<_> = (0..50u32).map(|i| run(&mut mux, &tcp4(client4(i), 40000, VIP, 443, true)).unwrap()).collect();
    // A fragmented datagram to DNS-Sticky: its first fragment leaves a record for the later ones.
    let mut first = vec![0x30, 0x39, 0x00, 0x35, 0x00, 32, 0, 0];
    first.extend_from_slice(&[0xaa; 8]);
    let dns = run(&mut mux, &udp_fragment(77, 0, true, &first)).unwrap();
    // A new rule first (every rule's counter moves up by one), HTTPS-Rule gone, DNS-Sticky renamed.
    let mut cfg = web_app();
    cfg.rules.retain(|r| r.name != "HTTPS-Rule");
    cfg.rules.insert(0, rule("NewRule", 1, 0, Protocol::Tcp, 8080, 8080).probe(0).tcp_reset(true));
    cfg.rules.iter_mut().find(|r| r.name == "DNS-Sticky").unwrap().name = "DNS-Renamed".into();
    mux.update(cfg).unwrap();
    let before = mux.counters().clone();
    for i in 0..50u32 {
        let again = run(&mut mux, &tcp4(client4(i), 40000, VIP, 80, false));
        assert_eq!(again, Ok(http[i as usize]), "flow {i} keeps its backend");
        // Nothing takes VIP:443 any more: not forwarded to the backend its flow had.
        assert_eq!(run(&mut mux, &tcp4(client4(i), 40000, VIP, 443, false)), Err(DropReason::NoRule));
    }
    assert_eq!(run(&mut mux, &udp_fragment(77, 2, false, &[0xbb; 16])), Ok(dns), "the later fragment follows");
    let after = mux.counters();
    let names: Vec<_> = mux.config().rules.iter().map(|r| r.name.clone()).collect();
    let at = |name: &str| names.iter().position(|n| n == name).unwrap();
    assert_eq!(after.rules[at("HTTP-Rule")].packets, before.rules[at("HTTP-Rule")].packets + 50);
    assert_eq!(after.rules[at("DNS-Renamed")].packets, before.rules[at("DNS-Renamed")].packets + 1);
    assert_eq!(after.rules[at("NewRule")].packets, 0, "counted under the rule that took them");
    assert_eq!(after.vips[0].packets, before.vips[0].packets + 51, "and under their VIP");
    assert_eq!(after.vips[1].packets, 0);
    // HTTPS back: its connections, still in the table, go on to their backends.
    mux.update(web_app()).unwrap();
    for i in 0..50u32 {
        let again = run(&mut mux, &tcp4(client4(i), 40000, VIP, 443, false));
        assert_eq!(again, Ok(https[i as usize]), "flow {i} of the restored rule");
    }
    assert_eq!(mux.counters().rules[1].packets, 50, "under HTTPS-Rule's counter");
}

#[test]
fn a_reset_after_its_rule_is_replaced_closes_the_flow_once() {
    // VIP:80's rule replaced by HA ports on the same VIP: an established connection's packets take
    // the full path (their listener is gone), which finds the flow and keeps its backend. A RST
    // closes it there, once: it must not be removed on the way and then opened again as new.
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let hosts: Vec<_> = (0..60u32).map(|i| run(&mut mux, &tcp4(client4(i), 40000, VIP, 80, true)).unwrap()).collect();
    let mut cfg = web_app();
    cfg.rules.retain(|r| r.frontend != 0);
    cfg.rules.push(ha_ports("Web-HA", 0, 0).probe(0).tcp_reset(true));
    // HA ports send to every port of the pool's backends: no NAT rule may send to one of them.
    cfg.nat_rules.clear();
    cfg.nat_pools.clear();
    mux.update(cfg).unwrap();
    let (flows, new_flows) = (mux.flows().len(), mux.counters().vips[0].new_flows);
    for (i, h) in hosts.iter().enumerate() {
        let mut rst = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 5, 10])
            .ipv4(client4(i as u32), VIP, 64)
            .tcp(40000, 80, 1000, 0)
            .rst()
            .write(&mut rst, &[])
            .unwrap();
        assert_eq!(run(&mut mux, &rst).as_ref(), Ok(h), "flow {i}: the RST goes to its backend");
    }
    assert_eq!(mux.flows().len(), flows - 60, "every flow closed");
    assert_eq!(mux.counters().vips[0].new_flows, new_flows, "none opened again");
}

#[test]
fn drop_reasons_are_listed_in_counter_order_with_their_names() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
        assert_eq!(r.c_name().to_str().unwrap(), r.name());
    }
    assert_eq!(DropReason::NotFromVip.name(), "not_from_vip");
    assert_eq!(DropReason::Encap.name(), "encap");
}

/// The outer destination MAC and host of a frame the MUX tunnelled, or the drop reason.
fn hop(mux: &mut Mux, frame: &[u8]) -> Result<([u8; 6], [u8; 4]), DropReason> {
    let mut buf = with_headroom(frame);
    match mux.process(&mut buf, HEADROOM, frame.len(), 1000) {
        Verdict::Forward { start, len } => {
            let outer = &buf[start..start + len];
            assert_eq!(&outer[6..12], &MUX_MAC.0, "from the MUX's own MAC");
            Ok((outer[..6].try_into().unwrap(), vxlan_from_mux(outer).dst))
        }
        Verdict::Drop(r) => Err(r),
    }
}

/// Hosts get frames for 300 clients, new ones from client `from` on and established ones below
/// it; per host, the destination MACs their tunnels used.
fn hops(node: &mut Node, from: u32) -> std::collections::HashMap<[u8; 4], std::collections::HashSet<[u8; 6]>> {
    let mut seen: std::collections::HashMap<_, std::collections::HashSet<_>> = Default::default();
    for i in from.saturating_sub(150)..from + 150 {
        let (mac, host) = hop(node.mux().unwrap(), &tcp4(client4(i), 40000, VIP, 80, true)).unwrap();
        seen.entry(host).or_default().insert(mac);
    }
    seen
}

#[test]
fn tunnels_leave_for_the_next_hop_the_program_set_and_keep_it_across_updates() {
    let mut node = Node::new(NodeRole::Mux(mux_node(1)), web_app()).unwrap();
    let peers: std::collections::HashSet<IpAddr> = node.underlay_peers().into_iter().collect();
    assert_eq!(peers, HOSTS.iter().map(|&h| IpAddr::from(h)).collect(), "every host a pool member runs on");
    assert_eq!(node.underlay_peers().len(), 4, "each once");
    assert!(node.local_backend_addresses().is_empty(), "a MUX has no local backends");
    let only = |mac: MacAddr| std::collections::HashSet::from([mac.0]);
    for (host, macs) in hops(&mut node, 0) {
        assert_eq!(macs, only(GATEWAY), "host {host:?}: the gateway, before any next hop");
    }
    let (hop1, hop_new, gateway2) =
        (MacAddr([2, 0, 0, 0, 0x77, 1]), MacAddr([2, 0, 0, 0, 0x77, 2]), MacAddr([2, 0, 0, 0, 0, 2]));
    node.set_next_hop(IpAddr::from(HOSTS[1]), hop1);
    // A peer this configuration does not have yet: remembered for the tunnels a later one builds.
    let new_host = [172, 16, 10, 30];
    node.set_next_hop(IpAddr::from(new_host), hop_new);
    let seen = hops(&mut node, 150);
    assert_eq!(seen.len(), 3, "three web servers on three hosts");
    for (host, macs) in &seen {
        assert_eq!(macs, &only(if *host == HOSTS[1] { hop1 } else { GATEWAY }), "host {host:?}");
    }
    // A configuration with a web server on a new host: established flows and new tunnels alike.
    let mut lb = web_app();
    lb.pools[0].backends.push(backend("vm3", v4(3), new_host));
    node.update(lb).unwrap();
    assert!(node.underlay_peers().contains(&IpAddr::from(new_host)));
    let seen = hops(&mut node, 300);
    assert_eq!(seen.len(), 4, "the new host takes new flows: {seen:?}");
    for (host, macs) in &seen {
        let want = match *host {
            h if h == HOSTS[1] => hop1,
            h if h == new_host => hop_new,
            _ => GATEWAY,
        };
        assert_eq!(macs, &only(want), "host {host:?} after the update");
    }
    // A new gateway moves the peers without a next hop of their own; a cleared next hop falls back.
    node.set_gateway_mac(gateway2);
    node.clear_next_hop(IpAddr::from(new_host));
    for (host, macs) in hops(&mut node, 450) {
        assert_eq!(macs, only(if host == HOSTS[1] { hop1 } else { gateway2 }), "host {host:?}");
    }
}

#[test]
fn without_a_next_hop_nothing_leaves_with_a_zero_mac() {
    let mut node = MuxNode { ..mux_node(1) };
    node.base.gateway_mac = MacAddr::default();
    let mut mux = Mux::new(node, web_app()).unwrap();
    let frames: Vec<Vec<u8>> = (0..60).map(|i| tcp4(client4(i), 40000, VIP, 80, true)).collect();
    for f in &frames {
        assert_eq!(hop(&mut mux, f), Err(DropReason::NoNextHop));
    }
    assert_eq!(mux.counters().drops[DropReason::NoNextHop as usize], 60);
    assert_eq!(DropReason::NoNextHop.name(), "no_next_hop");
    // One host's next hop known: its frames leave, the others' still wait.
    let hop1 = MacAddr([2, 0, 0, 0, 0x77, 1]);
    mux.set_next_hop(IpAddr::from(HOSTS[0]), hop1);
    let mut sent = 0;
    for f in &frames {
        match hop(&mut mux, f) {
            Ok((mac, host)) => {
                assert_eq!((mac, host), (hop1.0, HOSTS[0]));
                sent += 1;
            }
            Err(r) => assert_eq!(r, DropReason::NoNextHop),
        }
    }
    assert!((5..55).contains(&sent), "{sent}");
    // A response a host sends back through the MUX needs the gateway too.
    let response = tcp4(VIP, 80, client4(1), 40000, false);
    let back =
        VxlanEncap::new(HOST_MAC, MUX_MAC, IpAddr::from(HOST_A), IpAddr::from(MUX_IP), 0x1001, 64, 9000).unwrap();
    let relay = |mux: &mut Mux| {
        let mut buf = with_headroom(&response);
        let start = back.encapsulate(&mut buf, HEADROOM, response.len(), 7).unwrap();
        let len = HEADROOM + response.len() - start;
        match mux.process(&mut buf, start, len, 1000) {
            Verdict::Forward { start, len } => Ok(buf[start..start + len].to_vec()),
            Verdict::Drop(r) => Err(r),
        }
    };
    assert_eq!(relay(&mut mux), Err(DropReason::NoNextHop));
    mux.set_gateway_mac(GATEWAY);
    let relayed = relay(&mut mux).unwrap();
    assert_eq!((&relayed[..6], &relayed[6..12]), (&GATEWAY.0[..], &MUX_MAC.0[..]));
    for f in &frames {
        let (mac, host) = hop(&mut mux, f).unwrap();
        assert_eq!(mac, if host == HOSTS[0] { hop1.0 } else { GATEWAY.0 });
    }
}

/// Runs a frame through the MUX, expecting an ICMP "too big" error back.
fn expect_too_big(mux: &mut Mux, frame: &[u8]) -> TooBig {
    let mut buf = with_headroom(frame);
    match mux.process(&mut buf, HEADROOM, frame.len(), 1000) {
        Verdict::Forward { start, len } => too_big(&buf[start..start + len]),
        v => panic!("an ICMP error, not {v:?}"),
    }
}

#[test]
fn a_frame_too_big_for_the_tunnel_is_answered_with_fragmentation_needed_or_packet_too_big() {
    // An underlay of 1500 bytes: an untagged inner IP packet of 1450 bytes fits, 1451 does not.
    let mut mux = Mux::new(mux_node_mtu(1, 1500), web_app()).unwrap();
    let client = IpAddr::from(client4(7));
    let vip = IpAddr::from(VIP);
    assert!(run(&mut mux, &sized_frame(client, 40000, vip, 80, Some(true), 1450)).is_ok());
    let big = sized_frame(client, 40000, vip, 80, Some(false), 1451);
    let e = expect_too_big(&mut mux, &big);
    assert_eq!(e.macs, (CLIENT_MAC, MUX_MAC.0), "back to the MAC it came from, from the MUX");
    assert!(e.vlans.is_empty());
    assert_eq!((e.src, e.dst, e.hop_limit), (vip, client, 64), "from the VIP, to the client");
    assert_eq!(e.mtu, 1450, "1500 less the 50 bytes of VxLAN over IPv4");
    assert_eq!(e.ip_len, 576, "no larger than every host accepts");
    assert_eq!(e.quote, big[14..14 + 548], "the offending packet from its IP header, cut to fit");
    assert_eq!(mux.counters().too_big, 1);
    assert_eq!(mux.counters().drops[DropReason::Encap as usize], 0);
    // Without DF the sender lets routers fragment: still a drop, no error.
    let mut no_df = big.clone();
    clear_dont_fragment(&mut no_df);
    assert_eq!(run(&mut mux, &no_df), Err(DropReason::Encap));
    assert_eq!(mux.counters().too_big, 1);
    // Behind an 802.1Q tag the inner frame has 4 bytes less for its packet.
    let tagged = |ip_len: usize| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, MUX_MAC.0)
            .single_vlan(VlanId::try_new(7).unwrap())
            .ipv4(client4(8), VIP, 64)
            .udp(40000, 53)
            .write(&mut f, &vec![0x5a; ip_len - 28])
            .unwrap();
        f
    };
    assert!(run(&mut mux, &tagged(1446)).is_ok());
    let e = expect_too_big(&mut mux, &tagged(1447));
    assert_eq!((e.vlans, e.mtu, e.ip_len), (vec![7], 1446, 576), "the tag kept, its 4 bytes taken off");
    assert_eq!(e.dst, IpAddr::from(client4(8)));
    // IPv6: "packet too big", up to the IPv6 minimum MTU.
    let client6 = lb_fixtures::client(7, true);
    let big6 = sized_frame(client6, 40000, IpAddr::from(VIP6), 80, Some(true), 1451);
    let e = expect_too_big(&mut mux, &big6);
    assert_eq!((e.src, e.dst, e.mtu, e.ip_len), (IpAddr::from(VIP6), client6, 1450, 1280));
    assert_eq!(e.quote, big6[14..14 + 1232]);
    assert_eq!(e.macs, (CLIENT_MAC, MUX_MAC.0));
    // Over an IPv6 underlay the tunnel takes 70 bytes.
    let mut v6_node = mux_node_mtu(1, 1500);
    v6_node.base.underlay = IpAddr::from([0xfd00u16, 0, 0, 0, 0, 0, 5, 10]);
    let mut lb = web_app();
    for p in &mut lb.pools {
        for (i, b) in p.backends.iter_mut().enumerate() {
            b.host = IpAddr::from([0xfd00u16, 0, 0, 0, 0, 0, 10, 20 + i as u16]);
        }
    }
    let mut mux6 = Mux::new(v6_node, lb).unwrap();
    let e = expect_too_big(&mut mux6, &sized_frame(client, 40000, vip, 80, Some(true), 1431));
    assert_eq!(e.mtu, 1430);
    assert_eq!(mux6.counters().too_big, 1);
    let mut node = Node::new(NodeRole::Mux(mux_node_mtu(1, 1500)), web_app()).unwrap();
    let mut buf = with_headroom(&big);
    let mut frames = [(&mut buf[..], HEADROOM, big.len())];
    let mut out = [Action::Drop(DropCause::Mux(DropReason::Malformed))];
    node.process_burst(&mut frames, Side::Either, 1000, &mut out);
    assert!(matches!(out[0], Action::Transmit { .. }), "{out:?}");
    assert_eq!(node.totals().icmp_too_big, 1);
}
