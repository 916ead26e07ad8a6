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

/// The ones'-complement sum `delta` (changes made at `offset` bytes into a checksummed message)
/// as it counts in that message's checksum: a run of 16-bit words that starts at an odd offset
/// adds its bytes to the opposite halves of the message's words, which byte-swaps its sum
/// (RFC 1071 2.B).
#[inline(always)]
fn at_offset(delta: u32, offset: usize) -> u32 {
    let d = checksum::fold(delta);
    u32::from(if offset % 2 == 0 { d } else { d.swap_bytes() })
}

/// Finds the quoted L4 fields to patch; `l4` is the quoted L4 header's frame offset, already
/// checked to hold `quoted.l4_len` bytes.
#[inline(always)]
fn quoted_l4_patch(frame: &[u8], quoted: &FlowKey, side: Side, l4: usize) -> Result<Option<L4Patch>, WireError> {
    if quoted.fragment == Fragment::Later {
        return Ok(None);
    }
    let len = usize::from(quoted.l4_len);
    let port_at = Some(match side {
        Side::Src => l4,
        Side::Dst => l4 + 2,
    });
    Ok(match (quoted.protocol, quoted.ip_version) {
        (ip_proto::TCP | ip_proto::UDP, _) if len < 4 => return Err(WireError::Truncated(Layer::IcmpQuote)),
        // The TCP checksum (bytes 16..18) is quoted only when more than the RFC 792 minimum is.
        (ip_proto::TCP, _) => Some(L4Patch {
            checksum_at: (len >= TCP_CHECKSUM_AT + 2).then_some(l4 + TCP_CHECKSUM_AT),
            port_at,
            pseudo: true,
            udp: false,
        }),
        (ip_proto::UDP, _) => {
            // A checksum of 0 stays 0, as in `rewrite`.
            let at = l4 + UDP_CHECKSUM_AT;
            let checksum_at = (len >= UDP_HEADER_LEN && get16(frame, at) != 0).then_some(at);
            Some(L4Patch { checksum_at, port_at, pseudo: true, udp: true })
        }
        // A quoted ICMPv6 message: its checksum covers the quoted pseudo-header. Its echo identifier
        // is left alone (`quoted_flow_key` reports no ports for it).
        (ip_proto::ICMPV6, IpVersion::V6) if len >= ICMP_CHECKSUM_AT + 2 => {
            Some(L4Patch { checksum_at: Some(l4 + ICMP_CHECKSUM_AT), port_at: None, pseudo: true, udp: false })
        }
        _ => None,
    })
}

/// Rewrites the address and port of one side of the packet quoted in an ICMP error, in place:
/// the quoted IP header's address (and its IPv4 header checksum), the quoted port, the quoted
/// UDP checksum when the quote holds it, and the ICMP checksum (incrementally, including the
/// ICMPv6 pseudo-header where relevant). `key` is the outer key, `quoted` the key `quoted_flow_key`
/// returned for this frame.
///
/// This is the half of an ICMP error translation that [`rewrite`] leaves out: a host agent that
/// receives an error sent to the VIP about a packet the VIP sent (quoting `VIP:fp -> client:cp`)
/// rewrites the outer destination with [`rewrite`]`(.., Side::Dst, DIP, ..)` and the quoted source
/// with `rewrite_quoted(.., Side::Src, DIP, bp)`; in the other direction (an error from the backend
/// quoting `client:cp -> DIP:bp`), the outer source and the quoted destination. The two calls patch
/// the ICMP checksum independently, in either order. The old values are read from the frame.
///
/// By quoted protocol (the quote is cut anywhere after its IP header, RFC 792 / RFC 4443):
/// - The quoted IP header: the address (IPv4: its first 4 bytes of `addr`) and, for IPv4, the
///   header checksum.
/// - TCP and UDP (not a later fragment): the port, which the quote must hold
///   ([`WireError::Truncated`]`(IcmpQuote)` if not), and the transport checksum for the port and the
///   quoted pseudo-header address when the quote holds the whole checksum field (UDP: the first 8
///   bytes, always there in a conforming error; TCP: the first 18, usually not). A UDP checksum of 0
///   stays 0; one patched to 0x0000 is written as 0xffff.
/// - A quoted ICMPv6 message: its checksum, for the pseudo-header address (not the echo identifier).
/// - Anything else, and later fragments: the address only.
/// - The ICMP checksum of the outer message, for every byte changed above. The outer pseudo-header
///   (ICMPv6) does not change here.
///
/// Errors, with the frame untouched: `key` is not an ICMP error ([`WireError::Truncated`]`(IcmpQuote)`,
/// as [`quoted_flow_key`](super::flow::quoted_flow_key)); the ICMP message the key describes runs past
/// the frame or is shorter than its header ([`WireError::Truncated`]`(Icmp)`); the keys' IP versions
/// differ, or the quoted IP version nibble differs from them ([`WireError::BadVersion`]); the quoted
/// IP header starts inside the ICMP header or the quoted L4 header inside the quoted IP header
/// ([`WireError::LengthMismatch`]`(IcmpQuote)`); the quoted headers run past the ICMP message, or a
/// TCP/UDP quote is too short for its ports ([`WireError::Truncated`]`(IcmpQuote)`).
#[inline]
pub fn rewrite_quoted(
    frame: &mut [u8],
    key: &FlowKey,
    quoted: &FlowKey,
    side: Side,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), WireError> {
    let spot = locate_quoted(frame, key, quoted, side)?;
    // Every offset is checked: from here on nothing fails.
    patch_quoted(frame, quoted.ip_version, spot, addr, port);
    Ok(())
}

/// Where [`rewrite_quoted`] writes in a frame: frame offsets, every one checked against the ICMP
/// message that holds it.
#[derive(Clone, Copy)]
struct QuotedSpot {
    /// The ICMP header.
    icmp: usize,
    /// The quoted IP header.
    l3: usize,
    /// The quoted L4 header.
    l4: usize,
    /// The quoted address to rewrite.
    addr_at: usize,
    /// Its length: 4 or 16.
    addr_len: usize,
    /// The quoted L4 fields to patch, if any.
    patch: Option<L4Patch>,
}

/// The checks of [`rewrite_quoted`], in the order its errors are documented: where the quoted
/// address, port and checksums lie, or the error, with nothing written.
#[inline(always)]
fn locate_quoted(frame: &[u8], key: &FlowKey, quoted: &FlowKey, side: Side) -> Result<QuotedSpot, WireError> {
    if !key.is_icmp_error() {
        return Err(WireError::Truncated(Layer::IcmpQuote));
    }
    let icmp = usize::from(key.l4_offset);
    let end = icmp + usize::from(key.l4_len);
    if end > frame.len() || usize::from(key.l4_len) < ICMP_HEADER_LEN {
        return Err(WireError::Truncated(Layer::Icmp));
    }
    if quoted.ip_version != key.ip_version {
        return Err(WireError::BadVersion(quoted.ip_version as u8));
    }
    let (ip_len, addr_len, addr_at) = match (quoted.ip_version, side) {
        (IpVersion::V4, Side::Src) => (IPV4_HEADER_LEN, 4, IPV4_SRC_AT),
        (IpVersion::V4, Side::Dst) => (IPV4_HEADER_LEN, 4, IPV4_DST_AT),
        (IpVersion::V6, Side::Src) => (IPV6_HEADER_LEN, 16, IPV6_SRC_AT),
        (IpVersion::V6, Side::Dst) => (IPV6_HEADER_LEN, 16, IPV6_DST_AT),
    };
    let l3 = usize::from(quoted.l3_offset);
    if l3 < icmp + ICMP_HEADER_LEN {
        return Err(WireError::LengthMismatch(Layer::IcmpQuote));
    }
    if l3 + ip_len > end {
        return Err(WireError::Truncated(Layer::IcmpQuote));
    }
    let version = frame[l3] >> 4;
    if version != quoted.ip_version as u8 {
        return Err(WireError::BadVersion(version));
    }
    let l4 = usize::from(quoted.l4_offset);
    if l4 < l3 + ip_len {
        return Err(WireError::LengthMismatch(Layer::IcmpQuote));
    }
    if l4 + usize::from(quoted.l4_len) > end {
        return Err(WireError::Truncated(Layer::IcmpQuote));
    }
    let patch = quoted_l4_patch(frame, quoted, side, l4)?;
    Ok(QuotedSpot { icmp, l3, l4, addr_at: l3 + addr_at, addr_len, patch })
}

/// The writes of [`rewrite_quoted`] at a [`QuotedSpot`] of a quoted packet of IP version
/// `version`. `in_l3` and `in_l4` sum the changes made in the quoted IP header and the quoted L4
/// header, which the ICMP checksum covers at their own offsets.
#[inline(always)]
fn patch_quoted(frame: &mut [u8], version: IpVersion, spot: QuotedSpot, addr: &[u8; 16], port: u16) {
    let QuotedSpot { icmp, l3, l4, addr_at: at, addr_len, patch } = spot;
    let new = &addr[..addr_len];
    let field = &mut frame[at..at + addr_len];
    let delta = u32::from(!checksum::fold(checksum::sum(field))) + u32::from(checksum::fold(checksum::sum(new)));
    field.copy_from_slice(new);
    let mut in_l3 = delta;
    if version == IpVersion::V4 {
        let c = l3 + IPV4_CHECKSUM_AT;
        let (old, new) = (get16(frame, c), adjust(get16(frame, c), delta));
        put16(frame, c, new);
        in_l3 += u32::from(!old) + u32::from(new);
    }
    let mut in_l4 = 0;
    if let Some(p) = patch {
        let mut delta = if p.pseudo { delta } else { 0 };
        if let Some(at) = p.port_at {
            let old = get16(frame, at);
            if old != port {
                let d = u32::from(!old) + u32::from(port);
                delta += d;
                in_l4 += d;
                put16(frame, at, port);
            }
        }
        if let Some(at) = p.checksum_at {
            let old = get16(frame, at);
            let c = adjust(old, delta);
            let c = if p.udp && c == 0 { 0xffff } else { c };
            put16(frame, at, c);
            in_l4 += u32::from(!old) + u32::from(c);
        }
    }
    let c = icmp + ICMP_CHECKSUM_AT;
    let delta = at_offset(in_l3, l3 - icmp) + at_offset(in_l4, l4 - icmp);
    put16(frame, c, adjust(get16(frame, c), delta));
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

    // ICMP errors: the outer header by `rewrite`, the quoted packet by `rewrite_quoted`.

    const ROUTER4: [u8; 4] = [198, 51, 100, 1];
    const ROUTER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const FRAG_NEEDED: (u8, u8, [u8; 4]) = (3, 4, [0, 0, 0x05, 0x78]);
    const PORT_UNREACHABLE4: (u8, u8, [u8; 4]) = (3, 3, [0; 4]);
    const TIME_EXCEEDED4: (u8, u8, [u8; 4]) = (11, 0, [0; 4]);
    const PACKET_TOO_BIG: (u8, u8, [u8; 4]) = (2, 0, 1280u32.to_be_bytes());
    const PORT_UNREACHABLE6: (u8, u8, [u8; 4]) = (1, 4, [0; 4]);
    const TIME_EXCEEDED6: (u8, u8, [u8; 4]) = (3, 0, [0; 4]);

    /// An ICMP error from `src` to `dst` (type, code and the 4 type-specific bytes) quoting `quote`,
    /// built by etherparse (which fills every checksum).
    fn icmp_error(v6: bool, src: &[u8; 16], dst: &[u8; 16], icmp: (u8, u8, [u8; 4]), quote: &[u8]) -> Vec<u8> {
        let ip = ip_step(src, dst, v6, None);
        let mut out = Vec::new();
        if v6 {
            ip.icmpv6_raw(icmp.0, icmp.1, icmp.2).write(&mut out, quote)
        } else {
            ip.icmpv4_raw(icmp.0, icmp.1, icmp.2).write(&mut out, quote)
        }
        .unwrap();
        out
    }

    /// What an ICMP error quotes of the packet `build` makes: its first `cut` bytes from the IP header
    /// on (all of it when `None`), with a UDP checksum of 0 when `zero_udp` is set.
    #[allow(clippy::too_many_arguments)]
    fn quote_of(
        l4: L4,
        v6: bool,
        src: &[u8; 16],
        dst: &[u8; 16],
        sport: u16,
        dport: u16,
        payload: &[u8],
        cut: Option<usize>,
        zero_udp: bool,
    ) -> Vec<u8> {
        let mut ip = build(l4, v6, None, src, dst, sport, dport, payload).split_off(ETHERNET_HEADER_LEN);
        if zero_udp {
            assert_eq!(l4, L4::Udp);
            let ck = if v6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN } + UDP_CHECKSUM_AT;
            ip[ck..ck + 2].fill(0);
        }
        ip.truncate(cut.unwrap_or(usize::MAX));
        ip
    }

    /// Frame offsets `rewrite_quoted` may change for one side of `quoted` (both sides' ports, for
    /// brevity), besides the ICMP checksum.
    fn quoted_fields(key: &FlowKey, quoted: &FlowKey) -> Vec<usize> {
        let (l3, l4) = (usize::from(quoted.l3_offset), usize::from(quoted.l4_offset));
        let icmp = usize::from(key.l4_offset);
        let mut v: Vec<usize> = match quoted.ip_version {
            IpVersion::V4 => (l3 + 10..l3 + 20).collect(),
            IpVersion::V6 => (l3 + 8..l3 + 40).collect(),
        };
        v.extend(icmp + 2..icmp + 4);
        match quoted.protocol {
            ip_proto::TCP => v.extend((l4..l4 + 4).chain(l4 + 16..l4 + 18)),
            ip_proto::UDP => v.extend((l4..l4 + 4).chain(l4 + 6..l4 + 8)),
            ip_proto::ICMPV6 => v.extend(l4 + 2..l4 + 4),
            _ => {}
        }
        v
    }

    /// Checks a translated ICMP error with etherparse, smoltcp and this crate's parser, all from the
    /// final bytes: the ICMP checksum, the quoted IPv4 header checksum, the quoted addresses and ports
    /// and, when the quote holds the whole packet, the quoted transport checksum.
    fn check_icmp_error(out: &[u8], quoted_src: [u8; 16], quoted_dst: [u8; 16], ports: (u16, u16)) {
        let key = parse_flow_key(out).unwrap();
        assert!(key.is_icmp_error());
        check_with_smoltcp(out, &key);
        let quote = check_icmp_message(out, &key);
        let q = etherparse::LaxPacketHeaders::from_ip(quote).unwrap();
        let ip_len = match q.net.as_ref().unwrap() {
            etherparse::NetHeaders::Ipv4(h, _) => {
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "etherparse: quoted IPv4 header checksum");
                assert!(smoltcp::wire::Ipv4Packet::new_unchecked(quote).verify_checksum(), "smoltcp: quoted IPv4");
                assert_eq!((v4(h.source), v4(h.destination)), (quoted_src, quoted_dst));
                h.header_len()
            }
            etherparse::NetHeaders::Ipv6(h, _) => {
                assert_eq!((h.source, h.destination), (quoted_src, quoted_dst));
                IPV6_HEADER_LEN
            }
            etherparse::NetHeaders::Arp(_) => panic!("not IP"),
        };
        let v6 = key.ip_version == IpVersion::V6;
        check_quoted_transport(&q, &quote[ip_len..], v6, (quoted_src, quoted_dst), ports);
        // This crate's parser finds the translated quote.
        let quoted = crate::wire::flow::quoted_flow_key(out, &key).unwrap();
        assert_eq!((quoted.src_addr, quoted.dst_addr), (quoted_src, quoted_dst));
        assert_eq!((quoted.src_port, quoted.dst_port), ports);
    }

    /// The outer ICMP message of error `out` (parsed as `key`): its checksum, by etherparse and by
    /// this crate's checksum code. Returns what it quotes.
    fn check_icmp_message<'a>(out: &'a [u8], key: &FlowKey) -> &'a [u8] {
        let p = SlicedPacket::from_ethernet(out).unwrap();
        let (outer_src, outer_dst) = (key.src_addr, key.dst_addr);
        let quote = match p.transport.unwrap() {
            TransportSlice::Icmpv4(i) => {
                assert_eq!(i.checksum(), i.icmp_type().calc_checksum(i.payload()), "etherparse: ICMPv4 checksum");
                i.payload()
            }
            TransportSlice::Icmpv6(i) => {
                assert!(i.is_checksum_valid(outer_src, outer_dst), "etherparse: ICMPv6 checksum");
                i.payload()
            }
            other => panic!("not ICMP: {other:?}"),
        };
        // This crate's checksum code, over the whole message.
        let msg = &out[usize::from(key.l4_offset)..][..usize::from(key.l4_len)];
        let pseudo = if key.ip_version == IpVersion::V6 {
            checksum::pseudo_header_v6(&outer_src, &outer_dst, ip_proto::ICMPV6, msg.len() as u32)
        } else {
            0
        };
        assert_eq!(checksum::finish(checksum::combine(pseudo, checksum::sum(msg))), 0, "ICMP checksum");
        quote
    }

    /// The quoted transport header `q` of a translated error (`l4`: the quote from its L4 header
    /// on): its ports and, when the quote holds the whole packet, its checksum.
    fn check_quoted_transport(
        q: &etherparse::LaxPacketHeaders<'_>,
        l4: &[u8],
        v6: bool,
        (quoted_src, quoted_dst): ([u8; 16], [u8; 16]),
        ports: (u16, u16),
    ) {
        let (s4, d4) = (first4(&quoted_src), first4(&quoted_dst));
        let whole = q.stop_err.is_none()
            && match q.payload {
                etherparse::LaxPayloadSlice::Tcp { incomplete, .. }
                | etherparse::LaxPayloadSlice::Udp { incomplete, .. }
                | etherparse::LaxPayloadSlice::Icmpv4 { incomplete, .. }
                | etherparse::LaxPayloadSlice::Icmpv6 { incomplete, .. } => !incomplete,
                _ => false,
            };
        match (q.transport.as_ref(), q.payload.slice()) {
            (Some(etherparse::TransportHeader::Tcp(h)), payload) => {
                assert_eq!((h.source_port, h.destination_port), ports);
                if whole {
                    let want = if v6 {
                        h.calc_checksum_ipv6_raw(quoted_src, quoted_dst, payload)
                    } else {
                        h.calc_checksum_ipv4_raw(s4, d4, payload)
                    };
                    assert!(same_checksum(h.checksum, want.unwrap()), "quoted TCP checksum");
                }
            }
            (Some(etherparse::TransportHeader::Udp(h)), payload) => {
                assert_eq!((h.source_port, h.destination_port), ports);
                if whole && h.checksum != 0 {
                    let want = if v6 {
                        h.calc_checksum_ipv6_raw(quoted_src, quoted_dst, payload)
                    } else {
                        h.calc_checksum_ipv4_raw(s4, d4, payload)
                    };
                    assert_eq!(h.checksum, want.unwrap(), "quoted UDP checksum");
                }
            }
            (Some(etherparse::TransportHeader::Icmpv6(h)), payload) if whole => {
                let want = h.icmp_type.calc_checksum(quoted_src, quoted_dst, payload).unwrap();
                assert_eq!(h.checksum, want, "quoted ICMPv6 checksum");
            }
            _ => {
                // A TCP header cut short of its 20 bytes: the ports are the first 4 bytes.
                if l4.len() >= 4 && ports != (0, 0) {
                    let got = (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]));
                    assert_eq!(got, ports);
                }
            }
        }
    }

    /// One ICMP error translation. `inbound`: an error sent to the VIP about a packet the VIP sent
    /// (`VIP:443 -> client:50000`), delivered to the backend: outer destination and quoted source
    /// become the backend's (`DIP:8443`). Otherwise an error the backend sends about a packet it
    /// received (`client:50000 -> DIP:8443`): outer source and quoted destination become the VIP's.
    #[derive(Debug, Clone, Copy)]
    struct IcmpCase {
        v6: bool,
        l4: L4,
        icmp: (u8, u8, [u8; 4]),
        /// Bytes of the invoking packet quoted (from its IP header), `None` for all of it.
        cut: Option<usize>,
        inbound: bool,
        zero_udp: bool,
    }

    /// Endpoints of an ICMP error: outer source and destination, quoted source and destination and
    /// the quoted ports.
    type Ends = ([u8; 16], [u8; 16], [u8; 16], [u8; 16], u16, u16);

    impl IcmpCase {
        fn frame(&self, e: &Ends) -> Vec<u8> {
            let quote = quote_of(self.l4, self.v6, &e.2, &e.3, e.4, e.5, PAYLOAD, self.cut, self.zero_udp);
            icmp_error(self.v6, &e.0, &e.1, self.icmp, &quote)
        }

        /// Translates the error, checks the result against the same error built from scratch with the
        /// translated values, checks it independently, and translates it back.
        fn run(self) {
            let (client, vip, backend, router) = if self.v6 {
                (CLIENT6, VIP6, BACKEND6, ROUTER6)
            } else {
                (v4(CLIENT4), v4(VIP4), v4(BACKEND4), v4(ROUTER4))
            };
            // An echo's identifier is not translated: the same on both sides.
            let (fe_port, be_port) = if self.l4 == L4::Echo { (7, 7) } else { (443, 8443) };
            let (before, after, outer, inner): (Ends, Ends, Side, Side) = if self.inbound {
                (
                    (router, vip, vip, client, fe_port, 50000),
                    (router, backend, backend, client, be_port, 50000),
                    Side::Dst,
                    Side::Src,
                )
            } else {
                (
                    (backend, client, client, backend, 50000, be_port),
                    (vip, client, client, vip, 50000, fe_port),
                    Side::Src,
                    Side::Dst,
                )
            };
            let translate = |frame: &[u8], to: &Ends| -> Vec<u8> {
                let key = parse_flow_key(frame).unwrap();
                assert!(key.is_icmp_error(), "{self:?}");
                let quoted = crate::wire::flow::quoted_flow_key(frame, &key).unwrap();
                let (outer_addr, inner_addr, inner_port) = match inner {
                    Side::Src => (to.1, to.2, to.4),
                    Side::Dst => (to.0, to.3, to.5),
                };
                let mut out = frame.to_vec();
                rewrite(&mut out, &key, outer, &outer_addr, 0).unwrap();
                rewrite_quoted(&mut out, &key, &quoted, inner, &inner_addr, inner_port).unwrap();
                let mut allowed = nat_fields(&key);
                allowed.extend(quoted_fields(&key, &quoted));
                for (i, (a, b)) in frame.iter().zip(&out).enumerate() {
                    assert!(a == b || allowed.contains(&i), "{self:?}: byte {i} changed");
                }
                out
            };
            let frame = self.frame(&before);
            let key = parse_flow_key(&frame).unwrap();
            let quoted = crate::wire::flow::quoted_flow_key(&frame, &key).unwrap();
            let ports = |e: &Ends| if matches!(self.l4, L4::Echo) { (0, 0) } else { (e.4, e.5) };
            assert_eq!(
                (quoted.src_addr, quoted.dst_addr, (quoted.src_port, quoted.dst_port)),
                (before.2, before.3, ports(&before))
            );

            let out = translate(&frame, &after);
            assert_eq!(out, self.frame(&after), "{self:?}: as if built with the translated values");
            check_icmp_error(&out, after.2, after.3, ports(&after));
            if self.zero_udp {
                let at = usize::from(quoted.l4_offset) + UDP_CHECKSUM_AT;
                assert_eq!(&out[at..at + 2], &[0, 0], "a quoted UDP checksum of 0 stays 0");
            }
            assert_eq!(translate(&out, &before), frame, "{self:?}: and back");
        }
    }

    /// The RFC 792 quote: the IPv4 header and 8 bytes.
    const V4_MIN: Option<usize> = Some(IPV4_HEADER_LEN + 8);
    const INBOUND: IcmpCase =
        IcmpCase { v6: false, l4: L4::Tcp, icmp: FRAG_NEEDED, cut: None, inbound: true, zero_udp: false };

    #[test]
    fn icmpv4_frag_needed_quoting_tcp_is_translated_to_the_backend() {
        // RFC 792: the IP header and 8 bytes, so the TCP checksum is not quoted.
        IcmpCase { cut: V4_MIN, ..INBOUND }.run();
        // RFC 1812 routers quote more: here all of it, the TCP checksum included.
        IcmpCase { cut: None, ..INBOUND }.run();
        IcmpCase { cut: Some(IPV4_HEADER_LEN + 4), ..INBOUND }.run();
        IcmpCase { cut: Some(IPV4_HEADER_LEN + 18), ..INBOUND }.run();
    }

    #[test]
    fn icmpv4_dest_unreachable_quoting_udp_is_translated_to_the_backend() {
        for icmp in [FRAG_NEEDED, PORT_UNREACHABLE4, (3, 1, [0; 4]), TIME_EXCEEDED4] {
            for cut in [V4_MIN, None, Some(IPV4_HEADER_LEN + 4)] {
                IcmpCase { l4: L4::Udp, icmp, cut, ..INBOUND }.run();
            }
        }
    }

    #[test]
    fn icmpv4_quoted_udp_without_checksum_stays_zero() {
        for cut in [V4_MIN, None] {
            for inbound in [true, false] {
                IcmpCase { l4: L4::Udp, icmp: PORT_UNREACHABLE4, cut, inbound, zero_udp: true, ..INBOUND }.run();
            }
        }
    }

    #[test]
    fn icmpv6_packet_too_big_quoting_tcp_is_translated_to_the_backend() {
        // RFC 4443: as much of the invoking packet as fits in the minimum MTU, here all of it.
        IcmpCase { v6: true, icmp: PACKET_TOO_BIG, ..INBOUND }.run();
        IcmpCase { v6: true, icmp: PACKET_TOO_BIG, cut: Some(IPV6_HEADER_LEN + 8), ..INBOUND }.run();
    }

    #[test]
    fn icmpv6_packet_too_big_quoting_udp_is_translated_to_the_backend() {
        for icmp in [PACKET_TOO_BIG, PORT_UNREACHABLE6, TIME_EXCEEDED6] {
            for cut in [None, Some(IPV6_HEADER_LEN + 8), Some(IPV6_HEADER_LEN + 4)] {
                IcmpCase { v6: true, l4: L4::Udp, icmp, cut, ..INBOUND }.run();
            }
        }
    }

    #[test]
    fn backend_icmp_errors_are_translated_to_the_vip() {
        for v6 in [false, true] {
            for l4 in [L4::Tcp, L4::Udp] {
                let icmps = if v6 {
                    [PORT_UNREACHABLE6, PACKET_TOO_BIG, TIME_EXCEEDED6]
                } else {
                    [PORT_UNREACHABLE4, FRAG_NEEDED, TIME_EXCEEDED4]
                };
                for icmp in icmps {
                    let min = Some(if v6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN } + 8);
                    for cut in [min, None] {
                        IcmpCase { v6, l4, icmp, cut, inbound: false, ..INBOUND }.run();
                    }
                }
            }
        }
    }

    #[test]
    fn icmp_errors_quoting_an_echo_translate_the_address_only() {
        // ICMPv6: the quoted echo's checksum covers the quoted pseudo-header and is patched for it.
        IcmpCase { v6: true, l4: L4::Echo, icmp: TIME_EXCEEDED6, ..INBOUND }.run();
        IcmpCase { v6: true, l4: L4::Echo, icmp: PACKET_TOO_BIG, inbound: false, ..INBOUND }.run();
        // ICMPv4: no pseudo-header, nothing but the address and the header checksum.
        IcmpCase { l4: L4::Echo, icmp: TIME_EXCEEDED4, ..INBOUND }.run();
        IcmpCase { l4: L4::Echo, icmp: FRAG_NEEDED, cut: Some(IPV4_HEADER_LEN + 8), inbound: false, ..INBOUND }.run();
    }

    #[test]
    fn quoted_ipv4_options_and_later_fragments() {
        // A quoted IPv4 header with 4 bytes of options (NOP x4): the ports are found after them.
        let mut ip = quote_of(L4::Udp, false, &v4(VIP4), &v4(CLIENT4), 443, 50000, PAYLOAD, None, false);
        ip.splice(IPV4_HEADER_LEN..IPV4_HEADER_LEN, [1, 1, 1, 1]);
        ip[0] = 0x46;
        let total = ip.len() as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[10..12].fill(0);
        let c = checksum::ipv4_header(&ip[..24]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let frame = icmp_error(false, &v4(ROUTER4), &v4(VIP4), FRAG_NEEDED, &ip[..24 + 8]);
        let key = parse_flow_key(&frame).unwrap();
        let quoted = crate::wire::flow::quoted_flow_key(&frame, &key).unwrap();
        assert_eq!(quoted.l4_offset, quoted.l3_offset + 24);
        let mut out = frame.clone();
        rewrite(&mut out, &key, Side::Dst, &v4(BACKEND4), 0).unwrap();
        rewrite_quoted(&mut out, &key, &quoted, Side::Src, &v4(BACKEND4), 8443).unwrap();
        check_icmp_error(&out, v4(BACKEND4), v4(CLIENT4), (8443, 50000));

        // A quoted later fragment has no L4 header: its address only, whatever the port.
        let mut ip = ip[..24 + 8].to_vec();
        ip[6..8].copy_from_slice(&(crate::wire::ipv4::FLAG_MF | 3).to_be_bytes());
        ip[10..12].fill(0);
        let c = checksum::ipv4_header(&ip[..24]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let frame = icmp_error(false, &v4(ROUTER4), &v4(VIP4), TIME_EXCEEDED4, &ip);
        let key = parse_flow_key(&frame).unwrap();
        let quoted = crate::wire::flow::quoted_flow_key(&frame, &key).unwrap();
        assert_eq!((quoted.fragment, quoted.src_port), (Fragment::Later, 0));
        let mut out = frame.clone();
        rewrite_quoted(&mut out, &key, &quoted, Side::Src, &v4(BACKEND4), 8443).unwrap();
        let l4 = usize::from(quoted.l4_offset);
        assert_eq!(out[l4..], frame[l4..], "the fragment's bytes are left alone");
        check_with_smoltcp(&out, &key);
        let q = &out[usize::from(quoted.l3_offset)..];
        assert!(smoltcp::wire::Ipv4Packet::new_unchecked(q).verify_checksum());
        assert_eq!(q[12..16], BACKEND4);
    }

    #[test]
    fn a_half_quoted_checksum_is_left_alone() {
        for v6 in [false, true] {
            let (client, vip, backend, router) = if v6 {
                (CLIENT6, VIP6, BACKEND6, ROUTER6)
            } else {
                (v4(CLIENT4), v4(VIP4), v4(BACKEND4), v4(ROUTER4))
            };
            let ip_len = if v6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN };
            for (l4, ck) in [(L4::Tcp, TCP_CHECKSUM_AT), (L4::Udp, UDP_CHECKSUM_AT)] {
                let quote = quote_of(l4, v6, &vip, &client, 443, 50000, PAYLOAD, Some(ip_len + ck + 1), false);
                let icmp = if v6 { PACKET_TOO_BIG } else { FRAG_NEEDED };
                let frame = icmp_error(v6, &router, &vip, icmp, &quote);
                let key = parse_flow_key(&frame).unwrap();
                let quoted = crate::wire::flow::quoted_flow_key(&frame, &key).unwrap();
                let mut out = frame.clone();
                rewrite(&mut out, &key, Side::Dst, &backend, 0).unwrap();
                rewrite_quoted(&mut out, &key, &quoted, Side::Src, &backend, 8443).unwrap();
                assert_eq!(out.last(), frame.last(), "{l4:?} v6 {v6}");
                check_icmp_error(&out, backend, client, (8443, 50000));
            }
        }
    }

    /// `addr` as an address of the IP version (IPv4: its first 4 bytes).
    fn addr_of(v6: bool, addr: [u8; 16]) -> [u8; 16] {
        if v6 {
            addr
        } else {
            v4(first4(&addr))
        }
    }

    /// The ICMP error frames of the error tests: v4 and v6, TCP and UDP, short and whole quotes.
    fn icmp_error_frames() -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for v6 in [false, true] {
            let (client, vip, router) =
                if v6 { (CLIENT6, VIP6, ROUTER6) } else { (v4(CLIENT4), v4(VIP4), v4(ROUTER4)) };
            let icmp = if v6 { PACKET_TOO_BIG } else { FRAG_NEEDED };
            let min = Some(if v6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN } + 8);
            for l4 in [L4::Tcp, L4::Udp] {
                for cut in [min, None] {
                    let quote = quote_of(l4, v6, &vip, &client, 443, 50000, b"data", cut, false);
                    frames.push(icmp_error(v6, &router, &vip, icmp, &quote));
                }
            }
        }
        frames
    }

    #[test]
    fn truncated_or_mismatched_icmp_errors_are_errors_not_panics() {
        let addr = [9u8; 16];
        for frame in icmp_error_frames() {
            let key = parse_flow_key(&frame).unwrap();
            let quoted = crate::wire::flow::quoted_flow_key(&frame, &key).unwrap();
            assert_eq!(usize::from(key.l4_offset) + usize::from(key.l4_len), frame.len());
            for len in 0..frame.len() {
                for side in [Side::Src, Side::Dst] {
                    let mut f = frame[..len].to_vec();
                    assert!(rewrite_quoted(&mut f, &key, &quoted, side, &addr, 1).is_err(), "len {len}");
                    assert_eq!(f, frame[..len], "an error leaves the frame untouched");
                }
            }
            let other = if key.ip_version == IpVersion::V4 { IpVersion::V6 } else { IpVersion::V4 };
            let (l3, l4) = (quoted.l3_offset, quoted.l4_offset);
            let quote_err = WireError::Truncated(Layer::IcmpQuote);
            let cases = [
                (FlowKey::default(), quoted, quote_err),
                (FlowKey { icmp_type: 128, ..key }, quoted, quote_err),
                (FlowKey { protocol: ip_proto::TCP, ..key }, quoted, quote_err),
                (FlowKey { fragment: Fragment::Later, ..key }, quoted, quote_err),
                (FlowKey { l4_len: 7, ..key }, quoted, WireError::Truncated(Layer::Icmp)),
                (FlowKey { l4_len: key.l4_len + 1, ..key }, quoted, WireError::Truncated(Layer::Icmp)),
                (FlowKey { l4_offset: u16::MAX, ..key }, quoted, WireError::Truncated(Layer::Icmp)),
                (key, FlowKey { ip_version: other, ..quoted }, WireError::BadVersion(other as u8)),
                (key, FlowKey { l3_offset: key.l4_offset + 4, ..quoted }, WireError::LengthMismatch(Layer::IcmpQuote)),
                (key, FlowKey { l3_offset: u16::MAX, ..quoted }, quote_err),
                (key, FlowKey { l3_offset: l3 + 4, ..quoted }, WireError::BadVersion(0)),
                (key, FlowKey { l4_offset: l3 + 19, ..quoted }, WireError::LengthMismatch(Layer::IcmpQuote)),
                (key, FlowKey { l4_offset: u16::MAX, ..quoted }, quote_err),
                (key, FlowKey { l4_len: quoted.l4_len + 1, ..quoted }, quote_err),
                (key, FlowKey { l4_offset: l4 + 1, ..quoted }, quote_err),
                (key, FlowKey { l4_len: 3, ..quoted }, quote_err),
            ];
            for (k, q, err) in cases {
                let mut f = frame.clone();
                assert_eq!(rewrite_quoted(&mut f, &k, &q, Side::Src, &addr, 1), Err(err), "{k:?} {q:?}");
                assert_eq!(f, frame);
            }
            // The same error with its quote cut shorter, and the keys of the whole one: an error unless
            // the quoted headers still fit, and whatever parses is rewritten.
            let l4_end = usize::from(quoted.l4_offset) + 4;
            for len in usize::from(key.l4_offset) + ICMP_HEADER_LEN..frame.len() {
                let (src, dst) = (key.src_addr, key.dst_addr);
                let icmp =
                    (key.icmp_type, key.icmp_code, frame[usize::from(key.l4_offset) + 4..][..4].try_into().unwrap());
                let v6 = key.ip_version == IpVersion::V6;
                let short = icmp_error(v6, &src, &dst, icmp, &frame[usize::from(l3)..len]);
                let short_key = parse_flow_key(&short).unwrap();
                let mut f = short.clone();
                assert!(rewrite_quoted(&mut f, &short_key, &quoted, Side::Src, &addr, 1).is_err(), "len {len}");
                assert_eq!(f, short);
                match crate::wire::flow::quoted_flow_key(&short, &short_key) {
                    Ok(q) => {
                        assert!(len >= l4_end, "len {len}");
                        rewrite_quoted(&mut f, &short_key, &q, Side::Src, &addr, 1).unwrap();
                        check_icmp_error(&f, addr_of(v6, addr), quoted.dst_addr, (1, quoted.dst_port));
                    }
                    Err(_) => assert!(len < l4_end, "len {len}"),
                }
            }
            // A quoted IP version nibble that disagrees with the keys.
            let mut f = frame.clone();
            f[usize::from(l3)] ^= 0xf0;
            let bad = f.clone();
            assert!(matches!(
                rewrite_quoted(&mut f, &key, &quoted, Side::Dst, &addr, 1),
                Err(WireError::BadVersion(_))
            ));
            assert_eq!(f, bad);
        }
    }

    /// The ones'-complement sum of `key`'s ICMP message, which `rewrite_quoted` must preserve.
    fn icmp_sum(frame: &[u8], key: &FlowKey) -> u16 {
        let msg = &frame[usize::from(key.l4_offset)..][..usize::from(key.l4_len)];
        checksum::fold(checksum::sum(msg))
    }

    /// Runs `rewrite_quoted` on a copy of `frame`: an error changes nothing; a success changes no byte
    /// outside the quote but the ICMP checksum, and keeps the ICMP message's ones'-complement sum.
    fn check_garbage(
        frame: &[u8],
        key: &FlowKey,
        quoted: &FlowKey,
        side: Side,
        addr: &[u8; 16],
        port: u16,
    ) -> Result<(), TestCaseError> {
        let mut out = frame.to_vec();
        match rewrite_quoted(&mut out, key, quoted, side, addr, port) {
            Err(_) => prop_assert_eq!(&out, frame),
            Ok(()) => {
                prop_assert!(same_checksum(icmp_sum(&out, key), icmp_sum(frame, key)));
                let (icmp, l3) = (usize::from(key.l4_offset), usize::from(quoted.l3_offset));
                let end = icmp + usize::from(key.l4_len);
                prop_assert_eq!(&out[..icmp + 2], &frame[..icmp + 2]);
                prop_assert_eq!(&out[icmp + 4..l3], &frame[icmp + 4..l3]);
                prop_assert_eq!(&out[end..], &frame[end..]);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn rewrite_quoted_matches_building_the_translated_error(
            v6 in any::<bool>(),
            l4 in prop_oneof![Just(L4::Tcp), Just(L4::Udp), Just(L4::Echo)],
            src_side in any::<bool>(),
            old in (proptest::array::uniform16(any::<u8>()), proptest::array::uniform16(any::<u8>())),
            new_addr in proptest::array::uniform16(any::<u8>()),
            ports in (any::<u16>(), any::<u16>(), any::<u16>()),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            cut in any::<proptest::sample::Index>(),
            zero_udp in any::<bool>(),
            odd in any::<bool>(),
        ) {
            let zero_udp = zero_udp && l4 == L4::Udp && !v6;
            let (q_src, q_dst) = if v6 { old } else { (v4(first4(&old.0)), v4(first4(&old.1))) };
            let new_addr = if v6 { new_addr } else { v4(first4(&new_addr)) };
            let (router, vip) = if v6 { (ROUTER6, VIP6) } else { (v4(ROUTER4), v4(VIP4)) };
            let icmp = if v6 { PACKET_TOO_BIG } else { FRAG_NEEDED };
            let ip_len = if v6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN };
            let whole = quote_of(l4, v6, &q_src, &q_dst, ports.0, ports.1, &payload, None, zero_udp).len();
            // At least the ports; an echo identifier is kept, so the new port is ignored.
            let cut = ip_len + 4 + cut.index(whole - ip_len - 3);
            // A quote that ends inside the transport checksum leaves it (see `a_half_quoted_checksum_is_left_alone`).
            let cut = if cut == ip_len + if l4 == L4::Tcp { TCP_CHECKSUM_AT } else { UDP_CHECKSUM_AT } + 1 {
                cut + 1
            } else {
                cut
            };
            let side = if src_side { Side::Src } else { Side::Dst };
            let (new_src, new_dst, new_sport, new_dport) = match (side, l4) {
                (_, L4::Echo) if src_side => (new_addr, q_dst, ports.0, ports.1),
                (_, L4::Echo) => (q_src, new_addr, ports.0, ports.1),
                (Side::Src, _) => (new_addr, q_dst, ports.2, ports.1),
                (Side::Dst, _) => (q_src, new_addr, ports.0, ports.2),
            };
            // `odd`: one byte between the ICMP header and the quote, with the quoted key moved by
            // hand, so the quoted fields sit at odd offsets of the ICMP message.
            let message = |src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16| -> Vec<u8> {
                let mut m = if odd { std::vec![0xa5] } else { Vec::new() };
                m.extend(quote_of(l4, v6, src, dst, sport, dport, &payload, Some(cut), zero_udp));
                icmp_error(v6, &router, &vip, icmp, &m)
            };
            let frame = message(&q_src, &q_dst, ports.0, ports.1);
            let key = parse_flow_key(&frame).unwrap();
            let quoted = if odd {
                let aligned = icmp_error(v6, &router, &vip, icmp, &frame[usize::from(key.l4_offset) + 9..]);
                let k = crate::wire::flow::quoted_flow_key(&aligned, &parse_flow_key(&aligned).unwrap()).unwrap();
                FlowKey { l3_offset: k.l3_offset + 1, l4_offset: k.l4_offset + 1, ..k }
            } else {
                crate::wire::flow::quoted_flow_key(&frame, &key).unwrap()
            };
            let mut out = frame.clone();
            rewrite_quoted(&mut out, &key, &quoted, side, &new_addr, ports.2).unwrap();
            prop_assert_eq!(&out, &message(&new_src, &new_dst, new_sport, new_dport));
            // Full recomputations with this crate's checksum code, over the final bytes.
            let icmp_at = usize::from(key.l4_offset);
            let mut msg = out[icmp_at..].to_vec();
            let stored = u16::from_be_bytes([msg[2], msg[3]]);
            msg[2..4].fill(0);
            let pseudo = if v6 {
                checksum::pseudo_header_v6(&router, &vip, ip_proto::ICMPV6, msg.len() as u32)
            } else {
                0
            };
            prop_assert_eq!(stored, checksum::transport(pseudo, &msg));
            if !v6 {
                let l3 = usize::from(quoted.l3_offset);
                let c = u16::from_be_bytes([out[l3 + 10], out[l3 + 11]]);
                prop_assert_eq!(c, checksum::ipv4_header(&out[l3..l3 + IPV4_HEADER_LEN]));
            }
            if !odd {
                check_icmp_error(&out, new_src, new_dst, if l4 == L4::Echo { (0, 0) } else { (new_sport, new_dport) });
            }
        }

        #[test]
        fn rewrite_quoted_on_garbage_never_panics_and_keeps_the_icmp_sum(
            which in any::<proptest::sample::Index>(),
            mutations in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..6),
            perturb in proptest::option::weighted(0.7, (any::<bool>(), 0u16..200, 0u16..200, 0u16..200)),
            protocol in prop_oneof![Just(ip_proto::TCP), Just(ip_proto::UDP), Just(ip_proto::ICMPV6), Just(47u8)],
            fragment in prop_oneof![Just(Fragment::None), Just(Fragment::First), Just(Fragment::Later)],
            cut in proptest::option::weighted(0.2, any::<proptest::sample::Index>()),
            side in prop_oneof![Just(Side::Src), Just(Side::Dst)],
            addr in proptest::array::uniform16(any::<u8>()),
            port in any::<u16>(),
            random in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let frames = icmp_error_frames();
            let original = &frames[which.index(frames.len())];
            let original_key = parse_flow_key(original).unwrap();
            let original_quoted = crate::wire::flow::quoted_flow_key(original, &original_key).unwrap();
            let mut frame = original.clone();
            for (at, byte) in &mutations {
                let at = at.index(frame.len());
                frame[at] = *byte;
            }
            if let Some(cut) = cut {
                frame.truncate(cut.index(frame.len() + 1).max(frame.len() / 2));
            }
            // The keys the frame parses to, or else the original's (keys that disagree with the frame).
            let key = parse_flow_key(&frame).unwrap_or(original_key);
            let mut quoted = crate::wire::flow::quoted_flow_key(&frame, &key).unwrap_or(original_quoted);
            if let Some((nudge, l3, l4, len)) = perturb {
                quoted = if nudge {
                    // The quoted L4 header moved by up to 4 bytes, still inside the quote: often at an
                    // odd offset of the ICMP message.
                    let by = l4 % 5;
                    let l4_len = quoted.l4_len.saturating_sub(by + len % 2);
                    FlowKey { l4_offset: quoted.l4_offset + by, l4_len, ..quoted }
                } else {
                    FlowKey { l3_offset: l3, l4_offset: l4, l4_len: len, protocol, fragment, ..quoted }
                };
            }
            check_garbage(&frame, &key, &quoted, side, &addr, port)?;
            // Random bytes: whatever parses is rewritten without a panic (with a foreign quote if its
            // own does not parse).
            if let Ok(k) = parse_flow_key(&random) {
                let q = crate::wire::flow::quoted_flow_key(&random, &k).unwrap_or(original_quoted);
                check_garbage(&random, &k, &q, side, &addr, port)?;
            }
        }
    }
}
