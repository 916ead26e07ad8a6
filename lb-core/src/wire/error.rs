//! Typed parse and build errors. Every malformed frame maps to one of these, never to a panic.

use core::fmt;

/// The header a [`WireError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet II header.
    Ethernet,
    /// 802.1Q / 802.1ad tag.
    Vlan,
    /// IPv4 header (and options).
    Ipv4,
    /// IPv6 fixed header.
    Ipv6,
    /// An IPv6 extension header.
    Ipv6Extension,
    /// TCP header (and options).
    Tcp,
    /// UDP header.
    Udp,
    /// ICMPv4 / ICMPv6 header.
    Icmp,
    /// The IP header + 8 bytes quoted by an ICMP error.
    IcmpQuote,
    /// VxLAN header.
    Vxlan,
}

/// What is wrong with a frame, or why it cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The buffer ends before the named header does.
    Truncated(Layer),
    /// The IP version nibble does not match the EtherType (or quote) that announced it.
    BadVersion(u8),
    /// IPv4 IHL below 5 words.
    BadIhl(u8),
    /// A length field disagrees with the buffer: IPv4 total length shorter than its header or longer
    /// than the frame, IPv6 payload length past the frame, UDP length out of range.
    LengthMismatch(Layer),
    /// TCP data offset below 5 words or past the segment.
    BadDataOffset(u8),
    /// More 802.1Q/802.1ad tags than the two QinQ allows.
    TooManyVlanTags,
    /// More IPv6 extension headers than the bounded walk accepts.
    TooManyExtensionHeaders,
    /// A Hop-by-Hop Options header anywhere but directly after the IPv6 header (RFC 8200 4.1).
    HopByHopNotFirst,
    /// An EtherType that is neither IPv4, IPv6 nor a VLAN tag.
    UnsupportedEtherType(u16),
    /// Not a VxLAN frame: wrong outer protocol or UDP port, or the VNI-valid flag is clear.
    NotVxlan,
    /// Not enough headroom in front of the frame for the outer headers.
    HeadroomTooSmall {
        /// Bytes needed in front of the inner frame.
        needed: u16,
        /// Bytes available.
        available: u16,
    },
    /// The encapsulated packet would exceed the underlay MTU.
    MtuExceeded {
        /// Outer IP packet length that would be sent.
        length: u16,
        /// Configured underlay MTU.
        mtu: u16,
    },
    /// A checksum that was verified did not match.
    BadChecksum(Layer),
    /// A value that does not fit its field (e.g. a VNI above 24 bits, a payload above 64 KiB).
    FieldOverflow(Layer),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated(l) => write!(f, "truncated {l:?} header"),
            WireError::BadVersion(v) => write!(f, "bad IP version {v}"),
            WireError::BadIhl(v) => write!(f, "bad IPv4 IHL {v} (minimum 5)"),
            WireError::LengthMismatch(l) => write!(f, "{l:?} length field disagrees with the frame"),
            WireError::BadDataOffset(v) => write!(f, "bad TCP data offset {v}"),
            WireError::TooManyVlanTags => f.write_str("more than two VLAN tags"),
            WireError::TooManyExtensionHeaders => f.write_str("too many IPv6 extension headers"),
            WireError::HopByHopNotFirst => f.write_str("IPv6 hop-by-hop header not first"),
            WireError::UnsupportedEtherType(t) => write!(f, "unsupported EtherType {t:#06x}"),
            WireError::NotVxlan => f.write_str("not a VxLAN frame"),
            WireError::HeadroomTooSmall { needed, available } => {
                write!(f, "headroom too small: need {needed} bytes, have {available}")
            }
            WireError::MtuExceeded { length, mtu } => {
                write!(f, "encapsulated length {length} exceeds underlay MTU {mtu}")
            }
            WireError::BadChecksum(l) => write!(f, "bad {l:?} checksum"),
            WireError::FieldOverflow(l) => write!(f, "value too large for a {l:?} field"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}
