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
use std::sync::atomic::{AtomicU32, Ordering};

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
    pool: Vec<PacketBuf>,
    ifname: String,
    ifindex: i32,
    /// The longest frame taken: the MTU with an Ethernet header and two VLAN tags.
    max_len: usize,
    /// UDP sockets on the tunnel endpoints' port 4789, so that the kernel, which sees the VxLAN
    /// frames too, drops them quietly instead of answering "port unreachable".
    _sinks: Vec<UdpSocket>,
    /// The fanout group (0: none).
    group: u16,
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

impl AfPacketPort {
    /// One port taking every owned frame of `ifname` (no fanout).
    pub fn open(ifname: &str, ownership: &Ownership) -> Result<Self, String> {
        let mut v = Self::open_group(ifname, 1, ownership, &AfPacketOptions::default())?;
        Ok(v.remove(0))
    }

    /// `workers` ports on `ifname`, one per worker, sharing its frames by a hash of their flow
    /// (PACKET_FANOUT_HASH: both directions of a flow to one worker; IP fragments other than the
    /// first hash on the addresses alone, so they may reach another worker than the first).
    pub fn open_group(
        ifname: &str,
        workers: usize,
        ownership: &Ownership,
        opts: &AfPacketOptions,
    ) -> Result<Vec<Self>, String> {
        let (ifindex, mtu) = interface(ifname)?;
        let mut ports = Vec::with_capacity(workers);
        let mut group = 0u16;
        for i in 0..workers.max(1) {
            let p = Self::open_one(ifname, ifindex, mtu, ownership, opts, workers > 1, group, i == 0)?;
            group = p.group;
            ports.push(p);
        }
        Ok(ports)
    }

    #[allow(clippy::too_many_arguments)]
    fn open_one(
        ifname: &str,
        ifindex: i32,
        mtu: usize,
        ownership: &Ownership,
        opts: &AfPacketOptions,
        fanout: bool,
        group: u16,
        first: bool,
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
            pool: Vec::new(),
            ifname: ifname.to_owned(),
            ifindex,
            max_len,
            _sinks: Vec::new(),
            group: 0,
            now: monotonic_secs(),
            stats: AfPacketStats::default(),
        };
        bind(fd, &sockaddr(ifindex, libc::ETH_P_ALL as u16), &format!("binding to {ifname}"))?;
        if fanout {
            // The first socket has the kernel pick a group id no other group uses; the others join it.
            let type_flags = PACKET_FANOUT_HASH | if group == 0 { PACKET_FANOUT_FLAG_UNIQUEID } else { 0 };
            let arg = u32::from(group) | (type_flags << 16);
            setopt(fd, libc::SOL_PACKET, PACKET_FANOUT, &arg, "PACKET_FANOUT")?;
            let mut got = 0u32;
            let mut l = 4u32;
            // SAFETY: reads a u32 option.
            if unsafe { libc::getsockopt(fd, libc::SOL_PACKET, PACKET_FANOUT, (&mut got as *mut u32).cast(), &mut l) }
                != 0
            {
                return Err(os_err("PACKET_FANOUT (group id)"));
            }
            port.group = got as u16;
        }
        let txfd = port.tx.as_raw_fd();
        if opts.qdisc_bypass {
            setopt(txfd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &1i32, "PACKET_QDISC_BYPASS")?;
        }
        bind(txfd, &sockaddr(ifindex, 0), &format!("binding the tx socket to {ifname}"))?;
        if first {
            port._sinks = sinks(ifname, &ownership.tunnel_endpoints);
        }
        eprintln!(
            "lb-dpdk: {ifname}: AF_PACKET (TPACKET_V3 ring of {} KiB{}), the kernel sees its frames too",
            len / 1024,
            if fanout { format!(", fanout group {}", port.group) } else { String::new() }
        );
        Ok(port)
    }

    /// The fanout group's id (0 without fanout).
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Changes the frames the port takes (a reload).
    pub fn update_ownership(&mut self, ownership: &Ownership) {
        self.rules = Rules::new(ownership);
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
