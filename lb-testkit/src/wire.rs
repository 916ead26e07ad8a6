//! Hand-written header serialisation and checksums (RFC 1071).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) const IPPROTO_HOPOPTS: u8 = 0;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
pub(crate) const IPPROTO_ROUTING: u8 = 43;
pub(crate) const IPPROTO_FRAGMENT: u8 = 44;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
pub(crate) const IPPROTO_DSTOPTS: u8 = 60;

/// Sum of big-endian 16-bit words (odd trailing byte padded with zero), unfolded.
pub(crate) fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks.by_ref().map(|c| u64::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum into 16 bits and complements it.
pub(crate) fn finish_checksum(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub(crate) fn pseudo_v4(src: &Ipv4Addr, dst: &Ipv4Addr, proto: u8, len: usize) -> u64 {
    sum_words(&src.octets()) + sum_words(&dst.octets()) + u64::from(proto) + len as u64
}

pub(crate) fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, len: usize) -> u64 {
    sum_words(&src.octets()) + sum_words(&dst.octets()) + u64::from(proto) + (len as u64 >> 16) + (len as u64 & 0xffff)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_v4(&s, &d, proto, len),
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_v6(&s, &d, proto, len),
        _ => panic!("mixed address families"),
    }
}

/// An IPv4 header (with `options`, a multiple of 4 bytes) for a payload of
/// `payload_len` bytes; `frag_field` is the flags + fragment offset word.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
    tos: u8,
    ident: u16,
    frag_field: u16,
    ttl: u8,
    options: &[u8],
) -> Vec<u8> {
    assert!(options.len() % 4 == 0 && options.len() <= 40);
    let hlen = 20 + options.len();
    let total = u16::try_from(hlen + payload_len).expect("IPv4 packet too long");
    let mut h = Vec::with_capacity(hlen);
    h.push(0x40 | (hlen / 4) as u8);
    h.push(tos);
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&ident.to_be_bytes());
    h.extend_from_slice(&frag_field.to_be_bytes());
    h.push(ttl);
    h.push(protocol);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    let ck = finish_checksum(sum_words(&h));
    h[10..12].copy_from_slice(&ck.to_be_bytes());
    h
}

/// A fixed IPv6 header.
pub(crate) fn ipv6_header(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload_len: u16,
    traffic_class: u8,
    flow_label: u32,
    hop_limit: u8,
) -> [u8; 40] {
    let mut h = [0u8; 40];
    let first = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0xf_ffff);
    h[0..4].copy_from_slice(&first.to_be_bytes());
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = next_header;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// A TCP segment with a correct checksum (`options.len()` a multiple of 4, ≤ 40).
#[allow(clippy::too_many_arguments)]
pub(crate) fn tcp_segment(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(options.len() % 4 == 0 && options.len() <= 40);
    let hlen = 20 + options.len();
    let mut s = Vec::with_capacity(hlen + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.push(((hlen / 4) as u8) << 4);
    s.push(flags);
    s.extend_from_slice(&window.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    s.extend_from_slice(options);
    s.extend_from_slice(payload);
    let ck = finish_checksum(pseudo(src, dst, IPPROTO_TCP, s.len()) + sum_words(&s));
    s[16..18].copy_from_slice(&ck.to_be_bytes());
    s
}

/// A UDP datagram with a correct (never zero) checksum.
pub(crate) fn udp_datagram(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("UDP datagram too long");
    let mut d = Vec::with_capacity(usize::from(len));
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    let mut ck = finish_checksum(pseudo(src, dst, IPPROTO_UDP, d.len()) + sum_words(&d));
    if ck == 0 {
        ck = 0xffff;
    }
    d[6..8].copy_from_slice(&ck.to_be_bytes());
    d
}
