//! The hot-path flow-key extractor: one pass over a frame that yields everything the data path needs
//! to classify it (addresses, protocol, ports, VLAN ids, offsets, TCP flags, fragment state).

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::ethernet::{parse_l2, EtherType, EthernetHeader, VlanTag, ETHERNET_HEADER_LEN, MAX_VLAN_TAGS};
use super::icmp::{self, IcmpHeader, IcmpVersion};
use super::ipv4::{self, Ipv4Header};
use super::ipv6::{self, FragmentInfo};
use super::tcp::{TcpHeader, TCP_HEADER_LEN};
use super::udp::{UdpHeader, UDP_HEADER_LEN};
use super::{header_prefix, ip_proto, Layer, WireError};

/// Which fields of a [`FlowKey`] feed its hash (Azure Load Balancer's distribution modes: hash-based
/// on the 5-tuple, and source IP affinity on the 3-tuple or the 2-tuple).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashFields {
    /// Addresses, protocol and ports: every connection is balanced on its own.
    #[default]
    FiveTuple,
    /// Addresses and protocol: a client's connections of one protocol stick to one backend; also
    /// what every fragment of a datagram can be steered by, since later fragments carry no ports.
    ThreeTuple,
    /// Addresses only: a client sticks to one backend whatever the protocol.
    TwoTuple,
}

/// IP version of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum IpVersion {
    /// IPv4: addresses use the first 4 bytes of the 16-byte fields, the rest is zero.
    #[default]
    V4 = 4,
    /// IPv6.
    V6 = 6,
}

/// Where a packet stands in fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Fragment {
    /// A whole datagram.
    #[default]
    None,
    /// The first fragment (offset 0, more fragments): it carries the L4 header and its ports.
    First,
    /// A later fragment: no L4 header, so no ports; steer it by addresses + protocol (+ ident).
    Later,
}

/// The classification of one frame.
///
/// Ports: TCP/UDP source and destination ports. For ICMP echo both hold the echo identifier, so the
/// reply's reversed key equals the request's key (as Linux conntrack does). For non-first fragments
/// and other protocols they are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Source address (IPv4 in the first 4 bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first 4 bytes).
    pub dst_addr: [u8; 16],
    /// Source port (see the type's docs).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol of the upper layer (after IPv6 extension headers).
    pub protocol: u8,
    /// IPv4 or IPv6.
    pub ip_version: IpVersion,
    /// TCP flags (0 unless TCP).
    pub tcp_flags: u8,
    /// Fragment state.
    pub fragment: Fragment,
    /// VLAN ids, outermost first; 0 where absent.
    pub vlans: [u16; MAX_VLAN_TAGS],
    /// Number of VLAN tags.
    pub vlan_count: u8,
    /// ICMP type (0 unless ICMP/ICMPv6; check `protocol`).
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// Offset of the IP header in the frame.
    pub l3_offset: u16,
    /// Offset of the L4 header (or, for a later fragment, of the fragment's data).
    pub l4_offset: u16,
    /// Length of the L4 part, up to the IP length (Ethernet padding excluded).
    pub l4_len: u16,
    /// Fragment identification (0 unless a fragment).
    pub frag_ident: u32,
}

impl Fragment {
    /// The state of a fragment at byte `offset` of its datagram.
    #[inline(always)]
    fn at(offset: usize) -> Self {
        if offset == 0 {
            Fragment::First
        } else {
            Fragment::Later
        }
    }
}

impl FlowKey {
    /// Source IPv4 address (meaningful when `ip_version` is V4).
    #[inline(always)]
    pub fn src_v4(&self) -> [u8; 4] {
        [self.src_addr[0], self.src_addr[1], self.src_addr[2], self.src_addr[3]]
    }
    /// Destination IPv4 address (meaningful when `ip_version` is V4).
    #[inline(always)]
    pub fn dst_v4(&self) -> [u8; 4] {
        [self.dst_addr[0], self.dst_addr[1], self.dst_addr[2], self.dst_addr[3]]
    }
    /// Source address as a `core::net::IpAddr`.
    pub fn src_ip(&self) -> core::net::IpAddr {
        ip_of(self.ip_version, &self.src_addr)
    }
    /// Destination address as a `core::net::IpAddr`.
    pub fn dst_ip(&self) -> core::net::IpAddr {
        ip_of(self.ip_version, &self.dst_addr)
    }
    /// Whether this is an ICMP error message about another flow (ICMP in IPv4 or ICMPv6 in IPv6, not
    /// a later fragment, whose bytes are not a header), whose quoted flow is what matters.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.fragment != Fragment::Later
            && match (self.protocol, self.ip_version) {
                (ip_proto::ICMP, IpVersion::V4) => icmp::is_error(IcmpVersion::V4, self.icmp_type),
                (ip_proto::ICMPV6, IpVersion::V6) => icmp::is_error(IcmpVersion::V6, self.icmp_type),
                _ => false,
            }
    }
    /// The key of the opposite direction (addresses and ports swapped).
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ..*self
        }
    }

    /// A 32-bit hash of the 5-tuple (addresses, protocol, ports), seeded so that independent
    /// deployments do not collide the same way. Computed once per packet and reused (Maglev lookup,
    /// flow table, VxLAN entropy). Folded 64x64→128 multiplies, as in wyhash: a few cycles, and every
    /// input bit reaches every output bit.
    #[inline(always)]
    pub fn hash(&self, seed: u64) -> u32 {
        self.hash_fields(HashFields::FiveTuple, seed)
    }

    /// A 32-bit hash of the chosen fields: the 5-tuple (`loadDistribution: Default`), source and
    /// destination address + protocol (`SourceIPProtocol`), or the two addresses (`SourceIP`).
    #[inline(always)]
    pub fn hash_fields(&self, fields: HashFields, seed: u64) -> u32 {
        let w = |b: &[u8; 16], i: usize| {
            u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]])
        };
        let ports = match fields {
            HashFields::FiveTuple => {
                (u64::from(self.src_port) << 32) | (u64::from(self.dst_port) << 16) | u64::from(self.protocol)
            }
            HashFields::ThreeTuple => u64::from(self.protocol),
            HashFields::TwoTuple => 0,
        };
        if self.ip_version == IpVersion::V4 {
            // Both IPv4 addresses fit one word (the key's other 24 address bytes are zero): one
            // multiply mixes them with the ports and a second spreads the result, as wyhash does
            // with 16 bytes, where the general form below takes four multiplies (this one is on
            // every IPv4 packet's path). IPv4 and IPv6 keys never compare equal, so the two forms
            // never need to agree.
            let v4 = |b: &[u8; 16]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let addrs = v4(&self.src_addr) | v4(&self.dst_addr) << 32;
            let a = fold_mul(addrs ^ seed ^ 0xa076_1d64_78bd_642f, ports ^ 0xe703_7ed1_a0b4_28db);
            let h = fold_mul(a ^ 0x8ebc_6af0_9c88_c6e3, seed ^ 0x5899_65cc_7537_4cc3);
            return (h ^ (h >> 32)) as u32;
        }
        let a =
            fold_mul(w(&self.src_addr, 0) ^ seed ^ 0xa076_1d64_78bd_642f, w(&self.src_addr, 8) ^ 0xe703_7ed1_a0b4_28db);
        let b = fold_mul(w(&self.dst_addr, 0) ^ 0x8ebc_6af0_9c88_c6e3, w(&self.dst_addr, 8) ^ 0x5899_65cc_7537_4cc3);
        // The ports get a multiply of their own (in parallel with the two addresses'): xored
        // straight into the last one, a port's step would move the output by a near-constant
        // step, and flows of one client on consecutive ports would line up on the same flow-table
        // signatures (see the test `hash_spreads_sequential_ports`).
        let p = fold_mul(ports ^ seed ^ 0x1d8e_4e27_c47d_124f, 0x9e37_79b9_7f4a_7c15);
        let h = fold_mul(a ^ p, b ^ seed);
        (h ^ (h >> 32)) as u32
    }
}

/// An IPv4 address in the 16-byte key field, built in a register: writing 4 bytes into a zeroed
/// array and reading it back as 16 would stall on store-to-load forwarding.
#[inline(always)]
fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    u128::from(u32::from_le_bytes(a)).to_le_bytes()
}

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

pub(crate) fn ip_of(v: IpVersion, a: &[u8; 16]) -> core::net::IpAddr {
    match v {
        IpVersion::V4 => core::net::IpAddr::from([a[0], a[1], a[2], a[3]]),
        IpVersion::V6 => core::net::IpAddr::from(*a),
    }
}

/// Extracts the flow key of an Ethernet frame (optionally 802.1Q / QinQ tagged) carrying IPv4 or
/// IPv6. Reads each header once, never past the buffer or the IP length, and returns a typed error
/// for anything malformed. Checksums are not verified here (NICs do; the data path patches them
/// incrementally).
///
/// Always inlined, and the two paths joined on the key rather than on the `Result`: then the fast
/// path's fields reach the caller in registers. Returned through memory, the fields are stored
/// one by one and the caller's wider loads (the compiler merges adjacent fields) wait on them,
/// which costs more than the parse itself.
#[inline(always)]
pub fn parse_flow_key(frame: &[u8]) -> Result<FlowKey, WireError> {
    let mut key = FlowKey::default();
    let key = match fast_path(frame, &mut key) {
        Some(()) => key,
        None => parse_general_value(frame)?,
    };
    Ok(key)
}

/// [`parse_general`] returning the key (out of line, so that the general path adds no code to
/// [`parse_flow_key`]'s fast path where it is inlined).
#[inline(never)]
fn parse_general_value(frame: &[u8]) -> Result<FlowKey, WireError> {
    let mut key = FlowKey::default();
    general(frame, &mut key)?;
    Ok(key)
}

/// [`parse_flow_key`] writing the key straight into `key` (a slot of a burst's key array, read
/// there by the next pass). A key returned by value and then moved into its slot is assembled on
/// the stack first, and that copy's wide loads stall on the narrow stores that just built it. On
/// error `key` holds no meaningful value (it may be partly written).
#[inline(always)]
pub fn parse_flow_key_into(frame: &[u8], key: &mut FlowKey) -> Result<(), WireError> {
    // The general path writes its fields in place too: a key it returned by value would be
    // copied twice more on the way here.
    match fast_path(frame, key) {
        Some(()) => Ok(()),
        None => parse_general(frame, key),
    }
}

/// The 8 bytes of a UDP header, or of an ICMP header up to the echo identifier.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct PortsPrefix {
    /// ICMP: type and code.
    src_port: U16,
    dst_port: U16,
    /// UDP: length; ICMP echo: identifier.
    udp_length: U16,
    _rest: [u8; 2],
}

/// The common case in one straight line: a whole (unfragmented) IPv4 packet (options or not) or an
/// IPv6 packet (Hop-by-Hop, Routing and Destination Options headers or not), under up to two VLAN
/// tags, carrying TCP, UDP or ICMP.
/// Anything else, including anything malformed, returns `None` and goes to [`parse_general`], which
/// reports the exact error; so this function only has to be right about well-formed packets (on
/// `None`, `key` is partly written and the general path writes all of it again).
///
/// Written for the instruction count, which is what bounds it (the branches are predictable):
/// - each field goes to `key` as soon as it is known (held to the end, the fields outnumber the
///   registers and are spilled to the stack and loaded back before being stored);
/// - untagged IPv4 and IPv6 are tested first, on the raw EtherType (no byte swap), and their
///   headers are read at offsets known at compile time (the IP paths are inlined once for an
///   untagged frame and once behind tags);
/// - fragments, rare, take the general path, so the fast path never carries their state.
#[inline(always)]
fn fast_path(frame: &[u8], key: &mut FlowKey) -> Option<()> {
    // Shorter than Ethernet and an IPv4 header: no frame the fast path takes (the general path
    // names what is wrong). Checked first, it stands for the Ethernet and IPv4 headers' own checks.
    if frame.len() < ETHERNET_HEADER_LEN + ipv4::IPV4_HEADER_LEN {
        return None;
    }
    let (eth, l3) = EthernetHeader::ref_from_prefix(frame).ok()?;
    if eth.ethertype == U16::new(EtherType::IPV4) {
        key.vlans = [0, 0];
        key.vlan_count = 0;
        return fast_ipv4(l3, ETHERNET_HEADER_LEN, key);
    }
    if eth.ethertype == U16::new(EtherType::IPV6) {
        key.vlans = [0, 0];
        key.vlan_count = 0;
        return fast_ipv6(l3, ETHERNET_HEADER_LEN, key);
    }
    if !EtherType::is_vlan(eth.ethertype.get()) {
        return None;
    }
    let (ethertype, l3) = fast_tags(l3, key)?;
    let l3_offset = frame.len() - l3.len();
    match ethertype {
        EtherType::IPV4 => fast_ipv4(l3, l3_offset, key),
        EtherType::IPV6 => fast_ipv6(l3, l3_offset, key),
        _ => None,
    }
}

/// The VLAN tags of [`fast_path`] (one or two; a third goes to the general path, which names the
/// error): the EtherType after them and what follows. The same walk as [`parse_l2`], unrolled for
/// two tags: `parse_l2`'s loop, called here, slows the MUX's whole burst loop.
#[inline(always)]
fn fast_tags<'a>(after_eth: &'a [u8], key: &mut FlowKey) -> Option<(u16, &'a [u8])> {
    let (outer, rest) = VlanTag::ref_from_prefix(after_eth).ok()?;
    key.vlans = [outer.vid(), 0];
    key.vlan_count = 1;
    let ethertype = outer.ethertype.get();
    if !EtherType::is_vlan(ethertype) {
        return Some((ethertype, rest));
    }
    let (inner, rest) = VlanTag::ref_from_prefix(rest).ok()?;
    key.vlans[1] = inner.vid();
    key.vlan_count = 2;
    let ethertype = inner.ethertype.get();
    (!EtherType::is_vlan(ethertype)).then_some((ethertype, rest))
}

/// [`fast_path`] from an IPv4 header at `l3` (frame offset `l3_offset`).
#[inline(always)]
fn fast_ipv4(l3: &[u8], l3_offset: usize, key: &mut FlowKey) -> Option<()> {
    let (ip, after) = Ipv4Header::ref_from_prefix(l3).ok()?;
    let total = usize::from(ip.total_len.get());
    if ip.is_fragment() {
        return None;
    }
    key.src_addr = v4_in_16(ip.src);
    key.dst_addr = v4_in_16(ip.dst);
    key.ip_version = IpVersion::V4;
    key.protocol = ip.protocol;
    key.l3_offset = l3_offset as u16;
    // Version 4 with a 20-byte header, and a total length that covers the header and fits the
    // frame (one below 20 wraps around and fails the same compare).
    if ip.version_ihl == 0x45 && total.wrapping_sub(ipv4::IPV4_HEADER_LEN) <= after.len() {
        return fast_transport(&after[..total - ipv4::IPV4_HEADER_LEN], l3_offset + ipv4::IPV4_HEADER_LEN, key);
    }
    // Options (IHL 6 to 15): the same behind a header of variable length, kept apart so that the
    // common case above reads its L4 header at offsets known at compile time.
    let hlen = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || hlen <= ipv4::IPV4_HEADER_LEN || total < hlen || total > l3.len() {
        return None;
    }
    fast_transport(&l3[hlen..total], l3_offset + hlen, key)
}

/// [`fast_path`] from an IPv6 header at `l3` (frame offset `l3_offset`).
#[inline(always)]
fn fast_ipv6(l3: &[u8], l3_offset: usize, key: &mut FlowKey) -> Option<()> {
    let (ip, after) = ipv6::Ipv6Header::ref_from_prefix(l3).ok()?;
    let payload = usize::from(ip.payload_len.get());
    if ip.version() != 6 || payload > after.len() {
        return None;
    }
    key.src_addr = ip.src;
    key.dst_addr = ip.dst;
    key.ip_version = IpVersion::V6;
    key.l3_offset = l3_offset as u16;
    let payload = &after[..payload];
    let next = ip.next_header;
    if matches!(next, ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTING | ip_proto::IPV6_DEST_OPTS) {
        // Apart, so that the common case reads its L4 header at offsets known at compile time.
        let (protocol, ext) = fast_extensions(next, payload)?;
        key.protocol = protocol;
        return fast_transport(payload.get(ext..)?, l3_offset + ipv6::IPV6_HEADER_LEN + ext, key);
    }
    key.protocol = next;
    fast_transport(payload, l3_offset + ipv6::IPV6_HEADER_LEN, key)
}

/// The Hop-by-Hop (first only), Routing and Destination Options headers at the front of an IPv6
/// payload, as [`ipv6::walk_extensions`] walks them: the upper-layer protocol and its offset.
/// A Fragment or AH header comes back as the protocol (which [`fast_transport`] declines), and
/// anything the walk would refuse (truncated, too many, Hop-by-Hop later) is `None`: the general
/// path names the error. Out of line: rare, and kept out of the common path's code.
#[inline(never)]
fn fast_extensions(mut next: u8, payload: &[u8]) -> Option<(u8, usize)> {
    let mut offset = 0usize;
    for n in 0..=ipv6::MAX_EXTENSION_HEADERS {
        match next {
            ip_proto::HOP_BY_HOP if n != 0 => return None,
            ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTING | ip_proto::IPV6_DEST_OPTS => {}
            _ => return Some((next, offset)),
        }
        let h = payload.get(offset..offset + 2)?;
        next = h[0];
        offset += (usize::from(h[1]) + 1) * 8;
        if offset > payload.len() {
            return None;
        }
    }
    None
}

/// [`fast_path`] from the L4 header of a whole datagram: `l4` up to the IP length, at frame offset
/// `l4_offset`.
#[inline(always)]
fn fast_transport(l4: &[u8], l4_offset: usize, key: &mut FlowKey) -> Option<()> {
    key.fragment = Fragment::None;
    key.frag_ident = 0;
    key.l4_offset = l4_offset as u16;
    key.l4_len = l4.len() as u16;
    if key.protocol == ip_proto::TCP {
        let (t, _) = TcpHeader::ref_from_prefix(l4).ok()?;
        // At least the fixed header, and no longer than the segment, in one compare: the segment
        // holds the fixed header, so below it the difference wraps around past any length.
        let hlen = usize::from(t.data_offset >> 4) * 4;
        if hlen.wrapping_sub(TCP_HEADER_LEN) > l4.len() - TCP_HEADER_LEN {
            return None;
        }
        key.tcp_flags = t.flags;
        key.icmp_type = 0;
        key.icmp_code = 0;
        key.src_port = t.src_port.get();
        key.dst_port = t.dst_port.get();
        return Some(());
    }
    key.tcp_flags = 0;
    // Eight bytes cover a UDP header, and an ICMP header with the echo identifier.
    let (p, _) = PortsPrefix::ref_from_prefix(l4).ok()?;
    if key.protocol == ip_proto::UDP {
        let len = usize::from(p.udp_length.get());
        if len < UDP_HEADER_LEN || len > l4.len() {
            return None;
        }
        key.icmp_type = 0;
        key.icmp_code = 0;
        key.src_port = p.src_port.get();
        key.dst_port = p.dst_port.get();
        return Some(());
    }
    let version = match (key.protocol, key.ip_version) {
        (ip_proto::ICMP, IpVersion::V4) => IcmpVersion::V4,
        (ip_proto::ICMPV6, IpVersion::V6) => IcmpVersion::V6,
        _ => return None,
    };
    let [ty, code] = p.src_port.get().to_be_bytes();
    key.icmp_type = ty;
    key.icmp_code = code;
    let id = if icmp::is_echo(version, ty) { p.udp_length.get() } else { 0 };
    key.src_port = id;
    key.dst_port = id;
    Some(())
}

/// Every frame the fast path declines: tags, options, extension headers, fragments, ICMP, other
/// protocols, and every malformed frame (with its typed error).
#[inline(never)]
fn parse_general(frame: &[u8], key: &mut FlowKey) -> Result<(), WireError> {
    general(frame, key)
}

/// The body of [`parse_general`], inlined into it and into [`parse_general_value`]: called from
/// there instead, the key it fills lives in the caller's memory and is copied out field by field,
/// a copy that costs half as much again as the parse of a fragment itself.
#[inline(always)]
fn general(frame: &[u8], key: &mut FlowKey) -> Result<(), WireError> {
    let l2 = parse_l2(frame)?;
    let l3 = frame.get(l2.l3_offset..).ok_or(WireError::Truncated(Layer::Ethernet))?;
    *key = FlowKey { vlans: l2.vlans, vlan_count: l2.vlan_count, l3_offset: l2.l3_offset as u16, ..FlowKey::default() };
    let (l4, l4_in_l3) = general_ip(l2.ethertype, l3, key)?;
    key.l4_offset = (l2.l3_offset + l4_in_l3) as u16;
    key.l4_len = l4.len() as u16;
    if key.fragment == Fragment::Later {
        return Ok(());
    }
    general_transport(l4, key)
}

/// The IP header (and IPv6 extension headers) of [`general`]: fills the key's addresses,
/// protocol and fragment fields, and returns the L4 part (up to the IP length) and its offset
/// from the start of the IP header.
#[inline(always)]
fn general_ip<'a>(ethertype: u16, l3: &'a [u8], key: &mut FlowKey) -> Result<(&'a [u8], usize), WireError> {
    Ok(match ethertype {
        EtherType::IPV4 => {
            let (h, hlen, total): (&Ipv4Header, usize, usize) = ipv4::check_header(l3)?;
            key.src_addr = v4_in_16(h.src);
            key.dst_addr = v4_in_16(h.dst);
            key.protocol = h.protocol;
            if h.is_fragment() {
                key.frag_ident = u32::from(h.ident.get());
                key.fragment = Fragment::at(h.frag_offset());
            }
            (&l3[hlen..total], hlen)
        }
        EtherType::IPV6 => {
            let (h, len) = ipv6::check_header(l3)?;
            key.ip_version = IpVersion::V6;
            key.src_addr = h.src;
            key.dst_addr = h.dst;
            let payload = &l3[ipv6::IPV6_HEADER_LEN..len];
            let (protocol, off) = match h.next_header {
                // Fast path: no extension headers.
                ip_proto::TCP | ip_proto::UDP | ip_proto::ICMPV6 => (h.next_header, 0),
                next => {
                    let walk = ipv6::walk(next, payload)?;
                    if let Some(FragmentInfo { offset, ident, .. }) = walk.fragment.filter(FragmentInfo::is_fragment) {
                        key.frag_ident = ident;
                        key.fragment = Fragment::at(offset);
                    }
                    (walk.protocol, walk.offset)
                }
            };
            key.protocol = protocol;
            (&payload[off..], ipv6::IPV6_HEADER_LEN + off)
        }
        other => return Err(WireError::UnsupportedEtherType(other)),
    })
}

/// The L4 header of [`general`] (not a later fragment's): the ports, TCP flags, ICMP type and
/// code, or the echo identifier as both ports.
#[inline(always)]
fn general_transport(l4: &[u8], key: &mut FlowKey) -> Result<(), WireError> {
    match key.protocol {
        ip_proto::TCP => {
            let (t, _) = header_prefix::<TcpHeader>(l4, Layer::Tcp)?;
            let hlen = t.header_len();
            if hlen < TCP_HEADER_LEN || hlen > l4.len() {
                return Err(WireError::BadDataOffset(t.data_offset >> 4));
            }
            key.src_port = t.src_port.get();
            key.dst_port = t.dst_port.get();
            key.tcp_flags = t.flags;
        }
        ip_proto::UDP => {
            let (u, _) = header_prefix::<UdpHeader>(l4, Layer::Udp)?;
            let len = usize::from(u.length.get());
            // A first fragment holds only part of the datagram the length field describes.
            if len < UDP_HEADER_LEN || (key.fragment == Fragment::None && len > l4.len()) {
                return Err(WireError::LengthMismatch(Layer::Udp));
            }
            key.src_port = u.src_port.get();
            key.dst_port = u.dst_port.get();
        }
        // ICMP belongs to IPv4 and ICMPv6 to IPv6; the other pairings are opaque protocols.
        ip_proto::ICMP | ip_proto::ICMPV6 if (key.protocol == ip_proto::ICMP) == (key.ip_version == IpVersion::V4) => {
            let (m, _) = header_prefix::<IcmpHeader>(l4, Layer::Icmp)?;
            key.icmp_type = m.ty;
            key.icmp_code = m.code;
            let version = if key.protocol == ip_proto::ICMP { IcmpVersion::V4 } else { IcmpVersion::V6 };
            if icmp::is_echo(version, m.ty) {
                let id = u16::from_be_bytes([m.rest[0], m.rest[1]]);
                key.src_port = id;
                key.dst_port = id;
            }
        }
        _ => {}
    }
    Ok(())
}

/// For an ICMP error (`key.is_icmp_error()`): the flow key of the packet it quotes, as that packet
/// travelled (so a MUX that sees an error about a packet its backend sent looks up the quoted key
/// reversed). Only the quoted IP header and the first 8 bytes of its L4 header are needed (RFC 792);
/// the quoted IP length may exceed what was quoted. VLANs are those of the outer frame; the offsets
/// locate the quoted headers inside the frame (`l3_offset`: the quoted IP header, `l4_offset`: its L4
/// header, `l4_len`: how much of that was quoted), which is what a NAT rewriting the quote needs.
pub fn quoted_flow_key(frame: &[u8], key: &FlowKey) -> Result<FlowKey, WireError> {
    if !key.is_icmp_error() {
        return Err(WireError::Truncated(Layer::IcmpQuote));
    }
    let start = usize::from(key.l4_offset) + icmp::ICMP_HEADER_LEN;
    let end = usize::from(key.l4_offset) + usize::from(key.l4_len);
    let quote = frame.get(start..end).ok_or(WireError::Truncated(Layer::IcmpQuote))?;
    let mut inner =
        FlowKey { vlans: key.vlans, vlan_count: key.vlan_count, ip_version: key.ip_version, ..FlowKey::default() };
    let l4 = match key.ip_version {
        IpVersion::V4 => {
            let (h, _) = header_prefix::<Ipv4Header>(quote, Layer::IcmpQuote)?;
            if h.version() != 4 {
                return Err(WireError::BadVersion(h.version()));
            }
            let hlen = h.header_len();
            if hlen < ipv4::IPV4_HEADER_LEN {
                return Err(WireError::BadIhl(h.version_ihl & 0x0f));
            }
            inner.src_addr[..4].copy_from_slice(&h.src);
            inner.dst_addr[..4].copy_from_slice(&h.dst);
            inner.protocol = h.protocol;
            if h.is_fragment() {
                inner.frag_ident = u32::from(h.ident.get());
                inner.fragment = Fragment::at(h.frag_offset());
            }
            quote.get(hlen..).ok_or(WireError::Truncated(Layer::IcmpQuote))?
        }
        IpVersion::V6 => {
            let (h, rest) = header_prefix::<ipv6::Ipv6Header>(quote, Layer::IcmpQuote)?;
            if h.version() != 6 {
                return Err(WireError::BadVersion(h.version()));
            }
            inner.src_addr = h.src;
            inner.dst_addr = h.dst;
            let walk = ipv6::walk_extensions(h.next_header, rest)?;
            inner.protocol = walk.protocol;
            if let Some(f) = walk.fragment.filter(FragmentInfo::is_fragment) {
                inner.frag_ident = f.ident;
                inner.fragment = Fragment::at(f.offset);
            }
            &rest[walk.offset..]
        }
    };
    inner.l3_offset = start as u16;
    inner.l4_offset = (end - l4.len()) as u16;
    inner.l4_len = l4.len() as u16;
    if inner.fragment != Fragment::Later && matches!(inner.protocol, ip_proto::TCP | ip_proto::UDP) {
        let p = l4.get(..4).ok_or(WireError::Truncated(Layer::IcmpQuote))?;
        inner.src_port = u16::from_be_bytes([p[0], p[1]]);
        inner.dst_port = u16::from_be_bytes([p[2], p[3]]);
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 802.1Q (vid 10) IPv4 TCP SYN 1.2.3.4:50000 → 20.50.60.10:80 with 6 bytes of Ethernet padding.
    fn tcp_syn() -> [u8; 18 + 20 + 20 + 6] {
        let mut f = [0u8; 64];
        f[..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        f[12..18].copy_from_slice(&[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00]);
        f[18..38].copy_from_slice(&[0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 1, 2, 3, 4, 20, 50, 60, 10]);
        f[38..58]
            .copy_from_slice(&[0xc3, 0x50, 0, 80, 0, 0, 0x03, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    /// Flows that differ only in a sequential client port (a client opening connection after
    /// connection, a NAT handing out ports in order) must still spread: the flow table takes its
    /// bucket from the hash's high bits and a slot's 16-bit signature from its low bits, and Maglev
    /// its backend from the whole. A hash whose output moves by a near-constant step per port
    /// lines such flows up on the same signatures, and every lookup then reads entries that are not
    /// its own.
    #[test]
    fn hash_spreads_sequential_ports() {
        let base = parse_flow_key(&tcp_syn()).unwrap();
        for seed in [0u64, 42, 0x5eed] {
            for proto in [ip_proto::TCP, ip_proto::UDP] {
                const N: usize = 4096;
                let hashes: std::vec::Vec<u32> = (0..N as u16)
                    .map(|p| {
                        let mut k = base;
                        k.src_port = 1024 + p;
                        k.protocol = proto;
                        k.hash(seed)
                    })
                    .collect();
                // Low 16 bits (signatures) and high 12 bits (buckets of a 4096-bucket table): with
                // uniform hashes about N * (1 - e^(-N/M)) distinct values appear, by the birthday bound.
                for (name, bits, shift) in [("low 16", 16u32, 0u32), ("high 12", 12, 20)] {
                    let m = 1usize << bits;
                    let mut seen = std::vec![false; m];
                    for h in &hashes {
                        seen[((h >> shift) as usize) & (m - 1)] = true;
                    }
                    let distinct = seen.iter().filter(|&&s| s).count();
                    let expected = m as f64 * (1.0 - (-(N as f64) / m as f64).exp());
                    assert!(
                        distinct as f64 > 0.95 * expected,
                        "{name} bits, seed {seed}, protocol {proto}: {distinct} distinct of {N}, expected about {expected:.0}"
                    );
                }
                // Every output bit flips for about half of the single-port steps.
                for bit in 0..32 {
                    let flips = hashes.windows(2).filter(|w| (w[0] ^ w[1]) >> bit & 1 == 1).count();
                    assert!((1700..2400).contains(&flips), "bit {bit} flips {flips} times in {} steps", N - 1);
                }
            }
        }
    }

    #[test]
    fn vlan_ipv4_tcp() {
        let k = parse_flow_key(&tcp_syn()).unwrap();
        assert_eq!(k.src_v4(), [1, 2, 3, 4]);
        assert_eq!(k.dst_v4(), [20, 50, 60, 10]);
        assert_eq!((k.src_port, k.dst_port, k.protocol), (50000, 80, 6));
        assert_eq!(k.tcp_flags, 0x02);
        assert_eq!((k.vlan_count, k.vlans[0]), (1, 10));
        assert_eq!((k.l3_offset, k.l4_offset, k.l4_len), (18, 38, 20));
        assert_eq!(k.fragment, Fragment::None);
        assert_eq!(k.reversed().reversed(), k);
        assert_ne!(k.hash(0), k.reversed().hash(0));
        assert_ne!(k.hash(0), k.hash(1));
        // Fewer fields: the ports (then the protocol) stop mattering.
        let other_port = FlowKey { src_port: 50001, ..k };
        assert_ne!(k.hash(0), other_port.hash(0));
        assert_eq!(k.hash_fields(HashFields::ThreeTuple, 0), other_port.hash_fields(HashFields::ThreeTuple, 0));
        let udp = FlowKey { protocol: 17, ..other_port };
        assert_ne!(k.hash_fields(HashFields::ThreeTuple, 0), udp.hash_fields(HashFields::ThreeTuple, 0));
        assert_eq!(k.hash_fields(HashFields::TwoTuple, 0), udp.hash_fields(HashFields::TwoTuple, 0));
    }

    /// The fast path only has to be right about what it accepts: on every frame of the generator's
    /// mixes (all kinds, tags, IPv4 options, IPv6 extension headers, fragments, ICMP), every
    /// truncation of them, and copies with one byte of the headers flipped, the fast path either
    /// declines or gives exactly the key the general path gives.
    #[test]
    fn fast_path_agrees_with_the_general_path() {
        let mut accepted = [0usize; 2];
        for mix in [lb_testkit::MixConfig::uniform(), lb_testkit::MixConfig::realistic()] {
            for (n, f) in lb_testkit::TrafficGenerator::new(7, mix).take(600).into_iter().enumerate() {
                let mut variants: alloc::vec::Vec<alloc::vec::Vec<u8>> = alloc::vec![f.bytes.clone()];
                variants.extend((0..f.bytes.len().min(90)).map(|l| f.bytes[..l].to_vec()));
                for at in 12..f.bytes.len().min(90) {
                    let mut v = f.bytes.clone();
                    v[at] ^= 1 << (n % 8);
                    variants.push(v);
                }
                for v in &variants {
                    let mut fast = FlowKey::default();
                    let mut general = FlowKey::default();
                    let g = parse_general(v, &mut general);
                    if fast_path(v, &mut fast).is_some() {
                        accepted[usize::from(f.kind == lb_testkit::FrameKind::Ipv6ExtHeaders)] += 1;
                        assert_eq!(g, Ok(()), "the fast path accepted what the general path refuses: {v:02x?}");
                        assert_eq!(fast, general, "{:?} {v:02x?}", f.kind);
                    }
                }
            }
        }
        assert!(accepted[0] > 1000 && accepted[1] > 20, "the fast path took part: {accepted:?}");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let f = tcp_syn();
        for len in 0..58 {
            assert!(parse_flow_key(&f[..len]).is_err(), "len {len}");
        }
        assert!(parse_flow_key(&f[..58]).is_ok());
    }

    #[test]
    fn later_fragment_has_no_ports() {
        let mut f = tcp_syn();
        f[24..26].copy_from_slice(&(ipv4::FLAG_MF | 10).to_be_bytes());
        let k = parse_flow_key(&f).unwrap();
        assert_eq!((k.fragment, k.src_port, k.dst_port, k.frag_ident), (Fragment::Later, 0, 0, 0x1234));
        f[24..26].copy_from_slice(&ipv4::FLAG_MF.to_be_bytes());
        let k = parse_flow_key(&f).unwrap();
        assert_eq!((k.fragment, k.src_port), (Fragment::First, 50000));
    }

    /// RFC 6946: a Fragment header with offset 0 and no more fragments (an "atomic fragment")
    /// carries a whole datagram, to be processed as one; steered as a first fragment, it would
    /// leave a record for later fragments that never come.
    #[test]
    fn ipv6_atomic_fragment_is_a_whole_datagram() {
        let mut f = std::vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 28, 44, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[ip_proto::TCP, 0, 0, 0, 0xca, 0xfe, 0xf0, 0x0d]); // offset 0, M = 0
        f.extend_from_slice(&[0xc3, 0x50, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        let k = parse_flow_key(&f).unwrap();
        assert_eq!((k.fragment, k.frag_ident, k.protocol), (Fragment::None, 0, ip_proto::TCP));
        assert_eq!((k.src_port, k.dst_port, k.tcp_flags), (50000, 80, 0x02));
        assert_eq!((k.l4_offset, k.l4_len), (62, 20));
        // With more fragments to come it is a first fragment, as before.
        f[57] = 1;
        let k = parse_flow_key(&f).unwrap();
        assert_eq!((k.fragment, k.frag_ident, k.src_port), (Fragment::First, 0xcafe_f00d, 50000));
    }

    #[test]
    fn later_fragment_is_never_an_icmp_error() {
        // Found by the parse_frame fuzz target: a non-first IPv6 fragment with next header 58 (and an
        // IPv4 one with protocol 58) carries no ICMP header, so it must not be steered as an error.
        let hex = |s: &str| -> std::vec::Vec<u8> {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        for frame in [
            "02000000000202000000000186dd6000000000102c4020010db800000000000000000000000120010db800000000\
             00000000000000023a000008000000014500002800000000",
            "02000000000202000000000108004500001c12340001403a000001020304050607080000000000000000",
        ] {
            let k = parse_flow_key(&hex(&frame.replace(' ', ""))).unwrap();
            assert_eq!((k.fragment, k.protocol), (Fragment::Later, 58));
            assert!(!k.is_icmp_error());
        }
    }

    #[test]
    fn unsupported_ethertype_is_named() {
        let mut f = tcp_syn();
        f[16..18].copy_from_slice(&EtherType::ARP.to_be_bytes());
        assert_eq!(parse_flow_key(&f), Err(WireError::UnsupportedEtherType(0x0806)));
    }

    #[test]
    fn icmp_error_is_steered_by_its_quote() {
        // 10.0.0.1 → 1.2.3.4: frag needed about 1.2.3.4:50000 → 20.50.60.10:80 (the client's SYN).
        let syn = tcp_syn();
        let mut f = [0u8; 14 + 20 + 8 + 28];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14..34].copy_from_slice(&[0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 1, 2, 3, 4]);
        f[34..42].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0x05, 0x78]);
        f[42..70].copy_from_slice(&syn[18..46]);
        let k = parse_flow_key(&f).unwrap();
        assert!(k.is_icmp_error());
        assert_eq!((k.icmp_type, k.icmp_code), (3, 4));
        let q = quoted_flow_key(&f, &k).unwrap();
        assert_eq!(q.src_v4(), [1, 2, 3, 4]);
        assert_eq!((q.dst_v4(), q.src_port, q.dst_port, q.protocol), ([20, 50, 60, 10], 50000, 80, 6));
        assert_eq!((q.l3_offset, q.l4_offset, q.l4_len), (42, 62, 8), "quoted headers located in the frame");
        // Cut inside the quoted ports.
        let short = &f[..64];
        let mut ks = k;
        ks.l4_len = 30;
        assert_eq!(quoted_flow_key(short, &ks), Err(WireError::Truncated(Layer::IcmpQuote)));
    }
}
