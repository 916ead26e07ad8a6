//! The AF_XDP port: one [`AfXdpPort`] per (interface, rx queue), for one worker per queue.
//!
//! The XDP program `bpf/steer.c` (built by build.rs, embedded here) redirects to the queue's
//! AF_XDP socket only the frames an [`Ownership`] names and passes everything else to the kernel
//! (ARP, ND, BGP, SSH, probes). One program serves all the queues of an interface (one XDP
//! program per interface: libxdp's dispatcher is not used), so the ports of one interface share
//! an attachment: the first port loads and attaches the program (native mode, else generic) and
//! fills its maps, the last one to drop detaches it.
//!
//! Each port owns a UMEM of [`FRAME_SIZE`]-byte chunks (aligned mode) and one socket bound to its
//! queue (zero-copy where the driver allows it, else copy mode; need_wakeup). A received frame is
//! handed to the data path where it lies, [`HEADROOM`] bytes and more in front of it (see
//! [`RX_OFFSET`]), and is sent from the same chunk. Completions give chunks back to a free list
//! that refills the fill ring. A frame from another port's UMEM (the host agent's two sides) is
//! copied into a chunk of this one.
//!
//! Requires root (CAP_NET_ADMIN and CAP_BPF/CAP_SYS_ADMIN), and CAP_IPC_LOCK or an
//! RLIMIT_MEMLOCK above the UMEM's size (`frames * FRAME_SIZE` bytes a port).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

use crate::port::{BurstFrame, FrameBuf, Ownership, Port, HEADROOM};

/// Bytes of a UMEM chunk: one page (aligned mode needs a power of two).
pub const FRAME_SIZE: usize = 4096;
/// Bytes the kernel keeps free in front of every frame it writes into a chunk (the kernel's
/// XDP_PACKET_HEADROOM, in copy and zero-copy mode alike), after the UMEM's own headroom.
pub const XDP_PACKET_HEADROOM: usize = 256;
/// The UMEM headroom configured: what [`HEADROOM`] needs beyond the kernel's own (none while
/// HEADROOM is at most 256).
pub const UMEM_HEADROOM: usize = HEADROOM.saturating_sub(XDP_PACKET_HEADROOM);
/// Where a received frame starts in its chunk.
pub const RX_OFFSET: usize = UMEM_HEADROOM + XDP_PACKET_HEADROOM;
/// The longest frame a chunk receives (no multi-buffer: a jumbo frame does not fit a page).
pub const MAX_RX_FRAME: usize = FRAME_SIZE - RX_OFFSET;
const _: () = assert!(RX_OFFSET >= HEADROOM && FRAME_SIZE.is_power_of_two());

/// Sizes of the maps in steer.c (its MAX_QUEUES, MAX_OWNED, MAX_TUNNEL, MAX_PASS).
const MAX_QUEUES: u32 = 256;
const MAX_OWNED: usize = 16384;
const MAX_TUNNEL: usize = 256;
const MAX_PASS: usize = 1024;

/// The program's object, aligned for the ELF reader (include_bytes alone gives alignment 1).
#[cfg(not(lb_no_xdp))]
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);
#[cfg(not(lb_no_xdp))]
static STEER_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/steer.o")));

/// How the socket moves frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyMode {
    /// Zero-copy where the driver does it, else copy (veth: copy).
    #[default]
    Auto,
    /// Copy mode only.
    Copy,
    /// Zero-copy only (fails where the driver cannot).
    ZeroCopy,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) mode, else generic (SKB) mode.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

/// Settings of an AF_XDP port.
#[derive(Debug, Clone)]
pub struct AfXdpOptions {
    /// UMEM chunks ([`FRAME_SIZE`] bytes each; at least twice `ring_size`).
    pub frames: u32,
    /// Entries of each ring (fill, completion, rx, tx): a power of two.
    pub ring_size: u32,
    /// Copy or zero-copy.
    pub copy: CopyMode,
    /// Native or generic XDP.
    pub attach: AttachMode,
    /// Busy polling: SO_PREFER_BUSY_POLL with SO_BUSY_POLL of this many microseconds (and a
    /// budget of 64), so that the worker's own rx/tx calls drive the driver's NAPI instead of
    /// interrupts. `None`: interrupts and need_wakeup.
    pub busy_poll_us: Option<u32>,
}

impl Default for AfXdpOptions {
    fn default() -> Self {
        AfXdpOptions {
            frames: 4096,
            ring_size: 2048,
            copy: CopyMode::Auto,
            attach: AttachMode::Auto,
            busy_poll_us: None,
        }
    }
}

/// Counters of a port: its socket's (`XDP_STATISTICS`) and its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfXdpStats {
    /// Frames the kernel dropped for this socket (rx ring full, or no fill-ring chunk).
    pub rx_dropped: u64,
    /// Rx frames lost because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (the worker did not give chunks back fast enough).
    pub rx_fill_ring_empty: u64,
    /// Invalid descriptors the kernel met on the rx and tx rings (a bug if not zero).
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Times the tx ring was found empty by the kernel (informational).
    pub tx_ring_empty: u64,
    /// Tx kicks the kernel answered "busy, again later" (EAGAIN, EBUSY, ENOBUFS).
    pub tx_kick_busy: u64,
    /// Frames sent from another port's UMEM, copied into this one's.
    pub tx_copied_in: u64,
    /// Frames received with less than HEADROOM bytes before them, moved within their chunk.
    pub rx_moved: u64,
}

/// The XDP program's counters for a whole interface (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Frames redirected to a socket.
    pub redirected: u64,
    /// Frames passed to the kernel (not owned).
    pub passed: u64,
    /// Owned frames passed to the kernel because their queue had no socket.
    pub no_socket: u64,
}

/// The message for an xdpilone error.
fn errno(what: &str, e: xdpilone::Errno) -> String {
    format!("{what}: {}", std::io::Error::from_raw_os_error(e.get_raw().abs()))
}

/// An error and its sources, on one line (aya's errors wrap the syscall's).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The network namespace of the calling thread (an interface index names an interface only
/// within one).
pub(crate) fn netns_id() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0)
}

fn ifindex(ifname: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(ifname).map_err(|_| format!("{ifname:?}: not an interface name"))?;
    // SAFETY: c is a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(format!("{ifname}: {}", std::io::Error::last_os_error()));
    }
    Ok(i)
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `struct ifreq` with its `ifr_data` member.
#[repr(C)]
struct IfReqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// The rx queues of an interface, for one worker (and one [`AfXdpPort`]) each: the channels
/// ethtool reports (combined plus rx-only), else the `rx-N` entries of sysfs, else 1. ethtool is
/// asked first because it answers for the calling thread's network namespace, which sysfs shows
/// only if it was mounted there.
pub fn queues(ifname: &str) -> u32 {
    if let Some(n) = ethtool_rx_queues(ifname) {
        return n;
    }
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count() as u32)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

fn ethtool_rx_queues(ifname: &str) -> Option<u32> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    if ifname.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut ch = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    let mut req =
        IfReqData { name: [0; libc::IFNAMSIZ], data: (&mut ch as *mut EthtoolChannels).cast(), _pad: [0; 16] };
    for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: req is an ifreq whose data points at a live ethtool_channels for the call.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req as *mut IfReqData) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    let n = ch.combined_count + ch.rx_count;
    (r == 0 && n > 0).then_some(n)
}

/// An interface's XDP program, shared by the ports of its queues.
struct Attachment {
    ifname: String,
    key: IfKey,
    /// Native or generic.
    native: bool,
    #[cfg(not(lb_no_xdp))]
    ebpf: Mutex<aya::Ebpf>,
    ownership: Mutex<Ownership>,
}

/// An interface: its network namespace (the inode of /proc/thread-self/ns/net) and its index.
type IfKey = (u64, u32);

/// The interfaces with a program attached by this process.
static ATTACHED: Mutex<Vec<(IfKey, Weak<Attachment>)>> = Mutex::new(Vec::new());

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Ok(mut list) = ATTACHED.lock() {
            list.retain(|(k, w)| *k != self.key || w.strong_count() > 0);
        }
        // Dropping the Ebpf detaches the program (its bpf_link closes) and frees its maps.
    }
}

#[cfg(lb_no_xdp)]
fn attachment(ifname: &str, _: &Ownership, _: AttachMode) -> Result<Arc<Attachment>, String> {
    Err(format!(
        "{ifname}: this lb-dpdk was built without its XDP program ({}): install clang (Debian: apt-get install \
         clang) and rebuild, or run with `--live afpacket`",
        env!("LB_NO_XDP_REASON")
    ))
}

/// The attachment of `ifname`: the existing one (its ownership must be the same), or a new one.
#[cfg(not(lb_no_xdp))]
fn attachment(ifname: &str, ownership: &Ownership, mode: AttachMode) -> Result<Arc<Attachment>, String> {
    use aya::programs::{Xdp, XdpMode};
    let key = (netns_id(), ifindex(ifname)?);
    let mut list = ATTACHED.lock().map_err(|_| "the AF_XDP registry is poisoned".to_string())?;
    if let Some(a) = list.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
        if *a.ownership.lock().map_err(|_| "poisoned")? != *ownership {
            return Err(format!("{ifname}: its queues must own the same frames (one XDP program an interface)"));
        }
        return Ok(a);
    }
    check_ownership(ownership)?;
    let mut ebpf = aya::Ebpf::load(&STEER_OBJ.0).map_err(|e| format!("loading the XDP program: {}", chain(&e)))?;
    let prog: &mut Xdp = ebpf
        .program_mut("lb_steer")
        .ok_or("the XDP object has no program lb_steer")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| chain(&e))?;
    prog.load().map_err(|e| format!("loading the XDP program (needs root: CAP_BPF, CAP_NET_ADMIN): {}", chain(&e)))?;
    let native_err = match mode {
        AttachMode::Generic => None,
        _ => match prog.attach(ifname, XdpMode::Driver) {
            Ok(_) => Some(Ok(())),
            Err(e) => Some(Err(chain(&e))),
        },
    };
    let native = match native_err {
        Some(Ok(())) => true,
        Some(Err(e)) if mode == AttachMode::Native => {
            return Err(format!("{ifname}: attaching the XDP program in native mode: {e}"));
        }
        other => {
            prog.attach(ifname, XdpMode::Skb).map_err(|e| {
                let native = match &other {
                    Some(Err(n)) => format!("native mode: {n}; "),
                    _ => String::new(),
                };
                format!(
                    "{ifname}: attaching the XDP program: {native}generic mode: {} (another XDP program on the \
                     interface? `ip link set dev {ifname} xdp off`)",
                    chain(&e)
                )
            })?;
            if let Some(Err(n)) = other {
                eprintln!("lb-dpdk: {ifname}: native XDP refused ({n}): the program runs in generic (SKB) mode");
            }
            false
        }
    };
    apply_ownership(&mut ebpf, &Ownership::default(), ownership)?;
    let a = Arc::new(Attachment {
        ifname: ifname.to_owned(),
        key,
        native,
        ebpf: Mutex::new(ebpf),
        ownership: Mutex::new(ownership.clone()),
    });
    list.retain(|(_, w)| w.strong_count() > 0);
    list.push((key, Arc::downgrade(&a)));
    Ok(a)
}

fn check_ownership(o: &Ownership) -> Result<(), String> {
    let pass = o.all_except.as_ref().map_or(0, Vec::len);
    for (what, n, max) in [
        ("owned addresses", o.addresses.len(), MAX_OWNED),
        ("tunnel endpoints", o.tunnel_endpoints.len(), MAX_TUNNEL),
        ("pass-through addresses", pass, MAX_PASS),
    ] {
        // The IPv4 and IPv6 maps have the size each: a bound on their sum is simpler and enough.
        if n > max {
            return Err(format!("{n} {what}: the XDP program holds {max}"));
        }
    }
    Ok(())
}

/// Writes the maps of `new`, removing what only `old` had (new entries go in first, so that an
/// address both hold is never missing).
#[cfg(not(lb_no_xdp))]
fn apply_ownership(ebpf: &mut aya::Ebpf, old: &Ownership, new: &Ownership) -> Result<(), String> {
    use aya::maps::{Array, HashMap};
    fn set(ebpf: &mut aya::Ebpf, name: &str, old: &[IpAddr], new: &[IpAddr]) -> Result<(), String> {
        let e = |e: aya::maps::MapError| format!("map {name}: {}", chain(&e));
        {
            let mut m4: HashMap<_, u32, u8> =
                HashMap::try_from(ebpf.map_mut(&format!("{name}4")).ok_or("map missing")?).map_err(e)?;
            for a in new {
                if let IpAddr::V4(v4) = a {
                    m4.insert(u32::from_ne_bytes(v4.octets()), 1, 0).map_err(e)?;
                }
            }
            for a in old.iter().filter(|a| !new.contains(a)) {
                if let IpAddr::V4(v4) = a {
                    let _ = m4.remove(&u32::from_ne_bytes(v4.octets()));
                }
            }
        }
        let mut m6: HashMap<_, [u8; 16], u8> =
            HashMap::try_from(ebpf.map_mut(&format!("{name}6")).ok_or("map missing")?).map_err(e)?;
        for a in new {
            if let IpAddr::V6(v6) = a {
                m6.insert(v6.octets(), 1, 0).map_err(e)?;
            }
        }
        for a in old.iter().filter(|a| !new.contains(a)) {
            if let IpAddr::V6(v6) = a {
                let _ = m6.remove(&v6.octets());
            }
        }
        Ok(())
    }
    check_ownership(new)?;
    set(ebpf, "owned", &old.addresses, &new.addresses)?;
    set(ebpf, "tunnel", &old.tunnel_endpoints, &new.tunnel_endpoints)?;
    let none = Vec::new();
    set(ebpf, "pass", old.all_except.as_ref().unwrap_or(&none), new.all_except.as_ref().unwrap_or(&none))?;
    let mut mode: Array<_, u32> =
        Array::try_from(ebpf.map_mut("mode").ok_or("map mode missing")?).map_err(|e| chain(&e))?;
    mode.set(0, u32::from(new.all_except.is_some()), 0).map_err(|e| format!("map mode: {}", chain(&e)))?;
    Ok(())
}

#[cfg(not(lb_no_xdp))]
impl Attachment {
    fn set_socket(&self, queue: u32, fd: RawFd) -> Result<(), String> {
        let mut ebpf = self.ebpf.lock().map_err(|_| "poisoned")?;
        let mut m =
            aya::maps::XskMap::try_from(ebpf.map_mut("xsks").ok_or("map xsks missing")?).map_err(|e| chain(&e))?;
        m.set(queue, fd, 0).map_err(|e| format!("{}: queue {queue} into the XSKMAP: {}", self.ifname, chain(&e)))
    }

    fn unset_socket(&self, queue: u32) {
        if let Ok(mut ebpf) = self.ebpf.lock() {
            if let Some(m) = ebpf.map_mut("xsks") {
                if let Ok(mut m) = aya::maps::XskMap::try_from(m) {
                    let _ = m.unset(queue);
                }
            }
        }
    }

    fn counters(&self) -> XdpCounters {
        let Ok(ebpf) = self.ebpf.lock() else { return XdpCounters::default() };
        let Some(Ok(m)) = ebpf.map("counters").map(aya::maps::PerCpuArray::<_, u64>::try_from) else {
            return XdpCounters::default();
        };
        let get = |i: u32| m.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        XdpCounters { redirected: get(0), passed: get(1), no_socket: get(2) }
    }

    fn update(&self, ownership: &Ownership) -> Result<(), String> {
        let mut old = self.ownership.lock().map_err(|_| "poisoned")?;
        let mut ebpf = self.ebpf.lock().map_err(|_| "poisoned")?;
        apply_ownership(&mut ebpf, &old, ownership)?;
        *old = ownership.clone();
        Ok(())
    }
}

#[cfg(lb_no_xdp)]
impl Attachment {
    fn set_socket(&self, _: u32, _: RawFd) -> Result<(), String> {
        Err("no XDP program".into())
    }
    fn unset_socket(&self, _: u32) {}
    fn counters(&self) -> XdpCounters {
        XdpCounters::default()
    }
    fn update(&self, _: &Ownership) -> Result<(), String> {
        Err("no XDP program".into())
    }
}

/// A UMEM's memory and the chunks other ports hand back to it. Buffers point into it without a
/// reference count (a count a frame would cost two atomic operations); its port keeps it alive,
/// and leaks it rather than unmap it while buffers are still out.
struct Shared {
    area: NonNull<u8>,
    len: usize,
    /// Chunks of this UMEM freed elsewhere: a buffer dropped, or sent by another port (copied).
    returned: Mutex<Vec<u64>>,
    any_returned: AtomicBool,
}

// SAFETY: the area is plain memory; each chunk is used by one owner at a time (the kernel, the
// port's free list, or one buffer), and the returned list is behind a mutex.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn give_back(&self, chunk: u64) {
        if let Ok(mut v) = self.returned.lock() {
            v.push(chunk);
            self.any_returned.store(true, Ordering::Release);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the area was mapped with this length by `map_area`; no buffer points into it
        // (the port leaks its Shared otherwise).
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
    }
}

fn map_area(len: usize) -> Result<NonNull<u8>, String> {
    // SAFETY: an anonymous private mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mapping a UMEM of {len} bytes: {}", std::io::Error::last_os_error()));
    }
    NonNull::new(p.cast()).ok_or_else(|| "mmap returned NULL".into())
}

/// A frame in a UMEM chunk: `chunk[start..start + len]` of its [`FRAME_SIZE`] bytes. Dropping it
/// gives the chunk back to its port.
pub struct XdpBuf {
    owner: NonNull<Shared>,
    chunk: NonNull<u8>,
    /// The chunk's offset in its UMEM.
    addr: u64,
    start: u32,
    len: u32,
}

// SAFETY: the buffer alone uses its chunk; its owner's give_back is thread-safe.
unsafe impl Send for XdpBuf {}

impl XdpBuf {
    fn owner(&self) -> &Shared {
        // SAFETY: the owner outlives its buffers (its port leaks it while any is out).
        unsafe { self.owner.as_ref() }
    }
}

impl Drop for XdpBuf {
    fn drop(&mut self) {
        self.owner().give_back(self.addr);
    }
}

impl BurstFrame for XdpBuf {
    #[inline]
    fn parts(&mut self) -> (&mut [u8], usize, usize) {
        // SAFETY: the chunk is FRAME_SIZE bytes of the UMEM, used by this buffer alone while it
        // lives (neither the kernel nor the port touch it until it is sent or given back).
        let buf = unsafe { std::slice::from_raw_parts_mut(self.chunk.as_ptr(), FRAME_SIZE) };
        (buf, self.start as usize, self.len as usize)
    }
}

impl FrameBuf for XdpBuf {
    #[inline]
    fn set_frame(&mut self, start: usize, len: usize) {
        // The kernel would read beyond the chunk: a hard check.
        assert!(start + len <= FRAME_SIZE, "frame {start}+{len} beyond a chunk of {FRAME_SIZE}");
        (self.start, self.len) = (start as u32, len as u32);
    }
}

/// The chunk an address of a descriptor lies in (aligned mode: chunks are FRAME_SIZE apart).
#[inline]
pub fn chunk_of(addr: u64) -> u64 {
    addr & !(FRAME_SIZE as u64 - 1)
}

/// Where a received frame at `offset` of its chunk, `len` bytes, is given to the data path: where
/// it lies if HEADROOM bytes are free before it, else at HEADROOM (the caller moves it); `None`
/// if it cannot have its headroom within the chunk.
#[inline]
pub fn rx_place(offset: usize, len: usize) -> Option<usize> {
    if offset >= HEADROOM && offset + len <= FRAME_SIZE {
        Some(offset)
    } else if HEADROOM + len <= FRAME_SIZE {
        Some(HEADROOM)
    } else {
        None
    }
}

/// An AF_XDP socket on one rx queue of one interface, with its UMEM.
pub struct AfXdpPort {
    // The rings and the socket go before the UMEM's memory (declaration order is drop order).
    rx: RingRx,
    tx: RingTx,
    fq: DeviceQueue,
    user: User,
    _umem: Umem,
    shared: Arc<Shared>,
    attachment: Arc<Attachment>,
    ifname: String,
    queue: u32,
    zero_copy: bool,
    busy_poll: bool,
    /// Free chunks (their offsets).
    free: Vec<u64>,
    /// Descriptors given to the tx ring and not completed yet.
    tx_inflight: u32,
    /// Buffers of this UMEM out with the data path (or another port).
    out: u64,
    ring_size: u32,
    /// Scratch: descriptors to send, descriptors received.
    descs: Vec<XdpDesc>,
    rx_descs: Vec<XdpDesc>,
    now: u32,
    stats: AfXdpStats,
}

// SAFETY: a port is used by one thread at a time (its worker): it moves there once. Its raw
// pointers (the UMEM area in Umem and Shared) are to memory it owns.
unsafe impl Send for AfXdpPort {}

/// What `setup` builds.
struct Socketed {
    rx: RingRx,
    tx: RingTx,
    fq: DeviceQueue,
    user: User,
    umem: Umem,
    shared: Arc<Shared>,
}

/// Creates the UMEM and the socket on (ifname, queue) and binds it with `flags`.
fn setup(ifname: &str, queue: u32, opts: &AfXdpOptions, flags: u16) -> Result<Socketed, String> {
    let len = opts.frames as usize * FRAME_SIZE;
    let area = map_area(len)?;
    let shared = Arc::new(Shared { area, len, returned: Mutex::new(Vec::new()), any_returned: AtomicBool::new(false) });
    let cfg = UmemConfig {
        fill_size: opts.ring_size,
        complete_size: opts.ring_size,
        frame_size: FRAME_SIZE as u32,
        headroom: UMEM_HEADROOM as u32,
        flags: 0,
    };
    let slice = NonNull::slice_from_raw_parts(area, len);
    // SAFETY: the area is a page-aligned mapping of `len` bytes that Shared keeps mapped for as
    // long as the port (and so the Umem) lives.
    let umem = unsafe { Umem::new(cfg, slice) }.map_err(|e| {
        let hint = if matches!(e.get_raw().abs(), libc::ENOBUFS | libc::ENOMEM | libc::EPERM) {
            format!(
                " (the UMEM pins {} KiB: give the process CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK, `ulimit -l`, or \
                 fewer frames)",
                len / 1024
            )
        } else {
            String::new()
        };
        format!("{}{hint}", errno("registering the UMEM (XDP_UMEM_REG)", e))
    })?;
    let mut info = IfInfo::invalid();
    let c = std::ffi::CString::new(ifname).map_err(|_| format!("{ifname:?}: not an interface name"))?;
    info.from_name(&c).map_err(|e| errno(ifname, e))?;
    info.set_queue(queue);
    let sock = Socket::with_shared(&info, &umem).map_err(|e| errno("AF_XDP socket", e))?;
    let fq = umem.fq_cq(&sock).map_err(|e| errno("fill and completion rings", e))?;
    let size = NonZeroU32::new(opts.ring_size);
    let user = umem
        .rx_tx(&sock, &SocketConfig { rx_size: size, tx_size: size, bind_flags: flags })
        .map_err(|e| errno("rx and tx rings", e))?;
    let rx = user.map_rx().map_err(|e| errno("mapping the rx ring", e))?;
    let tx = user.map_tx().map_err(|e| errno("mapping the tx ring", e))?;
    umem.bind(&user).map_err(|e| errno(&format!("binding to {ifname} queue {queue}"), e))?;
    Ok(Socketed { rx, tx, fq, user, umem, shared })
}

fn set_sockopt(fd: RawFd, name: libc::c_int, value: u32) -> Result<(), String> {
    // SAFETY: a u32 option value of the right size.
    let r = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, name, (&value as *const u32).cast(), std::mem::size_of::<u32>() as u32)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// Seconds of CLOCK_MONOTONIC (the coarse clock: a read of the vDSO's page, once a burst).
fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

impl AfXdpPort {
    /// Opens queue `queue` of `ifname` with the default options.
    pub fn open(ifname: &str, queue: u32, ownership: &Ownership) -> Result<Self, String> {
        Self::open_with(ifname, queue, ownership, &AfXdpOptions::default())
    }

    /// Opens queue `queue` of `ifname`: attaches the XDP program if no port of this interface has
    /// (all the queues of an interface own the same frames), creates the UMEM and the socket,
    /// fills the fill ring and puts the socket in the program's map at its queue.
    pub fn open_with(ifname: &str, queue: u32, ownership: &Ownership, opts: &AfXdpOptions) -> Result<Self, String> {
        if queue >= MAX_QUEUES {
            return Err(format!("{ifname}: queue {queue}: the XDP program serves queues 0 to {}", MAX_QUEUES - 1));
        }
        if !opts.ring_size.is_power_of_two() || opts.frames < 2 * opts.ring_size {
            return Err(format!(
                "AF_XDP: rings of {} (a power of two) and {} frames (at least twice the ring)",
                opts.ring_size, opts.frames
            ));
        }
        let attachment = attachment(ifname, ownership, opts.attach)?;
        let copy_flags = SocketConfig::XDP_BIND_COPY | SocketConfig::XDP_BIND_NEED_WAKEUP;
        let zc_flags = SocketConfig::XDP_BIND_ZEROCOPY | SocketConfig::XDP_BIND_NEED_WAKEUP;
        // Zero-copy needs the program in native mode.
        let try_zc = attachment.native && opts.copy != CopyMode::Copy;
        let (s, zero_copy) = match (try_zc, opts.copy) {
            (false, CopyMode::ZeroCopy) => {
                return Err(format!("{ifname}: zero-copy needs the XDP program in native mode"));
            }
            (false, _) => (setup(ifname, queue, opts, copy_flags)?, false),
            (true, CopyMode::ZeroCopy) => (setup(ifname, queue, opts, zc_flags)?, true),
            (true, _) => match setup(ifname, queue, opts, zc_flags) {
                Ok(s) => (s, true),
                // The first try's UMEM and socket are gone: a failed bind leaves nothing to reuse.
                Err(_) => (setup(ifname, queue, opts, copy_flags)?, false),
            },
        };
        let fd = s.user.as_raw_fd();
        let busy_poll = if let Some(us) = opts.busy_poll_us {
            const SO_PREFER_BUSY_POLL: libc::c_int = 69;
            const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
            set_sockopt(fd, SO_PREFER_BUSY_POLL, 1)
                .and_then(|()| set_sockopt(fd, libc::SO_BUSY_POLL, us))
                .and_then(|()| set_sockopt(fd, SO_BUSY_POLL_BUDGET, 64))
                .map_err(|e| format!("{ifname}: busy polling (SO_PREFER_BUSY_POLL, SO_BUSY_POLL): {e}"))?;
            true
        } else {
            false
        };
        let mut port = AfXdpPort {
            rx: s.rx,
            tx: s.tx,
            fq: s.fq,
            user: s.user,
            _umem: s.umem,
            shared: s.shared,
            attachment,
            ifname: ifname.to_owned(),
            queue,
            zero_copy,
            busy_poll,
            free: (0..u64::from(opts.frames)).rev().map(|i| i * FRAME_SIZE as u64).collect(),
            tx_inflight: 0,
            out: 0,
            ring_size: opts.ring_size,
            descs: Vec::with_capacity(opts.ring_size as usize),
            rx_descs: Vec::with_capacity(opts.ring_size as usize),
            now: monotonic_secs(),
            stats: AfXdpStats::default(),
        };
        port.refill();
        port.attachment.set_socket(queue, fd)?;
        Ok(port)
    }

    /// One line on how the port runs: interface, queue, copy or zero-copy, native or generic XDP.
    pub fn describe(&self) -> String {
        format!(
            "{} queue {}: AF_XDP in {} mode, XDP program in {} mode, {}",
            self.ifname,
            self.queue,
            if self.zero_copy { "zero-copy" } else { "copy" },
            if self.attachment.native { "native" } else { "generic (SKB)" },
            if self.busy_poll { "busy polling" } else { "need_wakeup" }
        )
    }

    /// Whether the socket runs in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Whether the XDP program runs in native (driver) mode.
    pub fn native(&self) -> bool {
        self.attachment.native
    }

    /// The socket's and the port's counters.
    pub fn stats(&self) -> AfXdpStats {
        let mut s = self.stats;
        if let Ok(k) = self.user.statistics_v2() {
            s.rx_dropped = k.rx_dropped;
            s.rx_ring_full = k.rx_ring_full;
            s.rx_fill_ring_empty = k.rx_fill_ring_empty_descs;
            s.rx_invalid_descs = k.rx_invalid_descs;
            s.tx_invalid_descs = k.tx_invalid_descs;
            s.tx_ring_empty = k.tx_ring_empty_descs;
        }
        s
    }

    /// The XDP program's counters for the whole interface (every queue's port gives the same).
    pub fn xdp_counters(&self) -> XdpCounters {
        self.attachment.counters()
    }

    /// Changes the frames the interface's program takes (a reload: VIPs added or removed); every
    /// queue of the interface follows.
    pub fn update_ownership(&self, ownership: &Ownership) -> Result<(), String> {
        self.attachment.update(ownership)
    }

    /// The rx queues of `ifname` (see [`queues`]).
    pub fn queues(ifname: &str) -> u32 {
        queues(ifname)
    }

    /// Whether the worker may sleep in `poll(2)` on [`Port::wake_fd`]: false while the tx ring
    /// holds frames the kernel has not taken (copy mode sends only when kicked, in rx_burst and
    /// tx_burst).
    pub fn may_sleep(&self) -> bool {
        self.tx.pending() == 0
    }

    /// Chunks that came back from buffers dropped or sent elsewhere.
    fn take_returned(&mut self) {
        if self.shared.any_returned.swap(false, Ordering::Acquire) {
            if let Ok(mut v) = self.shared.returned.lock() {
                self.out -= v.len() as u64;
                self.free.append(&mut v);
            }
        }
    }

    /// Completed transmissions: their chunks are free again.
    fn reap(&mut self) {
        if self.tx_inflight == 0 {
            return;
        }
        let mut c = self.fq.complete(self.tx_inflight);
        let mut n = 0;
        while let Some(addr) = c.read() {
            self.free.push(chunk_of(addr));
            n += 1;
        }
        c.release();
        self.tx_inflight -= n;
    }

    /// Gives the kernel free chunks to receive into.
    fn refill(&mut self) {
        if self.free.is_empty() {
            return;
        }
        let mut f = self.fq.fill(self.free.len() as u32);
        let n = f.insert(self.free.iter().rev().copied()) as usize;
        f.commit();
        self.free.truncate(self.free.len() - n);
    }

    /// Makes the kernel send what the tx ring holds. Copy mode sends only inside this call, a
    /// bounded batch (32 frames) each time, and needs room in the completion ring: the loop
    /// reaps completions between kicks, for at most the calls the ring's frames need.
    fn kick(&mut self) {
        let mut rounds = self.tx.pending() / 32 + 2;
        while self.tx.pending() > 0 && rounds > 0 {
            rounds -= 1;
            if !self.tx.needs_wakeup() && !self.busy_poll {
                break;
            }
            // SAFETY: a zero-length sendto on our socket: the AF_XDP tx kick.
            let r = unsafe {
                libc::sendto(self.user.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0)
            };
            if r < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS) => self.stats.tx_kick_busy += 1,
                    // ENETDOWN and the like: the frames wait in the ring for the link.
                    _ => break,
                }
            }
            self.reap();
            if self.zero_copy {
                // The driver sends asynchronously: one kick is enough.
                break;
            }
        }
    }

    /// A buffer for a received descriptor.
    fn take(&mut self, d: XdpDesc) -> Option<XdpBuf> {
        let chunk = chunk_of(d.addr);
        let offset = (d.addr - chunk) as usize;
        let len = d.len as usize;
        let Some(start) = rx_place(offset, len) else {
            self.free.push(chunk);
            return None;
        };
        // SAFETY: chunk < the area's length (the kernel hands out chunks we gave it).
        let base = unsafe { self.shared.area.add(chunk as usize) };
        if start != offset {
            // SAFETY: both ranges lie within the chunk (rx_place), which the kernel has handed back.
            unsafe { std::ptr::copy(base.as_ptr().add(offset), base.as_ptr().add(start), len) };
            self.stats.rx_moved += 1;
        }
        self.out += 1;
        Some(XdpBuf {
            owner: NonNull::from(&*self.shared),
            chunk: base,
            addr: chunk,
            start: start as u32,
            len: len as u32,
        })
    }

    fn is_mine(&self, b: &XdpBuf) -> bool {
        std::ptr::eq(b.owner.as_ptr(), Arc::as_ptr(&self.shared))
    }

    /// A free chunk holding a copy of `frame` at RX_OFFSET, as a tx descriptor.
    fn copy_in(&mut self, frame: &[u8]) -> Option<XdpDesc> {
        if frame.len() > FRAME_SIZE - RX_OFFSET {
            return None;
        }
        let chunk = self.free.pop()?;
        // SAFETY: a free chunk is ours alone; the copy stays within it (checked above).
        unsafe {
            let dst = self.shared.area.as_ptr().add(chunk as usize + RX_OFFSET);
            std::ptr::copy_nonoverlapping(frame.as_ptr(), dst, frame.len());
        }
        Some(XdpDesc { addr: chunk + RX_OFFSET as u64, len: frame.len() as u32, options: 0 })
    }

    /// Puts `self.descs` on the tx ring; the ones that do not fit are freed. Returns how many went.
    fn send_descs(&mut self) -> usize {
        if self.descs.is_empty() {
            return 0;
        }
        let mut w = self.tx.transmit(self.descs.len() as u32);
        let n = w.insert(self.descs.iter().copied()) as usize;
        w.commit();
        drop(w);
        for d in &self.descs[n..] {
            self.free.push(chunk_of(d.addr));
        }
        self.descs.clear();
        self.tx_inflight += n as u32;
        self.kick();
        n
    }
}

impl Port for AfXdpPort {
    type Buf = XdpBuf;

    fn rx_burst(&mut self, out: &mut Vec<XdpBuf>, max: usize) -> usize {
        self.now = monotonic_secs();
        self.take_returned();
        self.reap();
        self.refill();
        if self.tx.pending() > 0 {
            self.kick();
        }
        {
            let mut r = self.rx.receive(max.min(self.ring_size as usize) as u32);
            while let Some(d) = r.read() {
                self.rx_descs.push(d);
            }
            r.release();
        }
        let mut taken = 0;
        for i in 0..self.rx_descs.len() {
            if let Some(b) = self.take(self.rx_descs[i]) {
                out.push(b);
                taken += 1;
            }
        }
        self.rx_descs.clear();
        if taken == 0 && (self.busy_poll || self.fq.needs_wakeup()) {
            // SAFETY: a zero-length non-blocking recvfrom on our socket: wakes the driver's rx
            // (need_wakeup) or runs a busy poll.
            unsafe {
                libc::recvfrom(
                    self.user.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        taken
    }

    fn tx_burst(&mut self, frames: &mut Vec<XdpBuf>) -> usize {
        self.take_returned();
        self.reap();
        for b in frames.drain(..) {
            if self.is_mine(&b) {
                self.descs.push(XdpDesc { addr: b.addr + u64::from(b.start), len: b.len, options: 0 });
                self.out -= 1;
                std::mem::forget(b);
            } else {
                let mut b = b;
                let (buf, start, len) = b.parts();
                // Not sent (no free chunk) is counted by the caller: sent is less than asked.
                if let Some(d) = self.copy_in(&buf[start..start + len]) {
                    self.descs.push(d);
                    self.stats.tx_copied_in += 1;
                }
                // b drops here: its chunk goes back to its own port.
            }
        }
        self.send_descs()
    }

    fn tx_copy(&mut self, frame: &[u8]) -> bool {
        self.take_returned();
        self.reap();
        let Some(d) = self.copy_in(frame) else { return false };
        self.descs.push(d);
        self.send_descs() == 1
    }

    fn recycle(&mut self, buf: XdpBuf) {
        if self.is_mine(&buf) {
            self.free.push(buf.addr);
            self.out -= 1;
            std::mem::forget(buf);
        }
        // Another port's buffer goes back to it as it drops.
    }

    fn now(&self) -> u32 {
        self.now
    }

    fn finished(&self) -> bool {
        false
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.user.as_raw_fd())
    }
}

impl crate::port::LivePort for AfXdpPort {
    const NAME: &'static str = "afxdp";

    fn queues(ifname: &str) -> u32 {
        queues(ifname)
    }

    fn open(
        ifname: &str,
        queue: u32,
        ownership: &Ownership,
        options: &crate::port::LiveOptions,
    ) -> Result<Self, String> {
        let opts = AfXdpOptions {
            copy: if options.copy { CopyMode::Copy } else { CopyMode::Auto },
            attach: if options.generic_xdp { AttachMode::Generic } else { AttachMode::Auto },
            busy_poll_us: options.busy_poll_us,
            ..AfXdpOptions::default()
        };
        AfXdpPort::open_with(ifname, queue, ownership, &opts)
    }

    fn describe(&self) -> String {
        AfXdpPort::describe(self)
    }

    fn ownership_handle(&self) -> crate::port::SetOwnership {
        crate::port::ownership_handle(&self.attachment, &self.ifname, "AF_XDP", Attachment::update)
    }
}

impl Drop for AfXdpPort {
    fn drop(&mut self) {
        self.attachment.unset_socket(self.queue);
        self.take_returned();
        if self.out > 0 {
            // Buffers still point into the UMEM: its memory stays mapped (leaked) for them.
            std::mem::forget(self.shared.clone());
        }
        // Then the rings and the socket close (field order), the UMEM is released, and the last
        // port of the interface detaches the program (Attachment's drop).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_frame_has_the_headroom_the_data_path_needs() {
        assert_eq!(UMEM_HEADROOM, 0, "the kernel's 256 bytes hold the 128 the data path needs");
        assert_eq!(RX_OFFSET, 256);
        assert_eq!(MAX_RX_FRAME, 3840);
        // Where the kernel puts a frame, it stays.
        assert_eq!(rx_place(RX_OFFSET, 1514), Some(RX_OFFSET));
        assert_eq!(rx_place(RX_OFFSET, MAX_RX_FRAME), Some(RX_OFFSET));
        assert_eq!(rx_place(HEADROOM, 1514), Some(HEADROOM));
        // Too close to the chunk's start: moved to HEADROOM, if it fits behind it.
        assert_eq!(rx_place(0, 1514), Some(HEADROOM));
        assert_eq!(rx_place(64, FRAME_SIZE - HEADROOM), Some(HEADROOM));
        assert_eq!(rx_place(0, FRAME_SIZE - HEADROOM + 1), None);
    }

    #[test]
    fn descriptors_map_to_their_chunks() {
        assert_eq!(chunk_of(0), 0);
        assert_eq!(chunk_of(256), 0);
        assert_eq!(chunk_of(4095), 0);
        assert_eq!(chunk_of(4096 * 7 + 256), 4096 * 7);
        // A frame the data path moved (encapsulation) is sent from the same chunk.
        let rx = 4096 * 3 + RX_OFFSET as u64;
        let tx = rx - 50;
        assert_eq!(chunk_of(tx), chunk_of(rx));
        // A VxLAN-over-IPv6 prefix (70 bytes) fits in front of a frame in every case.
        const { assert!(HEADROOM >= 70) };
    }

    #[test]
    fn ownership_beyond_the_maps_is_refused() {
        let a = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0xc613_0000 + i));
        let mut o = Ownership { addresses: (0..MAX_OWNED as u32).map(a).collect(), ..Default::default() };
        assert!(check_ownership(&o).is_ok());
        o.addresses.push(a(MAX_OWNED as u32));
        assert!(check_ownership(&o).is_err());
        let o = Ownership { all_except: Some((0..=MAX_PASS as u32).map(a).collect()), ..Default::default() };
        assert!(check_ownership(&o).is_err());
    }

    #[cfg(lb_no_xdp)]
    #[test]
    fn without_the_program_the_port_says_what_to_install_and_what_else_to_run() {
        let e = AfXdpPort::open("lo", 0, &Ownership::default()).err().unwrap();
        assert!(e.contains("clang") && e.contains("--live afpacket"), "{e}");
    }

    #[test]
    fn a_veth_less_name_has_one_queue_at_least() {
        assert_eq!(queues("lbx-no-such-if0"), 1);
        assert!(queues("lo") >= 1);
    }
}

#[cfg(all(test, not(lb_no_xdp)))]
mod live {
    use super::*;
    use crate::afpacket::lab::*;
    use std::time::{Duration, Instant};

    /// Runs the port until `want` requests were answered (in place, from their own chunks, or
    /// with tx_copy every other time) or 5 s passed; returns how many were answered.
    fn serve(port: &mut AfXdpPort, want: usize) -> usize {
        let mut answered = 0;
        let end = Instant::now() + Duration::from_secs(5);
        while answered < want && Instant::now() < end {
            let mut rx = Vec::new();
            if port.rx_burst(&mut rx, 32) == 0 {
                let mut p = libc::pollfd { fd: port.wake_fd().unwrap(), events: libc::POLLIN, revents: 0 };
                if port.may_sleep() {
                    // SAFETY: one pollfd.
                    unsafe { libc::poll(&mut p, 1, 10) };
                }
                continue;
            }
            let mut tx = Vec::new();
            for mut b in rx {
                let (buf, start, len) = b.parts();
                assert!(start >= HEADROOM, "headroom before a received frame");
                let f = &mut buf[start..start + len];
                if !answer(f) {
                    port.recycle(b);
                } else if answered % 2 == 1 {
                    let copy = f.to_vec();
                    port.recycle(b);
                    assert!(port.tx_copy(&copy));
                    answered += 1;
                } else {
                    tx.push(b);
                    answered += 1;
                }
            }
            let n = tx.len();
            assert_eq!(port.tx_burst(&mut tx), n);
        }
        answered
    }

    #[test]
    #[ignore = "root: network namespaces and XDP (cargo test -p lb-dpdk -- --ignored afxdp)"]
    fn afxdp_takes_owned_frames_answers_them_and_leaves_arp_and_nd_to_the_kernel() {
        let lab = Lab::new("x");
        Lab::enter(&lab.node);
        assert_eq!(queues(NODE_IF), 1);
        let own = Ownership { addresses: vec![VIP4.into(), VIP6.into()], ..Default::default() };
        let mut port = AfXdpPort::open(NODE_IF, 0, &own).unwrap();
        assert!(!port.zero_copy(), "veth: copy mode");
        let attached = sh(&["ip", "-d", "link", "show", NODE_IF]).unwrap();
        assert!(attached.contains("prog/xdp"), "{attached}");
        let sender = lab.peer_sends(vec![VIP4.into(), VIP6.into()], 3);
        assert_eq!(serve(&mut port, 6), 6);
        let heard = sender.join().unwrap();
        assert_eq!(heard.len(), 6, "answers the peer's kernel accepted: {heard:?}");
        // The kernel still has ARP, ND and its own addresses.
        assert!(lab.ping("198.18.0.2"));
        assert!(lab.ping("2001:2:0:1::2"));
        let c = port.xdp_counters();
        assert_eq!(c.redirected, 6, "{c:?}");
        assert!(c.passed > 0, "ARP, ND and pings passed: {c:?}");
        let s = port.stats();
        assert_eq!((s.rx_dropped, s.rx_invalid_descs, s.tx_invalid_descs), (0, 0, 0), "{s:?}");

        // A backend side: everything but the node's own addresses, ARP and ND.
        let backend = Ownership { all_except: Some(vec![NODE4.into(), NODE6.into()]), ..Default::default() };
        port.update_ownership(&backend).unwrap();
        let sender = lab.peer_sends(vec![FAR4.into()], 2);
        assert_eq!(serve(&mut port, 2), 2);
        assert_eq!(sender.join().unwrap().len(), 2);
        assert!(lab.ping("198.18.0.2"), "the node's address stays the kernel's");
        assert!(lab.ping("2001:2:0:1::2"));

        // A second port on the same queue is refused; after the drop, the program is gone.
        assert!(AfXdpPort::open(NODE_IF, 0, &backend).is_err());
        drop(port);
        let detached = sh(&["ip", "-d", "link", "show", NODE_IF]).unwrap();
        assert!(!detached.contains("prog/xdp"), "{detached}");
        // And a new port attaches again.
        let port = AfXdpPort::open(NODE_IF, 0, &own).unwrap();
        drop(port);
    }

    #[test]
    #[ignore = "root: network namespaces and XDP (cargo test -p lb-dpdk -- --ignored afxdp)"]
    fn afxdp_queues_share_one_program_and_frames_cross_ports() {
        let lab = Lab::with_queues("q", 2);
        Lab::enter(&lab.node);
        assert_eq!(queues(NODE_IF), 2);
        let own = Ownership { addresses: vec![VIP4.into(), VIP6.into()], ..Default::default() };
        let busy = AfXdpOptions { busy_poll_us: Some(20), ..Default::default() };
        let mut ports =
            [AfXdpPort::open(NODE_IF, 0, &own).unwrap(), AfXdpPort::open_with(NODE_IF, 1, &own, &busy).unwrap()];
        let other = Ownership { addresses: vec![VIP4.into()], ..Default::default() };
        assert!(AfXdpPort::open(NODE_IF, 2, &other).is_err(), "one interface, one ownership");
        let sender = lab.peer_sends(vec![VIP4.into(), VIP6.into()], 4);
        // Every answer leaves by the other queue's port: a copy from one UMEM into the other.
        let mut answered = 0;
        let end = Instant::now() + Duration::from_secs(5);
        while answered < 8 && Instant::now() < end {
            for i in 0..2 {
                let mut rx = Vec::new();
                ports[i].rx_burst(&mut rx, 32);
                let mut tx = Vec::new();
                for mut b in rx {
                    let (buf, start, len) = b.parts();
                    if answer(&mut buf[start..start + len]) {
                        tx.push(b);
                    } else {
                        ports[i].recycle(b);
                    }
                }
                let n = tx.len();
                assert_eq!(ports[1 - i].tx_burst(&mut tx), n);
                answered += n;
            }
        }
        assert_eq!(answered, 8);
        assert_eq!(sender.join().unwrap().len(), 8);
        let copied: u64 = ports.iter().map(|p| p.stats().tx_copied_in).sum();
        assert_eq!(copied, 8);
        // The chunks went home: after a few polls, nothing is out.
        for _ in 0..3 {
            for p in ports.iter_mut() {
                p.rx_burst(&mut Vec::new(), 32);
            }
        }
        assert_eq!(ports.iter().map(|p| p.out).sum::<u64>(), 0);
        let [q0, q1] = ports;
        drop(q0);
        assert!(sh(&["ip", "-d", "link", "show", NODE_IF]).unwrap().contains("prog/xdp"), "queue 1 still runs");
        drop(q1);
        assert!(!sh(&["ip", "-d", "link", "show", NODE_IF]).unwrap().contains("prog/xdp"));
    }

    #[test]
    #[ignore = "root: network namespaces and XDP (cargo test -p lb-dpdk -- --ignored afxdp)"]
    fn afxdp_runs_with_the_program_in_generic_mode() {
        let lab = Lab::new("g");
        Lab::enter(&lab.node);
        let own = Ownership { addresses: vec![VIP4.into()], ..Default::default() };
        let opts = AfXdpOptions { attach: AttachMode::Generic, ..Default::default() };
        let mut port = AfXdpPort::open_with(NODE_IF, 0, &own, &opts).unwrap();
        assert!(!port.native() && !port.zero_copy());
        assert!(sh(&["ip", "-d", "link", "show", NODE_IF]).unwrap().contains("xdpgeneric"));
        let sender = lab.peer_sends(vec![VIP4.into()], 2);
        assert_eq!(serve(&mut port, 2), 2);
        assert_eq!(sender.join().unwrap().len(), 2);
        assert!(lab.ping("198.18.0.2"));
    }
}
