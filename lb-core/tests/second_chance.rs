//! Second chance (docs/design.md, "When a MUX dies after a backend was added"): a MUX that never
//! saw a connection steers its packets by the current Maglev table and flags them with the previous
//! table's backend; the host that does not know the connection forwards it to that backend's host.
//! Every frame is built and read back as bytes.

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_core::config::*;
use lb_core::paths::{backend_tag, HostAgent, HostVerdict, Mux, ReturnPath, Verdict};
use lb_fixtures::*;

const NOW: u32 = 1000;

/// [`two_hosts`] before vm2 (on host B) joined pool Web: vm0 and vm1, both on host A.
fn before() -> LoadBalancer {
    let mut lb = two_hosts(1024);
    lb.pools[0].backends.truncate(2);
    lb
}

fn host(addr: [u8; 4]) -> HostAgent {
    HostAgent::new(host_node(addr, ReturnPath::ViaMux), two_hosts(1024)).unwrap()
}

/// MUX B: it ran `before()`, then vm2 was added at `NOW`; it never saw the test's connections.
fn mux_b() -> Mux {
    let mut m = Mux::new(mux_node(7), before()).unwrap();
    m.set_clock(NOW);
    m.update(two_hosts(1024)).unwrap();
    m
}

/// What a VxLAN frame says: (outer source, outer destination, VNI, tag, flags byte of the second
/// reserved field, inner frame).
fn tunnel(outer: &[u8]) -> ([u8; 4], [u8; 4], u32, u32, u8, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(outer).expect("outer frame parses");
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("outer IPv4") };
    assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
    let Some(TransportSlice::Udp(u)) = &p.transport else { panic!("outer UDP") };
    assert_eq!(u.destination_port(), VXLAN_PORT);
    assert!(u.source_port() >= 49152);
    let vx = u.payload();
    assert_eq!(vx[0], 0x08, "VNI-valid flag");
    (
        ip.header().source(),
        ip.header().destination(),
        u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
        u32::from_be_bytes([0, vx[1], vx[2], vx[3]]),
        vx[7],
        vx[8..].to_vec(),
    )
}

/// A client's segment through a MUX: the VxLAN frame (in a buffer with headroom, at `HEADROOM`).
fn through(mux: &mut Mux, c: u32, syn: bool) -> Vec<u8> {
    let f = tcp4(client4(c), 40000, VIP, 80, syn);
    let mut buf = with_headroom(&f);
    let Verdict::Forward { start, len } = mux.process(&mut buf, HEADROOM, f.len(), NOW) else { panic!("forwards") };
    let mut out = vec![0u8; HEADROOM];
    out.extend_from_slice(&buf[start..start + len]);
    out
}

/// A VxLAN frame (at `HEADROOM` in `buf`) into a host agent.
fn into_host(h: &mut HostAgent, buf: &mut [u8]) -> HostVerdict {
    let len = buf.len() - HEADROOM;
    h.from_fabric(buf, HEADROOM, len, NOW)
}

/// The clients whose connection went to a backend on host A before vm2 joined and goes to vm2 on
/// host B now, with the backend they had.
fn moved_clients() -> Vec<(u32, IpAddr)> {
    let mut a = Mux::new(mux_node(7), before()).unwrap();
    let mut b = Mux::new(mux_node(7), two_hosts(1024)).unwrap();
    let moved: Vec<_> = (0..200)
        .filter_map(|c| {
            let (_, old_host, _, old_tag, _, _) = tunnel(&through(&mut a, c, true)[HEADROOM..]);
            let (_, new_host, _, _, _, _) = tunnel(&through(&mut b, c, true)[HEADROOM..]);
            assert_eq!(old_host, HOST_A);
            let old = [v4(0), v4(1)].into_iter().find(|&a| backend_tag(a) == old_tag).unwrap();
            (new_host == HOST_B).then_some((c, old))
        })
        .collect();
    assert!(moved.len() > 30, "about a third moved to vm2: {}", moved.len());
    moved
}

/// The MUX flags a non-SYN packet of a connection whose slot moved, with the old backend's tag, and
/// sends it to the new backend's host; a SYN is not flagged.
#[test]
fn mux_flags_moved_connections_with_the_old_backend() {
    let moved = moved_clients();
    let mut m = mux_b();
    for &(c, old) in &moved {
        let (src, dst, vni, tag, flags, _) = tunnel(&through(&mut m, c, false)[HEADROOM..]);
        assert_eq!((src, dst, vni), (MUX_IP, HOST_B, 0x1001));
        assert_eq!((tag, flags), (backend_tag(old), 0x01), "client {c}: flagged, the alternate named");
        // The flow is in the MUX's table now: no flag on its later packets.
        let (_, dst, _, tag, flags, _) = tunnel(&through(&mut m, c, false)[HEADROOM..]);
        assert_eq!((dst, tag, flags), (HOST_B, backend_tag(v4(2)), 0));
    }
    assert_eq!(m.counters().second_chance, moved.len() as u64);
    let mut m = mux_b();
    for &(c, _) in &moved {
        let (_, dst, _, _, flags, _) = tunnel(&through(&mut m, c, true)[HEADROOM..]);
        assert_eq!((dst, flags), (HOST_B, 0), "a SYN is a new connection");
    }
}

/// Host B, which does not know the connection, forwards a flagged packet to host A with the
/// alternate's tag and no flag, and the connection's later, unflagged packets after it; a flagged
/// packet of a connection it knows is delivered.
#[test]
fn host_forwards_a_second_chance_and_the_connection_after_it() {
    let (c, old) = moved_clients()[0];
    let mut m = mux_b();
    let mut host_b = host(HOST_B);
    let mut buf = through(&mut m, c, false);
    let inner_in = tunnel(&buf[HEADROOM..]).5;
    let HostVerdict::Transmit { start, len } = into_host(&mut host_b, &mut buf) else { panic!("forwarded") };
    let (src, dst, vni, tag, flags, inner) = tunnel(&buf[start..start + len]);
    assert_eq!((src, dst, vni, tag, flags), (HOST_B, HOST_A, 0x1001, backend_tag(old), 0));
    assert_eq!(inner, inner_in, "the inner frame untouched");
    assert_eq!(&buf[start..start + 6], &GATEWAY.0, "to the next hop");
    // Later packets: the MUX's flow hits, no flag; the redirect entry forwards them.
    for _ in 0..3 {
        let mut buf = through(&mut m, c, false);
        assert_eq!(tunnel(&buf[HEADROOM..]).4, 0);
        let HostVerdict::Transmit { start, len } = into_host(&mut host_b, &mut buf) else { panic!("redirected") };
        assert_eq!(tunnel(&buf[start..start + len]).1, HOST_A);
    }
    assert_eq!(host_b.counters().second_chance.packets, 4);
    assert_eq!(host_b.counters().inbound.packets, 0);
    // A reload that keeps the alternate on host A keeps the redirect.
    let mut lb = two_hosts(1024);
    lb.rules[0].idle_timeout = IdleTimeout::from_minutes(10).unwrap();
    host_b.update(lb).unwrap();
    let mut buf = through(&mut m, c, false);
    let HostVerdict::Transmit { start, len } = into_host(&mut host_b, &mut buf) else { panic!("still redirected") };
    assert_eq!(tunnel(&buf[start..start + len]).1, HOST_A);
    assert_eq!(host_b.counters().second_chance.packets, 5);
    // A flagged packet of a connection host B knows (opened by its SYN) is delivered.
    let (c2, _) = moved_clients()[1];
    let mut fresh = mux_b();
    let mut syn = through(&mut Mux::new(mux_node(7), two_hosts(1024)).unwrap(), c2, true);
    assert!(matches!(into_host(&mut host_b, &mut syn), HostVerdict::Deliver { .. }));
    let mut ack = through(&mut fresh, c2, false);
    assert_eq!(tunnel(&ack[HEADROOM..]).4, 0x01, "flagged");
    let HostVerdict::Deliver { start, len, .. } = into_host(&mut host_b, &mut ack) else { panic!("delivered") };
    assert_eq!(seen(&ack[start..start + len]).dst, v4(2));
    assert_eq!(host_b.counters().second_chance.packets, 5);
}

/// End to end: MUX A carries a connection to its backend on host A; vm2 joins on host B; MUX A dies
/// and MUX B, which never saw the connection, takes its next packets: they reach the same backend
/// through host B's second chance, and the backend's replies go out as before.
#[test]
fn a_connection_survives_its_mux_after_a_backend_was_added() {
    let (c, old) = moved_clients()[0];
    let mut mux_a = Mux::new(mux_node(7), before()).unwrap();
    let mut host_a = host(HOST_A);
    let mut host_b = host(HOST_B);
    // The handshake's first packets through MUX A, then vm2 joins (everyone reloads).
    for syn in [true, false] {
        let mut buf = through(&mut mux_a, c, syn);
        let HostVerdict::Deliver { start, len, .. } = into_host(&mut host_a, &mut buf) else { panic!("delivered") };
        assert_eq!(seen(&buf[start..start + len]).dst, old);
    }
    mux_a.update(two_hosts(1024)).unwrap();
    host_a.update(two_hosts(1024)).unwrap();
    host_b.update(two_hosts(1024)).unwrap();
    // MUX A still carries it by its flow.
    assert_eq!(tunnel(&through(&mut mux_a, c, false)[HEADROOM..]).1, HOST_A);
    // MUX A dies: MUX B takes the connection.
    let mut mux_b = mux_b();
    for _ in 0..3 {
        let mut buf = through(&mut mux_b, c, false);
        assert_eq!(tunnel(&buf[HEADROOM..]).1, HOST_B, "MUX B chooses vm2");
        let HostVerdict::Transmit { start, len } = into_host(&mut host_b, &mut buf) else { panic!("to host A") };
        let mut fwd = vec![0u8; HEADROOM];
        fwd.extend_from_slice(&buf[start..start + len]);
        let HostVerdict::Deliver { start, len, .. } = into_host(&mut host_a, &mut fwd) else { panic!("delivered") };
        let s = seen(&fwd[start..start + len]);
        assert_eq!((s.src, s.dst, s.sport, s.dport), (IpAddr::from(client4(c)), old, 40000, 8080));
        assert_eq!(s.payload, REQUEST);
    }
    // The backend's reply leaves host A for a MUX as before, from the VIP.
    let reply = frame(old, 8080, IpAddr::from(client4(c)), 40000, Some(false), b"HTTP/1.1 200 OK\r\n\r\n");
    let mut buf = with_headroom(&reply);
    let HostVerdict::Transmit { start, len } = host_a.from_backend(&mut buf, HEADROOM, reply.len(), NOW) else {
        panic!("reply sent")
    };
    let (src, dst, _, _, flags, inner) = tunnel(&buf[start..start + len]);
    assert_eq!((src, dst, flags), (HOST_A, MUX_IP, 0));
    let s = seen(&inner);
    assert_eq!((s.src, s.dst, s.sport, s.dport), (IpAddr::from(VIP), IpAddr::from(client4(c)), 80, 40000));
    assert_eq!(host_b.counters().second_chance.packets, 3);
    assert_eq!(host_b.counters().inbound.packets, 0, "vm2 never saw it");
}

/// A health change rebuilds the table too: when vm2 goes down, the connections it held move to
/// vm0 and vm1, and a MUX with no flow for them flags them with vm2's tag, until the window ends.
#[test]
fn a_health_change_gives_a_second_chance_too() {
    let mut lb = two_hosts(1024);
    lb.probes.push(http_probe("health", 8080, "/"));
    lb.rules[0].probe = Some(0);
    let mut a = Mux::new(mux_node(7), lb.clone()).unwrap();
    let on_vm2: Vec<u32> = (0..200).filter(|&c| tunnel(&through(&mut a, c, true)[HEADROOM..]).1 == HOST_B).collect();
    assert!(on_vm2.len() > 30);
    let down = |now: u32| {
        let mut m = Mux::new(mux_node(7), lb.clone()).unwrap();
        m.set_clock(now);
        for _ in 0..2 {
            m.report_probe(0, 0, 2, false).unwrap();
        }
        m
    };
    let mut m = down(NOW - 10);
    for &c in &on_vm2 {
        let (_, dst, _, tag, flags, _) = tunnel(&through(&mut m, c, false)[HEADROOM..]);
        assert_eq!((dst, tag, flags), (HOST_A, backend_tag(v4(2)), 0x01), "client {c}");
    }
    // Ten minutes after the change: no second chance any more.
    let mut m = down(NOW - 600);
    for &c in &on_vm2 {
        let (_, dst, _, _, flags, _) = tunnel(&through(&mut m, c, false)[HEADROOM..]);
        assert_eq!((dst, flags), (HOST_A, 0), "client {c}");
    }
    assert_eq!(m.counters().second_chance, 0);
}
