//! The AF_PACKET port: the live port where no XDP program can be loaded (no clang at build time,
//! no CAP_BPF, a kernel without XDP). One [`AfPacketPort`] per worker: a TPACKET_V3 rx ring on
//! the interface, the workers' sockets in one PACKET_FANOUT group (hash of the flow), and a
//! send-only socket with PACKET_QDISC_BYPASS for sendmmsg.
//!
//! AF_PACKET does not take frames from the kernel: the kernel receives every frame as well. The
//! port keeps, in user space, the frames an [`Ownership`] names (the same rules as the XDP
//! program, `bpf/steer.c`: see [`Rules`]) and leaves the others alone; the node must be set up
//! so that its kernel does not also forward or answer the owned traffic (docs/live-ports.md).
//!
//! What the ring gives differs from the wire in two ways the port undoes:
//! - a sender on the same machine (a veth peer) with checksum offload leaves TCP/UDP checksums
//!   partial (`TP_STATUS_CSUMNOTREADY` in the frame's status, the flag PACKET_AUXDATA gives a
//!   recvmsg reader): the port completes them ([`complete_checksum`]);
//! - the kernel strips the outer VLAN tag into the frame's metadata before any packet socket sees
//!   it (`TP_STATUS_VLAN_VALID`): the port puts it back.
//!
//! Frames longer than the MTU (a veth sender's TSO/GSO super-frames) are dropped and counted
//! ([`AfPacketStats::oversize`]); a socket filter cuts them at that length so the ring is not
//! filled with 64 KiB copies.

use std::collections::HashSet;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::port::{BurstFrame, FrameBuf, Ownership, Port, HEADROOM, MAX_FRAME};

// <linux/if_packet.h>
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TPACKET_V3: libc::c_int = 2;
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const PACKET_OUTGOING: u8 = 4;
/// `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`: where a frame's sockaddr_ll starts.
const TPACKET3_HDRLEN: usize = 48;

const ETH_HLEN: usize = 14;
const VLAN_LEN: usize = 4;
const VXLAN_PORT: u16 = 4789;

/// Settings of an AF_PACKET port.
#[derive(Debug, Clone)]
pub struct AfPacketOptions {
    /// Bytes of a ring block (a power of two, a multiple of the page size).
    pub block_size: u32,
    /// Blocks of the ring.
    pub blocks: u32,
    /// Milliseconds after which the kernel hands over a block that is not full: the most a frame
    /// waits in the ring at a low rate (TPACKET_V3 gives frames a block at a time).
    pub block_timeout_ms: u32,
    /// PACKET_QDISC_BYPASS on the send socket: frames go to the driver without the qdisc (and
    /// without the taps: tcpdump on the interface does not see what the port sends).
    pub qdisc_bypass: bool,
}

impl Default for AfPacketOptions {
    fn default() -> Self {
        AfPacketOptions { block_size: 1 << 18, blocks: 32, block_timeout_ms: 1, qdisc_bypass: true }
    }
}

/// Counters of an AF_PACKET port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfPacketStats {
    /// Frames the ring gave (all of the interface's, or this worker's share of a fanout group).
    pub seen: u64,
    /// Frames taken (owned).
    pub taken: u64,
    /// Frames left to the kernel (not owned).
    pub not_owned: u64,
    /// Owned frames longer than the MTU allows (GSO super-frames of a local sender): dropped.
    pub oversize: u64,
    /// Partial TCP/UDP checksums completed, and partial ones the port could not find (dropped).
    pub csum_completed: u64,
    pub csum_unknown: u64,
    /// Frames whose outer VLAN tag the kernel had stripped and the port put back.
    pub vlan_restored: u64,
    /// Frames the kernel dropped because the ring was full, and times it froze the ring's queue.
    pub ring_drops: u64,
    pub ring_freezes: u64,
    /// Send calls that failed.
    pub tx_errors: u64,
}

/// Which frames a port takes: an [`Ownership`] turned into sets, with the rules of the XDP
/// program (`bpf/steer.c`), so that both live ports take the same frames:
/// - at most two VLAN tags (0x8100, 0x88a8, 0x9100) are looked through; a third: not owned;
/// - ND (ICMPv6 133-137) is never owned;
/// - fabric: IPv4/IPv6 to an owned address, and UDP to port 4789 to a tunnel endpoint (an
///   unfragmented packet or a first fragment; IPv6 after at most four extension headers);
/// - backend side (`all_except`): every IPv4/IPv6 frame but those to a pass-through address and
///   those to an Ethernet group address (broadcast, multicast).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    backend: bool,
    owned: HashSet<IpAddr>,
    tunnel: HashSet<IpAddr>,
    pass: HashSet<IpAddr>,
}

/// What a frame carries, as far as the rules look.
struct L3 {
    dst: IpAddr,
    /// The L4 protocol (after IPv6 extension headers), its offset in the frame, and whether the
    /// packet is a fragment other than the first.
    proto: u8,
    l4: usize,
    later_fragment: bool,
    /// Where the IP payload ends in the frame (Ethernet padding excluded).
    end: usize,
    /// The IPv4/IPv6 header's start.
    ip: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, 0x8100 | 0x88a8 | 0x9100)
}

/// Parses Ethernet, VLAN tags (`stripped`: tags the kernel already took off), IPv4 or IPv6 and
/// IPv6 extension headers; `None` for anything else (ARP, a third tag, a short frame).
fn parse(frame: &[u8], stripped: usize) -> Option<L3> {
    let mut ethertype = be16(frame, 12)?;
    let mut off = ETH_HLEN;
    let mut tags = stripped;
    while is_vlan(ethertype) {
        if tags == 2 {
            return None;
        }
        ethertype = be16(frame, off + 2)?;
        off += VLAN_LEN;
        tags += 1;
    }
    match ethertype {
        0x0800 => {
            let h = frame.get(off..off + 20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let dst = IpAddr::from(<[u8; 4]>::try_from(&h[16..20]).ok()?);
            let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            Some(L3 {
                dst,
                proto: h[9],
                l4: off + ihl,
                later_fragment: frag != 0,
                end: (off + total).min(frame.len()),
                ip: off,
            })
        }
        0x86dd => {
            let h = frame.get(off..off + 40)?;
            let dst = IpAddr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?);
            let end = (off + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]))).min(frame.len());
            let (mut nh, mut l4, mut later_fragment) = (h[6], off + 40, false);
            for _ in 0..4 {
                match nh {
                    0 | 43 | 60 => {
                        let e = frame.get(l4..l4 + 2)?;
                        nh = e[0];
                        l4 += (usize::from(e[1]) + 1) * 8;
                    }
                    44 => {
                        let e = frame.get(l4..l4 + 8)?;
                        nh = e[0];
                        later_fragment = u16::from_be_bytes([e[2], e[3]]) >> 3 != 0;
                        l4 += 8;
                    }
                    _ => break,
                }
            }
            Some(L3 { dst, proto: nh, l4, later_fragment, end, ip: off })
        }
        _ => None,
    }
}

impl Rules {
    /// The rules of an ownership.
    pub fn new(o: &Ownership) -> Self {
        Rules {
            backend: o.all_except.is_some(),
            owned: o.addresses.iter().copied().collect(),
            tunnel: o.tunnel_endpoints.iter().copied().collect(),
            pass: o.all_except.iter().flatten().copied().collect(),
        }
    }

    /// Whether the port takes `frame` (`stripped`: VLAN tags the kernel took off it).
    pub fn owns(&self, frame: &[u8], stripped: usize) -> bool {
        let Some(p) = parse(frame, stripped) else { return false };
        if p.proto == 58 && !p.later_fragment {
            match frame.get(p.l4) {
                Some(133..=137) => return false,
                Some(_) => {}
                None => return false,
            }
        }
        if self.backend {
            let group = frame[0] & 1 == 1;
            return !group && !self.pass.contains(&p.dst);
        }
        if self.owned.contains(&p.dst) {
            return true;
        }
        p.proto == 17
            && !p.later_fragment
            && be16(frame, p.l4 + 2) == Some(VXLAN_PORT)
            && frame.len() >= p.l4 + 8
            && self.tunnel.contains(&p.dst)
    }
}

/// The ones' complement sum of `data` (16-bit big-endian words, an odd last byte padded).
fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Where a TCP or UDP frame's checksum field is, and the L4 segment's range.
fn l4_checksum_at(frame: &[u8]) -> Option<(L3, usize)> {
    let p = parse(frame, 0)?;
    if p.later_fragment || p.l4 > p.end {
        return None;
    }
    let field = match p.proto {
        6 => p.l4 + 16,
        17 => p.l4 + 6,
        _ => return None,
    };
    (field + 2 <= p.end).then_some((p, field))
}

/// Completes the TCP or UDP checksum a sender with checksum offload left partial
/// (CHECKSUM_PARTIAL): its field holds the pseudo-header's sum, and the checksum is the
/// complement of the sum from the L4 header to the end of the IP payload, that field included
/// (what the NIC would have done at csum_start/csum_offset). False if the frame is not TCP or
/// UDP over IPv4/IPv6 (whole or a first fragment) behind at most two VLAN tags.
pub fn complete_checksum(frame: &mut [u8]) -> bool {
    let Some((p, field)) = l4_checksum_at(frame) else { return false };
    let c = !fold(sum16(&frame[p.l4..p.end], 0));
    // UDP's zero means "no checksum": an all-ones sum is sent as 0xffff.
    let c = if c == 0 && p.proto == 17 { 0xffff } else { c };
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Computes a TCP or UDP checksum in full (the field's content ignored); false as
/// [`complete_checksum`].
pub fn fill_checksum(frame: &mut [u8]) -> bool {
    let Some((p, field)) = l4_checksum_at(frame) else { return false };
    frame[field..field + 2].copy_from_slice(&[0, 0]);
    let len = (p.end - p.l4) as u64;
    let pseudo = if frame[p.ip] >> 4 == 4 {
        sum16(&frame[p.ip + 12..p.ip + 20], 0)
    } else {
        sum16(&frame[p.ip + 8..p.ip + 40], 0)
    } + u64::from(p.proto)
        + len;
    let c = !fold(sum16(&frame[p.l4..p.end], pseudo));
    let c = if c == 0 && p.proto == 17 { 0xffff } else { c };
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Copies `frame` to `dst` with a VLAN tag (`tpid`, `tci`) put back after its MAC addresses;
/// returns the length written.
pub fn restore_vlan(dst: &mut [u8], frame: &[u8], tpid: u16, tci: u16) -> usize {
    dst[..12].copy_from_slice(&frame[..12]);
    dst[12..14].copy_from_slice(&tpid.to_be_bytes());
    dst[14..16].copy_from_slice(&tci.to_be_bytes());
    dst[16..frame.len() + VLAN_LEN].copy_from_slice(&frame[12..]);
    frame.len() + VLAN_LEN
}

/// A heap buffer of the AF_PACKET port (frames are copied out of the ring, which goes back to
/// the kernel a block at a time).
pub struct PacketBuf {
    data: Box<[u8]>,
    start: usize,
    len: usize,
}

impl BurstFrame for PacketBuf {
    #[inline]
    fn parts(&mut self) -> (&mut [u8], usize, usize) {
        (&mut self.data, self.start, self.len)
    }
}

impl FrameBuf for PacketBuf {
    fn set_frame(&mut self, start: usize, len: usize) {
        self.start = start;
        self.len = len;
    }
}

fn new_buf() -> PacketBuf {
    PacketBuf { data: vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice(), start: HEADROOM, len: 0 }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn setopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T, what: &str) -> Result<(), String> {
    // SAFETY: v is a T of the size given.
    let r = unsafe { libc::setsockopt(fd, level, name, (v as *const T).cast(), std::mem::size_of::<T>() as u32) };
    if r != 0 {
        return Err(os_err(what));
    }
    Ok(())
}

fn packet_socket(what: &str) -> Result<OwnedFd, String> {
    // SAFETY: a socket with protocol 0: it receives nothing until bound with a protocol.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err(&format!("{what} (AF_PACKET needs root: CAP_NET_RAW)")));
    }
    // SAFETY: fd is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; zero is a valid value of it.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    sll
}

fn bind(fd: RawFd, sll: &libc::sockaddr_ll, what: &str) -> Result<(), String> {
    let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: sll is a sockaddr_ll of that length.
    if unsafe { libc::bind(fd, (sll as *const libc::sockaddr_ll).cast(), len) } != 0 {
        return Err(os_err(what));
    }
    Ok(())
}

/// The interface's index and MTU (asked of the calling thread's network namespace).
fn interface(ifname: &str) -> Result<(i32, usize), String> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(format!("{ifname:?}: not an interface name"));
    }
    let c = std::ffi::CString::new(ifname).map_err(|_| format!("{ifname:?}: not an interface name"))?;
    // SAFETY: c is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(os_err(ifname));
    }
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a datagram socket for the ioctl, closed as the OwnedFd drops.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(os_err("socket"));
    }
    // SAFETY: s is ours.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: req names the interface; SIOCGIFMTU writes ifr_mtu.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } != 0 {
        return Err(os_err(&format!("{ifname}: MTU")));
    }
    // SAFETY: SIOCGIFMTU filled the ifr_mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok((index as i32, mtu.max(68) as usize))
}

#[repr(C)]
struct TpacketReq3 {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
    tp_retire_blk_tov: u32,
    tp_sizeof_priv: u32,
    tp_feature_req_word: u32,
}

#[repr(C)]
#[derive(Default)]
struct TpacketStatsV3 {
    tp_packets: u32,
    tp_drops: u32,
    tp_freeze_q_cnt: u32,
}

/// A worker's AF_PACKET sockets on one interface.
pub struct AfPacketPort {
    rx: OwnedFd,
    tx: OwnedFd,
    ring: NonNull<u8>,
    block_size: usize,
    blocks: usize,
    /// The block being read, and in it: frames left and the next frame's offset.
    block: usize,
    cursor: Option<(u32, usize)>,
    rules: Rules,
    /// The interface's ownership, shared by its ports, and the generation of it `rules` follow.
    shared: Arc<Interface>,
    rules_generation: u64,
    queue: u32,
    pool: Vec<PacketBuf>,
    ifname: String,
    ifindex: i32,
    /// The longest frame taken: the MTU with an Ethernet header and two VLAN tags.
    max_len: usize,
    /// UDP sockets on the tunnel endpoints' port 4789, so that the kernel, which sees the VxLAN
    /// frames too, drops them quietly instead of answering "port unreachable".
    _sinks: Vec<UdpSocket>,
    /// The fanout group (the kernel may pick 0).
    group: Option<u16>,
    now: u32,
    stats: AfPacketStats,
}

// SAFETY: a port is used by one thread at a time (its worker); its ring mapping is its own.
unsafe impl Send for AfPacketPort {}

impl Drop for AfPacketPort {
    fn drop(&mut self) {
        // SAFETY: the ring was mapped with this length in `open_one`; no frame points into it
        // (frames are copied out).
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.block_size * self.blocks) };
    }
}

/// Seconds of CLOCK_MONOTONIC (coarse: once a burst).
fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

/// What the ports of one interface share: its fanout group and its ownership.
struct Interface {
    /// The group's id, once its first socket has joined (the kernel picks it).
    group: Mutex<Option<u16>>,
    ownership: Mutex<Ownership>,
    /// Bumped by each change of `ownership`: the ports' rx_burst compare it (a relaxed load a
    /// burst) and copy the rules when it moved.
    generation: AtomicU64,
}

/// An interface: its network namespace and its index.
type IfKey = (u64, i32);

/// The interfaces this process has AF_PACKET ports on.
static INTERFACES: Mutex<Vec<(IfKey, Weak<Interface>)>> = Mutex::new(Vec::new());

impl Interface {
    fn set(&self, ownership: &Ownership) -> Result<(), String> {
        *self.ownership.lock().map_err(|_| "poisoned")? = ownership.clone();
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

impl AfPacketPort {
    /// The workers to run on `ifname`: one per receive queue of the device (the same count as
    /// the AF_XDP port's, see [`crate::afxdp::queues`]); the fanout group spreads the flows.
    pub fn queues(ifname: &str) -> u32 {
        crate::afxdp::queues(ifname)
    }

    /// Opens worker `queue`'s port on `ifname` with the default options.
    pub fn open(ifname: &str, queue: u32, ownership: &Ownership) -> Result<Self, String> {
        Self::open_with(ifname, queue, ownership, &AfPacketOptions::default())
    }

    /// Opens a port on `ifname` for worker `queue` (a name in messages: AF_PACKET has no queue
    /// of its own). The ports of one interface join one fanout group (PACKET_FANOUT_HASH: both
    /// directions of a flow to one worker; IP fragments but the first hash on their addresses
    /// alone, so they may reach another worker), and own the same frames.
    pub fn open_with(ifname: &str, queue: u32, ownership: &Ownership, opts: &AfPacketOptions) -> Result<Self, String> {
        let (ifindex, mtu) = interface(ifname)?;
        let key = (crate::afxdp::netns_id(), ifindex);
        let shared = {
            let mut list = INTERFACES.lock().map_err(|_| "the AF_PACKET registry is poisoned")?;
            list.retain(|(_, w)| w.strong_count() > 0);
            match list.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
                Some(i) => {
                    if *i.ownership.lock().map_err(|_| "poisoned")? != *ownership {
                        return Err(format!("{ifname}: its ports must own the same frames"));
                    }
                    i
                }
                None => {
                    let i = Arc::new(Interface {
                        group: Mutex::new(None),
                        ownership: Mutex::new(ownership.clone()),
                        generation: AtomicU64::new(0),
                    });
                    list.push((key, Arc::downgrade(&i)));
                    i
                }
            }
        };
        // Held while the socket joins, so that the first one's group is the others'.
        let mut group = shared.group.lock().map_err(|_| "poisoned")?;
        let first = group.is_none();
        let port = Self::open_one(ifname, ifindex, mtu, queue, ownership, opts, *group, first, shared.clone())?;
        *group = port.group;
        drop(group);
        Ok(port)
    }

    /// `workers` ports on `ifname`, one per worker (see [`AfPacketPort::open_with`]).
    pub fn open_group(
        ifname: &str,
        workers: usize,
        ownership: &Ownership,
        opts: &AfPacketOptions,
    ) -> Result<Vec<Self>, String> {
        (0..workers.max(1) as u32).map(|q| Self::open_with(ifname, q, ownership, opts)).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn open_one(
        ifname: &str,
        ifindex: i32,
        mtu: usize,
        queue: u32,
        ownership: &Ownership,
        opts: &AfPacketOptions,
        group: Option<u16>,
        first: bool,
        shared: Arc<Interface>,
    ) -> Result<Self, String> {
        let page = 4096;
        if !opts.block_size.is_power_of_two() || opts.block_size < page || opts.blocks == 0 {
            return Err(format!("AF_PACKET: blocks of {} bytes (a power of two, a page or more)", opts.block_size));
        }
        let max_len = mtu + ETH_HLEN + 2 * VLAN_LEN;
        if max_len > MAX_FRAME {
            return Err(format!("{ifname}: an MTU of {mtu} makes frames longer than a buffer ({MAX_FRAME})"));
        }
        let rx = packet_socket("AF_PACKET rx socket")?;
        let fd = rx.as_raw_fd();
        setopt(fd, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V3, "PACKET_VERSION TPACKET_V3")?;
        // The port's own sends (and other workers') are not frames to receive.
        setopt(fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1i32, "PACKET_IGNORE_OUTGOING")?;
        // A classic filter that keeps `max_len + 1` bytes of a frame: enough to see that a
        // super-frame is too long without copying all of it into the ring.
        let mut cut = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: (max_len + 1) as u32 }];
        let prog = libc::sock_fprog { len: 1, filter: cut.as_mut_ptr() };
        setopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog, "SO_ATTACH_FILTER")?;
        let req = TpacketReq3 {
            tp_block_size: opts.block_size,
            tp_block_nr: opts.blocks,
            // V3 packs frames of any length into a block; the frame size only sets a count.
            tp_frame_size: 2048,
            tp_frame_nr: opts.block_size / 2048 * opts.blocks,
            tp_retire_blk_tov: opts.block_timeout_ms.max(1),
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setopt(fd, libc::SOL_PACKET, PACKET_RX_RING, &req, "PACKET_RX_RING")?;
        let len = opts.block_size as usize * opts.blocks as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket; the result is checked.
        let ring = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if ring == libc::MAP_FAILED {
            return Err(os_err("mapping the AF_PACKET ring"));
        }
        let ring = NonNull::new(ring.cast::<u8>()).ok_or("mmap returned NULL")?;
        let mut port = AfPacketPort {
            rx,
            tx: packet_socket("AF_PACKET tx socket")?,
            ring,
            block_size: opts.block_size as usize,
            blocks: opts.blocks as usize,
            block: 0,
            cursor: None,
            rules: Rules::new(ownership),
            rules_generation: shared.generation.load(Ordering::Acquire),
            shared,
            queue,
            pool: Vec::new(),
            ifname: ifname.to_owned(),
            ifindex,
            max_len,
            _sinks: Vec::new(),
            group: None,
            now: monotonic_secs(),
            stats: AfPacketStats::default(),
        };
        bind(fd, &sockaddr(ifindex, libc::ETH_P_ALL as u16), &format!("binding to {ifname}"))?;
        {
            // The first socket has the kernel pick a group id no other group uses; the others join it.
            let type_flags = PACKET_FANOUT_HASH | if group.is_none() { PACKET_FANOUT_FLAG_UNIQUEID } else { 0 };
            let arg = u32::from(group.unwrap_or(0)) | (type_flags << 16);
            setopt(fd, libc::SOL_PACKET, PACKET_FANOUT, &arg, "PACKET_FANOUT")?;
            let mut got = 0u32;
            let mut l = 4u32;
            // SAFETY: reads a u32 option.
            if unsafe { libc::getsockopt(fd, libc::SOL_PACKET, PACKET_FANOUT, (&mut got as *mut u32).cast(), &mut l) }
                != 0
            {
                return Err(os_err("PACKET_FANOUT (group id)"));
            }
            port.group = Some(got as u16);
        }
        let txfd = port.tx.as_raw_fd();
        if opts.qdisc_bypass {
            setopt(txfd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &1i32, "PACKET_QDISC_BYPASS")?;
        }
        bind(txfd, &sockaddr(ifindex, 0), &format!("binding the tx socket to {ifname}"))?;
        if first {
            port._sinks = sinks(ifname, &ownership.tunnel_endpoints);
        }
        Ok(port)
    }

    /// One line on how the port runs.
    pub fn describe(&self) -> String {
        format!(
            "{} worker {}: AF_PACKET, TPACKET_V3 ring of {} KiB{}; the kernel sees these frames too",
            self.ifname,
            self.queue,
            self.block_size * self.blocks / 1024,
            self.group.map(|g| format!(", fanout group {g}")).unwrap_or_default()
        )
    }

    /// The fanout group's id.
    pub fn group(&self) -> Option<u16> {
        self.group
    }

    /// Changes the frames the interface's ports take (a reload): each follows at its next burst.
    pub fn update_ownership(&self, ownership: &Ownership) -> Result<(), String> {
        self.shared.set(ownership)
    }

    /// The port's counters (with the kernel's ring drops, read and added up here).
    pub fn stats(&mut self) -> AfPacketStats {
        let mut k = TpacketStatsV3::default();
        let mut l = std::mem::size_of::<TpacketStatsV3>() as u32;
        // SAFETY: reads a tpacket_stats_v3 (the kernel resets its counters on each read).
        let r = unsafe {
            libc::getsockopt(
                self.rx.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                (&mut k as *mut TpacketStatsV3).cast(),
                &mut l,
            )
        };
        if r == 0 {
            self.stats.ring_drops += u64::from(k.tp_drops);
            self.stats.ring_freezes += u64::from(k.tp_freeze_q_cnt);
        }
        self.stats
    }

    fn block_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: i < blocks: within the ring's mapping.
        unsafe { self.ring.as_ptr().add(i * self.block_size) }
    }

    /// The status word of block `i`, shared with the kernel.
    fn block_status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: offset 8 of a block is its aligned u32 block_status, which the kernel and this
        // port hand each other the block with.
        unsafe { &*self.block_ptr(i).add(8).cast::<AtomicU32>() }
    }

    /// Takes the frame at `off` of the current block if it is owned.
    fn frame(&mut self, off: usize) -> Option<PacketBuf> {
        let h = self.block_ptr(self.block).wrapping_add(off);
        // SAFETY: the kernel wrote a tpacket3_hdr and a sockaddr_ll at `off` of a block it handed
        // us (offsets it gave), and the frame's bytes at tp_mac within the block.
        let (status, snaplen, len, mac, vlan_tci, vlan_tpid, pkttype) = unsafe {
            (
                h.add(20).cast::<u32>().read_unaligned(),
                h.add(12).cast::<u32>().read_unaligned() as usize,
                h.add(16).cast::<u32>().read_unaligned() as usize,
                usize::from(h.add(24).cast::<u16>().read_unaligned()),
                h.add(32).cast::<u32>().read_unaligned() as u16,
                h.add(36).cast::<u16>().read_unaligned(),
                *h.add(TPACKET3_HDRLEN + 10),
            )
        };
        if pkttype == PACKET_OUTGOING || off + mac + snaplen > self.block_size || snaplen < ETH_HLEN {
            return None;
        }
        self.stats.seen += 1;
        // SAFETY: checked above to lie within the block.
        let data = unsafe { std::slice::from_raw_parts(h.add(mac), snaplen) };
        let vlan = (status & TP_STATUS_VLAN_VALID != 0).then(|| {
            let tpid = if status & TP_STATUS_VLAN_TPID_VALID != 0 && vlan_tpid != 0 { vlan_tpid } else { 0x8100 };
            (tpid, vlan_tci)
        });
        let tags = usize::from(vlan.is_some());
        if !self.rules.owns(data, tags) {
            self.stats.not_owned += 1;
            return None;
        }
        if len > snaplen || len + tags * VLAN_LEN > self.max_len {
            self.stats.oversize += 1;
            return None;
        }
        let mut b = self.pool.pop().unwrap_or_else(new_buf);
        let dst = &mut b.data[HEADROOM..];
        let n = match vlan {
            Some((tpid, tci)) => {
                self.stats.vlan_restored += 1;
                restore_vlan(dst, data, tpid, tci)
            }
            None => {
                dst[..data.len()].copy_from_slice(data);
                data.len()
            }
        };
        if status & TP_STATUS_CSUMNOTREADY != 0 {
            if complete_checksum(&mut dst[..n]) {
                self.stats.csum_completed += 1;
            } else {
                // Sent on, it would be dropped by its receiver for a bad checksum.
                self.stats.csum_unknown += 1;
                self.pool.push(b);
                return None;
            }
        }
        (b.start, b.len) = (HEADROOM, n);
        self.stats.taken += 1;
        Some(b)
    }

    fn send(&mut self, frames: &[(*const u8, usize)]) -> usize {
        let mut sll = sockaddr(self.ifindex, 0);
        sll.sll_halen = 6;
        let mut iov: Vec<libc::iovec> =
            frames.iter().map(|&(p, l)| libc::iovec { iov_base: p as *mut libc::c_void, iov_len: l }).collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data; zero is a valid value of it.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let (mut done, mut sent) = (0, 0);
        while done < msgs.len() {
            // SAFETY: the messages point at live iovecs, frames and sll for the call.
            let r = unsafe {
                libc::sendmmsg(self.tx.as_raw_fd(), msgs[done..].as_mut_ptr(), (msgs.len() - done) as u32, 0)
            };
            if r > 0 {
                done += r as usize;
                sent += r as usize;
                continue;
            }
            self.stats.tx_errors += 1;
            match std::io::Error::last_os_error().raw_os_error() {
                // The device queue is full: the rest of the burst is dropped (counted by the caller).
                Some(libc::EAGAIN | libc::ENOBUFS | libc::EBUSY) | None => break,
                // This one frame is refused (EMSGSIZE...): on with the next.
                Some(_) => done += 1,
            }
        }
        sent
    }
}

impl crate::port::LivePort for AfPacketPort {
    const NAME: &'static str = "afpacket";

    fn queues(ifname: &str) -> u32 {
        AfPacketPort::queues(ifname)
    }

    fn open(
        ifname: &str,
        queue: u32,
        ownership: &Ownership,
        options: &crate::port::LiveOptions,
    ) -> Result<Self, String> {
        if options.generic_xdp || options.copy {
            return Err("--xdp-generic and --xdp-copy are AF_XDP's options".into());
        }
        let _ = options.busy_poll_us; // AF_PACKET rings are polled by their block timeout
        AfPacketPort::open(ifname, queue, ownership)
    }

    fn describe(&self) -> String {
        AfPacketPort::describe(self)
    }

    fn ownership_handle(&self) -> crate::port::SetOwnership {
        crate::port::ownership_handle(&self.shared, &self.ifname, "AF_PACKET", Interface::set)
    }
}

/// Binds UDP sockets to port 4789 of the tunnel endpoints, with the smallest receive buffer: the
/// kernel then queues a datagram or two and drops the rest silently, instead of sending an ICMP
/// "port unreachable" for every VxLAN frame the port takes.
fn sinks(ifname: &str, endpoints: &[IpAddr]) -> Vec<UdpSocket> {
    let mut v = Vec::new();
    for a in endpoints {
        match UdpSocket::bind((*a, VXLAN_PORT)) {
            Ok(s) => {
                let _ = setopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &1i32, "SO_RCVBUF");
                v.push(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => eprintln!(
                "lb-dpdk: {ifname}: UDP {a}:{VXLAN_PORT} is taken (a kernel VxLAN device?): the kernel handles the \
                 port's VxLAN frames as well"
            ),
            // Not an address of this namespace: the kernel does not answer for it anyway.
            Err(_) => {}
        }
    }
    v
}

impl Port for AfPacketPort {
    type Buf = PacketBuf;

    fn rx_burst(&mut self, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        self.now = monotonic_secs();
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.rules_generation {
            if let Ok(o) = self.shared.ownership.lock() {
                self.rules = Rules::new(&o);
                self.rules_generation = generation;
            }
        }
        let mut got = 0;
        while got < max {
            let (left, off) = match self.cursor {
                Some(c) => c,
                None => {
                    let st = self.block_status(self.block).load(Ordering::Acquire);
                    if st & TP_STATUS_USER == 0 {
                        break;
                    }
                    let b = self.block_ptr(self.block);
                    // SAFETY: the block is ours (TP_STATUS_USER): its header's num_pkts and
                    // offset_to_first_pkt.
                    let (num, first) = unsafe {
                        (b.add(12).cast::<u32>().read_unaligned(), b.add(16).cast::<u32>().read_unaligned() as usize)
                    };
                    (num, first)
                }
            };
            if left == 0 {
                // Frames are copied out: the block goes back to the kernel at once.
                self.block_status(self.block).store(0, Ordering::Release);
                self.block = (self.block + 1) % self.blocks;
                self.cursor = None;
                continue;
            }
            // SAFETY: tp_next_offset of the frame at `off`.
            let next = unsafe { self.block_ptr(self.block).add(off).cast::<u32>().read_unaligned() } as usize;
            self.cursor = Some((left - 1, off + next));
            if let Some(b) = self.frame(off) {
                out.push(b);
                got += 1;
            }
        }
        got
    }

    fn tx_burst(&mut self, frames: &mut Vec<PacketBuf>) -> usize {
        if frames.is_empty() {
            return 0;
        }
        let ptrs: Vec<(*const u8, usize)> = frames.iter().map(|b| (b.data[b.start..].as_ptr(), b.len)).collect();
        let sent = self.send(&ptrs);
        self.pool.append(frames);
        sent
    }

    fn tx_copy(&mut self, frame: &[u8]) -> bool {
        self.send(&[(frame.as_ptr(), frame.len())]) == 1
    }

    fn recycle(&mut self, buf: PacketBuf) {
        self.pool.push(buf);
    }

    fn now(&self) -> u32 {
        self.now
    }

    fn finished(&self) -> bool {
        false
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.rx.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const SRC4: [u8; 4] = [198, 18, 0, 1];
    const VIP4: [u8; 4] = [198, 19, 0, 10];
    const NODE4: [u8; 4] = [198, 18, 0, 2];
    const SRC6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    const VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10];
    const NODE6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];

    fn udp4(dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(A, B).ipv4(SRC4, dst, 64).udp(40000, dport).write(&mut v, payload).unwrap();
        v
    }
    fn udp6(dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(A, B).ipv6(SRC6, dst, 64).udp(40000, dport).write(&mut v, payload).unwrap();
        v
    }
    fn tcp4(dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(A, B).ipv4(SRC4, dst, 64).tcp(40000, 80, 7, 1000).write(&mut v, payload).unwrap();
        v
    }
    fn tcp6(dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(A, B).ipv6(SRC6, dst, 64).tcp(40000, 80, 7, 1000).write(&mut v, payload).unwrap();
        v
    }
    fn icmp6(dst: [u8; 16], kind: u8) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv6(SRC6, dst, 255)
            .icmpv6_raw(kind, 0, [0; 4])
            .write(&mut v, &[0; 16])
            .unwrap();
        v
    }
    /// `frame` with a VLAN tag `tpid` (VLAN 7) after its MAC addresses.
    fn tagged(frame: &[u8], tpid: u16) -> Vec<u8> {
        let mut v = vec![0; frame.len() + 4];
        restore_vlan(&mut v, frame, tpid, 7);
        v
    }
    fn arp() -> Vec<u8> {
        let mut v = vec![0xff; 6];
        v.extend_from_slice(&A);
        v.extend_from_slice(&[0x08, 0x06]);
        v.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        v.extend_from_slice(&A);
        v.extend_from_slice(&SRC4);
        v.extend_from_slice(&[0; 6]);
        v.extend_from_slice(&NODE4);
        v
    }

    fn fabric() -> Rules {
        Rules::new(&Ownership {
            addresses: vec![Ipv4Addr::from(VIP4).into(), Ipv6Addr::from(VIP6).into()],
            tunnel_endpoints: vec![Ipv4Addr::from(NODE4).into(), Ipv6Addr::from(NODE6).into()],
            all_except: None,
        })
    }

    fn backend() -> Rules {
        Rules::new(&Ownership {
            addresses: vec![],
            tunnel_endpoints: vec![],
            all_except: Some(vec![Ipv4Addr::from(NODE4).into(), Ipv6Addr::from(NODE6).into()]),
        })
    }

    #[test]
    fn a_fabric_takes_its_vips_and_vxlan_to_its_endpoints_and_nothing_else() {
        let r = fabric();
        assert!(r.owns(&udp4(VIP4, 53, b"x"), 0));
        assert!(r.owns(&tcp4(VIP4, b"x"), 0));
        assert!(r.owns(&tcp6(VIP6, b"x"), 0));
        assert!(r.owns(&udp4(NODE4, 4789, &[0; 16]), 0), "VxLAN to the endpoint");
        assert!(r.owns(&udp6(NODE6, 4789, &[0; 16]), 0));
        assert!(!r.owns(&udp4(NODE4, 4790, &[0; 16]), 0), "another port to the node");
        assert!(!r.owns(&tcp4(NODE4, b"x"), 0), "the node's own TCP (BGP, SSH)");
        assert!(!r.owns(&udp4([198, 18, 0, 3], 4789, &[0; 16]), 0), "VxLAN to another address");
        assert!(!r.owns(&arp(), 0), "ARP");
        for nd in 133..=137 {
            assert!(!r.owns(&icmp6(NODE6, nd), 0), "ND type {nd}");
            assert!(!r.owns(&icmp6(VIP6, nd), 0), "ND type {nd} to a VIP stays the kernel's");
        }
        assert!(r.owns(&icmp6(VIP6, 128), 0), "an echo request to a VIP");
        assert!(!r.owns(&icmp6(NODE6, 128), 0), "an echo request to the node");
    }

    #[test]
    fn vxlan_is_recognised_only_in_a_whole_packet_or_a_first_fragment() {
        let r = fabric();
        let mut later = udp4(NODE4, 4789, &[0; 16]);
        later[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes()); // fragment offset 16 * 8
        assert!(!r.owns(&later, 0));
        let mut first = udp4(NODE4, 4789, &[0; 16]);
        first[14 + 6] = 0x20; // more fragments, offset 0
        assert!(r.owns(&first, 0));
        let mut to_vip = udp4(VIP4, 4789, &[0; 16]);
        to_vip[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert!(r.owns(&to_vip, 0), "every fragment to a VIP");
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_the_udp_header() {
        let r = fabric();
        let plain = udp6(NODE6, 4789, &[0; 16]);
        // A destination-options header (8 bytes) between IPv6 and UDP.
        let mut v = plain[..54].to_vec();
        v[20] = 60;
        v[18..20].copy_from_slice(&(u16::from_be_bytes([plain[18], plain[19]]) + 8).to_be_bytes());
        v.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        v.extend_from_slice(&plain[54..]);
        assert!(r.owns(&v, 0));
    }

    #[test]
    fn vlan_tags_are_looked_through_up_to_two() {
        let r = fabric();
        let f = udp4(VIP4, 53, b"x");
        assert!(r.owns(&tagged(&f, 0x8100), 0));
        assert!(r.owns(&tagged(&tagged(&f, 0x8100), 0x88a8), 0));
        assert!(r.owns(&tagged(&f, 0x8100), 1), "one tag here, one stripped by the kernel");
        assert!(!r.owns(&tagged(&tagged(&f, 0x8100), 0x88a8), 1), "a third tag: passed");
        assert!(!r.owns(&tagged(&tagged(&tagged(&f, 0x8100), 0x8100), 0x88a8), 0));
        assert!(!r.owns(&tagged(&arp(), 0x8100), 0));
    }

    #[test]
    fn a_backend_side_takes_all_ip_but_its_pass_through_addresses_nd_and_group_frames() {
        let r = backend();
        assert!(r.owns(&tcp4([198, 18, 9, 9], b"x"), 0), "a backend's reply to a client");
        assert!(r.owns(&udp6(VIP6, 53, b"x"), 0));
        assert!(!r.owns(&tcp4(NODE4, b"x"), 0), "to the host itself");
        assert!(!r.owns(&tcp6(NODE6, b"x"), 0));
        assert!(!r.owns(&arp(), 0));
        assert!(!r.owns(&icmp6(VIP6, 135), 0), "ND");
        let mut bcast = udp4([255, 255, 255, 255], 67, b"dhcp");
        bcast[..6].copy_from_slice(&[0xff; 6]);
        assert!(!r.owns(&bcast, 0), "broadcast");
        let mut mcast = udp6([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfb], 5353, b"mdns");
        mcast[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 0xfb]);
        assert!(!r.owns(&mcast, 0), "multicast");
    }

    #[test]
    fn short_or_odd_frames_are_not_owned_and_do_not_panic() {
        let r = fabric();
        let f = udp4(VIP4, 53, b"x");
        for n in 0..f.len() {
            let _ = r.owns(&f[..n], 0);
        }
        assert!(!r.owns(&f[..14 + 19], 0), "an IPv4 header cut short");
        let mut bad_ihl = f.clone();
        bad_ihl[14] = 0x44;
        assert!(!r.owns(&bad_ihl, 0));
        let b = backend();
        let v6 = udp6(VIP6, 4789, &[0; 16]);
        for n in 0..v6.len() {
            let _ = b.owns(&v6[..n], 0);
        }
    }

    /// The pseudo-header sum a sender with checksum offload leaves in the field (the kernel's
    /// `~csum_tcpudp_magic(..)`: the folded sum, not complemented).
    fn seed(frame: &mut [u8], v4: bool, proto: u8) {
        let (ip, l4) = if v4 { (14, 34) } else { (14, 54) };
        let addrs = if v4 { &frame[ip + 12..ip + 20] } else { &frame[ip + 8..ip + 40] };
        let mut s: u64 = addrs.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        s += u64::from(proto) + (frame.len() - l4) as u64;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        let at = l4 + if proto == 6 { 16 } else { 6 };
        frame[at..at + 2].copy_from_slice(&(s as u16).to_be_bytes());
    }

    #[test]
    fn partial_checksums_are_completed_as_a_nic_would() {
        let payload: Vec<u8> = (0..=200u8).collect(); // an odd length
        for (whole, v4, proto) in [
            (udp4(VIP4, 53, &payload), true, 17),
            (udp6(VIP6, 53, &payload), false, 17),
            (tcp4(VIP4, &payload), true, 6),
            (tcp6(VIP6, &payload), false, 6),
            (udp4(VIP4, 53, b""), true, 17),
        ] {
            let mut partial = whole.clone();
            seed(&mut partial, v4, proto);
            assert_ne!(partial, whole);
            assert!(complete_checksum(&mut partial));
            assert_eq!(partial, whole, "etherparse's checksum (v4 {v4}, proto {proto})");
            let mut zeroed = whole.clone();
            assert!(fill_checksum(&mut zeroed));
            assert_eq!(zeroed, whole);
        }
    }

    #[test]
    fn ethernet_padding_is_not_summed_and_tags_are_looked_through() {
        let whole = udp4(VIP4, 53, b"ab");
        let mut padded = whole.clone();
        padded.resize(60, 0xee);
        seed(&mut padded[..whole.len()], true, 17);
        assert!(complete_checksum(&mut padded));
        assert_eq!(&padded[..whole.len()], &whole[..]);
        let mut t = tagged(&whole, 0x8100);
        let at = 18 + 20 + 6;
        t[at..at + 2].copy_from_slice(&[0x12, 0x34]);
        assert!(fill_checksum(&mut t));
        assert_eq!(t, tagged(&whole, 0x8100));
    }

    #[test]
    fn what_is_not_tcp_or_udp_is_left_as_it_is() {
        let mut f = icmp6(VIP6, 128);
        let before = f.clone();
        assert!(!complete_checksum(&mut f));
        assert_eq!(f, before);
        assert!(!complete_checksum(&mut arp()));
    }

    #[test]
    fn a_stripped_vlan_tag_is_put_back_after_the_mac_addresses() {
        let f = udp4(VIP4, 53, b"x");
        let mut out = vec![0u8; f.len() + 4];
        assert_eq!(restore_vlan(&mut out, &f, 0x88a8, 0x2007), f.len() + 4);
        assert_eq!(&out[..12], &f[..12]);
        assert_eq!(&out[12..16], &[0x88, 0xa8, 0x20, 0x07]);
        assert_eq!(&out[16..], &f[12..]);
    }
}

/// Two network namespaces joined by a veth pair, for the live ports' tests (root only): `peer`
/// (a kernel sender, 198.18.0.1 and 2001:2:0:1::1) and `node` (the port's, 198.18.0.2 and
/// 2001:2:0:1::2). The peer routes the test VIPs 198.19.0.10 and 2001:2:0:ff::10, and
/// 198.18.9.0/24, via the node, as BGP would. Deleted by name when dropped, even after a failed
/// assertion.
#[cfg(test)]
pub(crate) mod lab {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::process::Command;
    use std::time::{Duration, Instant};

    pub const PEER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const NODE4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
    /// Routed via the node, owned by nobody in the fabric test (a backend side takes it).
    pub const FAR4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);
    pub const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
    pub const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);
    pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0x10);
    pub const PEER_IF: &str = "lbxpeer0";
    pub const NODE_IF: &str = "lbxnode0";

    pub struct Lab {
        pub peer: String,
        pub node: String,
    }

    pub fn sh(args: &[&str]) -> Result<String, String> {
        let o = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
        if !o.status.success() {
            return Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    impl Lab {
        /// The namespaces `lbx<pid><tag>p` and `lbx<pid><tag>n`.
        pub fn new(tag: &str) -> Lab {
            Lab::with_queues(tag, 1)
        }

        /// The same with `queues` rx and tx queues on each end of the veth pair.
        pub fn with_queues(tag: &str, queues: u32) -> Lab {
            let q = queues.to_string();
            // SAFETY: reads the effective user id.
            assert_eq!(unsafe { libc::geteuid() }, 0, "the live-port tests need root (network namespaces)");
            let base = format!("lbx{}{tag}", std::process::id());
            let lab = Lab { peer: format!("{base}p"), node: format!("{base}n") };
            let (p, n) = (lab.peer.as_str(), lab.node.as_str());
            for ns in [p, n] {
                let _ = sh(&["ip", "netns", "del", ns]);
                sh(&["ip", "netns", "add", ns]).unwrap();
            }
            let steps: &[&[&str]] = &[
                &[
                    "ip",
                    "-n",
                    p,
                    "link",
                    "add",
                    PEER_IF,
                    "numtxqueues",
                    &q,
                    "numrxqueues",
                    &q,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    NODE_IF,
                    "numtxqueues",
                    &q,
                    "numrxqueues",
                    &q,
                    "netns",
                    n,
                ],
                &["ip", "-n", p, "addr", "add", "198.18.0.1/24", "dev", PEER_IF],
                &["ip", "-n", n, "addr", "add", "198.18.0.2/24", "dev", NODE_IF],
                &["ip", "-n", p, "addr", "add", "2001:2:0:1::1/64", "dev", PEER_IF, "nodad"],
                &["ip", "-n", n, "addr", "add", "2001:2:0:1::2/64", "dev", NODE_IF, "nodad"],
                &["ip", "-n", p, "link", "set", PEER_IF, "up"],
                &["ip", "-n", n, "link", "set", NODE_IF, "up"],
                &["ip", "-n", p, "link", "set", "lo", "up"],
                &["ip", "-n", n, "link", "set", "lo", "up"],
                &["ip", "-n", p, "route", "add", "198.19.0.10/32", "via", "198.18.0.2"],
                &["ip", "-n", p, "route", "add", "198.18.9.0/24", "via", "198.18.0.2"],
                &["ip", "-n", p, "route", "add", "2001:2:0:ff::10/128", "via", "2001:2:0:1::2"],
            ];
            for s in steps {
                sh(s).unwrap();
            }
            lab
        }

        /// Moves the calling thread into namespace `ns` (sockets it opens live there).
        pub fn enter(ns: &str) {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: setns on a namespace file we hold open; it affects this thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {ns}");
        }

        /// The peer's kernel sends `count` datagrams to each of `dsts` (port 7777) from a
        /// thread in the peer namespace and waits up to 5 s for as many answers; returns the
        /// sources it heard from.
        pub fn peer_sends(&self, dsts: Vec<IpAddr>, count: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
            let ns = self.peer.clone();
            std::thread::spawn(move || {
                Lab::enter(&ns);
                let s4 = UdpSocket::bind("0.0.0.0:0").unwrap();
                let s6 = UdpSocket::bind("[::]:0").unwrap();
                let mut want = 0;
                for d in &dsts {
                    let s = if d.is_ipv4() { &s4 } else { &s6 };
                    for i in 0..count {
                        s.send_to(format!("ping {i}").as_bytes(), (*d, 7777)).unwrap();
                        want += 1;
                    }
                }
                let mut heard = Vec::new();
                let end = Instant::now() + Duration::from_secs(5);
                let mut buf = [0u8; 2048];
                while heard.len() < want && Instant::now() < end {
                    for s in [&s4, &s6] {
                        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                        if let Ok((_, from)) = s.recv_from(&mut buf) {
                            heard.push(from);
                        }
                    }
                }
                heard
            })
        }

        /// Whether the node's kernel answers a ping from the peer (IPv4 needs ARP, IPv6 ND).
        pub fn ping(&self, dst: &str) -> bool {
            sh(&["ip", "netns", "exec", &self.peer, "ping", "-c", "1", "-W", "2", dst]).is_ok()
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            for ns in [&self.peer, &self.node] {
                let _ = sh(&["ip", "netns", "del", ns]);
            }
        }
    }

    /// Turns a UDP request to port 7777 into its answer, in place: MACs, addresses and ports
    /// swapped, the checksum computed in full (the request's may be partial). False if the frame
    /// is not such a request.
    pub fn answer(frame: &mut [u8]) -> bool {
        let v4 = frame.len() >= 42 && frame[12..14] == [8, 0];
        let v6 = frame.len() >= 62 && frame[12..14] == [0x86, 0xdd];
        let (addrs, alen, l4) = if v4 && frame[23] == 17 {
            (26, 4, 14 + usize::from(frame[14] & 15) * 4)
        } else if v6 && frame[20] == 17 {
            (22, 16, 54)
        } else {
            return false;
        };
        if frame.len() < l4 + 8 || frame[l4 + 2..l4 + 4] != 7777u16.to_be_bytes() {
            return false;
        }
        for i in 0..6 {
            frame.swap(i, 6 + i);
        }
        for i in 0..alen {
            frame.swap(addrs + i, addrs + alen + i);
        }
        for i in 0..2 {
            frame.swap(l4 + i, l4 + 2 + i);
        }
        super::fill_checksum(frame)
    }
}

#[cfg(test)]
mod live {
    use super::lab::*;
    use super::*;
    use std::time::{Duration, Instant};

    /// Valid TCP/UDP checksum (as its receiver would check it).
    fn checksum_ok(frame: &[u8]) -> bool {
        let mut f = frame.to_vec();
        fill_checksum(&mut f) && f == frame
    }

    #[test]
    #[ignore = "root: network namespaces (cargo test -p lb-dpdk -- --ignored afpacket)"]
    fn afpacket_takes_owned_frames_answers_them_and_leaves_arp_and_nd_to_the_kernel() {
        let lab = Lab::new("p");
        Lab::enter(&lab.node);
        let own = Ownership { addresses: vec![VIP4.into(), VIP6.into()], ..Default::default() };
        let mut ports = AfPacketPort::open_group(NODE_IF, 2, &own, &AfPacketOptions::default()).unwrap();
        assert!(ports[0].group().is_some());
        assert_eq!(ports[0].group(), ports[1].group());
        let sender = lab.peer_sends(vec![VIP4.into(), VIP6.into()], 3);
        let (mut got, mut answered) = (Vec::new(), 0);
        let end = Instant::now() + Duration::from_secs(5);
        while answered < 6 && Instant::now() < end {
            for p in ports.iter_mut() {
                let mut rx = Vec::new();
                p.rx_burst(&mut rx, 32);
                let mut tx = Vec::new();
                for mut b in rx {
                    let (buf, start, len) = b.parts();
                    let f = &mut buf[start..start + len];
                    got.push(f.to_vec());
                    assert!(checksum_ok(f), "a frame taken has a complete checksum");
                    if answer(f) {
                        tx.push(b);
                    } else {
                        p.recycle(b);
                    }
                }
                let n = tx.len();
                assert_eq!(p.tx_burst(&mut tx), n);
                answered += n;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let heard = sender.join().unwrap();
        assert_eq!(answered, 6, "frames taken: {}", got.len());
        assert_eq!(heard.len(), 6, "answers the peer's kernel accepted: {heard:?}");
        assert!(heard.iter().all(|a| a.ip() == IpAddr::from(VIP4) || a.ip() == IpAddr::from(VIP6)));
        let s: Vec<_> = ports.iter_mut().map(|p| p.stats()).collect();
        let total = |f: fn(&AfPacketStats) -> u64| s.iter().map(f).sum::<u64>();
        assert_eq!(total(|s| s.taken), 6, "{s:?}");
        assert!(total(|s| s.not_owned) > 0, "ARP and ND were seen and left alone: {s:?}");
        assert!(total(|s| s.csum_completed) > 0, "veth senders leave checksums partial: {s:?}");
        // The kernel still has ARP, ND and its own addresses.
        assert!(lab.ping("198.18.0.2"));
        assert!(lab.ping("2001:2:0:1::2"));
        // A reload: the VIPs are no longer owned.
        ports[1].update_ownership(&Ownership::default()).unwrap();
        let sender = lab.peer_sends(vec![VIP4.into()], 1);
        let end = Instant::now() + Duration::from_millis(300);
        let mut rx = Vec::new();
        while Instant::now() < end {
            for p in ports.iter_mut() {
                p.rx_burst(&mut rx, 32);
            }
        }
        assert!(rx.is_empty());
        assert!(sender.join().unwrap().is_empty());
    }
}
