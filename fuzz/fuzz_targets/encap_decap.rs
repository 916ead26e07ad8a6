//! VxLAN round trip: an underlay picked from the input, the rest of the input as the inner frame.
//! `encapsulate` either fails with exactly the expected error and leaves the buffer untouched, or
//! builds outer headers that `decapsulate` (and the whole `parse_frame` oracle) accept and that give
//! back exactly the inner bytes, the VNI and the addresses.
//!
//! Input layout (bytes past the end of the input read as 0, so every input is valid):
//!
//! | bytes   | meaning                                                                                  |
//! |---------|------------------------------------------------------------------------------------------|
//! | 0       | flags: bit 0 IPv6 underlay; bit 1 zero IPv6 UDP checksum; bit 2 mix IPv4 and IPv6        |
//! |         | addresses (expect `BadVersion(0)`); bit 3 take the VNI unmasked (usually > 24 bits:      |
//! |         | expect `FieldOverflow`); bits 4-5 frame_len mode: 0 the inner frame, 1 inner + slack,    |
//! |         | 2 past the end of the buffer, 3 close to `usize::MAX`                                     |
//! | 1..5    | VNI (masked to 24 bits unless flag bit 3)                                                |
//! | 5       | TTL / hop limit                                                                          |
//! | 6..8    | underlay MTU                                                                             |
//! | 8       | headroom: where the inner frame starts in the buffer (`frame_start`)                     |
//! | 9..13   | flow hash                                                                                |
//! | 13..19  | source MAC; 19..25 destination MAC                                                      |
//! | 25..41  | source address; 41..57 destination address (IPv4 uses the first 4 bytes)                |
//! | 57      | slack: bytes after the inner frame in the buffer                                         |
//! | 58..    | the inner frame                                                                          |
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_core::wire::ethernet::ETHERNET_HEADER_LEN;
use lb_core::wire::vxlan::{self, MAX_VNI, OUTER_LEN_V4, OUTER_LEN_V6};
use lb_core::wire::{
    checksum, ip_proto, parse_flow_key, EtherType, EthernetFrame, IpVersion, Ipv4Packet, Ipv6Packet, Layer, MacAddr,
    UdpDatagram, VxlanEncap, WireError, VXLAN_PORT,
};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 58;

fn at<const N: usize>(data: &[u8], off: usize) -> [u8; N] {
    core::array::from_fn(|i| data.get(off + i).copied().unwrap_or(0))
}

/// Byte `i` of the headroom/slack filler (not all-equal, so a stray write shows).
fn filler(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ 0x5a
}

fuzz_target!(|data: &[u8]| {
    let [flags] = at::<1>(data, 0);
    let v6 = flags & 1 != 0;
    let zero_v6_csum = flags & 2 != 0;
    let mixed = flags & 4 != 0;
    let raw_vni = u32::from_be_bytes(at(data, 1));
    let vni = if flags & 8 != 0 { raw_vni } else { raw_vni & MAX_VNI };
    let len_mode = (flags >> 4) & 3;
    let [ttl] = at::<1>(data, 5);
    let mtu = u16::from_be_bytes(at(data, 6));
    let headroom = usize::from(at::<1>(data, 8)[0]);
    let hash = u32::from_be_bytes(at(data, 9));
    let src_mac = MacAddr(at(data, 13));
    let dst_mac = MacAddr(at(data, 19));
    let (src16, dst16): ([u8; 16], [u8; 16]) = (at(data, 25), at(data, 41));
    let (src4, dst4): ([u8; 4], [u8; 4]) = (at(data, 25), at(data, 41));
    let slack = usize::from(at::<1>(data, 57)[0]);
    let inner = data.get(HEADER..).unwrap_or(&[]);

    let v4_addr = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
    let v6_addr = |a: [u8; 16]| IpAddr::V6(Ipv6Addr::from(a));
    let (src, dst) = match (v6, mixed) {
        (false, false) => (v4_addr(src4), v4_addr(dst4)),
        (true, false) => (v6_addr(src16), v6_addr(dst16)),
        (false, true) => (v4_addr(src4), v6_addr(dst16)),
        (true, true) => (v6_addr(src16), v4_addr(dst4)),
    };

    let tunnel = VxlanEncap::new(src_mac, dst_mac, src, dst, vni, ttl, mtu);
    let tunnel = match (vni > MAX_VNI, mixed) {
        (true, _) => return assert_eq!(tunnel.err(), Some(WireError::FieldOverflow(Layer::Vxlan))),
        (false, true) => return assert_eq!(tunnel.err(), Some(WireError::BadVersion(0))),
        (false, false) => tunnel.expect("VxlanEncap::new rejects a valid underlay"),
    };
    let tunnel = tunnel.with_zero_ipv6_udp_checksum(zero_v6_csum);
    let n = if v6 { OUTER_LEN_V6 } else { OUTER_LEN_V4 };
    assert_eq!(tunnel.outer_len(), n);
    assert_eq!(tunnel.vni(), vni);

    // buf = [filler; headroom] ++ inner ++ [filler; slack]
    let mut buf: Vec<u8> = (0..headroom).map(filler).collect();
    buf.extend_from_slice(inner);
    buf.extend((0..slack).map(|i| filler(i + 7)));
    let before = buf.clone();
    let frame_len = match len_mode {
        0 => inner.len(),
        1 => inner.len() + slack,
        // Absurd lengths near usize::MAX must be refused, not overflow.
        3 => usize::MAX - slack,
        _ => inner.len() + slack + 1 + usize::from(ttl),
    };

    let expected = if headroom < n {
        Err(WireError::HeadroomTooSmall { needed: n as u16, available: headroom as u16 })
    } else {
        match (n - ETHERNET_HEADER_LEN).checked_add(frame_len) {
            Some(ip_total) if ip_total <= usize::from(mtu) => {
                if headroom + frame_len <= buf.len() {
                    Ok(headroom - n)
                } else {
                    Err(WireError::LengthMismatch(Layer::Vxlan))
                }
            }
            Some(ip_total) => Err(WireError::MtuExceeded { length: ip_total.min(0xffff) as u16, mtu }),
            None => Err(WireError::MtuExceeded { length: 0xffff, mtu }),
        }
    };
    let got = tunnel.encapsulate(&mut buf, headroom, frame_len, hash);
    if frame_len > usize::MAX / 2 && headroom >= n {
        // Whether an absurd length is reported as too long for the MTU or as past the buffer is the
        // library's choice; it must be one of the two, not a panic or an Ok.
        let ok = matches!(got, Err(WireError::MtuExceeded { .. }) | Err(WireError::LengthMismatch(Layer::Vxlan)));
        assert!(ok, "encapsulate(len {frame_len}) = {got:?}");
    } else {
        assert_eq!(got, expected, "encapsulate(headroom {headroom}, len {frame_len}, mtu {mtu}, outer {n})");
    }
    let start = match got {
        Ok(start) => start,
        Err(_) => return assert!(buf == before, "a failed encapsulate modified the buffer"),
    };

    // Only the outer headers were written.
    assert_eq!(buf[..start], before[..start], "bytes before the outer frame changed");
    assert_eq!(buf[headroom..], before[headroom..], "inner frame or slack changed");
    let end = headroom + frame_len;
    let outer = &buf[start..end];
    let inner_bytes = &before[headroom..end];

    // Outer Ethernet.
    let eth = EthernetFrame::new_checked(outer).unwrap();
    assert_eq!((eth.src(), eth.dst()), (src_mac, dst_mac));
    let ip_total = n - ETHERNET_HEADER_LEN + frame_len;
    let udp_len = ip_total - (n - ETHERNET_HEADER_LEN - 16);
    let udp_off = n - 16;
    // Outer IP.
    if v6 {
        assert_eq!(eth.ethertype(), EtherType::IPV6);
        let p = Ipv6Packet::new_checked(&outer[ETHERNET_HEADER_LEN..]).expect("outer IPv6 header rejected");
        let h = p.header();
        assert_eq!((p.src(), p.dst(), h.next_header, h.hop_limit), (src16, dst16, ip_proto::UDP, ttl));
        assert_eq!(usize::from(h.payload_len.get()), udp_len);
        assert_eq!((h.traffic_class(), h.flow_label()), (0, 0));
    } else {
        assert_eq!(eth.ethertype(), EtherType::IPV4);
        let p = Ipv4Packet::new_checked(&outer[ETHERNET_HEADER_LEN..]).expect("outer IPv4 header rejected");
        let h = p.header();
        assert!(p.verify_checksum(), "outer IPv4 header checksum does not verify");
        assert_eq!(checksum::ipv4_header(&outer[ETHERNET_HEADER_LEN..udp_off]), h.checksum.get());
        assert_eq!((p.src(), p.dst(), h.protocol, h.ttl), (src4, dst4, ip_proto::UDP, ttl));
        assert_eq!((h.version_ihl, usize::from(h.total_len.get())), (0x45, ip_total));
        assert!(h.dont_fragment() && !h.is_fragment(), "outer IPv4 must be an atomic DF datagram");
    }
    // Outer UDP.
    let udp = UdpDatagram::new_checked(&outer[udp_off..]).expect("outer UDP header rejected");
    assert_eq!(udp.src_port(), 0xc000 | (hash & 0x3fff) as u16);
    assert_eq!(udp.dst_port(), VXLAN_PORT);
    assert_eq!(usize::from(udp.header().length.get()), udp_len);
    assert_eq!(udp.payload().len(), udp_len - 8);
    let udp_csum = udp.header().checksum.get();
    if v6 && !zero_v6_csum {
        assert_ne!(udp_csum, 0, "IPv6 UDP checksum requested but 0 sent");
        let pseudo = checksum::pseudo_header_v6(&src16, &dst16, ip_proto::UDP, udp_len as u32);
        assert!(udp.verify_checksum(pseudo), "outer IPv6 UDP checksum does not verify");
    } else {
        assert_eq!(udp_csum, 0, "UDP checksum should be zero");
    }
    // VxLAN header.
    assert_eq!(
        outer[udp_off + 8..udp_off + 16],
        [vxlan::FLAG_VNI_VALID, 0, 0, 0, (vni >> 16) as u8, (vni >> 8) as u8, vni as u8, 0]
    );

    // Round trip.
    match vxlan::decapsulate(outer) {
        Ok(d) => {
            assert!(frame_len >= ETHERNET_HEADER_LEN);
            assert_eq!(d.inner, inner_bytes, "decapsulated inner frame differs");
            assert_eq!(d.inner_offset, n);
            assert_eq!((d.vni, d.outer_src, d.outer_dst), (vni, src, dst));
            assert_eq!(d.udp_src_port, udp.src_port());
        }
        Err(e) => {
            // decapsulate wants at least an inner Ethernet header; encapsulate takes any length.
            assert!(frame_len < ETHERNET_HEADER_LEN, "decapsulate rejects an encapsulated frame: {e:?}");
            assert_eq!(e, WireError::Truncated(Layer::Ethernet));
        }
    }
    let key = parse_flow_key(outer).expect("parse_flow_key rejects an encapsulated frame");
    assert_eq!((key.protocol, key.dst_port, key.src_port), (ip_proto::UDP, VXLAN_PORT, udp.src_port()));
    assert_eq!(key.ip_version, if v6 { IpVersion::V6 } else { IpVersion::V4 });
    assert_eq!((usize::from(key.l4_offset), usize::from(key.l4_len)), (udp_off, udp_len));
    assert_eq!((key.src_ip(), key.dst_ip()), (src, dst));
    lb_fuzz::check_frame(outer, 0);
});
