//! `lb-dpdk run`: the poll-mode program. The control plane (this thread) loads the configuration,
//! handles signals (SIGINT/SIGTERM stop, SIGHUP reloads), runs the health probers, prints the status
//! line and serves the metrics; each worker (one per lcore) owns an engine, its flow table and its
//! counters, and runs [`poll_loop`] on its own port or queue. Workers share nothing: the control
//! plane sends each one the probe results and new configurations through its own channel.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use lb_core::config::LoadBalancer;

use crate::engine::{Action, Engine, Stats};
use crate::node::{self, NodeConfig, Role};
use crate::port::{AtEnd, FrameBuf, PcapPort, Port};

/// Frames per burst.
pub const BURST: usize = 32;
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

/// `lb-dpdk run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node configuration (role, addresses, load balancer): see examples/*.node.json.
    #[arg(long)]
    pub config: PathBuf,
    /// Read frames from this pcap (the pure-Rust port, the default).
    #[arg(long, required_unless_present = "dpdk")]
    pub pcap_in: Option<PathBuf>,
    /// Write transmitted frames to this pcap.
    #[arg(long, required_unless_present = "dpdk")]
    pub pcap_out: Option<PathBuf>,
    /// Use DPDK (EAL arguments after `--`).
    #[arg(long)]
    pub dpdk: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Seconds between status lines (0: none).
    #[arg(long, default_value_t = 1)]
    pub status_interval: u64,
    /// Do not run health probes.
    #[arg(long)]
    pub no_probes: bool,
    /// Keep running after the pcap input ends (for probes, reloads and metrics), until a signal.
    #[arg(long)]
    pub linger: bool,
    /// Follow --pcap-in as it grows, like `tail -f`: frames appended to it while the program runs
    /// are processed as they come, and the program runs until a signal (its output is complete once
    /// it stopped). Lets a test or a demo show live traffic move with health probes and reloads.
    #[arg(long, conflicts_with = "dpdk")]
    pub pcap_follow: bool,
    /// DPDK: the port to receive on.
    #[arg(long, default_value_t = 0, requires = "dpdk")]
    pub dpdk_rx_port: u16,
    /// DPDK: the port to send on (default: the rx port).
    #[arg(long, requires = "dpdk")]
    pub dpdk_tx_port: Option<u16>,
    /// DPDK: mbufs in the pool (default: enough for every queue's descriptors, at least 8191).
    #[arg(long, requires = "dpdk")]
    pub dpdk_mbufs: Option<u32>,
    /// DPDK: a worker ends after this many seconds without a frame, the program when all have (for
    /// tests and benchmarks on vdevs whose input ends, such as net_pcap).
    #[arg(long, requires = "dpdk")]
    pub dpdk_idle_exit: Option<f64>,
    /// EAL arguments (after `--`).
    #[arg(last = true)]
    pub eal: Vec<String>,
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
    tx: Sender<Control>,
    stats: Arc<Mutex<Stats>>,
    finished: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
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
pub fn poll_loop<P: Port>(engine: &mut Engine, port: &mut P, link: &WorkerLink) {
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
                    engine.record_probe(pool, probe, member, up);
                    probed = true;
                }
                Control::Probe { .. } => {}
            }
        }
        if probed {
            // All the results that came together, in one rebuild a table (after a zone failed,
            // hundreds of backends' probes time out at once).
            engine.apply_probes();
        }
        let n = port.rx_burst(&mut rx, BURST);
        let now = port.now();
        stats.rx += n as u64;
        // rx_burst returns at most BURST frames; were there more, the rest would be recycled below
        // like any dropped frame, never leaked.
        let mut actions = [Action::Drop; BURST];
        let m = rx.len().min(BURST);
        // One clock read more a burst than the loop needs anyway (the publish check below reuses
        // the second), on the port's clock: under a nanosecond a frame with DPDK's TSC.
        let burst_start = (m > 0).then(|| port.clock_ns());
        engine.process_burst(&mut rx[..m], now, &mut actions[..m]);
        let burst_end = port.clock_ns();
        if let Some(t) = burst_start {
            stats.busy_ns += burst_end.saturating_sub(t);
        }
        for (mut b, a) in rx.drain(..).zip(actions.into_iter().chain(core::iter::repeat(Action::Drop))) {
            match a {
                Action::Transmit { start, len } | Action::Deliver { start, len, .. } => {
                    b.set_frame(start, len);
                    tx.push(b);
                }
                Action::Drop => port.recycle(b),
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
            engine.tick(now, budget, |f| resets.push(f.to_vec()));
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

fn publish(engine: &mut Engine, io: &Stats, link: &WorkerLink) {
    let mut s = engine.stats();
    s.rx = io.rx;
    s.tx = io.tx;
    s.tx_failed = io.tx_failed;
    s.busy_ns = io.busy_ns;
    if let Ok(mut slot) = link.stats.lock() {
        *slot = s;
    }
}

/// `lb-dpdk run`.
pub fn main(args: &RunArgs) -> ExitCode {
    let cfg = match node::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lb-dpdk: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGHUP, &reload),
    ] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            eprintln!("lb-dpdk: cannot handle signal {sig}: {e}");
            return ExitCode::from(1);
        }
    }
    let workers = match start_workers(args, &cfg, &stop) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("lb-dpdk: {e}");
            return ExitCode::from(1);
        }
    };
    let code = control_plane(args, cfg, &stop, &reload, &workers.handles);
    stop.store(true, Ordering::Relaxed);
    for join in workers.joins {
        join();
    }
    let total = sum(&workers.handles);
    let mut out = std::io::stdout().lock();
    let _ = print_summary(&total, &mut out);
    if workers.handles.iter().any(|h| h.failed.load(Ordering::Relaxed)) {
        eprintln!("lb-dpdk: a worker failed (see above)");
        return ExitCode::from(1);
    }
    code
}

/// Running workers.
pub struct Workers {
    /// Each waits for some workers to end (joins a thread; DPDK: waits for the lcores, then closes
    /// the ports and the EAL).
    pub joins: Vec<Box<dyn FnOnce()>>,
    /// Their control-plane handles.
    pub handles: Vec<WorkerHandle>,
}

fn start_workers(args: &RunArgs, cfg: &NodeConfig, stop: &Arc<AtomicBool>) -> Result<Workers, String> {
    if args.dpdk {
        #[cfg(feature = "dpdk")]
        return crate::dpdk::start(args, cfg, stop);
        #[cfg(not(feature = "dpdk"))]
        return Err("this build has no DPDK support: rebuild with `--features dpdk`".into());
    }
    let (Some(input), Some(output)) = (&args.pcap_in, &args.pcap_out) else {
        return Err("--pcap-in and --pcap-out are needed without --dpdk".into());
    };
    let mut port = PcapPort::open(input, output)?;
    let output_name = output.to_path_buf();
    port.at_end(match (args.pcap_follow, args.linger) {
        (true, _) => AtEnd::Follow,
        (false, true) => AtEnd::Wait,
        (false, false) => AtEnd::Finish,
    });
    let mut engine = Engine::new(cfg)?;
    let (link, handle) = worker_pair(stop);
    let t = std::thread::Builder::new()
        .name("lb-worker-0".into())
        .spawn(move || {
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_loop(&mut engine, &mut port, &link)));
            if ran.is_err() {
                eprintln!("lb-dpdk: the worker panicked: stopping");
                link.failed.store(true, Ordering::Relaxed);
                link.stop.store(true, Ordering::Relaxed);
                link.finished.store(true, Ordering::Relaxed);
            }
            if let Err(e) = port.close() {
                eprintln!("lb-dpdk: {}: {e}", output_name.display());
                link.failed.store(true, Ordering::Relaxed);
            }
            if port.oversize > 0 || port.cut > 0 || port.read_errors > 0 {
                eprintln!(
                    "lb-dpdk: pcap input: {} frames larger than a buffer and {} cut short by the capture's \
                     snaplen skipped, {} read errors",
                    port.oversize, port.cut, port.read_errors
                );
            }
        })
        .map_err(|e| e.to_string())?;
    let join = move || {
        let _ = t.join();
    };
    Ok(Workers { joins: vec![Box::new(join)], handles: vec![handle] })
}

fn sum(handles: &[WorkerHandle]) -> Stats {
    let mut total = Stats::default();
    for h in handles {
        if let Ok(s) = h.stats.lock() {
            total.merge(&s);
        }
    }
    total
}

/// Signals, reloads, probes, status and metrics, until a stop signal or every worker's input ended.
fn control_plane(
    args: &RunArgs,
    cfg: NodeConfig,
    stop: &Arc<AtomicBool>,
    reload: &Arc<AtomicBool>,
    workers: &[WorkerHandle],
) -> ExitCode {
    let metrics_page = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = args.metrics {
        if let Err(e) = crate::metrics::serve(addr, metrics_page.clone(), stop.clone()) {
            eprintln!("lb-dpdk: metrics on {addr}: {e}");
            return ExitCode::from(1);
        }
        eprintln!("lb-dpdk: metrics on http://{addr}/metrics");
    }
    let mut lb = cfg.lb.clone();
    let (probe_tx, probe_rx) = mpsc::channel();
    // Only a MUX steers by health: a host agent's probers would load every backend for nothing.
    let probing = !args.no_probes && cfg.role == Role::Mux;
    let mut generation = 0u64;
    let mut probers = probing.then(|| crate::probe::Probers::start(&lb, generation, probe_tx.clone()));
    let started = Instant::now();
    let mut last_status = Instant::now();
    let mut last = Stats::default();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if reload.swap(false, Ordering::Relaxed) {
            match node::load(&args.config).map_err(|e| e.to_string()).and_then(|new| check_reload(&cfg, new)) {
                Ok(new) => {
                    eprintln!("lb-dpdk: SIGHUP: configuration reloaded from {}", args.config.display());
                    // The old probers' results name members by their place in the old configuration:
                    // stop them, and hand the workers what they sent before the new configuration,
                    // never after it.
                    if let Some(p) = probers.take() {
                        p.stop();
                    }
                    forward_probes(&probe_rx, workers);
                    lb = new.clone();
                    generation += 1;
                    let shared = Arc::new(new);
                    for w in workers {
                        let _ = w.tx.send(Control::Reload(shared.clone(), generation));
                    }
                    if probing {
                        probers = Some(crate::probe::Probers::start(&lb, generation, probe_tx.clone()));
                    }
                }
                Err(e) => eprintln!("lb-dpdk: SIGHUP: refused, running configuration kept: {e}"),
            }
        }
        forward_probes(&probe_rx, workers);
        let interval = Duration::from_secs(args.status_interval.max(1));
        if last_status.elapsed() >= interval {
            let total = sum(workers);
            if args.status_interval > 0 {
                eprintln!("{}", status_line(&total, &last, last_status.elapsed(), started.elapsed()));
            }
            if let Ok(mut page) = metrics_page.lock() {
                *page = crate::metrics::render(&total);
            }
            last = total;
            last_status = Instant::now();
        }
        if workers.iter().all(|w| w.finished.load(Ordering::Relaxed)) && !args.linger {
            break;
        }
    }
    if let Some(p) = probers.take() {
        p.stop();
    }
    ExitCode::SUCCESS
}

/// The load balancer of a reloaded node file, if the running program can take it, checked before
/// any worker or prober sees it (a refusal after the probers had moved on would leave them
/// probing members the workers do not run, and reporting them by the wrong positions):
/// - the role and the node's own settings take a restart (the workers' tables and tunnels are
///   built from them), so a file that changes them is refused, naming what changed;
/// - the load balancer is applied to a trial engine with a one-flow table, as each worker applies
///   it: what `validate` cannot see (a backend host of the other IP version than the underlay,
///   say) is refused here. What only a running engine's history can refuse (a MUX's tunnel
///   indices, which only grow, running out) is still refused by the workers, which then keep the
///   running configuration and say so.
fn check_reload(running: &NodeConfig, new: NodeConfig) -> Result<LoadBalancer, String> {
    if new.role != running.role {
        return Err("the role cannot change at run time".into());
    }
    let changed = node_changes(running, &new);
    if !changed.is_empty() {
        return Err(format!("node settings changed ({}): they take a restart", changed.join(", ")));
    }
    let mut trial = new.clone();
    trial.mux.flow_capacity = 1;
    trial.host.flow_capacity = 1;
    Engine::new(&trial)?;
    Ok(new.lb)
}

/// The node settings of the running role that differ between `a` and `b`, by their names in the
/// node file.
fn node_changes(a: &NodeConfig, b: &NodeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut field = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    match a.role {
        Role::Mux => {
            let (a, b) = (&a.mux, &b.mux);
            field("mac", a.mac != b.mac);
            field("gatewayMac", a.gateway_mac != b.gateway_mac);
            field("underlay", a.underlay != b.underlay);
            field("ttl", a.ttl != b.ttl);
            field("mtu", a.mtu != b.mtu);
            field("hashSeed", a.hash_seed != b.hash_seed);
            field("flowCapacity", a.flow_capacity != b.flow_capacity);
            field("maglevSize", a.maglev_size != b.maglev_size);
        }
        Role::Host => {
            let (a, b) = (&a.host, &b.host);
            field("mac", a.mac != b.mac);
            field("gatewayMac", a.gateway_mac != b.gateway_mac);
            field("underlay", a.underlay != b.underlay);
            field("muxes", a.muxes != b.muxes);
            field("returnPath", a.return_path != b.return_path);
            field("ttl", a.ttl != b.ttl);
            field("mtu", a.mtu != b.mtu);
            field("hashSeed", a.hash_seed != b.hash_seed);
            field("flowCapacity", a.flow_capacity != b.flow_capacity);
            field("snatQuarantineSeconds", a.snat_quarantine_secs != b.snat_quarantine_secs);
            field("resetOnSnatExhaustion", a.reset_on_snat_exhaustion != b.reset_on_snat_exhaustion);
        }
    }
    changed
}

/// Hands every probe result received so far to every worker.
fn forward_probes(rx: &Receiver<crate::probe::ProbeResult>, workers: &[WorkerHandle]) {
    for r in rx.try_iter() {
        for w in workers {
            let (generation, pool, probe, member, up) = (r.generation, r.pool, r.probe, r.member, r.success);
            let _ = w.tx.send(Control::Probe { generation, pool, probe, member, up });
        }
    }
}

/// One line: rates since the last line, drops by reason, flows, SNAT ports, and the engine's time
/// a frame over the interval (summed over workers: the cost of a frame to one core).
pub fn status_line(now: &Stats, before: &Stats, over: Duration, up: Duration) -> String {
    let secs = over.as_secs_f64().max(1e-9);
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
    let drops: Vec<String> = now.drops.iter().filter(|d| d.1 > 0).map(|(n, v)| format!("{n}={v}")).collect();
    let cost = now.ns_per_frame(before).map_or_else(|| "-".to_string(), |ns| format!("{ns:.1}"));
    format!(
        "[{:>6.1}s] in {:.0} pps, out {:.0} pps | rx {} tx {} tx_failed {} | drops {} {} | flows {} | snat ports {} | engine {cost} ns/frame",
        up.as_secs_f64(),
        rate(now.rx, before.rx),
        rate(now.tx, before.tx),
        now.rx,
        now.tx,
        now.tx_failed,
        now.dropped(),
        if drops.is_empty() { String::new() } else { format!("({})", drops.join(" ")) },
        now.flows,
        now.snat_ports
    )
}

/// The final report: counters, drops by reason, and the per-backend distribution with a bar each.
pub fn print_summary(s: &Stats, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "frames in {}, out {}, tx failed {}, dropped {}", s.rx, s.tx, s.tx_failed, s.dropped())?;
    writeln!(out, "flows {}, snat ports in use {}, tcp resets {}", s.flows, s.snat_ports, s.resets)?;
    if let Some(ns) = s.ns_per_frame(&Stats::default()) {
        writeln!(out, "engine time {ns:.1} ns a frame (the data path alone, polling and I/O excluded)")?;
    }
    writeln!(out, "drops by reason:")?;
    for (n, v) in &s.drops {
        writeln!(out, "  {n:<20} {v:>10}")?;
    }
    writeln!(out, "per backend:")?;
    let total: u64 = s.backends.iter().map(|b| b.3).sum();
    let most = s.backends.iter().map(|b| b.3).max().unwrap_or(0).max(1);
    let width = 40.0;
    writeln!(
        out,
        "  {:<14} {:<10} {:<26} {:>10} {:>9} {:>6}",
        "pool", "backend", "address", "packets", "new flows", "share"
    )?;
    for (pool, name, addr, packets, new_flows) in &s.backends {
        let share = if total == 0 { 0.0 } else { *packets as f64 / total as f64 };
        let bar = "#".repeat((*packets as f64 / most as f64 * width).round() as usize);
        writeln!(
            out,
            "  {pool:<14} {name:<10} {:<26} {packets:>10} {new_flows:>9} {:>5.1}% {bar}",
            addr.to_string(),
            share * 100.0
        )?;
    }
    Ok(())
}
