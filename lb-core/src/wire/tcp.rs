//! TCP (RFC 9293) header: ports, sequence numbers, data offset, flags, checksum.

use zerocopy::byteorder::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned};

use super::{checksum, Layer, WireError};

/// The fixed 20-byte TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Sequence number.
    pub seq: U32,
    /// Acknowledgment number.
    pub ack: U32,
    /// Data offset in 32-bit words (high nibble of the first byte); the second byte holds the flags.
    pub data_offset: u8,
    /// Flags: CWR ECE URG ACK PSH RST SYN FIN.
    pub flags: u8,
    /// Receive window.
    pub window: U16,
    /// Checksum over pseudo-header, header and data.
    pub checksum: U16,
    /// Urgent pointer.
    pub urgent: U16,
}

/// Length of the fixed header.
pub const TCP_HEADER_LEN: usize = core::mem::size_of::<TcpHeader>();

/// TCP flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlags;

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

impl TcpHeader {
    /// Header length in bytes (data offset × 4).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset >> 4) * 4
    }
}

/// A checked view of a TCP segment.
pub struct TcpSegment<B> {
    header: Ref<B, TcpHeader>,
    body: B,
    options_len: usize,
}

impl<B: SplitByteSlice> TcpSegment<B> {
    /// Checks that the header and its options fit in `buffer`.
    pub fn new_checked(buffer: B) -> Result<Self, WireError> {
        let (header, body) = Ref::<B, TcpHeader>::from_prefix(buffer).map_err(|_| WireError::Truncated(Layer::Tcp))?;
        let hlen = header.header_len();
        if hlen < TCP_HEADER_LEN || hlen - TCP_HEADER_LEN > body.len() {
            return Err(WireError::BadDataOffset(header.data_offset >> 4));
        }
        Ok(Self { options_len: hlen - TCP_HEADER_LEN, header, body })
    }
    /// The fixed header.
    pub fn header(&self) -> &TcpHeader {
        &self.header
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.header.src_port.get()
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.header.dst_port.get()
    }
    /// Flags byte (see [`TcpFlags`]).
    pub fn flags(&self) -> u8 {
        self.header.flags
    }
    /// Options (0..=40 bytes).
    pub fn options(&self) -> &[u8] {
        &self.body[..self.options_len]
    }
    /// Data after the options.
    pub fn payload(&self) -> &[u8] {
        &self.body[self.options_len..]
    }
    /// Whether the checksum is right, given the pseudo-header partial sum.
    pub fn verify_checksum(&self, pseudo_header: u32) -> bool {
        let s = checksum::combine(checksum::sum(self.header.as_bytes()), checksum::sum(&self.body));
        checksum::finish(checksum::combine(pseudo_header, s)) == 0
    }
}

impl<B: SplitByteSliceMut> TcpSegment<B> {
    /// The fixed header, mutable.
    pub fn header_mut(&mut self) -> &mut TcpHeader {
        &mut self.header
    }
    /// Recomputes the checksum from scratch, given the pseudo-header partial sum.
    pub fn fill_checksum(&mut self, pseudo_header: u32) {
        self.header.checksum = U16::ZERO;
        let s = checksum::combine(checksum::sum(self.header.as_bytes()), checksum::sum(&self.body));
        self.header.checksum = U16::new(checksum::finish(checksum::combine(pseudo_header, s)));
    }
}

/// Builder for an option-less TCP header (resets, probes). The checksum is left zero: fill it with
/// [`TcpSegment::fill_checksum`] once the payload is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags.
    pub flags: u8,
    /// Window.
    pub window: u16,
}

impl TcpRepr {
    /// Header length.
    pub const LEN: usize = TCP_HEADER_LEN;

    /// Writes the 20-byte header at the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let (h, _) = TcpHeader::mut_from_prefix(buf).map_err(|_| WireError::Truncated(Layer::Tcp))?;
        *h = TcpHeader {
            src_port: U16::new(self.src_port),
            dst_port: U16::new(self.dst_port),
            seq: U32::new(self.seq),
            ack: U32::new(self.ack),
            data_offset: 5 << 4,
            flags: self.flags,
            window: U16::new(self.window),
            checksum: U16::ZERO,
            urgent: U16::ZERO,
        };
        Ok(())
    }
}

/// TCP option kinds (RFC 9293, 3.2).
pub mod option {
    /// End of option list.
    pub const END: u8 = 0;
    /// No operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum segment size (4 bytes: kind, length, MSS).
    pub const MSS: u8 = 2;
}

/// Lowers the MSS option of the TCP segment `segment` (its header and options at least) to `mss`
/// in place, updating the checksum incrementally (RFC 1624); an MSS already at or below `mss`, and
/// a segment without the option, are left alone. Returns the MSS the segment announced if it was
/// lowered. A malformed option list (a length past the header, a length below 2) stops the walk
/// with the segment untouched.
pub fn clamp_mss(segment: &mut [u8], mss: u16) -> Option<u16> {
    let header_len = usize::from(*segment.get(12)? >> 4) * 4;
    let options = segment.get(TCP_HEADER_LEN..header_len)?;
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            option::END => return None,
            option::NOP => i += 1,
            kind => {
                let len = usize::from(*options.get(i + 1)?);
                if len < 2 || i + len > options.len() {
                    return None;
                }
                if kind == option::MSS && len == 4 {
                    let at = TCP_HEADER_LEN + i + 2;
                    let old = u16::from_be_bytes([segment[at], segment[at + 1]]);
                    if old <= mss {
                        return None;
                    }
                    segment[at..at + 2].copy_from_slice(&mss.to_be_bytes());
                    let check = u16::from_be_bytes([segment[16], segment[17]]);
                    segment[16..18].copy_from_slice(&checksum::update16(check, old, mss).to_be_bytes());
                    return Some(old);
                }
                i += len;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN from 10.0.0.1:33738 to 10.0.0.2:80 with MSS/SACK/TS/WS options, laid out as tcpdump shows it.
    const SYN: [u8; 40] = [
        0x83, 0xca, 0x00, 0x50, 0x5e, 0x2c, 0x4a, 0x8f, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x14, 0x2a,
        0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x9c, 0x8a, 0x3e, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x03, 0x03, 0x07,
    ];

    fn pseudo() -> u32 {
        checksum::pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, SYN.len() as u16)
    }

    #[test]
    fn deconstruct() {
        let s = TcpSegment::new_checked(&SYN[..]).unwrap();
        assert_eq!(s.src_port(), 33738);
        assert_eq!(s.dst_port(), 80);
        assert_eq!(s.flags(), TcpFlags::SYN);
        assert_eq!(s.header().seq.get(), 0x5e2c_4a8f);
        assert_eq!(s.options().len(), 20);
        assert_eq!(&s.options()[..4], &[2, 4, 5, 0xb4], "MSS 1460");
        assert!(s.payload().is_empty());
    }

    #[test]
    fn checksum_fill_and_verify() {
        let mut b = SYN;
        let mut s = TcpSegment::new_checked(&mut b[..]).unwrap();
        s.fill_checksum(pseudo());
        assert!(s.verify_checksum(pseudo()));
        let c = s.header().checksum.get();
        b[3] = 0x51;
        assert!(!TcpSegment::new_checked(&b[..]).unwrap().verify_checksum(pseudo()));
        let fixed = checksum::update16(c, 80, 81);
        let mut s = TcpSegment::new_checked(&mut b[..]).unwrap();
        s.header_mut().checksum = U16::new(fixed);
        assert!(s.verify_checksum(pseudo()), "RFC 1624 port rewrite matches recomputation");
    }

    #[test]
    fn bad_offsets() {
        assert_eq!(TcpSegment::new_checked(&SYN[..19]).err(), Some(WireError::Truncated(Layer::Tcp)));
        assert_eq!(TcpSegment::new_checked(&SYN[..39]).err(), Some(WireError::BadDataOffset(10)));
        let mut b = SYN;
        b[12] = 0x40;
        assert_eq!(TcpSegment::new_checked(&b[..]).err(), Some(WireError::BadDataOffset(4)));
    }

    #[test]
    fn mss_is_lowered_never_raised_with_the_checksum() {
        let mut b = SYN;
        TcpSegment::new_checked(&mut b[..]).unwrap().fill_checksum(pseudo());
        let mut raised = b;
        assert_eq!(clamp_mss(&mut raised, 1500), None, "1460 is not raised");
        assert_eq!(raised, b);
        assert_eq!(clamp_mss(&mut b, 1400), Some(1460));
        assert_eq!(&b[20..24], &[2, 4, 0x05, 0x78]);
        assert!(TcpSegment::new_checked(&b[..]).unwrap().verify_checksum(pseudo()));
        // The MSS after NOPs and another option; a broken list is left alone.
        let mut late = SYN;
        late[20..24].copy_from_slice(&[1, 1, 1, 1]);
        late[36..40].copy_from_slice(&[2, 4, 0x23, 0x28]);
        assert_eq!(clamp_mss(&mut late, 1440), Some(9000));
        let mut broken = SYN;
        broken[24..26].copy_from_slice(&[4, 0]);
        broken[20..24].copy_from_slice(&[1, 1, 1, 1]);
        assert_eq!(clamp_mss(&mut broken, 1000), None);
        assert_eq!(clamp_mss(&mut [0u8; 20], 1000), None, "no options");
        let mut cut = SYN;
        assert_eq!(clamp_mss(&mut cut[..30], 1000), None, "cut short");
    }

    #[test]
    fn repr_builds_a_reset() {
        let mut b = [0u8; 20];
        TcpRepr { src_port: 80, dst_port: 50000, seq: 5001, ack: 0, flags: TcpFlags::RST, window: 0 }
            .emit(&mut b)
            .unwrap();
        let s = TcpSegment::new_checked(&b[..]).unwrap();
        assert_eq!((s.src_port(), s.dst_port(), s.flags(), s.header().seq.get()), (80, 50000, TcpFlags::RST, 5001));
    }
}
