//! Checks shared by the fuzz targets: the frame oracle behind `parse_frame` (also applied by
//! `encap_decap` to every frame it builds).
//!
//! The property under test is "never panics"; on top of that every `assert!` here states a
//! consistency rule between `parse_flow_key` and the individual checked views, so that a view and the
//! hot-path extractor cannot silently disagree about the same bytes.

use std::fmt::Write as _;
use std::hint::black_box;

use lb_core::wire::checksum;
use lb_core::wire::ethernet::{parse_l2, ETHERNET_HEADER_LEN, MAX_VLAN_TAGS, VLAN_TAG_LEN};
use lb_core::wire::flow::quoted_flow_key;
use lb_core::wire::icmp::ICMP_HEADER_LEN;
use lb_core::wire::ipv4::IPV4_HEADER_LEN;
use lb_core::wire::ipv6::{walk_extensions, IPV6_HEADER_LEN};
use lb_core::wire::udp::UDP_HEADER_LEN;
use lb_core::wire::vxlan::{self, MAX_VNI, VXLAN_HEADER_LEN};
use lb_core::wire::{
    ip_proto, parse_flow_key, EtherType, EthernetFrame, EthernetRepr, FlowKey, Fragment, IcmpMessage, IcmpVersion,
    IpVersion, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, Layer, TcpSegment, UdpDatagram, VxlanPacket, WireError,
    VXLAN_PORT,
};

/// How many VxLAN layers deep `check_frame` follows a decapsulated inner frame.
pub const MAX_DEPTH: u32 = 3;

/// Reads a big-endian u16 at `off` (caller guarantees the bounds).
fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// Whether two checksum field values are the same ones'-complement number: equal, or 0x0000 and
/// 0xffff (+0 and -0), which verify alike whenever the rest of the covered data is not all zero.
pub fn same_checksum(a: u16, b: u16) -> bool {
    a == b || matches!((a, b), (0, 0xffff) | (0xffff, 0))
}

/// Formats an error through its `Display` impl (which must not panic either).
fn display(e: &WireError) {
    let mut s = String::new();
    write!(s, "{e}").expect("Display for WireError failed");
    black_box(s);
}

/// The whole oracle for one frame: runs every view over it and, if `parse_flow_key` accepts it,
/// cross-checks the flow key against the views (and recurses into a VxLAN inner frame).
pub fn check_frame(frame: &[u8], depth: u32) {
    exercise_views(frame);
    if frame.len() > ETHERNET_HEADER_LEN {
        exercise_views(&frame[ETHERNET_HEADER_LEN..]);
    }
    match parse_flow_key(frame) {
        Ok(key) => check_key(frame, &key, depth),
        Err(e) => {
            display(&e);
            // decapsulate() validates a superset of what parse_flow_key does (same L2/L3 walk, then a
            // complete UDP header whose length matches), so it cannot accept what the extractor rejects.
            if let Ok(d) = vxlan::decapsulate(frame) {
                panic!("decapsulate accepted a frame that parse_flow_key rejects with {e:?}: {d:?}");
            }
        }
    }
}

/// Calls every checked constructor and every accessor on `b`, results ignored: only "no panic" and
/// "no read past the buffer" are checked here.
pub fn exercise_views(b: &[u8]) {
    if let Ok(e) = EthernetFrame::new_checked(b) {
        black_box((e.header(), e.src(), e.dst(), e.ethertype(), e.payload().len(), EthernetRepr::parse(&e)));
    }
    black_box(parse_l2(b).ok());
    if let Ok(p) = Ipv4Packet::new_checked(b) {
        let h = p.header();
        black_box((h.version(), h.header_len(), h.more_fragments(), h.dont_fragment(), h.frag_offset()));
        black_box((p.src(), p.dst(), p.options().len(), p.payload().len(), p.verify_checksum()));
        black_box(Ipv4Repr::parse(&p));
        black_box(checksum::ipv4_header(&b[..h.header_len()]));
    }
    if let Ok(p) = Ipv6Packet::new_checked(b) {
        let h = p.header();
        black_box((h.version(), h.traffic_class(), h.flow_label(), p.src(), p.dst(), p.payload().len()));
        black_box((p.extensions().ok(), Ipv6Repr::parse(&p)));
    }
    if let Some((&next, rest)) = b.split_first() {
        black_box(walk_extensions(next, rest).ok());
    }
    if let Ok(s) = TcpSegment::new_checked(b) {
        black_box((s.header(), s.src_port(), s.dst_port(), s.flags(), s.options().len(), s.payload().len()));
        black_box(s.verify_checksum(0));
    }
    if let Ok(d) = UdpDatagram::new_checked(b) {
        black_box((d.header(), d.src_port(), d.dst_port(), d.payload().len(), d.verify_checksum(0)));
    }
    for v in [IcmpVersion::V4, IcmpVersion::V6] {
        if let Ok(m) = IcmpMessage::new_checked(v, b) {
            black_box((m.version(), m.header(), m.ty(), m.code(), m.is_error(), m.echo_ident(), m.mtu()));
            black_box((m.quoted().map(<[u8]>::len), m.payload().len(), m.verify_checksum(0)));
        }
    }
    if let Ok(x) = VxlanPacket::new_checked(b) {
        black_box((x.header(), x.vni(), x.inner().len()));
    }
    black_box(vxlan::decapsulate(b).ok());
}

fn check_key(frame: &[u8], key: &FlowKey, depth: u32) {
    let l3 = usize::from(key.l3_offset);
    let l4 = usize::from(key.l4_offset);
    let l4_len = usize::from(key.l4_len);

    // ---- L2: the key's tags and offsets are the ones parse_l2 and the raw bytes show.
    let l2 = parse_l2(frame).expect("parse_flow_key accepted a frame that parse_l2 rejects");
    assert_eq!(l3, l2.l3_offset);
    assert_eq!((key.vlans, key.vlan_count), (l2.vlans, l2.vlan_count));
    let vlan_count = usize::from(key.vlan_count);
    assert!(vlan_count <= MAX_VLAN_TAGS);
    assert_eq!(l3, ETHERNET_HEADER_LEN + VLAN_TAG_LEN * vlan_count);
    for (i, &vid) in key.vlans.iter().enumerate() {
        if i < vlan_count {
            let tpid = be16(frame, 12 + VLAN_TAG_LEN * i);
            assert!(EtherType::is_vlan(tpid), "tag {i} announced by non-VLAN TPID {tpid:#06x}");
            assert_eq!(vid, be16(frame, 14 + VLAN_TAG_LEN * i) & 0x0fff);
        } else {
            assert_eq!(vid, 0, "unused VLAN slot {i} not zero");
        }
    }
    let ethertype = be16(frame, l3 - 2);
    assert_eq!(ethertype, l2.ethertype);
    match key.ip_version {
        IpVersion::V4 => assert_eq!(ethertype, EtherType::IPV4),
        IpVersion::V6 => assert_eq!(ethertype, EtherType::IPV6),
    }
    let eth = EthernetFrame::new_checked(frame).expect("EthernetFrame rejects a parsed frame");
    assert_eq!(eth.ethertype(), be16(frame, 12));
    assert_eq!(eth.dst().0, frame[0..6]);
    assert_eq!(eth.src().0, frame[6..12]);
    assert_eq!(eth.payload().len(), frame.len() - ETHERNET_HEADER_LEN);

    // ---- Offsets: all inside the buffer, in order.
    assert!(l3 < l4, "l3_offset {l3} >= l4_offset {l4}");
    assert!(l4 <= frame.len() && l4_len <= frame.len() - l4, "L4 {l4}+{l4_len} past frame of {}", frame.len());
    let l4_bytes = &frame[l4..l4 + l4_len];

    // ---- Field-level rules of the key.
    let proto = key.protocol;
    let is_icmp = proto == ip_proto::ICMP || proto == ip_proto::ICMPV6;
    if key.fragment == Fragment::Later {
        assert_eq!((key.src_port, key.dst_port, key.tcp_flags), (0, 0, 0), "later fragment has L4 fields");
        assert_eq!((key.icmp_type, key.icmp_code), (0, 0), "later fragment has ICMP fields");
    }
    if key.fragment == Fragment::None {
        assert_eq!(key.frag_ident, 0);
    }
    if key.tcp_flags != 0 {
        assert_eq!(proto, ip_proto::TCP);
    }
    if key.icmp_type != 0 || key.icmp_code != 0 {
        assert!(is_icmp);
    }
    if key.src_port != 0 || key.dst_port != 0 {
        assert!(proto == ip_proto::TCP || proto == ip_proto::UDP || is_icmp);
    }
    // A non-first fragment carries no ICMP header: it must never be steered as an ICMP error.
    if key.fragment == Fragment::Later {
        assert!(!key.is_icmp_error(), "later fragment reported as an ICMP error: {key:?}");
    }
    assert_eq!(key.reversed().reversed(), *key);
    black_box((key.hash(0), key.hash(u64::MAX), key.reversed().hash(7)));
    match key.ip_version {
        IpVersion::V4 => {
            assert!(key.src_ip().is_ipv4() && key.dst_ip().is_ipv4());
            assert!(key.src_addr[4..].iter().chain(&key.dst_addr[4..]).all(|&b| b == 0), "v4 address tail not 0");
        }
        IpVersion::V6 => assert!(key.src_ip().is_ipv6() && key.dst_ip().is_ipv6()),
    }

    // ---- L3 views agree with the key.
    match key.ip_version {
        IpVersion::V4 => check_ipv4(frame, key, l3, l4, l4_bytes),
        IpVersion::V6 => check_ipv6(frame, key, l3, l4, l4_bytes),
    }

    // ---- L4 views agree with the key.
    if key.fragment != Fragment::Later {
        check_l4(frame, key, l4_bytes);
    }

    // ---- ICMP errors: the quoted key.
    let quoted = quoted_flow_key(frame, key);
    if key.is_icmp_error() {
        match quoted {
            Ok(q) => check_quote(key, &frame[l4 + ICMP_HEADER_LEN..l4 + l4_len], &q),
            Err(e) => display(&e),
        }
    } else {
        assert_eq!(quoted, Err(WireError::Truncated(Layer::IcmpQuote)), "quote of a non-error");
    }

    check_vxlan(frame, key, l4_bytes, depth);
}

fn check_ipv4(frame: &[u8], key: &FlowKey, l3: usize, l4: usize, l4_bytes: &[u8]) {
    let p = Ipv4Packet::new_checked(&frame[l3..]).expect("Ipv4Packet rejects what parse_flow_key took as IPv4");
    let h = p.header();
    assert_eq!((p.src(), p.dst()), (key.src_v4(), key.dst_v4()));
    assert_eq!(h.version(), 4);
    assert_eq!(h.protocol, key.protocol);
    assert_eq!(l4, l3 + IPV4_HEADER_LEN + p.options().len(), "l4_offset is not past the IPv4 options");
    assert_eq!(p.payload().as_ptr(), l4_bytes.as_ptr());
    assert_eq!(p.payload().len(), l4_bytes.len(), "l4_len is not total_len - IHL*4");
    assert_eq!(usize::from(h.total_len.get()), IPV4_HEADER_LEN + p.options().len() + l4_bytes.len());
    let fragment = match (h.is_fragment(), h.frag_offset()) {
        (false, _) => Fragment::None,
        (true, 0) => Fragment::First,
        (true, _) => Fragment::Later,
    };
    assert_eq!(key.fragment, fragment);
    if fragment != Fragment::None {
        assert_eq!(key.frag_ident, u32::from(h.ident.get()));
    }
    black_box(Ipv4Repr::parse(&p));
    assert!(Ipv6Packet::new_checked(&frame[l3..]).is_err(), "IPv6 view accepts an IPv4 header");
    let computed = checksum::ipv4_header(&frame[l3..l4]);
    assert_eq!(same_checksum(computed, h.checksum.get()), p.verify_checksum(), "two IPv4 checksum verdicts");

    // Mutable view: a filled checksum verifies, and stays valid through the incremental address rewrites.
    let mut copy = frame[l3..l3 + usize::from(h.total_len.get())].to_vec();
    let mut m = Ipv4Packet::new_checked(&mut copy[..]).expect("Ipv4Packet rejects its own copy");
    m.fill_checksum();
    assert!(m.verify_checksum(), "fill_checksum result does not verify");
    let full = m.header().checksum.get();
    let [a, b, c, d] = key.src_v4();
    m.set_dst([d, c, b, a]);
    assert!(m.verify_checksum(), "set_dst broke the IPv4 checksum");
    m.set_src([!a, b, !c, d]);
    assert!(m.verify_checksum(), "set_src broke the IPv4 checksum");
    m.set_src(key.src_v4());
    m.set_dst(key.dst_v4());
    assert!(m.verify_checksum());
    // Back to the original addresses: the same value as the full computation, up to ±0 (the header
    // starts with 0x4X, so the sum is never +0 and 0x0000/0xffff are interchangeable only for -0).
    let back = m.header().checksum.get();
    assert!(same_checksum(back, full), "{back:#06x} vs {full:#06x}");
    m.payload_mut().fill(0xa5);
}

fn check_ipv6(frame: &[u8], key: &FlowKey, l3: usize, l4: usize, l4_bytes: &[u8]) {
    let p = Ipv6Packet::new_checked(&frame[l3..]).expect("Ipv6Packet rejects what parse_flow_key took as IPv6");
    let h = p.header();
    assert_eq!(h.version(), 6);
    assert_eq!((p.src(), p.dst()), (key.src_addr, key.dst_addr));
    assert_eq!(p.payload().len(), usize::from(h.payload_len.get()));
    assert_eq!(l3 + IPV6_HEADER_LEN + p.payload().len(), l4 + l4_bytes.len(), "L4 does not end at the IPv6 end");
    // parse_flow_key skips the walk for TCP/UDP/ICMPv6 as the first next header; the walk must then
    // agree with that fast path (it stops at once on a non-extension header).
    let walk = p.extensions().expect("extensions() fails where parse_flow_key walked through");
    assert_eq!(walk, walk_extensions(h.next_header, p.payload()).unwrap());
    assert_eq!(walk.protocol, key.protocol);
    assert_eq!(l3 + IPV6_HEADER_LEN + walk.offset, l4, "l4_offset disagrees with the extension walk");
    // An atomic fragment (offset 0, no more fragments) is a whole datagram (RFC 6946).
    match walk.fragment.filter(|f| f.is_fragment()) {
        None => assert_eq!((key.fragment, key.frag_ident), (Fragment::None, 0)),
        Some(f) => {
            assert_eq!(key.fragment, if f.offset == 0 { Fragment::First } else { Fragment::Later });
            assert_eq!(key.frag_ident, f.ident);
            assert_eq!(f.offset % 8, 0);
        }
    }
    black_box(Ipv6Repr::parse(&p));
    assert!(Ipv4Packet::new_checked(&frame[l3..]).is_err(), "IPv4 view accepts an IPv6 header");
}

fn check_l4(frame: &[u8], key: &FlowKey, l4_bytes: &[u8]) {
    match key.protocol {
        ip_proto::TCP => {
            let s = TcpSegment::new_checked(l4_bytes).expect("TcpSegment rejects a segment parse_flow_key took");
            assert_eq!((s.src_port(), s.dst_port(), s.flags()), (key.src_port, key.dst_port, key.tcp_flags));
            assert_eq!(20 + s.options().len() + s.payload().len(), l4_bytes.len());
            if key.ip_version == IpVersion::V4 {
                let pseudo = checksum::pseudo_header_v4(key.src_v4(), key.dst_v4(), 6, l4_bytes.len() as u16);
                let mut copy = l4_bytes.to_vec();
                let mut m = TcpSegment::new_checked(&mut copy[..]).unwrap();
                m.fill_checksum(pseudo);
                assert!(m.verify_checksum(pseudo), "TCP fill_checksum does not verify");
                black_box(s.verify_checksum(pseudo));
            }
        }
        ip_proto::UDP => {
            let len = usize::from(be16(l4_bytes, 4));
            assert!(len >= UDP_HEADER_LEN);
            match UdpDatagram::new_checked(l4_bytes) {
                Ok(d) => {
                    assert_eq!((d.src_port(), d.dst_port()), (key.src_port, key.dst_port));
                    assert_eq!(d.payload().len(), len - UDP_HEADER_LEN);
                    let pseudo = match key.ip_version {
                        IpVersion::V4 => checksum::pseudo_header_v4(key.src_v4(), key.dst_v4(), 17, len as u16),
                        IpVersion::V6 => checksum::pseudo_header_v6(&key.src_addr, &key.dst_addr, 17, len as u32),
                    };
                    let mut copy = l4_bytes[..len].to_vec();
                    let mut m = UdpDatagram::new_checked(&mut copy[..]).unwrap();
                    m.fill_checksum(pseudo);
                    assert_ne!(m.header().checksum.get(), 0, "UDP fill_checksum wrote 0 (means 'none')");
                    assert!(m.verify_checksum(pseudo), "UDP fill_checksum does not verify");
                    m.payload_mut().fill(0);
                }
                // The UDP length of a first fragment describes the whole datagram, so it may pass the
                // fragment; for a whole datagram the extractor checked it is within the L4 bytes.
                Err(e) => {
                    assert_eq!(key.fragment, Fragment::First, "UdpDatagram rejects a whole datagram: {e:?}");
                    assert_eq!(e, WireError::LengthMismatch(Layer::Udp));
                }
            }
        }
        // ICMP in IPv6 or ICMPv6 in IPv4 is an opaque protocol to the extractor.
        ip_proto::ICMP | ip_proto::ICMPV6 if (key.protocol == ip_proto::ICMP) != (key.ip_version == IpVersion::V4) => {
            assert_eq!((key.src_port, key.dst_port, key.icmp_type, key.icmp_code), (0, 0, 0, 0));
            assert!(!key.is_icmp_error());
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let version = if key.protocol == ip_proto::ICMP { IcmpVersion::V4 } else { IcmpVersion::V6 };
            let m = IcmpMessage::new_checked(version, l4_bytes).expect("IcmpMessage rejects a parsed ICMP header");
            assert_eq!((m.ty(), m.code()), (key.icmp_type, key.icmp_code));
            match m.echo_ident() {
                Some(id) => assert_eq!((key.src_port, key.dst_port), (id, id)),
                None => assert_eq!((key.src_port, key.dst_port), (0, 0)),
            }
            assert_eq!(m.is_error(), key.is_icmp_error());
            match m.quoted() {
                Some(q) => {
                    assert!(key.is_icmp_error());
                    assert_eq!(q.as_ptr(), l4_bytes[ICMP_HEADER_LEN..].as_ptr());
                    assert_eq!(q.len(), l4_bytes.len() - ICMP_HEADER_LEN);
                }
                None => assert!(!key.is_icmp_error()),
            }
            black_box((m.mtu(), m.verify_checksum(0)));
        }
        _ => assert_eq!((key.src_port, key.dst_port), (0, 0)),
    }
    black_box(frame.len());
}

/// `q` was returned by `quoted_flow_key` for the ICMP error `key`; `quote` is what follows the ICMP
/// header (up to the outer IP length).
fn check_quote(key: &FlowKey, quote: &[u8], q: &FlowKey) {
    assert_eq!((q.vlans, q.vlan_count, q.ip_version), (key.vlans, key.vlan_count, key.ip_version));
    assert_eq!((q.tcp_flags, q.icmp_type, q.icmp_code), (0, 0, 0));
    // The offsets locate the quoted headers inside the outer frame.
    assert_eq!(usize::from(q.l3_offset), usize::from(key.l4_offset) + 8);
    assert!(q.l4_offset > q.l3_offset);
    assert_eq!(usize::from(q.l4_offset) + usize::from(q.l4_len), usize::from(key.l4_offset) + usize::from(key.l4_len));
    if q.fragment == Fragment::None {
        assert_eq!(q.frag_ident, 0);
    }
    let l4 = match q.ip_version {
        IpVersion::V4 => {
            assert_eq!(quote[0] >> 4, 4);
            let hlen = usize::from(quote[0] & 0x0f) * 4;
            assert!(hlen >= IPV4_HEADER_LEN);
            assert_eq!(q.src_v4(), quote[12..16]);
            assert_eq!(q.dst_v4(), quote[16..20]);
            assert!(q.src_addr[4..].iter().chain(&q.dst_addr[4..]).all(|&b| b == 0));
            assert_eq!(q.protocol, quote[9]);
            let ff = be16(quote, 6);
            let fragment = match (ff & 0x3fff != 0, ff & 0x1fff) {
                (false, _) => Fragment::None,
                (true, 0) => Fragment::First,
                (true, _) => Fragment::Later,
            };
            assert_eq!(q.fragment, fragment);
            &quote[hlen..]
        }
        IpVersion::V6 => {
            assert_eq!(quote[0] >> 4, 6);
            assert_eq!(q.src_addr, quote[8..24]);
            assert_eq!(q.dst_addr, quote[24..40]);
            let walk = walk_extensions(quote[6], &quote[IPV6_HEADER_LEN..]).expect("quote walk disagrees");
            assert_eq!(q.protocol, walk.protocol);
            // An atomic fragment (offset 0, no more fragments) is a whole datagram (RFC 6946).
            match walk.fragment.filter(|f| f.is_fragment()) {
                None => assert_eq!(q.fragment, Fragment::None),
                Some(f) => assert_eq!(q.fragment, if f.offset == 0 { Fragment::First } else { Fragment::Later }),
            }
            &quote[IPV6_HEADER_LEN + walk.offset..]
        }
    };
    if q.fragment != Fragment::Later && (q.protocol == ip_proto::TCP || q.protocol == ip_proto::UDP) {
        assert_eq!((q.src_port, q.dst_port), (be16(l4, 0), be16(l4, 2)));
    } else {
        assert_eq!((q.src_port, q.dst_port), (0, 0));
    }
}

fn check_vxlan(frame: &[u8], key: &FlowKey, l4_bytes: &[u8], depth: u32) {
    let l4 = usize::from(key.l4_offset);
    if key.protocol == ip_proto::UDP && key.fragment != Fragment::Later && l4_bytes.len() >= UDP_HEADER_LEN {
        if let Ok(x) = VxlanPacket::new_checked(&l4_bytes[UDP_HEADER_LEN..]) {
            assert!(x.vni() <= MAX_VNI);
            assert_eq!(x.inner().len(), l4_bytes.len() - UDP_HEADER_LEN - VXLAN_HEADER_LEN);
        }
    }
    // What decapsulate needs, stated independently from the flow key and the views.
    let header_ok = match key.ip_version {
        IpVersion::V4 => Ipv4Packet::new_checked(&frame[usize::from(key.l3_offset)..]).unwrap().verify_checksum(),
        IpVersion::V6 => true,
    };
    let looks_like_vxlan = key.protocol == ip_proto::UDP
        && key.fragment == Fragment::None
        && key.dst_port == VXLAN_PORT
        && l4_bytes.len() >= UDP_HEADER_LEN + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN
        && usize::from(be16(l4_bytes, 4)) == l4_bytes.len()
        && l4_bytes[UDP_HEADER_LEN] & vxlan::FLAG_VNI_VALID != 0
        && header_ok;
    match vxlan::decapsulate(frame) {
        Ok(d) => {
            assert!(looks_like_vxlan, "decapsulate accepted what the flow key says is not VxLAN: {key:?}");
            assert_eq!(d.inner_offset, l4 + UDP_HEADER_LEN + VXLAN_HEADER_LEN);
            assert_eq!(d.inner.as_ptr(), frame[d.inner_offset..].as_ptr());
            assert_eq!(d.inner.len(), l4_bytes.len() - UDP_HEADER_LEN - VXLAN_HEADER_LEN);
            assert_eq!((d.outer_src, d.outer_dst), (key.src_ip(), key.dst_ip()));
            assert_eq!(d.udp_src_port, key.src_port);
            assert!(d.vni <= MAX_VNI);
            let x = VxlanPacket::new_checked(&l4_bytes[UDP_HEADER_LEN..]).expect("VxlanPacket rejects a decap'd frame");
            assert_eq!((x.vni(), x.inner().as_ptr()), (d.vni, d.inner.as_ptr()));
            if depth < MAX_DEPTH {
                check_frame(d.inner, depth + 1);
            }
        }
        Err(e) => {
            display(&e);
            assert!(!looks_like_vxlan, "decapsulate rejects a VxLAN frame with {e:?}: {key:?}");
        }
    }
}
