//! `lb-testkit`: a small, deterministic traffic generator and pcap helpers.
//!
//! This crate is an *independent oracle* for the load balancer's tests and
//! benchmarks: it builds Ethernet frames byte by byte (it does not depend on
//! `lb-core`), computes every checksum itself, and reports, for each frame,
//! what a correct parser should find in it ([`Expected`]).
//!
//! ```
//! use lb_testkit::{FrameKind, MixConfig, TrafficGenerator};
//!
//! let mut gen = TrafficGenerator::new(42, MixConfig::realistic());
//! let frames = gen.take(100);
//! assert_eq!(frames.len(), 100);
//! let syn = gen.frame_of_kind(FrameKind::Ipv4Tcp);
//! assert_eq!(syn.expected.protocol, 6);
//!
//! let mut pcap = Vec::new();
//! lb_testkit::write_pcap(&mut pcap, frames.iter().map(|f| &f.bytes)).unwrap();
//! let back = lb_testkit::read_pcap(&pcap[..]).unwrap();
//! assert_eq!(back.len(), 100);
//! ```
//!
//! Frames are not padded to the 60-byte Ethernet minimum unless
//! [`TrafficGenerator::with_min_frame_padding`] asks for it, so by default
//! `bytes.len() == l3_offset + IP total length`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub use pcap_file::PcapError;

pub mod oracle;
mod wire;
use wire::*;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// Whether a frame carries an IP fragment, and which one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragmentKind {
    /// Not a fragment.
    None,
    /// First fragment (offset 0, more-fragments set): it carries the L4 header.
    First,
    /// A later fragment (offset > 0): no L4 header.
    Later,
}

/// The kinds of frames the generator can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// IPv4 (20-byte header) + TCP.
    Ipv4Tcp,
    /// IPv4 (20-byte header) + UDP.
    Ipv4Udp,
    /// IPv6 + TCP.
    Ipv6Tcp,
    /// IPv6 + UDP.
    Ipv6Udp,
    /// IPv4 header with options (IHL 6..=15) + TCP.
    Ipv4TcpOptions,
    /// One fragment (first or later) of a fragmented IPv4 UDP/TCP datagram.
    Ipv4Fragment,
    /// IPv6 with Hop-by-Hop / Destination Options / Routing headers + TCP/UDP.
    Ipv6ExtHeaders,
    /// One fragment (first or later) of a fragmented IPv6 UDP/TCP datagram.
    Ipv6Fragment,
    /// ICMPv4 echo request or reply.
    Icmpv4Echo,
    /// ICMPv4 destination unreachable / time exceeded quoting a TCP/UDP packet.
    Icmpv4Error,
    /// ICMPv6 echo request or reply.
    Icmpv6Echo,
    /// ICMPv6 packet too big / destination unreachable quoting a TCP/UDP packet.
    Icmpv6Error,
}

impl FrameKind {
    /// Every kind, in declaration order.
    pub const ALL: [FrameKind; 12] = [
        FrameKind::Ipv4Tcp,
        FrameKind::Ipv4Udp,
        FrameKind::Ipv6Tcp,
        FrameKind::Ipv6Udp,
        FrameKind::Ipv4TcpOptions,
        FrameKind::Ipv4Fragment,
        FrameKind::Ipv6ExtHeaders,
        FrameKind::Ipv6Fragment,
        FrameKind::Icmpv4Echo,
        FrameKind::Icmpv4Error,
        FrameKind::Icmpv6Echo,
        FrameKind::Icmpv6Error,
    ];

    /// A short stable name (`"ipv4-tcp"`, ...), e.g. for reports.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Ipv4Tcp => "ipv4-tcp",
            FrameKind::Ipv4Udp => "ipv4-udp",
            FrameKind::Ipv6Tcp => "ipv6-tcp",
            FrameKind::Ipv6Udp => "ipv6-udp",
            FrameKind::Ipv4TcpOptions => "ipv4-tcp-options",
            FrameKind::Ipv4Fragment => "ipv4-fragment",
            FrameKind::Ipv6ExtHeaders => "ipv6-ext-headers",
            FrameKind::Ipv6Fragment => "ipv6-fragment",
            FrameKind::Icmpv4Echo => "icmpv4-echo",
            FrameKind::Icmpv4Error => "icmpv4-error",
            FrameKind::Icmpv6Echo => "icmpv6-echo",
            FrameKind::Icmpv6Error => "icmpv6-error",
        }
    }

    /// Whether the frame is IPv6.
    pub fn is_ipv6(self) -> bool {
        matches!(
            self,
            FrameKind::Ipv6Tcp
                | FrameKind::Ipv6Udp
                | FrameKind::Ipv6ExtHeaders
                | FrameKind::Ipv6Fragment
                | FrameKind::Icmpv6Echo
                | FrameKind::Icmpv6Error
        )
    }
}

/// The flow of the packet quoted inside an ICMP error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotedFlow {
    /// Source address of the quoted (original) packet.
    pub src: IpAddr,
    /// Destination address of the quoted packet.
    pub dst: IpAddr,
    /// IP protocol of the quoted packet (6 or 17).
    pub protocol: u8,
    /// Source port of the quoted packet.
    pub src_port: u16,
    /// Destination port of the quoted packet.
    pub dst_port: u16,
}

/// What an independent reader should find in the frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Expected {
    /// Outer IP source address.
    pub src: IpAddr,
    /// Outer IP destination address.
    pub dst: IpAddr,
    /// IP protocol of the L4 header (6, 17, 1, 58) — after any IPv6 extension
    /// headers, and also for fragments.
    pub protocol: u8,
    /// TCP/UDP source port; 0 for ICMP and for non-first fragments.
    pub src_port: u16,
    /// TCP/UDP destination port; 0 for ICMP and for non-first fragments.
    pub dst_port: u16,
    /// VLAN ids, outermost first (0, 1 or 2 tags).
    pub vlans: Vec<u16>,
    /// Fragment position.
    pub fragment: FragmentKind,
    /// TCP flags byte (CWR..FIN); 0 if not TCP or not visible (later fragments).
    pub tcp_flags: u8,
    /// `(type, code)` for ICMP frames.
    pub icmp_type: Option<(u8, u8)>,
    /// For ICMP errors: the flow of the quoted (inner) packet.
    pub quoted: Option<QuotedFlow>,
    /// Byte offset of the IP header in the frame.
    pub l3_offset: usize,
    /// Byte offset of the L4 (TCP/UDP/ICMP) header; `None` for non-first fragments.
    pub l4_offset: Option<usize>,
}

/// A generated Ethernet frame and what it should parse to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFrame {
    /// The kind that was asked for.
    pub kind: FrameKind,
    /// The frame, starting at the Ethernet destination MAC (no FCS).
    pub bytes: Vec<u8>,
    /// What a parser should find in it.
    pub expected: Expected,
}

/// Relative weights of each frame kind and other knobs of the traffic mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixConfig {
    /// Relative weight of each kind; kinds not listed (or with weight 0) are never drawn.
    pub weights: Vec<(FrameKind, u32)>,
    /// Percentage of frames with one 802.1Q tag.
    pub vlan_single_pct: u8,
    /// Percentage of frames with two tags (QinQ: outer 0x88a8, inner 0x8100).
    pub vlan_double_pct: u8,
    /// L4 payload sizes drawn uniformly (repeat an entry to weigh it);
    /// capped so that the IP packet fits a 1500-byte MTU.
    pub payload_sizes: Vec<usize>,
    /// Number of distinct client flows (5-tuples) to draw from (at least 1 is used).
    pub flows: usize,
}

impl MixConfig {
    /// A datacenter-like mix: mostly IPv4 TCP, then UDP and IPv6, some VLAN
    /// tagged frames, a few fragments, ICMP and extension headers.
    pub fn realistic() -> Self {
        MixConfig {
            weights: vec![
                (FrameKind::Ipv4Tcp, 570),
                (FrameKind::Ipv4Udp, 150),
                (FrameKind::Ipv6Tcp, 120),
                (FrameKind::Ipv6Udp, 50),
                (FrameKind::Ipv4TcpOptions, 10),
                (FrameKind::Ipv4Fragment, 20),
                (FrameKind::Ipv6ExtHeaders, 15),
                (FrameKind::Ipv6Fragment, 10),
                (FrameKind::Icmpv4Echo, 20),
                (FrameKind::Icmpv4Error, 15),
                (FrameKind::Icmpv6Echo, 10),
                (FrameKind::Icmpv6Error, 10),
            ],
            vlan_single_pct: 10,
            vlan_double_pct: 3,
            // IMIX-ish: many header-only segments, then small, medium, full-size.
            payload_sizes: vec![0, 0, 0, 0, 64, 64, 64, 512, 512, 1400, 1400, 1400],
            flows: 1024,
        }
    }

    /// Every kind with equal weight (and more VLAN tags), for coverage.
    pub fn uniform() -> Self {
        MixConfig {
            weights: FrameKind::ALL.iter().map(|&k| (k, 1)).collect(),
            vlan_single_pct: 25,
            vlan_double_pct: 25,
            payload_sizes: vec![0, 64, 512, 1400],
            flows: 256,
        }
    }
}

/// IPv4 VIPs the generated clients talk to.
pub const VIPS_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(20, 50, 60, 10),
    Ipv4Addr::new(20, 50, 60, 11),
    Ipv4Addr::new(20, 50, 60, 12),
    Ipv4Addr::new(20, 50, 60, 13),
];

/// IPv6 VIPs the generated clients talk to.
pub const VIPS_V6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x12),
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x13),
];

const TCP_SERVICE_PORTS: [u16; 8] = [80, 443, 443, 443, 8080, 22, 3389, 8443];
const UDP_SERVICE_PORTS: [u16; 6] = [53, 53, 443, 123, 4500, 5060];

// TCP flags
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const MTU: usize = 1500;

// ---------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------

/// SplitMix64: tiny, fast, good enough for test traffic, fully deterministic.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn range_usize(&mut self, lo: usize, hi: usize) -> usize {
        self.range(lo as u64, hi as u64) as usize
    }
    fn pct(&mut self, p: u32) -> bool {
        self.below(100) < u64::from(p)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Flow {
    client_v4: Ipv4Addr,
    client_v6: Ipv6Addr,
    client_port: u16,
    vip: usize,
    tcp_port: u16,
    udp_port: u16,
}

/// Endpoints of one packet (already oriented).
#[derive(Debug, Clone, Copy)]
struct Endpoints {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    /// client → VIP?
    forward: bool,
}

/// The network-layer part of a frame plus what it means.
#[derive(Debug, Clone)]
struct L3 {
    bytes: Vec<u8>,
    ipv6: bool,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    fragment: FragmentKind,
    tcp_flags: u8,
    icmp_type: Option<(u8, u8)>,
    quoted: Option<QuotedFlow>,
    l4_rel: Option<usize>,
}

/// Deterministic generator of Ethernet frames (same seed and mix → same frames).
#[derive(Debug, Clone)]
pub struct TrafficGenerator {
    rng: Rng,
    mix: MixConfig,
    total_weight: u64,
    flows: Vec<Flow>,
    pad_min_frame: bool,
}

impl TrafficGenerator {
    /// A generator seeded with `seed`, drawing frames according to `mix`.
    pub fn new(seed: u64, mix: MixConfig) -> Self {
        let mut rng = Rng(seed ^ 0x6c62_2d74_6573_746b); // "lb-testk"
        let n = mix.flows.max(1);
        let mut flows = Vec::with_capacity(n);
        let mut seen = HashSet::with_capacity(n);
        while flows.len() < n {
            // Clients live in 198.18.0.0/15 (benchmarking range) and
            // 2001:db8:c000::/48 (documentation range).
            let v4 = 0xC612_0000u32 | (rng.u32() & 0x1_ffff);
            let client_v4 = Ipv4Addr::from(v4);
            let mut low = [0u8; 10];
            rng.fill(&mut low);
            low[9] |= 1;
            let mut v6 = [0u8; 16];
            v6[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xc0, 0x00]);
            v6[6..].copy_from_slice(&low);
            let client_port = rng.range(1024, 65535) as u16;
            if !seen.insert((v4, client_port)) {
                continue;
            }
            flows.push(Flow {
                client_v4,
                client_v6: Ipv6Addr::from(v6),
                client_port,
                vip: rng.below(VIPS_V4.len() as u64) as usize,
                tcp_port: rng.pick(&TCP_SERVICE_PORTS),
                udp_port: rng.pick(&UDP_SERVICE_PORTS),
            });
        }
        let total_weight = mix.weights.iter().map(|&(_, w)| u64::from(w)).sum();
        TrafficGenerator { rng, mix, total_weight, flows, pad_min_frame: false }
    }

    /// Zero-pad frames shorter than 60 bytes to the Ethernet minimum, as a NIC
    /// delivers them (the IP length fields are unchanged, so parsers must use them).
    pub fn with_min_frame_padding(mut self, pad: bool) -> Self {
        self.pad_min_frame = pad;
        self
    }

    /// The next frame, with its kind drawn from the mix weights
    /// (uniformly over all kinds if every weight is 0).
    pub fn next_frame(&mut self) -> GeneratedFrame {
        let kind = if self.total_weight == 0 {
            self.rng.pick(&FrameKind::ALL)
        } else {
            let mut r = self.rng.below(self.total_weight);
            let mut chosen = self.mix.weights[0].0;
            for &(k, w) in &self.mix.weights {
                if r < u64::from(w) {
                    chosen = k;
                    break;
                }
                r -= u64::from(w);
            }
            chosen
        };
        self.frame_of_kind(kind)
    }

    /// One frame of `kind` (random flow, direction, VLAN tags and payload).
    pub fn frame_of_kind(&mut self, kind: FrameKind) -> GeneratedFrame {
        let l3 = match kind {
            FrameKind::Ipv4Tcp => self.plain(false, IPPROTO_TCP, false),
            FrameKind::Ipv4Udp => self.plain(false, IPPROTO_UDP, false),
            FrameKind::Ipv6Tcp => self.plain(true, IPPROTO_TCP, false),
            FrameKind::Ipv6Udp => self.plain(true, IPPROTO_UDP, false),
            FrameKind::Ipv4TcpOptions => self.plain(false, IPPROTO_TCP, true),
            FrameKind::Ipv6ExtHeaders => {
                let proto = if self.rng.pct(50) { IPPROTO_TCP } else { IPPROTO_UDP };
                self.plain(true, proto, true)
            }
            FrameKind::Ipv4Fragment | FrameKind::Ipv6Fragment => {
                let mut frags = self.fragments(kind == FrameKind::Ipv6Fragment);
                let idx = if self.rng.pct(50) { 0 } else { self.rng.range_usize(1, frags.len() - 1) };
                frags.swap_remove(idx)
            }
            FrameKind::Icmpv4Echo => self.icmp_echo(false),
            FrameKind::Icmpv6Echo => self.icmp_echo(true),
            FrameKind::Icmpv4Error => self.icmp_error(false),
            FrameKind::Icmpv6Error => self.icmp_error(true),
        };
        let link = self.link_header(l3.ipv6);
        self.finish(kind, link, l3)
    }

    /// Every fragment, in order, of one fragmented UDP/TCP datagram (IPv4 or
    /// IPv6), all with the same Ethernet/VLAN header. The first one carries
    /// the L4 header, whose checksum covers the whole reassembled datagram.
    /// Each frame's `kind` is `Ipv4Fragment` or `Ipv6Fragment`.
    pub fn fragmented_datagram(&mut self, ipv6: bool) -> Vec<GeneratedFrame> {
        let kind = if ipv6 { FrameKind::Ipv6Fragment } else { FrameKind::Ipv4Fragment };
        let frags = self.fragments(ipv6);
        let link = self.link_header(ipv6);
        frags.into_iter().map(|l3| self.finish(kind, link.clone(), l3)).collect()
    }

    /// `n` frames from [`next_frame`](Self::next_frame).
    pub fn take(&mut self, n: usize) -> Vec<GeneratedFrame> {
        (0..n).map(|_| self.next_frame()).collect()
    }

    // -- building blocks ---------------------------------------------------

    fn finish(&mut self, kind: FrameKind, link: (Vec<u8>, Vec<u16>), l3: L3) -> GeneratedFrame {
        let (mut bytes, vlans) = link;
        let l3_offset = bytes.len();
        bytes.extend_from_slice(&l3.bytes);
        if self.pad_min_frame && bytes.len() < 60 {
            bytes.resize(60, 0);
        }
        GeneratedFrame {
            kind,
            bytes,
            expected: Expected {
                src: l3.src,
                dst: l3.dst,
                protocol: l3.protocol,
                src_port: l3.src_port,
                dst_port: l3.dst_port,
                vlans,
                fragment: l3.fragment,
                tcp_flags: l3.tcp_flags,
                icmp_type: l3.icmp_type,
                quoted: l3.quoted,
                l3_offset,
                l4_offset: l3.l4_rel.map(|o| l3_offset + o),
            },
        }
    }

    fn mac(&mut self) -> [u8; 6] {
        let mut m = [0u8; 6];
        self.rng.fill(&mut m);
        m[0] = (m[0] & 0xfe) | 0x02; // unicast, locally administered
        m
    }

    /// Ethernet header (with VLAN tags) up to and including the ethertype.
    fn link_header(&mut self, ipv6: bool) -> (Vec<u8>, Vec<u16>) {
        let mut b = Vec::with_capacity(22);
        let dst = self.mac();
        let src = self.mac();
        b.extend_from_slice(&dst);
        b.extend_from_slice(&src);
        let r = self.rng.below(100) as u32;
        let single = u32::from(self.mix.vlan_single_pct);
        let double = u32::from(self.mix.vlan_double_pct);
        let tags = if r < double {
            2
        } else if r < double + single {
            1
        } else {
            0
        };
        let mut vlans = Vec::with_capacity(tags);
        for i in 0..tags {
            let tpid: u16 = if tags == 2 && i == 0 { 0x88a8 } else { 0x8100 };
            let vid = self.rng.range(1, 4094) as u16;
            let pcp = self.rng.below(8) as u16;
            b.extend_from_slice(&tpid.to_be_bytes());
            b.extend_from_slice(&((pcp << 13) | vid).to_be_bytes());
            vlans.push(vid);
        }
        let ethertype: u16 = if ipv6 { 0x86dd } else { 0x0800 };
        b.extend_from_slice(&ethertype.to_be_bytes());
        (b, vlans)
    }

    fn endpoints(&mut self, ipv6: bool, protocol: u8, forward_pct: u32) -> Endpoints {
        let f = self.flows[self.rng.below(self.flows.len() as u64) as usize];
        let (client, vip) = if ipv6 {
            (IpAddr::V6(f.client_v6), IpAddr::V6(VIPS_V6[f.vip]))
        } else {
            (IpAddr::V4(f.client_v4), IpAddr::V4(VIPS_V4[f.vip]))
        };
        let service = if protocol == IPPROTO_UDP { f.udp_port } else { f.tcp_port };
        let forward = self.rng.pct(forward_pct);
        if forward {
            Endpoints { src: client, dst: vip, sport: f.client_port, dport: service, forward }
        } else {
            Endpoints { src: vip, dst: client, sport: service, dport: f.client_port, forward }
        }
    }

    fn router(&mut self, ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, self.rng.range(1, 0xfffe) as u16))
        } else {
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, self.rng.range(1, 254) as u8))
        }
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let want = if self.mix.payload_sizes.is_empty() { 0 } else { self.rng.pick(&self.mix.payload_sizes) };
        let mut p = vec![0u8; want.min(max)];
        self.rng.fill(&mut p);
        p
    }

    fn tcp_flags(&mut self, forward: bool) -> u8 {
        let r = self.rng.below(100);
        match r {
            0..=7 => {
                if forward {
                    SYN
                } else {
                    SYN | ACK
                }
            }
            8..=49 => ACK,
            50..=89 => PSH | ACK,
            90..=96 => FIN | ACK,
            _ => RST,
        }
    }

    /// TCP options (length a multiple of 4, at most 40) suited to `flags`.
    fn tcp_options(&mut self, flags: u8) -> Vec<u8> {
        let mut o = Vec::new();
        if flags & SYN != 0 {
            // Linux-like SYN options; sometimes fewer.
            let mss: u16 = self.rng.pick(&[1460, 1440, 1400, 8960]);
            o.extend_from_slice(&[2, 4]);
            o.extend_from_slice(&mss.to_be_bytes());
            match self.rng.below(3) {
                0 => {
                    // MSS, SACK_PERM, TS, NOP, WS  (20 bytes)
                    o.extend_from_slice(&[4, 2, 8, 10]);
                    o.extend_from_slice(&self.rng.u32().to_be_bytes());
                    let ecr = if flags & ACK != 0 { self.rng.u32() } else { 0 };
                    o.extend_from_slice(&ecr.to_be_bytes());
                    o.extend_from_slice(&[1, 3, 3, self.rng.range(0, 14) as u8]);
                }
                1 => {
                    // MSS, NOP, WS, NOP, NOP, SACK_PERM (12 bytes)
                    o.extend_from_slice(&[1, 3, 3, self.rng.range(0, 14) as u8, 1, 1, 4, 2]);
                }
                _ => {} // MSS only
            }
            return o;
        }
        if flags & RST != 0 {
            return o;
        }
        match self.rng.below(10) {
            0..=3 => {}
            4..=7 => self.push_ts(&mut o),
            8 => {
                // TS + SACK blocks: up to 40 bytes (data offset 15).
                self.push_ts(&mut o);
                let blocks = self.rng.range(1, 3) as usize;
                o.extend_from_slice(&[1, 1, 5, (2 + 8 * blocks) as u8]);
                let mut edge = self.rng.u32();
                for _ in 0..blocks {
                    o.extend_from_slice(&edge.to_be_bytes());
                    edge = edge.wrapping_add(1448);
                    o.extend_from_slice(&edge.to_be_bytes());
                    edge = edge.wrapping_add(2896);
                }
            }
            _ => {
                // Some NOPs and an end-of-options list, padding to a random length.
                let words = self.rng.range(1, 10) as usize;
                o.resize(words * 4 - 1, 1);
                o.push(0);
            }
        }
        o
    }

    fn push_ts(&mut self, o: &mut Vec<u8>) {
        o.extend_from_slice(&[1, 1, 8, 10]);
        o.extend_from_slice(&self.rng.u32().to_be_bytes());
        o.extend_from_slice(&self.rng.u32().to_be_bytes());
    }

    /// A full TCP segment or UDP datagram (checksum computed) plus the TCP flags.
    /// `room` is the maximum L4 length allowed (header included).
    fn l4_segment(
        &mut self,
        ep: &Endpoints,
        protocol: u8,
        room: usize,
        payload_override: Option<usize>,
    ) -> (Vec<u8>, u8) {
        if protocol == IPPROTO_TCP {
            let flags = self.tcp_flags(ep.forward);
            let options = self.tcp_options(flags);
            let hdr_len = 20 + options.len();
            let payload = match payload_override {
                Some(n) => {
                    let mut p = vec![0u8; n.saturating_sub(hdr_len)];
                    self.rng.fill(&mut p);
                    p
                }
                None if flags & (SYN | RST) != 0 => Vec::new(),
                None => self.payload(room.saturating_sub(hdr_len)),
            };
            let seq = self.rng.u32();
            let ack = if flags & ACK != 0 { self.rng.u32() } else { 0 };
            let window = self.rng.pick(&[64240u16, 65535, 502, 1024, 29200, 0xfaf0]);
            let seg = tcp_segment(ep.src, ep.dst, ep.sport, ep.dport, seq, ack, flags, window, &options, &payload);
            (seg, flags)
        } else {
            let payload = match payload_override {
                Some(n) => {
                    let mut p = vec![0u8; n.saturating_sub(8)];
                    self.rng.fill(&mut p);
                    p
                }
                None => self.payload(room.saturating_sub(8)),
            };
            (udp_datagram(ep.src, ep.dst, ep.sport, ep.dport, &payload), 0)
        }
    }

    fn ipv4_fields(&mut self) -> (u8, u16, u8) {
        let tos = self.rng.pick(&[0u8, 0, 0, 0, 0x02, 0x28, 0xb8, 0x01]);
        let ttl = self.rng.pick(&[64u8, 128, 255]) - self.rng.below(20) as u8;
        (tos, self.rng.u16(), ttl)
    }

    fn ipv6_fields(&mut self) -> (u8, u32, u8) {
        let tc = self.rng.pick(&[0u8, 0, 0, 0x02, 0x28, 0xb8]);
        let flow = self.rng.u32() & 0xf_ffff;
        let hop = self.rng.pick(&[64u8, 128, 255]) - self.rng.below(20) as u8;
        (tc, flow, hop)
    }

    /// Random IPv4 options of exactly `len` bytes (a multiple of 4, 4..=40).
    fn ipv4_options(&mut self, len: usize) -> Vec<u8> {
        let mut o = Vec::with_capacity(len);
        if len >= 8 && self.rng.pct(50) {
            o.extend_from_slice(&[0x94, 4, 0, 0]); // Router Alert
        }
        let rest = len - o.len();
        if rest >= 7 && self.rng.pct(80) {
            // Record Route with k empty slots, pointer at the first one.
            let k = self.rng.range(1, ((rest - 3) / 4) as u64) as usize;
            o.extend_from_slice(&[7, (3 + 4 * k) as u8, 4]);
            o.resize(o.len() + 4 * k, 0);
        }
        // Pad with NOPs, ending with an End-of-Options-List when there is room.
        while o.len() < len {
            if o.len() + 1 == len && self.rng.pct(50) {
                o.push(0);
            } else {
                o.push(1);
            }
        }
        o
    }

    /// An unfragmented packet (optionally IPv4 options / IPv6 extension headers).
    fn plain(&mut self, ipv6: bool, protocol: u8, extras: bool) -> L3 {
        let ep = self.endpoints(ipv6, protocol, 85);
        let mut bytes;
        let l4_rel;
        let flags;
        if ipv6 {
            let exts = if extras { self.ipv6_ext_chain(protocol, ep.dst) } else { (Vec::new(), protocol) };
            let (ext_bytes, first_nh) = exts;
            l4_rel = 40 + ext_bytes.len();
            let (seg, f) = self.l4_segment(&ep, protocol, MTU - l4_rel, None);
            flags = f;
            let (tc, fl, hop) = self.ipv6_fields();
            bytes = ipv6_header(v6(ep.src), v6(ep.dst), first_nh, (ext_bytes.len() + seg.len()) as u16, tc, fl, hop)
                .to_vec();
            bytes.extend_from_slice(&ext_bytes);
            bytes.extend_from_slice(&seg);
        } else {
            let options = if extras {
                let ihl = self.rng.range(6, 15) as usize;
                self.ipv4_options((ihl - 5) * 4)
            } else {
                Vec::new()
            };
            l4_rel = 20 + options.len();
            let (seg, f) = self.l4_segment(&ep, protocol, MTU - l4_rel, None);
            flags = f;
            let (tos, id, ttl) = self.ipv4_fields();
            let df = protocol == IPPROTO_TCP || self.rng.pct(50);
            let frag_field = if df { 0x4000 } else { 0 };
            bytes = ipv4_header(v4(ep.src), v4(ep.dst), protocol, seg.len(), tos, id, frag_field, ttl, &options);
            bytes.extend_from_slice(&seg);
        }
        L3 {
            bytes,
            ipv6,
            src: ep.src,
            dst: ep.dst,
            protocol,
            src_port: ep.sport,
            dst_port: ep.dport,
            fragment: FragmentKind::None,
            tcp_flags: flags,
            icmp_type: None,
            quoted: None,
            l4_rel: Some(l4_rel),
        }
    }

    /// A non-empty random subset of HbH / DestOpts / Routing in canonical
    /// order, ending with next header = `protocol`.
    /// Returns the chain and the first next-header value for the IPv6 header.
    fn ipv6_ext_chain(&mut self, protocol: u8, final_dst: IpAddr) -> (Vec<u8>, u8) {
        let mut which = 0;
        while which == 0 {
            which = self.rng.below(8);
        }
        let mut headers: Vec<(u8, Vec<u8>)> = Vec::new(); // (own type, body incl. 2-byte prefix placeholder)
        if which & 1 != 0 {
            let mut body = Vec::new();
            if self.rng.pct(50) {
                body.extend_from_slice(&[0x05, 2, 0, 0]); // Router Alert (MLD)
            }
            let extra = self.rng.range(0, 2) as usize * 8;
            headers.push((IPPROTO_HOPOPTS, pad_options(body, extra)));
        }
        if which & 2 != 0 {
            let mut body = Vec::new();
            if self.rng.pct(60) {
                body.extend_from_slice(&[0x04, 1, self.rng.range(0, 4) as u8]); // Tunnel Encap Limit
            }
            let extra = self.rng.range(0, 2) as usize * 8;
            headers.push((IPPROTO_DSTOPTS, pad_options(body, extra)));
        }
        if which & 4 != 0 {
            let rtype = self.rng.pick(&[0u8, 2, 4]);
            let n = if rtype == 2 { 1 } else { self.rng.range(1, 3) as usize };
            // [next header, hdr ext len, routing type, segments left = 0]
            let mut body = vec![0, 0, rtype, 0];
            if rtype == 4 {
                // SRH: last entry, flags, tag
                body.extend_from_slice(&[(n - 1) as u8, 0, 0, 0]);
            } else {
                body.extend_from_slice(&[0, 0, 0, 0]);
            }
            for i in 0..n {
                let addr = if i == 0 && rtype == 4 {
                    v6(final_dst) // SRH segment[0] is the final segment
                } else {
                    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, self.rng.range(1, 0xfffe) as u16)
                };
                body.extend_from_slice(&addr.octets());
            }
            headers.push((IPPROTO_ROUTING, body));
        }
        let first = headers[0].0;
        let mut out = Vec::new();
        for i in 0..headers.len() {
            let next = headers.get(i + 1).map_or(protocol, |h| h.0);
            let body = &mut headers[i].1;
            debug_assert_eq!(body.len() % 8, 0);
            body[0] = next;
            body[1] = (body.len() / 8 - 1) as u8;
            out.extend_from_slice(body);
        }
        (out, first)
    }

    /// All fragments of one datagram, as L3 packets.
    fn fragments(&mut self, ipv6: bool) -> Vec<L3> {
        let protocol = if self.rng.pct(75) { IPPROTO_UDP } else { IPPROTO_TCP };
        let ep = self.endpoints(ipv6, protocol, 85);
        let l4_len = self.rng.range_usize(200, 4000);
        let (seg, flags) = self.l4_segment(&ep, protocol, l4_len, Some(l4_len));
        // Fragment data size: a multiple of 8, fitting the MTU, and smaller than
        // the datagram so that there are at least two fragments.
        let hdr = if ipv6 { 48 } else { 20 };
        let max_chunk = ((MTU - hdr) / 8) * 8;
        let odd = 8 * self.rng.range_usize(9, 100);
        let mut chunk = self.rng.pick(&[max_chunk, 1232, 1024, 512, odd]);
        chunk = chunk.min(max_chunk).min(((seg.len() - 1) / 8) * 8);
        let chunk = chunk.max(64);
        let ident = self.rng.u32();
        let (tos, _, ttl) = self.ipv4_fields();
        let (tc, fl, hop) = self.ipv6_fields();
        let mut out = Vec::new();
        let mut off = 0;
        while off < seg.len() {
            let end = (off + chunk).min(seg.len());
            let more = end < seg.len();
            let data = &seg[off..end];
            let first = off == 0;
            let bytes = if ipv6 {
                let mut b = ipv6_header(v6(ep.src), v6(ep.dst), IPPROTO_FRAGMENT, (8 + data.len()) as u16, tc, fl, hop)
                    .to_vec();
                let fo = ((off / 8) as u16) << 3 | u16::from(more);
                b.extend_from_slice(&[protocol, 0]);
                b.extend_from_slice(&fo.to_be_bytes());
                b.extend_from_slice(&ident.to_be_bytes());
                b.extend_from_slice(data);
                b
            } else {
                let frag_field = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
                let mut b =
                    ipv4_header(v4(ep.src), v4(ep.dst), protocol, data.len(), tos, ident as u16, frag_field, ttl, &[]);
                b.extend_from_slice(data);
                b
            };
            out.push(L3 {
                bytes,
                ipv6,
                src: ep.src,
                dst: ep.dst,
                protocol,
                src_port: if first { ep.sport } else { 0 },
                dst_port: if first { ep.dport } else { 0 },
                fragment: if first { FragmentKind::First } else { FragmentKind::Later },
                tcp_flags: if first { flags } else { 0 },
                icmp_type: None,
                quoted: None,
                l4_rel: if first { Some(hdr) } else { None },
            });
            off = end;
        }
        out
    }

    fn icmp_echo(&mut self, ipv6: bool) -> L3 {
        let proto = if ipv6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
        let ep = self.endpoints(ipv6, proto, 70);
        let hdr = if ipv6 { 40 } else { 20 };
        let data = self.payload(MTU - hdr - 8);
        let (ty, code) = match (ipv6, ep.forward) {
            (false, true) => (8, 0),
            (false, false) => (0, 0),
            (true, true) => (128, 0),
            (true, false) => (129, 0),
        };
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&self.rng.u16().to_be_bytes());
        rest[2..].copy_from_slice(&(self.rng.below(1000) as u16).to_be_bytes());
        self.icmp_packet(ep.src, ep.dst, ty, code, rest, &data, None)
    }

    fn icmp_error(&mut self, ipv6: bool) -> L3 {
        let protocol = if self.rng.pct(60) { IPPROTO_TCP } else { IPPROTO_UDP };
        // Mostly: a VIP → client packet hit a problem and a router reports it
        // to the VIP. Otherwise a client → VIP packet, reported to the client.
        let ep = self.endpoints(ipv6, protocol, 25);
        let orig_len = self.rng.range_usize(if ipv6 { 1281 } else { 577 }, MTU);
        let hdr = if ipv6 { 40 } else { 20 };
        let (seg, _) = self.l4_segment(&ep, protocol, orig_len - hdr, Some(orig_len - hdr));
        let mut quote = if ipv6 {
            let (tc, fl, hop) = self.ipv6_fields();
            ipv6_header(v6(ep.src), v6(ep.dst), protocol, seg.len() as u16, tc, fl, hop).to_vec()
        } else {
            let (tos, id, ttl) = self.ipv4_fields();
            ipv4_header(v4(ep.src), v4(ep.dst), protocol, seg.len(), tos, id, 0x4000, ttl, &[])
        };
        quote.extend_from_slice(&seg[..8]);
        let (ty, code, rest): (u8, u8, [u8; 4]) = if ipv6 {
            if self.rng.pct(50) {
                let mtu = self.rng.range(1280, orig_len as u64 - 1) as u32;
                (2, 0, mtu.to_be_bytes())
            } else {
                (1, self.rng.pick(&[0u8, 1, 3, 4]), [0; 4])
            }
        } else {
            match self.rng.below(3) {
                0 => {
                    let mtu = self.rng.range(576, orig_len as u64 - 1) as u16;
                    let m = mtu.to_be_bytes();
                    (3, 4, [0, 0, m[0], m[1]])
                }
                1 => (3, 3, [0; 4]),
                _ => (11, 0, [0; 4]),
            }
        };
        let router = self.router(ipv6);
        let quoted = QuotedFlow { src: ep.src, dst: ep.dst, protocol, src_port: ep.sport, dst_port: ep.dport };
        self.icmp_packet(router, ep.src, ty, code, rest, &quote, Some(quoted))
    }

    #[allow(clippy::too_many_arguments)]
    fn icmp_packet(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        ty: u8,
        code: u8,
        rest: [u8; 4],
        body: &[u8],
        quoted: Option<QuotedFlow>,
    ) -> L3 {
        let ipv6 = src.is_ipv6();
        let mut icmp = Vec::with_capacity(8 + body.len());
        icmp.extend_from_slice(&[ty, code, 0, 0]);
        icmp.extend_from_slice(&rest);
        icmp.extend_from_slice(body);
        let (bytes, protocol, hdr) = if ipv6 {
            let ck = finish_checksum(pseudo_v6(&v6(src), &v6(dst), IPPROTO_ICMPV6, icmp.len()) + sum_words(&icmp));
            icmp[2..4].copy_from_slice(&ck.to_be_bytes());
            let (tc, fl, hop) = self.ipv6_fields();
            let mut b = ipv6_header(v6(src), v6(dst), IPPROTO_ICMPV6, icmp.len() as u16, tc, fl, hop).to_vec();
            b.extend_from_slice(&icmp);
            (b, IPPROTO_ICMPV6, 40)
        } else {
            let ck = finish_checksum(sum_words(&icmp));
            icmp[2..4].copy_from_slice(&ck.to_be_bytes());
            let (tos, id, ttl) = self.ipv4_fields();
            let mut b = ipv4_header(v4(src), v4(dst), IPPROTO_ICMP, icmp.len(), tos, id, 0, ttl, &[]);
            b.extend_from_slice(&icmp);
            (b, IPPROTO_ICMP, 20)
        };
        L3 {
            bytes,
            ipv6,
            src,
            dst,
            protocol,
            src_port: 0,
            dst_port: 0,
            fragment: FragmentKind::None,
            tcp_flags: 0,
            icmp_type: Some((ty, code)),
            quoted,
            l4_rel: Some(hdr),
        }
    }
}

/// Pads an IPv6 option area so that `2 + body` is a multiple of 8 (plus
/// `extra` bytes), using Pad1/PadN; returns the whole header with a 2-byte
/// placeholder prefix for next-header and length.
fn pad_options(body: Vec<u8>, extra: usize) -> Vec<u8> {
    let mut h = vec![0u8, 0];
    h.extend_from_slice(&body);
    let target = (h.len() + extra).div_ceil(8).max(1) * 8;
    let pad = target - h.len();
    match pad {
        0 => {}
        1 => h.push(0), // Pad1
        n => {
            h.push(1); // PadN
            h.push((n - 2) as u8);
            h.resize(target, 0);
        }
    }
    h
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("expected an IPv4 address"),
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!("expected an IPv6 address"),
    }
}

// ---------------------------------------------------------------------------
// pcap
// ---------------------------------------------------------------------------

/// Base timestamp of written captures (2023-11-14T22:13:20Z).
const PCAP_EPOCH_SECS: u64 = 1_700_000_000;

/// Writes `frames` as a classic pcap (Ethernet link type, microsecond
/// timestamps increasing by 10 µs per frame, little-endian).
pub fn write_pcap<W: std::io::Write>(
    w: W,
    frames: impl IntoIterator<Item = impl AsRef<[u8]>>,
) -> Result<(), PcapError> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::{DataLink, Endianness, TsResolution};
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
        snaplen: 65535,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(w, header)?;
    for (i, frame) in frames.into_iter().enumerate() {
        let data = frame.as_ref();
        let ts = Duration::from_secs(PCAP_EPOCH_SECS) + Duration::from_micros(10 * i as u64);
        let len = u32::try_from(data.len()).map_err(|_| PcapError::InvalidField("frame longer than u32::MAX"))?;
        writer.write_packet(&PcapPacket::new(ts, len, data))?;
    }
    let mut inner = writer.into_writer();
    inner.flush().map_err(PcapError::IoError)
}

/// Reads every frame of a classic pcap with the Ethernet link type.
pub fn read_pcap<R: std::io::Read>(r: R) -> Result<Vec<Vec<u8>>, PcapError> {
    use pcap_file::pcap::PcapReader;
    use pcap_file::DataLink;
    let mut reader = PcapReader::new(r)?;
    if reader.header().datalink != DataLink::ETHERNET {
        return Err(PcapError::InvalidField("pcap link type is not Ethernet"));
    }
    let mut out = Vec::new();
    while let Some(pkt) = reader.next_packet() {
        out.push(pkt?.data.into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
