//! I/O behind one small trait, so that the same poll loop runs on every port: a pcap file (the
//! default: pure Rust, runs anywhere) and DPDK (feature `dpdk`). A port is one module beside this
//! one, with its buffers, its [`Port`] and a `start` that launches its workers.

pub use lb_core::paths::BurstFrame;

/// Bytes kept free in front of every received frame, for the VxLAN outer headers (70 over IPv6).
pub const HEADROOM: usize = 128;
/// Largest frame a buffer holds (a 9000-byte jumbo frame plus its tags and a tunnel).
pub const MAX_FRAME: usize = 9216 + 128;

/// A packet buffer: the frame lies at `buf[start..start + len]`, with headroom before it
/// ([`BurstFrame::parts`] gives the whole buffer and where the frame lies, so that a burst of
/// buffers goes to the data path as it is).
pub trait FrameBuf: BurstFrame {
    /// The frame now lies at `buf[start..start + len]` (after encapsulation or decapsulation).
    fn set_frame(&mut self, start: usize, len: usize);
}

/// A port: bursts in, bursts out.
pub trait Port {
    /// Its buffers.
    type Buf: FrameBuf;
    /// Receives up to `max` frames into `out`; returns how many.
    fn rx_burst(&mut self, out: &mut Vec<Self::Buf>, max: usize) -> usize;
    /// Sends the frames of `frames` in order and empties it; returns how many were sent (the port
    /// freed the rest: the caller counts them).
    fn tx_burst(&mut self, frames: &mut Vec<Self::Buf>) -> usize;
    /// Sends a copy of a frame the engine built on its own (a TCP reset); false if it could not.
    fn tx_copy(&mut self, frame: &[u8]) -> bool;
    /// Hands a buffer back for reuse (a dropped frame).
    fn recycle(&mut self, buf: Self::Buf);
    /// Seconds of the clock the data path runs on (pcap: the capture time of the last frame read).
    fn now(&self) -> u32;
    /// Whether the input has ended (a pcap file read to its end; a NIC never ends).
    fn finished(&self) -> bool;
    /// A monotonic clock in nanoseconds, for the poll loop's own accounting (the engine's time
    /// around every burst, the status period): read twice a burst, so a port with a cheaper clock
    /// than the OS's gives its own (DPDK: the TSC, about half the cost of `Instant::now`).
    fn clock_ns(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
    /// A descriptor that polls readable when frames wait (a live port's socket), so that an idle
    /// worker sleeps in `poll(2)` instead of spinning a core; `None` for ports that are polled.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Which frames a live port takes from the kernel; everything else stays with the kernel (ARP,
/// ND, routing protocols, SSH, the node's own traffic, health probes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Every frame to these addresses (a MUX's VIPs).
    pub addresses: Vec<std::net::IpAddr>,
    /// VxLAN (UDP 4789) to these addresses (the node's underlay address).
    pub tunnel_endpoints: Vec<std::net::IpAddr>,
    /// A backend side: every IPv4 and IPv6 frame except those to these addresses (the host's own,
    /// its MUXes' underlay addresses: health probes' answers) and ARP and ND.
    pub all_except: Option<Vec<std::net::IpAddr>>,
}

/// One receive queue of one Linux interface, as a port.
pub trait LivePort: Port + Send + Sized + 'static {
    /// Its name in messages and options (`afxdp`, `afpacket`).
    const NAME: &'static str;
    /// The receive queues of `ifname`.
    fn queues(ifname: &str) -> u32;
    /// Opens queue `queue` of `ifname`, taking the frames `ownership` names from the kernel.
    fn open(ifname: &str, queue: u32, ownership: &Ownership, options: &LiveOptions) -> Result<Self, String>;
    /// What the port says of itself once open (mode, queue), for the start-up lines.
    fn describe(&self) -> String;
    /// A handle that changes the frames the port's interface takes, from the control plane.
    fn ownership_handle(&self) -> SetOwnership;
}

/// How the live ports run (the options of `lb-dpdk run --live`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveOptions {
    /// Busy polling for this many microseconds a call (SO_BUSY_POLL with SO_PREFER_BUSY_POLL):
    /// lower latency for a core of its own; `None` sleeps on the kernel's wakeups when idle.
    pub busy_poll_us: Option<u32>,
    /// AF_XDP: attach in generic (SKB) mode only, for drivers whose native mode misbehaves.
    pub generic_xdp: bool,
    /// AF_XDP: copy mode only, even where the driver does zero-copy.
    pub copy: bool,
}

/// Changes the frames a live port's interface takes from the kernel.
pub type SetOwnership = Box<dyn Fn(&Ownership) -> Result<(), String> + Send>;

/// A [`SetOwnership`] over the state a live port shares with the other ports of its interface: it
/// does not keep that state alive, and says so once the interface's ports are gone.
pub fn ownership_handle<T: Send + Sync + 'static>(
    shared: &std::sync::Arc<T>,
    ifname: &str,
    port: &'static str,
    set: fn(&T, &Ownership) -> Result<(), String>,
) -> SetOwnership {
    let weak = std::sync::Arc::downgrade(shared);
    let ifname = ifname.to_owned();
    Box::new(move |o: &Ownership| match weak.upgrade() {
        Some(s) => set(&s, o),
        None => Err(format!("{ifname}: no {port} port is open any more")),
    })
}
