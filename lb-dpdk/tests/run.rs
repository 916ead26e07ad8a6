//! `lb-dpdk run` end to end: the real binary, each test in a process and a temporary folder of its
//! own. Captures come from lb-testkit's independent generator (or are built here with etherparse),
//! and what the program wrote is read back with etherparse, not with lb-core.
//!
//! - The MUX on a generated capture: every frame out is VxLAN to a host of the right pool, carrying
//!   an input frame byte for byte; the final report accounts for every frame.
//! - A host agent on what the MUX sent plus its backends' responses: delivery DNATed to the local
//!   backends, responses back to the MUX from the VIP.
//! - Health: TCP and HTTP probes of two backends on loopback addresses take one out and bring it
//!   back, and new flows (fed while the program runs, `--pcap-follow`) move with them.
//! - SIGHUP reloads a changed configuration and refuses a broken one; SIGTERM stops cleanly.
//! - `/metrics` is Prometheus text on the loopback address asked for.
//!
//! Waits poll for a condition with generous deadlines: nothing depends on how fast a loaded machine
//! is. Health probes cannot run faster than Azure's minimum interval (5 s), so the health tests
//! take some 30 s each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etherparse::{LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use lb_core::config::LoadBalancer;
use lb_testkit::{GeneratedFrame, MixConfig, TrafficGenerator};

/// The longest any one condition is waited for (a loaded 2-core machine, debug build).
const WAIT: Duration = Duration::from_secs(120);
/// The MUX of examples/demo-mux.node.json.
const MUX_UNDERLAY: Ipv4Addr = Ipv4Addr::new(172, 16, 5, 10);
const MUX_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x05, 0x0a];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The host agent of the host test.
const HOST_UNDERLAY: Ipv4Addr = Ipv4Addr::new(172, 16, 10, 20);
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x14];
const VXLAN_PORT: u16 = 4789;

// --- helpers: folders, the program, metrics, reports ------------------------------------------------

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("lb-dpdk-run-{test}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples")
}

fn demo_lb() -> LoadBalancer {
    let text = std::fs::read_to_string(examples().join("demo-lb.json")).unwrap();
    lb_core::config::json::from_json(&text).unwrap()
}

/// A running `lb-dpdk`, its stdout and stderr collected as they come; killed if still running when
/// dropped (a failed test).
struct Program {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

fn collect(from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    })
}

impl Program {
    fn start(args: &[OsString]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lb-dpdk"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lb-dpdk");
        let (stdout, stderr) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(String::new())));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Program { child, stdout, stderr, readers, exited: None }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }

    /// Waits until stderr has a line containing every one of `parts`, or fails the test.
    fn wait_stderr(&mut self, parts: &[&str]) -> String {
        let found = wait_for(&format!("a stderr line with {parts:?}"), || {
            self.stderr().lines().find(|l| parts.iter().all(|p| l.contains(p))).map(str::to_owned)
        });
        match found {
            Some(l) => l,
            None => {
                panic!("no stderr line with {parts:?}; exited: {:?}\nstderr:\n{}", self.child.try_wait(), self.stderr())
            }
        }
    }

    /// Waits for the program to exit; returns its status, stdout and stderr.
    fn wait(&mut self) -> (ExitStatus, String, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > WAIT {
                let _ = self.child.kill();
                panic!("lb-dpdk did not exit within {WAIT:?}\nstderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.exited = Some(status);
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        (status, self.stdout.lock().unwrap().clone(), self.stderr())
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` every 100 ms until it returns something, for at most [`WAIT`]; None if it never did.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if started.elapsed() > WAIT {
            eprintln!("gave up waiting for {what} after {WAIT:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}

/// A port nothing listens on right now (the kernel's pick, released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the program with `--metrics` on a free loopback port and returns it once it serves there
/// (on another port if that one was taken in the meantime).
/// Starts `run` on node file `config` over `frames` (written to `dir`/in.pcap, sent to
/// `dir`/out.pcap) with the options `extra` and the metrics page on; returns the program, the
/// metrics address and the input and output paths.
fn start_pcap_with_metrics(
    dir: &TempDir,
    config: &Path,
    frames: &[Vec<u8>],
    extra: &[&str],
) -> (Program, SocketAddr, PathBuf, PathBuf) {
    let (input, output) = (dir.join("in.pcap"), dir.join("out.pcap"));
    write_pcap(&input, frames);
    let mut args = os(&[&"run", &"--config", &config, &"--pcap-in", &input, &"--pcap-out", &output]);
    args.extend(extra.iter().map(OsString::from));
    let (p, maddr) = start_with_metrics(&args);
    (p, maddr, input, output)
}

fn start_with_metrics(args: &[OsString]) -> (Program, SocketAddr) {
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut all = args.to_vec();
        all.extend(["--metrics".into(), addr.to_string().into()]);
        let mut p = Program::start(&all);
        let serving = format!("metrics on http://{addr}/metrics");
        let up = wait_for(&serving, || {
            if p.stderr().contains(&serving) {
                return Some(true);
            }
            p.child.try_wait().ok().flatten().map(|_| false)
        });
        match up {
            Some(true) => return (p, addr),
            _ if p.stderr().contains(&format!("metrics on {addr}: ")) => continue,
            _ => panic!("lb-dpdk did not serve its metrics; stderr:\n{}", p.stderr()),
        }
    }
    panic!("no free loopback port for the metrics");
}

/// A minimal `GET path` over HTTP/1.1: (status, head, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_owned(), body.to_owned()))
}

/// The samples of `/metrics` (`name{labels}` → value); None until the page has been rendered.
fn metrics(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let (status, _, body) = http_get(addr, "/metrics")?;
    if status != 200 || body.is_empty() {
        return None;
    }
    let samples: BTreeMap<String, f64> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect();
    (!samples.is_empty()).then_some(samples)
}

/// The value of `metric` for the backend named `backend`.
fn backend_sample(m: &BTreeMap<String, f64>, metric: &str, backend: &str) -> Option<f64> {
    let prefix = format!("{metric}{{");
    let label = format!("backend=\"{backend}\"");
    m.iter().find(|(k, _)| k.starts_with(&prefix) && k.contains(&label)).map(|(_, v)| *v)
}

/// Waits until the metrics page satisfies `ok`; returns that page.
fn wait_metrics(
    p: &mut Program,
    addr: SocketAddr,
    what: &str,
    ok: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let mut last = None;
    let got = wait_for(what, || {
        let m = metrics(addr)?;
        let good = ok(&m);
        last = Some(m.clone());
        good.then_some(m)
    });
    match got {
        Some(m) => m,
        None => panic!("metrics never showed {what}; last page: {last:#?}\nstderr:\n{}", p.stderr()),
    }
}

/// One row of the final report's per-backend table.
#[derive(Debug, Clone, PartialEq)]
struct BackendRow {
    pool: String,
    name: String,
    address: IpAddr,
    packets: u64,
}

/// The final report the program prints on stdout.
#[derive(Debug, Default)]
struct Report {
    rx: u64,
    tx: u64,
    tx_failed: u64,
    dropped: u64,
    drops: BTreeMap<String, u64>,
    backends: Vec<BackendRow>,
}

fn report(stdout: &str) -> Report {
    let mut r = Report::default();
    let first = stdout.lines().find(|l| l.starts_with("frames in ")).unwrap_or_else(|| panic!("no report:\n{stdout}"));
    let nums: Vec<u64> =
        first.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    assert_eq!(nums.len(), 4, "{first}");
    (r.rx, r.tx, r.tx_failed, r.dropped) = (nums[0], nums[1], nums[2], nums[3]);
    let mut section = "";
    for l in stdout.lines() {
        match l {
            "drops by reason:" | "per backend:" => section = l,
            _ if !l.starts_with("  ") => section = "",
            _ if section == "drops by reason:" => {
                let mut t = l.split_whitespace();
                r.drops.insert(t.next().unwrap().to_owned(), t.next().unwrap().parse().unwrap());
            }
            _ if section == "per backend:" => {
                let t: Vec<&str> = l.split_whitespace().collect();
                if t[0] == "pool" {
                    continue;
                }
                r.backends.push(BackendRow {
                    pool: t[0].to_owned(),
                    name: t[1].to_owned(),
                    address: t[2].parse().unwrap(),
                    packets: t[3].parse().unwrap(),
                });
            }
            _ => {}
        }
    }
    assert_eq!(r.drops.values().sum::<u64>(), r.dropped, "drops by reason add up:\n{stdout}");
    // Whatever came was processed, which takes time; nothing came, nothing to say.
    let engine_ns: Option<f64> =
        stdout.lines().find_map(|l| l.strip_prefix("engine time ")?.split(' ').next()?.parse().ok());
    match engine_ns {
        Some(ns) => assert!(r.rx > 0 && ns > 0.0 && ns < 1e9, "engine time {ns} ns a frame for {} frames", r.rx),
        None => assert_eq!(r.rx, 0, "no engine time for {} frames:\n{stdout}", r.rx),
    }
    r
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut f = std::fs::File::create(path).unwrap();
    lb_testkit::write_pcap(&mut f, frames).unwrap();
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    lb_testkit::read_pcap(std::fs::File::open(path).unwrap()).unwrap()
}

/// Appends frames to a pcap written by [`write_pcap`] (little-endian, microseconds), one write.
fn append_pcap(path: &Path, frames: &[Vec<u8>], ts_secs: u32) {
    let mut records = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let len = u32::try_from(f.len()).unwrap();
        for v in [ts_secs, u32::try_from(i).unwrap(), len, len] {
            records.extend_from_slice(&v.to_le_bytes());
        }
        records.extend_from_slice(f);
    }
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(&records).unwrap();
}

// --- helpers: frames ----------------------------------------------------------------------------------

/// The outer headers and payload of a VxLAN frame, as etherparse reads them.
#[derive(Debug)]
struct Vxlan<'a> {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    outer_src: IpAddr,
    outer_dst: IpAddr,
    vni: u32,
    inner: &'a [u8],
}

fn vxlan(frame: &[u8]) -> Option<Vxlan<'_>> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else { return None };
    let (outer_src, outer_dst) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        Some(NetSlice::Ipv6(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        _ => return None,
    };
    let Some(TransportSlice::Udp(udp)) = &p.transport else { return None };
    let payload = udp.payload();
    if udp.destination_port() != VXLAN_PORT || payload.len() < 8 || payload[0] & 0x08 == 0 {
        return None;
    }
    Some(Vxlan {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        outer_src,
        outer_dst,
        vni: u32::from_be_bytes([0, payload[4], payload[5], payload[6]]),
        inner: &payload[8..],
    })
}

/// What etherparse finds in an IP frame: addresses, protocol, ports, what follows the L4 header
/// (or the IP payload of a fragment or an ICMP message), and whether the checksums hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ip {
    l3_offset: usize,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    ports: Option<(u16, u16)>,
    tcp_flags: u8,
    data: Vec<u8>,
    fragment: bool,
    checksums_ok: bool,
}

fn ip(frame: &[u8]) -> Option<Ip> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (l3, src, dst, payload, hdr_ok, src16, dst16) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let full = h.to_header();
            let ok = full.calc_header_checksum() == full.header_checksum;
            let (s, d) = (h.source_addr(), h.destination_addr());
            let (s16, d16) = (s.to_ipv6_mapped().octets(), d.to_ipv6_mapped().octets());
            (h.slice().as_ptr() as usize, IpAddr::from(s), IpAddr::from(d), ip.payload(), ok, s16, d16)
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let (s, d) = (h.source_addr(), h.destination_addr());
            (h.slice().as_ptr() as usize, IpAddr::from(s), IpAddr::from(d), ip.payload(), true, s.octets(), d.octets())
        }
        _ => return None,
    };
    let l3_offset = l3 - frame.as_ptr() as usize;
    let v4 = src.is_ipv4();
    let (s4, d4) = ([src16[12], src16[13], src16[14], src16[15]], [dst16[12], dst16[13], dst16[14], dst16[15]]);
    let (ports, tcp_flags, data, l4_ok) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = if v4 { t.calc_checksum_ipv4(s4, d4) } else { t.calc_checksum_ipv6(src16, dst16) };
            let flags = t.slice()[13];
            (
                Some((t.source_port(), t.destination_port())),
                flags,
                t.payload().to_vec(),
                want.ok() == Some(t.checksum()),
            )
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            let want = if v4 {
                h.calc_checksum_ipv4_raw(s4, d4, u.payload())
            } else {
                h.calc_checksum_ipv6_raw(src16, dst16, u.payload())
            };
            let ok = (v4 && u.checksum() == 0) || want.ok() == Some(u.checksum());
            (Some((u.source_port(), u.destination_port())), 0, u.payload().to_vec(), ok)
        }
        Some(TransportSlice::Icmpv6(i)) => {
            // The checksum covers the addresses: leave it out of what a NAT keeps.
            let mut data = payload.payload.to_vec();
            data[2..4].fill(0);
            (None, 0, data, i.is_checksum_valid(src16, dst16))
        }
        _ => (None, 0, payload.payload.to_vec(), true),
    };
    Some(Ip {
        l3_offset,
        src,
        dst,
        protocol: payload.ip_number.0,
        ports,
        tcp_flags,
        data,
        fragment: payload.fragmented,
        checksums_ok: hdr_ok && l4_ok,
    })
}

/// Whether two L4 payloads are the same, but for the L4 checksum a NAT updates when the data is a
/// first fragment (which starts with the L4 header).
fn same_but_checksum(protocol: u8, a: &[u8], b: &[u8]) -> bool {
    let at = match protocol {
        6 => 16,
        17 => 6,
        _ => return a == b,
    };
    a == b || (a.len() == b.len() && a.len() >= at + 2 && a[..at] == b[..at] && a[at + 2..] == b[at + 2..])
}

/// Whether ICMP error `b` is ICMP error `a` (as the MUX carried it) with its quote translated for
/// the backend: the quoted packet, which the VIP sent, names `backend` as its source instead of
/// `vip` (its source port may become the backend port); the type, code, rest of header, the quoted
/// destination and destination port are unchanged. Checksums are checked elsewhere.
fn quote_translated(a: &[u8], b: &[u8], vip: IpAddr, backend: IpAddr) -> bool {
    const Q: usize = 8;
    if a.len() != b.len() || a.len() < Q + 20 || a[..2] != b[..2] || a[4..Q] != b[4..Q] {
        return false;
    }
    let (dst, l4) = match (a[Q] >> 4, vip, backend) {
        (4, IpAddr::V4(v), IpAddr::V4(d)) => {
            let ihl = usize::from(a[Q] & 0x0f) * 4;
            let (s, t) = (Q + 12..Q + 16, Q + 16..Q + 20);
            if a[s.clone()] != v.octets() || b[s.clone()] != d.octets() || a[Q..Q + 10] != b[Q..Q + 10] {
                return false;
            }
            (t, Q + ihl)
        }
        (6, IpAddr::V6(v), IpAddr::V6(d)) if a.len() >= Q + 40 => {
            let (s, t) = (Q + 8..Q + 24, Q + 24..Q + 40);
            if a[s.clone()] != v.octets() || b[s.clone()] != d.octets() || a[Q..Q + 8] != b[Q..Q + 8] {
                return false;
            }
            (t, Q + 40)
        }
        _ => return false,
    };
    a[dst.clone()] == b[dst] && a.len() >= l4 + 4 && a[l4 + 2..l4 + 4] == b[l4 + 2..l4 + 4]
}

/// A client's TCP SYN to `vip`:80.
fn syn(client: Ipv4Addr, port: u16, vip: Ipv4Addr) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0xc1, 0x01], MUX_MAC).ipv4(client.octets(), vip.octets(), 64).tcp(
        port,
        80,
        0x1000_0000,
        65535,
    );
    let mut v = Vec::with_capacity(b.size(0));
    b.syn().write(&mut v, &[]).unwrap();
    v
}

/// `n` new flows (distinct clients) of phase `phase`, to 20.50.60.10:80.
fn new_flows(phase: u8, n: u16) -> Vec<Vec<u8>> {
    let vip = Ipv4Addr::new(20, 50, 60, 10);
    (0..n).map(|i| syn(Ipv4Addr::new(198, 18, phase, (i % 250) as u8 + 1), 20_000 + i, vip)).collect()
}

// --- helpers: configurations -----------------------------------------------------------------------

/// A small load balancer: VIP 20.50.60.10, TCP 80 → pool `Servers` (VNI 7001) of `backends`
/// (name, address, host), probed by `probe` (protocol, port) if any.
fn small_lb(backends: &[(&str, &str, &str)], probe: Option<(&str, u16)>) -> serde_json::Value {
    let members: Vec<serde_json::Value> = backends
        .iter()
        .map(|(name, ip, host)| serde_json::json!({"name": name, "properties": {"ipAddress": ip, "hostAddress": host}}))
        .collect();
    let mut rule = serde_json::json!({
        "name": "Web-Tcp80",
        "properties": {
            "frontendIPConfiguration": {"id": "lb/frontendIPConfigurations/Web"},
            "backendAddressPool": {"id": "lb/backendAddressPools/Servers"},
            "protocol": "Tcp", "frontendPort": 80, "backendPort": 80,
            "idleTimeoutInMinutes": 4, "disableOutboundSnat": true
        }
    });
    let mut probes = Vec::new();
    if let Some((protocol, port)) = probe {
        rule["properties"]["probe"] = serde_json::json!({"id": "lb/probes/Health"});
        let mut p = serde_json::json!({
            "name": "Health",
            "properties": {"protocol": protocol, "port": port, "intervalInSeconds": 5, "numberOfProbes": 2}
        });
        if protocol != "Tcp" {
            p["properties"]["requestPath"] = "/health".into();
        }
        probes.push(p);
    }
    serde_json::json!({
        "name": "SmallLB",
        "properties": {
            "frontendIPConfigurations": [{"name": "Web", "properties": {"publicIPAddress": {"ipAddress": "20.50.60.10"}}}],
            "backendAddressPools": [{"name": "Servers", "properties": {"vni": 7001, "loadBalancerBackendAddresses": members}}],
            "probes": probes,
            "loadBalancingRules": [rule]
        }
    })
}

fn mux_node(lb: serde_json::Value) -> String {
    let node = serde_json::json!({
        "role": "mux",
        "mac": "02:00:00:00:05:0a",
        "gatewayMac": "02:00:00:00:00:01",
        "underlay": "172.16.5.10",
        "loadBalancer": lb
    });
    serde_json::to_string_pretty(&node).unwrap()
}

// --- the MUX on a generated capture ------------------------------------------------------------------

/// Generated client traffic (UDP to port 4789 left out: its payload is random, not VxLAN), then
/// 80 fragmented datagrams with all their fragments.
fn client_traffic(n: usize) -> Vec<GeneratedFrame> {
    let mut gen = TrafficGenerator::new(11, MixConfig::realistic());
    let mut frames: Vec<GeneratedFrame> =
        gen.take(n).into_iter().filter(|f| !(f.expected.protocol == 17 && f.expected.dst_port == VXLAN_PORT)).collect();
    for i in 0..80 {
        frames.extend(gen.fragmented_datagram(i % 2 == 1));
    }
    frames
}

/// Whether the TCP or UDP checksum of a whole datagram `l4` (header and data) holds between `src`
/// and `dst`.
fn l4_checksum_ok(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> bool {
    let v6 = |a: IpAddr| match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let (s16, d16) = (v6(src), v6(dst));
    let (s4, d4): ([u8; 4], [u8; 4]) = (s16[12..].try_into().unwrap(), d16[12..].try_into().unwrap());
    match protocol {
        6 => {
            let (h, data) = etherparse::TcpHeader::from_slice(l4).unwrap();
            let want = if src.is_ipv4() {
                h.calc_checksum_ipv4_raw(s4, d4, data)
            } else {
                h.calc_checksum_ipv6_raw(s16, d16, data)
            };
            want.ok() == Some(h.checksum)
        }
        17 => {
            let (h, data) = etherparse::UdpHeader::from_slice(l4).unwrap();
            let want = if src.is_ipv4() {
                h.calc_checksum_ipv4_raw(s4, d4, data)
            } else {
                h.calc_checksum_ipv6_raw(s16, d16, data)
            };
            (src.is_ipv4() && h.checksum == 0) || want.ok() == Some(h.checksum)
        }
        _ => true,
    }
}

/// Runs the demo MUX (examples/demo-mux.node.json, copied to `dir`) on `frames`; returns what it
/// sent, its report and its stdout.
fn run_demo_mux(dir: &TempDir, frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, Report, String) {
    for f in ["demo-mux.node.json", "demo-lb.json"] {
        std::fs::copy(examples().join(f), dir.join(f)).unwrap();
    }
    run_pcap(&dir.join("demo-mux.node.json"), &dir.join("clients.pcap"), &dir.join("mux-out.pcap"), frames)
}

/// Runs node file `config` (probes off) on `frames` written to `input`; returns what it sent to
/// `output`, its report and its stdout. The program must succeed.
fn run_pcap(config: &Path, input: &Path, output: &Path, frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, Report, String) {
    write_pcap(input, frames);
    let mut p = Program::start(&os(&[
        &"run",
        &"--config",
        &config,
        &"--pcap-in",
        &input,
        &"--pcap-out",
        &output,
        &"--no-probes",
    ]));
    let (status, stdout, stderr) = p.wait();
    assert!(status.success(), "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    (read_pcap(output), report(&stdout), stdout)
}

#[test]
fn mux_pcap_end_to_end() {
    let dir = TempDir::new("mux");
    let traffic = client_traffic(3000);
    let inputs: Vec<Vec<u8>> = traffic.iter().map(|f| f.bytes.clone()).collect();
    let (out, rep, stdout) = run_demo_mux(&dir, &inputs);
    let lb = demo_lb();

    // The report accounts for every frame.
    assert_eq!(rep.rx, inputs.len() as u64, "{stdout}");
    assert_eq!(rep.tx, out.len() as u64, "{stdout}");
    assert_eq!(rep.tx_failed, 0, "{stdout}");
    assert_eq!(rep.tx + rep.dropped, rep.rx, "out + dropped = in\n{stdout}");
    assert!(out.len() > inputs.len() / 3, "most client frames go through: {} of {}", out.len(), inputs.len());

    // Frames to no VIP are dropped as such (the generator also writes the servers' direction).
    let vips: HashMap<IpAddr, usize> = lb.rules.iter().map(|r| (lb.frontends[r.frontend].address, r.pool)).collect();
    let not_to_a_vip = traffic.iter().filter(|f| !vips.contains_key(&f.expected.dst)).count() as u64;
    assert!(not_to_a_vip > 0);
    assert_eq!(rep.drops.get("no_vip"), Some(&not_to_a_vip), "{stdout}");

    // Every frame out: VxLAN from the MUX to a host of the pool the VIP's rules name, with that
    // pool's VNI, carrying one of the input frames byte for byte.
    let mut pending: HashMap<&[u8], Vec<&GeneratedFrame>> = HashMap::new();
    for f in &traffic {
        pending.entry(&f.bytes[..]).or_default().push(f);
    }
    let mut per_host: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for (i, frame) in out.iter().enumerate() {
        let v = vxlan(frame).unwrap_or_else(|| panic!("frame {i} out is not VxLAN: {frame:02x?}"));
        assert_eq!((v.src_mac, v.dst_mac), (MUX_MAC, GATEWAY_MAC), "frame {i}");
        assert_eq!(v.outer_src, IpAddr::from(MUX_UNDERLAY), "frame {i}");
        let original = pending
            .get_mut(v.inner)
            .and_then(Vec::pop)
            .unwrap_or_else(|| panic!("frame {i} out carries no input frame (or one more often than it came)"));
        let pool = vips[&original.expected.dst];
        let p = &lb.pools[pool];
        assert_eq!(v.vni, p.vni, "frame {i}: VNI of pool {}", p.name);
        assert!(
            p.backends.iter().any(|b| b.host == v.outer_dst),
            "frame {i} goes to {}, no host of pool {}",
            v.outer_dst,
            p.name
        );
        *per_host.entry(v.outer_dst).or_default() += 1;
    }

    // The per-backend table: every backend of the configuration, the frames they got adding up to
    // what each host received.
    let mut rows_per_host: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut listed = Vec::new();
    for row in &rep.backends {
        let pool = lb.pools.iter().find(|p| p.name == row.pool).unwrap_or_else(|| panic!("{row:?}"));
        let b = pool.backends.iter().find(|b| b.name == row.name).unwrap_or_else(|| panic!("{row:?}"));
        assert_eq!(b.address, row.address, "{row:?}");
        *rows_per_host.entry(b.host).or_default() += row.packets;
        listed.push((row.pool.clone(), row.name.clone()));
    }
    let all: Vec<(String, String)> =
        lb.pools.iter().flat_map(|p| p.backends.iter().map(|b| (p.name.clone(), b.name.clone()))).collect();
    assert_eq!(listed, all, "one row per backend\n{stdout}");
    rows_per_host.retain(|_, n| *n > 0);
    assert_eq!(rows_per_host, per_host, "per-backend packets by host = frames out by host\n{stdout}");
}

// --- a host agent on what the MUX sent, and its backends' responses ---------------------------------

fn host_node() -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "role": "host",
        "mac": "02:00:00:00:0a:14",
        "gatewayMac": "02:00:00:00:00:01",
        "underlay": HOST_UNDERLAY.to_string(),
        "muxes": [MUX_UNDERLAY.to_string()],
        "returnPath": "mux",
        "loadBalancerFile": "demo-lb.json"
    }))
    .unwrap()
}

fn run_host(dir: &TempDir, name: &str, frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, Report, String) {
    let (input, output) = (dir.join(&format!("{name}-in.pcap")), dir.join(&format!("{name}-out.pcap")));
    let (out, r, stdout) = run_pcap(&dir.join("host.node.json"), &input, &output, frames);
    assert_eq!(r.rx, frames.len() as u64, "{stdout}");
    assert_eq!(r.tx + r.dropped, r.rx, "out + dropped = in\n{stdout}");
    (out, r, stdout)
}

/// A backend's answer to a delivered frame `d`: from its address and port back to the client.
fn response(d: &Ip) -> Vec<u8> {
    let (sport, dport) = d.ports.unwrap();
    let b = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0xbe, 0x01], HOST_MAC);
    let payload = b"response from the backend";
    let mut v = Vec::new();
    match (d.src, d.dst) {
        (IpAddr::V4(client), IpAddr::V4(dip)) => {
            let b = b.ipv4(dip.octets(), client.octets(), 64);
            if d.protocol == 6 {
                b.tcp(dport, sport, 7, 1000).ack(1).write(&mut v, payload).unwrap();
            } else {
                b.udp(dport, sport).write(&mut v, payload).unwrap();
            }
        }
        (IpAddr::V6(client), IpAddr::V6(dip)) => {
            let b = b.ipv6(dip.octets(), client.octets(), 64);
            if d.protocol == 6 {
                b.tcp(dport, sport, 7, 1000).ack(1).write(&mut v, payload).unwrap();
            } else {
                b.udp(dport, sport).write(&mut v, payload).unwrap();
            }
        }
        _ => unreachable!(),
    }
    v
}

#[test]
fn host_agent_delivers_dnated_and_returns_responses_via_the_mux() {
    let dir = TempDir::new("host");
    let traffic = client_traffic(3000);
    let inputs: Vec<Vec<u8>> = traffic.iter().map(|f| f.bytes.clone()).collect();
    let (mux_out, _, _) = run_demo_mux(&dir, &inputs);
    std::fs::write(dir.join("host.node.json"), host_node()).unwrap();
    let lb = demo_lb();
    let vips: HashMap<IpAddr, usize> = lb.rules.iter().map(|r| (lb.frontends[r.frontend].address, r.pool)).collect();
    // The demo's frontends have rules of one kind each: floating IP or not.
    let floating: HashMap<IpAddr, bool> =
        lb.rules.iter().map(|r| (lb.frontends[r.frontend].address, r.floating_ip)).collect();
    assert!(floating.values().any(|&f| f) && floating.values().any(|&f| !f));
    let here = IpAddr::from(HOST_UNDERLAY);

    // 1. What the MUX sent, alone: frames for this host are delivered (DNATed, but for floating IP),
    //    in order.
    let (out, rep, stdout) = run_host(&dir, "fabric", &mux_out);
    let tunnels: Vec<Vxlan<'_>> = mux_out.iter().map(|f| vxlan(f).unwrap()).collect();
    let for_here: Vec<&Vxlan<'_>> = tunnels.iter().filter(|t| t.outer_dst == here).collect();
    assert!(for_here.len() > 100 && for_here.len() < tunnels.len(), "{} of {}", for_here.len(), tunnels.len());
    assert_eq!(
        rep.drops.get("not_for_this_host").copied(),
        Some((tunnels.len() - for_here.len()) as u64),
        "tunnels from the MUX to other hosts are refused as such\n{stdout}"
    );
    let mut cursor = 0;
    let mut delivered: Vec<(Ip, Ip)> = Vec::new(); // (as the MUX carried it, as delivered)
    for (i, d) in out.iter().enumerate() {
        assert!(vxlan(d).is_none(), "frame {i} out is a tunnel, but nothing came from a backend");
        let got = ip(d).unwrap_or_else(|| panic!("frame {i} out: no IP"));
        assert!(got.checksums_ok || got.fragment, "frame {i} out: checksums do not hold: {got:?}");
        // The next frame for this host it can be: the same but for the destination.
        let at = (cursor..for_here.len()).find(|&k| {
            let inner = for_here[k].inner;
            let Some(orig) = ip(inner) else { return false };
            inner.len() == d.len()
                && inner[..orig.l3_offset] == d[..got.l3_offset]
                && (orig.src, orig.protocol, orig.ports) == (got.src, got.protocol, got.ports)
                && (same_but_checksum(orig.protocol, &orig.data, &got.data)
                    || quote_translated(&orig.data, &got.data, orig.dst, got.dst))
        });
        let Some(at) = at else { panic!("frame {i} out ({got:?}) matches no later frame for this host") };
        cursor = at + 1;
        let orig = ip(for_here[at].inner).unwrap();
        let pool = &lb.pools[vips[&orig.dst]];
        assert_eq!(for_here[at].vni, pool.vni);
        let local: Vec<IpAddr> = pool.backends.iter().filter(|b| b.host == here).map(|b| b.address).collect();
        if floating[&orig.dst] {
            // Floating IP (direct server return): the backend gets the frontend's address.
            assert_eq!(got.dst, orig.dst, "frame {i} out: a floating-IP frontend's frame keeps its address");
        } else {
            assert!(
                local.contains(&got.dst),
                "frame {i} out: to {}, not to a backend of {} on this host",
                got.dst,
                pool.name
            );
        }
        delivered.push((orig, got));
    }
    assert_eq!(rep.tx, out.len() as u64);
    let icmp_errors = rep.drops.get("icmp_untranslated").copied().unwrap_or(0);
    assert_eq!(
        delivered.len() as u64 + icmp_errors,
        for_here.len() as u64,
        "every frame for this host is delivered but the ICMP errors this path does not translate\n{stdout}"
    );
    // Fragmented datagrams, reassembled: their L4 checksum holds over the whole datagram with the
    // backend's address (the first fragment's was updated for it, the others carry none).
    let mut defrag = etherparse::defrag::IpDefragPool::<(), ()>::new();
    let mut reassembled = 0;
    for (i, d) in out.iter().enumerate() {
        let sliced = SlicedPacket::from_ethernet(d).unwrap();
        let Some(whole) = defrag.process_sliced_packet(&sliced, (), ()).unwrap() else { continue };
        let got = ip(d).unwrap();
        assert!(
            l4_checksum_ok(got.src, got.dst, whole.ip_number.0, &whole.payload),
            "frame {i} out completes a datagram to {} whose checksum does not hold",
            got.dst
        );
        reassembled += 1;
    }
    assert!(reassembled >= 3, "{reassembled} fragmented datagrams delivered whole");
    // The host's per-backend table: its own backends.
    let rows: HashSet<IpAddr> = rep.backends.iter().map(|r| r.address).collect();
    let mine: HashSet<IpAddr> =
        lb.pools.iter().flat_map(|p| &p.backends).filter(|b| b.host == here).map(|b| b.address).collect();
    assert_eq!(rows, mine, "{stdout}");

    // 2. The same, then one response per connection still open: each goes back to the MUX in VxLAN
    //    with the VIP and frontend port as source.
    let mut closed = HashSet::new();
    let mut answered = HashSet::new();
    let mut responses: Vec<(Vec<u8>, Ip)> = Vec::new();
    for (_, d) in &delivered {
        if d.protocol == 6 && d.tcp_flags & 0x04 != 0 {
            closed.insert((d.src, d.ports));
        }
    }
    for (orig, d) in &delivered {
        let flow = (d.src, d.ports);
        if d.fragment || d.ports.is_none() || closed.contains(&flow) || !answered.insert(flow) {
            continue;
        }
        responses.push((response(d), orig.clone()));
    }
    assert!(responses.len() > 20, "{} responses", responses.len());
    let mut frames = mux_out.clone();
    frames.extend(responses.iter().map(|(r, _)| r.clone()));
    let (out2, rep2, stdout2) = run_host(&dir, "both", &frames);
    assert_eq!(out2.len(), out.len() + responses.len(), "every response is sent\n{stdout2}");
    assert_eq!(out2[..out.len()], out[..], "the fabric frames are handled as before");
    assert_eq!(rep2.dropped, rep.dropped, "{stdout2}");
    for (k, (frame, (_, orig))) in out2[out.len()..].iter().zip(&responses).enumerate() {
        let v = vxlan(frame).unwrap_or_else(|| panic!("response {k} is not VxLAN"));
        assert_eq!((v.src_mac, v.dst_mac), (HOST_MAC, GATEWAY_MAC), "response {k}");
        assert_eq!((v.outer_src, v.outer_dst), (here, IpAddr::from(MUX_UNDERLAY)), "response {k}");
        assert_eq!(v.vni, lb.pools[vips[&orig.dst]].vni, "response {k}");
        let inner = ip(v.inner).unwrap();
        let (cport, fport) = orig.ports.unwrap();
        assert_eq!((inner.src, inner.ports), (orig.dst, Some((fport, cport))), "response {k}: from the VIP");
        assert_eq!(inner.dst, orig.src, "response {k}: to the client");
        assert_eq!(inner.data, b"response from the backend", "response {k}");
        assert!(inner.checksums_ok, "response {k}: checksums do not hold: {inner:?}");
    }
}

// --- health: probes take a backend out and bring it back; new flows follow -------------------------

/// A backend's health endpoint: TCP (accept and close) or HTTP (answer `status` to every request).
struct HealthServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthServer {
    fn start(l: TcpListener, http_status: Option<Arc<AtomicU16>>) -> Self {
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Some(status) = &http_status else { continue };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let code = if head.starts_with(b"GET /health ") { status.load(Ordering::Relaxed) } else { 404 };
                let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        HealthServer { stop, thread: Some(thread) }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr`, retrying while the address is still taken.
fn bind(addr: SocketAddr) -> TcpListener {
    wait_for(&format!("binding {addr}"), || TcpListener::bind(addr).ok()).unwrap_or_else(|| panic!("bind {addr}"))
}

/// Listeners on 127.0.0.2 and 127.0.0.3 with one port (a probe has one port for all backends).
fn two_listeners() -> (u16, TcpListener, TcpListener) {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = TcpListener::bind(("127.0.0.3", port)) {
            return (port, a, b);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn health_moves_new_flows(protocol: &str) {
    let http = protocol == "Http";
    let dir = TempDir::new(&format!("health-{protocol}"));
    let (port, l1, l2) = two_listeners();
    let (status1, status2) = (Arc::new(AtomicU16::new(200)), Arc::new(AtomicU16::new(200)));
    let mut server1 = Some(HealthServer::start(l1, http.then(|| status1.clone())));
    let _server2 = HealthServer::start(l2, http.then(|| status2.clone()));
    let lb =
        small_lb(&[("b1", "127.0.0.2", "172.16.10.20"), ("b2", "127.0.0.3", "172.16.10.21")], Some((protocol, port)));
    let config = dir.join("node.json");
    std::fs::write(&config, mux_node(lb)).unwrap();
    let (mut p, maddr, input, output) = start_pcap_with_metrics(&dir, &config, &[], &["--pcap-follow"]);
    let up = |m: &BTreeMap<String, f64>, b: &str| backend_sample(m, "lb_backend_up", b);
    let packets = |m: &BTreeMap<String, f64>, b: &str| backend_sample(m, "lb_backend_packets_total", b).unwrap();
    let rx = |m: &BTreeMap<String, f64>| m.get("lb_rx_frames_total").copied();
    let b1_probe = format!("probe of Servers b1 (127.0.0.2:{port}, {protocol} probe ");
    let b2_probe = format!("probe of Servers b2 (127.0.0.3:{port}, {protocol} probe ");
    p.wait_stderr(&[&b1_probe, "answered"]);
    p.wait_stderr(&[&b2_probe, "answered"]);
    wait_metrics(&mut p, maddr, "both backends up", |m| up(m, "b1") == Some(1.0) && up(m, "b2") == Some(1.0));

    // Both up: new flows go to both.
    append_pcap(&input, &new_flows(1, 200), 1_700_000_000);
    let m1 = wait_metrics(&mut p, maddr, "200 frames in", |m| rx(m) == Some(200.0));
    let (b1_first, b2_first) = (packets(&m1, "b1"), packets(&m1, "b2"));
    assert!(b1_first > 0.0 && b2_first > 0.0, "new flows spread over both: {m1:#?}");
    assert_eq!(b1_first + b2_first, 200.0);

    // b1 stops answering: after numberOfProbes failures it is down, and new flows all go to b2.
    if http {
        status1.store(500, Ordering::Relaxed);
    } else {
        drop(server1.take());
    }
    p.wait_stderr(&[&b1_probe, "failed"]);
    let m = wait_metrics(&mut p, maddr, "b1 down", |m| up(m, "b1") == Some(0.0));
    assert_eq!(up(&m, "b2"), Some(1.0), "{m:#?}");
    append_pcap(&input, &new_flows(2, 200), 1_700_000_010);
    let m2 = wait_metrics(&mut p, maddr, "400 frames in", |m| rx(m) == Some(400.0));
    assert_eq!(packets(&m2, "b1"), b1_first, "no new flow to the backend that is down: {m2:#?}");
    assert_eq!(packets(&m2, "b2"), b2_first + 200.0, "{m2:#?}");

    // b1 answers again: after 2 successes it is up, and takes new flows again.
    if http {
        status1.store(200, Ordering::Relaxed);
    } else {
        server1 = Some(HealthServer::start(bind(SocketAddr::from(([127, 0, 0, 2], port))), None));
    }
    wait_metrics(&mut p, maddr, "b1 up again", |m| up(m, "b1") == Some(1.0));
    append_pcap(&input, &new_flows(3, 200), 1_700_000_020);
    let m3 = wait_metrics(&mut p, maddr, "600 frames in", |m| rx(m) == Some(600.0));
    assert!(packets(&m3, "b1") > b1_first, "new flows reach b1 again: {m3:#?}");
    assert_eq!(packets(&m3, "b1") + packets(&m3, "b2"), 600.0, "{m3:#?}");

    // SIGTERM: a clean stop, the report, and the output in the order the phases came.
    p.signal(libc::SIGTERM);
    let (status, stdout, stderr) = p.wait();
    assert_eq!(status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rep = report(&stdout);
    assert_eq!((rep.rx, rep.tx, rep.dropped), (600, 600, 0), "{stdout}");
    let out = read_pcap(&output);
    assert_eq!(out.len(), 600);
    let hosts: Vec<IpAddr> = out.iter().map(|f| vxlan(f).unwrap().outer_dst).collect();
    let (b1_host, b2_host) = (IpAddr::from([172, 16, 10, 20]), IpAddr::from([172, 16, 10, 21]));
    assert!(hosts[..200].contains(&b1_host) && hosts[..200].contains(&b2_host));
    assert!(hosts[200..400].iter().all(|h| *h == b2_host), "while b1 was down, all to b2's host");
    assert!(hosts[400..].contains(&b1_host));
    drop(server1);
}

#[test]
fn health_tcp_probe_moves_new_flows() {
    health_moves_new_flows("Tcp");
}

#[test]
fn health_http_probe_moves_new_flows() {
    health_moves_new_flows("Http");
}

// --- SIGHUP reloads, SIGTERM stops ------------------------------------------------------------------

/// A scratch directory `name` with a MUX node file of two backends; returns it, the node file and
/// the three backends a reload brings in (the two and one more).
fn reload_setup(name: &str) -> (TempDir, PathBuf, [(&'static str, &'static str, &'static str); 3]) {
    let dir = TempDir::new(name);
    let two = [("b1", "127.0.0.2", "172.16.10.20"), ("b2", "127.0.0.3", "172.16.10.21")];
    let config = dir.join("node.json");
    std::fs::write(&config, mux_node(small_lb(&two, None))).unwrap();
    (dir, config, [two[0], two[1], ("b3", "127.0.0.4", "172.16.10.22")])
}

#[test]
fn sighup_reloads_a_good_configuration_and_refuses_a_broken_one() {
    let (dir, config, three) = reload_setup("reload");
    let (mut p, maddr, _, _) = start_pcap_with_metrics(&dir, &config, &new_flows(1, 10), &["--no-probes", "--linger"]);
    let has = |m: &BTreeMap<String, f64>, b: &str| backend_sample(m, "lb_backend_packets_total", b).is_some();
    let m = wait_metrics(&mut p, maddr, "10 frames in", |m| m.get("lb_rx_frames_total") == Some(&10.0));
    assert!(has(&m, "b1") && has(&m, "b2") && !has(&m, "b3"), "{m:#?}");
    assert!(m.get("lb_engine_seconds_total").is_some_and(|&s| s > 0.0), "the engine's time moved: {m:#?}");

    // A pool with one more backend: reloaded, and the metrics show it.
    std::fs::write(&config, mux_node(small_lb(&three, None))).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_stderr(&["SIGHUP", "reloaded"]);
    wait_metrics(&mut p, maddr, "backend b3", |m| has(m, "b3"));

    // Not JSON, then an invalid load balancer: refused, the running configuration stays.
    std::fs::write(&config, "{ this is not json").unwrap();
    p.signal(libc::SIGHUP);
    let refused = p.wait_stderr(&["SIGHUP", "refused"]);
    assert!(refused.contains("node.json"), "the refusal names the file: {refused}");
    let mut bad = small_lb(&three, None);
    bad["properties"]["backendAddressPools"][0]["properties"]["loadBalancerBackendAddresses"][2]["properties"]
        ["ipAddress"] = "127.0.0.2".into();
    std::fs::write(&config, mux_node(bad)).unwrap();
    p.signal(libc::SIGHUP);
    wait_for("a second refusal", || (p.stderr().matches("refused").count() >= 2).then_some(()))
        .unwrap_or_else(|| panic!("stderr:\n{}", p.stderr()));
    assert!(p.stderr().contains("127.0.0.2 listed twice"), "{}", p.stderr());
    // A load balancer that validates but that the MUX cannot run (the pool's hosts of the other IP
    // version than the MUX's underlay: no tunnel to them) is refused before any worker sees it.
    let v6_hosts =
        [("b1", "127.0.0.2", "2001:db8::20"), ("b2", "127.0.0.3", "2001:db8::21"), ("b3", "127.0.0.4", "2001:db8::22")];
    std::fs::write(&config, mux_node(small_lb(&v6_hosts, None))).unwrap();
    p.signal(libc::SIGHUP);
    wait_for("a third refusal", || (p.stderr().matches("refused").count() >= 3).then_some(()))
        .unwrap_or_else(|| panic!("stderr:\n{}", p.stderr()));
    assert!(p.stderr().contains("tunnel to host 2001:db8::20: not of the underlay's IP version"), "{}", p.stderr());
    // Node settings take a restart: a changed flow capacity is refused, by name.
    let mut resized: serde_json::Value = serde_json::from_str(&mux_node(small_lb(&three, None))).unwrap();
    resized["flowCapacity"] = 2000.into();
    std::fs::write(&config, resized.to_string()).unwrap();
    p.signal(libc::SIGHUP);
    wait_for("a fourth refusal", || (p.stderr().matches("refused").count() >= 4).then_some(()))
        .unwrap_or_else(|| panic!("stderr:\n{}", p.stderr()));
    assert!(p.stderr().contains("node settings changed (flowCapacity)"), "{}", p.stderr());
    assert!(!p.stderr().contains("refused by a worker"), "the workers never saw them: {}", p.stderr());
    let m = metrics(maddr).expect("metrics still served");
    assert!(has(&m, "b1") && has(&m, "b2") && has(&m, "b3"), "{m:#?}");
    assert_eq!(p.stderr().matches("reloaded").count(), 1, "{}", p.stderr());

    // SIGTERM: exit code 0 and the final report, with the reloaded pool.
    p.signal(libc::SIGTERM);
    let (status, stdout, stderr) = p.wait();
    assert_eq!(status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rep = report(&stdout);
    assert_eq!((rep.rx, rep.tx, rep.dropped), (10, 10, 0), "{stdout}");
    let names: Vec<&str> = rep.backends.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b1", "b2", "b3"], "{stdout}");
}

#[test]
fn sighup_moves_only_new_flows() {
    let (dir, config, three) = reload_setup("reload-flows");
    let (mut p, maddr, input, output) = start_pcap_with_metrics(&dir, &config, &[], &["--pcap-follow", "--no-probes"]);
    let rx = |m: &BTreeMap<String, f64>| m.get("lb_rx_frames_total").copied();
    append_pcap(&input, &new_flows(1, 200), 1_700_000_000);
    wait_metrics(&mut p, maddr, "200 frames in", |m| rx(m) == Some(200.0));
    // A third backend: established flows stay where they are, new flows may go to it.
    std::fs::write(&config, mux_node(small_lb(&three, None))).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_stderr(&["SIGHUP", "reloaded"]);
    wait_metrics(&mut p, maddr, "backend b3", |m| backend_sample(m, "lb_backend_packets_total", "b3").is_some());
    append_pcap(&input, &new_flows(1, 200), 1_700_000_005);
    append_pcap(&input, &new_flows(2, 200), 1_700_000_006);
    wait_metrics(&mut p, maddr, "600 frames in", |m| rx(m) == Some(600.0));
    p.signal(libc::SIGTERM);
    let (status, stdout, stderr) = p.wait();
    assert_eq!(status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let hosts: Vec<IpAddr> = read_pcap(&output).iter().map(|f| vxlan(f).unwrap().outer_dst).collect();
    assert_eq!(hosts.len(), 600);
    assert_eq!(hosts[200..400], hosts[..200], "established flows did not move");
    let b3_host = IpAddr::from([172, 16, 10, 22]);
    assert!(!hosts[..400].contains(&b3_host));
    let moved = hosts[400..].iter().filter(|h| **h == b3_host).count();
    assert!(moved > 20, "new flows reach the new backend ({moved} of 200)");
}

// --- metrics ---------------------------------------------------------------------------------------

#[test]
fn metrics_are_prometheus_text_on_the_loopback_address_given() {
    let dir = TempDir::new("metrics");
    for f in ["demo-mux.node.json", "demo-lb.json"] {
        std::fs::copy(examples().join(f), dir.join(f)).unwrap();
    }
    let traffic = client_traffic(500);
    let inputs: Vec<Vec<u8>> = traffic.iter().map(|f| f.bytes.clone()).collect();
    let (mut p, maddr, _, _) =
        start_pcap_with_metrics(&dir, &dir.join("demo-mux.node.json"), &inputs, &["--no-probes", "--linger"]);
    let n = inputs.len() as f64;
    let m = wait_metrics(&mut p, maddr, "every frame in", |m| m.get("lb_rx_frames_total") == Some(&n));

    let (status, head, body) = http_get(maddr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    // Prometheus text: every sample's family has its HELP and TYPE, counters end in _total.
    let mut types: HashMap<String, String> = HashMap::new();
    for l in body.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(body.contains(&format!("# HELP {name} ")), "no HELP for {name}");
            types.insert(name.to_owned(), kind.to_owned());
        } else if !l.starts_with('#') {
            let name = l.split(['{', ' ']).next().unwrap();
            let kind = types.get(name).unwrap_or_else(|| panic!("sample before its TYPE: {l}"));
            assert!(kind == "gauge" || name.ends_with("_total"), "{l}");
            assert!(l.rsplit_once(' ').unwrap().1.parse::<f64>().is_ok(), "{l}");
        }
    }
    let lb = demo_lb();
    let tx = m["lb_tx_frames_total"];
    let drops: f64 = m.iter().filter(|(k, _)| k.starts_with("lb_drops_total{")).map(|(_, v)| v).sum();
    assert_eq!(tx + drops, n, "{m:#?}");
    let per_backend: Vec<f64> =
        m.iter().filter(|(k, _)| k.starts_with("lb_backend_packets_total{")).map(|(_, v)| *v).collect();
    assert_eq!(per_backend.len(), lb.pools.iter().map(|p| p.backends.len()).sum::<usize>());
    assert_eq!(per_backend.iter().sum::<f64>(), tx, "the MUX's frames out all went to backends");
    assert!(m.iter().filter(|(k, _)| k.starts_with("lb_backend_up{")).all(|(_, v)| *v == 1.0), "{m:#?}");
    assert_eq!(m.get("lb_tx_failed_total"), Some(&0.0));
    assert!(m.contains_key("lb_flows") && m.contains_key("lb_snat_ports_in_use"), "{m:#?}");
    assert_eq!(http_get(maddr, "/").map(|r| r.0), Some(404));
    // Bound to 127.0.0.1 as given: not to every address.
    let other = SocketAddr::from(([127, 0, 0, 2], maddr.port()));
    assert!(TcpStream::connect_timeout(&other, Duration::from_secs(5)).is_err(), "also answers on {other}");

    p.signal(libc::SIGINT);
    let (status, stdout, _) = p.wait();
    assert_eq!(status.code(), Some(0));
    let rep = report(&stdout);
    assert_eq!((rep.rx as f64, rep.tx as f64), (n, tx), "the report agrees with the metrics");
}
