//! Property tests: lb-core's flow key checked against three independent oracles on random
//! well-formed and corrupted frames of every kind (the generator's own record of what it built,
//! etherparse and smoltcp), VxLAN encap → decap identity, and incremental checksums against full
//! recomputation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_core::wire::flow::quoted_flow_key;
use lb_core::wire::vxlan::decapsulate;
use lb_core::wire::{checksum, parse_flow_key, FlowKey, Fragment, MacAddr, VxlanEncap, WireError};
use lb_testkit::oracle::{etherparse_tuple, smoltcp_tuple, Tuple5};
use lb_testkit::{FragmentKind, FrameKind, GeneratedFrame, MixConfig, TrafficGenerator};
use proptest::prelude::*;

fn kinds() -> impl Strategy<Value = FrameKind> {
    proptest::sample::select(FrameKind::ALL.to_vec())
}

fn generate(seed: u64, kind: FrameKind, pad: bool) -> GeneratedFrame {
    TrafficGenerator::new(seed, MixConfig::uniform()).with_min_frame_padding(pad).frame_of_kind(kind)
}

fn octets(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

fn carries_ports(k: &FlowKey) -> bool {
    matches!(k.protocol, 6 | 17) && k.fragment != Fragment::Later
}

/// Compares a flow key with a peer crate's 5-tuple: addresses and protocol always, ports where both
/// sides decoded a transport header (etherparse decodes none for any fragment).
/// Two deliberate differences: an IPsec Authentication Header is the upper layer for lb-core in
/// IPv4 (AH signs the addresses, so such traffic cannot be NATed or balanced by ports), where
/// etherparse walks past it; and after a later IPv6 fragment lb-core reports the fragment header's
/// next header as the upper layer, because the bytes after it are the middle of a datagram and not
/// a header, while etherparse walks on through them as extension headers (hop-by-hop, routing,
/// fragment, destination options, AH, mobility, HIP, shim6).
fn agree(k: &FlowKey, t: &Tuple5, peer: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(k.src_addr, t.src, "src vs {}", peer);
    prop_assert_eq!(k.dst_addr, t.dst, "dst vs {}", peer);
    let v6_extension = matches!(k.protocol, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140);
    let ipv4 = k.ip_version == lb_core::wire::IpVersion::V4;
    if (k.protocol == 51 && ipv4) || (v6_extension && !ipv4 && k.fragment == Fragment::Later) {
        return Ok(());
    }
    prop_assert_eq!(k.protocol, t.protocol, "protocol vs {}", peer);
    if carries_ports(k) && (t.src_port, t.dst_port) != (0, 0) {
        prop_assert_eq!((k.src_port, k.dst_port), (t.src_port, t.dst_port), "ports vs {}", peer);
    }
    Ok(())
}

/// Invariants every accepted frame satisfies, whatever its bytes.
fn invariants(k: &FlowKey, len: usize) -> Result<(), TestCaseError> {
    prop_assert!(usize::from(k.l3_offset) < usize::from(k.l4_offset));
    prop_assert!(usize::from(k.l4_offset) + usize::from(k.l4_len) <= len);
    prop_assert!(usize::from(k.vlan_count) <= 2);
    prop_assert_eq!(usize::from(k.l3_offset), 14 + 4 * usize::from(k.vlan_count));
    if k.fragment == Fragment::Later {
        prop_assert_eq!((k.src_port, k.dst_port, k.tcp_flags), (0, 0, 0));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn well_formed_frames_agree_with_every_oracle(seed in any::<u64>(), kind in kinds(), pad in any::<bool>()) {
        let g = generate(seed, kind, pad);
        let e = &g.expected;
        let k = parse_flow_key(&g.bytes).map_err(|err| TestCaseError::fail(format!("{kind:?} rejected: {err}")))?;
        invariants(&k, g.bytes.len())?;

        // Oracle 1: what the generator built.
        prop_assert_eq!(k.src_ip(), e.src);
        prop_assert_eq!(k.dst_ip(), e.dst);
        prop_assert_eq!(k.protocol, e.protocol);
        prop_assert_eq!(&k.vlans[..usize::from(k.vlan_count)], &e.vlans[..]);
        prop_assert_eq!(usize::from(k.l3_offset), e.l3_offset);
        let frag = match e.fragment {
            FragmentKind::None => Fragment::None,
            FragmentKind::First => Fragment::First,
            FragmentKind::Later => Fragment::Later,
        };
        prop_assert_eq!(k.fragment, frag);
        if let Some(l4) = e.l4_offset {
            prop_assert_eq!(usize::from(k.l4_offset), l4);
        }
        prop_assert_eq!(k.tcp_flags, e.tcp_flags);
        if carries_ports(&k) {
            prop_assert_eq!((k.src_port, k.dst_port), (e.src_port, e.dst_port));
        }
        if let Some((ty, code)) = e.icmp_type {
            prop_assert_eq!((k.icmp_type, k.icmp_code), (ty, code));
        }
        match &e.quoted {
            Some(q) => {
                prop_assert!(k.is_icmp_error());
                let inner = quoted_flow_key(&g.bytes, &k).map_err(|err| TestCaseError::fail(err.to_string()))?;
                prop_assert_eq!(inner.src_ip(), q.src);
                prop_assert_eq!(inner.dst_ip(), q.dst);
                prop_assert_eq!((inner.protocol, inner.src_port, inner.dst_port), (q.protocol, q.src_port, q.dst_port));
            }
            None => prop_assert!(!k.is_icmp_error()),
        }

        // Oracles 2 and 3: etherparse and smoltcp parse every well-formed frame too.
        let ep = etherparse_tuple(&g.bytes);
        prop_assert!(ep.is_some(), "etherparse rejected a well-formed {:?}", kind);
        agree(&k, &ep.unwrap_or_default(), "etherparse")?;
        let sm = smoltcp_tuple(&g.bytes);
        prop_assert!(sm.is_some(), "smoltcp rejected a well-formed {:?}", kind);
        agree(&k, &sm.unwrap_or_default(), "smoltcp")?;
    }

    #[test]
    fn corrupted_frames_give_errors_or_consistent_keys(
        seed in any::<u64>(),
        kind in kinds(),
        edits in proptest::collection::vec((0usize..96, any::<u8>()), 1..4),
        cut in proptest::option::of(0usize..200),
    ) {
        let mut b = generate(seed, kind, false).bytes;
        for (at, v) in edits {
            if let Some(x) = b.get_mut(at) {
                *x = v;
            }
        }
        if let Some(c) = cut {
            b.truncate(c);
        }
        match parse_flow_key(&b) {
            Ok(k) => {
                invariants(&k, b.len())?;
                // Where a peer also accepts the corrupted frame, it must see the same flow.
                if let Some(t) = smoltcp_tuple(&b) {
                    agree(&k, &t, "smoltcp")?;
                }
                if let Some(t) = etherparse_tuple(&b) {
                    agree(&k, &t, "etherparse")?;
                }
                if k.is_icmp_error() {
                    let _ = quoted_flow_key(&b, &k);
                }
            }
            Err(WireError::Truncated(_)) if b.len() < 14 => {}
            Err(_) => {}
        }
    }

    #[test]
    fn encap_then_decap_is_identity(
        seed in any::<u64>(),
        kind in kinds(),
        v6 in any::<bool>(),
        zero_csum in any::<bool>(),
        vni in 0u32..=0x00ff_ffff,
        hash in any::<u32>(),
        slack in 0usize..64,
    ) {
        let inner = generate(seed, kind, false).bytes;
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 5, 10).into(), Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 10, 20).into())
        } else {
            (Ipv4Addr::new(172, 16, 5, 10).into(), Ipv4Addr::new(172, 16, 10, 20).into())
        };
        let t = VxlanEncap::new(MacAddr([2, 0, 0, 0, 5, 10]), MacAddr([2, 0, 0, 0, 10, 20]), src, dst, vni, 64, 9000)
            .unwrap()
            .with_zero_ipv6_udp_checksum(zero_csum);
        let headroom = t.outer_len() + slack;
        let mut buf = vec![0u8; headroom + inner.len()];
        buf[headroom..].copy_from_slice(&inner);
        let start = t.encapsulate(&mut buf, headroom, inner.len(), hash).unwrap();
        prop_assert_eq!(start, slack);
        let outer = &buf[start..];

        let d = decapsulate(outer).unwrap();
        prop_assert_eq!(d.inner, &inner[..]);
        prop_assert_eq!(d.vni, vni);
        prop_assert_eq!(d.inner_offset, t.outer_len());
        prop_assert_eq!((d.outer_src, d.outer_dst), (src, dst));
        prop_assert_eq!(parse_flow_key(d.inner), parse_flow_key(&inner));

        // The outer headers as an independent parser reads them.
        let o = etherparse_tuple(outer).unwrap();
        prop_assert_eq!((o.src, o.dst, o.protocol), (octets(src), octets(dst), 17));
        prop_assert_eq!(o.dst_port, 4789);
        prop_assert_eq!(o.src_port, 0xc000 | (hash & 0x3fff) as u16);
        let p = etherparse::SlicedPacket::from_ethernet(outer).unwrap();
        if let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net {
            prop_assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
        }
        if let (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Udp(u))) = (&p.net, &p.transport) {
            if zero_csum {
                prop_assert_eq!(u.checksum(), 0);
            } else {
                let h = ip.header().to_header();
                let want = u.to_header().calc_checksum_ipv6(&h, u.payload()).unwrap();
                prop_assert_eq!(u.checksum(), want);
            }
        }
    }

    #[test]
    fn incremental_checksum_matches_recompute(
        mut header in proptest::array::uniform20(any::<u8>()),
        word in 0usize..10,
        new in any::<u16>(),
        addr in proptest::array::uniform4(any::<u8>()),
    ) {
        header[10] = 0;
        header[11] = 0;
        let c = checksum::ipv4_header(&header);
        header[10..12].copy_from_slice(&c.to_be_bytes());
        // One 16-bit word (never the checksum itself).
        let w = if word == 5 { 4 } else { word };
        let old = u16::from_be_bytes([header[2 * w], header[2 * w + 1]]);
        let c1 = checksum::update16(c, old, new);
        header[2 * w..2 * w + 2].copy_from_slice(&new.to_be_bytes());
        // RFC 1624 eqn. 3 never yields 0x0000 where recomputation yields 0xffff or vice versa for a
        // header whose other words are not all zero; both are checked by summing the header.
        header[10..12].copy_from_slice(&c1.to_be_bytes());
        prop_assert_eq!(checksum::finish(checksum::sum(&header)), 0);
        // A whole address (NAT rewrite).
        let old_dst = [header[16], header[17], header[18], header[19]];
        let c2 = checksum::update(c1, &old_dst, &addr);
        header[16..20].copy_from_slice(&addr);
        header[10..12].copy_from_slice(&c2.to_be_bytes());
        prop_assert_eq!(checksum::finish(checksum::sum(&header)), 0);
        let mut fresh = header;
        fresh[10] = 0;
        fresh[11] = 0;
        let full = checksum::ipv4_header(&fresh);
        prop_assert!(c2 == full || (c2 == 0xffff && full == 0) || (c2 == 0 && full == 0xffff));
    }
}
