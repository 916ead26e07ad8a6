//! Data path availability, as Azure Load Balancer measures it ("Data Path Availability"): a
//! synthetic probe of each frontend of a TCP load-balancing rule, sent as a client's connection
//! goes, through the load balancer to a backend and back.
//!
//! The probe is a TCP handshake from this node's own kernel to the VIP and the rule's frontend
//! port: the routers send it to a MUX (this one or another), the MUX tunnels it to a host, the
//! host agent delivers it to a backend, whose answer comes back as any client's does. So it needs
//! what a client needs: the node's kernel routes the VIPs towards the routers (a default route
//! through them does), and the answers reach the node's kernel (on a live port, frames not
//! addressed to a VIP go to the kernel). A handshake that completes within [`PROBE_TIMEOUT`] is a success; the
//! connection is then closed without data. UDP rules have no handshake to check and are not
//! probed.
//!
//! Availability is the share of the last [`WINDOW`] probes of a frontend that succeeded, in
//! percent (Azure averages the same kind of probe over its metric's time grain).
//!
//! The node's kernel must not own the VIPs (it would answer the handshake itself, and the
//! measurement would say nothing of the data path) and must route them towards the routers in
//! front of the MUXes. On a MUX the handshake leaves through the kernel, and the backend's answer
//! comes back through the data path like any client's.
//!
//! The probes of a round go out together, [`PARALLEL`] at a time, so that unreachable frontends
//! cost a round one [`PROBE_TIMEOUT`] each batch, not each; the prober never blocks its caller:
//! [`DataPathProber::stop`] returns at once and leaves the probes in flight to finish on their
//! own.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_core::config::{LoadBalancer, Protocol};

/// The longest a handshake may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many of the latest probes a frontend's availability is computed over.
pub const WINDOW: usize = 12;
/// Handshakes in flight at once.
pub const PARALLEL: usize = 16;

/// A frontend as the metric names it: (VIP, protocol name, port).
pub type Frontend = (IpAddr, &'static str, u16);

/// One frontend's latest probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Availability {
    /// The latest outcomes, oldest first, at most [`WINDOW`].
    recent: VecDeque<bool>,
    /// Probes sent and answered since the frontend was first probed (a reload that keeps the
    /// frontend keeps them).
    pub probes: u64,
    pub successes: u64,
}

impl Availability {
    /// Adds one probe's outcome.
    pub fn record(&mut self, ok: bool) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(ok);
        self.probes += 1;
        self.successes += u64::from(ok);
    }

    /// The share of the latest probes that succeeded, in percent (None before the first).
    pub fn percent(&self) -> Option<f64> {
        let n = self.recent.len();
        (n > 0).then(|| 100.0 * self.recent.iter().filter(|&&ok| ok).count() as f64 / n as f64)
    }
}

/// The frontends of `lb` a data path probe checks: each (VIP, TCP port) of a load-balancing rule,
/// once (HA-ports rules have no one port to probe).
pub fn frontends(lb: &LoadBalancer) -> Vec<Frontend> {
    let mut out: Vec<Frontend> = lb
        .rules
        .iter()
        .filter(|r| r.protocol == Protocol::Tcp && r.frontend_port != 0)
        .filter_map(|r| lb.frontends.get(r.frontend).map(|f| (f.address, "tcp", r.frontend_port)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A thread probing every frontend of one configuration every `interval`.
pub struct DataPathProber {
    stop: Arc<AtomicBool>,
    targets: Arc<[Frontend]>,
    results: Arc<Mutex<BTreeMap<Frontend, Availability>>>,
}

impl DataPathProber {
    /// Starts probing `lb`'s frontends; `kept` carries the results of a previous prober (a reload
    /// keeps the history of the frontends that stay).
    pub fn start(lb: &LoadBalancer, interval: Duration, kept: BTreeMap<Frontend, Availability>) -> Self {
        let targets: Arc<[Frontend]> = frontends(lb).into();
        let results: BTreeMap<Frontend, Availability> =
            targets.iter().map(|f| (*f, kept.get(f).cloned().unwrap_or_default())).collect();
        let results = Arc::new(Mutex::new(results));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, t) = (stop.clone(), results.clone(), targets.clone());
        // The thread is detached: `stop` only raises the flag, and the thread ends after the
        // handshakes in flight (at most PROBE_TIMEOUT later).
        if let Err(e) = std::thread::Builder::new()
            .name("lb-datapath".into())
            .spawn(move || probe_loop(&t, interval.max(Duration::from_millis(100)), &s, &r))
        {
            eprintln!("lb-dpdk: data path probes: {e}");
        }
        DataPathProber { stop, targets, results }
    }

    /// The frontends it probes.
    pub fn targets(&self) -> &[Frontend] {
        &self.targets
    }

    /// Each frontend's availability so far.
    pub fn snapshot(&self) -> BTreeMap<Frontend, Availability> {
        self.results.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Stops probing and returns the results, for the next prober. Returns at once: a result
    /// that comes in later goes to this prober's table, which nobody reads any more.
    pub fn stop(self) -> BTreeMap<Frontend, Availability> {
        self.stop.store(true, Ordering::Relaxed);
        self.snapshot()
    }
}

impl Drop for DataPathProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn probe_loop(
    targets: &[Frontend],
    interval: Duration,
    stop: &AtomicBool,
    results: &Mutex<BTreeMap<Frontend, Availability>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL.min(targets.len()) {
                scope.spawn(|| {
                    while let Some(&(vip, proto, port)) = targets.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let ok = TcpStream::connect_timeout(&SocketAddr::new(vip, port), PROBE_TIMEOUT).is_ok();
                        if let Ok(mut r) = results.lock() {
                            r.entry((vip, proto, port)).or_default().record(ok);
                        }
                    }
                });
            }
        });
        // Sleeps in short steps so that a stop or a reload does not wait a whole interval.
        while round.elapsed() < interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_fixtures::web_app;

    #[test]
    fn tcp_rules_frontends_once_each() {
        let lb = web_app();
        let f = frontends(&lb);
        assert!(!f.is_empty());
        let tcp_rules = lb.rules.iter().filter(|r| r.protocol == Protocol::Tcp && r.frontend_port != 0).count();
        assert!(f.len() <= tcp_rules);
        let mut sorted = f.clone();
        sorted.dedup();
        assert_eq!(sorted, f, "each frontend once");
    }

    #[test]
    fn availability_is_the_share_of_the_latest_window() {
        let mut a = Availability::default();
        assert_eq!(a.percent(), None);
        for _ in 0..WINDOW {
            a.record(false);
        }
        assert_eq!(a.percent(), Some(0.0));
        for _ in 0..WINDOW / 2 {
            a.record(true);
        }
        assert_eq!(a.percent(), Some(50.0));
        assert_eq!((a.probes, a.successes), (WINDOW as u64 * 3 / 2, WINDOW as u64 / 2));
    }

    /// Stopping returns at once, whatever the handshakes in flight wait for.
    #[test]
    fn stop_does_not_wait_for_the_probes_in_flight() {
        let mut lb = web_app();
        // TEST-NET-1 (RFC 5737): nothing answers there; a handshake waits out its timeout or
        // fails at once, as the routes have it.
        lb.frontends[0].address = "192.0.2.1".parse().unwrap();
        let p = DataPathProber::start(&lb, Duration::from_secs(1), BTreeMap::new());
        assert!(!p.targets().is_empty());
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let kept = p.stop();
        assert!(t.elapsed() < Duration::from_millis(100), "stop took {:?}", t.elapsed());
        assert_eq!(kept.len(), frontends(&lb).len());
    }

    /// A frontend nobody listens on is unavailable; one a local listener answers is available.
    #[test]
    fn probes_count_completed_handshakes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut lb = web_app();
        lb.frontends.truncate(1);
        lb.frontends[0].address = "127.0.0.1".parse().unwrap();
        lb.rules.retain(|r| r.frontend == 0 && r.protocol == Protocol::Tcp);
        lb.rules.truncate(1);
        lb.rules[0].frontend_port = port;
        lb.nat_rules.clear();
        lb.nat_pools.clear();
        lb.outbound_rules.clear();
        let p = DataPathProber::start(&lb, Duration::from_millis(20), BTreeMap::new());
        let end = Instant::now() + Duration::from_secs(5);
        while p.snapshot().values().all(|a| a.probes < 3) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let kept = p.stop();
        let a = &kept[&("127.0.0.1".parse().unwrap(), "tcp", port)];
        assert!(a.probes >= 3 && a.successes == a.probes, "{a:?}");
        drop(listener);
    }
}
