//! Health probes, off the packet path: one thread per probed backend, each running the rule's probe
//! at `intervalInSeconds` and sending every result to the control plane, which hands it to the
//! workers' health state machines (`numberOfProbes` consecutive results flip a backend).

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lb_core::config::{LoadBalancer, Probe, ProbeProtocol};

/// One probe's outcome for pool member (`pool`, `member`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    /// Pool index.
    pub pool: usize,
    /// Member index.
    pub member: usize,
    /// Whether the probe succeeded.
    pub success: bool,
}

/// The running probers of one configuration.
pub struct Probers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The (pool, probe) pairs a configuration asks for: each pool is probed by the first rule's probe.
pub fn probe_plan(lb: &LoadBalancer) -> Vec<(usize, Probe)> {
    let mut plan: Vec<(usize, Probe)> = Vec::new();
    for r in &lb.rules {
        if let Some(p) = r.probe {
            if !plan.iter().any(|(pool, _)| *pool == r.pool) {
                plan.push((r.pool, lb.probes[p].clone()));
            }
        }
    }
    plan
}

impl Probers {
    /// Starts probing every member of every probed pool.
    pub fn start(lb: &LoadBalancer, tx: Sender<ProbeResult>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (pool, probe) in probe_plan(lb) {
            for (member, b) in lb.pools[pool].backends.iter().enumerate() {
                let target = SocketAddr::new(b.address, probe.port);
                let (tx, stop, probe) = (tx.clone(), stop.clone(), probe.clone());
                let t = std::thread::Builder::new().name(format!("lb-probe-{pool}-{member}")).spawn(move || {
                    let interval = Duration::from_secs(u64::from(probe.interval_secs.max(1)));
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let success = run_probe(&probe, target, interval);
                        if tx.send(ProbeResult { pool, member, success }).is_err() {
                            return;
                        }
                        while started.elapsed() < interval && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                });
                if let Ok(t) = t {
                    threads.push(t);
                }
            }
        }
        Probers { stop, threads }
    }

    /// Stops every prober and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One probe of `target`, answered within `timeout`.
pub fn run_probe(probe: &Probe, target: SocketAddr, timeout: Duration) -> bool {
    match probe.protocol {
        ProbeProtocol::Tcp => TcpStream::connect_timeout(&target, timeout).is_ok(),
        // HTTP(S) probes come with their own change; until then a TCP handshake stands in.
        ProbeProtocol::Http | ProbeProtocol::Https => TcpStream::connect_timeout(&target, timeout).is_ok(),
    }
}
