//! NAT on the packet path: in-place address and port rewrites with incremental checksum updates
//! (RFC 1624), and the TCP RST a load balancer sends both ends of a flow that idled out.
//!
//! [`rewrite`] works on a frame and the [`FlowKey`] parsed from it: the key's offsets locate the
//! headers, so nothing is parsed twice, and every offset is checked against the frame before the
//! first byte is written (an error leaves the frame as it was). Checksums are patched, never
//! recomputed: a rewrite costs a few dozen instructions whatever the payload length.

use core::net::IpAddr;

use zerocopy::byteorder::network_endian::U16;
use zerocopy::FromBytes;

use super::checksum;
use super::ethernet::{EtherType, EthernetRepr, MacAddr, VlanTag, ETHERNET_HEADER_LEN, VLAN_TAG_LEN};
use super::flow::{FlowKey, Fragment, IpVersion};
use super::icmp::{self, IcmpVersion, ICMP_HEADER_LEN};
use super::ipv4::{Ipv4Repr, IPV4_HEADER_LEN};
use super::ipv6::{Ipv6Repr, IPV6_HEADER_LEN};
use super::tcp::{TcpFlags, TcpRepr, TcpSegment, TCP_HEADER_LEN};
use super::udp::UDP_HEADER_LEN;
use super::{ip_proto, Layer, WireError};

/// Which endpoint of a packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The source address and port (SNAT, or the reverse of a DNAT on the return path).
    Src,
    /// The destination address and port (DNAT, or the reverse of an SNAT on the return path).
    Dst,
}

/// Offsets of the fields a rewrite touches, from the start of their header.
const IPV4_CHECKSUM_AT: usize = 10;
const IPV4_SRC_AT: usize = 12;
const IPV4_DST_AT: usize = 16;
const IPV6_SRC_AT: usize = 8;
const IPV6_DST_AT: usize = 24;
const TCP_CHECKSUM_AT: usize = 16;
const UDP_CHECKSUM_AT: usize = 6;
const ICMP_CHECKSUM_AT: usize = 2;
const ICMP_IDENT_AT: usize = 4;

/// The L4 words a rewrite patches, located (and bounds-checked) before anything is written.
#[derive(Clone, Copy)]
struct L4Patch {
    /// Frame offset of the checksum, `None` when the packet carries none (UDP checksum 0).
    checksum_at: Option<usize>,
    /// Frame offset of the port or echo identifier to rewrite, if any.
    port_at: Option<usize>,
    /// Whether the checksum covers the pseudo-header, and so the address (TCP, UDP, ICMPv6).
    pseudo: bool,
    /// UDP: a result of 0x0000 goes on the wire as 0xffff (RFC 768).
    udp: bool,
}

#[inline(always)]
fn get16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

#[inline(always)]
fn put16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, with `delta` the sum of `~m + m'` over every changed
/// word (it stays far below 2^32: at most three pairs of 16-bit values).
#[inline(always)]
fn adjust(check: u16, delta: u32) -> u16 {
    !checksum::fold(u32::from(!check) + delta)
}

/// Finds the L4 fields to patch and checks that the key's L4 header lies inside the frame.
#[inline(always)]
fn l4_patch(frame: &[u8], key: &FlowKey, side: Side, l4: usize) -> Result<Option<L4Patch>, WireError> {
    if key.fragment == Fragment::Later {
        return Ok(None);
    }
    let port_at = match side {
        Side::Src => l4,
        Side::Dst => l4 + 2,
    };
    let (need, layer) = match (key.protocol, key.ip_version) {
        (ip_proto::TCP, _) => (TCP_HEADER_LEN, Layer::Tcp),
        (ip_proto::UDP, _) => (UDP_HEADER_LEN, Layer::Udp),
        (ip_proto::ICMP, IpVersion::V4) | (ip_proto::ICMPV6, IpVersion::V6) => (ICMP_HEADER_LEN, Layer::Icmp),
        // Any other protocol (ICMP in the wrong IP version included) is opaque: address only.
        _ => return Ok(None),
    };
    // The caller checked `l4 + l4_len <= frame.len()`, so this bounds every access below.
    if usize::from(key.l4_len) < need {
        return Err(WireError::Truncated(layer));
    }
    Ok(match key.protocol {
        ip_proto::TCP => {
            Some(L4Patch { checksum_at: Some(l4 + TCP_CHECKSUM_AT), port_at: Some(port_at), pseudo: true, udp: false })
        }
        ip_proto::UDP => {
            // 0 means "no checksum". Over IPv4 that is RFC 768; over IPv6 a sender must compute one
            // (RFC 8200 8.1: a computed 0 goes out as 0xffff), so a 0 there can only be the
            // RFC 6935 zero-checksum tunnel exception, which patching would turn into a wrong value.
            let at = l4 + UDP_CHECKSUM_AT;
            let checksum_at = (get16(frame, at) != 0).then_some(at);
            Some(L4Patch { checksum_at, port_at: Some(port_at), pseudo: true, udp: true })
        }
        ip_proto::ICMP => {
            // No pseudo-header in ICMPv4: only an echo identifier change touches the checksum.
            icmp::is_echo(IcmpVersion::V4, frame[l4]).then_some(L4Patch {
                checksum_at: Some(l4 + ICMP_CHECKSUM_AT),
                port_at: Some(l4 + ICMP_IDENT_AT),
                pseudo: false,
                udp: false,
            })
        }
        _ => Some(L4Patch {
            checksum_at: Some(l4 + ICMP_CHECKSUM_AT),
            port_at: icmp::is_echo(IcmpVersion::V6, frame[l4]).then_some(l4 + ICMP_IDENT_AT),
            pseudo: true,
            udp: false,
        }),
    })
}

/// Rewrites the address (and, where the frame has ports, the port) of one side of a parsed frame in
/// place, patching every checksum that covers what changed (RFC 1624; nothing is recomputed).
///
/// `frame` holds the bytes `key` was parsed from ([`parse_flow_key`](super::parse_flow_key)); the old
/// values are read from the frame, so the key's addresses and ports need not be current. `addr` is
/// the new address (IPv4 uses its first 4 bytes), `port` the new port. By protocol:
/// - IPv4: the address and the header checksum.
/// - TCP and UDP (a whole datagram or its first fragment): also the port, and the L4 checksum for
///   both the pseudo-header address and the port. A UDP checksum of 0 ("none") stays 0; a patched
///   UDP checksum that comes out 0x0000 is written as 0xffff (RFC 768).
/// - ICMP echo (whose identifier the key reports as both ports): the identifier becomes `port` if it
///   differs, with the ICMP checksum patched. ICMPv6 checksums also cover the pseudo-header, so an
///   address change patches them too (for every ICMPv6 message); ICMPv4 has no pseudo-header.
///   An ICMP error has only its outer address rewritten, not the packet it quotes.
/// - Later fragments (no L4 header) and other protocols: the address only.
///
/// IPv6 Routing headers are not consulted: the pseudo-header is assumed to hold the address in the
/// IPv6 header, which is the final destination unless a Routing header has segments left.
///
/// Errors, with the frame untouched: the frame's IP version nibble differs from the key's
/// ([`WireError::BadVersion`]); the IP header or the L4 part the key describes runs past the frame,
/// or the key's L4 length is shorter than the header to patch ([`WireError::Truncated`]); the key
/// puts the L4 header inside the fixed IP header ([`WireError::LengthMismatch`]).
#[inline]
pub fn rewrite(frame: &mut [u8], key: &FlowKey, side: Side, addr: &[u8; 16], port: u16) -> Result<(), WireError> {
    let l3 = usize::from(key.l3_offset);
    let (ip_len, addr_len, addr_at, layer) = match (key.ip_version, side) {
        (IpVersion::V4, Side::Src) => (IPV4_HEADER_LEN, 4, IPV4_SRC_AT, Layer::Ipv4),
        (IpVersion::V4, Side::Dst) => (IPV4_HEADER_LEN, 4, IPV4_DST_AT, Layer::Ipv4),
        (IpVersion::V6, Side::Src) => (IPV6_HEADER_LEN, 16, IPV6_SRC_AT, Layer::Ipv6),
        (IpVersion::V6, Side::Dst) => (IPV6_HEADER_LEN, 16, IPV6_DST_AT, Layer::Ipv6),
    };
    if l3 + ip_len > frame.len() {
        return Err(WireError::Truncated(layer));
    }
    let version = frame[l3] >> 4;
    if version != key.ip_version as u8 {
        return Err(WireError::BadVersion(version));
    }
    let l4 = usize::from(key.l4_offset);
    if l4 < l3 + ip_len {
        return Err(WireError::LengthMismatch(layer));
    }
    if l4 + usize::from(key.l4_len) > frame.len() {
        return Err(WireError::Truncated(layer));
    }
    let patch = l4_patch(frame, key, side, l4)?;

    // Every offset is checked: from here on nothing fails.
    let at = l3 + addr_at;
    let new = &addr[..addr_len];
    let field = &mut frame[at..at + addr_len];
    let delta = u32::from(!checksum::fold(checksum::sum(field))) + u32::from(checksum::fold(checksum::sum(new)));
    field.copy_from_slice(new);
    if key.ip_version == IpVersion::V4 {
        let c = l3 + IPV4_CHECKSUM_AT;
        put16(frame, c, adjust(get16(frame, c), delta));
    }
    if let Some(p) = patch {
        let mut delta = if p.pseudo { delta } else { 0 };
        if let Some(at) = p.port_at {
            let old = get16(frame, at);
            if old != port {
                delta += u32::from(!old) + u32::from(port);
                put16(frame, at, port);
            }
        }
        if let Some(at) = p.checksum_at {
            let c = adjust(get16(frame, at), delta);
            put16(frame, at, if p.udp && c == 0 { 0xffff } else { c });
        }
    }
    Ok(())
}

/// A TCP RST segment in its own Ethernet frame: what a load balancer sends both ends of a flow it
/// drops on idle timeout, so that neither keeps a half-open connection.
///
/// `seq` must be acceptable to the receiver (RFC 9293 3.5.3: in its window, ideally its next expected
/// sequence number); with `ack` set the segment is RST+ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpResetRepr {
    /// Source MAC.
    pub src_mac: MacAddr,
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// 802.1Q VLAN id (12 bits) to tag the frame with, PCP 0.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address (same IP version as `src`).
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number; `Some` also sets the ACK flag.
    pub ack: Option<u32>,
}

/// TTL / hop limit of a generated reset.
const RESET_TTL: u8 = 64;

/// The IP header of a reset, by version.
enum IpRepr {
    V4(Ipv4Repr),
    V6(Ipv6Repr),
}

impl TcpResetRepr {
    /// Bytes `emit` writes: Ethernet, the optional tag, the IP header (by `src`'s version) and a
    /// 20-byte TCP header.
    pub fn frame_len(&self) -> usize {
        let ip = if self.src.is_ipv4() { IPV4_HEADER_LEN } else { IPV6_HEADER_LEN };
        self.l3_offset() + ip + TCP_HEADER_LEN
    }

    fn l3_offset(&self) -> usize {
        ETHERNET_HEADER_LEN + if self.vlan.is_some() { VLAN_TAG_LEN } else { 0 }
    }

    /// Writes Ethernet (+ an 802.1Q tag when `vlan` is set), IPv4 (TTL 64, DF, ident 0, header
    /// checksum) or IPv6 (hop limit 64), and a 20-byte TCP header (RST, plus ACK when `ack` is set;
    /// window 0; checksum) at the front of `buf`. Returns the frame length ([`Self::frame_len`]).
    ///
    /// Errors, with `buf` untouched: `src` and `dst` of different IP versions
    /// ([`WireError::BadVersion`] with `dst`'s version), a VLAN id above 4095
    /// ([`WireError::FieldOverflow`]`(Vlan)`), and a buffer too short ([`WireError::Truncated`] naming
    /// the first header that does not fit).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let tcp_len = TCP_HEADER_LEN as u16;
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpRepr::V4(Ipv4Repr {
                src: s.octets(),
                dst: d.octets(),
                protocol: ip_proto::TCP,
                payload_len: tcp_len,
                ttl: RESET_TTL,
                dscp_ecn: 0,
                ident: 0,
                dont_fragment: true,
            }),
            (IpAddr::V6(s), IpAddr::V6(d)) => IpRepr::V6(Ipv6Repr {
                src: s.octets(),
                dst: d.octets(),
                next_header: ip_proto::TCP,
                payload_len: tcp_len,
                hop_limit: RESET_TTL,
                traffic_class: 0,
                flow_label: 0,
            }),
            (_, IpAddr::V4(_)) => return Err(WireError::BadVersion(4)),
            (_, IpAddr::V6(_)) => return Err(WireError::BadVersion(6)),
        };
        let (ethertype, ip_layer, ip_len) = match ip {
            IpRepr::V4(_) => (EtherType::IPV4, Layer::Ipv4, IPV4_HEADER_LEN),
            IpRepr::V6(_) => (EtherType::IPV6, Layer::Ipv6, IPV6_HEADER_LEN),
        };
        if self.vlan.is_some_and(|vid| vid > 0x0fff) {
            return Err(WireError::FieldOverflow(Layer::Vlan));
        }
        let l3 = self.l3_offset();
        let l4 = l3 + ip_len;
        let len = l4 + TCP_HEADER_LEN;
        if buf.len() < len {
            let layer = match buf.len() {
                n if n < ETHERNET_HEADER_LEN => Layer::Ethernet,
                n if n < l3 => Layer::Vlan,
                n if n < l4 => ip_layer,
                _ => Layer::Tcp,
            };
            return Err(WireError::Truncated(layer));
        }
        let buf = &mut buf[..len];

        let outer_type = if self.vlan.is_some() { EtherType::VLAN } else { ethertype };
        EthernetRepr { src: self.src_mac, dst: self.dst_mac, ethertype: outer_type }.emit(buf)?;
        if let Some(vid) = self.vlan {
            let (tag, _) = VlanTag::mut_from_prefix(&mut buf[ETHERNET_HEADER_LEN..])
                .map_err(|_| WireError::Truncated(Layer::Vlan))?;
            *tag = VlanTag { tci: U16::new(vid), ethertype: U16::new(ethertype) };
        }
        let pseudo = match ip {
            IpRepr::V4(r) => {
                r.emit(&mut buf[l3..])?;
                checksum::pseudo_header_v4(r.src, r.dst, ip_proto::TCP, tcp_len)
            }
            IpRepr::V6(r) => {
                r.emit(&mut buf[l3..])?;
                checksum::pseudo_header_v6(&r.src, &r.dst, ip_proto::TCP, u32::from(tcp_len))
            }
        };
        let flags = if self.ack.is_some() { TcpFlags::RST | TcpFlags::ACK } else { TcpFlags::RST };
        TcpRepr {
            src_port: self.src_port,
            dst_port: self.dst_port,
            seq: self.seq,
            ack: self.ack.unwrap_or(0),
            flags,
            window: 0,
        }
        .emit(&mut buf[l4..])?;
        TcpSegment::new_checked(&mut buf[l4..])?.fill_checksum(pseudo);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_flow_key;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use etherparse::{
        IcmpEchoHeader, Icmpv4Type, Icmpv6Type, IpHeaders, NetSlice, PacketBuilder, PacketBuilderStep, SlicedPacket,
        TransportSlice, VlanId,
    };
    use proptest::prelude::*;
    use std::vec::Vec;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    /// An odd length, so the last checksum word is padded.
    const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: vip.example\r\n\r\n!";

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    }
    fn first4(a: &[u8; 16]) -> [u8; 4] {
        [a[0], a[1], a[2], a[3]]
    }

    // Client -> VIP, rewritten to SNAT address -> backend (both sides translated, as a MUX with
    // outbound SNAT or a host agent would).
    const CLIENT4: [u8; 4] = [203, 0, 113, 7];
    const VIP4: [u8; 4] = [20, 50, 60, 10];
    const SNAT4: [u8; 4] = [100, 64, 0, 1];
    const BACKEND4: [u8; 4] = [10, 0, 1, 4];
    const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    const VIP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    const SNAT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64, 0, 1];
    const BACKEND6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4];

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum L4 {
        Tcp,
        Udp,
        Echo,
    }

    /// Ethernet (optionally tagged) + IP, from etherparse's builder (which fills every checksum).
    fn ip_step(src: &[u8; 16], dst: &[u8; 16], v6: bool, vlan: Option<u16>) -> PacketBuilderStep<IpHeaders> {
        let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
        match (vlan, v6) {
            (None, false) => eth.ipv4(first4(src), first4(dst), 64),
            (None, true) => eth.ipv6(*src, *dst, 64),
            (Some(id), false) => eth.single_vlan(VlanId::try_new(id).unwrap()).ipv4(first4(src), first4(dst), 64),
            (Some(id), true) => eth.single_vlan(VlanId::try_new(id).unwrap()).ipv6(*src, *dst, 64),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        l4: L4,
        v6: bool,
        vlan: Option<u16>,
        src: &[u8; 16],
        dst: &[u8; 16],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let ip = ip_step(src, dst, v6, vlan);
        let mut out = Vec::new();
        match l4 {
            L4::Tcp => ip.tcp(sport, dport, 0x1234_5678, 65535).ack(0x9abc_def0).psh().write(&mut out, payload),
            L4::Udp => ip.udp(sport, dport).write(&mut out, payload),
            L4::Echo if v6 => ip.icmpv6_echo_request(sport, 7).write(&mut out, payload),
            L4::Echo => ip.icmpv4_echo_request(sport, 7).write(&mut out, payload),
        }
        .unwrap();
        out
    }

    /// `a` and `b` are the same ones'-complement number (0x0000 and 0xffff are both zero).
    fn same_checksum(a: u16, b: u16) -> bool {
        a == b || (a ^ b == 0xffff && (a == 0 || b == 0))
    }

    /// Frame offsets a rewrite of both sides of `key` may change.
    fn nat_fields(key: &FlowKey) -> Vec<usize> {
        let (l3, l4) = (usize::from(key.l3_offset), usize::from(key.l4_offset));
        let mut v: Vec<usize> = match key.ip_version {
            IpVersion::V4 => (l3 + 10..l3 + 12).chain(l3 + 12..l3 + 20).collect(),
            IpVersion::V6 => (l3 + 8..l3 + 40).collect(),
        };
        if key.fragment != Fragment::Later {
            match key.protocol {
                ip_proto::TCP => v.extend((l4..l4 + 4).chain(l4 + 16..l4 + 18)),
                ip_proto::UDP => v.extend((l4..l4 + 4).chain(l4 + 6..l4 + 8)),
                ip_proto::ICMP | ip_proto::ICMPV6 => v.extend(l4 + 2..l4 + 6),
                _ => {}
            }
        }
        v
    }

    /// Every byte but the NAT fields (payload, padding, other headers) is unchanged.
    fn only_nat_fields_changed(before: &[u8], after: &[u8], key: &FlowKey) {
        assert_eq!(before.len(), after.len());
        let allowed = nat_fields(key);
        for (i, (a, b)) in before.iter().zip(after).enumerate() {
            assert!(a == b || allowed.contains(&i), "byte {i} changed: {a:#04x} -> {b:#04x}");
        }
    }

    /// Checks a rewritten whole (unfragmented) datagram with etherparse: addresses, ports (or echo
    /// identifier), payload, and IP and L4 checksums recomputed from scratch.
    fn check_with_etherparse(before: &[u8], after: &[u8], src: [u8; 16], dst: [u8; 16], ports: (u16, u16)) {
        let p = SlicedPacket::from_ethernet(after).unwrap();
        let old = SlicedPacket::from_ethernet(before).unwrap();
        let v6 = match p.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
                assert_eq!((v4(h.source), v4(h.destination)), (src, dst));
                false
            }
            NetSlice::Ipv6(ip) => {
                assert_eq!((ip.header().source(), ip.header().destination()), (src, dst));
                true
            }
            NetSlice::Arp(_) => panic!("not IP"),
        };
        let (s4, d4) = (first4(&src), first4(&dst));
        match (p.transport.unwrap(), old.transport.unwrap()) {
            (TransportSlice::Tcp(t), TransportSlice::Tcp(o)) => {
                assert_eq!((t.source_port(), t.destination_port()), ports);
                assert_eq!(t.payload(), o.payload());
                let want = if v6 { t.calc_checksum_ipv6(src, dst) } else { t.calc_checksum_ipv4(s4, d4) }.unwrap();
                assert!(same_checksum(t.checksum(), want), "TCP checksum {:#06x}, want {want:#06x}", t.checksum());
            }
            (TransportSlice::Udp(u), TransportSlice::Udp(o)) => {
                assert_eq!((u.source_port(), u.destination_port()), ports);
                assert_eq!(u.payload(), o.payload());
                if o.checksum() == 0 {
                    assert_eq!(u.checksum(), 0, "no checksum stays no checksum");
                } else {
                    let h = u.to_header();
                    let want = if v6 {
                        h.calc_checksum_ipv6_raw(src, dst, u.payload())
                    } else {
                        h.calc_checksum_ipv4_raw(s4, d4, u.payload())
                    }
                    .unwrap();
                    assert_eq!(u.checksum(), want, "UDP checksum");
                }
            }
            (TransportSlice::Icmpv4(i), TransportSlice::Icmpv4(o)) => {
                assert_eq!(i.payload(), o.payload());
                assert_eq!(i.checksum(), i.icmp_type().calc_checksum(i.payload()), "ICMPv4 checksum");
                if let Icmpv4Type::EchoRequest(IcmpEchoHeader { id, .. }) = i.icmp_type() {
                    assert_eq!((id, id), ports);
                }
            }
            (TransportSlice::Icmpv6(i), TransportSlice::Icmpv6(o)) => {
                assert_eq!(i.payload(), o.payload());
                let want = i.icmp_type().calc_checksum(src, dst, i.payload()).unwrap();
                assert_eq!(i.checksum(), want, "ICMPv6 checksum");
                if let Icmpv6Type::EchoRequest(IcmpEchoHeader { id, .. }) = i.icmp_type() {
                    assert_eq!((id, id), ports);
                }
            }
            (t, o) => panic!("transport changed kind: {t:?} vs {o:?}"),
        }
    }

    /// Verifies the IP header checksum and, for a whole datagram, the L4 checksum with smoltcp.
    fn check_with_smoltcp(after: &[u8], key: &FlowKey) {
        use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};
        let l3 = &after[usize::from(key.l3_offset)..];
        let (src, dst) = match key.ip_version {
            IpVersion::V4 => {
                let ip = Ipv4Packet::new_checked(l3).unwrap();
                assert!(ip.verify_checksum(), "smoltcp: IPv4 header checksum");
                (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()))
            }
            IpVersion::V6 => {
                let ip = Ipv6Packet::new_checked(l3).unwrap();
                (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()))
            }
        };
        if key.fragment != Fragment::None {
            return; // the L4 checksum covers the whole datagram
        }
        let l4 = &after[usize::from(key.l4_offset)..][..usize::from(key.l4_len)];
        let ok = match (key.protocol, src, dst) {
            (ip_proto::TCP, _, _) => TcpPacket::new_checked(l4).unwrap().verify_checksum(&src, &dst),
            (ip_proto::UDP, _, _) => UdpPacket::new_checked(l4).unwrap().verify_checksum(&src, &dst),
            (ip_proto::ICMP, _, _) => Icmpv4Packet::new_checked(l4).unwrap().verify_checksum(),
            (ip_proto::ICMPV6, IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                Icmpv6Packet::new_checked(l4).unwrap().verify_checksum(&s, &d)
            }
            _ => true,
        };
        assert!(ok, "smoltcp: L4 checksum of protocol {}", key.protocol);
    }

    /// Rewrites both sides of `frame` and returns the result and the key it was parsed with.
    fn nat(frame: &[u8], src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> (Vec<u8>, FlowKey) {
        let key = parse_flow_key(frame).unwrap();
        let mut out = frame.to_vec();
        rewrite(&mut out, &key, Side::Src, &src, sport).unwrap();
        rewrite(&mut out, &key, Side::Dst, &dst, dport).unwrap();
        only_nat_fields_changed(frame, &out, &key);
        check_with_smoltcp(&out, &key);
        let k = parse_flow_key(&out).unwrap();
        assert_eq!((k.src_addr, k.dst_addr, k.protocol), (src, dst, key.protocol));
        (out, key)
    }

    /// Builds, rewrites both sides, and checks with both oracles.
    fn nat_and_check(l4: L4, v6: bool, vlan: Option<u16>) {
        let (client, vip, snat, backend) =
            if v6 { (CLIENT6, VIP6, SNAT6, BACKEND6) } else { (v4(CLIENT4), v4(VIP4), v4(SNAT4), v4(BACKEND4)) };
        let frame = build(l4, v6, vlan, &client, &vip, 50000, 443, PAYLOAD);
        let (sport, dport) = if l4 == L4::Echo { (0x4242, 0x4242) } else { (61001, 8443) };
        let (out, key) = nat(&frame, snat, sport, backend, dport);
        assert_eq!(usize::from(key.vlan_count), usize::from(vlan.is_some()));
        check_with_etherparse(&frame, &out, snat, backend, (sport, dport));
        // Translating back restores the original frame (a checksum may flip between 0x0000 and
        // 0xffff, the two encodings of zero).
        let reply_key = parse_flow_key(&out).unwrap();
        let (back_sport, back_dport) = if l4 == L4::Echo { (50000, 50000) } else { (50000, 443) };
        let mut back = out.clone();
        rewrite(&mut back, &reply_key, Side::Src, &client, back_sport).unwrap();
        rewrite(&mut back, &reply_key, Side::Dst, &vip, back_dport).unwrap();
        only_nat_fields_changed(&frame, &back, &key);
        assert_eq!(parse_flow_key(&back).unwrap(), key);
        check_with_smoltcp(&back, &reply_key);
    }

    #[test]
    fn ipv4_tcp() {
        nat_and_check(L4::Tcp, false, None);
    }

    #[test]
    fn ipv4_udp_with_checksum() {
        nat_and_check(L4::Udp, false, None);
    }

    #[test]
    fn ipv6_tcp() {
        nat_and_check(L4::Tcp, true, None);
    }

    #[test]
    fn ipv6_udp() {
        nat_and_check(L4::Udp, true, None);
    }

    #[test]
    fn vlan_tagged_ipv4_tcp() {
        nat_and_check(L4::Tcp, false, Some(10));
    }

    #[test]
    fn vlan_tagged_ipv6_udp() {
        nat_and_check(L4::Udp, true, Some(4094));
    }

    #[test]
    fn icmpv4_echo() {
        nat_and_check(L4::Echo, false, None);
    }

    #[test]
    fn icmpv6_echo() {
        nat_and_check(L4::Echo, true, None);
    }

    #[test]
    fn ipv4_udp_without_checksum_stays_zero() {
        let mut frame = build(L4::Udp, false, None, &v4(CLIENT4), &v4(VIP4), 50000, 53, b"abc");
        let key = parse_flow_key(&frame).unwrap();
        let ck = usize::from(key.l4_offset) + 6;
        frame[ck..ck + 2].fill(0);
        // Ethernet padding up to the 60-byte minimum must survive untouched.
        frame.resize(60, 0xee);
        let (out, _) = nat(&frame, v4(SNAT4), 61001, v4(BACKEND4), 5353);
        assert_eq!(&out[ck..ck + 2], &[0, 0]);
        check_with_etherparse(&frame, &out, v4(SNAT4), v4(BACKEND4), (61001, 5353));
        assert!(out[out.len() - 14..].iter().all(|&b| b == 0xee));
    }

    #[test]
    fn ipv6_udp_zero_checksum_tunnel_exception_stays_zero() {
        let mut frame = build(L4::Udp, true, None, &CLIENT6, &VIP6, 50000, 4789, b"vxlan");
        let key = parse_flow_key(&frame).unwrap();
        let ck = usize::from(key.l4_offset) + 6;
        frame[ck..ck + 2].fill(0);
        let mut out = frame.clone();
        rewrite(&mut out, &key, Side::Dst, &BACKEND6, 4789).unwrap();
        assert_eq!(&out[ck..ck + 2], &[0, 0]);
        only_nat_fields_changed(&frame, &out, &key);
    }

    #[test]
    fn icmpv4_echo_same_identifier_leaves_the_checksum() {
        // ICMPv4 has no pseudo-header: an address-only rewrite keeps its checksum byte for byte.
        let frame = build(L4::Echo, false, None, &v4(CLIENT4), &v4(VIP4), 0x1234, 0x1234, b"ping");
        let key = parse_flow_key(&frame).unwrap();
        assert_eq!((key.src_port, key.dst_port), (0x1234, 0x1234));
        let mut out = frame.clone();
        rewrite(&mut out, &key, Side::Dst, &v4(BACKEND4), key.dst_port).unwrap();
        let l4 = usize::from(key.l4_offset);
        assert_eq!(out[l4..], frame[l4..], "ICMP header and data unchanged");
        check_with_smoltcp(&out, &key);
    }

    #[test]
    fn udp_checksum_patched_to_zero_is_sent_as_ffff() {
        for v6 in [false, true] {
            let (client, vip, snat) = if v6 { (CLIENT6, VIP6, SNAT6) } else { (v4(CLIENT4), v4(VIP4), v4(SNAT4)) };
            let frame = build(L4::Udp, v6, None, &client, &vip, 50000, 53, b"query");
            let key = parse_flow_key(&frame).unwrap();
            let ck = usize::from(key.l4_offset) + 6;
            let mut probe = frame.clone();
            rewrite(&mut probe, &key, Side::Src, &snat, 50000).unwrap();
            let c = u16::from_be_bytes([probe[ck], probe[ck + 1]]);
            // Adding the checksum to one address word makes the datagram's sum ones'-complement zero,
            // so the patched checksum is 0x0000, which UDP must send as 0xffff.
            let w = if v6 { 14 } else { 2 };
            let mut addr = snat;
            let word = u16::from_be_bytes([addr[w], addr[w + 1]]);
            addr[w..w + 2].copy_from_slice(&checksum::fold(u32::from(word) + u32::from(c)).to_be_bytes());
            let (out, _) = nat(&frame, addr, 50000, vip, 53);
            assert_eq!(&out[ck..ck + 2], &[0xff, 0xff], "v6 {v6}");
            check_with_etherparse(&frame, &out, addr, vip, (50000, 53));
        }
    }

    #[test]
    fn icmp_errors_rewrite_only_the_outer_address() {
        for v6 in [false, true] {
            let (client, vip, backend) =
                if v6 { (CLIENT6, VIP6, BACKEND6) } else { (v4(CLIENT4), v4(VIP4), v4(BACKEND4)) };
            // The backend's SYN-ACK, quoted by a router's "fragmentation needed" / "packet too big".
            let syn_ack = build(L4::Tcp, v6, None, &backend, &client, 443, 50000, &[]);
            let quote = &syn_ack[14..];
            let ip = ip_step(&vip, &backend, v6, None);
            let mut frame = Vec::new();
            if v6 {
                ip.icmpv6_raw(2, 0, 1280u32.to_be_bytes()).write(&mut frame, quote).unwrap();
            } else {
                ip.icmpv4_raw(3, 4, [0, 0, 0x05, 0x78]).write(&mut frame, quote).unwrap();
            }
            let key = parse_flow_key(&frame).unwrap();
            assert!(key.is_icmp_error());
            let (out, _) = nat(&frame, vip, 0, client, 0);
            let l4 = usize::from(key.l4_offset);
            assert_eq!(out[l4 + 4..], frame[l4 + 4..], "the quoted packet is left alone");
            if !v6 {
                assert_eq!(out[l4..l4 + 4], frame[l4..l4 + 4], "ICMPv4 checksum has no pseudo-header");
            }
            check_with_etherparse(&frame, &out, vip, client, (0, 0));
        }
    }

    #[test]
    fn other_protocols_rewrite_only_the_address() {
        // GRE (47) over IPv4: the address and the header checksum, nothing else.
        let mut frame = build(L4::Udp, false, None, &v4(CLIENT4), &v4(VIP4), 1, 2, b"opaque payload");
        frame[14 + 9] = 47;
        let c = checksum::ipv4_header(&frame[14..34]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
        let key = parse_flow_key(&frame).unwrap();
        assert_eq!((key.protocol, key.src_port), (47, 0));
        let mut out = frame.clone();
        rewrite(&mut out, &key, Side::Dst, &v4(BACKEND4), 9999).unwrap();
        assert_eq!(out[34..], frame[34..]);
        assert_eq!(out[30..34], BACKEND4);
        check_with_smoltcp(&out, &key);
    }

    /// Splits a whole IPv4 or IPv6 frame after `first` bytes of L4 data (a multiple of 8) into a first
    /// and a later fragment, each with valid IP headers.
    fn fragment(frame: &[u8], v6: bool, first: usize) -> (Vec<u8>, Vec<u8>) {
        let key = parse_flow_key(frame).unwrap();
        let (l3, l4) = (usize::from(key.l3_offset), usize::from(key.l4_offset));
        let data = &frame[l4..l4 + usize::from(key.l4_len)];
        let (head, tail) = data.split_at(first);
        let make = |offset: usize, more: bool, part: &[u8]| -> Vec<u8> {
            let mut f = frame[..l4].to_vec();
            if v6 {
                // Insert a Fragment header between the IPv6 header and the data.
                let next = f[l3 + 6];
                f[l3 + 6] = ip_proto::IPV6_FRAGMENT;
                let offset_flags = ((offset / 8) << 3) as u16 | u16::from(more);
                f.extend_from_slice(&[next, 0]);
                f.extend_from_slice(&offset_flags.to_be_bytes());
                f.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
                f[l3 + 4..l3 + 6].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
            } else {
                let flags = (offset / 8) as u16 | if more { crate::wire::ipv4::FLAG_MF } else { 0 };
                f[l3 + 6..l3 + 8].copy_from_slice(&flags.to_be_bytes());
                f[l3 + 2..l3 + 4].copy_from_slice(&((l4 - l3 + part.len()) as u16).to_be_bytes());
                f[l3 + 10..l3 + 12].fill(0);
                let c = checksum::ipv4_header(&f[l3..l4]);
                f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            }
            f.extend_from_slice(part);
            f
        };
        (make(0, true, head), make(first, false, tail))
    }

    #[test]
    fn fragments_reassemble_with_valid_checksums() {
        let payload: Vec<u8> = (0..97u8).collect();
        for (l4, v6) in [(L4::Tcp, false), (L4::Udp, false), (L4::Tcp, true), (L4::Udp, true)] {
            let (client, vip, snat, backend) =
                if v6 { (CLIENT6, VIP6, SNAT6, BACKEND6) } else { (v4(CLIENT4), v4(VIP4), v4(SNAT4), v4(BACKEND4)) };
            let whole = build(l4, v6, None, &client, &vip, 50000, 443, &payload);
            let (first, later) = fragment(&whole, v6, 40);
            let first_key = parse_flow_key(&first).unwrap();
            let later_key = parse_flow_key(&later).unwrap();
            assert_eq!((first_key.fragment, first_key.src_port), (Fragment::First, 50000));
            assert_eq!((later_key.fragment, later_key.src_port), (Fragment::Later, 0));
            let (first_out, _) = nat(&first, snat, 61001, backend, 8443);
            // A later fragment has no ports: whatever port is passed, only addresses change.
            let (later_out, _) = nat(&later, snat, 61001, backend, 8443);
            // Reassemble the L4 data and verify it against the new pseudo-header.
            let mut data = first_out[usize::from(first_key.l4_offset)..].to_vec();
            data.extend_from_slice(&later_out[usize::from(later_key.l4_offset)..]);
            let (s, d) = (first4(&snat), first4(&backend));
            let (stored, want) = if l4 == L4::Tcp {
                let (h, rest) = etherparse::TcpHeader::from_slice(&data).unwrap();
                assert_eq!((h.source_port, h.destination_port), (61001, 8443));
                let want = if v6 {
                    h.calc_checksum_ipv6_raw(snat, backend, rest)
                } else {
                    h.calc_checksum_ipv4_raw(s, d, rest)
                };
                (h.checksum, want.unwrap())
            } else {
                let (h, rest) = etherparse::UdpHeader::from_slice(&data).unwrap();
                assert_eq!((h.source_port, h.destination_port), (61001, 8443));
                let want = if v6 {
                    h.calc_checksum_ipv6_raw(snat, backend, rest)
                } else {
                    h.calc_checksum_ipv4_raw(s, d, rest)
                };
                (h.checksum, want.unwrap())
            };
            assert!(same_checksum(stored, want), "{l4:?} v6 {v6}: {stored:#06x} vs {want:#06x}");
            assert!(data.ends_with(&payload));
        }
    }

    #[test]
    fn truncated_or_mismatched_keys_are_errors_not_panics() {
        let frames = [
            build(L4::Tcp, false, Some(10), &v4(CLIENT4), &v4(VIP4), 50000, 443, PAYLOAD),
            build(L4::Udp, true, None, &CLIENT6, &VIP6, 50000, 443, PAYLOAD),
            build(L4::Echo, true, None, &CLIENT6, &VIP6, 7, 7, b""),
            build(L4::Echo, false, None, &v4(CLIENT4), &v4(VIP4), 7, 7, b""),
        ];
        for frame in &frames {
            let key = parse_flow_key(frame).unwrap();
            let end = usize::from(key.l4_offset) + usize::from(key.l4_len);
            assert_eq!(end, frame.len());
            for len in 0..end {
                for side in [Side::Src, Side::Dst] {
                    let mut f = frame[..len].to_vec();
                    assert!(rewrite(&mut f, &key, side, &[9; 16], 1).is_err(), "len {len}");
                    assert_eq!(f, frame[..len], "an error leaves the frame untouched");
                }
            }
            let bad_keys = [
                FlowKey { l3_offset: u16::MAX, ..key },
                FlowKey { l4_offset: u16::MAX, l4_len: u16::MAX, ..key },
                FlowKey { l4_len: key.l4_len + 1, ..key },
                FlowKey { l4_len: 4, ..key },
                FlowKey { l4_offset: key.l3_offset + 8, ..key },
                FlowKey {
                    ip_version: if key.ip_version == IpVersion::V4 { IpVersion::V6 } else { IpVersion::V4 },
                    ..key
                },
                FlowKey::default(),
            ];
            for k in bad_keys {
                let mut f = frame.clone();
                assert!(rewrite(&mut f, &k, Side::Dst, &[9; 16], 1).is_err(), "{k:?}");
                assert_eq!(&f, frame);
            }
        }
        let tcp = &frames[0];
        let key = parse_flow_key(tcp).unwrap();
        let mut f = tcp.clone();
        assert_eq!(rewrite(&mut f[..40], &key, Side::Src, &[9; 16], 1), Err(WireError::Truncated(Layer::Ipv4)));
        assert_eq!(
            rewrite(&mut f, &FlowKey { l4_len: 19, ..key }, Side::Src, &[9; 16], 1),
            Err(WireError::Truncated(Layer::Tcp))
        );
        assert_eq!(
            rewrite(&mut f, &FlowKey { l4_offset: key.l3_offset + 19, ..key }, Side::Src, &[9; 16], 1),
            Err(WireError::LengthMismatch(Layer::Ipv4))
        );
        assert_eq!(
            rewrite(&mut f, &FlowKey { ip_version: IpVersion::V6, ..key }, Side::Src, &[9; 16], 1),
            Err(WireError::BadVersion(4))
        );
    }

    proptest! {
        #[test]
        fn incremental_checksums_match_full_recomputation(
            v6 in any::<bool>(),
            tcp in any::<bool>(),
            zero_udp_checksum in any::<bool>(),
            old in (proptest::array::uniform16(any::<u8>()), proptest::array::uniform16(any::<u8>())),
            new in (proptest::array::uniform16(any::<u8>()), proptest::array::uniform16(any::<u8>())),
            ports in (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
            payload in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let l4 = if tcp { L4::Tcp } else { L4::Udp };
            let mut frame = build(l4, v6, None, &old.0, &old.1, ports.0, ports.1, &payload);
            let key = parse_flow_key(&frame).unwrap();
            let (l3, l4_at) = (usize::from(key.l3_offset), usize::from(key.l4_offset));
            let ck = l4_at + if tcp { 16 } else { 6 };
            let no_checksum = !tcp && !v6 && zero_udp_checksum;
            if no_checksum {
                frame[ck..ck + 2].fill(0);
            }
            let mut out = frame.clone();
            rewrite(&mut out, &key, Side::Src, &new.0, ports.2).unwrap();
            rewrite(&mut out, &key, Side::Dst, &new.1, ports.3).unwrap();
            let (src, dst) = if v6 { (new.0, new.1) } else { (v4(first4(&new.0)), v4(first4(&new.1))) };
            let got = u16::from_be_bytes([out[ck], out[ck + 1]]);
            // Full recomputation, twice: this crate's RFC 1071 code and etherparse.
            let mut zeroed = out[l4_at..].to_vec();
            zeroed[ck - l4_at..ck - l4_at + 2].fill(0);
            let len = zeroed.len();
            let pseudo = if v6 {
                checksum::pseudo_header_v6(&src, &dst, key.protocol, len as u32)
            } else {
                checksum::pseudo_header_v4(first4(&src), first4(&dst), key.protocol, len as u16)
            };
            let ours = checksum::transport(pseudo, &zeroed);
            let theirs = if tcp {
                let (h, rest) = etherparse::TcpHeader::from_slice(&out[l4_at..]).unwrap();
                if v6 { h.calc_checksum_ipv6_raw(src, dst, rest) } else { h.calc_checksum_ipv4_raw(first4(&src), first4(&dst), rest) }
            } else {
                let (h, rest) = etherparse::UdpHeader::from_slice(&out[l4_at..]).unwrap();
                if v6 { h.calc_checksum_ipv6_raw(src, dst, rest) } else { h.calc_checksum_ipv4_raw(first4(&src), first4(&dst), rest) }
            }.unwrap();
            prop_assert_eq!((u16::from_be_bytes([out[l4_at], out[l4_at + 1]]), u16::from_be_bytes([out[l4_at + 2], out[l4_at + 3]])), (ports.2, ports.3));
            if no_checksum {
                prop_assert_eq!(got, 0);
            } else if tcp {
                prop_assert!(same_checksum(got, ours) && same_checksum(got, theirs), "{:#06x} {:#06x} {:#06x}", got, ours, theirs);
            } else {
                // UDP: exactly, 0x0000 being sent as 0xffff.
                prop_assert_eq!(got, if ours == 0 { 0xffff } else { ours });
                prop_assert_eq!(got, theirs);
            }
            if !v6 {
                let c = u16::from_be_bytes([out[l3 + 10], out[l3 + 11]]);
                prop_assert!(same_checksum(c, checksum::ipv4_header(&out[l3..l3 + 20])));
            }
            prop_assert_eq!(&out[ck + 2..], &frame[ck + 2..], "payload unchanged");
        }
    }

    fn reset(v6: bool, vlan: Option<u16>, ack: Option<u32>) -> TcpResetRepr {
        let (src, dst) = if v6 {
            (IpAddr::V6(Ipv6Addr::from(VIP6)), IpAddr::V6(Ipv6Addr::from(CLIENT6)))
        } else {
            (IpAddr::V4(Ipv4Addr::from(VIP4)), IpAddr::V4(Ipv4Addr::from(CLIENT4)))
        };
        TcpResetRepr {
            src_mac: MacAddr(MAC_A),
            dst_mac: MacAddr(MAC_B),
            vlan,
            src,
            dst,
            src_port: 443,
            dst_port: 50000,
            seq: 0xdead_beef,
            ack,
        }
    }

    #[test]
    fn tcp_reset_frames_parse_with_etherparse_and_smoltcp() {
        for v6 in [false, true] {
            for vlan in [None, Some(100)] {
                for ack in [None, Some(0x0102_0304)] {
                    let r = reset(v6, vlan, ack);
                    let mut buf = [0xaau8; 128];
                    let n = r.emit(&mut buf).unwrap();
                    assert_eq!(n, r.frame_len());
                    assert_eq!(n, 14 + if vlan.is_some() { 4 } else { 0 } + if v6 { 40 } else { 20 } + 20);
                    assert!(buf[n..].iter().all(|&b| b == 0xaa), "nothing written past the frame");
                    let frame = &buf[..n];
                    let p = SlicedPacket::from_ethernet(frame).unwrap();
                    match p.link.as_ref().unwrap() {
                        etherparse::LinkSlice::Ethernet2(e) => {
                            assert_eq!((e.source(), e.destination()), (MAC_A, MAC_B));
                        }
                        other => panic!("{other:?}"),
                    }
                    assert_eq!(p.vlan_ids().first().map(|v| v.value()), vlan);
                    let (src, dst) = match p.net.as_ref().unwrap() {
                        NetSlice::Ipv4(ip) => {
                            let h = ip.header().to_header();
                            assert_eq!(h.header_checksum, h.calc_header_checksum());
                            assert_eq!((h.time_to_live, h.dont_fragment, h.identification), (64, true, 0));
                            assert!(!v6);
                            (v4(h.source), v4(h.destination))
                        }
                        NetSlice::Ipv6(ip) => {
                            assert_eq!(ip.header().hop_limit(), 64);
                            assert!(v6);
                            (ip.header().source(), ip.header().destination())
                        }
                        NetSlice::Arp(_) => panic!("not IP"),
                    };
                    let (want_src, want_dst) = if v6 { (VIP6, CLIENT6) } else { (v4(VIP4), v4(CLIENT4)) };
                    assert_eq!((src, dst), (want_src, want_dst));
                    let Some(TransportSlice::Tcp(t)) = p.transport else { panic!("not TCP") };
                    assert!(t.rst() && !t.syn() && !t.fin() && !t.psh());
                    assert_eq!(t.ack(), ack.is_some());
                    assert_eq!(t.sequence_number(), 0xdead_beef);
                    assert_eq!(t.acknowledgment_number(), ack.unwrap_or(0));
                    assert_eq!((t.source_port(), t.destination_port(), t.window_size()), (443, 50000, 0));
                    assert_eq!(t.data_offset(), 5);
                    assert!(t.payload().is_empty());
                    let want = if v6 {
                        t.calc_checksum_ipv6(src, dst)
                    } else {
                        t.calc_checksum_ipv4(first4(&src), first4(&dst))
                    }
                    .unwrap();
                    assert_eq!(t.checksum(), want);
                    // This crate's parser and smoltcp agree.
                    let key = parse_flow_key(frame).unwrap();
                    assert_eq!((key.src_addr, key.dst_addr, key.src_port, key.dst_port), (src, dst, 443, 50000));
                    let flags = TcpFlags::RST | if ack.is_some() { TcpFlags::ACK } else { 0 };
                    assert_eq!(key.tcp_flags, flags);
                    check_with_smoltcp(frame, &key);
                }
            }
        }
    }

    #[test]
    fn tcp_reset_short_buffer_is_an_error() {
        for v6 in [false, true] {
            for vlan in [None, Some(7)] {
                let r = reset(v6, vlan, Some(1));
                let l3 = if vlan.is_some() { 18 } else { 14 };
                let l4 = l3 + if v6 { 40 } else { 20 };
                for len in 0..r.frame_len() {
                    let mut buf = std::vec![0x55u8; len];
                    let want = match len {
                        n if n < 14 => Layer::Ethernet,
                        n if n < l3 => Layer::Vlan,
                        n if n < l4 => {
                            if v6 {
                                Layer::Ipv6
                            } else {
                                Layer::Ipv4
                            }
                        }
                        _ => Layer::Tcp,
                    };
                    assert_eq!(r.emit(&mut buf), Err(WireError::Truncated(want)), "len {len}");
                    assert!(buf.iter().all(|&b| b == 0x55), "nothing written");
                }
            }
        }
    }

    #[test]
    fn tcp_reset_refuses_mixed_versions_and_oversized_vlan() {
        let mut buf = [0u8; 128];
        let mixed = TcpResetRepr { dst: IpAddr::V6(Ipv6Addr::from(CLIENT6)), ..reset(false, None, None) };
        assert_eq!(mixed.emit(&mut buf), Err(WireError::BadVersion(6)));
        let mixed = TcpResetRepr { dst: IpAddr::V4(Ipv4Addr::from(CLIENT4)), ..reset(true, None, None) };
        assert_eq!(mixed.emit(&mut buf), Err(WireError::BadVersion(4)));
        assert_eq!(reset(false, Some(0x1000), None).emit(&mut buf), Err(WireError::FieldOverflow(Layer::Vlan)));
        assert!(buf.iter().all(|&b| b == 0));
        assert!(reset(false, Some(0x0fff), None).emit(&mut buf).is_ok());
    }
}
