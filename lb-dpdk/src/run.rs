//! `lb-dpdk run`: the poll-mode program. The control plane (this thread) loads the configuration,
//! handles signals (SIGINT/SIGTERM stop, SIGHUP reloads), runs the health probers, prints the status
//! line and serves the metrics; the workers (see [`crate::worker`]) run the data path on the port
//! the options name.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use lb_core::config::LoadBalancer;

use lb_core::config::node::{self, NodeConfig, Role};
use lb_core::paths::NodeRole;

use crate::datapath::{frontends, DataPathProber};
use crate::etcd::EtcdNode;
use crate::history::History;
use crate::live::Live;
use crate::pcap::AtEnd;
use crate::port::{LiveOptions, LivePort};
use crate::stats::Stats;
use crate::worker::{Control, WorkerHandle, Workers};

/// `lb-dpdk run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node configuration (role, addresses, load balancer): see examples/*.node.json.
    #[arg(long)]
    pub config: PathBuf,
    /// Read frames from this pcap (the pure-Rust port, the default).
    #[arg(long, required_unless_present_any = ["dpdk", "live"])]
    pub pcap_in: Option<PathBuf>,
    /// Write transmitted frames to this pcap.
    #[arg(long, required_unless_present_any = ["dpdk", "live"])]
    pub pcap_out: Option<PathBuf>,
    /// Use DPDK (EAL arguments after `--`).
    #[arg(long, conflicts_with = "live")]
    pub dpdk: bool,
    /// Run on the Linux interfaces the node file names (`interfaces`): AF_XDP, or AF_PACKET where
    /// BPF cannot be loaded (`--live` alone tries AF_XDP first). The kernel keeps every frame the
    /// load balancer does not own.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "auto", conflicts_with_all = ["pcap_in", "pcap_out"])]
    pub live: Option<LiveKind>,
    /// Live ports: busy-poll for this many microseconds a call instead of sleeping on the kernel's
    /// wakeups (a core of its own, lower latency).
    #[arg(long, requires = "live")]
    pub busy_poll: Option<u32>,
    /// AF_XDP: attach the XDP program in generic (SKB) mode only.
    #[arg(long, requires = "live")]
    pub xdp_generic: bool,
    /// AF_XDP: copy mode only, even where the driver does zero-copy.
    #[arg(long, requires = "live")]
    pub xdp_copy: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Seconds between status lines (0: none).
    #[arg(long, default_value_t = 1)]
    pub status_interval: u64,
    /// Do not run health probes.
    #[arg(long)]
    pub no_probes: bool,
    /// MUX: every SECONDS, a TCP handshake from this node's kernel to each TCP rule's frontend
    /// through the load balancer (Azure's Data Path Availability, `lb_data_path_availability`).
    /// The kernel must route the VIPs to the routers in front of the MUXes and own none of them.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub data_path_probes: Option<u64>,
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

/// A live port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LiveKind {
    /// AF_XDP, and AF_PACKET if the XDP program or the AF_XDP sockets cannot be set up.
    Auto,
    /// AF_XDP sockets behind an XDP program that takes only the load balancer's frames.
    Afxdp,
    /// AF_PACKET rings (TPACKET_V3, fanout): where BPF cannot be loaded; the kernel sees every
    /// frame too.
    Afpacket,
}

impl RunArgs {
    /// What the DPDK port takes of the options.
    #[cfg(feature = "dpdk")]
    fn dpdk_options(&self) -> crate::dpdk::DpdkOptions {
        crate::dpdk::DpdkOptions {
            rx_port: self.dpdk_rx_port,
            tx_port: self.dpdk_tx_port,
            mbufs: self.dpdk_mbufs,
            idle_exit: self.dpdk_idle_exit,
            eal: self.eal.clone(),
        }
    }
}

/// `lb-dpdk run`.
pub fn main(args: &RunArgs) -> ExitCode {
    let cfg = match load(args) {
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
    // The workers stop on `halt`, once the control plane returns: after a stop signal, and with a
    // BGP speaker after the drain that follows it.
    let halt = Arc::new(AtomicBool::new(false));
    let (workers, live) = match start_workers(args, &cfg, &halt) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("lb-dpdk: {e}");
            return ExitCode::from(1);
        }
    };
    let code = control_plane(args, cfg, live, [&stop, &halt], &reload, &workers.handles);
    halt.store(true, Ordering::Relaxed);
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

/// The node file, with the fabric interface's MAC when the file gives none and the port is live.
fn load(args: &RunArgs) -> Result<NodeConfig, String> {
    let mut cfg = node::load(&args.config).map_err(|e| e.to_string())?;
    if args.live.is_some() {
        crate::live::take_interface_mac(&mut cfg)?;
    }
    Ok(cfg)
}

/// Starts the workers on the port the options name.
fn start_workers(args: &RunArgs, cfg: &NodeConfig, stop: &Arc<AtomicBool>) -> Result<(Workers, Option<Live>), String> {
    match args.live {
        Some(LiveKind::Afxdp) => return start_live::<crate::afxdp::AfXdpPort>(args, cfg, stop),
        Some(LiveKind::Auto) => {
            return start_live::<crate::afxdp::AfXdpPort>(args, cfg, stop).or_else(|e| {
                eprintln!("lb-dpdk: AF_XDP cannot run here ({e}): falling back to AF_PACKET, where the kernel sees every frame too");
                start_live::<crate::afpacket::AfPacketPort>(args, cfg, stop)
            })
        }
        Some(LiveKind::Afpacket) => return start_live::<crate::afpacket::AfPacketPort>(args, cfg, stop),
        None => {}
    }
    if args.dpdk {
        #[cfg(feature = "dpdk")]
        return crate::dpdk::start(&args.dpdk_options(), cfg, stop).map(|w| (w, None));
        #[cfg(not(feature = "dpdk"))]
        return Err("this build has no DPDK support: rebuild with `--features dpdk`".into());
    }
    let (Some(input), Some(output)) = (&args.pcap_in, &args.pcap_out) else {
        return Err("--pcap-in and --pcap-out are needed without --dpdk".into());
    };
    let at_end = match (args.pcap_follow, args.linger) {
        (true, _) => AtEnd::Follow,
        (false, true) => AtEnd::Wait,
        (false, false) => AtEnd::Finish,
    };
    crate::pcap::start(input, output, at_end, cfg, stop).map(|w| (w, None))
}

fn start_live<P: LivePort>(
    args: &RunArgs,
    cfg: &NodeConfig,
    stop: &Arc<AtomicBool>,
) -> Result<(Workers, Option<Live>), String> {
    let options = LiveOptions { busy_poll_us: args.busy_poll, generic_xdp: args.xdp_generic, copy: args.xdp_copy };
    crate::live::start::<P>(cfg, &options, stop).map(|(w, l)| (w, Some(l)))
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
    mut live: Option<Live>,
    [stop, halt]: [&Arc<AtomicBool>; 2],
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
    let is_mux = cfg.kind() == Role::Mux;
    let underlay = cfg.role.base().underlay;
    // A MUX steers by health: from its own probes, or in etcd mode from its hosts' verdicts. A
    // file-based host agent's probers would load every backend for nothing; in etcd mode a host
    // agent probes its own backends for the MUXes.
    let probing = !args.no_probes && (is_mux != cfg.etcd.is_some());
    let probe_host = (cfg.etcd.is_some() && !is_mux).then_some(underlay);
    // A MUX with a `bgp` section announces its VIPs once the workers run and the probes (or the
    // hosts in etcd) have spoken (see crate::bgp).
    let waits = is_mux && (probing || cfg.etcd.is_some());
    let mut speaker = match cfg.bgp.as_ref().map(|b| crate::bgp::Speaker::start(b, waits)).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lb-dpdk: bgp: {e}");
            return ExitCode::from(1);
        }
    };
    // In etcd mode the node starts with nothing and runs what the control plane stores.
    let mut etcd = match cfg.etcd.as_ref().map(|e| EtcdNode::start(e, cfg.kind(), underlay, args.no_probes)).transpose()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("lb-dpdk: {e}");
            return ExitCode::from(1);
        }
    };
    let mut drain_until: Option<Instant> = None;
    // A reload that removes announced VIPs, waiting for their withdrawal to take effect.
    let mut staged: Option<(Incoming, Instant)> = None;
    let mut lb = cfg.lb.clone();
    let (probe_tx, probe_rx) = mpsc::channel();
    let mut generation = 0u64;
    // The Maglev tables last handed to the workers (shared with them, not copied).
    let mut prepared: Option<Arc<lb_core::paths::PreparedTables>> = None;
    let mut probers = probing.then(|| crate::probe::Probers::start(&lb, generation, probe_tx.clone(), probe_host));
    // Data path probes (MUX only), restarted when a configuration changes the frontends.
    let data_path_every = args.data_path_probes.filter(|_| is_mux).map(Duration::from_secs);
    if args.data_path_probes.is_some() && !is_mux {
        eprintln!("lb-dpdk: --data-path-probes: a MUX's option, ignored by a host agent");
    }
    let mut data_path = data_path_every.map(|every| DataPathProber::start(&lb, every, BTreeMap::new()));
    let mut history = if etcd.is_none() { start_history(&cfg, &lb, workers) } else { None };
    let started = Instant::now();
    let mut last_status = Instant::now();
    let mut last = Stats::default();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if halt.load(Ordering::Relaxed) {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            // With routes announced: withdraw them, and forward for the drain while the routers
            // move the flows to the other MUXes.
            match (&mut speaker, drain_until) {
                (Some(s), None) => {
                    s.withdraw_all();
                    drain_until = Some(Instant::now() + s.drain());
                    eprintln!("lb-dpdk: bgp: every route withdrawn; forwarding for {} s more", s.drain().as_secs());
                }
                (Some(_), Some(t)) if Instant::now() < t => {}
                _ => break,
            }
        }
        let mut to_apply = None;
        if reload.swap(false, Ordering::Relaxed) {
            match load(args).and_then(|new| check_reload(&cfg, new)) {
                Ok(_) if cfg.etcd.is_some() => {
                    eprintln!("lb-dpdk: SIGHUP: node file unchanged; the load balancers come from etcd")
                }
                Ok(new) => {
                    eprintln!("lb-dpdk: SIGHUP: configuration reloaded from {}", args.config.display());
                    let new = Incoming { lb: new, revision: None };
                    to_apply = offer(new, &lb, speaker.as_mut(), &mut staged, "SIGHUP");
                }
                Err(e) => eprintln!("lb-dpdk: SIGHUP: refused, running configuration kept: {e}"),
            }
        }
        if let Some(e) = &mut etcd {
            if let Some((revision, union)) = e.take_config() {
                match union {
                    Err(error) => e.refuse(revision, error),
                    // The set changed, not what this node runs (or it comes back to it before a
                    // staged change took effect).
                    Ok(union) if union == lb => {
                        if staged.take().is_some() {
                            eprintln!("lb-dpdk: etcd: revision {revision} is the configuration running: the staged one is dropped");
                            if let Some(s) = &mut speaker {
                                s.release();
                            }
                        }
                        e.unchanged(generation, revision);
                    }
                    Ok(union) if staged.as_ref().is_some_and(|(s, _)| s.lb == union) => {
                        if let Some((s, _)) = &mut staged {
                            s.revision = Some(revision);
                        }
                    }
                    Ok(union) => match check_reload(&cfg, NodeConfig { lb: union, ..cfg.clone() }) {
                        Ok(new) => {
                            let new = Incoming { lb: new, revision: Some(revision) };
                            to_apply = offer(new, &lb, speaker.as_mut(), &mut staged, "etcd");
                        }
                        Err(error) => e.refuse(revision, error),
                    },
                }
            }
        }
        if staged.as_ref().is_some_and(|(_, at)| Instant::now() >= *at) {
            to_apply = staged.take().map(|(new, _)| new);
        }
        if let Some(Incoming { lb: new, revision }) = to_apply {
            if let Some(s) = &mut speaker {
                s.release();
            }
            // The old probers' results name members by their place in the old configuration:
            // stop them, and hand the workers what they sent before the new configuration,
            // never after it. (In etcd mode their results carry the old configuration's number
            // and are dropped: a host agent does not wait for the probes in flight.)
            if let Some(p) = probers.take() {
                if etcd.is_some() {
                    p.stop_detached();
                } else {
                    p.stop();
                }
            }
            forward_probes(&probe_rx, workers, (&lb, generation), speaker.as_mut(), etcd.as_mut());
            lb = new.clone();
            if let Some(h) = &mut history {
                h.reloaded(&lb);
            }
            if let Some(l) = &mut live {
                l.reload(&lb);
            }
            generation += 1;
            // A MUX in etcd mode takes the members' health with the configuration, in one step.
            let health = etcd.as_mut().filter(|_| is_mux).map(|e| Arc::new(e.health_for(&lb)));
            // The tables are built once, here, and shared by the workers, so that the frames a
            // worker holds while it applies the change do not wait for Maglev builds; those of
            // the running configuration with the same members are shared again. (A failure
            // leaves the workers to build and to refuse.)
            let member_health = health.as_deref().map_or(&[][..], |h| h.as_slice());
            let tables = lb_core::paths::Node::prepare(&cfg.role, &new, member_health, prepared.as_deref())
                .ok()
                .flatten()
                .map(Arc::new);
            let shared = Arc::new(new);
            for w in workers {
                let _ = w.tx.send(Control::Reload {
                    lb: shared.clone(),
                    generation,
                    health: health.clone(),
                    tables: tables.clone(),
                });
            }
            prepared = tables;
            if let Some(e) = &mut etcd {
                let health = health.map(|h| h.to_vec()).unwrap_or_default();
                e.applied(generation, revision.unwrap_or(0), &lb, health);
                tell_speaker(speaker.as_mut(), &lb, e);
                if history.is_none() {
                    history = start_history(&cfg, &lb, workers);
                }
            }
            if probing {
                probers = Some(crate::probe::Probers::start(&lb, generation, probe_tx.clone(), probe_host));
            }
            if let Some(every) =
                data_path_every.filter(|_| data_path.as_ref().is_none_or(|p| p.targets() != frontends(&lb)))
            {
                let kept = data_path.take().map(DataPathProber::stop).unwrap_or_default();
                data_path = Some(DataPathProber::start(&lb, every, kept));
            }
        }
        if let Some(e) = &mut etcd {
            if let Some(health) = e.health_change(&lb) {
                let health = Arc::new(health);
                for w in workers {
                    let _ = w.tx.send(Control::Health { generation, health: health.clone() });
                }
                tell_speaker(speaker.as_mut(), &lb, e);
            }
        }
        forward_probes(&probe_rx, workers, (&lb, generation), speaker.as_mut(), etcd.as_mut());
        if let Some(s) = &mut speaker {
            let serving =
                !workers.iter().any(|w| w.failed.load(Ordering::Relaxed) || w.finished.load(Ordering::Relaxed));
            s.round(&lb, serving, || sum(workers));
        }
        if let Some(e) = &mut etcd {
            let vips = speaker.as_ref().map(|s| s.announced().iter().copied().collect()).unwrap_or_default();
            e.tick(&lb, generation, workers, vips);
        }
        if let Some(l) = &mut live {
            l.refresh(&cfg, &lb, workers);
        }
        let interval = Duration::from_secs(args.status_interval.max(1));
        if last_status.elapsed() >= interval {
            let total = sum(workers);
            if args.status_interval > 0 {
                eprintln!("{}", status_line(&total, &last, last_status.elapsed(), started.elapsed()));
            }
            let availability = data_path.as_ref().map(DataPathProber::snapshot).unwrap_or_default();
            if let Ok(mut page) = metrics_page.lock() {
                *page = crate::metrics::render(&total, &total.report, &availability);
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
    if let Some(p) = data_path.take() {
        p.stop();
    }
    if let Some(s) = speaker {
        s.stop();
    }
    if let Some(e) = etcd {
        e.stop();
    }
    ExitCode::SUCCESS
}

/// A configuration to run: the load balancer and, in etcd mode, the revision it was stored at.
struct Incoming {
    lb: LoadBalancer,
    revision: Option<i64>,
}

/// Takes `new` (checked by [`check_reload`]) in place of `running`: at once (returned), or, when
/// it removes announced VIPs and the speaker drains, staged until they are withdrawn and the
/// routers moved their flows to the other MUXes (`staged`), the running configuration forwarding
/// them meanwhile. `source` names where it came from in the log.
fn offer(
    new: Incoming,
    running: &LoadBalancer,
    speaker: Option<&mut crate::bgp::Speaker>,
    staged: &mut Option<(Incoming, Instant)>,
    source: &str,
) -> Option<Incoming> {
    let leaving = leaving_vips(running, &new.lb);
    match speaker {
        Some(s) if !leaving.is_empty() && !s.drain().is_zero() => {
            s.withhold(leaving);
            eprintln!("lb-dpdk: {source}: in force in {} s, once the routers moved away", s.drain().as_secs());
            *staged = Some((new, Instant::now() + s.drain()));
            None
        }
        _ => {
            *staged = None;
            Some(new)
        }
    }
}

/// Hands the speaker the health a MUX in etcd mode applies: a VIP it has not announced waits
/// until the workers apply it (see `bgp::probes_have_spoken`).
fn tell_speaker(speaker: Option<&mut crate::bgp::Speaker>, lb: &LoadBalancer, etcd: &EtcdNode) {
    if let Some(s) = speaker {
        for ((pool, member), up) in etcd.applied_by_member() {
            s.probe_result(lb, pool, member, up);
        }
    }
}

/// A MUX with a state directory: its record of the pools it ran, and the second chances it
/// recalls from it (see crate::history).
/// `lb`: the configuration the workers were last told to run (in etcd mode the first one read,
/// not the empty one the node starts with).
fn start_history(cfg: &NodeConfig, lb: &LoadBalancer, workers: &[WorkerHandle]) -> Option<History> {
    let dir = cfg.state_directory.as_ref().filter(|_| cfg.kind() == Role::Mux)?;
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("lb-dpdk: stateDirectory {}: {e}", dir.display());
        return None;
    }
    let (history, recalled) = History::start(dir, lb);
    if let Some(r) = recalled {
        eprintln!("lb-dpdk: second chances from the pools run until {} s ago", r.age);
        let earlier = Arc::new(r.earlier);
        for w in workers {
            let _ = w.tx.send(Control::Recall(earlier.clone(), r.age));
        }
    }
    Some(history)
}

/// VIPs `old` serves and `new` does not: a reload withdraws them before it takes effect.
fn leaving_vips(old: &LoadBalancer, new: &LoadBalancer) -> BTreeSet<IpAddr> {
    let kept = crate::bgp::vips_to_announce(new, |_, _| true);
    crate::bgp::vips_to_announce(old, |_, _| true).difference(&kept).copied().collect()
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
    if new.kind() != running.kind() {
        return Err("the role cannot change at run time".into());
    }
    let changed = node_changes(running, &new);
    if !changed.is_empty() {
        return Err(format!("node settings changed ({}): they take a restart", changed.join(", ")));
    }
    lb_core::paths::Node::check(new.role.clone(), new.lb.clone()).map_err(|e| e.to_string())?;
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
    field("interfaces", a.interfaces != b.interfaces);
    field("bgp", a.bgp != b.bgp);
    field("etcd", a.etcd != b.etcd);
    field("stateDirectory", a.state_directory != b.state_directory);
    match (&a.role, &b.role) {
        (NodeRole::Mux(a), NodeRole::Mux(b)) => {
            field("mac", a.base.mac != b.base.mac);
            field("gatewayMac", a.base.gateway_mac != b.base.gateway_mac);
            field("underlay", a.base.underlay != b.base.underlay);
            field("ttl", a.base.ttl != b.base.ttl);
            field("mtu", a.base.mtu != b.base.mtu);
            field("hashSeed", a.base.hash_seed != b.base.hash_seed);
            field("flowCapacity", a.base.flow_capacity != b.base.flow_capacity);
            field("maglevSize", a.maglev_size != b.maglev_size);
        }
        (NodeRole::Host(a), NodeRole::Host(b)) => {
            field("mac", a.base.mac != b.base.mac);
            field("gatewayMac", a.base.gateway_mac != b.base.gateway_mac);
            field("underlay", a.base.underlay != b.base.underlay);
            field("muxes", a.muxes != b.muxes);
            field("returnPath", a.return_path != b.return_path);
            field("ttl", a.base.ttl != b.base.ttl);
            field("mtu", a.base.mtu != b.base.mtu);
            field("hashSeed", a.base.hash_seed != b.base.hash_seed);
            field("flowCapacity", a.base.flow_capacity != b.base.flow_capacity);
            field("snatQuarantineSeconds", a.snat_quarantine_secs != b.snat_quarantine_secs);
            field("resetOnSnatExhaustion", a.reset_on_snat_exhaustion != b.reset_on_snat_exhaustion);
            field("mssClamp", a.mss_clamp != b.mss_clamp);
        }
        _ => field("role", true),
    }
    changed
}

/// Hands every probe result received so far to every worker, and to the speaker; in etcd mode
/// (a host agent probing its own backends) to the node's verdicts instead.
fn forward_probes(
    rx: &Receiver<crate::probe::ProbeResult>,
    workers: &[WorkerHandle],
    (lb, generation): (&LoadBalancer, u64),
    mut speaker: Option<&mut crate::bgp::Speaker>,
    mut etcd: Option<&mut EtcdNode>,
) {
    for r in rx.try_iter() {
        if let Some(e) = etcd.as_deref_mut() {
            if r.generation == generation {
                e.probe_result(lb, &r);
            }
            continue;
        }
        // The speaker holds back a VIP until the probes have spoken on its members; a result of
        // another configuration names members by other positions.
        if let Some(s) = speaker.as_deref_mut().filter(|_| r.generation == generation) {
            s.probe_result(lb, r.pool, r.member, r.success);
        }
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
    writeln!(
        out,
        "flows {}, snat ports in use {}, tcp resets {}, icmp too big {}",
        s.flows, s.snat_ports, s.resets, s.too_big
    )?;
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
