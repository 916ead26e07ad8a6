//! Ethernet II frames and 802.1Q / 802.1ad (QinQ) tags.

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned};

use super::{header_prefix, Layer, WireError};

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(transparent)]
pub struct MacAddr(pub [u8; 6]);

/// EtherType values this crate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtherType;

impl EtherType {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP (not load-balanced; reported as unsupported).
    pub const ARP: u16 = 0x0806;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag still seen on some switches.
    pub const QINQ_LEGACY: u16 = 0x9100;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;

    /// Whether `ethertype` announces a VLAN tag.
    #[inline(always)]
    pub const fn is_vlan(ethertype: u16) -> bool {
        matches!(ethertype, Self::VLAN | Self::QINQ | Self::QINQ_LEGACY)
    }
}

/// Ethernet II header: the only place its byte offsets are written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EthernetHeader {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// EtherType of what follows (possibly a VLAN TPID).
    pub ethertype: U16,
}

/// Length of [`EthernetHeader`].
pub const ETHERNET_HEADER_LEN: usize = core::mem::size_of::<EthernetHeader>();

/// An 802.1Q / 802.1ad tag: the TCI and the EtherType of what follows the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct VlanTag {
    /// Tag control information: PCP (3 bits), DEI (1 bit), VLAN id (12 bits).
    pub tci: U16,
    /// EtherType of what follows this tag.
    pub ethertype: U16,
}

/// Length of [`VlanTag`].
pub const VLAN_TAG_LEN: usize = core::mem::size_of::<VlanTag>();

impl VlanTag {
    /// The 12-bit VLAN id.
    #[inline(always)]
    pub fn vid(&self) -> u16 {
        self.tci.get() & 0x0fff
    }
    /// The 3-bit priority code point.
    #[inline(always)]
    pub fn pcp(&self) -> u8 {
        (self.tci.get() >> 13) as u8
    }
}

/// The most tags accepted in front of the network header (QinQ: one service tag + one customer tag).
pub const MAX_VLAN_TAGS: usize = 2;

/// The L2 part of a frame as the data path needs it: tags walked, network header located.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L2Info {
    /// EtherType of the network header after all tags.
    pub ethertype: u16,
    /// VLAN ids, outermost first; unused slots are 0.
    pub vlans: [u16; MAX_VLAN_TAGS],
    /// Number of tags (0..=2).
    pub vlan_count: u8,
    /// Offset of the network header.
    pub l3_offset: usize,
}

/// Walks the Ethernet header and up to two VLAN tags.
#[inline(always)]
pub fn parse_l2(frame: &[u8]) -> Result<L2Info, WireError> {
    let (eth, mut rest) = header_prefix::<EthernetHeader>(frame, Layer::Ethernet)?;
    let mut info = L2Info { ethertype: eth.ethertype.get(), l3_offset: ETHERNET_HEADER_LEN, ..L2Info::default() };
    while EtherType::is_vlan(info.ethertype) {
        if usize::from(info.vlan_count) == MAX_VLAN_TAGS {
            return Err(WireError::TooManyVlanTags);
        }
        let (tag, after) = header_prefix::<VlanTag>(rest, Layer::Vlan)?;
        info.vlans[usize::from(info.vlan_count)] = tag.vid();
        info.vlan_count += 1;
        info.ethertype = tag.ethertype.get();
        info.l3_offset += VLAN_TAG_LEN;
        rest = after;
    }
    Ok(info)
}

/// A checked view of an Ethernet II frame (header + everything after it, tags included).
pub struct EthernetFrame<B> {
    header: Ref<B, EthernetHeader>,
    payload: B,
}

impl<B: SplitByteSlice> EthernetFrame<B> {
    /// Checks that `buffer` holds at least an Ethernet header.
    pub fn new_checked(buffer: B) -> Result<Self, WireError> {
        let (header, payload) = Ref::from_prefix(buffer).map_err(|_| WireError::Truncated(Layer::Ethernet))?;
        Ok(Self { header, payload })
    }
    /// The fixed header.
    pub fn header(&self) -> &EthernetHeader {
        &self.header
    }
    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        self.header.dst
    }
    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        self.header.src
    }
    /// The EtherType right after the MACs (a TPID if the frame is tagged).
    pub fn ethertype(&self) -> u16 {
        self.header.ethertype.get()
    }
    /// Everything after the 14-byte header.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl<B: SplitByteSliceMut> EthernetFrame<B> {
    /// The fixed header, for in-place rewrites (MAC swap, EtherType).
    pub fn header_mut(&mut self) -> &mut EthernetHeader {
        &mut self.header
    }
    /// Everything after the 14-byte header, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
}

/// Builder for an untagged Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source MAC.
    pub src: MacAddr,
    /// Destination MAC.
    pub dst: MacAddr,
    /// EtherType.
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Header length.
    pub const LEN: usize = ETHERNET_HEADER_LEN;

    /// Writes the header at the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let (h, _) = EthernetHeader::mut_from_prefix(buf).map_err(|_| WireError::Truncated(Layer::Ethernet))?;
        *h = EthernetHeader { dst: self.dst, src: self.src, ethertype: U16::new(self.ethertype) };
        Ok(())
    }

    /// Reads the header of a checked frame.
    pub fn parse<B: SplitByteSlice>(frame: &EthernetFrame<B>) -> Self {
        Self { src: frame.src(), dst: frame.dst(), ethertype: frame.ethertype() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ARP-less QinQ frame head: dst, src, 88a8 (S-tag vid 100), 8100 (C-tag vid 200, pcp 5), IPv4.
    const QINQ: [u8; 22] = [
        0x00, 0x1b, 0x21, 0x3a, 0x4c, 0x5d, 0x02, 0x42, 0xac, 0x11, 0x00, 0x02, 0x88, 0xa8, 0x00, 0x64, 0x81, 0x00,
        0xa0, 0xc8, 0x08, 0x00,
    ];

    #[test]
    fn qinq_tags_are_walked() {
        let info = parse_l2(&QINQ).unwrap();
        assert_eq!(info.vlan_count, 2);
        assert_eq!(info.vlans, [100, 200]);
        assert_eq!(info.ethertype, EtherType::IPV4);
        assert_eq!(info.l3_offset, 22);
        let (tag, _) = VlanTag::ref_from_prefix(&QINQ[18..]).unwrap();
        assert_eq!(tag.pcp(), 5);
    }

    #[test]
    fn truncation_and_tag_bounds() {
        assert_eq!(parse_l2(&QINQ[..13]), Err(WireError::Truncated(Layer::Ethernet)));
        assert_eq!(parse_l2(&QINQ[..17]), Err(WireError::Truncated(Layer::Vlan)));
        let mut three = [0u8; 26];
        three[..12].copy_from_slice(&QINQ[..12]);
        three[12..14].copy_from_slice(&[0x88, 0xa8]);
        three[16..18].copy_from_slice(&[0x81, 0x00]);
        three[20..22].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_l2(&three), Err(WireError::TooManyVlanTags));
    }

    #[test]
    fn view_and_repr_round_trip() {
        let mut buf = [0u8; 20];
        let repr = EthernetRepr {
            src: MacAddr([2, 0, 0, 0, 0, 1]),
            dst: MacAddr([2, 0, 0, 0, 0, 2]),
            ethertype: EtherType::IPV6,
        };
        repr.emit(&mut buf).unwrap();
        assert_eq!(&buf[..14], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
        let frame = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&frame), repr);
        assert_eq!(frame.payload().len(), 6);
        assert!(EthernetFrame::new_checked(&buf[..13]).is_err());
        assert!(repr.emit(&mut [0u8; 13]).is_err());
    }
}
