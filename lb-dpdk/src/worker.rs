//! A worker: one data-path node on one port (or queue), driven by [`poll_loop`], and the link the
//! control plane reaches it through. Workers share nothing: the control plane sends each one the
//! probe results and new configurations through its own channel and reads its counters.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use lb_core::config::node::NodeConfig;
use lb_core::config::LoadBalancer;
use lb_core::paths::host::HostEgress;
use lb_core::paths::node::MemberHealth;
use lb_core::paths::{Action, DropCause, DropReason, Node, PreparedTables, Side};
use lb_core::wire::MacAddr;

use crate::port::{BurstFrame, FrameBuf, Port};
use crate::stats::Stats;

/// Frames per burst.
pub const BURST: usize = lb_core::paths::mux::BURST;
/// What an action slot holds before the data path has written it (and for frames past a burst).
const UNSET: Action = Action::Drop(DropCause::Mux(DropReason::Malformed));
/// Flow-table buckets one loop iteration sweeps for idle flows at most.
const SWEEP_BUDGET: usize = 8;
/// Buckets an idle loop sweeps at most (about half a megabyte of buckets: tens of microseconds).
const IDLE_SWEEP_BUDGET: usize = 1024;
/// Under load the sweep aims to cover the whole flow table once in this many seconds, within
/// [`SWEEP_BUDGET`] buckets a loop (so a table of tens of millions of flows takes longer): lookups
/// and inserts expire what they meet anyway, the sweep frees the rest and sends a host's resets.
/// A fixed budget per burst would read a large table over and over for nothing, at a cost per
/// packet. An idle loop sweeps its full budget.
const SWEEP_PERIOD_SECS: u32 = 5;
/// How often a worker hands its counters to the main thread (nanoseconds of [`Port::clock_ns`]).
const PUBLISH_PERIOD_NS: u64 = 200_000_000;

/// Builds the data path a node file asks for, its flow table on huge pages.
pub fn new_node(cfg: &NodeConfig) -> Result<Node, String> {
    Node::with_flow_memory(cfg.role.clone(), cfg.lb.clone(), lb_core::mem::huge_pages).map_err(|e| e.to_string())
}

/// What the control plane tells a worker.
#[derive(Debug, Clone)]
pub enum Control {
    /// Apply this configuration, the control plane's number `generation`; with `health`, the
    /// members' health as the control plane has it (a MUX in etcd mode), in the first tables.
    Reload {
        lb: Arc<LoadBalancer>,
        generation: u64,
        health: Option<Arc<Vec<MemberHealth>>>,
        /// A MUX's Maglev tables for `lb`, built once by the control plane (`Node::prepare`).
        tables: Option<Arc<PreparedTables>>,
    },
    /// The members' health of configuration number `generation` as the control plane has it
    /// (verdicts made elsewhere, set outright: `Node::set_health`).
    Health { generation: u64, health: Arc<Vec<MemberHealth>> },
    /// Second chances from a configuration the pool ran before, replaced this many seconds ago
    /// (`lb_core::paths::Node::recall`).
    Recall(Arc<LoadBalancer>, u32),
    /// One result of probe `probe` for (pool, member), of configuration number `generation`.
    Probe { generation: u64, pool: usize, probe: usize, member: usize, up: bool },
    /// Frames tunnelled to this underlay peer go to this next-hop MAC.
    NextHop(IpAddr, MacAddr),
    /// The default next hop towards the fabric.
    Gateway(MacAddr),
    /// A host agent's local backends as the kernel routes them: address, interface index, MAC.
    Backends(Vec<(IpAddr, u32, MacAddr)>),
}

/// What a worker shares with the control plane: a stop flag, its channel and its counters.
pub struct WorkerLink {
    /// Set to stop the worker.
    pub stop: Arc<AtomicBool>,
    /// Control messages.
    pub rx: Receiver<Control>,
    /// The worker's latest counters.
    pub stats: Arc<Mutex<Stats>>,
    /// Set by the worker when its input ended.
    pub finished: Arc<AtomicBool>,
    /// Set when the worker failed (it panicked, or could not write its output): the program
    /// stops and exits non-zero.
    pub failed: Arc<AtomicBool>,
}

/// The control plane's side of a worker.
pub struct WorkerHandle {
    /// Control messages.
    pub tx: Sender<Control>,
    /// The worker's latest counters.
    pub stats: Arc<Mutex<Stats>>,
    /// Set by the worker when its input ended.
    pub finished: Arc<AtomicBool>,
    /// Set when the worker failed.
    pub failed: Arc<AtomicBool>,
}

/// A worker link and its handle.
pub fn worker_pair(stop: &Arc<AtomicBool>) -> (WorkerLink, WorkerHandle) {
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let (finished, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    (
        WorkerLink { stop: stop.clone(), rx, stats: stats.clone(), finished: finished.clone(), failed: failed.clone() },
        WorkerHandle { tx, stats, finished, failed },
    )
}

/// Where a worker sends what the data path hands to local backends: the port (an index into the
/// worker's ports) each local backend lives behind. Backends not listed, and everything sent to
/// the fabric, go out on port 0.
type DeliveryMap = Vec<usize>;

/// What a worker knows of one of its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    /// The side of the node its frames come from.
    pub side: Side,
    /// The kernel's index of its interface (0: not a kernel interface).
    pub ifindex: u32,
}

impl PortInfo {
    /// A port that carries everything (pcap, DPDK).
    pub const SINGLE: PortInfo = PortInfo { side: Side::Either, ifindex: 0 };
}

/// The poll loop of one worker over its ports (`infos[i]` says which side of the node `ports[i]`
/// faces; port 0 is the fabric): burst in, process, burst out on the port each frame goes to,
/// timers, control messages, counters. Returns when told to stop, or when every port's input has
/// ended (pcap). An idle worker sleeps in `poll(2)` on the ports' descriptors, when they have them.
pub fn poll_loop<P: Port>(engine: &mut Node, ports: &mut [P], infos: &[PortInfo], link: &WorkerLink) {
    assert!(!ports.is_empty() && ports.len() == infos.len(), "a worker has ports, each with its side");
    let mut rx: Vec<P::Buf> = Vec::with_capacity(BURST);
    let mut tx: Vec<P::Buf> = Vec::with_capacity(BURST);
    let mut stats = Stats::default();
    let mut last_publish = ports[0].clock_ns();
    let mut resets: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut deliver: DeliveryMap = Vec::new();
    let mut backends: Vec<(IpAddr, u32, MacAddr)> = Vec::new();
    let sweep_per_sec = engine.buckets().div_ceil(SWEEP_PERIOD_SECS as usize);
    let (mut sweep_owed, mut sweep_clock) = (0usize, ports[0].now());
    // Built once: an idle loop sleeps on it every round.
    let mut wake: Vec<libc::pollfd> = ports
        .iter()
        .filter_map(Port::wake_fd)
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    loop {
        if link.stop.load(Ordering::Relaxed) {
            break;
        }
        if apply_control(engine, link, &mut stats, &mut backends, ports[0].now()) {
            deliver = delivery_map(engine, &backends, infos);
            // The control plane learns at once which configuration runs (an etcd node reports it).
            publish(engine, &stats, link);
            last_publish = ports[0].clock_ns();
        }
        let mut received = 0;
        let mut burst_end = 0;
        for i in 0..ports.len() {
            let n = ports[i].rx_burst(&mut rx, BURST);
            received += n;
            stats.rx += n as u64;
            let now = ports[i].now();
            // rx_burst returns at most BURST frames; were there more, the rest would be recycled
            // below like any dropped frame, never leaked.
            let mut actions = [UNSET; BURST];
            let m = rx.len().min(BURST);
            // One clock read more a burst than the loop needs anyway (the publish check below
            // reuses the second), on the port's clock: under a nanosecond a frame with DPDK's TSC.
            let burst_start = (m > 0).then(|| ports[i].clock_ns());
            engine.process_burst(&mut rx[..m], infos[i].side, now, &mut actions[..m]);
            burst_end = ports[i].clock_ns();
            if let Some(t) = burst_start {
                stats.busy_ns += burst_end.saturating_sub(t);
            }
            for (mut b, a) in rx.drain(..).zip(actions.into_iter().chain(core::iter::repeat(UNSET))) {
                let (to, start, len) = match a {
                    Action::Transmit { start, len } => (0, start, len),
                    Action::Deliver { backend, start, len } => (deliver.get(backend).copied().unwrap_or(0), start, len),
                    Action::Drop(_) => {
                        ports[i].recycle(b);
                        continue;
                    }
                };
                b.set_frame(start, len);
                if to == i || to >= ports.len() {
                    tx.push(b);
                } else {
                    // Another port: its own buffers take a copy (a live port's frames belong to
                    // the ring they came from).
                    let (buf, start, len) = b.parts();
                    count_sent(&mut stats, ports[to].tx_copy(&buf[start..start + len]));
                    ports[i].recycle(b);
                }
            }
            let attempted = tx.len() as u64;
            if attempted > 0 {
                let sent = ports[i].tx_burst(&mut tx) as u64;
                stats.tx += sent;
                stats.tx_failed += attempted - sent;
            }
        }
        let now = ports[0].now();
        let elapsed = now.wrapping_sub(sweep_clock).min(SWEEP_PERIOD_SECS);
        sweep_owed = sweep_owed.saturating_add(sweep_per_sec * elapsed as usize);
        sweep_clock = now;
        // An idle loop of a polled port comes round millions of times a second and sweeps a little
        // each time; an idle live port's loop sleeps in poll(2) between rounds, so it sweeps what
        // the period owes, up to IDLE_SWEEP_BUDGET buckets a round.
        let budget = if received == 0 {
            sweep_owed.clamp(SWEEP_BUDGET, IDLE_SWEEP_BUDGET)
        } else {
            sweep_owed.min(SWEEP_BUDGET)
        };
        sweep_owed = sweep_owed.saturating_sub(budget);
        if budget > 0 {
            engine.expire(now, budget, |to, f| {
                let port = match to {
                    HostEgress::Fabric => 0,
                    HostEgress::Backend(b) => deliver.get(b).copied().unwrap_or(0),
                };
                resets.push((port, f.to_vec()));
            });
        }
        for (to, f) in resets.drain(..) {
            let to = if to < ports.len() { to } else { 0 };
            count_sent(&mut stats, ports[to].tx_copy(&f));
        }
        let done = received == 0 && ports.iter().all(Port::finished);
        if burst_end == 0 {
            burst_end = ports[0].clock_ns();
        }
        if done || burst_end.saturating_sub(last_publish) >= PUBLISH_PERIOD_NS {
            publish(engine, &stats, link);
            last_publish = ports[0].clock_ns();
        }
        if done {
            link.finished.store(true, Ordering::Relaxed);
            break;
        }
        if received == 0 && !wake.is_empty() {
            wait_readable(&mut wake, IDLE_WAIT_MS);
        }
    }
    publish(engine, &stats, link);
}

/// How long an idle worker sleeps at most before it looks at its control messages and timers.
const IDLE_WAIT_MS: i32 = 10;

/// Sleeps until one of `fds` is readable or `timeout_ms` passed.
fn wait_readable(fds: &mut [libc::pollfd], timeout_ms: i32) {
    // SAFETY: `fds` is a valid array of pollfd of the length given.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
}

fn count_sent(stats: &mut Stats, sent: bool) {
    if sent {
        stats.tx += 1;
    } else {
        stats.tx_failed += 1;
    }
}

/// Applies what the control plane sent: configurations, probe results, health, next hops, where
/// backends live. `stats.generation` is the number of the configuration the engine runs (the
/// control plane's; 0: the first), `stats.refused` the last it refused. Returns whether the
/// configuration, the local backends or where they live changed.
fn apply_control(
    engine: &mut Node,
    link: &WorkerLink,
    stats: &mut Stats,
    backends: &mut Vec<(IpAddr, u32, MacAddr)>,
    now: u32,
) -> bool {
    let mut probed = false;
    let mut moved = false;
    let generation = &mut stats.generation;
    for c in link.rx.try_iter() {
        match c {
            Control::Reload { lb, generation: number, health, tables } => {
                let health = health.as_deref().map_or(&[][..], |h| h.as_slice());
                let applied = engine.update_prepared((*lb).clone(), health, tables.as_deref());
                match applied {
                    Ok(()) => {
                        *generation = number;
                        moved = true;
                    }
                    Err(e) => {
                        eprintln!(
                            "lb-dpdk: reload refused by a worker, running configuration kept: {e} (its backends' \
                             health stays as it is until a reload succeeds: the probers follow the new configuration)"
                        );
                        stats.refused = Some((number, e.to_string()));
                        moved = true;
                    }
                }
            }
            Control::Health { generation: of, health } if of == *generation => {
                // Verdicts on members the running configuration does not have cannot come: the
                // generation check keeps other configurations' out.
                for h in health.iter() {
                    let _ = engine.set_health(h.pool, h.probe, h.member, h.up);
                }
                probed = true;
            }
            Control::Health { .. } => {}
            Control::Recall(earlier, age) => {
                if let Err(e) = engine.recall(&earlier, age, now) {
                    eprintln!("lb-dpdk: the configuration recalled for second chances is unusable: {e}");
                }
            }
            // Results of another configuration's probers name members by their place there.
            Control::Probe { generation: of, pool, probe, member, up } if of == *generation => {
                // A result for a member the running configuration does not have cannot come from
                // its probers: the generation check above keeps other configurations'.
                let _ = engine.record_probe(pool, probe, member, up);
                probed = true;
            }
            Control::Probe { .. } => {}
            Control::NextHop(peer, mac) => engine.set_next_hop(peer, mac),
            Control::Gateway(mac) => engine.set_gateway_mac(mac),
            Control::Backends(list) => {
                for &(address, _, mac) in &list {
                    engine.set_backend_mac(address, mac);
                }
                *backends = list;
                moved = true;
            }
        }
    }
    if probed {
        // All the results that came together, in one rebuild a table (after a zone failed,
        // hundreds of backends' probes time out at once).
        if let Err(e) = engine.apply_probes() {
            eprintln!("lb-dpdk: a health change could not be applied: {e}");
        }
    }
    moved
}

/// The port of each of a host agent's local backends: the first port on the interface the kernel
/// routes the backend's address through.
fn delivery_map(engine: &mut Node, backends: &[(IpAddr, u32, MacAddr)], infos: &[PortInfo]) -> DeliveryMap {
    let Some(host) = engine.host() else { return Vec::new() };
    host.local_backends()
        .iter()
        .map(|l| {
            let ifindex = backends.iter().find(|b| b.0 == l.address).map(|b| b.1);
            ifindex.and_then(|x| infos.iter().position(|p| p.ifindex == x && p.side == Side::Backend)).unwrap_or(0)
        })
        .collect()
}

fn publish(engine: &mut Node, io: &Stats, link: &WorkerLink) {
    let mut s = Stats::of(engine);
    s.rx = io.rx;
    s.tx = io.tx;
    s.tx_failed = io.tx_failed;
    s.busy_ns = io.busy_ns;
    s.generation = io.generation;
    s.refused.clone_from(&io.refused);
    if let Ok(mut slot) = link.stats.lock() {
        *slot = s;
    }
}

/// Running workers.
pub struct Workers {
    /// Each waits for some workers to end (joins a thread; DPDK: waits for the lcores, then closes
    /// the ports and the EAL).
    pub joins: Vec<Box<dyn FnOnce()>>,
    /// Their control-plane handles.
    pub handles: Vec<WorkerHandle>,
}
