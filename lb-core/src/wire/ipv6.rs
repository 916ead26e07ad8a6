//! IPv6 (RFC 8200): fixed header and a bounded walk over extension headers.

use zerocopy::byteorder::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned};

use super::{header_prefix, ip_proto, Layer, WireError};

/// The fixed 40-byte IPv6 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Ipv6Header {
    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub ver_tc_flow: U32,
    /// Length of everything after this header.
    pub payload_len: U16,
    /// Type of the first extension header or of the upper-layer header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
}

/// Length of the fixed header.
pub const IPV6_HEADER_LEN: usize = core::mem::size_of::<Ipv6Header>();

impl Ipv6Header {
    /// IP version nibble.
    #[inline(always)]
    pub fn version(&self) -> u8 {
        (self.ver_tc_flow.get() >> 28) as u8
    }
    /// Traffic class.
    #[inline(always)]
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow.get() >> 20) as u8
    }
    /// Flow label (20 bits).
    #[inline(always)]
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow.get() & 0x000f_ffff
    }
}

/// The two bytes every Hop-by-Hop, Routing and Destination Options header starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Ipv6ExtHeader {
    /// Type of the next header.
    pub next_header: u8,
    /// Length in 8-octet units, not counting the first 8 octets (4-octet units minus 2 for AH).
    pub hdr_ext_len: u8,
}

/// The 8-byte Fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Ipv6FragmentHeader {
    /// Type of the next header.
    pub next_header: u8,
    /// Reserved.
    pub reserved: u8,
    /// Fragment offset (13 bits, 8-byte units), 2 reserved bits, M flag.
    pub offset_flags: U16,
    /// Identification.
    pub ident: U32,
}

/// IP Authentication Header protocol number (walked like an extension header).
const AUTH_HEADER: u8 = 51;

/// The most extension headers the walk accepts before giving up (RFC 8504 suggests limits too; a
/// packet with more is almost certainly an attack on the parser).
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Fragment information from an IPv4 header or an IPv6 Fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentInfo {
    /// Offset of this fragment in bytes.
    pub offset: usize,
    /// Whether more fragments follow.
    pub more: bool,
    /// Identification (16 bits for IPv4, 32 for IPv6).
    pub ident: u32,
}

impl FragmentInfo {
    /// Whether this is part of a fragmented datagram: not an IPv6 "atomic fragment" (offset 0, no
    /// more fragments), which holds a whole datagram and is processed as one (RFC 6946).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.offset != 0 || self.more
    }
}

/// Where the upper-layer header starts after the extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionWalk {
    /// Upper-layer protocol (or [`ip_proto::IPV6_NO_NEXT`], or an unknown extension's number).
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 payload.
    pub offset: usize,
    /// The Fragment header, if one was present.
    pub fragment: Option<FragmentInfo>,
}

/// Walks the extension headers at the front of an IPv6 payload, at most [`MAX_EXTENSION_HEADERS`] of
/// them. Stops at the first header that is not Hop-by-Hop, Routing, Fragment, Destination Options or
/// AH; stops after a non-first fragment's Fragment header (what follows is not a header).
#[inline]
pub fn walk_extensions(next: u8, payload: &[u8]) -> Result<ExtensionWalk, WireError> {
    walk(next, payload)
}

/// [`walk_extensions`], always inlined: for the flow key's general path, whose IPv6 fragments
/// then cost no call and no second prologue, without growing every other caller.
#[inline(always)]
pub(crate) fn walk(mut next: u8, payload: &[u8]) -> Result<ExtensionWalk, WireError> {
    let mut offset = 0usize;
    let mut fragment = None;
    for n in 0..=MAX_EXTENSION_HEADERS {
        let len = match next {
            ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTING | ip_proto::IPV6_DEST_OPTS | AUTH_HEADER => {
                if next == ip_proto::HOP_BY_HOP && n != 0 {
                    return Err(WireError::HopByHopNotFirst);
                }
                let (h, _) = header_prefix::<Ipv6ExtHeader>(&payload[offset..], Layer::Ipv6Extension)?;
                let len = if next == AUTH_HEADER {
                    (usize::from(h.hdr_ext_len) + 2) * 4
                } else {
                    (usize::from(h.hdr_ext_len) + 1) * 8
                };
                next = h.next_header;
                len
            }
            ip_proto::IPV6_FRAGMENT => {
                let (h, _) = header_prefix::<Ipv6FragmentHeader>(&payload[offset..], Layer::Ipv6Extension)?;
                let of = h.offset_flags.get();
                let info = FragmentInfo { offset: usize::from(of >> 3) * 8, more: of & 1 != 0, ident: h.ident.get() };
                fragment = Some(info);
                next = h.next_header;
                if info.offset != 0 {
                    // A later fragment: the bytes after this header are the middle of the datagram.
                    return Ok(ExtensionWalk { protocol: next, offset: offset + 8, fragment });
                }
                8
            }
            _ => return Ok(ExtensionWalk { protocol: next, offset, fragment }),
        };
        if offset + len > payload.len() {
            return Err(WireError::Truncated(Layer::Ipv6Extension));
        }
        offset += len;
    }
    Err(WireError::TooManyExtensionHeaders)
}

/// Validates the version and payload length of the IPv6 header at the front of `buf`; returns the
/// header and the packet length (40 + payload length). Trailing bytes are allowed and ignored.
#[inline(always)]
pub(crate) fn check_header(buf: &[u8]) -> Result<(&Ipv6Header, usize), WireError> {
    let (h, rest) = header_prefix::<Ipv6Header>(buf, Layer::Ipv6)?;
    if h.version() != 6 {
        return Err(WireError::BadVersion(h.version()));
    }
    let payload_len = usize::from(h.payload_len.get());
    if payload_len > rest.len() {
        return Err(WireError::LengthMismatch(Layer::Ipv6));
    }
    Ok((h, IPV6_HEADER_LEN + payload_len))
}

/// A checked view of an IPv6 packet.
pub struct Ipv6Packet<B> {
    header: Ref<B, Ipv6Header>,
    /// Extension headers and upper-layer data, cut at the payload length.
    payload: B,
}

impl<B: SplitByteSlice> Ipv6Packet<B> {
    /// Checks version and payload length, and cuts off anything past the payload length.
    pub fn new_checked(buffer: B) -> Result<Self, WireError> {
        let (_, len) = check_header(&buffer)?;
        let (packet, _padding) = buffer.split_at(len).map_err(|_| WireError::LengthMismatch(Layer::Ipv6))?;
        let (header, payload) = Ref::from_prefix(packet).map_err(|_| WireError::Truncated(Layer::Ipv6))?;
        Ok(Self { header, payload })
    }
    /// The fixed header.
    pub fn header(&self) -> &Ipv6Header {
        &self.header
    }
    /// Source address.
    pub fn src(&self) -> [u8; 16] {
        self.header.src
    }
    /// Destination address.
    pub fn dst(&self) -> [u8; 16] {
        self.header.dst
    }
    /// Extension headers and upper-layer data.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// Walks the extension headers.
    pub fn extensions(&self) -> Result<ExtensionWalk, WireError> {
        walk_extensions(self.header.next_header, &self.payload)
    }
}

impl<B: SplitByteSliceMut> Ipv6Packet<B> {
    /// The fixed header, mutable (IPv6 has no header checksum to patch).
    pub fn header_mut(&mut self) -> &mut Ipv6Header {
        &mut self.header
    }
    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
}

/// Builder for an IPv6 header without extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Upper-layer protocol.
    pub next_header: u8,
    /// Payload length.
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits; higher bits are ignored).
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Header length.
    pub const LEN: usize = IPV6_HEADER_LEN;

    /// Writes the 40-byte header at the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let (h, _) = Ipv6Header::mut_from_prefix(buf).map_err(|_| WireError::Truncated(Layer::Ipv6))?;
        *h = Ipv6Header {
            ver_tc_flow: U32::new((6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff)),
            payload_len: U16::new(self.payload_len),
            next_header: self.next_header,
            hop_limit: self.hop_limit,
            src: self.src,
            dst: self.dst,
        };
        Ok(())
    }

    /// Reads the fields of a checked packet.
    pub fn parse<B: SplitByteSlice>(p: &Ipv6Packet<B>) -> Self {
        let h = p.header();
        Self {
            src: h.src,
            dst: h.dst,
            next_header: h.next_header,
            payload_len: h.payload_len.get(),
            hop_limit: h.hop_limit,
            traffic_class: h.traffic_class(),
            flow_label: h.flow_label(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2001:db8::1 → 2001:db8::2, Hop-by-Hop (PadN) -> Destination Options (PadN) -> Fragment
    /// (first, M=1, id 0xdeadbeef) -> UDP header.
    fn packet() -> [u8; 40 + 8 + 8 + 8 + 8] {
        let mut p = [0u8; 72];
        p[0..4].copy_from_slice(&[0x60, 0x00, 0x00, 0x00]);
        p[4..6].copy_from_slice(&32u16.to_be_bytes());
        p[6] = ip_proto::HOP_BY_HOP;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p[40..48].copy_from_slice(&[ip_proto::IPV6_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        p[48..56].copy_from_slice(&[ip_proto::IPV6_FRAGMENT, 0, 1, 4, 0, 0, 0, 0]);
        p[56..64].copy_from_slice(&[ip_proto::UDP, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]);
        p[64..72].copy_from_slice(&[0x30, 0x39, 0x00, 0x35, 0x00, 0x20, 0x00, 0x00]);
        p
    }

    #[test]
    fn walk_in_order() {
        let buf = packet();
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header().hop_limit, 64);
        let walk = p.extensions().unwrap();
        assert_eq!(walk.protocol, ip_proto::UDP);
        assert_eq!(walk.offset, 24);
        assert_eq!(walk.fragment, Some(FragmentInfo { offset: 0, more: true, ident: 0xdead_beef }));
        let mut out = [0u8; 40];
        Ipv6Repr::parse(&p).emit(&mut out).unwrap();
        assert_eq!(out[..], buf[..40]);
    }

    #[test]
    fn later_fragment_stops_the_walk() {
        let mut buf = packet();
        buf[58..60].copy_from_slice(&((100u16 << 3) | 1).to_be_bytes());
        let walk = Ipv6Packet::new_checked(&buf[..]).unwrap().extensions().unwrap();
        assert_eq!(walk.fragment.unwrap().offset, 800);
        assert_eq!(walk.offset, 24);
    }

    #[test]
    fn malformed() {
        let buf = packet();
        assert_eq!(Ipv6Packet::new_checked(&buf[..39]).err(), Some(WireError::Truncated(Layer::Ipv6)));
        assert_eq!(Ipv6Packet::new_checked(&buf[..71]).err(), Some(WireError::LengthMismatch(Layer::Ipv6)));
        let mut b = buf;
        b[0] = 0x40;
        assert_eq!(Ipv6Packet::new_checked(&b[..]).err(), Some(WireError::BadVersion(4)));
        // Destination options header that claims 16 bytes more than the payload has.
        let mut b = buf;
        b[41] = 4;
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.extensions(), Err(WireError::Truncated(Layer::Ipv6Extension)));
        // Hop-by-Hop in second place.
        let mut b = buf;
        b[40] = ip_proto::HOP_BY_HOP;
        assert_eq!(Ipv6Packet::new_checked(&b[..]).unwrap().extensions(), Err(WireError::HopByHopNotFirst));
        // A chain of nine Destination Options headers.
        let mut chain = [0u8; 8 * 10];
        for i in 0..10 {
            chain[i * 8] = ip_proto::IPV6_DEST_OPTS;
        }
        assert_eq!(walk_extensions(ip_proto::IPV6_DEST_OPTS, &chain), Err(WireError::TooManyExtensionHeaders));
    }
}
