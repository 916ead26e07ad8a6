//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) messages, including the invoking packet that an error
//! message quotes, so that an error can be steered to the flow it is about.

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, Unaligned};

use super::{checksum, Layer, WireError};

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
