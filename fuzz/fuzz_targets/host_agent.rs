//! The host agent (`lb_core::paths::HostAgent`) fed a sequence of operations over one fixed topology,
//! with a real MUX in front of it: arbitrary bytes from the fabric and from the backends, well-formed
//! frames built from templates (client → VIP through the MUX, responses, backend-initiated SNAT
//! connections, replies to SNAT ports, ICMP errors, fragments), optionally mutated, time moving on
//! (small steps and large jumps) and `expire` with random budgets.
//!
//! Topology (lb-fixtures' `two_hosts_scarce_snat`: the host tests' `two_hosts` with SNAT ports to run
//! out of): the agent runs on host A, which holds two IPv4 backends and one IPv6 backend (host B
//! holds one of each, so the MUX's backend tag and `NotForThisHost` matter).
//! IPv4 and IPv6 VIPs with port translation (80 → 8080), floating IP (81), UDP (53, 54 floating);
//! outbound rules with only 8 ports per backend (IPv4: over two addresses, so a backend can have two
//! blocks; IPv6: TCP only), so that blocks run dry, TCP shares ports and UDP is refused.
//!
//! Input layout (the op sequence stops at the first op whose arguments run past the end):
//!
//! | bytes | meaning                                                                                   |
//! |-------|-------------------------------------------------------------------------------------------|
//! | 0     | bit 0 return path Direct (else via the MUX); bit 1 answer SNAT exhaustion with a RST;     |
//! |       | bits 2-3 quarantine 0, 5, 60 or 86,400 s (the most); bits 4-5 flow capacity 8, 16, 64   |
//! |       | or 1000; bits 6-7 where the clock starts (see `STARTS`: time may wrap past `u32::MAX`)    |
//! | then  | ops: one opcode byte (`% 11`) and its arguments, see [`Op`]                               |
//!
//! Template ops start with a shape byte: bit 0 IPv6 (where the op does not fix the version); bits
//! 1-2 protocol (0, 1 as the op picks, 2 the other of TCP/UDP, 3 ICMP: an ICMP error for client
//! frames, an echo request otherwise); bits 3-4 fragment (0, 1 none, 2 first, 3 later); bit 5 an
//! 802.1Q tag; bit 6 a payload; bit 7 mutate (two more bytes: offset and XOR mask applied to the
//! frame as the host agent gets it). Then the TCP flags byte and the op's selectors.
//!
//! Invariants, after every op: no panic; a `Deliver`/`Transmit` range lies inside the buffer and
//! names a local backend; a frame from the fabric is transmitted only as a second chance, to another
//! host, unflagged; nothing is transmitted with a backend's (private) address as its source;
//! frames built from unmutated, unfragmented TCP/UDP templates leave with valid IP and L4 checksums;
//! every live connection has both its entries, each naming the other (fragment records aside); the
//! SNAT ports in use by each backend are exactly the distinct ports its live SNAT entries hold, at
//! most its block size, and the allocator counts one live reference per connection; no removal was
//! lost; every RST `expire` emits parses, has the RST flag and goes where it says. At the end,
//! `expire` at a time past every timeout with an unbounded budget empties the flow table and
//! releases every port: each allocation released exactly once.
//!
//! To follow a crashing input: `LB_FUZZ_TRACE=1 cargo +stable fuzz run -s none -a host_agent FILE`
//! prints every op, its verdict, the SNAT counters and the live flow entries.
#![no_main]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::OnceLock;

use lb_core::paths::host::{HostEgress, HostFlowKind};
use lb_core::paths::{backend_tag, HostAgent, HostNode, HostVerdict, Mux, MuxNode, ReturnPath, Verdict};
use lb_core::tables::FlowSlot;
use lb_core::wire::vxlan::decapsulate;
use lb_core::wire::{checksum, ip_proto, parse_flow_key, FlowKey, Fragment, IpVersion, TcpFlags, VxlanEncap};
use lb_fixtures::*;
use libfuzzer_sys::fuzz_target;

const PORTS_PER_BACKEND: u32 = 8;
/// The longest idle timeout of the configuration is 4 minutes; every entry is gone this long after it
/// was last seen (the flow table's limit is 255 minutes).
const FOREVER: u32 = 255 * 60 + 1;
/// Time never runs further than this from where it started: the flow table compares times as
/// serial numbers (RFC 1982), so an entry idle for 2^31 s or more would look as if its deadline were
/// still ahead.
const MAX_ELAPSED: u32 = 1 << 30;
/// Where the clock starts (header bits 6-7): early, mid-range, and just before it wraps.
const STARTS: [u32; 4] = [1000, (1 << 31) - 600, u32::MAX - 600, 1000];
/// How many recent delivered / transmitted flows the follow-up ops pick from.
const RECENT: usize = 16;

/// Opcodes (the opcode byte modulo 11) and their argument bytes.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Arbitrary bytes from the fabric: headroom, length, then that many bytes.
    RawFabric,
    /// Arbitrary bytes from a backend: headroom, length, then that many bytes.
    RawBackend,
    /// Arbitrary bytes as the inner frame of a VxLAN frame from the MUX to host A: VNI selector, tag
    /// selector, length, then that many bytes.
    RawInner,
    /// A client frame to a VIP, through the MUX: shape, flags, client, service, sequence.
    Client,
    /// A frame a backend sends on its own: shape, flags, backend, destination, ports, sequence.
    Backend,
    /// The next frame from the far end of a recently transmitted frame (a client going on with its
    /// connection, a remote end answering an SNAT connection), through the MUX: shape, flags, pick,
    /// sequence.
    ReplyToSent,
    /// A backend answering a recently delivered frame: shape, flags, pick, sequence.
    ReplyToDelivered,
    /// A remote end sending to an SNAT address and a port near the blocks, through the MUX: shape,
    /// flags, remote, port.
    SnatProbe,
    /// Time moves on by 0..=255 seconds; 1 byte.
    Tick,
    /// Time jumps; 1 byte: below 200 that many minutes, 200..=254 (the byte - 199) × 2^22 s, 255 as
    /// far as time goes (`MAX_ELAPSED` after the start).
    Jump,
    /// `expire` with a budget of the byte's buckets (255: unbounded); 1 byte.
    Expire,
}

const OPS: [Op; 11] = [
    Op::RawFabric,
    Op::RawBackend,
    Op::RawInner,
    Op::Client,
    Op::Backend,
    Op::ReplyToSent,
    Op::ReplyToDelivered,
    Op::SnatProbe,
    Op::Tick,
    Op::Jump,
    Op::Expire,
];

/// `LB_FUZZ_TRACE=1`: print every op, verdict and the flow table (to follow a crashing input).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("LB_FUZZ_TRACE").is_some_and(|v| v != "0"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// A well-formed frame to build: addresses (IPv4 in the first 4 bytes), ports, TCP fields, payload,
/// fragmentation, VLAN tag, and for ICMP errors the packet quoted.
#[derive(Debug, Clone, Default)]
struct Pkt {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: usize,
    /// 0 none, 1 first fragment, 2 later fragment (offset 8).
    frag: u8,
    ident: u16,
    vlan: Option<u16>,
    /// ICMP error quoting this packet (else an echo request for ICMP).
    quote: Option<Box<Pkt>>,
}

fn v4_16(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a);
    o
}

impl Pkt {
    fn icmp_proto(&self) -> u8 {
        if self.v6 {
            ip_proto::ICMPV6
        } else {
            ip_proto::ICMP
        }
    }

    fn pseudo(&self, proto: u8, len: usize) -> u32 {
        if self.v6 {
            checksum::pseudo_header_v6(&self.src, &self.dst, proto, len as u32)
        } else {
            let (s, d) = (
                [self.src[0], self.src[1], self.src[2], self.src[3]],
                [self.dst[0], self.dst[1], self.dst[2], self.dst[3]],
            );
            checksum::pseudo_header_v4(s, d, proto, len as u16)
        }
    }

    /// The L4 part (or, for a later fragment, its data), checksummed.
    fn l4(&self) -> Vec<u8> {
        let payload: Vec<u8> = (0..self.payload).map(|i| (i as u8).wrapping_mul(7) ^ 0x3c).collect();
        if self.frag == 2 {
            return payload;
        }
        match self.proto {
            ip_proto::TCP => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&self.sport.to_be_bytes());
                t[2..4].copy_from_slice(&self.dport.to_be_bytes());
                t[4..8].copy_from_slice(&self.seq.to_be_bytes());
                t[8..12].copy_from_slice(&self.ack.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = self.flags;
                t[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
                t.extend_from_slice(&payload);
                let c = checksum::transport(self.pseudo(ip_proto::TCP, t.len()), &t);
                t[16..18].copy_from_slice(&c.to_be_bytes());
                t
            }
            ip_proto::UDP => {
                let mut u = vec![0u8; 8];
                u[0..2].copy_from_slice(&self.sport.to_be_bytes());
                u[2..4].copy_from_slice(&self.dport.to_be_bytes());
                u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&payload);
                let c = match checksum::transport(self.pseudo(ip_proto::UDP, u.len()), &u) {
                    0 => 0xffff,
                    c => c,
                };
                u[6..8].copy_from_slice(&c.to_be_bytes());
                u
            }
            _ => {
                // ICMP: an error quoting a packet (its IP header and 8 bytes of L4), else an echo request.
                let mut m = vec![0u8; 8];
                match &self.quote {
                    Some(q) => {
                        m[0] = if self.v6 { 2 } else { 3 }; // packet too big / destination unreachable
                        m[1] = if self.v6 { 0 } else { 4 }; // fragmentation needed
                        m[6..8].copy_from_slice(&1400u16.to_be_bytes());
                        let ip = q.ip();
                        let quoted = if q.v6 { 40 + 8 } else { 20 + 8 };
                        m.extend_from_slice(&ip[..quoted.min(ip.len())]);
                    }
                    None => {
                        m[0] = if self.v6 { 128 } else { 8 };
                        m[4..6].copy_from_slice(&self.sport.to_be_bytes());
                        m[6..8].copy_from_slice(&(self.seq as u16).to_be_bytes());
                    }
                }
                m.extend_from_slice(&payload);
                let c = if self.v6 {
                    checksum::transport(self.pseudo(ip_proto::ICMPV6, m.len()), &m)
                } else {
                    checksum::finish(checksum::sum(&m))
                };
                m[2..4].copy_from_slice(&c.to_be_bytes());
                m
            }
        }
    }

    /// The IP packet.
    fn ip(&self) -> Vec<u8> {
        let proto = if matches!(self.proto, ip_proto::TCP | ip_proto::UDP) { self.proto } else { self.icmp_proto() };
        let l4 = self.l4();
        let mut p = Vec::with_capacity(48 + l4.len());
        if self.v6 {
            let ext = if self.frag != 0 { 8 } else { 0 };
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&((ext + l4.len()) as u16).to_be_bytes());
            p.push(if self.frag != 0 { ip_proto::IPV6_FRAGMENT } else { proto });
            p.push(64);
            p.extend_from_slice(&self.src);
            p.extend_from_slice(&self.dst);
            if self.frag != 0 {
                // Offset in 8-byte units (0 or 1) and More Fragments set.
                let off: u16 = if self.frag == 2 { 1 << 3 } else { 1 };
                p.extend_from_slice(&[proto, 0]);
                p.extend_from_slice(&off.to_be_bytes());
                p.extend_from_slice(&u32::from(self.ident).to_be_bytes());
            }
        } else {
            let frag: u16 = match self.frag {
                0 => 0x4000,
                1 => 0x2000,
                _ => 1,
            };
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            p.extend_from_slice(&self.ident.to_be_bytes());
            p.extend_from_slice(&frag.to_be_bytes());
            p.extend_from_slice(&[64, proto, 0, 0]);
            p.extend_from_slice(&self.src[..4]);
            p.extend_from_slice(&self.dst[..4]);
            let c = checksum::ipv4_header(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        p.extend_from_slice(&l4);
        p
    }

    /// The Ethernet frame.
    fn frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(96 + self.payload);
        f.extend_from_slice(&MUX_MAC.0);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(if self.v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        f.extend_from_slice(&self.ip());
        f
    }

    /// Whether the checksums of what comes out must verify (no mutation is checked separately).
    fn checkable(&self) -> bool {
        self.frag == 0 && matches!(self.proto, ip_proto::TCP | ip_proto::UDP)
    }
}

/// The first bytes of a template op: the frame's shape and TCP flags.
#[derive(Debug, Clone, Copy)]
struct Shape {
    v6: bool,
    /// 0, 1: as the op picks; 2: the other of TCP and UDP; 3: ICMP.
    proto: u8,
    frag: u8,
    vlan: bool,
    payload: bool,
    mutate: Option<(u8, u8)>,
    flags: u8,
}

impl Shape {
    fn read(r: &mut Reader) -> Option<Shape> {
        let s = r.byte()?;
        let flags = r.byte()?;
        let mutate = if s & 0x80 != 0 { Some((r.byte()?, r.byte()?)) } else { None };
        Some(Shape {
            v6: s & 1 != 0,
            proto: (s >> 1) & 3,
            frag: match (s >> 3) & 3 {
                2 => 1,
                3 => 2,
                _ => 0,
            },
            vlan: s & 0x20 != 0,
            payload: s & 0x40 != 0,
            mutate,
            flags,
        })
    }

    /// The template's protocol, given the op's.
    fn protocol(&self, natural: u8) -> u8 {
        match self.proto {
            0 | 1 => natural,
            2 if natural == ip_proto::TCP => ip_proto::UDP,
            2 => ip_proto::TCP,
            _ => ip_proto::ICMP,
        }
    }

    fn apply(&self, p: &mut Pkt, seq: u8) {
        p.flags = self.flags;
        p.seq = u32::from(seq).wrapping_mul(0x0101_0101);
        p.ack = p.seq.rotate_left(8) ^ 0x5a5a;
        p.payload = if self.payload { usize::from(seq % 40) + 1 } else { 0 };
        p.frag = self.frag;
        p.ident = u16::from(seq & 3);
        p.vlan = self.vlan.then_some(u16::from(seq & 0x0f) + 1);
    }
}

/// Services: (frontend port, backend port, protocol).
const SERVICES: [(u16, u16, u8); 6] = [
    (80, 8080, ip_proto::TCP),
    (81, 81, ip_proto::TCP),
    (53, 53, ip_proto::UDP),
    (54, 54, ip_proto::UDP),
    (443, 443, ip_proto::TCP),
    (80, 8080, ip_proto::UDP),
];

fn client_addr(v6: bool, i: u8) -> [u8; 16] {
    if v6 {
        let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        a[15] = 1 + (i & 7);
        a
    } else {
        v4_16([198, 18, 0, 1 + (i & 7)])
    }
}

fn remote_addr(v6: bool, i: u8) -> [u8; 16] {
    if v6 {
        let mut a = [0x26, 0x06, 0x28, 0, 2, 0x20, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        a[15] = 1 + (i & 3);
        a
    } else {
        v4_16([93, 184, 216, 34 + (i & 3)])
    }
}

/// A flow as the fuzzer saw it leave (delivered to a backend, or transmitted towards a client).
#[derive(Debug, Clone, Copy)]
struct Seen {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
}

impl Seen {
    fn of(k: &FlowKey) -> Option<Seen> {
        (matches!(k.protocol, ip_proto::TCP | ip_proto::UDP) && k.fragment == Fragment::None).then_some(Seen {
            v6: k.ip_version == IpVersion::V6,
            src: k.src_addr,
            dst: k.dst_addr,
            sport: k.src_port,
            dport: k.dst_port,
            proto: k.protocol,
        })
    }

    /// The packet going the other way.
    fn reply(&self) -> Pkt {
        Pkt {
            v6: self.v6,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            ..Pkt::default()
        }
    }
}

fn push_recent(list: &mut Vec<Seen>, s: Seen) {
    if list.len() == RECENT {
        list.remove(0);
    }
    list.push(s);
}

/// Where a frame the host agent got came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Fabric,
    Backend,
}

struct World {
    mux: Mux,
    host: HostAgent,
    direct: bool,
    /// The clock: `start` plus `elapsed` seconds, wrapping.
    now: u32,
    start: u32,
    elapsed: u32,
    max_elapsed: u32,
    /// Per local backend: its address, IP version and SNAT block size.
    locals: Vec<([u8; 16], bool, u32)>,
    /// Every backend address of the configuration (no frame may leave with one as its source).
    dips: Vec<[u8; 16]>,
    /// Per IP version: the SNAT port range (first, last) of the plan.
    snat_ports: [(u16, u16); 2],
    delivered: Vec<Seen>,
    sent: Vec<Seen>,
}

fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => v4_16(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Whether the IP header and TCP/UDP checksums of a frame verify.
fn checksums_ok(frame: &[u8], k: &FlowKey) -> Result<(), &'static str> {
    let l3 = usize::from(k.l3_offset);
    let l4 = usize::from(k.l4_offset);
    let seg = &frame[l4..l4 + usize::from(k.l4_len)];
    let pseudo = if k.ip_version == IpVersion::V4 {
        if checksum::fold(checksum::sum(&frame[l3..l4])) != 0xffff {
            return Err("IPv4 header checksum");
        }
        checksum::pseudo_header_v4(k.src_v4(), k.dst_v4(), k.protocol, k.l4_len)
    } else {
        checksum::pseudo_header_v6(&k.src_addr, &k.dst_addr, k.protocol, u32::from(k.l4_len))
    };
    if k.protocol == ip_proto::UDP && k.ip_version == IpVersion::V4 && seg[6..8] == [0, 0] {
        return Ok(());
    }
    if checksum::fold(checksum::combine(pseudo, checksum::sum(seg))) != 0xffff {
        return Err("TCP/UDP checksum");
    }
    Ok(())
}

impl World {
    fn new(flags: u8) -> World {
        let lb = two_hosts_scarce_snat(PORTS_PER_BACKEND);
        let plan = lb.snat_plan().expect("SNAT plan");
        let mux = Mux::new(MuxNode { maglev_size: 251, ..mux_node_flows(7, 256) }, lb.clone()).expect("MUX");
        let direct = flags & 1 != 0;
        let flows = [8, 16, 64, 1000][usize::from((flags >> 4) & 3)];
        let node = HostNode {
            snat_quarantine_secs: [0, 5, 60, 86_400][usize::from((flags >> 2) & 3)],
            reset_on_snat_exhaustion: flags & 2 != 0,
            ..host_node_flows(HOST_A, if direct { ReturnPath::Direct } else { ReturnPath::ViaMux }, flows)
        };
        let host = HostAgent::new(node, lb.clone()).expect("host agent");
        let locals = host
            .local_backends()
            .iter()
            .map(|l| {
                let size = plan.for_member(l.pool, l.member).map(|g| u32::from(g.len)).sum();
                (addr16(l.address), l.address.is_ipv6(), size)
            })
            .collect();
        let dips = lb.pools.iter().flat_map(|p| p.backends.iter().map(|b| addr16(b.address))).collect();
        let range = |v6: bool| {
            let ports = plan.grants.iter().filter(|g| lb.frontends[g.frontend].address.is_ipv6() == v6);
            let first = ports.clone().map(|g| g.first).min().unwrap_or(1024);
            let last = ports.map(|g| g.first + (g.len - 1)).max().unwrap_or(1024);
            (first, last)
        };
        World {
            mux,
            host,
            direct,
            now: STARTS[usize::from(flags >> 6)],
            start: STARTS[usize::from(flags >> 6)],
            elapsed: 0,
            max_elapsed: 0,
            locals,
            dips,
            snat_ports: [range(false), range(true)],
            delivered: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Moves the clock on by `secs`, at most to `MAX_ELAPSED` after the start.
    fn advance(&mut self, secs: u32) {
        self.elapsed = self.elapsed.saturating_add(secs).min(MAX_ELAPSED);
        self.max_elapsed = self.max_elapsed.max(self.elapsed);
        self.now = self.start.wrapping_add(self.elapsed);
    }

    /// Hands `frame` (at `headroom`, claimed length `frame.len() + extra`) to the host agent and checks
    /// the verdict. `checkable`: the frame was built from an unmutated template whose checksums hold.
    fn host_gets(&mut self, from: Source, frame: &[u8], headroom: usize, extra: usize, checkable: bool) {
        let mut buf = vec![0u8; headroom + frame.len()];
        buf[headroom..].copy_from_slice(frame);
        let len = frame.len() + extra;
        let v = match from {
            Source::Fabric => self.host.from_fabric(&mut buf, headroom, len, self.now),
            Source::Backend => self.host.from_backend(&mut buf, headroom, len, self.now),
        };
        if trace() {
            eprintln!("  {from:?} {} bytes at {headroom} (+{extra}) t={}: {v:?}", frame.len(), self.now);
        }
        match v {
            HostVerdict::Deliver { backend, start, len } => {
                assert!(start.checked_add(len).is_some_and(|e| e <= buf.len()), "{v:?} outside {} bytes", buf.len());
                assert!(backend < self.locals.len(), "{v:?}: no such local backend");
                let out = &buf[start..start + len];
                let key = parse_flow_key(out);
                if checkable {
                    let k = key.as_ref().expect("a delivered template frame parses");
                    if let Err(what) = checksums_ok(out, k) {
                        panic!("{what} broken in a delivered frame: {out:02x?}");
                    }
                }
                if let Some(s) = key.ok().as_ref().and_then(Seen::of) {
                    push_recent(&mut self.delivered, s);
                }
            }
            HostVerdict::Transmit { start, len } => {
                assert!(start.checked_add(len).is_some_and(|e| e <= buf.len()), "{v:?} outside {} bytes", buf.len());
                let out = &buf[start..start + len];
                if from == Source::Fabric {
                    // Only a second chance goes back on the fabric: to another host, unflagged,
                    // so that it never loops.
                    let d = decapsulate(out).expect("a forwarded second chance is a VxLAN frame");
                    assert_eq!(d.outer_src, IpAddr::from(HOST_A), "from this host");
                    assert_ne!(d.outer_dst, IpAddr::from(HOST_A), "to another host");
                    assert!(!d.second_chance, "forwarded without the flag");
                    return;
                }
                let inner = if self.direct {
                    assert_eq!((&out[..6], &out[6..12]), (&GATEWAY.0[..], &HOST_MAC.0[..]), "DSR L2 rewrite");
                    out
                } else {
                    let d = decapsulate(out).expect("a transmitted frame is a VxLAN frame");
                    assert_eq!(d.outer_dst, IpAddr::from(MUX_IP), "tunnelled to the MUX");
                    assert_eq!(d.outer_src, IpAddr::from(HOST_A), "from this host");
                    d.inner
                };
                let k = parse_flow_key(inner).expect("a transmitted frame parses");
                assert!(!self.dips.contains(&k.src_addr), "transmitted with a backend's source address: {k:?}");
                if checkable {
                    if let Err(what) = checksums_ok(inner, &k) {
                        panic!("{what} broken in a transmitted frame: {inner:02x?}");
                    }
                }
                if let Some(s) = Seen::of(&k) {
                    push_recent(&mut self.sent, s);
                }
                if !self.direct {
                    // The MUX relays it (or refuses); either way nothing panics.
                    let mut relay = out.to_vec();
                    let n = relay.len();
                    let _ = self.mux.process(&mut relay, 0, n, self.now);
                }
            }
            HostVerdict::Drop(_) => {}
        }
    }

    /// A client-side frame: through the MUX, then (mutated) to the host agent.
    fn via_mux(&mut self, p: &Pkt, mutate: Option<(u8, u8)>) {
        let f = p.frame();
        let mut buf = vec![0u8; HEADROOM + f.len()];
        buf[HEADROOM..].copy_from_slice(&f);
        let Verdict::Forward { start, len } = self.mux.process(&mut buf, HEADROOM, f.len(), self.now) else {
            return;
        };
        let mut outer = buf[start..start + len].to_vec();
        let checkable = mutate.is_none() && p.checkable();
        mutate_frame(&mut outer, mutate);
        self.host_gets(Source::Fabric, &outer, 0, 0, checkable);
    }

    fn backend_sends(&mut self, p: &Pkt, mutate: Option<(u8, u8)>) {
        let mut f = p.frame();
        let checkable = mutate.is_none() && p.checkable();
        mutate_frame(&mut f, mutate);
        self.host_gets(Source::Backend, &f, HEADROOM, 0, checkable);
    }

    fn expire(&mut self, budget: usize) {
        let mut out: Vec<(HostEgress, Vec<u8>)> = Vec::new();
        self.host.expire(self.now, budget, |to, f| out.push((to, f.to_vec())));
        if trace() {
            eprintln!(
                "  expire t={} budget {budget}: {} RSTs, {} entries left",
                self.now,
                out.len(),
                self.host.flows().len()
            );
        }
        for (to, f) in out {
            let inner = match to {
                HostEgress::Backend(b) => {
                    assert!(b < self.locals.len(), "RST to no local backend {b}");
                    &f[..]
                }
                HostEgress::Fabric if self.direct => {
                    assert_eq!(&f[..6], &GATEWAY.0[..], "a RST to the client goes to the router");
                    &f[..]
                }
                HostEgress::Fabric => {
                    let d = decapsulate(&f).expect("a RST to the client is a VxLAN frame");
                    assert_eq!(d.outer_dst, IpAddr::from(MUX_IP));
                    d.inner
                }
            };
            let k =
                parse_flow_key(inner).unwrap_or_else(|e| panic!("an emitted RST does not parse: {e:?} {inner:02x?}"));
            assert_eq!(k.protocol, ip_proto::TCP, "an emitted RST is TCP");
            assert!(k.tcp_flags & TcpFlags::RST != 0, "an emitted RST has the RST flag: {k:?}");
            if let Err(what) = checksums_ok(inner, &k) {
                panic!("{what} broken in an emitted RST: {inner:02x?}");
            }
            match to {
                HostEgress::Backend(b) => assert_eq!(k.dst_addr, self.locals[b].0, "a RST to a backend is for it"),
                HostEgress::Fabric => assert!(!self.dips.contains(&k.src_addr), "a RST leaves with a private source"),
            }
        }
    }

    /// The structural invariants: pairs, SNAT accounting.
    fn check(&self) {
        let t = self.host.flows();
        if trace() {
            let inuse: Vec<u32> = (0..self.locals.len()).map(|l| self.host.snat_ports_in_use(l)).collect();
            eprintln!("    snat {:?} in use {inuse:?}", self.host.snat_counters());
            for i in 0..t.slots() as u32 {
                if let Some(e) = t.live(FlowSlot::from_index(i)) {
                    let (v, u) = (&e.value, &e.tuple);
                    let a = |x: &[u8; 16]| {
                        if u.version & 0x7f == 4 {
                            format!("{:?}", &x[..4])
                        } else {
                            format!("{x:02x?}")
                        }
                    };
                    eprintln!(
                        "    [{i:3}] {:?} peer {} local {} port {} | {}:{} > {}:{} p{} seen {} {:?}",
                        v.kind,
                        v.peer,
                        v.local,
                        v.port,
                        a(&u.src),
                        u.src_port,
                        a(&u.dst),
                        u.dst_port,
                        u.protocol,
                        e.last_seen,
                        e.state
                    );
                }
            }
        }
        assert_eq!(t.counters().removals_lost, 0, "removed entries were lost: their ports leak");
        let mut held: Vec<BTreeSet<(u16, u16)>> = vec![BTreeSet::new(); self.locals.len()];
        let (mut snat_out, mut snat_in) = (0u64, 0u64);
        for i in 0..t.slots() as u32 {
            let Some(e) = t.live(FlowSlot::from_index(i)) else { continue };
            let v = &e.value;
            let partner = match v.kind {
                HostFlowKind::Inbound => HostFlowKind::Response,
                HostFlowKind::Response => HostFlowKind::Inbound,
                HostFlowKind::SnatOut => HostFlowKind::SnatIn,
                HostFlowKind::SnatIn => HostFlowKind::SnatOut,
                // A second chance's redirect to another host: unpaired, like a fragment record.
                HostFlowKind::Fragment | HostFlowKind::Redirect => continue,
                HostFlowKind::None => panic!("a live entry of kind None at {i}: {e:?}"),
            };
            let p = t.live(FlowSlot::from_index(v.peer));
            let Some(p) = p.filter(|p| p.value.peer == i && p.value.kind == partner) else {
                panic!("entry {i} has no pair: {e:?}; at its peer slot {}: {p:?}", v.peer)
            };
            assert_eq!(p.value.local, v.local, "the two entries of a connection name one backend");
            if matches!(v.kind, HostFlowKind::SnatOut | HostFlowKind::SnatIn) {
                assert_eq!((p.value.block, p.value.port), (v.block, v.port), "both entries hold one SNAT port");
                let Some(h) = held.get_mut(usize::from(v.local)) else { panic!("entry {i} names no local backend") };
                h.insert((v.block, v.port));
                if v.kind == HostFlowKind::SnatOut {
                    snat_out += 1;
                } else {
                    snat_in += 1;
                }
            }
        }
        assert_eq!(snat_out, snat_in);
        for (l, &(_, _, size)) in self.locals.iter().enumerate() {
            let used = self.host.snat_ports_in_use(l);
            assert!(used <= size, "backend {l} uses {used} SNAT ports of {size}");
            assert_eq!(
                used as usize,
                held[l].len(),
                "backend {l}: the allocator's ports in use differ from those its connections hold: {:?}",
                held[l]
            );
        }
        let c = self.host.snat_counters();
        assert_eq!(
            c.allocated + c.shared,
            c.released + snat_out,
            "one live allocator reference per SNAT connection ({snat_out} connections): {c:?}"
        );
    }

    /// Everything expires: no entry, no port left.
    fn finish(&mut self) {
        self.now = self.start.wrapping_add(self.max_elapsed + FOREVER);
        self.expire(usize::MAX);
        assert!(self.host.flows().is_empty(), "{} entries left after everything expired", self.host.flows().len());
        for l in 0..self.locals.len() {
            assert_eq!(self.host.snat_ports_in_use(l), 0, "backend {l} leaks SNAT ports");
        }
        let c = self.host.snat_counters();
        assert_eq!(c.allocated + c.shared, c.released, "every allocation released exactly once: {c:?}");
        self.check();
    }
}

fn mutate_frame(f: &mut [u8], mutate: Option<(u8, u8)>) {
    if let Some((at, x)) = mutate {
        if !f.is_empty() {
            let i = usize::from(at) % f.len();
            f[i] ^= x.max(1);
        }
    }
}

fn run(data: &[u8]) {
    let mut r = Reader(data);
    let Some(flags) = r.byte() else { return };
    let mut w = World::new(flags);
    while let Some(op) = r.byte() {
        let op = OPS[usize::from(op) % OPS.len()];
        if trace() {
            eprintln!("{op:?}");
        }
        if step(&mut w, op, &mut r).is_none() {
            break;
        }
        w.check();
    }
    w.finish();
}

fn step(w: &mut World, op: Op, r: &mut Reader) -> Option<()> {
    match op {
        Op::RawFabric | Op::RawBackend => {
            let room = r.byte()?;
            let len = r.byte()?;
            let headroom = usize::from(room);
            // Now and then claim more than the buffer holds.
            let extra = usize::from(len >> 7) * usize::from(room & 7);
            let bytes = r.bytes(usize::from(len) * 2);
            let from = if matches!(op, Op::RawFabric) { Source::Fabric } else { Source::Backend };
            w.host_gets(from, bytes, headroom, extra, false);
        }
        Op::RawInner => {
            let vni = match r.byte()? {
                0..=99 => 0x1001,
                100..=199 => 0x1003,
                b => u32::from(b),
            };
            let tag_sel = r.byte()?;
            let tag = match tag_sel % 4 {
                0 => 0,
                1 | 2 => {
                    w.host.local_backends().get(usize::from(tag_sel >> 2) % 4).map_or(7, |l| backend_tag(l.address))
                }
                _ => u32::from(tag_sel),
            };
            let len = r.byte()?;
            let inner = r.bytes(usize::from(len) * 2);
            let t = VxlanEncap::new(MUX_MAC, HOST_MAC, IpAddr::from(MUX_IP), IpAddr::from(HOST_A), vni, 64, 9000)
                .and_then(|t| t.with_backend_tag(tag))
                .expect("tunnel");
            let mut buf = vec![0u8; HEADROOM + inner.len()];
            buf[HEADROOM..].copy_from_slice(inner);
            let start = t.encapsulate(&mut buf, HEADROOM, inner.len(), 1).expect("encapsulate");
            let outer = buf[start..].to_vec();
            w.host_gets(Source::Fabric, &outer, 0, 0, false);
        }
        Op::Client => {
            let s = Shape::read(r)?;
            let client = r.byte()?;
            let service = r.byte()?;
            let seq = r.byte()?;
            let (fport, _, proto) = SERVICES[usize::from(service) % SERVICES.len()];
            let vip = if s.v6 { VIP6 } else { v4_16(VIP) };
            let cport = 40000 + u16::from(client >> 3);
            let caddr = client_addr(s.v6, client);
            let mut p = Pkt { v6: s.v6, src: caddr, dst: vip, sport: cport, dport: fport, ..Pkt::default() };
            s.apply(&mut p, seq);
            p.proto = s.protocol(proto);
            if p.proto == ip_proto::ICMP {
                // An ICMP error about a packet the VIP sent to the client, from a router on the way.
                let quoted =
                    Pkt { v6: s.v6, src: vip, dst: caddr, sport: fport, dport: cport, proto, ..Pkt::default() };
                p.src = if s.v6 { remote_addr(true, 3) } else { v4_16([192, 0, 2, 1]) };
                p.quote = Some(Box::new(quoted));
            }
            w.via_mux(&p, s.mutate);
        }
        Op::Backend => {
            let s = Shape::read(r)?;
            let who = r.byte()?;
            let to = r.byte()?;
            let ports = r.byte()?;
            let seq = r.byte()?;
            let (addr, v6, _) = w.locals[usize::from(who) % w.locals.len()];
            // Destination: a client (like a response, from the backend's address or the VIP) or a
            // remote end (an SNAT connection).
            let (src, dst, sport, dport, proto) = if to & 1 == 0 {
                let (fport, bport, proto) = SERVICES[usize::from(ports) % SERVICES.len()];
                let from_vip = to & 2 != 0;
                let vip = if v6 { VIP6 } else { v4_16(VIP) };
                let src = if from_vip { vip } else { addr };
                (src, client_addr(v6, to >> 2), if from_vip { fport } else { bport }, 40000 + u16::from(to >> 5), proto)
            } else {
                let rports = [443, 53, 80, 8443];
                let proto = if to & 2 != 0 { ip_proto::UDP } else { ip_proto::TCP };
                (
                    addr,
                    remote_addr(v6, to >> 2),
                    10000 + u16::from(ports & 15),
                    rports[usize::from(ports >> 4) % 4],
                    proto,
                )
            };
            let mut p = Pkt { v6, src, dst, sport, dport, ..Pkt::default() };
            s.apply(&mut p, seq);
            p.proto = s.protocol(proto);
            w.backend_sends(&p, s.mutate);
        }
        Op::ReplyToSent | Op::ReplyToDelivered => {
            let s = Shape::read(r)?;
            let pick = r.byte()?;
            let seq = r.byte()?;
            let list = if matches!(op, Op::ReplyToSent) { &w.sent } else { &w.delivered };
            let Some(seen) = list.get(usize::from(pick) % list.len().max(1)).copied() else { return Some(()) };
            let mut p = seen.reply();
            s.apply(&mut p, seq);
            p.proto = s.protocol(seen.proto);
            if p.proto == ip_proto::ICMP {
                p.proto = seen.proto;
            }
            if matches!(op, Op::ReplyToSent) {
                w.via_mux(&p, s.mutate);
            } else {
                w.backend_sends(&p, s.mutate);
            }
        }
        Op::SnatProbe => {
            let s = Shape::read(r)?;
            let remote = r.byte()?;
            let port = r.byte()?;
            let seq = r.byte()?;
            let (first, last) = w.snat_ports[usize::from(s.v6)];
            let snat = if s.v6 {
                SNAT_IP6
            } else if port & 0x80 != 0 {
                v4_16(SNAT_IP2)
            } else {
                v4_16(SNAT_IP)
            };
            // Ports of the blocks and a few around them.
            let dport = (first - 2).wrapping_add(u16::from(port & 0x7f) % (last - first + 5));
            let rports = [443, 53, 80, 8443];
            let mut p = Pkt {
                v6: s.v6,
                src: remote_addr(s.v6, remote),
                dst: snat,
                sport: rports[usize::from(remote >> 2) % 4],
                dport,
                ..Pkt::default()
            };
            s.apply(&mut p, seq);
            p.proto = s.protocol(if remote & 0x10 != 0 { ip_proto::UDP } else { ip_proto::TCP });
            w.via_mux(&p, s.mutate);
        }
        Op::Tick => {
            let b = r.byte()?;
            w.advance(u32::from(b));
        }
        Op::Jump => {
            let b = r.byte()?;
            let to = match b {
                0..=199 => u32::from(b) * 60,
                200..=254 => u32::from(b - 199) << 22,
                255 => MAX_ELAPSED,
            };
            w.advance(to);
        }
        Op::Expire => {
            let b = r.byte()?;
            w.expire(if b == 255 { usize::MAX } else { usize::from(b) });
        }
    }
    Some(())
}

fuzz_target!(|data: &[u8]| run(data));
