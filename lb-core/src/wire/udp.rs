//! UDP (RFC 768).

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned};

use super::{checksum, Layer, WireError};

/// The 8-byte UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct UdpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Length of header + data.
    pub length: U16,
    /// Checksum (0 = none, IPv4 only).
    pub checksum: U16,
}

/// Length of the header.
pub const UDP_HEADER_LEN: usize = core::mem::size_of::<UdpHeader>();

/// A checked view of a UDP datagram.
pub struct UdpDatagram<B> {
    header: Ref<B, UdpHeader>,
    payload: B,
}

impl<B: SplitByteSlice> UdpDatagram<B> {
    /// Checks the header and that its length field lies between 8 and the buffer length; cuts the
    /// payload at the length field.
    pub fn new_checked(buffer: B) -> Result<Self, WireError> {
        let (header, rest) = Ref::<B, UdpHeader>::from_prefix(buffer).map_err(|_| WireError::Truncated(Layer::Udp))?;
        let len = usize::from(header.length.get());
        if len < UDP_HEADER_LEN || len - UDP_HEADER_LEN > rest.len() {
            return Err(WireError::LengthMismatch(Layer::Udp));
        }
        let (payload, _) = rest.split_at(len - UDP_HEADER_LEN).map_err(|_| WireError::LengthMismatch(Layer::Udp))?;
        Ok(Self { header, payload })
    }
    /// The header.
    pub fn header(&self) -> &UdpHeader {
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
    /// Data after the header.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// Whether the checksum is right (a zero checksum means "not computed" and passes).
    pub fn verify_checksum(&self, pseudo_header: u32) -> bool {
        if self.header.checksum.get() == 0 {
            return true;
        }
        let s = checksum::combine(checksum::sum(self.header.as_bytes()), checksum::sum(&self.payload));
        checksum::finish(checksum::combine(pseudo_header, s)) == 0
    }
}

impl<B: SplitByteSliceMut> UdpDatagram<B> {
    /// The header, mutable.
    pub fn header_mut(&mut self) -> &mut UdpHeader {
        &mut self.header
    }
    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
    /// Recomputes the checksum from scratch; a computed 0 is sent as 0xffff (RFC 768).
    pub fn fill_checksum(&mut self, pseudo_header: u32) {
        self.header.checksum = U16::ZERO;
        let s = checksum::combine(checksum::sum(self.header.as_bytes()), checksum::sum(&self.payload));
        let c = checksum::finish(checksum::combine(pseudo_header, s));
        self.header.checksum = U16::new(if c == 0 { 0xffff } else { c });
    }
}

/// Builder for a UDP header; the checksum is written as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length.
    pub payload_len: u16,
}

impl UdpRepr {
    /// Header length.
    pub const LEN: usize = UDP_HEADER_LEN;

    /// Writes the header at the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let len = self.payload_len.checked_add(UDP_HEADER_LEN as u16).ok_or(WireError::FieldOverflow(Layer::Udp))?;
        let (h, _) = UdpHeader::mut_from_prefix(buf).map_err(|_| WireError::Truncated(Layer::Udp))?;
        *h = UdpHeader {
            src_port: U16::new(self.src_port),
            dst_port: U16::new(self.dst_port),
            length: U16::new(len),
            checksum: U16::ZERO,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS query 192.168.1.10:53000 → 8.8.8.8:53 ("example.com" A).
    const DNS: [u8; 37] = [
        0xcf, 0x08, 0x00, 0x35, 0x00, 0x25, 0x00, 0x00, 0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, 0x00, 0x01, 0x00,
        0x01,
    ];

    #[test]
    fn deconstruct_and_checksum() {
        let pseudo = checksum::pseudo_header_v4([192, 168, 1, 10], [8, 8, 8, 8], 17, 37);
        let mut b = DNS;
        let mut d = UdpDatagram::new_checked(&mut b[..]).unwrap();
        assert_eq!((d.src_port(), d.dst_port()), (53000, 53));
        assert_eq!(d.payload().len(), 29);
        d.fill_checksum(pseudo);
        assert!(d.verify_checksum(pseudo));
        b[20] ^= 0x40;
        assert!(!UdpDatagram::new_checked(&b[..]).unwrap().verify_checksum(pseudo));
    }

    #[test]
    fn length_field_is_checked() {
        assert_eq!(UdpDatagram::new_checked(&DNS[..7]).err(), Some(WireError::Truncated(Layer::Udp)));
        assert_eq!(UdpDatagram::new_checked(&DNS[..36]).err(), Some(WireError::LengthMismatch(Layer::Udp)));
        let mut b = DNS;
        b[5] = 7;
        assert_eq!(UdpDatagram::new_checked(&b[..]).err(), Some(WireError::LengthMismatch(Layer::Udp)));
        b[5] = 8;
        assert_eq!(UdpDatagram::new_checked(&b[..]).unwrap().payload().len(), 0);
        let mut out = [0u8; 8];
        UdpRepr { src_port: 53000, dst_port: 53, payload_len: 29 }.emit(&mut out).unwrap();
        assert_eq!(out, DNS[..8]);
    }
}
