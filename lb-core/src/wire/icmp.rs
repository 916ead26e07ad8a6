//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) messages, including the invoking packet that an error
//! message quotes, so that an error can be steered to the flow it is about.

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, Unaligned};

use core::net::IpAddr;

use super::ethernet::MacAddr;
use super::ipv4::{Ipv4Repr, IPV4_HEADER_LEN};
use super::ipv6::{Ipv6Repr, IPV6_HEADER_LEN};
use super::{checksum, ip_proto, Layer, WireError};

/// The 8-byte ICMP header shared by both versions: type, code, checksum and 4 type-specific bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IcmpHeader {
    /// Message type.
    pub ty: u8,
    /// Message code.
    pub code: u8,
    /// Checksum (ICMPv6 includes the IPv6 pseudo-header).
    pub checksum: U16,
    /// Type-specific: identifier + sequence (echo), next-hop MTU (v4 frag needed, v6 packet too big).
    pub rest: [u8; 4],
}

/// Length of the header.
pub const ICMP_HEADER_LEN: usize = core::mem::size_of::<IcmpHeader>();

/// Which ICMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpVersion {
    /// ICMP for IPv4 (protocol 1).
    V4,
    /// ICMPv6 (next header 58).
    V6,
}

/// ICMP type numbers used by the data path.
pub mod types {
    /// ICMPv4 echo reply.
    pub const V4_ECHO_REPLY: u8 = 0;
    /// ICMPv4 destination unreachable (code 4: fragmentation needed).
    pub const V4_DEST_UNREACHABLE: u8 = 3;
    /// ICMPv4 source quench (deprecated, still an error).
    pub const V4_SOURCE_QUENCH: u8 = 4;
    /// ICMPv4 redirect.
    pub const V4_REDIRECT: u8 = 5;
    /// ICMPv4 echo request.
    pub const V4_ECHO_REQUEST: u8 = 8;
    /// ICMPv4 time exceeded.
    pub const V4_TIME_EXCEEDED: u8 = 11;
    /// ICMPv4 parameter problem.
    pub const V4_PARAMETER_PROBLEM: u8 = 12;
    /// ICMPv4 destination unreachable code: fragmentation needed and DF set.
    pub const V4_CODE_FRAG_NEEDED: u8 = 4;
    /// ICMPv6 destination unreachable.
    pub const V6_DEST_UNREACHABLE: u8 = 1;
    /// ICMPv6 packet too big.
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    /// ICMPv6 time exceeded.
    pub const V6_TIME_EXCEEDED: u8 = 3;
    /// ICMPv6 parameter problem.
    pub const V6_PARAMETER_PROBLEM: u8 = 4;
    /// ICMPv6 echo request.
    pub const V6_ECHO_REQUEST: u8 = 128;
    /// ICMPv6 echo reply.
    pub const V6_ECHO_REPLY: u8 = 129;
}

/// Whether `ty` is an error message (one that quotes an invoking packet).
#[inline(always)]
pub fn is_error(version: IcmpVersion, ty: u8) -> bool {
    match version {
        IcmpVersion::V4 => matches!(
            ty,
            types::V4_DEST_UNREACHABLE
                | types::V4_SOURCE_QUENCH
                | types::V4_REDIRECT
                | types::V4_TIME_EXCEEDED
                | types::V4_PARAMETER_PROBLEM
        ),
        IcmpVersion::V6 => ty < 128,
    }
}

/// Whether `ty` is an echo request or reply.
#[inline(always)]
pub fn is_echo(version: IcmpVersion, ty: u8) -> bool {
    match version {
        IcmpVersion::V4 => matches!(ty, types::V4_ECHO_REQUEST | types::V4_ECHO_REPLY),
        IcmpVersion::V6 => matches!(ty, types::V6_ECHO_REQUEST | types::V6_ECHO_REPLY),
    }
}

/// A checked view of an ICMP message.
pub struct IcmpMessage<B> {
    version: IcmpVersion,
    header: Ref<B, IcmpHeader>,
    body: B,
}

impl<B: SplitByteSlice> IcmpMessage<B> {
    /// Checks that `buffer` holds at least the 8-byte header.
    pub fn new_checked(version: IcmpVersion, buffer: B) -> Result<Self, WireError> {
        let (header, body) = Ref::from_prefix(buffer).map_err(|_| WireError::Truncated(Layer::Icmp))?;
        Ok(Self { version, header, body })
    }
    /// ICMPv4 or ICMPv6.
    pub fn version(&self) -> IcmpVersion {
        self.version
    }
    /// The header.
    pub fn header(&self) -> &IcmpHeader {
        &self.header
    }
    /// Message type.
    pub fn ty(&self) -> u8 {
        self.header.ty
    }
    /// Message code.
    pub fn code(&self) -> u8 {
        self.header.code
    }
    /// Whether this is an error message quoting an invoking packet.
    pub fn is_error(&self) -> bool {
        is_error(self.version, self.header.ty)
    }
    /// Echo identifier, if this is an echo request or reply.
    pub fn echo_ident(&self) -> Option<u16> {
        is_echo(self.version, self.header.ty).then(|| u16::from_be_bytes([self.header.rest[0], self.header.rest[1]]))
    }
    /// The MTU a "fragmentation needed" (v4) or "packet too big" (v6) error reports.
    pub fn mtu(&self) -> Option<u32> {
        let r = self.header.rest;
        match (self.version, self.header.ty, self.header.code) {
            (IcmpVersion::V4, types::V4_DEST_UNREACHABLE, types::V4_CODE_FRAG_NEEDED) => {
                Some(u32::from(u16::from_be_bytes([r[2], r[3]])))
            }
            (IcmpVersion::V6, types::V6_PACKET_TOO_BIG, _) => Some(u32::from_be_bytes(r)),
            _ => None,
        }
    }
    /// For an error message: the quoted invoking packet (its IP header and at least 8 bytes of what
    /// followed). `None` for informational messages.
    pub fn quoted(&self) -> Option<&[u8]> {
        self.is_error().then_some(&self.body[..])
    }
    /// The bytes after the 8-byte header.
    pub fn payload(&self) -> &[u8] {
        &self.body
    }
    /// Whether the checksum is right; `pseudo_header` is 0 for ICMPv4 and the IPv6 pseudo-header sum
    /// for ICMPv6.
    pub fn verify_checksum(&self, pseudo_header: u32) -> bool {
        let s = checksum::combine(checksum::sum(self.header.as_bytes()), checksum::sum(&self.body));
        checksum::finish(checksum::combine(pseudo_header, s)) == 0
    }
}

/// The largest IPv4 datagram an ICMPv4 error makes: 576 bytes, what every host accepts (RFC 1812,
/// 4.3.2.3; RFC 792 asks for the IP header and 8 bytes, routers quote as much as fits).
pub const V4_ERROR_MAX: usize = 576;
/// The largest IPv6 packet an ICMPv6 error makes: the IPv6 minimum MTU (RFC 4443, 2.4 (c)).
pub const V6_ERROR_MAX: usize = 1280;

/// An ICMP error telling a sender its packet did not fit the path: ICMPv4 destination unreachable,
/// code 4, "fragmentation needed and DF set" with the next-hop MTU (RFC 792, RFC 1191), or ICMPv6
/// "packet too big" with the MTU (RFC 4443 3.2, RFC 8201). [`TooBigRepr::emit_in_place`] turns the
/// offending frame itself into the error, in its buffer: no copy of the quote, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooBigRepr {
    /// The error frame's source MAC.
    pub src_mac: MacAddr,
    /// Its destination MAC.
    pub dst_mac: MacAddr,
    /// The error's source address (of the offending packet's IP version). The destination is the
    /// offending packet's source.
    pub src: IpAddr,
    /// The MTU to report: the largest IP packet the path takes.
    pub mtu: u16,
    /// TTL / hop limit of the error.
    pub hop_limit: u8,
}

impl TooBigRepr {
    /// Bytes the error's IP and ICMP headers add in front of the quoted packet: 28 for ICMPv4, 48
    /// for ICMPv6. The frame needs that much headroom.
    pub const fn added(ipv6: bool) -> usize {
        if ipv6 {
            IPV6_HEADER_LEN + ICMP_HEADER_LEN
        } else {
            IPV4_HEADER_LEN + ICMP_HEADER_LEN
        }
    }

    /// Turns the frame at `buf[start..start + len]`, whose IP header starts `l3` bytes in, into the
    /// error about its packet, in place: the link header (VLAN tags kept, MACs set) moves
    /// [`Self::added`] bytes back into the headroom, the error's IP and ICMP headers fill the gap,
    /// and the offending packet, from its IP header on, is the quote, cut so that the error is at
    /// most [`V4_ERROR_MAX`] or [`V6_ERROR_MAX`] bytes. IPv4: DF set, identification 0 (an atomic
    /// datagram, RFC 6864), header checksum; ICMP checksum over the message (ICMPv6: with the
    /// pseudo-header). Returns where the error frame starts and its length.
    ///
    /// Errors, with `buf` untouched: the frame past the buffer or too short for its IP header
    /// ([`WireError::LengthMismatch`], [`WireError::Truncated`]), `src` not of the packet's IP
    /// version ([`WireError::BadVersion`] with the packet's), less headroom than
    /// [`Self::added`] ([`WireError::HeadroomTooSmall`]).
    pub fn emit_in_place(
        &self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        l3: usize,
    ) -> Result<(usize, usize), WireError> {
        let end = start.checked_add(len).filter(|&e| e <= buf.len()).ok_or(WireError::LengthMismatch(Layer::Icmp))?;
        let ip = buf.get(start + l3.min(len)..end).unwrap_or(&[]);
        let version = ip.first().map_or(0, |b| b >> 4);
        // The packet's length by its own header (Ethernet padding is no part of it), its source.
        let (packet_len, dst, max) = match (version, self.src) {
            (4, IpAddr::V4(_)) if ip.len() >= IPV4_HEADER_LEN => {
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                let mut d = [0u8; 16];
                d[..4].copy_from_slice(&ip[12..16]);
                (total.min(ip.len()), d, V4_ERROR_MAX)
            }
            (6, IpAddr::V6(_)) if ip.len() >= IPV6_HEADER_LEN => {
                let total = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                let mut d = [0u8; 16];
                d.copy_from_slice(&ip[8..24]);
                (total.min(ip.len()), d, V6_ERROR_MAX)
            }
            (4, _) if ip.len() < IPV4_HEADER_LEN => return Err(WireError::Truncated(Layer::Ipv4)),
            (6, _) if ip.len() < IPV6_HEADER_LEN => return Err(WireError::Truncated(Layer::Ipv6)),
            (v, _) => return Err(WireError::BadVersion(v)),
        };
        let ipv6 = version == 6;
        let added = Self::added(ipv6);
        if start < added {
            return Err(WireError::HeadroomTooSmall { needed: added as u16, available: start as u16 });
        }
        let quote = packet_len.min(max - added);
        let at = start - added;
        buf.copy_within(start..start + l3, at);
        buf[at..at + 6].copy_from_slice(&self.dst_mac.0);
        buf[at + 6..at + 12].copy_from_slice(&self.src_mac.0);
        let ip_at = at + l3;
        let icmp_len = ICMP_HEADER_LEN + quote;
        let icmp_at = ip_at + added - ICMP_HEADER_LEN;
        let (ty, rest, pseudo) = match self.src {
            IpAddr::V4(s) => {
                Ipv4Repr {
                    src: s.octets(),
                    dst: [dst[0], dst[1], dst[2], dst[3]],
                    protocol: ip_proto::ICMP,
                    payload_len: icmp_len as u16,
                    ttl: self.hop_limit,
                    dscp_ecn: 0,
                    ident: 0,
                    dont_fragment: true,
                }
                .emit(&mut buf[ip_at..])?;
                let [hi, lo] = self.mtu.to_be_bytes();
                (types::V4_DEST_UNREACHABLE, [0, 0, hi, lo], 0)
            }
            IpAddr::V6(s) => {
                Ipv6Repr {
                    src: s.octets(),
                    dst,
                    next_header: ip_proto::ICMPV6,
                    payload_len: icmp_len as u16,
                    hop_limit: self.hop_limit,
                    traffic_class: 0,
                    flow_label: 0,
                }
                .emit(&mut buf[ip_at..])?;
                let pseudo = checksum::pseudo_header_v6(&s.octets(), &dst, ip_proto::ICMPV6, icmp_len as u32);
                (types::V6_PACKET_TOO_BIG, u32::from(self.mtu).to_be_bytes(), pseudo)
            }
        };
        let code = if ipv6 { 0 } else { types::V4_CODE_FRAG_NEEDED };
        let icmp = &mut buf[icmp_at..icmp_at + icmp_len];
        icmp[..4].copy_from_slice(&[ty, code, 0, 0]);
        icmp[4..8].copy_from_slice(&rest);
        let c = checksum::transport(pseudo, icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        Ok((at, l3 + added + quote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ICMPv4 "fragmentation needed, next-hop MTU 1400" quoting 10.0.1.4:80 → 1.2.3.4:50000 TCP.
    const FRAG_NEEDED: [u8; 8 + 20 + 8] = [
        0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, 0x78, // type 3 code 4, MTU 1400
        0x45, 0x00, 0x05, 0xdc, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0x0a, 0x00, 0x01, 0x04, 0x01, 0x02,
        0x03, 0x04, // quoted IPv4 header
        0x00, 0x50, 0xc3, 0x50, 0x00, 0x00, 0x13, 0x88, // quoted ports + seq
    ];

    #[test]
    fn frag_needed_quotes_the_invoking_packet() {
        let m = IcmpMessage::new_checked(IcmpVersion::V4, &FRAG_NEEDED[..]).unwrap();
        assert!(m.is_error());
        assert_eq!(m.mtu(), Some(1400));
        assert_eq!(m.echo_ident(), None);
        let q = m.quoted().unwrap();
        assert_eq!(q.len(), 28);
        assert_eq!(&q[12..16], &[10, 0, 1, 4]);
    }

    /// A 1500-byte IPv4 UDP packet with DF (its IP header checksum left 0: the quote is copied,
    /// not read) behind an 802.1Q tag, 60 bytes of headroom.
    fn big_v4_frame() -> ([u8; 60 + 18 + 1500], usize) {
        let mut b = [0u8; 60 + 18 + 1500];
        let f = &mut b[60..];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 5, 10, 2, 0, 0, 0, 0, 9]);
        f[12..18].copy_from_slice(&[0x81, 0x00, 0x00, 0x07, 0x08, 0x00]);
        f[18..38]
            .copy_from_slice(&[0x45, 0, 0x05, 0xdc, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 20, 50, 60, 10]);
        for (i, x) in f[38..].iter_mut().enumerate() {
            *x = i as u8;
        }
        (b, 18 + 1500)
    }

    #[test]
    fn fragmentation_needed_is_built_in_place() {
        let (mut b, len) = big_v4_frame();
        let original = b;
        let r = TooBigRepr {
            src_mac: MacAddr([2, 0, 0, 0, 5, 10]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 9]),
            src: IpAddr::from([20, 50, 60, 10]),
            mtu: 1446,
            hop_limit: 64,
        };
        let (at, n) = r.emit_in_place(&mut b, 60, len, 18).unwrap();
        assert_eq!((at, n), (32, 18 + 576));
        let e = &b[at..at + n];
        assert_eq!(&e[..12], &[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 5, 10]);
        assert_eq!(&e[12..18], &original[72..78], "the tag and EtherType kept");
        assert_eq!(checksum::finish(checksum::sum(&e[18..38])), 0, "IPv4 header checksum");
        assert_eq!(&e[18..22], &[0x45, 0, 0x02, 0x40], "576 bytes");
        assert_eq!((e[24], e[26], e[27]), (0x40, 64, 1), "DF, TTL, ICMP");
        assert_eq!(&e[30..38], &[20, 50, 60, 10, 198, 18, 0, 1]);
        let m = IcmpMessage::new_checked(IcmpVersion::V4, &e[38..]).unwrap();
        assert!(m.verify_checksum(0));
        assert_eq!((m.ty(), m.code(), m.mtu()), (3, 4, Some(1446)));
        assert_eq!(m.quoted().unwrap(), &original[78..78 + 548], "the packet from its IP header");
        // Without the headroom, or for the other version: an error, nothing written.
        let (mut b, len) = big_v4_frame();
        let copy = b;
        assert_eq!(
            r.emit_in_place(&mut b[33..], 27, len, 18),
            Err(WireError::HeadroomTooSmall { needed: 28, available: 27 })
        );
        let v6 = TooBigRepr { src: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), ..r };
        assert_eq!(v6.emit_in_place(&mut b, 60, len, 18), Err(WireError::BadVersion(4)));
        assert_eq!(r.emit_in_place(&mut b, 60, 30, 18), Err(WireError::Truncated(Layer::Ipv4)));
        assert_eq!(r.emit_in_place(&mut b, 60, len + 1, 18), Err(WireError::LengthMismatch(Layer::Icmp)));
        assert_eq!(b, copy);
    }

    #[test]
    fn echo_and_checksum() {
        // Echo request id 0x1234 seq 1, payload "abcd"; checksum computed below.
        let mut b = [0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd'];
        let c = checksum::finish(checksum::sum(&b));
        b[2..4].copy_from_slice(&c.to_be_bytes());
        let m = IcmpMessage::new_checked(IcmpVersion::V4, &b[..]).unwrap();
        assert!(m.verify_checksum(0));
        assert_eq!(m.echo_ident(), Some(0x1234));
        assert!(m.quoted().is_none());
        let v6 = IcmpMessage::new_checked(IcmpVersion::V6, &[2u8, 0, 0, 0, 0, 0, 0x05, 0x00][..]).unwrap();
        assert_eq!(v6.mtu(), Some(1280));
        assert!(v6.is_error());
        assert_eq!(IcmpMessage::new_checked(IcmpVersion::V6, &b[..7]).err(), Some(WireError::Truncated(Layer::Icmp)));
    }
}
