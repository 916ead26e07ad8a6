//! Health probes, off the packet path: one thread per probed backend and probe, each running the
//! probe at `intervalInSeconds` and sending every result to the control plane, which hands it to
//! the workers' health state machines (`numberOfProbes` consecutive failures take a backend out,
//! 2 consecutive successes bring it back), for the rules that use that probe: each load-balancing
//! rule is steered by its own probe.
//!
//! What a probe checks, as Azure's do:
//! - `Tcp`: the TCP handshake with the backend's address and the probe's port completes.
//! - `Http`: `GET requestPath` on a new connection is answered with status 200. Any other status
//!   (redirects are not followed), a refused connection or no answer is a failure.
//! - `Https`: the same over TLS (rustls with the ring provider, through ureq). As Azure's, the probe
//!   does not validate the backend's certificate: any certificate, self-signed or expired, for any
//!   name, is accepted, and so is the server's signature with it (ureq's `disable_verification`).
//!   The TLS handshake itself (version and cipher negotiation, key exchange, Finished messages)
//!   runs for real, so a backend that does not speak TLS fails.
//!
//! Every probe must be answered within [`probe_timeout`]: the probe's interval, at most 5 s (Azure
//! waits up to the interval, at most 30 s; 5 s keeps a reload or a stop, which wait for the probes in
//! flight, short, and a backend that takes 5 s to answer a health check is not healthy). HTTP(S)
//! probes go straight to the backend: proxy settings of the environment are ignored.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lb_core::config::{LoadBalancer, Probe, ProbeProtocol};

/// The longest a probe waits for its answer.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One outcome of probe `probe` for pool member (`pool`, `member`), of the configuration that
/// the control plane numbered `generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    /// The configuration's number (see [`Probers::start`]).
    pub generation: u64,
    /// Pool index.
    pub pool: usize,
    /// Probe index.
    pub probe: usize,
    /// Member index.
    pub member: usize,
    /// Whether the probe succeeded.
    pub success: bool,
}

/// The running probers of one configuration.
pub struct Probers {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<()>>,
}

/// Tells the probers to stop, waking those that wait for their next probe (they sleep a whole
/// interval: a thousand backends probed every 5 s wake the control cores 200 times a second, not
/// 50,000 times as 20 ms polls did).
#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopSignal {
    fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits until `deadline` or the signal; returns whether it was given.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if *stopped || left.is_zero() {
                return *stopped;
            }
            stopped = self.wake.wait_timeout(stopped, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// The (pool, probe index) pairs a configuration asks for: every pool with every probe its
/// load-balancing rules name, once.
pub fn probe_plan(lb: &LoadBalancer) -> Vec<(usize, usize)> {
    let mut plan: Vec<(usize, usize)> = Vec::new();
    for r in &lb.rules {
        if let Some(p) = r.probe {
            if !plan.contains(&(r.pool, p)) {
                plan.push((r.pool, p));
            }
        }
    }
    plan
}

/// The probe's interval (at least 1 s).
pub fn probe_interval(probe: &Probe) -> Duration {
    Duration::from_secs(u64::from(probe.interval_secs.max(1)))
}

/// How long one probe waits for its answer: the interval, at most [`MAX_PROBE_TIMEOUT`].
pub fn probe_timeout(probe: &Probe) -> Duration {
    probe_interval(probe).min(MAX_PROBE_TIMEOUT)
}

impl Probers {
    /// Starts probing every member of every probed pool with each of its probes; every result is
    /// tagged with `generation`, the control plane's number for `lb`, so that a worker still on
    /// another configuration (one that refused a reload) can tell results that are not about its
    /// members. With `host`, only the members that run on that host are probed (a host agent in
    /// etcd mode probes its own backends).
    pub fn start(lb: &LoadBalancer, generation: u64, tx: Sender<ProbeResult>, host: Option<IpAddr>) -> Self {
        let stop = Arc::new(StopSignal::default());
        let mut threads = Vec::new();
        for (pool, pi) in probe_plan(lb) {
            let (Some(probe), Some(p)) = (lb.probes.get(pi), lb.pools.get(pool)) else { continue };
            for (member, b) in p.backends.iter().enumerate().filter(|(_, b)| host.is_none_or(|h| h == b.host)) {
                let target = SocketAddr::new(b.address, probe.port);
                let (tx, stop, probe) = (tx.clone(), stop.clone(), probe.clone());
                let label = format!("{} {} ({target}, {:?} probe {})", p.name, b.name, probe.protocol, probe.name);
                let thread_label = label.clone();
                let spawned =
                    std::thread::Builder::new().name(format!("lb-probe-{pool}-{pi}-{member}")).spawn(move || {
                        let label = thread_label;
                        let (interval, timeout) = (probe_interval(&probe), probe_timeout(&probe));
                        // The last outcome, to log changes only.
                        let mut last: Option<Result<(), String>> = None;
                        loop {
                            let started = Instant::now();
                            let outcome = check(&probe, target, timeout);
                            let success = outcome.is_ok();
                            if last.as_ref() != Some(&outcome) {
                                match &outcome {
                                    Ok(()) => eprintln!("lb-dpdk: probe of {label}: answered"),
                                    Err(e) => eprintln!("lb-dpdk: probe of {label}: failed: {e}"),
                                }
                                last = Some(outcome);
                            }
                            let result = ProbeResult { generation, pool, probe: pi, member, success };
                            if stop.is_set() || tx.send(result).is_err() || stop.wait_until(started + interval) {
                                return;
                            }
                        }
                    });
                match spawned {
                    Ok(t) => threads.push(t),
                    // The member then keeps the health it has: say so, it is not being watched.
                    Err(e) => eprintln!("lb-dpdk: probe of {label}: cannot start its thread: {e}"),
                }
            }
        }
        Probers { stop, threads }
    }

    /// Stops every prober and waits for them (at most one probe timeout: they stop together).
    pub fn stop(self) {
        self.stop.set();
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Stops every prober without waiting for the probes in flight: each ends once its probe is
    /// answered or times out, and sends nothing more.
    pub fn stop_detached(self) {
        self.stop.set();
    }
}

/// One probe of `target`, answered within `timeout`: whether it succeeded (the probers themselves
/// call [`check`], to log why a probe fails).
#[allow(dead_code)]
pub fn run_probe(probe: &Probe, target: SocketAddr, timeout: Duration) -> bool {
    check(probe, target, timeout).is_ok()
}

/// One probe of `target`, answered within `timeout`; on failure, why.
pub fn check(probe: &Probe, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    match probe.protocol {
        ProbeProtocol::Tcp => TcpStream::connect_timeout(&target, timeout).map(drop).map_err(|e| e.to_string()),
        ProbeProtocol::Http => http_get(false, probe, target, timeout),
        ProbeProtocol::Https => http_get(true, probe, target, timeout),
    }
}

/// `GET requestPath` over a new connection (TLS without certificate checks for `tls`): Ok on 200.
fn http_get(tls: bool, probe: &Probe, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let path = probe.request_path.as_deref().unwrap_or("/");
    let url = format!("{}://{target}{path}", if tls { "https" } else { "http" });
    let tls_config =
        ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls).disable_verification(true).build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .tls_config(tls_config)
        .build()
        .into();
    let response = agent.get(&url).header("User-Agent", "lb-dpdk health probe").call().map_err(|e| e.to_string())?;
    match response.status().as_u16() {
        200 => Ok(()),
        other => Err(format!("status {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::sync::mpsc;

    /// Generous for a loaded 2-core machine: successes come in milliseconds, and the tests that
    /// wait for a timeout use their own.
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn probe(protocol: ProbeProtocol, port: u16) -> Probe {
        Probe {
            name: "p".into(),
            protocol,
            port,
            request_path: (protocol != ProbeProtocol::Tcp).then(|| "/health".into()),
            interval_secs: 1,
            number_of_probes: 2,
        }
    }

    /// A listener on a free loopback port.
    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    /// Reads a request head (up to the blank line); returns its first line. Stops at the first byte
    /// if it cannot start a request line (a TLS hello), as real servers answer 400 at once.
    fn read_request(s: &mut impl Read) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
            if !head[0].is_ascii_uppercase() {
                return String::new();
            }
        }
        String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned()
    }

    fn respond(s: &mut impl Write, status: u16) {
        let body = "ok\n";
        let _ = write!(
            s,
            "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.flush();
    }

    /// An HTTP server answering every request with `status`; the request lines it saw go to the channel.
    fn http_server(status: u16) -> (SocketAddr, mpsc::Receiver<String>) {
        let (l, a) = listener();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let line = read_request(&mut s);
                respond(&mut s, if line.starts_with("GET ") { status } else { 400 });
                let _ = s.shutdown(Shutdown::Write);
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (a, rx)
    }

    #[test]
    fn tcp_probe_succeeds_on_a_listener_and_fails_on_a_closed_port() {
        let (l, a) = listener();
        assert!(run_probe(&probe(ProbeProtocol::Tcp, a.port()), a, TIMEOUT));
        drop(l);
        assert_eq!(
            check(&probe(ProbeProtocol::Tcp, a.port()), a, TIMEOUT).map_err(|_| "failed"),
            Err("failed"),
            "nothing listens on {a} any more"
        );
    }

    #[test]
    fn http_probe_needs_status_200() {
        let (ok, requests) = http_server(200);
        assert_eq!(check(&probe(ProbeProtocol::Http, ok.port()), ok, TIMEOUT), Ok(()));
        let line = requests.recv_timeout(TIMEOUT).unwrap();
        assert_eq!(line, "GET /health HTTP/1.1", "the probe asks for requestPath");

        for status in [500, 404, 301, 204] {
            let (bad, _requests) = http_server(status);
            let r = check(&probe(ProbeProtocol::Http, bad.port()), bad, TIMEOUT);
            assert_eq!(r, Err(format!("status {status}")), "a {status} answer is a failure");
        }
    }

    #[test]
    fn http_probe_fails_on_a_closed_port() {
        let (l, a) = listener();
        drop(l);
        assert!(!run_probe(&probe(ProbeProtocol::Http, a.port()), a, TIMEOUT));
    }

    #[test]
    fn http_probe_times_out_on_a_server_that_never_answers() {
        let (l, a) = listener();
        // Accepts (the kernel completes handshakes on its own) and reads, but never answers.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = read_request(&mut s);
            let _ = done_rx.recv_timeout(Duration::from_secs(60));
        });
        let timeout = Duration::from_millis(500);
        let started = Instant::now();
        let r = check(&probe(ProbeProtocol::Http, a.port()), a, timeout);
        let took = started.elapsed();
        assert!(r.is_err(), "no answer is a failure: {r:?}");
        assert!(took >= timeout, "gave up after {took:?}, before the timeout");
        assert!(took < timeout + Duration::from_secs(20), "took {took:?}: the timeout is not applied");
        drop(done_tx);
        server.join().unwrap();
    }

    /// A TLS server with a self-signed certificate made now, answering every request with 200.
    fn https_server() -> SocketAddr {
        let cert = rcgen::generate_simple_self_signed(vec!["backend.invalid".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let config = Arc::new(config);
        let (l, a) = listener();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let line = read_request(&mut tls);
                if line.starts_with("GET /health ") {
                    respond(&mut tls, 200);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        a
    }

    #[test]
    fn https_probe_accepts_a_self_signed_certificate() {
        let a = https_server();
        assert_eq!(check(&probe(ProbeProtocol::Https, a.port()), a, TIMEOUT), Ok(()));
        // The same server spoken to in plain HTTP does not answer 200: the probe really is TLS.
        assert!(!run_probe(&probe(ProbeProtocol::Http, a.port()), a, TIMEOUT));
    }

    #[test]
    fn https_probe_fails_on_a_plain_http_server() {
        let (a, _requests) = http_server(200);
        let started = Instant::now();
        let r = check(&probe(ProbeProtocol::Https, a.port()), a, Duration::from_secs(60));
        assert!(r.is_err(), "a plain HTTP answer to a TLS hello is a failure");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(30), "failed after {took:?}: by the handshake, not the timeout");
        // ...while the server itself is fine.
        assert_eq!(check(&probe(ProbeProtocol::Http, a.port()), a, TIMEOUT), Ok(()));
    }

    #[test]
    fn the_timeout_is_the_interval_up_to_5_seconds() {
        let mut p = probe(ProbeProtocol::Http, 80);
        assert_eq!(probe_timeout(&p), Duration::from_secs(1));
        p.interval_secs = 0;
        assert_eq!(probe_timeout(&p), Duration::from_secs(1));
        p.interval_secs = 15;
        assert_eq!(probe_timeout(&p), Duration::from_secs(5));
        assert_eq!(probe_interval(&p), Duration::from_secs(15));
    }

    #[test]
    fn probers_waiting_for_their_next_probe_stop_at_once() {
        let (up, _requests) = http_server(200);
        let mut lb = lb_core::config::json::from_json(include_str!("../../examples/demo-lb.json")).unwrap();
        for p in &mut lb.probes {
            (p.protocol, p.port, p.interval_secs) = (ProbeProtocol::Tcp, up.port(), 300);
        }
        for b in lb.pools.iter_mut().flat_map(|p| p.backends.iter_mut()) {
            b.address = "127.0.0.1".parse().unwrap();
        }
        let (tx, rx) = mpsc::channel();
        let probers = Probers::start(&lb, 0, tx, None);
        assert!(rx.recv_timeout(Duration::from_secs(30)).is_ok_and(|r| r.success));
        // Every prober has probed once or is about to; then each waits 300 s for its next.
        std::thread::sleep(Duration::from_millis(500));
        let stopping = Instant::now();
        probers.stop();
        assert!(stopping.elapsed() < Duration::from_secs(3), "stopped in {:?}", stopping.elapsed());
    }

    #[test]
    fn probers_report_every_member_of_every_probed_pool() {
        let (up, _requests) = http_server(200);
        let mut lb = lb_core::config::json::from_json(include_str!("../../examples/demo-lb.json")).unwrap();
        // Every member on loopback, every probe an HTTP probe of the test server.
        for p in &mut lb.probes {
            p.protocol = ProbeProtocol::Http;
            p.port = up.port();
            p.request_path = Some("/health".into());
        }
        for b in lb.pools.iter_mut().flat_map(|p| p.backends.iter_mut()) {
            b.address = "127.0.0.1".parse().unwrap();
        }
        let mut expected = std::collections::BTreeSet::new();
        for (pool, probe) in probe_plan(&lb) {
            expected.extend((0..lb.pools[pool].backends.len()).map(|m| (pool, probe, m)));
        }
        assert!(expected.len() >= 2, "the demo probes pools: {expected:?}");
        let (tx, rx) = mpsc::channel();
        let probers = Probers::start(&lb, 7, tx, None);
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen != expected && Instant::now() < deadline {
            if let Ok(r) = rx.recv_timeout(Duration::from_secs(1)) {
                assert!(r.success && r.generation == 7, "{r:?}");
                seen.insert((r.pool, r.probe, r.member));
            }
        }
        let stopping = Instant::now();
        probers.stop();
        assert!(stopping.elapsed() < Duration::from_secs(30), "stop waits for one probe at most");
        assert_eq!(seen, expected, "every member of every probed pool reported");
    }

    #[test]
    fn a_host_agent_probes_its_own_backends_only() {
        let (up, _requests) = http_server(200);
        let mut lb = lb_core::config::json::from_json(include_str!("../../examples/demo-lb.json")).unwrap();
        for p in &mut lb.probes {
            (p.protocol, p.port) = (ProbeProtocol::Tcp, up.port());
        }
        for b in lb.pools.iter_mut().flat_map(|p| p.backends.iter_mut()) {
            b.address = "127.0.0.1".parse().unwrap();
        }
        let (pool, _) = probe_plan(&lb)[0];
        let host = lb.pools[pool].backends[0].host;
        let mut expected = std::collections::BTreeSet::new();
        let mut others = 0;
        for (pool, probe) in probe_plan(&lb) {
            for (m, b) in lb.pools[pool].backends.iter().enumerate() {
                if b.host == host {
                    expected.insert((pool, probe, m));
                } else {
                    others += 1;
                }
            }
        }
        assert!(others > 0, "the demo has probed members on other hosts");
        let (tx, rx) = mpsc::channel();
        let probers = Probers::start(&lb, 3, tx, Some(host));
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen != expected && Instant::now() < deadline {
            if let Ok(r) = rx.recv_timeout(Duration::from_secs(1)) {
                seen.insert((r.pool, r.probe, r.member));
            }
        }
        // Anything else would have been probed at once, with the others.
        std::thread::sleep(Duration::from_millis(300));
        seen.extend(rx.try_iter().map(|r| (r.pool, r.probe, r.member)));
        probers.stop_detached();
        assert_eq!(seen, expected, "the members on {host} only");
    }
}
