//! Independent 5-tuple extractors written against the peer crates `etherparse` and `smoltcp`, used
//! as oracles by lb-core's property tests and as the comparison points of the benchmarks, so both
//! ask every library for exactly the same work. They are always inlined, as lb-core's
//! `parse_flow_key` is: a benchmark that calls one library's wrapper out of line measures the
//! round trip of its result through memory, not the library.

/// A 5-tuple as every extractor reports it (IPv4 in the first 4 bytes of the address fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tuple5 {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Upper-layer protocol.
    pub protocol: u8,
    /// Source port (0 when the packet carries none).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// The 5-tuple with etherparse's zero-copy `SlicedPacket` (it walks VLANs and IPv6 extensions;
/// it does not decode the transport header of any fragment, first fragments included).
#[inline(always)]
pub fn etherparse_tuple(frame: &[u8]) -> Option<Tuple5> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let mut t = Tuple5::default();
    match p.net? {
        NetSlice::Ipv4(s) => {
            t.src[..4].copy_from_slice(&s.header().source());
            t.dst[..4].copy_from_slice(&s.header().destination());
            t.protocol = s.payload().ip_number.0;
        }
        NetSlice::Ipv6(s) => {
            t.src = s.header().source();
            t.dst = s.header().destination();
            t.protocol = s.payload().ip_number.0;
        }
        _ => return None,
    }
    match p.transport {
        Some(TransportSlice::Tcp(s)) => (t.src_port, t.dst_port) = (s.source_port(), s.destination_port()),
        Some(TransportSlice::Udp(s)) => (t.src_port, t.dst_port) = (s.source_port(), s.destination_port()),
        _ => {}
    }
    Some(t)
}

/// The 5-tuple with smoltcp's checked views. smoltcp has no 802.1Q view, so tags are skipped by
/// hand; IPv6 extension headers are walked with its generic extension-header view.
#[inline(always)]
pub fn smoltcp_tuple(frame: &[u8]) -> Option<Tuple5> {
    use smoltcp::wire::{EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let mut ethertype = u16::from(eth.ethertype());
    let mut l3 = eth.payload();
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = u16::from_be_bytes([*l3.get(2)?, *l3.get(3)?]);
            l3 = &l3[4..];
        }
    }
    let mut t = Tuple5::default();
    // A first fragment holds only part of the datagram a UDP length field describes.
    let first_fragment;
    let (proto, l4) = match ethertype {
        0x0800 => {
            let ip = Ipv4Packet::new_checked(l3).ok()?;
            t.src[..4].copy_from_slice(&ip.src_addr().octets());
            t.dst[..4].copy_from_slice(&ip.dst_addr().octets());
            t.protocol = u8::from(ip.next_header());
            if ip.frag_offset() != 0 {
                return Some(t);
            }
            first_fragment = ip.more_frags();
            (ip.next_header(), ip.payload())
        }
        0x86dd => {
            let ip = Ipv6Packet::new_checked(l3).ok()?;
            t.src = ip.src_addr().octets();
            t.dst = ip.dst_addr().octets();
            match smoltcp_ipv6_extensions(ip.next_header(), ip.payload())? {
                Ipv6Walk::Later(nh) => {
                    t.protocol = u8::from(nh);
                    return Some(t);
                }
                Ipv6Walk::Upper(nh, p, first) => {
                    first_fragment = first;
                    t.protocol = u8::from(nh);
                    (nh, p)
                }
            }
        }
        _ => return None,
    };
    match proto {
        IpProtocol::Tcp => {
            let s = TcpPacket::new_checked(l4).ok()?;
            (t.src_port, t.dst_port) = (s.src_port(), s.dst_port());
        }
        IpProtocol::Udp if first_fragment => {
            let s = UdpPacket::new_unchecked(l4.get(..8)?);
            (t.src_port, t.dst_port) = (s.src_port(), s.dst_port());
        }
        IpProtocol::Udp => {
            let s = UdpPacket::new_checked(l4).ok()?;
            (t.src_port, t.dst_port) = (s.src_port(), s.dst_port());
        }
        _ => {}
    }
    Some(t)
}

/// Where the IPv6 extension headers of [`smoltcp_tuple`] lead.
enum Ipv6Walk<'a> {
    /// A later fragment, of this upper-layer protocol (no L4 header follows).
    Later(smoltcp::wire::IpProtocol),
    /// The upper-layer protocol, what follows the headers, and whether a Fragment header made it
    /// a first fragment.
    Upper(smoltcp::wire::IpProtocol, &'a [u8], bool),
}

/// Walks up to 8 IPv6 extension headers (Hop-by-Hop, Routing, Destination Options, Fragment, AH)
/// from next header `nh` at the front of `payload`, with smoltcp's generic extension-header view.
#[inline(always)]
fn smoltcp_ipv6_extensions(mut nh: smoltcp::wire::IpProtocol, payload: &[u8]) -> Option<Ipv6Walk<'_>> {
    use smoltcp::wire::{IpProtocol, Ipv6ExtHeader, Ipv6FragmentHeader};
    let mut p = payload;
    let mut first_fragment = false;
    for _ in 0..8 {
        match nh {
            IpProtocol::HopByHop
            | IpProtocol::Ipv6Route
            | IpProtocol::Ipv6Opts
            | IpProtocol::Ipv6Frag
            | IpProtocol::IpSecAh => {
                let e = Ipv6ExtHeader::new_checked(p).ok()?;
                // The Fragment header is always 8 bytes (its second byte is reserved, not a
                // length); AH counts its length in 4-byte words, minus 2 (RFC 4302).
                let len = match nh {
                    IpProtocol::Ipv6Frag => 8,
                    IpProtocol::IpSecAh => (usize::from(e.header_len()) + 2) * 4,
                    _ => (usize::from(e.header_len()) + 1) * 8,
                };
                let mut later = false;
                if nh == IpProtocol::Ipv6Frag {
                    let f = Ipv6FragmentHeader::new_checked(e.payload()).ok()?;
                    later = f.frag_offset() != 0;
                    first_fragment = f.more_frags();
                }
                nh = e.next_header();
                p = p.get(len..)?;
                if later {
                    return Some(Ipv6Walk::Later(nh));
                }
            }
            _ => break,
        }
    }
    Some(Ipv6Walk::Upper(nh, p, first_fragment))
}
