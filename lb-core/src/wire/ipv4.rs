//! IPv4 (RFC 791): header with options, total length, header checksum, fragments.

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned};

use super::{checksum, Layer, WireError};

/// The fixed 20-byte IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Ipv4Header {
    /// Version (high nibble) and IHL in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP (6 bits) and ECN (2 bits).
    pub dscp_ecn: u8,
    /// Length of header + options + payload.
    pub total_len: U16,
    /// Identification (groups the fragments of one datagram).
    pub ident: U16,
    /// Flags (reserved, DF, MF) and the fragment offset in 8-byte units.
    pub flags_frag: U16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Header checksum.
    pub checksum: U16,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

/// Length of the fixed header.
pub const IPV4_HEADER_LEN: usize = core::mem::size_of::<Ipv4Header>();
/// "Don't fragment" flag in `flags_frag`.
pub const FLAG_DF: u16 = 0x4000;
/// "More fragments" flag in `flags_frag`.
pub const FLAG_MF: u16 = 0x2000;
/// Fragment offset mask in `flags_frag` (8-byte units).
pub const FRAG_OFFSET_MASK: u16 = 0x1fff;

impl Ipv4Header {
    /// IP version nibble.
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }
    /// Header length in bytes (IHL × 4).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.version_ihl & 0x0f) * 4
    }
    /// Whether more fragments follow this one.
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.flags_frag.get() & FLAG_MF != 0
    }
    /// Whether the sender forbade fragmentation.
    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        self.flags_frag.get() & FLAG_DF != 0
    }
    /// Fragment offset in bytes.
    #[inline(always)]
    pub fn frag_offset(&self) -> usize {
        usize::from(self.flags_frag.get() & FRAG_OFFSET_MASK) * 8
    }
    /// Whether this packet is any fragment of a larger datagram (first, middle or last).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.flags_frag.get() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }
}

/// Validates version, IHL and total length of the IPv4 header at the front of `buf`; returns the
/// header, the header length and the total length. Bytes past the total length (Ethernet padding) are
/// allowed and ignored.
#[inline(always)]
pub(crate) fn check_header(buf: &[u8]) -> Result<(&Ipv4Header, usize, usize), WireError> {
    let (h, _) = super::header_prefix::<Ipv4Header>(buf, Layer::Ipv4)?;
    if h.version() != 4 {
        return Err(WireError::BadVersion(h.version()));
    }
    let hlen = h.header_len();
    if hlen < IPV4_HEADER_LEN {
        return Err(WireError::BadIhl(h.version_ihl & 0x0f));
    }
    if hlen > buf.len() {
        return Err(WireError::Truncated(Layer::Ipv4));
    }
    let total = usize::from(h.total_len.get());
    if total < hlen || total > buf.len() {
        return Err(WireError::LengthMismatch(Layer::Ipv4));
    }
    Ok((h, hlen, total))
}

/// A checked view of an IPv4 packet.
pub struct Ipv4Packet<B> {
    header: Ref<B, Ipv4Header>,
    /// Options and payload, cut at the total length.
    body: B,
    options_len: usize,
}

impl<B: SplitByteSlice> Ipv4Packet<B> {
    /// Checks version, IHL and total length, and cuts off anything past the total length.
    pub fn new_checked(buffer: B) -> Result<Self, WireError> {
        let (_, hlen, total) = check_header(&buffer)?;
        let (packet, _padding) = buffer.split_at(total).map_err(|_| WireError::LengthMismatch(Layer::Ipv4))?;
        let (header, body) = Ref::from_prefix(packet).map_err(|_| WireError::Truncated(Layer::Ipv4))?;
        Ok(Self { header, body, options_len: hlen - IPV4_HEADER_LEN })
    }
    /// The fixed header.
    pub fn header(&self) -> &Ipv4Header {
        &self.header
    }
    /// Source address.
    pub fn src(&self) -> [u8; 4] {
        self.header.src
    }
    /// Destination address.
    pub fn dst(&self) -> [u8; 4] {
        self.header.dst
    }
    /// Options (0..=40 bytes).
    pub fn options(&self) -> &[u8] {
        &self.body[..self.options_len]
    }
    /// The payload, up to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.body[self.options_len..]
    }
    /// Whether the header checksum (options included) is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::finish(checksum::combine(checksum::sum(self.header.as_bytes()), checksum::sum(self.options()))) == 0
    }
}

impl<B: SplitByteSliceMut> Ipv4Packet<B> {
    /// The fixed header, mutable. Call [`Self::fill_checksum`] or update the checksum incrementally.
    pub fn header_mut(&mut self) -> &mut Ipv4Header {
        &mut self.header
    }
    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.body[self.options_len..]
    }
    /// Recomputes the header checksum over header and options.
    pub fn fill_checksum(&mut self) {
        self.header.checksum = U16::ZERO;
        let s = checksum::combine(checksum::sum(self.header.as_bytes()), checksum::sum(&self.body[..self.options_len]));
        self.header.checksum = U16::new(checksum::finish(s));
    }
    /// Rewrites the destination address and patches the header checksum incrementally (RFC 1624).
    pub fn set_dst(&mut self, dst: [u8; 4]) {
        let c = checksum::update(self.header.checksum.get(), &self.header.dst, &dst);
        self.header.dst = dst;
        self.header.checksum = U16::new(c);
    }
    /// Rewrites the source address and patches the header checksum incrementally (RFC 1624).
    pub fn set_src(&mut self, src: [u8; 4]) {
        let c = checksum::update(self.header.checksum.get(), &self.header.src, &src);
        self.header.src = src;
        self.header.checksum = U16::new(c);
    }
}

/// Builder for an option-less IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Payload protocol.
    pub protocol: u8,
    /// Payload length in bytes (total length minus 20).
    pub payload_len: u16,
    /// Time to live.
    pub ttl: u8,
    /// DSCP and ECN byte.
    pub dscp_ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Set the DF flag.
    pub dont_fragment: bool,
}

impl Ipv4Repr {
    /// Header length.
    pub const LEN: usize = IPV4_HEADER_LEN;

    /// Writes a 20-byte header with a correct checksum at the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let total =
            self.payload_len.checked_add(IPV4_HEADER_LEN as u16).ok_or(WireError::FieldOverflow(Layer::Ipv4))?;
        let (h, _) = Ipv4Header::mut_from_prefix(buf).map_err(|_| WireError::Truncated(Layer::Ipv4))?;
        *h = Ipv4Header {
            version_ihl: 0x45,
            dscp_ecn: self.dscp_ecn,
            total_len: U16::new(total),
            ident: U16::new(self.ident),
            flags_frag: U16::new(if self.dont_fragment { FLAG_DF } else { 0 }),
            ttl: self.ttl,
            protocol: self.protocol,
            checksum: U16::ZERO,
            src: self.src,
            dst: self.dst,
        };
        h.checksum = U16::new(checksum::finish(checksum::sum(h.as_bytes())));
        Ok(())
    }

    /// Reads the fields of a checked packet (options are not represented).
    pub fn parse<B: SplitByteSlice>(p: &Ipv4Packet<B>) -> Self {
        let h = p.header();
        Self {
            src: h.src,
            dst: h.dst,
            protocol: h.protocol,
            payload_len: (p.payload().len()) as u16,
            ttl: h.ttl,
            dscp_ecn: h.dscp_ecn,
            ident: h.ident.get(),
            dont_fragment: h.dont_fragment(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 192.168.0.1 → 192.168.0.199, UDP, 115 bytes total: a captured header (checksum 0xb861).
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];

    fn packet() -> [u8; 0x73 + 4] {
        let mut p = [0u8; 0x73 + 4];
        p[..20].copy_from_slice(&HDR);
        p
    }

    #[test]
    fn deconstruct_real_header() {
        let buf = packet();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.src(), [192, 168, 0, 1]);
        assert_eq!(p.dst(), [192, 168, 0, 199]);
        assert_eq!(p.header().protocol, 17);
        assert!(p.header().dont_fragment());
        assert!(!p.header().is_fragment());
        assert_eq!(p.payload().len(), 0x73 - 20, "4 bytes of trailing padding are cut off");
        assert!(p.verify_checksum());
    }

    #[test]
    fn construct_matches_capture() {
        let repr = Ipv4Repr::parse(&Ipv4Packet::new_checked(&packet()[..]).unwrap());
        let mut out = [0u8; 20];
        repr.emit(&mut out).unwrap();
        assert_eq!(out, HDR);
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let buf = packet();
        assert_eq!(Ipv4Packet::new_checked(&buf[..19]).err(), Some(WireError::Truncated(Layer::Ipv4)));
        assert_eq!(Ipv4Packet::new_checked(&buf[..0x72]).err(), Some(WireError::LengthMismatch(Layer::Ipv4)));
        let mut b = buf;
        b[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&b[..]).err(), Some(WireError::BadVersion(6)));
        b[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&b[..]).err(), Some(WireError::BadIhl(4)));
        b[0] = 0x4f; // 60-byte header inside a 24-byte buffer
        assert_eq!(Ipv4Packet::new_checked(&b[..24]).err(), Some(WireError::Truncated(Layer::Ipv4)));
        let mut short_total = buf;
        short_total[2..4].copy_from_slice(&16u16.to_be_bytes());
        assert_eq!(Ipv4Packet::new_checked(&short_total[..]).err(), Some(WireError::LengthMismatch(Layer::Ipv4)));
    }

    #[test]
    fn options_and_fragments() {
        // IHL 6 with a 4-byte NOP/NOP/NOP/EOL option, MF set, offset 185*8.
        let mut b = [0u8; 28];
        b[0] = 0x46;
        b[2..4].copy_from_slice(&28u16.to_be_bytes());
        b[6..8].copy_from_slice(&(FLAG_MF | 185).to_be_bytes());
        b[9] = 6;
        b[20..24].copy_from_slice(&[1, 1, 1, 0]);
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload().len(), 4);
        assert!(p.header().more_fragments());
        assert_eq!(p.header().frag_offset(), 1480);
        p.set_dst([10, 0, 1, 4]);
        assert!(p.verify_checksum(), "incremental update keeps the checksum valid");
        p.set_src([1, 2, 3, 4]);
        assert!(p.verify_checksum());
    }
}
