//! Frames of client traffic (and backends' answers), written with etherparse, and what an
//! independent parser reads back: addresses, ports, checksums, payload; the VxLAN tunnel a MUX
//! wraps a frame in (RFC 7348).

use core::net::IpAddr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::addr::*;

/// Headroom before a frame in its buffer: room for the outer headers a MUX or host agent prepends.
pub const HEADROOM: usize = 128;

/// The payload of [`tcp4`]'s frames.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

/// The IANA port of VxLAN (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// An Ethernet frame from [`CLIENT_MAC`] to [`MUX_MAC`], from `src` to `dst` (one IP version): TCP
/// when `tcp` is `Some(syn)` (sequence number 1000, a SYN, else an ACK of 5001) or UDP when `None`.
pub fn frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, tcp: Option<bool>, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, MUX_MAC.0);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed versions"),
    };
    let mut v = Vec::new();
    match tcp {
        Some(syn) => {
            let b = b.tcp(sport, dport, 1000, 65535);
            let b = if syn { b.syn() } else { b.ack(5001) };
            b.write(&mut v, payload).unwrap();
        }
        None => b.udp(sport, dport).write(&mut v, payload).unwrap(),
    }
    v
}

/// An IPv4 TCP [`frame`] carrying [`REQUEST`]: a SYN or an ACK.
pub fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    frame(IpAddr::from(src), sport, IpAddr::from(dst), dport, Some(syn), REQUEST)
}

/// `f` in a buffer after [`HEADROOM`] zero bytes.
pub fn with_headroom(f: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + f.len()];
    buf[HEADROOM..].copy_from_slice(f);
    buf
}

/// What an independent parser sees in a TCP or UDP frame, after checking every checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// SYN, RST, ACK (all false for UDP).
    pub tcp_flags: (bool, bool, bool),
    /// The TCP sequence number (0 for UDP).
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// Reads a TCP or UDP frame with etherparse, asserting its IPv4 header checksum and its TCP or UDP
/// checksum.
pub fn seen(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let (src, dst, ip) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.calc_header_checksum(), h.header_checksum, "IPv4 header checksum");
            (IpAddr::from(h.source), IpAddr::from(h.destination), Ok(h))
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            (IpAddr::from(h.source), IpAddr::from(h.destination), Err(h))
        }
        _ => panic!("IP frame"),
    };
    let (sport, dport, tcp_flags, seq, payload, checksum, want) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            let want = match &ip {
                Ok(v4) => h.calc_checksum_ipv4(v4, t.payload()),
                Err(v6) => h.calc_checksum_ipv6(v6, t.payload()),
            };
            let flags = (t.syn(), t.rst(), t.ack());
            (t.source_port(), t.destination_port(), flags, t.sequence_number(), t.payload(), t.checksum(), want)
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            let want = match &ip {
                Ok(v4) => h.calc_checksum_ipv4(v4, u.payload()),
                Err(v6) => h.calc_checksum_ipv6(v6, u.payload()),
            };
            (u.source_port(), u.destination_port(), (false, false, false), 0, u.payload(), u.checksum(), want)
        }
        _ => panic!("TCP or UDP"),
    };
    let what = if matches!(p.transport, Some(TransportSlice::Tcp(_))) { "TCP checksum" } else { "UDP checksum" };
    assert_eq!(checksum, want.unwrap(), "{what}");
    Seen { src, dst, sport, dport, tcp_flags, seq, payload: payload.to_vec() }
}

/// The VxLAN tunnel around a frame a MUX forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel<'a> {
    /// The outer destination: the host the MUX chose.
    pub dst: [u8; 4],
    /// The outer IPv4 header's Don't Fragment bit.
    pub dont_fragment: bool,
    /// The VNI.
    pub vni: u32,
    /// The inner frame.
    pub inner: &'a [u8],
}

/// Reads a VxLAN frame a MUX sent over IPv4, asserting what every such frame has: the MUX's
/// underlay address ([`MUX_IP`]) as source, a valid IPv4 header checksum, UDP to [`VXLAN_PORT`]
/// from an ephemeral port (the inner flow's entropy, RFC 7348 section 5), the VNI-valid flag.
pub fn vxlan_from_mux(outer: &[u8]) -> Tunnel<'_> {
    let p = SlicedPacket::from_ethernet(outer).expect("outer frame parses");
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("outer IPv4") };
    assert_eq!(ip.header().source(), MUX_IP);
    assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
    let Some(TransportSlice::Udp(u)) = &p.transport else { panic!("outer UDP") };
    assert_eq!(u.destination_port(), VXLAN_PORT);
    assert!(u.source_port() >= 49152);
    let vx = u.payload();
    assert_eq!(vx[0], 0x08, "VNI-valid flag");
    Tunnel {
        dst: ip.header().destination(),
        dont_fragment: ip.header().dont_fragment(),
        vni: u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
        inner: &vx[8..],
    }
}

/// A [`frame`] whose IP packet is `ip_len` bytes long (headers included; the payload is filler):
/// what does or does not fit a tunnel over an underlay of some MTU.
pub fn sized_frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, tcp: Option<bool>, ip_len: usize) -> Vec<u8> {
    let headers = if src.is_ipv4() { 20 } else { 40 } + if tcp.is_some() { 20 } else { 8 };
    let payload: Vec<u8> = (0..ip_len - headers).map(|i| i as u8).collect();
    frame(src, sport, dst, dport, tcp, &payload)
}

/// Clears the Don't Fragment bit of an untagged IPv4 frame (etherparse sets it) and writes its
/// header checksum again: a packet routers may fragment.
pub fn clear_dont_fragment(f: &mut [u8]) {
    let (mut h, _) = etherparse::Ipv4Header::from_slice(&f[14..]).expect("IPv4 header");
    h.dont_fragment = false;
    h.header_checksum = h.calc_header_checksum();
    f[14..34].copy_from_slice(&h.to_bytes());
}

/// A TCP SYN from `src` to `dst` announcing MSS `mss` (sequence number 1000), or, with `ack`, a
/// SYN-ACK acknowledging it (sequence number 5000).
pub fn syn_with_mss(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, ack: Option<u32>, mss: u16) -> Vec<u8> {
    use etherparse::TcpOptionElement::{MaximumSegmentSize, Noop, WindowScale};
    let b = PacketBuilder::ethernet2(CLIENT_MAC, MUX_MAC.0);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed versions"),
    };
    let b = b.tcp(sport, dport, if ack.is_some() { 5000 } else { 1000 }, 65535).syn();
    let b = match ack {
        Some(a) => b.ack(a),
        None => b,
    };
    let b = b.options(&[Noop, WindowScale(7), MaximumSegmentSize(mss)]).expect("TCP options");
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// The MSS option of a TCP frame, read with etherparse (`None`: the segment has none).
pub fn mss_of(frame: &[u8]) -> Option<u16> {
    let p = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let Some(TransportSlice::Tcp(t)) = &p.transport else { panic!("TCP") };
    t.options_iterator().find_map(|o| match o {
        Ok(etherparse::TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
        _ => None,
    })
}

/// What an independent parser reads in an ICMPv4 "fragmentation needed" or ICMPv6 "packet too
/// big" error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooBig {
    /// Ethernet destination and source.
    pub macs: ([u8; 6], [u8; 6]),
    /// The VLAN ids of the frame, outermost first.
    pub vlans: Vec<u16>,
    /// The error's source and destination addresses.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL or hop limit.
    pub hop_limit: u8,
    /// The IP packet's length (IPv4 total length; IPv6 40 + payload length).
    pub ip_len: usize,
    /// The MTU the error reports.
    pub mtu: u32,
    /// The quoted packet, from its IP header.
    pub quote: Vec<u8>,
}

/// Reads an ICMP "too big" error with etherparse, asserting its type and code, the IPv4 header
/// checksum, DF on IPv4, and the ICMP checksum (ICMPv6: with the pseudo-header).
pub fn too_big(frame: &[u8]) -> TooBig {
    use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type, LinkSlice};
    let p = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else { panic!("Ethernet II") };
    let macs = (eth.destination(), eth.source());
    let vlans = p.vlan_ids().iter().map(|v| v.value()).collect();
    let (src, dst, hop_limit, ip_len) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.calc_header_checksum(), h.header_checksum, "IPv4 header checksum");
            assert!(h.dont_fragment, "the error is an atomic datagram");
            (IpAddr::from(h.source), IpAddr::from(h.destination), h.time_to_live, usize::from(h.total_len))
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            (IpAddr::from(h.source), IpAddr::from(h.destination), h.hop_limit, 40 + usize::from(h.payload_length))
        }
        _ => panic!("IP frame"),
    };
    let (mtu, quote) = match &p.transport {
        Some(TransportSlice::Icmpv4(i)) => {
            assert_eq!(i.icmp_type().calc_checksum(i.payload()), i.checksum(), "ICMPv4 checksum");
            let Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu }) =
                i.icmp_type()
            else {
                panic!("fragmentation needed: {:?}", i.icmp_type())
            };
            (u32::from(next_hop_mtu), i.payload().to_vec())
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else { panic!("ICMPv6 over IPv6") };
            assert!(i.is_checksum_valid(s.octets(), d.octets()), "ICMPv6 checksum");
            let Icmpv6Type::PacketTooBig { mtu } = i.icmp_type() else { panic!("packet too big: {:?}", i.icmp_type()) };
            (mtu, i.payload().to_vec())
        }
        _ => panic!("ICMP"),
    };
    TooBig { macs, vlans, src, dst, hop_limit, ip_len, mtu, quote }
}
