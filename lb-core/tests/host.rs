//! The whole walk of Ananta's data path, end to end: client → MUX → host agent → backend → host agent → (MUX →)
//! client, and backend-initiated connections through SNAT. Every frame on the way is read back with
//! etherparse (an independent parser): addresses, ports, IP and transport checksums, payload.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use lb_core::config::*;
use lb_core::paths::host::HostEgress;
use lb_core::paths::{
    backend_tag, HostAgent, HostDrop, HostError, HostNode, HostVerdict, Mux, Node, NodeRole, ReturnPath, Verdict,
};
use lb_core::wire::MacAddr;
use lb_fixtures::*;

const NOW: u32 = 1000;

fn mux() -> Mux {
    Mux::new(mux_node(7), two_hosts(1024)).unwrap()
}

fn host(addr: [u8; 4], return_path: ReturnPath, lb: LoadBalancer) -> HostAgent {
    HostAgent::new(host_node(addr, return_path), lb).unwrap()
}

/// The MUX: a client frame in, the VxLAN frame out (outer destination, backend tag).
fn through_mux(mux: &mut Mux, f: &[u8]) -> (Vec<u8>, [u8; 4], u32) {
    let mut buf = with_headroom(f);
    let Verdict::Forward { start, len } = mux.process(&mut buf, HEADROOM, f.len(), NOW) else { panic!("MUX forwards") };
    let outer = buf[start..start + len].to_vec();
    let dst = [outer[30], outer[31], outer[32], outer[33]];
    let tag = u32::from_be_bytes([0, outer[43], outer[44], outer[45]]);
    (outer, dst, tag)
}

/// A frame a host agent sends towards the client: via the MUX (check the tunnel, let the MUX relay
/// it) or directly (check the L2 rewrite).
fn to_client(mux: &mut Mux, out: &[u8], path: ReturnPath, host_addr: [u8; 4]) -> Vec<u8> {
    match path {
        ReturnPath::Direct => {
            assert_eq!(&out[..6], &GATEWAY.0, "DSR goes to the fabric router");
            out.to_vec()
        }
        ReturnPath::ViaMux => {
            let p = SlicedPacket::from_ethernet(out).expect("tunnel parses");
            let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("IPv4 underlay") };
            assert_eq!(ip.header().source(), host_addr);
            assert_eq!(ip.header().destination(), MUX_IP);
            let mut buf = out.to_vec();
            let Verdict::Forward { start, len } = mux.process(&mut buf, 0, out.len(), NOW) else {
                panic!("MUX relays the response")
            };
            let inner = buf[start..start + len].to_vec();
            assert_eq!(&inner[..6], &GATEWAY.0, "relayed to the fabric router");
            assert_eq!(&inner[6..12], &[2, 0, 0, 0, 5, 10], "from the MUX");
            inner
        }
    }
}

#[test]
fn client_to_backend_and_back_v4_v6_tcp_udp_default_and_floating_via_mux_and_dsr() {
    for path in [ReturnPath::ViaMux, ReturnPath::Direct] {
        let mut mux = mux();
        let mut hosts: HashMap<[u8; 4], HostAgent> =
            [HOST_A, HOST_B].iter().map(|&h| (h, host(h, path, two_hosts(1024)))).collect();
        let mut delivered_to = HashSet::new();
        let cases: [(IpAddr, Option<bool>, u16, u16, bool); 8] = [
            (IpAddr::from(VIP), Some(true), 80, 8080, false),
            (IpAddr::from(VIP), Some(true), 81, 81, true),
            (IpAddr::from(VIP), None, 53, 53, false),
            (IpAddr::from(VIP), None, 54, 54, true),
            (IpAddr::from(VIP6), Some(true), 80, 8080, false),
            (IpAddr::from(VIP6), Some(true), 81, 81, true),
            (IpAddr::from(VIP6), None, 53, 53, false),
            (IpAddr::from(VIP6), None, 54, 54, true),
        ];
        for (vip, tcp, fport, bport, floating) in cases {
            for c in 0..12u16 {
                let client = client(u32::from(c) + 1, vip.is_ipv6());
                let cport = 40000 + c;
                let request = frame(client, cport, vip, fport, tcp, b"request bytes");
                let (outer, host_addr, tag) = through_mux(&mut mux, &request);
                let h = hosts.get_mut(&host_addr).expect("tunnelled to a host");
                let mut buf = outer.clone();
                let HostVerdict::Deliver { backend, start, len } = h.from_fabric(&mut buf, 0, outer.len(), NOW) else {
                    panic!("host delivers ({path:?} {vip} {fport})")
                };
                let dip = h.local_backends()[backend].address;
                assert_eq!(backend_tag(dip), tag, "the backend the MUX chose");
                delivered_to.insert(dip);
                let s = seen(&buf[start..start + len]);
                let want_dst = if floating { vip } else { dip };
                assert_eq!((s.src, s.sport, s.dst, s.dport), (client, cport, want_dst, bport), "DNAT");
                assert_eq!(s.payload, b"request bytes");
                // The backend answers from the address and port it was addressed to.
                let response = frame(want_dst, bport, client, cport, tcp.map(|_| false), b"response!");
                let mut rbuf = with_headroom(&response);
                let HostVerdict::Transmit { start, len } = h.from_backend(&mut rbuf, HEADROOM, response.len(), NOW)
                else {
                    panic!("host sends the response")
                };
                let back = to_client(&mut mux, &rbuf[start..start + len], path, host_addr);
                let s = seen(&back);
                assert_eq!((s.src, s.sport, s.dst, s.dport), (vip, fport, client, cport), "reverse NAT");
                assert_eq!(s.payload, b"response!");
            }
        }
        assert!(delivered_to.len() >= 4, "flows reach several backends, both hosts: {delivered_to:?}");
        let a = hosts[&HOST_A].counters();
        let b = hosts[&HOST_B].counters();
        assert_eq!(a.inbound.packets + b.inbound.packets, 8 * 12);
        assert_eq!(a.inbound.new_flows + b.inbound.new_flows, 8 * 12, "one new connection each");
        assert_eq!(a.backends.iter().chain(&b.backends).map(|t| t.new_flows).sum::<u64>(), 8 * 12);
        assert_eq!(a.responses.packets + b.responses.packets, 8 * 12);
        if path == ReturnPath::ViaMux {
            assert_eq!(mux.counters().relayed.packets, 8 * 12);
        }
    }
}

#[test]
fn a_backend_frame_with_no_flow_and_no_outbound_rule_is_dropped_not_leaked() {
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    // Web6 has no outbound rule and its rules disable outbound SNAT.
    let f = frame(v6(0), 5555, IpAddr::from([0x2606, 0x4700, 0, 0, 0, 0, 0, 0x1111u16]), 443, Some(true), b"");
    let mut buf = with_headroom(&f);
    assert_eq!(h.from_backend(&mut buf, HEADROOM, f.len(), NOW), HostVerdict::Drop(HostDrop::NoFlow));
    assert_eq!(&buf[HEADROOM..], &f[..], "the frame is not touched");
    // Not a backend of this host at all.
    let f = frame(IpAddr::from([10, 0, 1, 99]), 5555, IpAddr::from([1, 1, 1, 1]), 443, Some(true), b"");
    let mut buf = with_headroom(&f);
    assert_eq!(h.from_backend(&mut buf, HEADROOM, f.len(), NOW), HostVerdict::Drop(HostDrop::NoFlow));
    // A response of a flow the host never saw (vm0 has an outbound rule, but only a SYN opens an
    // SNAT connection): dropped, never sent with a private source.
    let f = frame(v4(0), 8080, IpAddr::from([198, 18, 0, 1]), 40000, Some(false), b"");
    let mut buf = with_headroom(&f);
    assert_eq!(h.from_backend(&mut buf, HEADROOM, f.len(), NOW), HostVerdict::Drop(HostDrop::NoFlow));
    assert_eq!(&buf[HEADROOM..], &f[..], "the frame is not touched");
    // Its SYN opens one.
    let f = frame(v4(0), 8080, IpAddr::from([198, 18, 0, 1]), 40000, Some(true), b"");
    let mut buf = with_headroom(&f);
    let v = h.from_backend(&mut buf, HEADROOM, f.len(), NOW);
    let HostVerdict::Transmit { start, len } = v else { panic!("{v:?}") };
    assert_eq!(seen(&buf[start..start + len]).src, IpAddr::from(SNAT_IP));
    assert_eq!(h.counters().drops[HostDrop::NoFlow as usize], 3);
    // Garbage and tunnels for someone else.
    let mut junk = vec![0u8; 60];
    assert_eq!(h.from_fabric(&mut junk, 0, 60, NOW), HostVerdict::Drop(HostDrop::Malformed));
    let mut m = mux();
    let (mut outer, dst, _) =
        through_mux(&mut m, &frame(IpAddr::from([198, 18, 0, 1]), 1, IpAddr::from(VIP), 80, Some(true), b""));
    let mut other = host(if dst == HOST_A { HOST_B } else { HOST_A }, ReturnPath::Direct, two_hosts(1024));
    let n = outer.len();
    assert_eq!(other.from_fabric(&mut outer, 0, n, NOW), HostVerdict::Drop(HostDrop::NotForThisHost));
}

/// The reply the remote end sends to an SNAT connection, through the MUX to the owning host.
fn snat_reply(mux: &mut Mux, remote: IpAddr, rport: u16, port: u16, tcp: bool) -> (Vec<u8>, [u8; 4]) {
    let f = frame(remote, rport, IpAddr::from(SNAT_IP), port, tcp.then_some(false), b"reply");
    let (outer, host, _) = through_mux(mux, &f);
    (outer, host)
}

#[test]
fn snat_thousands_of_connections_until_exhaustion_then_release_and_reuse() {
    const PORTS: u32 = 1024;
    let mut mux = mux();
    let mut hosts: HashMap<[u8; 4], HostAgent> =
        [HOST_A, HOST_B].iter().map(|&h| (h, host(h, ReturnPath::Direct, two_hosts(PORTS)))).collect();
    let plan = two_hosts(PORTS).snat_plan().unwrap();
    let remote = |i: u32| IpAddr::V4(Ipv4Addr::new(93, 184, (i >> 8) as u8, i as u8));
    let web = IpAddr::from([93, 184, 216, 34]);
    let mut used: HashMap<IpAddr, HashSet<u16>> = HashMap::new();
    // vm0 and vm1 (host A) open UDP flows to many destinations: every flow takes a port of its own.
    // vm2 (host B) opens TCP connections to one web server: a port carries one connection to it.
    let backends = [(v4(0), HOST_A), (v4(1), HOST_A), (v4(2), HOST_B)];
    for (m, &(dip, h)) in backends.iter().enumerate() {
        let agent = hosts.get_mut(&h).unwrap();
        let tcp = m == 2;
        for i in 0..PORTS + 5 {
            let (dst, dport) = if tcp { (web, 443) } else { (remote(i), 53) };
            let f = frame(dip, 10000 + i as u16, dst, dport, tcp.then_some(true), b"q");
            let mut buf = with_headroom(&f);
            match agent.from_backend(&mut buf, HEADROOM, f.len(), NOW) {
                HostVerdict::Transmit { start, len } => {
                    let s = seen(&buf[start..start + len]);
                    assert_eq!(s.src, IpAddr::from(SNAT_IP));
                    assert_eq!((s.dst, s.dport), (dst, dport));
                    let g = plan.owner(2, s.sport).expect("a planned port");
                    assert_eq!((g.pool, g.member), (0, m), "the port is in this backend's block");
                    assert!(used.entry(dip).or_default().insert(s.sport), "no port handed out twice");
                    // The reply finds its way back: MUX (by port) → host → backend's own address and port.
                    if i % 97 == 0 {
                        let (mut outer, to) = snat_reply(&mut mux, dst, dport, s.sport, tcp);
                        assert_eq!(to, h, "the MUX tunnels the reply to the owner's host");
                        let n = outer.len();
                        let HostVerdict::Deliver { backend, start, len } = agent.from_fabric(&mut outer, 0, n, NOW)
                        else {
                            panic!("reply delivered")
                        };
                        assert_eq!(agent.local_backends()[backend].address, dip);
                        let r = seen(&outer[start..start + len]);
                        assert_eq!((r.src, r.sport, r.dst, r.dport), (dst, dport, dip, 10000 + i as u16));
                    }
                }
                HostVerdict::Drop(HostDrop::SnatExhausted) => assert!(i >= PORTS, "exhausted only after {PORTS}"),
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(used[&dip].len(), PORTS as usize);
    }
    let a = &hosts[&HOST_A];
    assert_eq!(a.snat_counters().allocated, 2 * u64::from(PORTS));
    assert_eq!(a.counters().drops[HostDrop::SnatExhausted as usize], 2 * 5);
    assert_eq!(a.snat_ports_in_use(0), PORTS);
    assert_eq!(hosts[&HOST_B].counters().snat_out.packets, u64::from(PORTS));
    assert_eq!(hosts[&HOST_B].counters().snat_out.new_flows, u64::from(PORTS));
    assert_eq!(hosts[&HOST_B].counters().drops[HostDrop::SnatExhausted as usize], 5);

    // TCP shares a port between different destinations once no fresh port is left...
    let b = hosts.get_mut(&HOST_B).unwrap();
    let f = frame(v4(2), 30000, IpAddr::from([1, 1, 1, 1]), 443, Some(true), b"");
    let mut buf = with_headroom(&f);
    let HostVerdict::Transmit { start, len } = b.from_backend(&mut buf, HEADROOM, f.len(), NOW) else {
        panic!("TCP shares a port")
    };
    assert!(used[&v4(2)].contains(&seen(&buf[start..start + len]).sport));
    assert_eq!(b.snat_counters().shared, 1);
    // ...but never a port a UDP flow holds.
    let a = hosts.get_mut(&HOST_A).unwrap();
    let f0 = frame(v4(0), 30000, IpAddr::from([1, 1, 1, 1]), 443, Some(true), b"");
    let mut buf = with_headroom(&f0);
    assert_eq!(a.from_backend(&mut buf, HEADROOM, f0.len(), NOW), HostVerdict::Drop(HostDrop::SnatExhausted));

    // Idle timeout (4 minutes) frees every port; they come back after the quarantine (60 s).
    let later = NOW + 4 * 60 + 1;
    let mut resets = Vec::new();
    for h in [HOST_A, HOST_B] {
        hosts.get_mut(&h).unwrap().expire(later, usize::MAX >> 1, |to, f| resets.push((h, to, f.to_vec())));
    }
    let a = &hosts[&HOST_A];
    assert_eq!((a.snat_ports_in_use(0), a.snat_ports_in_use(1)), (0, 0));
    assert_eq!(a.snat_counters().released, 2 * u64::from(PORTS));
    assert_eq!(a.flows().len(), 0, "both entries of every connection are gone");
    let b = &hosts[&HOST_B];
    assert_eq!(b.snat_counters().released, u64::from(PORTS) + 1);
    assert_eq!(b.flows().len(), 0);
    // The TCP connections' rule asks for resets: one to the backend and one to the remote end each;
    // the UDP flows go silently.
    assert_eq!(resets.len(), 2 * (PORTS as usize + 1));
    assert!(resets.iter().all(|(h, _, _)| *h == HOST_B));
    assert_eq!(resets.iter().filter(|(_, to, _)| *to == HostEgress::Fabric).count(), PORTS as usize + 1);
    let a = hosts.get_mut(&HOST_A).unwrap();
    let f = frame(v4(0), 30001, IpAddr::from([1, 1, 1, 2]), 443, None, b"");
    let mut buf = with_headroom(&f);
    assert_eq!(a.from_backend(&mut buf, HEADROOM, f.len(), later), HostVerdict::Drop(HostDrop::SnatExhausted));
    let mut buf = with_headroom(&f);
    let v = a.from_backend(&mut buf, HEADROOM, f.len(), later + 60);
    assert!(matches!(v, HostVerdict::Transmit { .. }), "reused after the quarantine: {v:?}");
}

/// A client port whose SYN to VIP:80 the MUX sends to host A, and the tunnelled SYN.
fn syn_to_host_a(mux: &mut Mux, client: IpAddr) -> (u16, Vec<u8>) {
    (40000..41000u16)
        .find_map(|p| {
            let (o, h, _) = through_mux(mux, &frame(client, p, IpAddr::from(VIP), 80, Some(true), b""));
            (h == HOST_A).then_some((p, o))
        })
        .expect("a client port the MUX sends to host A")
}

/// Delivers the tunnelled SYN `outer` at `h`: the local backend it reaches, and its address.
fn deliver_syn(h: &mut HostAgent, outer: &[u8]) -> (usize, IpAddr) {
    let mut buf = outer.to_vec();
    let n = buf.len();
    let HostVerdict::Deliver { backend, .. } = h.from_fabric(&mut buf, 0, n, NOW) else { panic!("not delivered") };
    (backend, h.local_backends()[backend].address)
}

#[test]
fn idle_tcp_flow_gets_a_reset_towards_both_ends_with_tracked_sequence_numbers() {
    let mut mux = mux();
    let client = IpAddr::from([198, 18, 7, 7]);
    // Find a client port the MUX sends to host A.
    let (port, outer) = syn_to_host_a(&mut mux, client);
    // A table of one bucket (capacity 6) too: then a sweep meets both entries of the connection
    // at once, and each reset must still go its own way. And a timeout of 5 seconds
    // (`idleTimeoutInSeconds`), as live tests use.
    let five = IdleTimeout::from_seconds(5).unwrap();
    for (reset, capacity, idle) in [
        (true, 100_000, IdleTimeout::default()),
        (false, 100_000, IdleTimeout::default()),
        (true, 6, IdleTimeout::default()),
        (true, 100_000, five),
    ] {
        let mut lb = two_hosts(1024);
        lb.rules[0].tcp_reset = reset;
        lb.rules[0].idle_timeout = idle;
        let mut h = HostAgent::new(host_node_flows(HOST_A, ReturnPath::ViaMux, capacity), lb).unwrap();
        let (backend, dip) = deliver_syn(&mut h, &outer);
        // The client's SYN had seq 1000. The backend answers SYN-ACK seq 5000 ack 1001; the client
        // sends "hello" at seq 1001 (ack 5001): each end now expects 1006 and 5001.
        let mut synack = frame(dip, 8080, client, port, Some(false), b"");
        let tcp_at = 34;
        synack[tcp_at + 4..tcp_at + 8].copy_from_slice(&5000u32.to_be_bytes());
        synack[tcp_at + 8..tcp_at + 12].copy_from_slice(&1001u32.to_be_bytes());
        synack[tcp_at + 13] = 0x12;
        // From the backend's own MAC (the test's other frames come from another).
        synack[6..12].copy_from_slice(&[2, 0, 0, 0, 0xbe, 1]);
        fix_tcp_checksum(&mut synack);
        let mut rbuf = with_headroom(&synack);
        assert!(matches!(h.from_backend(&mut rbuf, HEADROOM, synack.len(), NOW), HostVerdict::Transmit { .. }));
        let mut ack = frame(client, port, IpAddr::from(VIP), 80, Some(false), b"hello");
        ack[tcp_at + 4..tcp_at + 8].copy_from_slice(&1001u32.to_be_bytes());
        fix_tcp_checksum(&mut ack);
        let (mut o, _, _) = through_mux(&mut mux, &ack);
        let n = o.len();
        let acked = NOW + 2;
        assert!(matches!(h.from_fabric(&mut o, 0, n, acked), HostVerdict::Deliver { .. }));
        // Silence for exactly the rule's idle timeout: nothing happens yet.
        let mut out = Vec::new();
        h.expire(acked + idle.seconds(), 1 << 20, |to, f| out.push((to, f.to_vec())));
        assert_eq!((h.flows().len(), out.len()), (2, 0), "{idle}: not before its timeout");
        // A second more.
        h.expire(acked + idle.seconds() + 1, 1 << 20, |to, f| out.push((to, f.to_vec())));
        assert_eq!(h.flows().len(), 0, "{idle}");
        // A late segment of the expired connection from the backend opens nothing (only a SYN
        // does): through SNAT it would reach the client from another address and port.
        let late = frame(dip, 8080, client, port, Some(false), b"late");
        let mut lbuf = with_headroom(&late);
        assert_eq!(h.from_backend(&mut lbuf, HEADROOM, late.len(), NOW + 400), HostVerdict::Drop(HostDrop::NoFlow));
        assert_eq!(h.flows().len(), 0);
        if !reset {
            assert!(out.is_empty(), "without enableTcpReset the flow goes silently");
            continue;
        }
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(h.counters().resets, 2);
        for (to, f) in out {
            match to {
                HostEgress::Backend(b) => {
                    assert_eq!(b, backend);
                    // To the MAC the backend's SYN-ACK came from (a guest drops a TCP segment
                    // broadcast to it).
                    assert_eq!(f[..6], [2, 0, 0, 0, 0xbe, 1], "to the backend's own MAC");
                    let s = seen(&f);
                    assert_eq!((s.src, s.sport, s.dst, s.dport), (client, port, dip, 8080));
                    assert!(s.tcp_flags.1, "RST");
                    assert_eq!(s.seq, 1006, "the backend's next expected sequence number");
                }
                HostEgress::Fabric => {
                    let inner = to_client(&mut mux, &f, ReturnPath::ViaMux, HOST_A);
                    let s = seen(&inner);
                    assert_eq!((s.src, s.sport, s.dst, s.dport), (IpAddr::from(VIP), 80, client, port));
                    assert!(s.tcp_flags.1, "RST");
                    assert_eq!(s.seq, 5001, "the client's next expected sequence number");
                }
            }
        }
    }
}

/// Recomputes the TCP checksum of an untagged IPv4 frame (tests edit sequence numbers by hand).
fn fix_tcp_checksum(f: &mut [u8]) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!() };
    let Some(TransportSlice::Tcp(t)) = &p.transport else { panic!() };
    let c = t.to_header().calc_checksum_ipv4(&ip.header().to_header(), t.payload()).unwrap();
    drop(p);
    f[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn a_connection_opened_again_on_its_5_tuple_lives_in_both_directions() {
    // Both ends close, then the client reuses its port for a new connection within the closing
    // timeout: both entries of the pair are open again, so 30 s of silence (past the 10 s closing timeout,
    // within the rule's 4 minutes) leave the connection in place.
    let mut mux = mux();
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    let client = IpAddr::from([198, 18, 2, 2]);
    let (port, outer) = syn_to_host_a(&mut mux, client);
    let mut deliver = |h: &mut HostAgent, f: &[u8], now: u32| {
        let (mut o, to, _) = through_mux(&mut mux, f);
        assert_eq!(to, HOST_A);
        let n = o.len();
        match h.from_fabric(&mut o, 0, n, now) {
            HostVerdict::Deliver { backend, .. } => backend,
            v => panic!("{v:?}"),
        }
    };
    let (_, dip) = deliver_syn(&mut h, &outer);
    let mut fin = frame(client, port, IpAddr::from(VIP), 80, Some(false), b"");
    fin[47] |= 0x01; // FIN
    fix_tcp_checksum(&mut fin);
    deliver(&mut h, &fin, NOW + 1);
    // The backend closes its side too.
    let mut bfin = frame(dip, 8080, client, port, Some(false), b"");
    bfin[47] |= 0x01;
    fix_tcp_checksum(&mut bfin);
    let mut rbuf = with_headroom(&bfin);
    assert!(matches!(h.from_backend(&mut rbuf, HEADROOM, bfin.len(), NOW + 1), HostVerdict::Transmit { .. }));
    deliver(&mut h, &frame(client, port, IpAddr::from(VIP), 80, Some(true), b""), NOW + 2);
    h.expire(NOW + 32, usize::MAX, |_, _| {});
    assert_eq!(h.flows().len(), 2, "both entries of the connection are still there");
    let response = frame(dip, 8080, client, port, Some(false), b"hello");
    let mut rbuf = with_headroom(&response);
    assert!(matches!(h.from_backend(&mut rbuf, HEADROOM, response.len(), NOW + 32), HostVerdict::Transmit { .. }));
}

#[test]
fn reconfiguration_keeps_established_flows() {
    let mut mux = mux();
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    let client = IpAddr::from([198, 18, 1, 1]);
    let (port, outer) = syn_to_host_a(&mut mux, client);
    let (local, dip) = deliver_syn(&mut h, &outer);
    let before = h.counters().backends[local];
    assert_eq!(before.packets, 1);
    // A new configuration: an extra pool member on host B, one on this host ahead of the others
    // (the local backends are numbered anew), and the rule's backend port changed.
    let mut lb = two_hosts(1024);
    lb.pools[0].backends.push(backend("vm3", v4(3), HOST_B));
    lb.pools[0].backends.insert(0, backend("vm9", v4(9), HOST_A));
    lb.rules[0].backend_port = 9090;
    h.update(lb).unwrap();
    let moved = h.local_backends().iter().position(|l| l.address == dip).unwrap();
    assert_ne!(moved, local, "the backend has another local index now");
    assert_eq!(h.counters().backends[moved], before, "its counters follow it through the reload");
    let added = h.local_backends().iter().position(|l| l.address == v4(9)).unwrap();
    assert_eq!(h.counters().backends[added].packets, 0, "a new backend starts at zero");
    let response = frame(dip, 8080, client, port, Some(false), b"still here");
    let mut rbuf = with_headroom(&response);
    let HostVerdict::Transmit { start, len } = h.from_backend(&mut rbuf, HEADROOM, response.len(), NOW + 1) else {
        panic!("the established flow still translates")
    };
    let s = seen(&rbuf[start..start + len]);
    assert_eq!((s.src, s.sport), (IpAddr::from(VIP), 80));
    // A broken configuration is refused and the running one kept.
    let mut bad = two_hosts(1024);
    bad.rules[0].pool = 9;
    assert!(h.update(bad).is_err());
    let mut rbuf = with_headroom(&response);
    assert!(matches!(h.from_backend(&mut rbuf, HEADROOM, response.len(), NOW + 2), HostVerdict::Transmit { .. }));
}

#[test]
fn snat_connections_a_reload_flushes_give_their_ports_back() {
    // The outbound frontend gets a new address (same name and place, so the port blocks compare
    // equal, but their address is another: the allocator is built anew): the connections on the
    // old address cannot go on and are flushed, and their ports must be free, or the backend
    // would run out for good.
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    for i in 0..10u16 {
        let f = frame(v4(0), 20000 + i, IpAddr::from([93, 184, 216, 34]), 443, Some(true), b"");
        let mut buf = with_headroom(&f);
        assert!(matches!(h.from_backend(&mut buf, HEADROOM, f.len(), NOW), HostVerdict::Transmit { .. }));
    }
    assert_eq!(h.snat_ports_in_use(0), 10);
    let mut lb = two_hosts(1024);
    lb.frontends[2].address = IpAddr::from([20, 50, 60, 99]);
    h.update(lb).unwrap();
    assert_eq!(h.counters().flushed, 10);
    assert_eq!(h.snat_ports_in_use(0), 0, "the flushed connections' ports are free again");
    assert_eq!(h.snat_counters().allocated, 0, "a new allocator, with nothing adopted");

    // The pool renamed: its backends are other backends (by name), so their connections are
    // flushed, while the blocks stay those of the same addresses and the allocator stays: the
    // ports must come back, once each, and wait out their quarantine.
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    for i in 0..10u16 {
        let f = frame(v4(0), 20000 + i, IpAddr::from([93, 184, 216, 34]), 443, Some(true), b"");
        let mut buf = with_headroom(&f);
        assert!(matches!(h.from_backend(&mut buf, HEADROOM, f.len(), NOW), HostVerdict::Transmit { .. }));
    }
    let mut lb = two_hosts(1024);
    lb.pools[0].name = "Web-renamed".into();
    h.update(lb).unwrap();
    assert_eq!(h.counters().flushed, 10);
    assert_eq!(h.snat_ports_in_use(0), 0);
    assert_eq!((h.snat_counters().allocated, h.snat_counters().released), (10, 10), "the allocator stayed");
}

#[test]
fn snat_exhaustion_can_answer_a_syn_with_a_reset_and_disturbs_nothing_allocated() {
    let lb = two_hosts(8);
    let node = HostNode { reset_on_snat_exhaustion: true, ..host_node_flows(HOST_A, ReturnPath::Direct, 1000) };
    let mut h = HostAgent::new(node, lb).unwrap();
    let dst = IpAddr::from([1, 1, 1, 1]);
    let mut ports = Vec::new();
    for i in 0..8u16 {
        // Same destination every time: TCP can share a port only between different destinations.
        let f = frame(v4(0), 20000 + i, dst, 443, Some(true), b"");
        let mut buf = with_headroom(&f);
        let HostVerdict::Transmit { start, len } = h.from_backend(&mut buf, HEADROOM, f.len(), NOW) else { panic!() };
        ports.push(seen(&buf[start..start + len]).sport);
    }
    let f = frame(v4(0), 20008, dst, 443, Some(true), b"");
    let mut buf = with_headroom(&f);
    let HostVerdict::Deliver { backend, start, len } = h.from_backend(&mut buf, HEADROOM, f.len(), NOW) else {
        panic!("a RST back to the backend")
    };
    assert_eq!(h.local_backends()[backend].address, v4(0));
    let s = seen(&buf[start..start + len]);
    assert_eq!((s.src, s.sport, s.dst, s.dport), (dst, 443, v4(0), 20008));
    assert!(s.tcp_flags.1 && s.tcp_flags.2, "RST+ACK");
    assert_eq!(h.counters().drops[HostDrop::SnatExhausted as usize], 1);
    assert_eq!(h.counters().resets, 1);
    // Every connection that has a port keeps it.
    for (i, p) in ports.iter().enumerate() {
        let f = frame(v4(0), 20000 + i as u16, dst, 443, Some(false), b"more");
        let mut buf = with_headroom(&f);
        let HostVerdict::Transmit { start, len } = h.from_backend(&mut buf, HEADROOM, f.len(), NOW + 1) else {
            panic!()
        };
        assert_eq!(seen(&buf[start..start + len]).sport, *p);
    }
    assert_eq!(h.snat_ports_in_use(0), 8);
}

/// Splits an untagged IPv4 UDP frame into a first fragment (UDP header + 8 bytes) and a later one.
fn split_in_two(f: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (eth, ip, l4) = (&f[..14], &f[14..34], &f[34..]);
    let part = |data: &[u8], offset_units: u16, more: bool| {
        let mut h = ip.to_vec();
        h[2..4].copy_from_slice(&(20 + data.len() as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        h[6..8].copy_from_slice(&((if more { 0x2000 } else { 0 }) | offset_units).to_be_bytes());
        h[10..12].fill(0);
        let c = lb_core::wire::checksum::ipv4_header(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        [eth, &h, data].concat()
    };
    (part(&l4[..16], 0, true), part(&l4[16..], 2, false))
}

#[test]
fn snat_connections_survive_a_reload_that_leaves_their_ports_to_their_backend() {
    // A backend added on the same host and the outbound rule's idle timeout changed: the host's
    // port blocks change, but vm0's block stays, so its connections go on with their ports, and
    // the rebuilt allocator never hands those ports out again while they last.
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    let web = IpAddr::from([93, 184, 216, 34]);
    let mut open = Vec::new();
    for i in 0..20u16 {
        let (dst, dport, tcp) = if i % 2 == 0 { (web, 443, Some(true)) } else { (web, 53, None) };
        let f = frame(v4(0), 50000 + i, dst, dport, tcp, b"");
        let mut buf = with_headroom(&f);
        let HostVerdict::Transmit { start, len } = h.from_backend(&mut buf, HEADROOM, f.len(), NOW) else { panic!() };
        open.push((f, seen(&buf[start..start + len]).sport));
    }
    assert_eq!(h.snat_ports_in_use(0), 20);
    let mut lb = two_hosts(1024);
    lb.pools[0].backends.push(backend("vm3", v4(3), HOST_A));
    lb.outbound_rules[0].idle_timeout = IdleTimeout::from_minutes(9).unwrap();
    h.update(lb).unwrap();
    assert_eq!(h.counters().flushed, 0, "no connection flushed");
    assert_eq!(h.snat_ports_in_use(0), 20, "the new allocator holds their ports");
    for (f, sport) in &open {
        let mut buf = with_headroom(f);
        let HostVerdict::Transmit { start, len } = h.from_backend(&mut buf, HEADROOM, f.len(), NOW + 1) else {
            panic!("the connection goes on")
        };
        assert_eq!(seen(&buf[start..start + len]).sport, *sport, "with its port");
    }
    // New UDP flows get the block's other ports, never one of theirs.
    let theirs: HashSet<u16> = open.iter().map(|o| o.1).collect();
    let mut fresh = HashSet::new();
    for i in 0..1100u32 {
        let dst = IpAddr::V4(Ipv4Addr::new(198, 51, (i >> 8) as u8, i as u8));
        let f = frame(v4(0), 20000 + i as u16, dst, 53, None, b"q");
        let mut buf = with_headroom(&f);
        if let HostVerdict::Transmit { start, len } = h.from_backend(&mut buf, HEADROOM, f.len(), NOW + 2) {
            fresh.insert(seen(&buf[start..start + len]).sport);
        }
    }
    assert_eq!(fresh.len(), 1024 - 20);
    assert!(fresh.is_disjoint(&theirs));
}

#[test]
fn a_reload_that_adds_a_listener_on_an_snat_port_takes_the_port_out_of_snat() {
    // An inbound NAT rule added on the outbound address claims one of a backend's SNAT ports: the
    // MUX now sends what arrives there to the rule's target, so SNAT must never hand it out.
    let claimed = 1500u16;
    let owner = two_hosts(1024).snat_plan().unwrap().owner(2, claimed).expect("a planned port").member;
    let dip = v4(owner as u8);
    let on_a = owner < 2; // vm0 and vm1 are on host A
    let mut h = host(if on_a { HOST_A } else { HOST_B }, ReturnPath::Direct, two_hosts(1024));
    let mut lb = two_hosts(1024);
    lb.nat_rules.push(nat_rule("Claims-1500", 2, Protocol::Udp, claimed, 22, (0, 0)));
    h.update(lb).unwrap();
    let mut ports = HashSet::new();
    for i in 0..1100u32 {
        let dst = IpAddr::V4(Ipv4Addr::new(93, 184, (i >> 8) as u8, i as u8));
        let f = frame(dip, 40000 + i as u16, dst, 53, None, b"q");
        let mut buf = with_headroom(&f);
        if let HostVerdict::Transmit { start, len } = h.from_backend(&mut buf, HEADROOM, f.len(), NOW) {
            ports.insert(seen(&buf[start..start + len]).sport);
        }
    }
    assert_eq!(ports.len(), 1023, "every port of the block but the claimed one");
    assert!(!ports.contains(&claimed));
}

#[test]
fn a_backend_in_two_pools_opens_connections_with_the_ports_of_either() {
    // vm0 is in "Web" (load-balancing rules, no outbound SNAT) and in "Out", whose outbound rule
    // takes TCP only: its TCP connections take Out's ports, and UDP is no rule's (not an exhaustion).
    let mut lb = two_hosts(1024);
    lb.pools.push(Pool { name: "Out".into(), vni: 0x1009, backends: vec![backend("vm0-out", v4(0), HOST_A)] });
    lb.outbound_rules[0].pool = 2;
    lb.outbound_rules[0].protocol = Protocol::Tcp;
    let mut h = host(HOST_A, ReturnPath::Direct, lb);
    let web = IpAddr::from([93, 184, 216, 34]);
    let tcp = frame(v4(0), 30000, web, 443, Some(true), b"");
    let mut buf = with_headroom(&tcp);
    let HostVerdict::Transmit { start, len } = h.from_backend(&mut buf, HEADROOM, tcp.len(), NOW) else {
        panic!("the TCP connection goes out with an SNAT port")
    };
    assert_eq!(seen(&buf[start..start + len]).src, IpAddr::from(SNAT_IP));
    let udp = frame(v4(0), 30001, web, 53, None, b"q");
    let mut buf = with_headroom(&udp);
    assert_eq!(h.from_backend(&mut buf, HEADROOM, udp.len(), NOW), HostVerdict::Drop(HostDrop::NoFlow));
    assert_eq!(h.counters().drops[HostDrop::SnatExhausted as usize], 0);
}

#[test]
fn later_fragments_of_snat_datagrams_count_as_snat_traffic() {
    // A backend's UDP datagram to the internet, fragmented: both fragments leave with the SNAT
    // address and count as SNAT traffic out.
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    let f = frame(v4(0), 30002, IpAddr::from([93, 184, 216, 34]), 53, None, &[0x33; 40]);
    let (first, later) = split_in_two(&f);
    for part in [first, later] {
        let mut buf = with_headroom(&part);
        let HostVerdict::Transmit { start, .. } = h.from_backend(&mut buf, HEADROOM, part.len(), NOW) else {
            panic!("the fragment goes out")
        };
        assert_eq!(&buf[start + 26..start + 30], &SNAT_IP, "from the SNAT address");
    }
    let c = h.counters();
    assert_eq!((c.snat_out.packets, c.responses.packets), (2, 0));
}

#[test]
fn fragmented_replies_to_snat_connections_follow_their_first_fragment_at_the_mux() {
    // A reply to an SNAT port, fragmented on the way: the first fragment carries the port, which
    // names the backend and so its host; the later one carries no port and must follow it.
    let mut mux = mux();
    let plan = two_hosts(1024).snat_plan().unwrap();
    let remote = IpAddr::from([93, 184, 216, 34]);
    let mut hosts = HashSet::new();
    for port in (1024..4096u16).step_by(97) {
        let g = plan.owner(2, port).expect("a planned port");
        let whole = frame(remote, 53, IpAddr::from(SNAT_IP), port, None, &[0x5a; 40]);
        let (_, owner) = snat_reply(&mut mux, remote, 53, port, false);
        let (first, later) = split_in_two(&whole);
        // Each datagram its own identification, as a sender numbers them.
        let ident = |mut f: Vec<u8>| {
            f[18..20].copy_from_slice(&port.to_be_bytes());
            f[24..26].fill(0);
            let c = lb_core::wire::checksum::ipv4_header(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        };
        let (first, later) = (ident(first), ident(later));
        let (_, to_first, _) = through_mux(&mut mux, &first);
        let (_, to_later, _) = through_mux(&mut mux, &later);
        assert_eq!((to_first, to_later), (owner, owner), "port {port} of member {}", g.member);
        hosts.insert(owner);
    }
    assert_eq!(hosts.len(), 2, "ports of backends on both hosts");
    let c = mux.counters();
    assert_eq!(c.drops[lb_core::paths::DropReason::FragmentUnknown as usize], 0);
}

#[test]
fn fragments_of_a_datagram_are_translated_alike_and_reassemble_with_valid_checksums() {
    let mut mux = mux();
    let client = IpAddr::from([198, 18, 3, 3]);
    let payload: Vec<u8> = (0..40u8).collect();
    let datagram = frame(client, 5353, IpAddr::from(VIP), 53, None, &payload);
    let (first, later) = split_in_two(&datagram);
    let (mut o1, host_addr, _) = through_mux(&mut mux, &first);
    let (mut o2, host2, _) = through_mux(&mut mux, &later);
    assert_eq!(host_addr, host2, "the MUX sends both fragments to one host");
    let mut h = host(host_addr, ReturnPath::Direct, two_hosts(1024));
    let (n1, n2) = (o1.len(), o2.len());
    let HostVerdict::Deliver { backend: b1, start: s1, len: l1 } = h.from_fabric(&mut o1, 0, n1, NOW) else { panic!() };
    let HostVerdict::Deliver { backend: b2, start: s2, len: l2 } = h.from_fabric(&mut o2, 0, n2, NOW) else { panic!() };
    assert_eq!(b1, b2, "both fragments reach one backend");
    let dip = h.local_backends()[b1].address;
    let (f1, f2) = (&o1[s1..s1 + l1], &o2[s2..s2 + l2]);
    for f in [f1, f2] {
        assert_eq!(IpAddr::from([f[30], f[31], f[32], f[33]]), dip, "DNAT on every fragment");
        let c = lb_core::wire::checksum::ipv4_header(&f[14..34]);
        assert_eq!(c.to_be_bytes(), [f[24], f[25]], "IPv4 header checksum");
    }
    // Reassembled, the datagram carries a UDP checksum valid for the new destination.
    let mut whole = [&f1[..34], &f1[34..], &f2[34..]].concat();
    whole[14 + 2..14 + 4].copy_from_slice(&(20 + 8 + 40u16).to_be_bytes());
    whole[14 + 6..14 + 8].fill(0);
    whole[14 + 10..14 + 12].fill(0);
    let c = lb_core::wire::checksum::ipv4_header(&whole[14..34]);
    whole[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    let s = seen(&whole);
    assert_eq!((s.src, s.sport, s.dst, s.dport), (client, 5353, dip, 53));
    assert_eq!(s.payload, payload);
    // A later fragment whose first never came is dropped and counted.
    let (_, mut stray) = split_in_two(&frame(client, 5354, IpAddr::from(VIP), 53, None, &payload));
    stray[14 + 4..14 + 6].copy_from_slice(&0x4343u16.to_be_bytes());
    stray[14 + 10..14 + 12].fill(0);
    let c = lb_core::wire::checksum::ipv4_header(&stray[14..34]);
    stray[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    let mut tunnel = retunnel(&o1, &stray);
    let n = tunnel.len();
    assert_eq!(h.from_fabric(&mut tunnel, 0, n, NOW), HostVerdict::Drop(HostDrop::FragmentUnknown));
}

#[test]
fn a_fragment_identification_used_again_follows_the_newest_first_fragment() {
    let mut mux = mux();
    let client = IpAddr::from([198, 18, 3, 4]);
    let payload: Vec<u8> = (0..40u8).collect();
    // split_in_two gives every datagram the identification 0x4242, as a sender's counter that
    // came round again would.
    let datagram = |port| frame(client, port, IpAddr::from(VIP), 53, None, &payload);
    let (first_a, _) = split_in_two(&datagram(5353));
    let (mut oa, host_a, _) = through_mux(&mut mux, &first_a);
    // At the MUX: a datagram to another host; its later fragment goes there.
    let (first_b, later_b) = (5354..6000u16)
        .map(|port| split_in_two(&datagram(port)))
        .find(|(first, _)| through_mux(&mut mux, first).1 != host_a)
        .expect("a datagram to another host");
    let (_, to, _) = through_mux(&mut mux, &first_b);
    assert_eq!(through_mux(&mut mux, &later_b).1, to, "the later fragment follows the newest first one");
    // At a host: a datagram to another backend of the same host.
    let mut h = host(host_a, ReturnPath::Direct, two_hosts(1024));
    let n = oa.len();
    let HostVerdict::Deliver { backend: ba, .. } = h.from_fabric(&mut oa, 0, n, NOW) else { panic!() };
    let (bb, later) = (6000..7000u16)
        .find_map(|port| {
            let (first, later) = split_in_two(&datagram(port));
            let (mut o, to, _) = through_mux(&mut mux, &first);
            let n = o.len();
            // 50 s later: the record made for the first datagram lives one minute.
            let HostVerdict::Deliver { backend, .. } = h.from_fabric(&mut o, 0, n, NOW + 50) else { return None };
            (to == host_a && backend != ba).then_some((backend, later))
        })
        .expect("a datagram to another backend of the host");
    let (mut o, to, _) = through_mux(&mut mux, &later);
    assert_eq!(to, host_a);
    let n = o.len();
    // Past the first record's minute, within the second's.
    let HostVerdict::Deliver { backend, start, len } = h.from_fabric(&mut o, 0, n, NOW + 100) else { panic!() };
    assert_eq!(backend, bb, "the later fragment reaches the newest first fragment's backend");
    let f = &o[start..start + len];
    assert_eq!(IpAddr::from([f[30], f[31], f[32], f[33]]), h.local_backends()[bb].address);
}

/// An ICMPv4 error from `src` to `dst` quoting `quoted` (an IP packet; 28 bytes of it are quoted).
fn icmp4_error(src: [u8; 4], dst: [u8; 4], frag_needed: bool, quoted: &[u8]) -> Vec<u8> {
    use etherparse::icmpv4::DestUnreachableHeader;
    let t = if frag_needed {
        DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }
    } else {
        DestUnreachableHeader::Port
    };
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 5, 10])
        .ipv4(src, dst, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(t))
        .write(&mut v, &quoted[..28])
        .unwrap();
    v
}

/// Outer addresses, the quoted (src, sport, dst, dport), after checking the ICMP and quoted IPv4
/// checksums.
fn icmp4_seen(f: &[u8]) -> (IpAddr, IpAddr, (IpAddr, u16, IpAddr, u16)) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!() };
    let h = ip.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum);
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else { panic!("ICMPv4") };
    let want = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum;
    assert_eq!(icmp.checksum(), want, "ICMP checksum");
    let q = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).unwrap().to_header();
    assert_eq!(q.calc_header_checksum(), q.header_checksum, "quoted IPv4 header checksum");
    let l4 = &icmp.payload()[20..];
    let ports = (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]));
    (
        IpAddr::from(h.source),
        IpAddr::from(h.destination),
        (IpAddr::from(q.source), ports.0, IpAddr::from(q.destination), ports.1),
    )
}

#[test]
fn icmp_errors_are_translated_both_ways_with_their_quotes() {
    let mut mux = mux();
    let client = IpAddr::from([198, 18, 4, 4]);
    let (port, outer) = syn_to_host_a(&mut mux, client);
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    let (backend, dip) = deliver_syn(&mut h, &outer);
    // A router on the way to the client says the VIP's response was too big.
    let response = frame(IpAddr::from(VIP), 80, client, port, Some(false), &[0u8; 64]);
    let err = icmp4_error([203, 0, 113, 1], VIP, true, &response[14..]);
    let (mut o, to, _) = through_mux(&mut mux, &err);
    assert_eq!(to, HOST_A, "the MUX steers the error by the flow it quotes");
    let n = o.len();
    let HostVerdict::Deliver { backend: b, start, len } = h.from_fabric(&mut o, 0, n, NOW) else { panic!("delivered") };
    assert_eq!(b, backend);
    let (src, dst, quote) = icmp4_seen(&o[start..start + len]);
    assert_eq!((src, dst), (IpAddr::from([203, 0, 113, 1]), dip), "outer destination translated");
    assert_eq!(quote, (dip, 8080, client, port), "the quote is the packet as the backend sent it");
    // The backend says a request's port is unreachable: the client must see the VIP in both places.
    let request = frame(client, port, dip, 8080, Some(false), b"");
    let err = icmp4_error(
        match dip {
            IpAddr::V4(a) => a.octets(),
            _ => unreachable!(),
        },
        [198, 18, 4, 4],
        false,
        &request[14..],
    );
    let mut b = with_headroom(&err);
    let HostVerdict::Transmit { start, len } = h.from_backend(&mut b, HEADROOM, err.len(), NOW) else { panic!("sent") };
    let (src, dst, quote) = icmp4_seen(&b[start..start + len]);
    assert_eq!((src, dst), (IpAddr::from(VIP), client));
    assert_eq!(quote, (client, port, IpAddr::from(VIP), 80));
    // An error about no connection of this host is dropped and counted.
    let stray =
        icmp4_error([203, 0, 113, 1], VIP, true, &frame(IpAddr::from(VIP), 80, client, 1, Some(false), b"")[14..]);
    let mut tunnel = retunnel(&o, &stray);
    let n = tunnel.len();
    assert_eq!(h.from_fabric(&mut tunnel, 0, n, NOW), HostVerdict::Drop(HostDrop::IcmpUntranslated));
}

/// The tunnel (IPv4 underlay, 50 bytes of outer headers) of `outer` around another inner frame,
/// with the outer lengths and checksum fixed.
fn retunnel(outer: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut t = [&outer[..50], inner].concat();
    let n = t.len();
    t[16..18].copy_from_slice(&((n - 14) as u16).to_be_bytes());
    t[24..26].fill(0);
    let c = lb_core::wire::checksum::ipv4_header(&t[14..34]);
    t[24..26].copy_from_slice(&c.to_be_bytes());
    t[38..40].copy_from_slice(&((n - 34) as u16).to_be_bytes());
    t
}

#[test]
fn a_flow_table_too_small_never_leaks_or_double_frees_a_port() {
    // 8 flows of capacity: new connections keep evicting old ones (and sometimes their own first
    // entry). Whatever is evicted releases its port exactly once.
    let node = HostNode { snat_quarantine_secs: 0, ..host_node_flows(HOST_A, ReturnPath::Direct, 8) };
    let mut h = HostAgent::new(node, two_hosts(64)).unwrap();
    for i in 0..400u32 {
        let tcp = i % 3 == 0;
        let dst = IpAddr::V4(Ipv4Addr::new(93, 184, (i >> 8) as u8, i as u8));
        let f = frame(v4((i % 2) as u8), 10000 + i as u16, dst, 443, tcp.then_some(true), b"x");
        let mut buf = with_headroom(&f);
        let v = h.from_backend(&mut buf, HEADROOM, f.len(), NOW);
        assert!(matches!(v, HostVerdict::Transmit { .. } | HostVerdict::Drop(HostDrop::FlowTableFull)), "{i}: {v:?}");
        let c = h.snat_counters();
        let live = u64::from(h.snat_ports_in_use(0) + h.snat_ports_in_use(1));
        assert!(c.allocated + c.shared >= c.released + live, "{i}: {c:?}, {live} in use");
        assert!(h.flows().len() <= h.flows().slots());
    }
    assert!(h.flows().counters().evicted > 0, "the table was too small");
    h.expire(NOW + 3600, usize::MAX >> 1, |_, _| {});
    let c = h.snat_counters();
    assert_eq!((h.snat_ports_in_use(0), h.snat_ports_in_use(1), h.flows().len()), (0, 0, 0));
    assert_eq!(c.allocated + c.shared, c.released, "every port released exactly once: {c:?}");
}

#[test]
fn inbound_nat_rules_and_pools_reach_their_member_on_its_port() {
    // SSH to each web VM: a NAT pool (50000 + i -> member i, port 22) and a NAT rule (60001 -> vm1:22).
    let mut lb = two_hosts(1024);
    lb.nat_pools.push(nat_pool("SSH-Pool", 0, Protocol::Tcp, 50000..=50002, 22, 0));
    lb.nat_rules.push(nat_rule("RDP-vm1", 0, Protocol::Tcp, 60001, 3389, (0, 1)));
    let mut m = mux();
    m.update(lb.clone()).unwrap();
    let mut hosts: HashMap<[u8; 4], HostAgent> =
        [HOST_A, HOST_B].iter().map(|&h| (h, host(h, ReturnPath::ViaMux, lb.clone()))).collect();
    let client = IpAddr::from([198, 18, 9, 9]);
    for (fport, member, bport) in [(50000u16, 0u8, 22u16), (50001, 1, 22), (50002, 2, 22), (60001, 1, 3389)] {
        let f = frame(client, 41000, IpAddr::from(VIP), fport, Some(true), b"ssh");
        let (mut outer, to, tag) = through_mux(&mut m, &f);
        assert_eq!(tag, backend_tag(v4(member)), "the MUX picks the rule's member");
        let h = hosts.get_mut(&to).unwrap();
        let n = outer.len();
        let HostVerdict::Deliver { start, len, .. } = h.from_fabric(&mut outer, 0, n, NOW) else { panic!("{fport}") };
        let s = seen(&outer[start..start + len]);
        assert_eq!((s.dst, s.dport), (v4(member), bport), "port {fport}");
        // The answer leaves from the VIP and the frontend port.
        let back = frame(v4(member), bport, client, 41000, Some(false), b"");
        let mut rb = with_headroom(&back);
        let HostVerdict::Transmit { start, len } = h.from_backend(&mut rb, HEADROOM, back.len(), NOW) else { panic!() };
        let out = to_client(&mut m, &rb[start..start + len], ReturnPath::ViaMux, to);
        let s = seen(&out);
        assert_eq!((s.src, s.sport, s.dst, s.dport), (IpAddr::from(VIP), fport, client, 41000));
    }
}

#[test]
fn drop_reasons_are_listed_in_counter_order_with_their_names() {
    for (i, r) in HostDrop::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
        assert_eq!(r.c_name().to_str().unwrap(), r.name());
    }
    assert_eq!(HostDrop::IcmpUntranslated.name(), "icmp_untranslated");
    assert_eq!(HostDrop::SnatExhausted.name(), "snat_exhausted");
}

#[test]
fn a_shared_port_never_takes_a_connection_idle_past_its_timeout_but_not_yet_removed() {
    // vm0 has 8 SNAT ports: eight connections to eight web servers take them all, and a ninth
    // connection shares a port whose connections all go elsewhere.
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(8));
    let server = |i: u8| IpAddr::from([93, 184, 216, i]);
    let open = |h: &mut HostAgent, sport: u16, dst: IpAddr, syn: bool, now: u32| {
        let f = frame(v4(0), sport, dst, 443, Some(syn), b"");
        let mut buf = with_headroom(&f);
        match h.from_backend(&mut buf, HEADROOM, f.len(), now) {
            HostVerdict::Transmit { start, len } => Some(seen(&buf[start..start + len]).sport),
            _ => None,
        }
    };
    let ports: Vec<u16> = (0..8u8).map(|i| open(&mut h, 10000 + u16::from(i), server(i), true, NOW).unwrap()).collect();
    for i in 0..8u8 {
        assert!(open(&mut h, 10000 + u16::from(i), server(i), false, NOW + 1).is_some(), "established");
    }
    // The connections to servers 1-7 go on; the one to server 0 idles past its 4 minutes, and no
    // sweep has removed it yet, so its port is still its own (released, it would be quarantined).
    for i in 1..8u8 {
        assert!(open(&mut h, 10000 + u16::from(i), server(i), false, NOW + 200).is_some());
    }
    let shared =
        open(&mut h, 20000, server(0), true, NOW + 250).expect("a port shared with another server's connection");
    assert_ne!(shared, ports[0], "the idle connection's 5-tuple, reused at once");
    assert!(ports[1..].contains(&shared));
}

#[test]
fn a_reload_that_rebuilds_the_snat_allocator_keeps_the_quarantine() {
    // vm0's connection to a web server on SNAT port p ends (RST): p waits out its 60 s quarantine.
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    let web = IpAddr::from([93, 184, 216, 34]);
    let send = |h: &mut HostAgent, sport: u16, flags: u8, now: u32| {
        let mut f = frame(v4(0), sport, web, 443, Some(flags == 0x02), b"");
        f[34 + 13] = flags;
        fix_tcp_checksum(&mut f);
        let mut buf = with_headroom(&f);
        match h.from_backend(&mut buf, HEADROOM, f.len(), now) {
            HostVerdict::Transmit { start, len } => Some(seen(&buf[start..start + len]).sport),
            _ => None,
        }
    };
    let p = send(&mut h, 30000, 0x02, NOW).unwrap();
    assert!(send(&mut h, 30000, 0x04, NOW + 1).is_some(), "the RST goes out and ends the connection");
    assert_eq!(h.snat_ports_in_use(0), 0);
    // A reload that changes the blocks (fewer ports a backend) builds a new allocator; p is still
    // in vm0's new block, and a new connection to the same server must not get it yet.
    h.update(two_hosts(512)).unwrap();
    let q = send(&mut h, 30001, 0x02, NOW + 2).unwrap();
    assert_ne!(q, p, "port {p} handed out again 1 s after its connection ended");
}

#[test]
fn a_half_closed_connection_lives_until_both_sides_have_closed() {
    let mut mux = mux();
    let client = IpAddr::from([198, 18, 7, 8]);
    let (port, outer) = syn_to_host_a(&mut mux, client);
    let mut h = host(HOST_A, ReturnPath::Direct, two_hosts(1024));
    let (_, dip) = deliver_syn(&mut h, &outer);
    let tcp_at = 34;
    let with_flags = |mut f: Vec<u8>, flags: u8| {
        f[tcp_at + 13] = flags;
        fix_tcp_checksum(&mut f);
        f
    };
    let from_backend = |h: &mut HostAgent, f: &[u8], now: u32| {
        let mut b = with_headroom(f);
        h.from_backend(&mut b, HEADROOM, f.len(), now)
    };
    let from_client = |h: &mut HostAgent, mux: &mut Mux, f: &[u8], now: u32| {
        let (mut o, _, _) = through_mux(mux, f);
        let n = o.len();
        h.from_fabric(&mut o, 0, n, now)
    };
    // Handshake, then the client sends its request and closes its side (FIN).
    let synack = with_flags(frame(dip, 8080, client, port, Some(false), b""), 0x12);
    assert!(matches!(from_backend(&mut h, &synack, NOW), HostVerdict::Transmit { .. }));
    let request = frame(client, port, IpAddr::from(VIP), 80, Some(false), b"GET / HTTP/1.0\r\n\r\n");
    assert!(matches!(from_client(&mut h, &mut mux, &request, NOW + 1), HostVerdict::Deliver { .. }));
    let fin = with_flags(frame(client, port, IpAddr::from(VIP), 80, Some(false), b""), 0x11);
    assert!(matches!(from_client(&mut h, &mut mux, &fin, NOW + 1), HostVerdict::Deliver { .. }));
    // The server thinks for 30 s (three closing timeouts), then answers and closes its side.
    h.expire(NOW + 31, 1 << 20, |_, _| {});
    assert_eq!(h.flows().len(), 2, "half closed: the connection stays");
    let answer = frame(dip, 8080, client, port, Some(false), b"HTTP/1.0 200 OK\r\n\r\n");
    let v = from_backend(&mut h, &answer, NOW + 31);
    assert!(matches!(v, HostVerdict::Transmit { .. }), "the server's answer after the client's FIN: {v:?}");
    let server_fin = with_flags(frame(dip, 8080, client, port, Some(false), b""), 0x11);
    assert!(matches!(from_backend(&mut h, &server_fin, NOW + 32), HostVerdict::Transmit { .. }));
    // Both sides closed: the short closing timeout.
    h.expire(NOW + 32 + 11, 1 << 20, |_, _| {});
    assert_eq!(h.flows().len(), 0, "closed both ways: gone after the closing timeout");
}

/// A backend's own MAC.
const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 0xbe, 1];

/// A client port whose SYN to `vip`:80 the MUX sends to host A, and the tunnelled SYN (`mss`: with
/// that MSS option).
fn syn_to_host_a_at(mux: &mut Mux, client: IpAddr, vip: IpAddr, mss: Option<u16>) -> (u16, Vec<u8>) {
    (40000..41000u16)
        .find_map(|p| {
            let f = match mss {
                Some(m) => syn_with_mss(client, p, vip, 80, None, m),
                None => frame(client, p, vip, 80, Some(true), b""),
            };
            let (o, h, _) = through_mux(mux, &f);
            (h == HOST_A).then_some((p, o))
        })
        .expect("a client port the MUX sends to host A")
}

/// A frame from the fabric through the host agent: delivered, with where and to which backend.
fn delivered(h: &mut HostAgent, outer: &[u8]) -> (usize, Vec<u8>) {
    let mut buf = outer.to_vec();
    let n = buf.len();
    let HostVerdict::Deliver { backend, start, len } = h.from_fabric(&mut buf, 0, n, NOW) else {
        panic!("not delivered")
    };
    (backend, buf[start..start + len].to_vec())
}

/// A frame from a backend through the host agent, or the drop reason.
fn from_backend(h: &mut HostAgent, f: &[u8]) -> Result<HostVerdict, HostDrop> {
    let mut buf = with_headroom(f);
    match h.from_backend(&mut buf, HEADROOM, f.len(), NOW) {
        HostVerdict::Drop(r) => Err(r),
        v => Ok(v),
    }
}

#[test]
fn frames_are_delivered_to_the_backends_mac_once_it_is_known() {
    let mut mux = mux();
    let mut node = Node::new(NodeRole::Host(host_node(HOST_A, ReturnPath::ViaMux)), two_hosts(1024)).unwrap();
    assert_eq!(node.local_backend_addresses(), vec![v4(0), v4(1), v6(0)], "host A's backends, each once");
    let client = IpAddr::from([198, 18, 9, 9]);
    let (port, syn) = syn_to_host_a(&mut mux, client);
    let h = node.host().unwrap();
    // Before anything is known: as the MUX sent it (today's behaviour).
    let (backend, f) = delivered(h, &syn);
    let dip = h.local_backends()[backend].address;
    assert_eq!((&f[..6], &f[6..12]), (&MUX_MAC.0[..], &CLIENT_MAC[..]), "the client side's MACs");
    // The backend answers from its own MAC: learnt.
    let mut synack = frame(dip, 8080, client, port, Some(false), b"");
    synack[6..12].copy_from_slice(&BACKEND_MAC);
    assert!(matches!(from_backend(h, &synack), Ok(HostVerdict::Transmit { .. })));
    let ack = frame(client, port, IpAddr::from(VIP), 80, Some(false), b"hello");
    let (outer, to, _) = through_mux(&mut mux, &ack);
    assert_eq!(to, HOST_A);
    let (_, f) = delivered(h, &outer);
    assert_eq!((&f[..6], &f[6..12]), (&BACKEND_MAC[..], &HOST_MAC.0[..]), "to the backend, from the host");
    let s = seen(&f);
    assert_eq!((s.src, s.dst, s.dport, s.payload.as_slice()), (client, dip, 8080, &b"hello"[..]));
    // The program's neighbour table says otherwise (the backend moved its interface).
    let moved = MacAddr([2, 0, 0, 0, 0xbe, 2]);
    node.set_backend_mac(dip, moved);
    let (_, f) = delivered(node.host().unwrap(), &outer);
    assert_eq!((&f[..6], &f[6..12]), (&moved.0[..], &HOST_MAC.0[..]));
    // Kept across a reload, and for a backend before it ever sent a frame.
    node.update(two_hosts(1024)).unwrap();
    let (_, f) = delivered(node.host().unwrap(), &outer);
    assert_eq!(&f[..6], &moved.0);
    let other = if dip == v4(0) { v4(1) } else { v4(0) };
    let other_mac = MacAddr([2, 0, 0, 0, 0xbe, 3]);
    node.set_backend_mac(other, other_mac);
    let mut reached_other = false;
    for c in 1..200u32 {
        let (p, syn) = syn_to_host_a(&mut mux, IpAddr::from(client4(c)));
        let (b, f) = delivered(node.host().unwrap(), &syn);
        let a = node.host().unwrap().local_backends()[b].address;
        let want = if a == other { other_mac } else { moved };
        assert_eq!(&f[..6], &want.0, "client {c} port {p} to {a}");
        reached_other |= a == other;
    }
    assert!(reached_other);
    // The reset path: an idle connection's RST to the backend goes to its MAC.
    let mut out = Vec::new();
    let h = node.host().unwrap();
    h.expire(NOW + 4 * 60 + 10, 1 << 20, |to, f| out.push((to, f.to_vec())));
    let to_dip: Vec<_> = out
        .iter()
        .filter(|(to, f)| matches!(to, HostEgress::Backend(_)) && seen(f).dst == dip && seen(f).dport == 8080)
        .collect();
    assert!(!to_dip.is_empty(), "resets to {dip}");
    for (_, f) in to_dip {
        assert_eq!(&f[..6], &moved.0, "the reset goes to the backend's MAC");
        assert!(seen(f).tcp_flags.1, "RST");
    }
}

#[test]
fn responses_leave_for_the_next_hop_the_program_set_and_wait_while_there_is_none() {
    let mut mux = mux();
    let mut node = Node::new(NodeRole::Host(host_node(HOST_A, ReturnPath::ViaMux)), two_hosts(1024)).unwrap();
    // Its MUX, and host B, which a second chance may forward to.
    assert_eq!(node.underlay_peers(), vec![IpAddr::from(MUX_IP), IpAddr::from(HOST_B)]);
    let client = IpAddr::from([198, 18, 9, 10]);
    let (port, syn) = syn_to_host_a(&mut mux, client);
    let (backend, _) = delivered(node.host().unwrap(), &syn);
    let dip = node.host().unwrap().local_backends()[backend].address;
    let response = frame(dip, 8080, client, port, Some(false), b"response");
    let out_mac = |node: &mut Node| match from_backend(node.host().unwrap(), &response) {
        Ok(HostVerdict::Transmit { .. }) => {
            let mut buf = with_headroom(&response);
            let HostVerdict::Transmit { start, .. } =
                node.host().unwrap().from_backend(&mut buf, HEADROOM, response.len(), NOW)
            else {
                unreachable!()
            };
            assert_eq!(&buf[start + 6..start + 12], &HOST_MAC.0, "from the host's MAC");
            Ok(<[u8; 6]>::try_from(&buf[start..start + 6]).unwrap())
        }
        Ok(v) => panic!("{v:?}"),
        Err(r) => Err(r),
    };
    assert_eq!(out_mac(&mut node), Ok(GATEWAY.0));
    let hop = MacAddr([2, 0, 0, 0, 0x77, 5]);
    node.set_next_hop(IpAddr::from(MUX_IP), hop);
    assert_eq!(out_mac(&mut node), Ok(hop.0));
    node.update(two_hosts(1024)).unwrap();
    assert_eq!(out_mac(&mut node), Ok(hop.0), "kept across a reload");
    // The gateway gone and the MUX's next hop forgotten: nothing leaves, counted.
    node.set_gateway_mac(MacAddr::default());
    assert_eq!(out_mac(&mut node), Ok(hop.0), "the MUX's own next hop does not need the gateway");
    node.clear_next_hop(IpAddr::from(MUX_IP));
    assert_eq!(out_mac(&mut node), Err(HostDrop::NoNextHop));
    let drops: Vec<_> = node.drops().filter(|(_, n)| *n > 0).map(|(c, n)| (c.name(), n)).collect();
    assert_eq!(drops, vec![("no_next_hop", 1)]);
    let gateway2 = MacAddr([2, 0, 0, 0, 0, 2]);
    node.set_gateway_mac(gateway2);
    assert_eq!(out_mac(&mut node), Ok(gateway2.0));
    // Direct Server Return goes to the gateway; without one it waits.
    let mut direct = host_node(HOST_A, ReturnPath::Direct);
    direct.base.gateway_mac = MacAddr::default();
    let mut h = HostAgent::new(direct, two_hosts(1024)).unwrap();
    let (backend, _) = delivered(&mut h, &syn);
    let dip = h.local_backends()[backend].address;
    let response = frame(dip, 8080, client, port, Some(false), b"response");
    assert_eq!(from_backend(&mut h, &response), Err(HostDrop::NoNextHop));
    h.set_gateway_mac(GATEWAY);
    let mut buf = with_headroom(&response);
    let HostVerdict::Transmit { start, .. } = h.from_backend(&mut buf, HEADROOM, response.len(), NOW) else { panic!() };
    assert_eq!((&buf[start..start + 6], &buf[start + 6..start + 12]), (&GATEWAY.0[..], &HOST_MAC.0[..]));
}

#[test]
fn a_backends_packet_too_big_for_the_tunnel_gets_the_icmp_error_back() {
    let mut mux = mux();
    let mut h = HostAgent::new(host_node_mtu(HOST_A, ReturnPath::ViaMux, 1500), two_hosts(1024)).unwrap();
    let client = IpAddr::from([198, 18, 9, 11]);
    let (port, syn) = syn_to_host_a(&mut mux, client);
    let (backend, _) = delivered(&mut h, &syn);
    let dip = h.local_backends()[backend].address;
    let response = |ip_len| {
        let mut f = sized_frame(dip, 8080, client, port, Some(false), ip_len);
        f[6..12].copy_from_slice(&BACKEND_MAC);
        f
    };
    assert!(matches!(from_backend(&mut h, &response(1450)), Ok(HostVerdict::Transmit { .. })), "1450 fits");
    let big = response(1451);
    let Ok(HostVerdict::Deliver { backend: to, start, len }) = from_backend(&mut h, &big) else { panic!() };
    assert_eq!(to, backend, "back to the backend that sent it");
    let mut buf = with_headroom(&big);
    h.from_backend(&mut buf, HEADROOM, big.len(), NOW);
    let e = too_big(&buf[start..start + len]);
    assert_eq!(e.macs, (BACKEND_MAC, HOST_MAC.0));
    assert_eq!((e.src, e.dst), (IpAddr::from(HOST_A), dip), "from the host's underlay address");
    assert_eq!((e.mtu, e.ip_len, e.hop_limit), (1450, 576, 64));
    assert_eq!(e.quote, big[14..14 + 548], "the packet as the backend sent it");
    assert_eq!(h.counters().too_big, 2);
    assert_eq!(h.counters().responses.packets, 1, "only the one that fitted went out");
    // DF clear: dropped as before.
    let mut no_df = response(1451);
    clear_dont_fragment(&mut no_df);
    assert_eq!(from_backend(&mut h, &no_df), Err(HostDrop::Encap));
    // IPv6 over the IPv4 underlay: the error comes from the address the packet was sent to.
    let client6 = lb_fixtures::client(11, true);
    let (port6, syn6) = syn_to_host_a_at(&mut mux, client6, IpAddr::from(VIP6), None);
    let (_, f) = delivered(&mut h, &syn6);
    let dip6 = seen(&f).dst;
    let mut big6 = sized_frame(dip6, 8080, client6, port6, Some(false), 1451);
    big6[6..12].copy_from_slice(&BACKEND_MAC);
    let mut buf = with_headroom(&big6);
    let HostVerdict::Deliver { start, len, .. } = h.from_backend(&mut buf, HEADROOM, big6.len(), NOW) else { panic!() };
    let e = too_big(&buf[start..start + len]);
    assert_eq!((e.src, e.dst, e.mtu, e.ip_len), (client6, dip6, 1450, 1280));
    assert_eq!(e.quote, big6[14..14 + 1232]);
    // A large first datagram of a new SNAT flow: the error, and no SNAT port taken.
    let local = h.local_backends().iter().position(|l| l.address == v4(0)).unwrap();
    let udp = sized_frame(v4(0), 5353, IpAddr::from([93, 184, 216, 34]), 53, None, 1451);
    let Ok(HostVerdict::Deliver { backend, .. }) = from_backend(&mut h, &udp) else { panic!() };
    assert_eq!(backend, local);
    assert_eq!(h.snat_ports_in_use(local), 0);
    assert_eq!(h.counters().too_big, 4);
    // Direct Server Return has no tunnel to outgrow.
    let mut dsr = HostAgent::new(host_node_mtu(HOST_A, ReturnPath::Direct, 1500), two_hosts(1024)).unwrap();
    delivered(&mut dsr, &syn);
    assert!(matches!(from_backend(&mut dsr, &response(1451)), Ok(HostVerdict::Transmit { .. })));
}

#[test]
fn the_mss_of_syns_and_syn_acks_is_lowered_to_the_clamp_both_ways() {
    let mut mux = mux();
    let node = HostNode { mss_clamp: Some(1400), ..host_node(HOST_A, ReturnPath::ViaMux) };
    let mut h = HostAgent::new(node, two_hosts(1024)).unwrap();
    let client = IpAddr::from([198, 18, 9, 12]);
    // The client's SYN, delivered.
    let (port, syn) = syn_to_host_a_at(&mut mux, client, IpAddr::from(VIP), Some(1460));
    let (_, f) = delivered(&mut h, &syn);
    let s = seen(&f);
    assert_eq!(mss_of(&f), Some(1400), "lowered");
    let dip = s.dst;
    // The backend's SYN-ACK, out through the MUX.
    let out = |h: &mut HostAgent, mux: &mut Mux, f: &[u8]| {
        let mut buf = with_headroom(f);
        let HostVerdict::Transmit { start, len } = h.from_backend(&mut buf, HEADROOM, f.len(), NOW) else {
            panic!("sent")
        };
        to_client(mux, &buf[start..start + len], ReturnPath::ViaMux, HOST_A)
    };
    let back = out(&mut h, &mut mux, &syn_with_mss(dip, 8080, client, port, Some(1001), 8960));
    let s = seen(&back);
    assert_eq!((s.src, s.sport, s.tcp_flags.0, s.tcp_flags.2), (IpAddr::from(VIP), 80, true, true));
    assert_eq!(mss_of(&back), Some(1400));
    // Never raised.
    let back = out(&mut h, &mut mux, &syn_with_mss(dip, 8080, client, port, Some(1001), 1200));
    assert_eq!(mss_of(&back), Some(1200));
    seen(&back);
    // A connection the backend opens: its SYN, and the SYN-ACK coming back.
    let remote = IpAddr::from([93, 184, 216, 34]);
    let syn_out = out(&mut h, &mut mux, &syn_with_mss(v4(0), 33000, remote, 443, None, 1460));
    let s = seen(&syn_out);
    assert_eq!((s.src, mss_of(&syn_out)), (IpAddr::from(SNAT_IP), Some(1400)));
    let reply = syn_with_mss(remote, 443, IpAddr::from(SNAT_IP), s.sport, Some(1001), 1460);
    let (outer, to, _) = through_mux(&mut mux, &reply);
    assert_eq!(to, HOST_A);
    let (_, f) = delivered(&mut h, &outer);
    let s = seen(&f);
    assert_eq!((s.dst, s.dport, mss_of(&f)), (v4(0), 33000, Some(1400)));
    // Segments other than SYNs are not touched.
    let data = frame(client, port, IpAddr::from(VIP), 80, Some(false), b"data");
    let (outer, _, _) = through_mux(&mut mux, &data);
    let (_, f) = delivered(&mut h, &outer);
    assert_eq!((mss_of(&f), seen(&f).payload), (None, b"data".to_vec()));
    // IPv6 segments are clamped no lower than 1220; IPv4 ones to 536.
    let node = HostNode { mss_clamp: Some(536), ..host_node(HOST_A, ReturnPath::ViaMux) };
    let mut h = HostAgent::new(node, two_hosts(1024)).unwrap();
    let (_, syn6) = syn_to_host_a_at(&mut mux, lb_fixtures::client(12, true), IpAddr::from(VIP6), Some(1440));
    let (_, f) = delivered(&mut h, &syn6);
    seen(&f);
    assert_eq!(mss_of(&f), Some(1220));
    let (_, syn4) = syn_to_host_a_at(&mut mux, IpAddr::from([198, 18, 9, 13]), IpAddr::from(VIP), Some(1440));
    assert_eq!(mss_of(&delivered(&mut h, &syn4).1), Some(536));
    // Out of bounds: refused.
    for bad in [535, 9001] {
        let node = HostNode { mss_clamp: Some(bad), ..host_node(HOST_A, ReturnPath::ViaMux) };
        assert_eq!(HostAgent::new(node, two_hosts(1024)).err(), Some(HostError::MssClamp(bad)));
    }
}
