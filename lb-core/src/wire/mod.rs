//! Wire formats: views over byte buffers, builders (`*Repr`), checksums, flow keys, VxLAN.
//!
//! Every view has a checked constructor that validates lengths before any field is read, so no
//! accessor can read past the buffer. Header layouts are `#[repr(C)]` structs of network-endian
//! fields (zerocopy), which is the one place where byte offsets are written down.

pub mod checksum;
mod error;
pub mod ethernet;
pub mod flow;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod nat;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use error::{Layer, WireError};
pub use ethernet::{EtherType, EthernetFrame, EthernetHeader, EthernetRepr, MacAddr, VlanTag};
pub use flow::{parse_flow_key, parse_flow_key_into, FlowKey, Fragment, HashFields, IpVersion};
pub use icmp::{IcmpMessage, IcmpVersion};
pub use ipv4::{Ipv4Header, Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Header, Ipv6Packet, Ipv6Repr};
pub use nat::{rewrite, rewrite_quoted, Side, TcpResetRepr};
pub use tcp::{TcpFlags, TcpHeader, TcpSegment};
pub use udp::{UdpDatagram, UdpHeader, UdpRepr};
pub use vxlan::{backend_tag, VxlanDecap, VxlanEncap, VxlanHeader, VxlanPacket, VXLAN_PORT};

/// IP protocol numbers this crate understands.
pub mod ip_proto {
    /// IPv6 Hop-by-Hop Options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 Routing header.
    pub const IPV6_ROUTING: u8 = 43;
    /// IPv6 Fragment header.
    pub const IPV6_FRAGMENT: u8 = 44;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const IPV6_NO_NEXT: u8 = 59;
    /// IPv6 Destination Options.
    pub const IPV6_DEST_OPTS: u8 = 60;
}

/// Splits a zerocopy header off the front of `buf`, or reports which layer was cut short.
#[inline(always)]
pub(crate) fn header_prefix<H>(buf: &[u8], layer: Layer) -> Result<(&H, &[u8]), WireError>
where
    H: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + zerocopy::Unaligned,
{
    H::ref_from_prefix(buf).map_err(|_| WireError::Truncated(layer))
}
