//! A worker: one data-path node on one port (or queue), driven by [`poll_loop`], and the link the
//! control plane reaches it through. Workers share nothing: the control plane sends each one the
//! probe results and new configurations through its own channel and reads its counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use lb_core::config::node::NodeConfig;
use lb_core::config::LoadBalancer;
use lb_core::paths::{Action, DropCause, DropReason, Node, Side};

use crate::port::{FrameBuf, Port};
use crate::stats::Stats;

/// Frames per burst.
pub const BURST: usize = lb_core::paths::mux::BURST;
/// What an action slot holds before the data path has written it (and for frames past a burst).
const UNSET: Action = Action::Drop(DropCause::Mux(DropReason::Malformed));
/// Flow-table buckets one loop iteration sweeps for idle flows at most.
const SWEEP_BUDGET: usize = 8;
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
    /// Apply this configuration, the control plane's number `generation`.
    Reload(Arc<LoadBalancer>, u64),
    /// One result of probe `probe` for (pool, member), of configuration number `generation`.
    Probe { generation: u64, pool: usize, probe: usize, member: usize, up: bool },
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

/// The poll loop of one worker: burst in, process, burst out, timers, control messages, counters.
/// Returns when told to stop, or when the port's input has ended (pcap).
pub fn poll_loop<P: Port>(engine: &mut Node, port: &mut P, link: &WorkerLink) {
    let mut rx: Vec<P::Buf> = Vec::with_capacity(BURST);
    let mut tx: Vec<P::Buf> = Vec::with_capacity(BURST);
    let mut stats = Stats::default();
    let mut last_publish = port.clock_ns();
    let mut resets: Vec<Vec<u8>> = Vec::new();
    let sweep_per_sec = engine.buckets().div_ceil(SWEEP_PERIOD_SECS as usize);
    let (mut sweep_owed, mut sweep_clock) = (0usize, port.now());
    // The number of the configuration the engine runs (the control plane's; 0: the first).
    let mut generation = 0u64;
    loop {
        if link.stop.load(Ordering::Relaxed) {
            break;
        }
        let mut probed = false;
        for c in link.rx.try_iter() {
            match c {
                Control::Reload(lb, number) => match engine.update((*lb).clone()) {
                    Ok(()) => generation = number,
                    Err(e) => eprintln!(
                        "lb-dpdk: reload refused by a worker, running configuration kept: {e} (its backends' \
                         health stays as it is until a reload succeeds: the probers follow the new configuration)"
                    ),
                },
                // Results of another configuration's probers name members by their place there.
                Control::Probe { generation: of, pool, probe, member, up } if of == generation => {
                    // A result for a member the running configuration does not have cannot come
                    // from its probers: the generation check above keeps other configurations'.
                    let _ = engine.record_probe(pool, probe, member, up);
                    probed = true;
                }
                Control::Probe { .. } => {}
            }
        }
        if probed {
            // All the results that came together, in one rebuild a table (after a zone failed,
            // hundreds of backends' probes time out at once).
            if let Err(e) = engine.apply_probes() {
                eprintln!("lb-dpdk: a health change could not be applied: {e}");
            }
        }
        let n = port.rx_burst(&mut rx, BURST);
        let now = port.now();
        stats.rx += n as u64;
        // rx_burst returns at most BURST frames; were there more, the rest would be recycled below
        // like any dropped frame, never leaked.
        let mut actions = [UNSET; BURST];
        let m = rx.len().min(BURST);
        // One clock read more a burst than the loop needs anyway (the publish check below reuses
        // the second), on the port's clock: under a nanosecond a frame with DPDK's TSC.
        let burst_start = (m > 0).then(|| port.clock_ns());
        // One port carries both sides of a host agent here.
        engine.process_burst(&mut rx[..m], Side::Either, now, &mut actions[..m]);
        let burst_end = port.clock_ns();
        if let Some(t) = burst_start {
            stats.busy_ns += burst_end.saturating_sub(t);
        }
        for (mut b, a) in rx.drain(..).zip(actions.into_iter().chain(core::iter::repeat(UNSET))) {
            match a {
                Action::Transmit { start, len } | Action::Deliver { start, len, .. } => {
                    b.set_frame(start, len);
                    tx.push(b);
                }
                Action::Drop(_) => port.recycle(b),
            }
        }
        let attempted = tx.len() as u64;
        if attempted > 0 {
            let sent = port.tx_burst(&mut tx) as u64;
            stats.tx += sent;
            stats.tx_failed += attempted - sent;
        }
        let elapsed = now.wrapping_sub(sweep_clock).min(SWEEP_PERIOD_SECS);
        sweep_owed = sweep_owed.saturating_add(sweep_per_sec * elapsed as usize);
        sweep_clock = now;
        let budget = if n == 0 { SWEEP_BUDGET } else { sweep_owed.min(SWEEP_BUDGET) };
        sweep_owed = sweep_owed.saturating_sub(budget);
        if budget > 0 {
            engine.expire(now, budget, |_, f| resets.push(f.to_vec()));
        }
        for f in resets.drain(..) {
            if port.tx_copy(&f) {
                stats.tx += 1;
            } else {
                stats.tx_failed += 1;
            }
        }
        let done = n == 0 && port.finished();
        if done || burst_end.saturating_sub(last_publish) >= PUBLISH_PERIOD_NS {
            publish(engine, &stats, link);
            last_publish = port.clock_ns();
        }
        if done {
            link.finished.store(true, Ordering::Relaxed);
            break;
        }
    }
    publish(engine, &stats, link);
}

fn publish(engine: &mut Node, io: &Stats, link: &WorkerLink) {
    let mut s = Stats::of(engine);
    s.rx = io.rx;
    s.tx = io.tx;
    s.tx_failed = io.tx_failed;
    s.busy_ns = io.busy_ns;
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
