//! The DPDK port (feature `dpdk`). All of the program's `unsafe` code lives in this module.
//!
//! [`start`] initialises the EAL with the arguments after `--`, creates one mbuf pool, configures the
//! rx port (and the tx port, when it is another one) with one rx and one tx queue per worker (RSS
//! spreads the flows over the rx queues when the device can hash), starts the ports and launches the
//! workers. Each worker owns a [`Node`] (its flow table and counters: nothing is shared between
//! workers) and one queue pair, wrapped in a [`DpdkPort`], and runs [`poll_loop`] on it until the
//! control plane sets the stop flag.
//!
//! The lcore model: workers run on the EAL's worker lcores, launched with `rte_eal_remote_launch`;
//! the main lcore (this thread) runs the control plane. That is the EAL's own model: the user picks
//! the cores with `-l`/`--lcores`, the EAL has already pinned one thread to each, every worker has
//! an lcore id (so the mempool's per-lcore caches work) and `rte_eal_mp_wait_lcore` joins them.
//! Registered non-EAL threads would need their own pinning and lcore bookkeeping for no gain. With
//! no worker lcore at all (`-l` naming one core, or a one-core machine), a single worker runs on a
//! thread registered with the EAL (`rte_thread_register`), sharing the main lcore's core with the
//! mostly-sleeping control plane.
//!
//! The workers' count is the number of worker lcores, capped by the queues the ports offer (a
//! net_pcap vdev has as many rx queues as `rx_pcap=` arguments): extra lcores stay idle. The host
//! agent runs one worker: RSS cannot bring both directions of its flows to one queue, and its
//! engines would hand out the same SNAT ports.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lb_core::config::node::NodeConfig;
use lb_core::paths::{Node, NodeRole};

use crate::port::{BurstFrame, FrameBuf, Port, HEADROOM};
use crate::worker::{new_node, poll_loop, worker_pair, PortInfo, WorkerHandle, WorkerLink, Workers, BURST};

/// What `lb-dpdk run --dpdk` takes of its options.
#[derive(Debug, Clone)]
pub struct DpdkOptions {
    /// The port to receive on.
    pub rx_port: u16,
    /// The port to send on (default: the rx port).
    pub tx_port: Option<u16>,
    /// Mbufs in the pool (default: enough for every queue's descriptors).
    pub mbufs: Option<u32>,
    /// A worker ends after this many seconds without a frame.
    pub idle_exit: Option<f64>,
    /// EAL arguments.
    pub eal: Vec<String>,
}

/// The bindings bindgen made from `shim.h` (see build.rs).
#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unnecessary_transmutes,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/dpdk_sys.rs"));
}

// The engine writes VxLAN outer headers in front of a received frame: DPDK's headroom must hold them.
const _: () = assert!(sys::RTE_PKTMBUF_HEADROOM as usize >= HEADROOM);

/// Rx and tx descriptors asked for per queue (the driver may adjust them).
const RX_DESC: u16 = 1024;
const TX_DESC: u16 = 1024;
/// The smallest pool, in mbufs (2^n - 1 is the mempool's best size).
const MIN_MBUFS: u32 = 8191;
/// Per-lcore mbuf cache of the pool.
const POOL_CACHE: u32 = 256;
/// Bytes a frame may have beyond the MTU: Ethernet header, two VLAN tags, and a CRC some drivers keep.
const L2_OVERHEAD: u32 = 14 + 8 + 4;
/// Frame bytes an mbuf holds at least (DPDK's default data room) and at most (a 9,000-byte jumbo
/// frame with its tags and a tunnel).
const MIN_FRAME_ROOM: u32 = 2048;
const MAX_FRAME_ROOM: u32 = crate::port::MAX_FRAME as u32;

/// Frame bytes an mbuf holds: the largest frame the ports receive (`max_rx_pktlen`, which virtual
/// devices such as net_af_packet set to 1518), within [`MIN_FRAME_ROOM`] and [`MAX_FRAME_ROOM`].
fn frame_room(rx: &sys::rte_eth_dev_info, tx: &sys::rte_eth_dev_info) -> u32 {
    rx.max_rx_pktlen.max(tx.max_rx_pktlen).clamp(MIN_FRAME_ROOM, MAX_FRAME_ROOM)
}

/// The MTU a port is given: the node's, within what the device takes (its `min_mtu`..`max_mtu`,
/// and a frame of that MTU within its `max_rx_pktlen` and the mbufs' `frame_room`).
fn port_mtu(info: &sys::rte_eth_dev_info, node_mtu: u32, frame_room: u32) -> Option<u32> {
    if info.max_mtu < info.min_mtu {
        return None;
    }
    let frame_max = info.max_rx_pktlen.min(frame_room).saturating_sub(L2_OVERHEAD);
    let most = u32::from(info.max_mtu).min(frame_max).max(u32::from(info.min_mtu));
    Some(node_mtu.clamp(u32::from(info.min_mtu), most))
}

/// The EAL initialises once per process.
static EAL_STARTED: AtomicBool = AtomicBool::new(false);

fn strerror(errnum: c_int) -> String {
    // SAFETY: rte_strerror returns a pointer to a NUL-terminated string (static or per-thread) for
    // any value; it is copied at once.
    unsafe { CStr::from_ptr(sys::rte_strerror(errnum)) }.to_string_lossy().into_owned()
}

/// The message for a DPDK call that returned `ret`, a negative errno, or (`ret` >= 0) that set
/// rte_errno.
fn dpdk_error(what: &str, ret: c_int) -> String {
    // SAFETY: reads this thread's rte_errno.
    let errnum = if ret < 0 { -ret } else { unsafe { sys::lb_errno() } };
    format!("{what}: {} (error {errnum})", strerror(errnum))
}

/// A received (or allocated) mbuf: single-segment, direct, not shared, so the engine may rewrite its
/// whole buffer. Dropping it frees it.
pub struct MbufBuf(NonNull<sys::rte_mbuf>);

impl MbufBuf {
    /// Gives up ownership (to a tx burst).
    fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for MbufBuf {
    fn drop(&mut self) {
        // SAFETY: this MbufBuf owns the mbuf (a single reference to it) and nothing uses it after.
        unsafe { sys::lb_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl BurstFrame for MbufBuf {
    #[inline]
    fn parts(&mut self) -> (&mut [u8], usize, usize) {
        // SAFETY: the mbuf is valid and owned by self; only its header is read here.
        let m = unsafe { self.0.as_ref() };
        let (addr, buf_len, off, len) = (m.buf_addr.cast::<u8>(), m.buf_len, m.data_off, m.data_len);
        // SAFETY: buf_addr..buf_addr + buf_len is the mbuf's data buffer, apart from its header.
        // The mbuf is direct with a reference count of 1 (checked on rx; fresh on alloc), so no one
        // else reads or writes the buffer while the returned borrow of self lives.
        let buf = unsafe { std::slice::from_raw_parts_mut(addr, usize::from(buf_len)) };
        (buf, usize::from(off), usize::from(len))
    }
}

impl FrameBuf for MbufBuf {
    #[inline]
    fn set_frame(&mut self, start: usize, len: usize) {
        // SAFETY: the mbuf is valid and owned by self (no other reference to its header exists).
        let m = unsafe { self.0.as_mut() };
        // Transmitting beyond the buffer would read foreign memory: the bounds are a hard check.
        assert!(start + len <= usize::from(m.buf_len), "frame {start}+{len} beyond an mbuf of {}", m.buf_len);
        m.data_off = start as u16;
        m.data_len = len as u16;
        m.pkt_len = len as u32;
    }
}

/// One worker's queue pair: rx queue `queue` of `rx_port`, tx queue `queue` of `tx_port`.
pub struct DpdkPort {
    rx_port: u16,
    tx_port: u16,
    queue: u16,
    pool: NonNull<sys::rte_mempool>,
    burst: [*mut sys::rte_mbuf; BURST],
    /// Dropped frames, freed together (one trip to the mempool) when BURST are there or at the next
    /// rx burst.
    dropped: [*mut sys::rte_mbuf; BURST],
    n_dropped: usize,
    tsc_hz: u64,
    /// Nanoseconds a TSC tick, as a 32.32 fixed-point number (a multiply, not a division, a read).
    ns_per_tick: u64,
    /// The TSC at the last rx poll, and when a frame last came.
    tsc: u64,
    last_rx: u64,
    /// Stop after this many TSC ticks without a frame (`--dpdk-idle-exit`).
    idle_exit: Option<u64>,
    /// Received frames that could not be made single-segment and writable (no mbuf free, or too
    /// long for one): freed, not counted as received.
    pub unusable: u64,
}

impl Drop for DpdkPort {
    fn drop(&mut self) {
        self.free_dropped();
    }
}

// SAFETY: a DpdkPort is used by one thread at a time (its worker); the queues it names are used by
// no other worker, and the mempool is thread-safe. It moves to its worker thread once.
unsafe impl Send for DpdkPort {}

impl DpdkPort {
    fn new(rx_port: u16, tx_port: u16, queue: u16, pool: NonNull<sys::rte_mempool>, idle_exit: Option<f64>) -> Self {
        // SAFETY: plain reads of the TSC and its frequency (the EAL is initialised).
        let (tsc, tsc_hz) = unsafe { (sys::lb_tsc(), sys::rte_get_tsc_hz().max(1)) };
        DpdkPort {
            rx_port,
            tx_port,
            queue,
            pool,
            burst: [ptr::null_mut(); BURST],
            dropped: [ptr::null_mut(); BURST],
            n_dropped: 0,
            tsc_hz,
            ns_per_tick: ns_per_tick(tsc_hz),
            tsc,
            last_rx: tsc,
            idle_exit: idle_exit.map(|s| (s * tsc_hz as f64) as u64),
            unusable: 0,
        }
    }

    /// Frees the dropped frames.
    fn free_dropped(&mut self) {
        if self.n_dropped > 0 {
            // SAFETY: the first n_dropped slots hold mbufs we own (from recycle), freed once here.
            unsafe { sys::lb_pktmbuf_free_bulk(self.dropped.as_mut_ptr(), self.n_dropped as c_uint) };
            self.n_dropped = 0;
        }
    }

    /// Ownership of a received mbuf, made single-segment and writable if it is not.
    #[inline]
    fn own(&mut self, m: NonNull<sys::rte_mbuf>) -> Option<MbufBuf> {
        // SAFETY: the mbuf came from rx_burst and is valid.
        let h = unsafe { m.as_ref() };
        let not_direct = sys::RTE_MBUF_F_INDIRECT | sys::RTE_MBUF_F_EXTERNAL;
        if h.nb_segs == 1 && h.refcnt == 1 && h.ol_flags & not_direct == 0 {
            return Some(MbufBuf(m));
        }
        // SAFETY: m is ours (freed by the call); the pool is valid.
        let copy = unsafe { sys::lb_pktmbuf_flatten(m.as_ptr(), self.pool.as_ptr()) };
        NonNull::new(copy).map(MbufBuf)
    }
}

impl Port for DpdkPort {
    type Buf = MbufBuf;

    #[inline]
    fn rx_burst(&mut self, out: &mut Vec<MbufBuf>, max: usize) -> usize {
        self.free_dropped();
        let want = max.min(BURST) as u16;
        // SAFETY: `burst` has room for BURST >= want pointers; this worker alone polls this queue.
        let n = unsafe { sys::lb_rx_burst(self.rx_port, self.queue, self.burst.as_mut_ptr(), want) };
        // SAFETY: reads the TSC.
        self.tsc = unsafe { sys::lb_tsc() };
        if n == 0 {
            return 0;
        }
        self.last_rx = self.tsc;
        let mut got = 0;
        for i in 0..usize::from(n) {
            let Some(m) = NonNull::new(self.burst[i]) else { continue };
            match self.own(m) {
                Some(b) => {
                    out.push(b);
                    got += 1;
                }
                None => self.unusable += 1,
            }
        }
        got
    }

    #[inline]
    fn tx_burst(&mut self, frames: &mut Vec<MbufBuf>) -> usize {
        let mut sent = 0;
        while !frames.is_empty() {
            let k = frames.len().min(BURST);
            for (slot, b) in self.burst.iter_mut().zip(frames.drain(..k)) {
                *slot = b.into_raw();
            }
            // SAFETY: the first k slots hold mbufs we own; the driver takes the ones it queues.
            let done =
                usize::from(unsafe { sys::lb_tx_burst(self.tx_port, self.queue, self.burst.as_mut_ptr(), k as u16) });
            if done < k {
                // SAFETY: slots done..k are still ours: freed here, counted by the caller.
                unsafe { sys::lb_pktmbuf_free_bulk(self.burst[done..k].as_mut_ptr(), (k - done) as c_uint) };
            }
            sent += done;
        }
        sent
    }

    fn tx_copy(&mut self, frame: &[u8]) -> bool {
        // SAFETY: the pool is valid; the result is a fresh mbuf or NULL.
        let Some(m) = NonNull::new(unsafe { sys::lb_pktmbuf_alloc(self.pool.as_ptr()) }) else {
            return false;
        };
        let mut b = MbufBuf(m);
        let (buf, start, _) = b.parts();
        let Some(dst) = buf.get_mut(start..start + frame.len()) else {
            return false;
        };
        dst.copy_from_slice(frame);
        b.set_frame(start, frame.len());
        let mut p = b.into_raw();
        // SAFETY: p is an mbuf we own; if the driver does not take it, it is freed here.
        unsafe {
            if sys::lb_tx_burst(self.tx_port, self.queue, &mut p, 1) == 1 {
                true
            } else {
                sys::lb_pktmbuf_free(p);
                false
            }
        }
    }

    fn recycle(&mut self, buf: MbufBuf) {
        if self.n_dropped == BURST {
            self.free_dropped();
        }
        self.dropped[self.n_dropped] = buf.into_raw();
        self.n_dropped += 1;
    }

    #[inline]
    fn now(&self) -> u32 {
        (self.tsc / self.tsc_hz) as u32
    }

    #[inline]
    fn clock_ns(&self) -> u64 {
        // SAFETY: reads the TSC.
        ticks_to_ns(unsafe { sys::lb_tsc() }, self.ns_per_tick)
    }

    fn finished(&self) -> bool {
        self.idle_exit.is_some_and(|ticks| self.tsc.wrapping_sub(self.last_rx) >= ticks)
    }
}

/// Nanoseconds a tick of a `hz` clock, as a 32.32 fixed-point number, rounded up (so that a whole
/// second of ticks makes a whole second, not a nanosecond less). At most 10^9 << 32 (a 1 Hz
/// clock), which fits a `u64`.
fn ns_per_tick(hz: u64) -> u64 {
    (1_000_000_000u128 << 32).div_ceil(u128::from(hz.max(1))) as u64
}

/// `ticks` of a clock in nanoseconds, `ns_per_tick` from [`ns_per_tick`].
#[inline(always)]
fn ticks_to_ns(ticks: u64, ns_per_tick: u64) -> u64 {
    ((u128::from(ticks) * u128::from(ns_per_tick)) >> 32) as u64
}

/// What one worker owns.
struct Worker {
    engine: Node,
    port: DpdkPort,
    link: WorkerLink,
    index: usize,
}

impl Worker {
    fn run(mut self) {
        poll_loop(&mut self.engine, std::slice::from_mut(&mut self.port), &[PortInfo::SINGLE], &self.link);
        if self.port.unusable > 0 {
            eprintln!(
                "lb-dpdk: worker {}: {} received frames dropped (could not be made one writable segment)",
                self.index, self.port.unusable
            );
        }
    }
}

/// Runs a worker; a panic stops the whole program (its counters would be lost otherwise anyway).
fn run_worker(w: Box<Worker>) -> c_int {
    let (stop, failed) = (w.link.stop.clone(), w.link.failed.clone());
    let index = w.index;
    match catch_unwind(AssertUnwindSafe(move || w.run())) {
        Ok(()) => 0,
        Err(_) => {
            // SAFETY: reads this thread's lcore id.
            let lcore = unsafe { sys::lb_lcore_id() };
            eprintln!("lb-dpdk: worker {index} (lcore {lcore}) panicked: stopping");
            failed.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
            -1
        }
    }
}

/// The function an EAL worker lcore runs.
unsafe extern "C" fn lcore_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the Box<Worker> that `start` leaked for this lcore, handed over exactly once.
    let w = unsafe { Box::from_raw(arg.cast::<Worker>()) };
    run_worker(w)
}

/// The EAL with its ports and pool: shut down in order when the workers have ended.
struct Dpdk {
    /// Ports configured (and maybe started), each once.
    ports: Vec<u16>,
    pool: Option<NonNull<sys::rte_mempool>>,
}

impl Dpdk {
    /// Stops and closes the ports (net_pcap flushes its output file here), frees the pool, and
    /// releases the EAL. No DPDK call may follow.
    fn shutdown(self) {
        for &p in &self.ports {
            let mut s = sys::rte_eth_stats::default();
            // SAFETY: p is a valid port; `s` is a writable rte_eth_stats.
            if unsafe { sys::rte_eth_stats_get(p, &mut s) } == 0 {
                eprintln!(
                    "lb-dpdk: port {p}: rx {} (missed {}, errors {}, no mbuf {}), tx {} (errors {})",
                    s.ipackets, s.imissed, s.ierrors, s.rx_nombuf, s.opackets, s.oerrors
                );
            }
            // SAFETY: p is a valid port no worker uses any more.
            unsafe {
                sys::rte_eth_dev_stop(p);
                sys::rte_eth_dev_close(p);
            }
        }
        if let Some(pool) = self.pool {
            // SAFETY: the ports using the pool are closed and every worker has ended.
            unsafe { sys::rte_mempool_free(pool.as_ptr()) };
        }
        // SAFETY: nothing of DPDK is used after this.
        unsafe { sys::rte_eal_cleanup() };
    }
}

/// Initialises the EAL with `eal` (the arguments after `--`) behind a program name.
fn eal_init(eal: &[String]) -> Result<(), String> {
    if EAL_STARTED.swap(true, Ordering::SeqCst) {
        return Err("the EAL is already initialised in this process".into());
    }
    let mut argv = Vec::with_capacity(eal.len() + 2);
    for a in std::iter::once("lb-dpdk").chain(eal.iter().map(String::as_str)) {
        let c = CString::new(a).map_err(|_| format!("EAL argument with a NUL byte: {a:?}"))?;
        // Leaked on purpose: the EAL may keep pointers into argv for the life of the process.
        argv.push(c.into_raw());
    }
    let argc = argv.len() as c_int;
    argv.push(ptr::null_mut::<c_char>());
    let argv = argv.leak();
    // SAFETY: argv holds argc NUL-terminated strings and a NULL, valid for the life of the process.
    let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
    if ret < 0 {
        // rte_eal_init returns -1 and sets rte_errno.
        return Err(dpdk_error("EAL initialisation (the arguments after --)", 0));
    }
    if ret + 1 < argc {
        return Err(format!("unexpected EAL arguments: {:?}", &eal[ret as usize..]));
    }
    Ok(())
}

fn dev_info(port: u16) -> Result<sys::rte_eth_dev_info, String> {
    // SAFETY: a plain query.
    if unsafe { sys::rte_eth_dev_is_valid_port(port) } == 0 {
        // SAFETY: a plain query.
        let n = unsafe { sys::rte_eth_dev_count_avail() };
        return Err(format!("DPDK port {port} does not exist ({n} ports: give the EAL a device or a --vdev)"));
    }
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: port is valid; info is a writable rte_eth_dev_info.
    let ret = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
    if ret != 0 {
        return Err(dpdk_error(&format!("port {port}: device info"), ret));
    }
    Ok(info)
}

fn driver_name(info: &sys::rte_eth_dev_info) -> String {
    if info.driver_name.is_null() {
        return "?".into();
    }
    // SAFETY: a non-NULL driver_name is a static NUL-terminated string of the driver.
    unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy().into_owned()
}

/// How a port is set up.
struct PortPlan {
    id: u16,
    rx_queues: u16,
    tx_queues: u16,
}

/// Configures a port with its queues (RSS over the rx queues when there are several and the device
/// can hash; without it otherwise), sets up the queues and starts it.
fn configure_port(
    plan: &PortPlan,
    info: &sys::rte_eth_dev_info,
    pool: NonNull<sys::rte_mempool>,
    mtu: u32,
    frame_room: u32,
) -> Result<String, String> {
    let port = plan.id;
    let mut conf = sys::rte_eth_conf::default();
    // SAFETY: constants.
    let (want_hf, fast_free) = unsafe { (sys::lb_rss_hf(), sys::lb_tx_offload_fast_free()) };
    let rss_hf = want_hf & info.flow_type_rss_offloads;
    let rss = plan.rx_queues > 1 && rss_hf != 0;
    if rss {
        conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        // rss_key NULL: the driver's default key.
    }
    // The port's MTU (DPDK keeps it in rxmode, for sending too): a transmit-only port sends the
    // encapsulated frames, and at the default 1500 a driver that enforces it would drop larger ones.
    if let Some(port_mtu) = port_mtu(info, mtu, frame_room) {
        conf.rxmode.mtu = port_mtu;
        if port_mtu < mtu {
            eprintln!(
                "lb-dpdk: port {port}: MTU {port_mtu} (the device's most), below the node's {mtu}: larger frames \
                 may be dropped"
            );
        }
    }
    // Every mbuf comes from one pool and is never shared: the driver may free them in bulk.
    if info.tx_offload_capa & fast_free != 0 {
        conf.txmode.offloads |= fast_free;
    }
    // SAFETY: port is valid and stopped; conf is a valid configuration.
    let ret = unsafe { sys::rte_eth_dev_configure(port, plan.rx_queues, plan.tx_queues, &conf) };
    if ret != 0 {
        return Err(dpdk_error(
            &format!("port {port}: configure {} rx / {} tx queues", plan.rx_queues, plan.tx_queues),
            ret,
        ));
    }
    let (mut nb_rx, mut nb_tx) = (RX_DESC, TX_DESC);
    // SAFETY: port is configured; both pointers are writable u16s.
    let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut nb_rx, &mut nb_tx) };
    if ret != 0 {
        return Err(dpdk_error(&format!("port {port}: descriptors"), ret));
    }
    // SAFETY: a plain query (SOCKET_ID_ANY for a vdev).
    let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
    let socket = if socket < 0 { sys::SOCKET_ID_ANY } else { socket } as c_uint;
    for q in 0..plan.rx_queues {
        // SAFETY: port is configured with rx_queues queues; NULL rxconf is the driver's default;
        // the pool outlives the port (freed after it is closed).
        let ret = unsafe { sys::rte_eth_rx_queue_setup(port, q, nb_rx, socket, ptr::null(), pool.as_ptr()) };
        if ret != 0 {
            return Err(dpdk_error(&format!("port {port}: rx queue {q}"), ret));
        }
    }
    for q in 0..plan.tx_queues {
        // SAFETY: as above; NULL txconf is the driver's default plus the port's offloads.
        let ret = unsafe { sys::rte_eth_tx_queue_setup(port, q, nb_tx, socket, ptr::null()) };
        if ret != 0 {
            return Err(dpdk_error(&format!("port {port}: tx queue {q}"), ret));
        }
    }
    // SAFETY: port is configured with all its queues set up.
    let ret = unsafe { sys::rte_eth_dev_start(port) };
    if ret != 0 {
        return Err(dpdk_error(&format!("port {port}: start"), ret));
    }
    if plan.rx_queues > 0 {
        // Frames for the VIPs arrive with the MAC addresses of the fabric's choosing; not every
        // driver has the mode (nothing to do then).
        // SAFETY: port is started.
        let _ = unsafe { sys::rte_eth_promiscuous_enable(port) };
    }
    Ok(format!(
        "port {port} ({}): {} rx / {} tx queues of {nb_rx} / {nb_tx} descriptors, RSS {}",
        driver_name(info),
        plan.rx_queues,
        plan.tx_queues,
        if rss {
            "on"
        } else if plan.rx_queues > 1 {
            "unsupported: every queue polled, the device spreads frames its own way"
        } else {
            "off (one queue)"
        }
    ))
}

/// The EAL's worker lcores, in order.
fn worker_lcores() -> Vec<c_uint> {
    let mut out = Vec::new();
    // SAFETY: plain queries of the EAL's lcore table (u32::MAX + 1 wraps to the first lcore).
    let mut id = unsafe { sys::rte_get_next_lcore(c_uint::MAX, 1, 0) };
    while id < sys::RTE_MAX_LCORE {
        out.push(id);
        // SAFETY: as above.
        id = unsafe { sys::rte_get_next_lcore(id, 1, 0) };
    }
    out
}

/// `lb-dpdk run --dpdk`: EAL, pool, ports, and one worker per queue (see the module's notes).
pub fn start(args: &DpdkOptions, cfg: &NodeConfig, stop: &Arc<AtomicBool>) -> Result<Workers, String> {
    eal_init(&args.eal)?;
    let mut dpdk = Dpdk { ports: Vec::new(), pool: None };
    match setup(args, cfg, stop, &mut dpdk) {
        Ok(w) => {
            let handles = w.handles;
            let threads = w.threads;
            let join = move || {
                // SAFETY: waits for every worker lcore to return from lcore_main.
                unsafe { sys::rte_eal_mp_wait_lcore() };
                for t in threads {
                    let _ = t.join();
                }
                dpdk.shutdown();
            };
            Ok(Workers { joins: vec![Box::new(join)], handles })
        }
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            // SAFETY: waits for any worker already launched (none on most errors).
            unsafe { sys::rte_eal_mp_wait_lcore() };
            dpdk.shutdown();
            Err(e)
        }
    }
}

/// Running workers, before their join is wrapped.
struct Launched {
    handles: Vec<WorkerHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn setup(args: &DpdkOptions, cfg: &NodeConfig, stop: &Arc<AtomicBool>, dpdk: &mut Dpdk) -> Result<Launched, String> {
    let rx_port = args.rx_port;
    let tx_port = args.tx_port.unwrap_or(rx_port);
    let rx_info = dev_info(rx_port)?;
    let tx_info = if tx_port == rx_port { rx_info } else { dev_info(tx_port)? };

    let lcores = worker_lcores();
    let mut max_q = rx_info.max_rx_queues.min(tx_info.max_tx_queues).max(1);
    if matches!(cfg.role, NodeRole::Host(_)) && lcores.len() > 1 {
        // A host agent's flow has two sides that RSS cannot bring together (tunnels from the MUXes
        // hash on their outer headers, the backends' replies on their own), and each engine hands
        // out SNAT ports from the same blocks: both need the one engine.
        eprintln!("lb-dpdk: the host agent runs one worker (a flow's two directions and the SNAT ports meet in it)");
        max_q = 1;
    }
    let queues = (lcores.len().max(1)).min(usize::from(max_q)) as u16;
    if lcores.len() > usize::from(queues) {
        eprintln!(
            "lb-dpdk: {} worker lcores but {queues} queue(s) on port {rx_port}/{tx_port}: {} lcore(s) idle",
            lcores.len(),
            lcores.len() - usize::from(queues)
        );
    }

    let mtu = u32::from(cfg.role.base().mtu);
    // The frame after DPDK's headroom (the engine puts tunnel headers into the headroom): as large
    // as the largest frame the ports receive, whatever the node's MTU, so that a frame the device
    // takes is never cut.
    let frame_room = frame_room(&rx_info, &tx_info);
    let data_room = sys::RTE_PKTMBUF_HEADROOM + frame_room;
    let ports = if tx_port == rx_port { 1 } else { 2 };
    let need = u32::from(queues) * ports * (u32::from(RX_DESC) + u32::from(TX_DESC))
        + u32::from(queues) * (POOL_CACHE + BURST as u32)
        + 1024;
    let mbufs = args.mbufs.unwrap_or_else(|| (need.max(MIN_MBUFS) + 1).next_power_of_two() - 1);
    let name = CString::new("lb_mbuf_pool").expect("no NUL");
    // SAFETY: a plain query.
    let socket = unsafe { sys::rte_eth_dev_socket_id(rx_port) };
    let socket = if socket < 0 { sys::SOCKET_ID_ANY } else { socket };
    let cache = POOL_CACHE.min(mbufs / 2).min(sys::RTE_MEMPOOL_CACHE_MAX_SIZE);
    // SAFETY: name is NUL-terminated; the sizes are in range (data room <= u16::MAX).
    let pool = unsafe { sys::rte_pktmbuf_pool_create(name.as_ptr(), mbufs, cache, 0, data_room as u16, socket) };
    let pool = NonNull::new(pool).ok_or_else(|| dpdk_error(&format!("mbuf pool of {mbufs} x {data_room} bytes"), 0))?;
    dpdk.pool = Some(pool);
    eprintln!("lb-dpdk: pool of {mbufs} mbufs, {data_room}-byte data room ({} headroom)", sys::RTE_PKTMBUF_HEADROOM);

    let mut plans =
        vec![PortPlan { id: rx_port, rx_queues: queues, tx_queues: if tx_port == rx_port { queues } else { 0 } }];
    if tx_port != rx_port {
        plans.push(PortPlan { id: tx_port, rx_queues: 0, tx_queues: queues });
    }
    for plan in &plans {
        let info = if plan.id == rx_port { &rx_info } else { &tx_info };
        dpdk.ports.push(plan.id);
        let line = configure_port(plan, info, pool, mtu, frame_room)?;
        eprintln!("lb-dpdk: {line}");
    }

    let mut workers = Vec::with_capacity(usize::from(queues));
    let mut handles = Vec::with_capacity(usize::from(queues));
    for q in 0..queues {
        let engine = new_node(cfg)?;
        let (link, handle) = worker_pair(stop);
        let port = DpdkPort::new(rx_port, tx_port, q, pool, args.idle_exit);
        workers.push(Box::new(Worker { engine, port, link, index: usize::from(q) }));
        handles.push(handle);
    }

    let mut threads = Vec::new();
    if lcores.is_empty() {
        eprintln!("lb-dpdk: no EAL worker lcore (-l names one core): 1 worker on a registered thread");
        let w = workers.pop().expect("one worker");
        let t = std::thread::Builder::new()
            .name("lb-worker-0".into())
            .spawn(move || {
                // SAFETY: registers this thread with the EAL (an lcore id for the mempool cache).
                let registered = unsafe { sys::rte_thread_register() } == 0;
                run_worker(w);
                if registered {
                    // SAFETY: this thread registered above and makes no DPDK call after this.
                    unsafe { sys::rte_thread_unregister() };
                }
            })
            .map_err(|e| e.to_string())?;
        threads.push(t);
    } else {
        let mut used = Vec::new();
        for (w, &lcore) in workers.into_iter().zip(&lcores) {
            let arg = Box::into_raw(w);
            // SAFETY: lcore is a worker lcore waiting for work; lcore_main takes ownership of arg.
            let ret = unsafe { sys::rte_eal_remote_launch(Some(lcore_main), arg.cast(), lcore) };
            if ret != 0 {
                // SAFETY: the launch failed, so lcore_main never got arg: it is still ours.
                drop(unsafe { Box::from_raw(arg) });
                return Err(dpdk_error(&format!("launching a worker on lcore {lcore}"), ret));
            }
            used.push(lcore);
        }
        eprintln!("lb-dpdk: {} worker(s) on lcores {used:?}", used.len());
    }
    Ok(Launched { handles, threads })
}

#[cfg(test)]
mod tests {
    use super::{ns_per_tick, port_mtu, sys, ticks_to_ns, MAX_FRAME_ROOM};

    #[test]
    fn port_mtu_fits_the_device() {
        let info = |min_mtu: u16, max_mtu: u16, max_rx_pktlen: u32| sys::rte_eth_dev_info {
            min_mtu,
            max_mtu,
            max_rx_pktlen,
            ..Default::default()
        };
        // net_af_packet: max_mtu 65535 but frames of at most 1518 bytes.
        assert_eq!(port_mtu(&info(68, 65535, 1518), 9000, 2048), Some(1518 - 26));
        // A jumbo-capable NIC takes the node's MTU.
        assert_eq!(port_mtu(&info(68, 9600, 9728), 9000, MAX_FRAME_ROOM), Some(9000));
        // A node MTU below the device's least is raised to it; a device without MTU bounds is left.
        assert_eq!(port_mtu(&info(1280, 9000, 9728), 576, MAX_FRAME_ROOM), Some(1280));
        assert_eq!(port_mtu(&info(1, 0, 9728), 9000, MAX_FRAME_ROOM), None);
    }

    #[test]
    fn tsc_ticks_become_nanoseconds() {
        // A 2.5 GHz TSC: one second, one tick, a day; a 1 GHz clock is 1:1, a 10 GHz one 0.1 ns.
        let k = ns_per_tick(2_500_000_000);
        assert_eq!(ticks_to_ns(2_500_000_000, k), 1_000_000_000);
        assert_eq!(ticks_to_ns(5, k), 2);
        let day = 86_400 * 2_500_000_000u64;
        // The multiplier is rounded to 2^-32 ns: a day of ticks is a day to within a billionth.
        assert!(ticks_to_ns(day, k).abs_diff(86_400_000_000_000) < 86_400, "{}", ticks_to_ns(day, k));
        assert_eq!(ticks_to_ns(123_456_789, ns_per_tick(1_000_000_000)), 123_456_789);
        assert_eq!(ticks_to_ns(100, ns_per_tick(10_000_000_000)), 10);
        // A zero frequency (never reported by DPDK) is taken as 1 Hz, not a division by zero.
        assert_eq!(ticks_to_ns(3, ns_per_tick(0)), 3_000_000_000);
    }
}
