//! Cross-checks of the generator against etherparse (an independent parser)
//! and against a separately written ones'-complement sum.

use super::*;
use etherparse::defrag::IpDefragPool;
use etherparse::{
    Ethernet2HeaderSlice, IpPayloadSlice, Ipv4HeaderSlice, Ipv4Slice, Ipv6ExtensionSlice, Ipv6FragmentHeaderSlice,
    Ipv6HeaderSlice, Ipv6Slice, NetSlice, SingleVlanHeaderSlice, SlicedPacket, TransportSlice, UdpHeader, VlanSlice,
};
use std::collections::{BTreeMap, BTreeSet};

/// Independent RFC 1071 sum: returns the folded (not complemented) sum of
/// all the given byte strings, each taken as big-endian 16-bit words.
/// A region with a correct checksum in it sums to 0xffff.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut acc: u32 = 0;
    for part in parts {
        let mut i = 0;
        while i < part.len() {
            let hi = part[i] as u32;
            let lo = if i + 1 < part.len() { part[i + 1] as u32 } else { 0 };
            acc += (hi << 8) | lo;
            acc = (acc & 0xffff) + (acc >> 16);
            i += 2;
        }
    }
    acc as u16
}

fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    p
}

fn offset_in(frame: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - frame.as_ptr() as usize
}

fn ip_of_v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn ip_of_v6(a: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Re-parses `f` with etherparse and checks everything against `f.expected`.
fn check_frame(f: &GeneratedFrame) {
    let e = &f.expected;
    let b = &f.bytes[..];
    let ctx = format!("{:?} {:02x?}", f.kind, b);
    if f.kind == FrameKind::Ipv6Fragment {
        // etherparse releases before 0.20 decode the IPv6 Fragment header's
        // offset/M word in the wrong bit order, so these frames get a check that
        // reads that word by hand and holds whichever release is in use.
        check_ipv6_fragment(f, &ctx);
        return;
    }
    let p = SlicedPacket::from_ethernet(b).unwrap_or_else(|err| panic!("{err:?}: {ctx}"));
    check_link(f, &p, &ctx);
    let (src, dst, payload, fragment) = check_network(f, &p, &ctx);

    // Transport layer.
    match fragment {
        FragmentKind::Later => {
            assert!(p.transport.is_none());
            assert_eq!(e.l4_offset, None);
            assert_eq!((e.src_port, e.dst_port, e.tcp_flags), (0, 0, 0));
            return;
        }
        FragmentKind::First => {
            // etherparse does not slice fragmented transport; read the ports by hand.
            assert!(p.transport.is_none());
            check_first_fragment_l4(f, payload.payload, &ctx);
            return;
        }
        FragmentKind::None => {}
    }
    check_transport(f, &p, (src, dst), payload.payload, &ctx);
    if !matches!(f.kind, FrameKind::Icmpv4Error | FrameKind::Icmpv6Error) {
        assert_eq!(e.quoted, None);
    }
}

/// The Ethernet header and VLAN tags of `p` (`f` re-parsed) against `f.expected`.
fn check_link(f: &GeneratedFrame, p: &SlicedPacket<'_>, ctx: &str) {
    let e = &f.expected;
    let b = &f.bytes[..];
    // Ethernet: unicast MACs.
    assert_eq!(b[0] & 1, 0, "dst mac multicast: {ctx}");
    assert_eq!(b[6] & 1, 0, "src mac multicast: {ctx}");

    // VLANs.
    let vlans: Vec<u16> = match p.vlan() {
        None => vec![],
        Some(VlanSlice::SingleVlan(s)) => vec![s.vlan_identifier().value()],
        Some(VlanSlice::DoubleVlan(d)) => {
            vec![d.outer.vlan_identifier().value(), d.inner.vlan_identifier().value()]
        }
    };
    assert_eq!(vlans, e.vlans, "{ctx}");
    let tpid = u16::from_be_bytes([b[12], b[13]]);
    match e.vlans.len() {
        0 => {}
        1 => assert_eq!(tpid, 0x8100),
        2 => {
            assert_eq!(tpid, 0x88a8);
            assert_eq!(u16::from_be_bytes([b[16], b[17]]), 0x8100);
        }
        _ => unreachable!(),
    }
    for v in &e.vlans {
        assert!((1..=4094).contains(v));
    }
    assert_eq!(e.l3_offset, 14 + 4 * e.vlans.len());
}

/// The IP layer of `p` (`f` re-parsed) against `f.expected`: its addresses, its payload and which
/// fragment it is.
fn check_network<'a>(
    f: &GeneratedFrame,
    p: &SlicedPacket<'a>,
    ctx: &str,
) -> (IpAddr, IpAddr, IpPayloadSlice<'a>, FragmentKind) {
    let e = &f.expected;
    let net = p.net.as_ref().expect("no IP layer");
    let (src, dst, protocol, payload, fragment) = match net {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            let fragment = check_ipv4(f, ip, ctx);
            (ip_of_v4(h.source()), ip_of_v4(h.destination()), h.protocol().0, ip.payload().clone(), fragment)
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            let fragment = check_ipv6(f, ip, ctx);
            (ip_of_v6(h.source()), ip_of_v6(h.destination()), ip.payload().ip_number.0, ip.payload().clone(), fragment)
        }
        NetSlice::Arp(_) => panic!("ARP where IP was generated: {ctx}"),
    };
    assert_eq!(src, e.src, "{ctx}");
    assert_eq!(dst, e.dst, "{ctx}");
    assert_eq!(protocol, e.protocol, "{ctx}");
    assert_eq!(fragment, e.fragment, "{ctx}");
    assert_eq!(payload.fragmented, fragment != FragmentKind::None);
    (src, dst, payload, fragment)
}

/// An IPv4 header of `f`: offset, checksum, lengths, IHL and fragment flags. Returns which
/// fragment the packet is.
fn check_ipv4(f: &GeneratedFrame, ip: &Ipv4Slice<'_>, ctx: &str) -> FragmentKind {
    let e = &f.expected;
    let b = &f.bytes[..];
    assert!(!f.kind.is_ipv6(), "{ctx}");
    let h = ip.header();
    assert_eq!(offset_in(b, h.slice()), e.l3_offset);
    // Header checksum: etherparse's computation and ours agree with the field.
    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
    assert_eq!(ones_sum(&[h.slice()]), 0xffff, "ipv4 hdr checksum {ctx}");
    assert_eq!(usize::from(h.total_len()), b.len() - e.l3_offset);
    assert!(h.ttl() > 0);
    if f.kind == FrameKind::Ipv4TcpOptions {
        assert!((6..=15).contains(&h.ihl()), "{ctx}");
    } else {
        assert_eq!(h.ihl(), 5);
    }
    let off = h.fragments_offset().value();
    let fragment = match (off, h.more_fragments()) {
        (0, false) => FragmentKind::None,
        (0, true) => FragmentKind::First,
        _ => FragmentKind::Later,
    };
    if fragment != FragmentKind::None {
        assert!(!h.dont_fragment());
        if h.more_fragments() {
            assert_eq!(ip.payload().payload.len() % 8, 0);
        }
    } else if e.protocol == IPPROTO_TCP {
        assert!(h.dont_fragment(), "unfragmented TCP without DF: {ctx}");
    }
    fragment
}

/// An IPv6 header of `f` (not a fragment: those go to `check_ipv6_fragment`): offset, length and
/// the extension headers, in canonical order. Returns which fragment the packet is (none).
fn check_ipv6(f: &GeneratedFrame, ip: &Ipv6Slice<'_>, ctx: &str) -> FragmentKind {
    let e = &f.expected;
    let b = &f.bytes[..];
    assert!(f.kind.is_ipv6(), "{ctx}");
    let h = ip.header();
    assert_eq!(offset_in(b, h.slice()), e.l3_offset);
    assert_eq!(usize::from(h.payload_length()) + 40, b.len() - e.l3_offset);
    let mut order = Vec::new();
    for ext in ip.extensions().clone() {
        match ext {
            Ipv6ExtensionSlice::HopByHop(_) => order.push(0),
            Ipv6ExtensionSlice::DestinationOptions(_) => order.push(1),
            Ipv6ExtensionSlice::Routing(r) => {
                order.push(2);
                assert!([0, 2, 4].contains(&r.payload()[0]));
                assert_eq!(r.payload()[1], 0, "segments left");
            }
            Ipv6ExtensionSlice::Fragment(_) => panic!("unexpected fragment header: {ctx}"),
            Ipv6ExtensionSlice::Authentication(_) => panic!("unexpected AH"),
        }
    }
    let mut sorted = order.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(order, sorted, "extension headers out of order: {ctx}");
    if f.kind == FrameKind::Ipv6ExtHeaders {
        assert!(!order.is_empty());
    } else {
        assert!(order.is_empty());
    }
    FragmentKind::None
}

/// The L4 header at the front of a first fragment's payload `l4`, read by hand.
fn check_first_fragment_l4(f: &GeneratedFrame, l4: &[u8], ctx: &str) {
    let e = &f.expected;
    assert_eq!(Some(offset_in(&f.bytes, l4)), e.l4_offset, "{ctx}");
    assert_eq!(u16::from_be_bytes([l4[0], l4[1]]), e.src_port);
    assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), e.dst_port);
    if e.protocol == IPPROTO_TCP {
        assert_eq!(l4[13], e.tcp_flags);
        assert!(l4.len() >= usize::from(l4[12] >> 4) * 4, "TCP header split");
    } else {
        assert_eq!(e.protocol, IPPROTO_UDP);
        assert_eq!(e.tcp_flags, 0);
    }
}

/// The transport layer of a whole datagram of `f` (`p` re-parsed, `l4` its IP payload) from
/// `src` to `dst`: ports, flags, ICMP type, and every checksum, by etherparse and by hand.
fn check_transport(f: &GeneratedFrame, p: &SlicedPacket<'_>, (src, dst): (IpAddr, IpAddr), l4: &[u8], ctx: &str) {
    let e = &f.expected;
    let b = &f.bytes[..];
    let l4_len = l4.len();
    match p.transport.as_ref().expect("no transport layer") {
        TransportSlice::Tcp(t) => {
            assert_eq!(e.protocol, IPPROTO_TCP);
            assert_eq!(Some(offset_in(b, t.slice())), e.l4_offset, "{ctx}");
            assert_eq!(t.source_port(), e.src_port);
            assert_eq!(t.destination_port(), e.dst_port);
            assert_eq!(t.slice()[13], e.tcp_flags);
            assert!([SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST].contains(&e.tcp_flags));
            assert_eq!(t.syn(), e.tcp_flags & SYN != 0);
            assert!((5..=15).contains(&t.data_offset()));
            for opt in t.options_iterator() {
                opt.unwrap_or_else(|err| panic!("bad TCP option {err:?}: {ctx}"));
            }
            let ck = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => t.calc_checksum_ipv4(s.octets(), d.octets()),
                (IpAddr::V6(s), IpAddr::V6(d)) => t.calc_checksum_ipv6(s.octets(), d.octets()),
                _ => unreachable!(),
            }
            .unwrap();
            assert_eq!(ck, t.checksum(), "tcp checksum {ctx}");
            let ph = pseudo_header(src, dst, IPPROTO_TCP, l4_len);
            assert_eq!(ones_sum(&[&ph, l4]), 0xffff);
        }
        TransportSlice::Udp(u) => {
            assert_eq!(e.protocol, IPPROTO_UDP);
            assert_eq!(Some(offset_in(b, u.slice())), e.l4_offset, "{ctx}");
            assert_eq!(u.source_port(), e.src_port);
            assert_eq!(u.destination_port(), e.dst_port);
            assert_eq!(usize::from(u.length()), l4_len);
            assert_eq!(e.tcp_flags, 0);
            let hdr = u.to_header();
            let ck = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => hdr.calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload()),
                (IpAddr::V6(s), IpAddr::V6(d)) => hdr.calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload()),
                _ => unreachable!(),
            }
            .unwrap();
            assert_ne!(u.checksum(), 0);
            assert_eq!(ck, u.checksum(), "udp checksum {ctx}");
            let ph = pseudo_header(src, dst, IPPROTO_UDP, l4_len);
            assert_eq!(ones_sum(&[&ph, l4]), 0xffff);
        }
        TransportSlice::Icmpv4(i) => {
            assert_eq!(e.protocol, IPPROTO_ICMP);
            assert_eq!(Some(offset_in(b, i.slice())), e.l4_offset);
            assert_eq!(Some((i.type_u8(), i.code_u8())), e.icmp_type);
            assert_eq!(i.icmp_type().calc_checksum(i.payload()), i.checksum());
            assert_eq!(ones_sum(&[i.slice()]), 0xffff, "icmpv4 checksum {ctx}");
            check_icmp_body(f, i.type_u8(), i.code_u8(), i.bytes5to8(), i.payload());
        }
        TransportSlice::Icmpv6(i) => {
            assert_eq!(e.protocol, IPPROTO_ICMPV6);
            assert_eq!(Some(offset_in(b, i.slice())), e.l4_offset);
            assert_eq!(Some((i.type_u8(), i.code_u8())), e.icmp_type);
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else { unreachable!() };
            assert!(i.is_checksum_valid(s.octets(), d.octets()), "icmpv6 checksum {ctx}");
            let ph = pseudo_header(src, dst, IPPROTO_ICMPV6, l4_len);
            assert_eq!(ones_sum(&[&ph, i.slice()]), 0xffff);
            check_icmp_body(f, i.type_u8(), i.code_u8(), i.bytes5to8(), i.payload());
        }
        other => panic!("unexpected transport layer {other:?}: {ctx}"),
    }
}

/// VLAN ids, ethertype and L3 offset, read with etherparse's header slices.
fn parse_link(b: &[u8]) -> (Vec<u16>, u16, usize) {
    let eth = Ethernet2HeaderSlice::from_slice(b).unwrap();
    let mut ethertype = eth.ether_type().0;
    let mut off = eth.slice().len();
    let mut vlans = Vec::new();
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        let v = SingleVlanHeaderSlice::from_slice(&b[off..]).unwrap();
        vlans.push(v.vlan_identifier().value());
        ethertype = v.ether_type().0;
        off += v.slice().len();
    }
    (vlans, ethertype, off)
}

/// The RFC 8200 Fragment header word: (offset in 8-byte units, M flag).
fn ipv6_frag_word(frag_header: &[u8]) -> (u16, bool) {
    let w = u16::from_be_bytes([frag_header[2], frag_header[3]]);
    assert_eq!(w & 0b110, 0, "reserved bits set");
    (w >> 3, w & 1 == 1)
}

fn check_ipv6_fragment(f: &GeneratedFrame, ctx: &str) {
    let e = &f.expected;
    let b = &f.bytes[..];
    let (vlans, ethertype, l3) = parse_link(b);
    assert_eq!(vlans, e.vlans, "{ctx}");
    assert_eq!(ethertype, 0x86dd);
    assert_eq!(l3, e.l3_offset);
    let h = Ipv6HeaderSlice::from_slice(&b[l3..]).unwrap();
    assert_eq!(ip_of_v6(h.source()), e.src);
    assert_eq!(ip_of_v6(h.destination()), e.dst);
    assert_eq!(h.next_header().0, IPPROTO_FRAGMENT);
    assert_eq!(usize::from(h.payload_length()) + 40, b.len() - l3);
    let fh = Ipv6FragmentHeaderSlice::from_slice(&b[l3 + 40..]).unwrap();
    assert_eq!(fh.next_header().0, e.protocol);
    assert!([IPPROTO_TCP, IPPROTO_UDP].contains(&e.protocol));
    assert_eq!(fh.slice()[1], 0, "reserved byte");
    let (offset, more) = ipv6_frag_word(fh.slice());
    let data = &b[l3 + 48..];
    if more {
        assert_eq!(data.len() % 8, 0, "non-last fragment not a multiple of 8");
    }
    if offset == 0 {
        assert!(more, "offset 0 without M is not a fragment");
        assert_eq!(e.fragment, FragmentKind::First, "{ctx}");
        assert_eq!(e.l4_offset, Some(l3 + 48));
        assert_eq!(u16::from_be_bytes([data[0], data[1]]), e.src_port);
        assert_eq!(u16::from_be_bytes([data[2], data[3]]), e.dst_port);
        if e.protocol == IPPROTO_TCP {
            assert_eq!(data[13], e.tcp_flags);
            assert!(data.len() >= usize::from(data[12] >> 4) * 4, "TCP header split");
        } else {
            assert_eq!(e.tcp_flags, 0);
        }
    } else {
        assert_eq!(e.fragment, FragmentKind::Later, "{ctx}");
        assert_eq!(e.l4_offset, None);
        assert_eq!((e.src_port, e.dst_port, e.tcp_flags), (0, 0, 0));
    }
    assert_eq!((e.icmp_type, e.quoted), (None, None));
}

fn check_icmp_body(f: &GeneratedFrame, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) {
    let e = &f.expected;
    assert_eq!((e.src_port, e.dst_port, e.tcp_flags), (0, 0, 0));
    match f.kind {
        FrameKind::Icmpv4Echo => {
            assert!(matches!((ty, code), (8, 0) | (0, 0)));
            assert_eq!(e.quoted, None);
        }
        FrameKind::Icmpv6Echo => {
            assert!(matches!((ty, code), (128, 0) | (129, 0)));
            assert_eq!(e.quoted, None);
        }
        FrameKind::Icmpv4Error => {
            assert!(matches!((ty, code), (3, 4) | (3, 3) | (11, 0)), "{ty}/{code}");
            let q = e.quoted.expect("error without quoted flow");
            let h = Ipv4HeaderSlice::from_slice(body).expect("quoted IPv4 header");
            assert_eq!(body.len(), h.slice().len() + 8, "quote is header + 8 bytes");
            assert_eq!(ones_sum(&[h.slice()]), 0xffff, "quoted header checksum");
            assert_eq!(ip_of_v4(h.source()), q.src);
            assert_eq!(ip_of_v4(h.destination()), q.dst);
            assert_eq!(h.protocol().0, q.protocol);
            let l4 = &body[h.slice().len()..];
            assert_eq!(u16::from_be_bytes([l4[0], l4[1]]), q.src_port);
            assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), q.dst_port);
            assert!(usize::from(h.total_len()) > 576);
            if (ty, code) == (3, 4) {
                let mtu = u16::from_be_bytes([rest[2], rest[3]]);
                assert!(mtu >= 576 && mtu < h.total_len());
            }
            check_quote_direction(e, q);
        }
        FrameKind::Icmpv6Error => {
            assert!(matches!((ty, code), (2, 0) | (1, 0..=4)), "{ty}/{code}");
            let q = e.quoted.expect("error without quoted flow");
            let h = Ipv6HeaderSlice::from_slice(body).expect("quoted IPv6 header");
            assert_eq!(body.len(), 48);
            assert_eq!(ip_of_v6(h.source()), q.src);
            assert_eq!(ip_of_v6(h.destination()), q.dst);
            assert_eq!(h.next_header().0, q.protocol);
            let l4 = &body[40..];
            assert_eq!(u16::from_be_bytes([l4[0], l4[1]]), q.src_port);
            assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), q.dst_port);
            if ty == 2 {
                let mtu = u32::from_be_bytes(rest);
                assert!(mtu >= 1280 && mtu < 40 + u32::from(h.payload_length()));
            }
            check_quote_direction(e, q);
        }
        _ => unreachable!(),
    }
}

/// The error goes back to the source of the quoted packet, one of whose ends is a VIP.
fn check_quote_direction(e: &Expected, q: QuotedFlow) {
    assert!([6, 17].contains(&q.protocol));
    assert_eq!(e.dst, q.src);
    assert!(is_vip(q.src) ^ is_vip(q.dst));
    assert!(!is_vip(e.src));
}

fn is_vip(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => VIPS_V4.contains(&a),
        IpAddr::V6(a) => VIPS_V6.contains(&a),
    }
}

#[test]
fn every_kind_parses_and_matches_expected() {
    for seed in [0u64, 1, 0xdead_beef] {
        let mut gen = TrafficGenerator::new(seed, MixConfig::uniform());
        for kind in FrameKind::ALL {
            for _ in 0..300 {
                let f = gen.frame_of_kind(kind);
                assert_eq!(f.kind, kind);
                assert!(f.bytes.len() - f.expected.l3_offset <= MTU, "over MTU");
                check_frame(&f);
            }
        }
    }
}

#[test]
fn mixes_parse_and_match_expected() {
    for mix in [MixConfig::realistic(), MixConfig::uniform()] {
        let mut gen = TrafficGenerator::new(7, mix);
        for f in gen.take(5000) {
            check_frame(&f);
        }
    }
}

#[test]
fn one_endpoint_is_a_vip() {
    let mut gen = TrafficGenerator::new(3, MixConfig::uniform());
    for f in gen.take(3000) {
        let e = &f.expected;
        if e.quoted.is_none() {
            assert!(is_vip(e.src) ^ is_vip(e.dst), "{e:?}");
        }
        if matches!(e.protocol, 6 | 17) && e.fragment != FragmentKind::Later {
            let (client_port, service_port) =
                if is_vip(e.src) { (e.dst_port, e.src_port) } else { (e.src_port, e.dst_port) };
            assert!(client_port >= 1024);
            assert!(service_port < 10000);
        }
    }
}

#[test]
fn fragments_cover_first_and_later() {
    let mut gen = TrafficGenerator::new(11, MixConfig::uniform());
    for kind in [FrameKind::Ipv4Fragment, FrameKind::Ipv6Fragment] {
        let mut seen = BTreeSet::new();
        let mut protos = BTreeSet::new();
        for _ in 0..200 {
            let f = gen.frame_of_kind(kind);
            seen.insert(format!("{:?}", f.expected.fragment));
            protos.insert(f.expected.protocol);
        }
        assert_eq!(seen.len(), 2, "{kind:?}: {seen:?}");
        assert_eq!(protos, BTreeSet::from([6, 17]));
    }
}

#[test]
fn fragmented_datagrams_reassemble_with_valid_l4_checksum() {
    let mut gen = TrafficGenerator::new(5, MixConfig::uniform());
    for ipv6 in [false, true] {
        for _ in 0..100 {
            let frames = gen.fragmented_datagram(ipv6);
            assert!(frames.len() >= 2);
            assert_eq!(frames[0].expected.fragment, FragmentKind::First);
            for (i, f) in frames.iter().enumerate() {
                check_frame(f);
                if i > 0 {
                    assert_eq!(f.expected.fragment, FragmentKind::Later);
                    assert_eq!(f.expected.vlans, frames[0].expected.vlans);
                }
            }
            let e = &frames[0].expected;
            let l4 = if ipv6 {
                reassemble_ipv6(&frames)
            } else {
                let mut pool: IpDefragPool = IpDefragPool::new();
                let mut done = None;
                for (i, f) in frames.iter().enumerate() {
                    let p = SlicedPacket::from_ethernet(&f.bytes).unwrap();
                    if let Some(r) = pool.process_sliced_packet(&p, (), ()).unwrap() {
                        assert!(done.is_none());
                        assert_eq!(i, frames.len() - 1);
                        done = Some(r);
                    }
                }
                let r = done.expect("datagram did not reassemble");
                assert_eq!(r.ip_number.0, e.protocol);
                r.payload
            };
            let l4 = &l4;
            assert_eq!(u16::from_be_bytes([l4[0], l4[1]]), e.src_port);
            assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), e.dst_port);
            let ph = pseudo_header(e.src, e.dst, e.protocol, l4.len());
            assert_eq!(ones_sum(&[&ph, l4]), 0xffff, "reassembled L4 checksum");
            if e.protocol == IPPROTO_UDP {
                assert_eq!(usize::from(u16::from_be_bytes([l4[4], l4[5]])), l4.len());
                let (h, payload) = UdpHeader::from_slice(l4).unwrap();
                let ck = match (e.src, e.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
                    (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
                    _ => unreachable!(),
                };
                assert_eq!(ck.unwrap(), h.checksum);
            }
        }
    }
}

/// Hand reassembly of in-order IPv6 fragments (see `check_ipv6_fragment`).
fn reassemble_ipv6(frames: &[GeneratedFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ident = None;
    for (i, f) in frames.iter().enumerate() {
        let l3 = f.expected.l3_offset;
        let fh = Ipv6FragmentHeaderSlice::from_slice(&f.bytes[l3 + 40..]).unwrap();
        assert_eq!(*ident.get_or_insert(fh.identification()), fh.identification());
        let (offset, more) = ipv6_frag_word(fh.slice());
        assert_eq!(usize::from(offset) * 8, out.len(), "gap or overlap");
        assert_eq!(more, i + 1 < frames.len());
        out.extend_from_slice(&f.bytes[l3 + 48..]);
    }
    out
}

#[test]
fn header_variety_is_covered() {
    let mut gen = TrafficGenerator::new(99, MixConfig::uniform());
    let mut ihls = BTreeSet::new();
    for _ in 0..2000 {
        let f = gen.frame_of_kind(FrameKind::Ipv4TcpOptions);
        ihls.insert(f.bytes[f.expected.l3_offset] & 0x0f);
    }
    assert_eq!(ihls, (6..=15).collect());

    let mut doffs = BTreeSet::new();
    let mut flags = BTreeSet::new();
    for _ in 0..5000 {
        let f = gen.frame_of_kind(FrameKind::Ipv4Tcp);
        let l4 = f.expected.l4_offset.unwrap();
        doffs.insert(f.bytes[l4 + 12] >> 4);
        flags.insert(f.expected.tcp_flags);
    }
    assert!(doffs.contains(&5) && doffs.contains(&15), "{doffs:?}");
    assert!(doffs.len() >= 8, "{doffs:?}");
    assert_eq!(flags, BTreeSet::from([SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST]));

    let mut chains = BTreeSet::new();
    let mut routing_types = BTreeSet::new();
    for _ in 0..1000 {
        let f = gen.frame_of_kind(FrameKind::Ipv6ExtHeaders);
        let p = SlicedPacket::from_ethernet(&f.bytes).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else { panic!() };
        let mut chain = Vec::new();
        for ext in ip.extensions().clone() {
            chain.push(match ext {
                Ipv6ExtensionSlice::HopByHop(_) => 0,
                Ipv6ExtensionSlice::DestinationOptions(_) => 60,
                Ipv6ExtensionSlice::Routing(r) => {
                    routing_types.insert(r.payload()[0]);
                    43
                }
                _ => panic!(),
            });
        }
        chains.insert(chain);
    }
    assert_eq!(chains.len(), 7, "{chains:?}");
    assert_eq!(routing_types, BTreeSet::from([0, 2, 4]));

    let mut icmp = BTreeSet::new();
    for kind in [FrameKind::Icmpv4Echo, FrameKind::Icmpv4Error, FrameKind::Icmpv6Echo, FrameKind::Icmpv6Error] {
        for _ in 0..300 {
            icmp.insert(gen.frame_of_kind(kind).expected.icmp_type.unwrap());
        }
    }
    for t in [(8, 0), (0, 0), (3, 4), (3, 3), (11, 0), (128, 0), (129, 0), (2, 0)] {
        assert!(icmp.contains(&t), "missing ICMP {t:?}");
    }
}

#[test]
fn vlan_tags_follow_the_mix() {
    let mut gen = TrafficGenerator::new(1, MixConfig::realistic());
    let n = 20_000;
    let mut counts = [0usize; 3];
    for f in gen.take(n) {
        counts[f.expected.vlans.len()] += 1;
    }
    let pct = |c: usize| c * 100 / n;
    assert!((8..=12).contains(&pct(counts[1])), "{counts:?}");
    assert!((2..=4).contains(&pct(counts[2])), "{counts:?}");
}

#[test]
fn realistic_mix_is_mostly_ipv4_tcp() {
    let mut gen = TrafficGenerator::new(2, MixConfig::realistic());
    let mut counts: BTreeMap<FrameKind, usize> = BTreeMap::new();
    for f in gen.take(20_000) {
        *counts.entry(f.kind).or_default() += 1;
    }
    assert_eq!(counts.len(), FrameKind::ALL.len(), "{counts:?}");
    let top = counts.iter().max_by_key(|(_, &c)| c).unwrap();
    assert_eq!(*top.0, FrameKind::Ipv4Tcp);
    assert!(*top.1 > 10_000);
}

#[test]
fn zero_weights_fall_back_to_uniform() {
    let mix = MixConfig { weights: vec![], ..MixConfig::uniform() };
    let mut gen = TrafficGenerator::new(2, mix);
    let kinds: BTreeSet<_> = gen.take(2000).into_iter().map(|f| f.kind).collect();
    assert_eq!(kinds.len(), FrameKind::ALL.len());

    let mix = MixConfig { weights: vec![(FrameKind::Ipv6Udp, 0), (FrameKind::Icmpv4Echo, 5)], ..MixConfig::uniform() };
    let mut gen = TrafficGenerator::new(2, mix);
    assert!(gen.take(500).iter().all(|f| f.kind == FrameKind::Icmpv4Echo));
}

#[test]
fn flows_are_bounded_by_config() {
    let mix = MixConfig { flows: 3, ..MixConfig::realistic() };
    let mut gen = TrafficGenerator::new(4, mix);
    let mut tuples = BTreeSet::new();
    for _ in 0..2000 {
        let e = gen.frame_of_kind(FrameKind::Ipv4Tcp).expected;
        // normalise direction to client → VIP
        let t =
            if is_vip(e.dst) { (e.src, e.dst, e.src_port, e.dst_port) } else { (e.dst, e.src, e.dst_port, e.src_port) };
        tuples.insert(t);
    }
    assert_eq!(tuples.len(), 3);
}

#[test]
fn deterministic_per_seed() {
    let a = TrafficGenerator::new(123, MixConfig::realistic()).take(500);
    let b = TrafficGenerator::new(123, MixConfig::realistic()).take(500);
    let c = TrafficGenerator::new(124, MixConfig::realistic()).take(500);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn min_frame_padding() {
    // Padding consumes no randomness: the padded stream is the plain one plus zeros.
    let plain = TrafficGenerator::new(8, MixConfig::uniform()).take(3000);
    let padded = TrafficGenerator::new(8, MixConfig::uniform()).with_min_frame_padding(true).take(3000);
    let mut n_padded = 0;
    for (a, b) in plain.iter().zip(&padded) {
        assert_eq!(a.expected, b.expected);
        assert_eq!(b.bytes.len(), a.bytes.len().max(60));
        assert_eq!(&b.bytes[..a.bytes.len()], &a.bytes[..]);
        assert!(b.bytes[a.bytes.len()..].iter().all(|&x| x == 0));
        if a.bytes.len() < 60 {
            n_padded += 1;
            // The IP length still says where the packet ends.
            let (_, ethertype, l3) = parse_link(&b.bytes);
            let ip_len = if ethertype == 0x0800 {
                usize::from(Ipv4HeaderSlice::from_slice(&b.bytes[l3..]).unwrap().total_len())
            } else {
                40 + usize::from(Ipv6HeaderSlice::from_slice(&b.bytes[l3..]).unwrap().payload_length())
            };
            assert_eq!(l3 + ip_len, a.bytes.len());
        }
    }
    assert!(n_padded > 0);
}

#[test]
fn pcap_round_trip() {
    let frames = TrafficGenerator::new(77, MixConfig::uniform()).take(1000);
    let mut buf = Vec::new();
    write_pcap(&mut buf, frames.iter().map(|f| &f.bytes)).unwrap();

    let back = read_pcap(&buf[..]).unwrap();
    assert_eq!(back.len(), frames.len());
    for (a, b) in frames.iter().zip(&back) {
        assert_eq!(&a.bytes, b);
    }

    // Header and timestamps, read with pcap-file directly.
    let mut r = pcap_file::pcap::PcapReader::new(&buf[..]).unwrap();
    assert_eq!(r.header().datalink, pcap_file::DataLink::ETHERNET);
    assert_eq!(r.header().ts_resolution, pcap_file::TsResolution::MicroSecond);
    let mut last = None;
    while let Some(pkt) = r.next_packet() {
        let pkt = pkt.unwrap();
        assert_eq!(pkt.orig_len as usize, pkt.data.len());
        if let Some(prev) = last {
            assert!(pkt.timestamp > prev);
        }
        last = Some(pkt.timestamp);
    }

    // Empty capture, and a non-Ethernet capture is refused.
    let mut empty = Vec::new();
    write_pcap(&mut empty, Vec::<Vec<u8>>::new()).unwrap();
    assert!(read_pcap(&empty[..]).unwrap().is_empty());
    let header = pcap_file::pcap::PcapHeader { datalink: pcap_file::DataLink::RAW, ..Default::default() };
    let mut raw = Vec::new();
    pcap_file::pcap::PcapWriter::with_header(&mut raw, header).unwrap();
    assert!(read_pcap(&raw[..]).is_err());
}
