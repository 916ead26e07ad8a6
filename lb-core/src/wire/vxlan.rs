//! VxLAN (RFC 7348): the MUX → host tunnel. Encapsulation prepends the outer headers into the
//! headroom in front of the inner frame (no copy of the inner frame); decapsulation validates the
//! outer headers and yields the inner frame in place.

use core::net::IpAddr;

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, Unaligned};

use super::ethernet::{parse_l2, EtherType, EthernetRepr, MacAddr, ETHERNET_HEADER_LEN};
use super::ipv4::{self, Ipv4Repr, IPV4_HEADER_LEN};
use super::ipv6::{self, Ipv6Repr, IPV6_HEADER_LEN};
use super::udp::{UdpHeader, UdpRepr, UDP_HEADER_LEN};
use super::{checksum, header_prefix, ip_proto, Layer, WireError};

/// IANA-assigned VxLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;

/// The 8-byte VxLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct VxlanHeader {
    /// Flags: bit 3 (0x08) "I" says the VNI is valid; the others are reserved.
    pub flags: u8,
    /// Reserved.
    pub reserved1: [u8; 3],
    /// VxLAN network identifier (24 bits).
    pub vni: [u8; 3],
    /// Reserved.
    pub reserved2: u8,
}

/// Length of the header.
pub const VXLAN_HEADER_LEN: usize = core::mem::size_of::<VxlanHeader>();
/// The "VNI valid" flag.
pub const FLAG_VNI_VALID: u8 = 0x08;
/// The "second chance" flag, in the header's second reserved byte (RFC 7348 has receivers ignore
/// it): a MUX that found no flow for a TCP packet that is not a SYN, while the balancer's previous
/// Maglev table chose another backend, steers it by the current table and names the previous
/// table's backend (the alternate) in the first reserved field, where the backend tag goes. A host
/// that has no flow for the packet forwards it to the alternate's host (docs/design.md, "When a MUX
/// dies after a backend was added").
pub const SECOND_CHANCE: u8 = 0x01;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// Outer headers over an IPv4 underlay: Ethernet + IPv4 + UDP + VxLAN = 50 bytes.
pub const OUTER_LEN_V4: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;
/// Outer headers over an IPv6 underlay: 70 bytes.
pub const OUTER_LEN_V6: usize = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;

impl VxlanHeader {
    /// The 24-bit VNI.
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        u32::from_be_bytes([0, self.vni[0], self.vni[1], self.vni[2]])
    }
    /// The 24 bits of the first reserved field, where a MUX names the backend it chose (0 = none;
    /// see [`backend_tag`]). RFC 7348, section 5, has receivers ignore the reserved fields, so a
    /// VTEP that knows nothing of the tag still decapsulates the packet.
    #[inline(always)]
    pub fn backend_tag(&self) -> u32 {
        u32::from_be_bytes([0, self.reserved1[0], self.reserved1[1], self.reserved1[2]])
    }
    /// Whether the MUX flagged the packet for a second chance ([`SECOND_CHANCE`]); then
    /// [`VxlanHeader::backend_tag`] names the alternate backend.
    #[inline(always)]
    pub fn second_chance(&self) -> bool {
        self.reserved2 & SECOND_CHANCE != 0
    }
}

/// Marks the VxLAN frame at `buf[start..]`, which a tunnel of `outer_len` bytes of outer headers
/// just encapsulated, for a second chance: the flag set and `alternate` (a backend tag) in the
/// first reserved field. In place; `false` if the buffer is too short.
#[inline]
pub fn mark_second_chance(buf: &mut [u8], start: usize, outer_len: usize, alternate: u32) -> bool {
    let Some(vx) =
        (start + outer_len).checked_sub(VXLAN_HEADER_LEN).and_then(|at| buf.get_mut(at..at + VXLAN_HEADER_LEN))
    else {
        return false;
    };
    vx[1..4].copy_from_slice(&alternate.to_be_bytes()[1..]);
    vx[7] |= SECOND_CHANCE;
    true
}

/// Stamps backend tag `tag` into the VxLAN frame at `buf[start..]` (outer headers of `outer_len`
/// bytes), with no second-chance flag: what a host that forwards a second chance sends on.
#[inline]
pub fn stamp_backend_tag(buf: &mut [u8], start: usize, outer_len: usize, tag: u32) -> bool {
    let Some(vx) =
        (start + outer_len).checked_sub(VXLAN_HEADER_LEN).and_then(|at| buf.get_mut(at..at + VXLAN_HEADER_LEN))
    else {
        return false;
    };
    vx[1..4].copy_from_slice(&tag.to_be_bytes()[1..]);
    vx[7] &= !SECOND_CHANCE;
    true
}

/// A 64-bit hash of an address that every node computes alike, with no coordination: the MUX's
/// Maglev table names a backend by it, and [`backend_tag`] takes 24 of its bits.
pub(crate) fn address_hash(a: IpAddr) -> u64 {
    let o = match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    };
    splitmix64(o as u64 ^ splitmix64((o >> 64) as u64))
}

/// The SplitMix64 finalizer (the same mixer as `tables::maglev::mix64`; the wire layer imports
/// nothing from the layers above it).
#[inline(always)]
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 24-bit tag a MUX stamps in the VxLAN header's first reserved field
/// ([`VxlanEncap::with_backend_tag`]) to name a backend to its host, never 0 (0 means no tag).
/// Derived from the backend's address, so MUX and host agree without coordination and a tag
/// survives reconfiguration as long as the backend keeps its address. Two backends of one pool on
/// one host must not share a tag (configuration validation refuses that).
pub fn backend_tag(a: IpAddr) -> u32 {
    ((address_hash(a) >> 40) as u32 & MAX_VNI).max(1)
}

/// A checked view of a VxLAN packet (the UDP payload): header + inner Ethernet frame.
pub struct VxlanPacket<B> {
    header: Ref<B, VxlanHeader>,
    inner: B,
}

impl<B: SplitByteSlice> VxlanPacket<B> {
    /// Checks the header length and the "VNI valid" flag.
    pub fn new_checked(buffer: B) -> Result<Self, WireError> {
        let (header, inner) =
            Ref::<B, VxlanHeader>::from_prefix(buffer).map_err(|_| WireError::Truncated(Layer::Vxlan))?;
        if header.flags & FLAG_VNI_VALID == 0 {
            return Err(WireError::NotVxlan);
        }
        Ok(Self { header, inner })
    }
    /// The header.
    pub fn header(&self) -> &VxlanHeader {
        &self.header
    }
    /// The VNI.
    pub fn vni(&self) -> u32 {
        self.header.vni()
    }
    /// The inner Ethernet frame.
    pub fn inner(&self) -> &[u8] {
        &self.inner
    }
}

/// A precomputed tunnel from this node to one underlay peer: the outer headers are built once and
/// copied per packet, with only lengths, the UDP source port and the IPv4 checksum patched.
#[derive(Debug, Clone)]
pub struct VxlanEncap {
    template: [u8; OUTER_LEN_V6],
    outer_len: usize,
    /// Ones'-complement sum of the template's IPv4 header with total length and checksum zero.
    ipv4_partial: u32,
    /// IPv6 pseudo-header sum without the length (for the optional UDP checksum).
    ipv6_pseudo: u32,
    ipv6_udp_checksum: bool,
    mtu: u16,
}

/// Offsets inside the template (outer Ethernet at 0).
const IP_OFF: usize = ETHERNET_HEADER_LEN;

impl VxlanEncap {
    /// Builds the template. `src`/`dst` must be the same IP version. `ttl` is the outer TTL/hop limit,
    /// `mtu` the underlay IP MTU the outer packet must fit.
    pub fn new(
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src: IpAddr,
        dst: IpAddr,
        vni: u32,
        ttl: u8,
        mtu: u16,
    ) -> Result<Self, WireError> {
        if vni > MAX_VNI {
            return Err(WireError::FieldOverflow(Layer::Vxlan));
        }
        let mut t = [0u8; OUTER_LEN_V6];
        let (ethertype, ip_len) = match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => (EtherType::IPV4, IPV4_HEADER_LEN),
            (IpAddr::V6(_), IpAddr::V6(_)) => (EtherType::IPV6, IPV6_HEADER_LEN),
            _ => return Err(WireError::BadVersion(0)),
        };
        EthernetRepr { src: src_mac, dst: dst_mac, ethertype }.emit(&mut t)?;
        let mut ipv4_partial = 0;
        let mut ipv6_pseudo = 0;
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                // DF set and ident 0: an atomic datagram (RFC 6864), never fragmented on the underlay.
                Ipv4Repr {
                    src: s.octets(),
                    dst: d.octets(),
                    protocol: ip_proto::UDP,
                    payload_len: 0,
                    ttl,
                    dscp_ecn: 0,
                    ident: 0,
                    dont_fragment: true,
                }
                .emit(&mut t[IP_OFF..])?;
                t[IP_OFF + 2..IP_OFF + 4].fill(0);
                t[IP_OFF + 10..IP_OFF + 12].fill(0);
                ipv4_partial = checksum::sum(&t[IP_OFF..IP_OFF + IPV4_HEADER_LEN]);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                Ipv6Repr {
                    src: s.octets(),
                    dst: d.octets(),
                    next_header: ip_proto::UDP,
                    payload_len: 0,
                    hop_limit: ttl,
                    traffic_class: 0,
                    flow_label: 0,
                }
                .emit(&mut t[IP_OFF..])?;
                ipv6_pseudo = checksum::pseudo_header_v6(&s.octets(), &d.octets(), ip_proto::UDP, 0);
            }
            _ => return Err(WireError::BadVersion(0)),
        }
        let udp_off = IP_OFF + ip_len;
        UdpRepr { src_port: 0, dst_port: VXLAN_PORT, payload_len: 0 }.emit(&mut t[udp_off..])?;
        let vx = udp_off + UDP_HEADER_LEN;
        t[vx] = FLAG_VNI_VALID;
        t[vx + 4..vx + 7].copy_from_slice(&vni.to_be_bytes()[1..]);
        Ok(Self {
            template: t,
            outer_len: udp_off + UDP_HEADER_LEN + VXLAN_HEADER_LEN,
            ipv4_partial,
            ipv6_pseudo,
            ipv6_udp_checksum: true,
            mtu,
        })
    }

    /// Over IPv6, send a zero UDP checksum (RFC 6935/6936 tunnel exception) instead of computing one
    /// over the whole inner frame. Off by default. IPv4 always sends zero, as RFC 7348 allows.
    pub fn with_zero_ipv6_udp_checksum(mut self, zero: bool) -> Self {
        self.ipv6_udp_checksum = !zero;
        self
    }

    /// Stamps a 24-bit backend tag into the header's first reserved field (see
    /// [`VxlanHeader::backend_tag`]); the host that decapsulates knows which of its backends the
    /// MUX chose even when several of one pool run on it.
    pub fn with_backend_tag(mut self, tag: u32) -> Result<Self, WireError> {
        if tag > MAX_VNI {
            return Err(WireError::FieldOverflow(Layer::Vxlan));
        }
        let vx = self.outer_len - VXLAN_HEADER_LEN;
        self.template[vx + 1..vx + 4].copy_from_slice(&tag.to_be_bytes()[1..]);
        Ok(self)
    }

    /// The outer destination MAC: the next hop towards the peer.
    #[inline(always)]
    pub fn dst_mac(&self) -> MacAddr {
        let t = &self.template;
        MacAddr([t[0], t[1], t[2], t[3], t[4], t[5]])
    }

    /// Changes the next hop: frames this tunnel encapsulates from now on leave for `mac` (the
    /// template is edited in place; nothing else changes).
    pub fn set_dst_mac(&mut self, mac: MacAddr) {
        self.template[..6].copy_from_slice(&mac.0);
    }

    /// Whether the outer destination MAC is set (not 00:00:00:00:00:00, a next hop not known yet).
    #[inline(always)]
    pub fn has_next_hop(&self) -> bool {
        self.template[..6] != [0; 6]
    }

    /// The largest inner frame's IP packet that fits, after an inner Ethernet header with `vlans`
    /// tags: the underlay MTU less the tunnel's overhead (50 bytes over IPv4, 70 over IPv6, counting
    /// the inner Ethernet header) and 4 bytes a tag. What a "fragmentation needed" or "packet too
    /// big" error reports as the MTU of the path through this tunnel.
    pub fn inner_mtu(&self, vlans: usize) -> u16 {
        let overhead = self.outer_len + vlans * super::ethernet::VLAN_TAG_LEN;
        usize::from(self.mtu).saturating_sub(overhead) as u16
    }

    /// Whether an inner frame of `frame_len` bytes fits the underlay MTU once encapsulated.
    #[inline(always)]
    pub fn fits(&self, frame_len: usize) -> bool {
        (self.outer_len - ETHERNET_HEADER_LEN).saturating_add(frame_len) <= usize::from(self.mtu)
    }

    /// Bytes of headroom a frame needs in front of it.
    pub fn outer_len(&self) -> usize {
        self.outer_len
    }

    /// The VNI this tunnel stamps.
    pub fn vni(&self) -> u32 {
        u32::from_be_bytes([
            0,
            self.template[self.outer_len - 4],
            self.template[self.outer_len - 3],
            self.template[self.outer_len - 2],
        ])
    }

    /// Encapsulates the inner frame at `buf[frame_start..frame_start + frame_len]` in place: writes the
    /// outer headers into the `outer_len()` bytes before it and returns where the outer frame starts.
    /// The outer UDP source port comes from `flow_hash` (RFC 7348 5: entropy for ECMP, in the
    /// dynamic range 49152..=65535).
    #[inline(always)]
    pub fn encapsulate(
        &self,
        buf: &mut [u8],
        frame_start: usize,
        frame_len: usize,
        flow_hash: u32,
    ) -> Result<usize, WireError> {
        let n = self.outer_len;
        if frame_start < n {
            return Err(WireError::HeadroomTooSmall { needed: n as u16, available: frame_start as u16 });
        }
        let ip_total = (n - ETHERNET_HEADER_LEN).saturating_add(frame_len);
        if ip_total > usize::from(self.mtu) {
            return Err(WireError::MtuExceeded { length: ip_total.min(0xffff) as u16, mtu: self.mtu });
        }
        let end = frame_start.checked_add(frame_len).ok_or(WireError::LengthMismatch(Layer::Vxlan))?;
        let start = frame_start - n;
        let outer = buf.get_mut(start..end).ok_or(WireError::LengthMismatch(Layer::Vxlan))?;
        let sport = (0xc000 | (flow_hash & 0x3fff) as u16).to_be_bytes();
        if n == OUTER_LEN_V4 {
            // Fixed-size copies compile to a few vector moves; a length known only at run time
            // would be a call to memcpy.
            let (hdr, _) = outer.split_at_mut(OUTER_LEN_V4);
            hdr.copy_from_slice(&self.template[..OUTER_LEN_V4]);
            let total = ip_total as u16;
            let csum = checksum::finish(self.ipv4_partial + u32::from(total));
            hdr[IP_OFF + 2..IP_OFF + 4].copy_from_slice(&total.to_be_bytes());
            hdr[IP_OFF + 10..IP_OFF + 12].copy_from_slice(&csum.to_be_bytes());
            let u = IP_OFF + IPV4_HEADER_LEN;
            hdr[u..u + 2].copy_from_slice(&sport);
            hdr[u + 4..u + 6].copy_from_slice(&((ip_total - IPV4_HEADER_LEN) as u16).to_be_bytes());
        } else {
            let (hdr, _) = outer.split_at_mut(OUTER_LEN_V6);
            hdr.copy_from_slice(&self.template);
            let udp_len = (ip_total - IPV6_HEADER_LEN) as u16;
            hdr[IP_OFF + 4..IP_OFF + 6].copy_from_slice(&udp_len.to_be_bytes());
            let u = IP_OFF + IPV6_HEADER_LEN;
            hdr[u..u + 2].copy_from_slice(&sport);
            hdr[u + 4..u + 6].copy_from_slice(&udp_len.to_be_bytes());
            if self.ipv6_udp_checksum {
                let s = checksum::combine(self.ipv6_pseudo + u32::from(udp_len), checksum::sum(&outer[u..]));
                let c = checksum::finish(s);
                outer[u + 6..u + 8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            }
        }
        Ok(start)
    }
}

/// What decapsulation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanDecap<'a> {
    /// The VNI.
    pub vni: u32,
    /// The backend tag (see [`VxlanHeader::backend_tag`]); with `second_chance`, the alternate's.
    pub backend_tag: u32,
    /// The MUX flagged the packet for a second chance ([`SECOND_CHANCE`]).
    pub second_chance: bool,
    /// Outer source address (the MUX).
    pub outer_src: IpAddr,
    /// Outer destination address (this host).
    pub outer_dst: IpAddr,
    /// Outer UDP source port (the flow entropy the MUX chose).
    pub udp_src_port: u16,
    /// Offset of the inner Ethernet frame in the outer frame (strip this much in place).
    pub inner_offset: usize,
    /// The inner Ethernet frame.
    pub inner: &'a [u8],
}

impl<'a> VxlanDecap<'a> {
    /// Assembles the result from validated outer headers: one place for all three decap paths.
    #[inline(always)]
    fn from_headers(
        udp: &UdpHeader,
        vx: &VxlanHeader,
        src: IpAddr,
        dst: IpAddr,
        offset: usize,
        inner: &'a [u8],
    ) -> Self {
        VxlanDecap {
            vni: vx.vni(),
            backend_tag: vx.backend_tag(),
            second_chance: vx.second_chance(),
            outer_src: src,
            outer_dst: dst,
            udp_src_port: udp.src_port.get(),
            inner_offset: offset,
            inner,
        }
    }
}

/// Validates the outer Ethernet (optionally VLAN-tagged), IPv4 (header checksum, no fragmentation)
/// or IPv6, UDP (length, destination port 4789) and VxLAN (flag) headers and returns the inner frame
/// without copying. The UDP checksum is not verified (NICs do; RFC 7348 lets it be zero over IPv4).
#[inline]
pub fn decapsulate(frame: &[u8]) -> Result<VxlanDecap<'_>, WireError> {
    match decapsulate_v4_untagged(frame).or_else(|| decapsulate_v6_untagged(frame)) {
        Some(d) => Ok(d),
        None => decapsulate_general(frame),
    }
}

/// The outer headers a MUX sends over an IPv6 underlay, in one fixed layout.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct OuterV6 {
    eth: super::ethernet::EthernetHeader,
    ip: super::ipv6::Ipv6Header,
    udp: UdpHeader,
    vxlan: VxlanHeader,
}

/// As [`decapsulate_v4_untagged`] for an IPv6 underlay without extension headers.
#[inline(always)]
fn decapsulate_v6_untagged(frame: &[u8]) -> Option<VxlanDecap<'_>> {
    let (o, inner) = OuterV6::ref_from_prefix(frame).ok()?;
    let payload_len = usize::from(o.ip.payload_len.get());
    let ok = o.eth.ethertype.get() == EtherType::IPV6
        && o.ip.version() == 6
        && o.ip.next_header == ip_proto::UDP
        && o.udp.dst_port.get() == VXLAN_PORT
        && o.vxlan.flags & FLAG_VNI_VALID != 0
        && payload_len <= frame.len() - ETHERNET_HEADER_LEN - IPV6_HEADER_LEN
        && payload_len >= UDP_HEADER_LEN + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN
        && usize::from(o.udp.length.get()) == payload_len;
    if !ok {
        return None;
    }
    let inner = inner.get(..payload_len - UDP_HEADER_LEN - VXLAN_HEADER_LEN)?;
    Some(VxlanDecap::from_headers(&o.udp, &o.vxlan, o.ip.src.into(), o.ip.dst.into(), OUTER_LEN_V6, inner))
}

/// The outer headers a MUX sends over an IPv4 underlay, in one fixed layout.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct OuterV4 {
    eth: super::ethernet::EthernetHeader,
    ip: super::ipv4::Ipv4Header,
    udp: UdpHeader,
    vxlan: VxlanHeader,
}

/// The common case, checked in one straight line over one fixed 50-byte layout: untagged Ethernet,
/// IPv4 without options or fragmentation, UDP to 4789, VxLAN with the I flag. Anything else (or
/// anything wrong) goes to [`decapsulate_general`], which names the error.
#[inline(always)]
fn decapsulate_v4_untagged(frame: &[u8]) -> Option<VxlanDecap<'_>> {
    let (o, inner) = OuterV4::ref_from_prefix(frame).ok()?;
    let ip_len = usize::from(o.ip.total_len.get());
    let ok = o.eth.ethertype.get() == EtherType::IPV4
        && o.ip.version_ihl == 0x45
        && o.ip.protocol == ip_proto::UDP
        && !o.ip.is_fragment()
        && o.udp.dst_port.get() == VXLAN_PORT
        && o.vxlan.flags & FLAG_VNI_VALID != 0
        && ip_len <= frame.len() - ETHERNET_HEADER_LEN
        // The outer IP packet must hold UDP, VxLAN and at least an inner Ethernet header.
        && ip_len >= IPV4_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN
        && usize::from(o.udp.length.get()) == ip_len - IPV4_HEADER_LEN
        && checksum::finish(checksum::sum(o.ip.as_bytes())) == 0;
    if !ok {
        return None;
    }
    let inner = inner.get(..ip_len - (OUTER_LEN_V4 - ETHERNET_HEADER_LEN))?;
    Some(VxlanDecap::from_headers(&o.udp, &o.vxlan, o.ip.src.into(), o.ip.dst.into(), OUTER_LEN_V4, inner))
}

/// Tagged outer frames, IPv6 underlays, IPv4 options, and every malformed frame with its error.
#[inline(never)]
fn decapsulate_general(frame: &[u8]) -> Result<VxlanDecap<'_>, WireError> {
    let l2 = parse_l2(frame)?;
    let l3 = frame.get(l2.l3_offset..).ok_or(WireError::Truncated(Layer::Ethernet))?;
    let (outer_src, outer_dst, udp, udp_off) = match l2.ethertype {
        EtherType::IPV4 => {
            let (h, hlen, total) = ipv4::check_header(l3)?;
            if checksum::finish(checksum::sum(&l3[..hlen])) != 0 {
                return Err(WireError::BadChecksum(Layer::Ipv4));
            }
            if h.protocol != ip_proto::UDP || h.is_fragment() {
                return Err(WireError::NotVxlan);
            }
            (IpAddr::from(h.src), IpAddr::from(h.dst), &l3[hlen..total], hlen)
        }
        EtherType::IPV6 => {
            let (h, len) = ipv6::check_header(l3)?;
            let payload = &l3[IPV6_HEADER_LEN..len];
            let walk = if h.next_header == ip_proto::UDP {
                ipv6::ExtensionWalk { protocol: ip_proto::UDP, offset: 0, fragment: None }
            } else {
                ipv6::walk_extensions(h.next_header, payload)?
            };
            if walk.protocol != ip_proto::UDP || walk.fragment.is_some() {
                return Err(WireError::NotVxlan);
            }
            (IpAddr::from(h.src), IpAddr::from(h.dst), &payload[walk.offset..], IPV6_HEADER_LEN + walk.offset)
        }
        other => return Err(WireError::UnsupportedEtherType(other)),
    };
    let (u, rest) = header_prefix::<UdpHeader>(udp, Layer::Udp)?;
    if u.dst_port != U16::new(VXLAN_PORT) {
        return Err(WireError::NotVxlan);
    }
    if usize::from(u.length.get()) != udp.len() {
        return Err(WireError::LengthMismatch(Layer::Udp));
    }
    let (vx, inner) = header_prefix::<VxlanHeader>(rest, Layer::Vxlan)?;
    if vx.flags & FLAG_VNI_VALID == 0 {
        return Err(WireError::NotVxlan);
    }
    if inner.len() < ETHERNET_HEADER_LEN {
        return Err(WireError::Truncated(Layer::Ethernet));
    }
    let offset = l2.l3_offset + udp_off + UDP_HEADER_LEN + VXLAN_HEADER_LEN;
    Ok(VxlanDecap::from_headers(u, vx, outer_src, outer_dst, offset, inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    const MUX_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x05, 0x0a]);
    const HOST_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x0a, 0x14]);

    /// Inner frame: a client's SYN, 1.2.3.4:50000 -> 20.50.60.10:80, untagged.
    fn inner() -> [u8; 54] {
        let mut f = [0u8; 54];
        f[..14].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        f[14..34].copy_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 1, 2, 3, 4, 20, 50, 60, 10]);
        f[34..54]
            .copy_from_slice(&[0xc3, 0x50, 0, 80, 0, 0, 0x03, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    fn v4_tunnel() -> VxlanEncap {
        VxlanEncap::new(
            MUX_MAC,
            HOST_MAC,
            Ipv4Addr::new(172, 16, 5, 10).into(),
            Ipv4Addr::new(172, 16, 10, 20).into(),
            0x00_1234,
            64,
            1500,
        )
        .unwrap()
    }

    #[test]
    fn encapsulation_bytes_of_a_client_syn() {
        let mut buf = [0u8; 128 + 54];
        buf[128..].copy_from_slice(&inner());
        let start = v4_tunnel().encapsulate(&mut buf, 128, 54, 0xdead_beef).unwrap();
        assert_eq!(start, 78);
        let f = &buf[start..];
        #[rustfmt::skip]
        let expected_outer: [u8; 50] = [
            0x02, 0, 0, 0, 0x0a, 0x14, 0x02, 0, 0, 0, 0x05, 0x0a, 0x08, 0x00,
            0x45, 0x00, 0x00, 0x5a, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 172, 16, 5, 10, 172, 16, 10, 20,
            0xfe, 0xef, 0x12, 0xb5, 0x00, 0x46, 0x00, 0x00,
            0x08, 0, 0, 0, 0x00, 0x12, 0x34, 0x00,
        ];
        let mut expect = expected_outer;
        // IPv4 checksum recomputed independently of the template trick.
        let c = checksum::ipv4_header(&expect[14..34]);
        expect[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(&f[..50], &expect[..]);
        assert_eq!(&f[50..], &inner()[..]);
        let d = decapsulate(f).unwrap();
        assert_eq!(d.vni, 0x1234);
        assert_eq!(d.outer_src, IpAddr::from([172, 16, 5, 10]));
        assert_eq!(d.udp_src_port, 0xfeef);
        assert_eq!(d.inner, &inner()[..]);
        assert_eq!(d.inner_offset, 50);
        assert_eq!(decapsulate_general(f), Ok(d), "fast and general paths agree");
        // Ethernet padding after the outer IP packet is not part of the inner frame.
        let mut padded = [0u8; 104 + 8];
        padded[..104].copy_from_slice(f);
        assert_eq!(decapsulate(&padded).map(|d| d.inner.len()), Ok(54));
        assert_eq!(decapsulate_general(&padded).map(|d| d.inner.len()), Ok(54));
    }

    #[test]
    fn backend_tag_travels_in_the_reserved_bits() {
        let mut buf = [0u8; 128 + 54];
        buf[128..].copy_from_slice(&inner());
        let t = v4_tunnel().with_backend_tag(0xab_cdef).unwrap();
        let start = t.encapsulate(&mut buf, 128, 54, 7).unwrap();
        assert_eq!(&buf[start + 42..start + 50], &[0x08, 0xab, 0xcd, 0xef, 0x00, 0x12, 0x34, 0x00]);
        let d = decapsulate(&buf[start..]).unwrap();
        assert_eq!((d.vni, d.backend_tag), (0x1234, 0xab_cdef));
        assert_eq!(decapsulate_general(&buf[start..]).map(|d| d.backend_tag), Ok(0xab_cdef));
        assert!(v4_tunnel().with_backend_tag(1 << 24).is_err());
        // MUXes and hosts of different builds must derive the same tags: these values are fixed.
        let tags = ["10.0.1.4", "10.0.1.5", "0.0.0.0", "fd00::1", "2001:db8::42"]
            .map(|a| backend_tag(a.parse::<IpAddr>().unwrap()));
        assert_eq!(tags, [0x85_9d11, 0x4a_523b, 1, 0xfa_27f3, 0x9a_590a]);
    }

    #[test]
    fn ipv6_underlay_with_checksum() {
        let t = VxlanEncap::new(
            MUX_MAC,
            HOST_MAC,
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
            7,
            64,
            1500,
        )
        .unwrap();
        let mut buf = [0u8; 70 + 54];
        buf[70..].copy_from_slice(&inner());
        let start = t.encapsulate(&mut buf, 70, 54, 1).unwrap();
        assert_eq!(start, 0);
        let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets();
        let dst = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets();
        let pseudo = checksum::pseudo_header_v6(&src, &dst, 17, 8 + 8 + 54);
        assert_eq!(checksum::finish(checksum::combine(pseudo, checksum::sum(&buf[54..]))), 0, "UDP checksum valid");
        let d = decapsulate(&buf).unwrap();
        assert_eq!((d.vni, d.inner_offset, d.inner.len()), (7, 70, 54));
        assert_eq!(decapsulate_general(&buf), Ok(d), "fast and general paths agree");
    }

    #[test]
    fn headroom_mtu_and_vni_errors() {
        let t = v4_tunnel();
        let mut buf = [0u8; 49 + 54];
        assert_eq!(t.encapsulate(&mut buf, 49, 54, 0), Err(WireError::HeadroomTooSmall { needed: 50, available: 49 }));
        let mut big = [0u8; 50 + 1465];
        assert_eq!(t.encapsulate(&mut big, 50, 1465, 0), Err(WireError::MtuExceeded { length: 1501, mtu: 1500 }));
        assert_eq!(t.encapsulate(&mut big, 50, 1464, 0), Ok(0));
        assert!(t.encapsulate(&mut big, 50, 1466, 0).is_err(), "frame past the buffer");
        assert_eq!(
            t.encapsulate(&mut big, 50, usize::MAX, 0),
            Err(WireError::MtuExceeded { length: 0xffff, mtu: 1500 }),
            "no overflow on absurd lengths"
        );
        let v = VxlanEncap::new(
            MUX_MAC,
            HOST_MAC,
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::LOCALHOST.into(),
            1 << 24,
            64,
            1500,
        );
        assert_eq!(v.err(), Some(WireError::FieldOverflow(Layer::Vxlan)));
        // 1500 less 50: the largest inner IP packet, 4 bytes less a tag; what fits is what encapsulates.
        assert_eq!((t.inner_mtu(0), t.inner_mtu(1), t.inner_mtu(2)), (1450, 1446, 1442));
        assert!(t.fits(1464) && !t.fits(1465));
    }

    #[test]
    fn next_hop_is_rewritten_in_the_template() {
        let mut t = v4_tunnel();
        assert_eq!(t.dst_mac(), HOST_MAC);
        assert!(t.has_next_hop());
        let hop = MacAddr([2, 0, 0, 0, 0, 0x77]);
        t.set_dst_mac(hop);
        let mut buf = [0u8; 50 + 54];
        buf[50..].copy_from_slice(&inner());
        let start = t.encapsulate(&mut buf, 50, 54, 9).unwrap();
        assert_eq!(&buf[start..start + 6], &hop.0);
        assert_eq!(&buf[start + 6..start + 12], &MUX_MAC.0, "the source stays");
        t.set_dst_mac(MacAddr::default());
        assert!(!t.has_next_hop());
    }

    #[test]
    fn decap_rejects_bad_outer_headers() {
        let mut buf = [0u8; 50 + 54];
        buf[50..].copy_from_slice(&inner());
        v4_tunnel().encapsulate(&mut buf, 50, 54, 9).unwrap();
        let mut bad = buf;
        bad[24] ^= 1;
        assert_eq!(decapsulate(&bad), Err(WireError::BadChecksum(Layer::Ipv4)));
        let mut bad = buf;
        bad[36..38].copy_from_slice(&4790u16.to_be_bytes());
        assert_eq!(decapsulate(&bad), Err(WireError::NotVxlan));
        let mut bad = buf;
        bad[42] = 0;
        assert_eq!(decapsulate(&bad), Err(WireError::NotVxlan));
        assert_eq!(decapsulate(&buf[..90]), Err(WireError::LengthMismatch(Layer::Ipv4)));
        let p = VxlanPacket::new_checked(&buf[42..]).unwrap();
        assert_eq!((p.vni(), p.inner().len()), (0x1234, 54));
    }
}
