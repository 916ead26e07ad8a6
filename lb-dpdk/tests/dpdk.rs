//! The DPDK port end to end, on DPDK's pcap and null virtual devices (no NIC, no hugepages): the
//! real binary runs in its own process for each test (the EAL initialises once per process), and
//! what it sent is checked against the pure-Rust pcap backend and an independent parser
//! (etherparse). Needs the system DPDK (feature `dpdk`).
#![cfg(feature = "dpdk")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_testkit::{MixConfig, TrafficGenerator};

/// One DPDK process at a time: each busy-polls a core.
static SERIAL: Mutex<()> = Mutex::new(());

/// The MUX's underlay address in the demo node file (the outer source of every tunnel).
const MUX_UNDERLAY: [u8; 4] = [172, 16, 5, 10];

fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo-mux.node.json")
}

fn temp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lb-dpdk-dpdk");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{}.pcap", std::process::id()))
}

/// A capture of `n` frames of the generator's realistic mix (clients talking to the demo VIPs).
fn capture(name: &str, n: usize, seed: u64) -> (PathBuf, Vec<Vec<u8>>) {
    let frames: Vec<Vec<u8>> =
        TrafficGenerator::new(seed, MixConfig::realistic()).take(n).into_iter().map(|f| f.bytes).collect();
    let path = temp(name);
    lb_testkit::write_pcap(std::fs::File::create(&path).unwrap(), &frames).unwrap();
    (path, frames)
}

fn read(path: &Path) -> Vec<Vec<u8>> {
    lb_testkit::read_pcap(std::fs::File::open(path).unwrap()).unwrap()
}

/// EAL arguments for a run on virtual devices only.
fn eal(vdevs: &[String]) -> Vec<String> {
    let mut a: Vec<String> = ["--no-huge", "--no-pci", "-m", "512", "--no-shconf", "--log-level=*:warning"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(vdevs.iter().map(|v| format!("--vdev={v}")));
    a
}

fn lb_dpdk(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-dpdk"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Waits for the child, killing it past `limit`.
fn wait(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "lb-dpdk still running after {limit:?}: killed\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn run_ok(args: &[String]) -> String {
    let out = wait(lb_dpdk(args).spawn().expect("run lb-dpdk"), Duration::from_secs(120));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lb-dpdk {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout.into_owned()
}

/// `frames in N, out M, tx failed F, dropped D` of the final report.
fn counters(stdout: &str) -> [u64; 4] {
    let line = stdout.lines().find(|l| l.starts_with("frames in ")).expect("summary line");
    let n: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    [n[0], n[1], n[2], n[3]]
}

fn multiset(frames: &[Vec<u8>]) -> BTreeMap<&[u8], usize> {
    let mut m = BTreeMap::new();
    for f in frames {
        *m.entry(f.as_slice()).or_insert(0) += 1;
    }
    m
}

/// What the MUX sent, read by etherparse: each frame is a VxLAN tunnel from the MUX to a host that
/// carries one of the input frames unchanged.
fn check_tunnels(out: &[Vec<u8>], input: &[Vec<u8>]) {
    let mut left = multiset(input);
    for (i, frame) in out.iter().enumerate() {
        let p = SlicedPacket::from_ethernet(frame).unwrap_or_else(|e| panic!("frame {i}: outer: {e}"));
        let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("frame {i}: outer IPv4") };
        assert_eq!(ip.header().source(), MUX_UNDERLAY, "frame {i}: from the MUX");
        assert_eq!(
            ip.header().to_header().calc_header_checksum(),
            ip.header().header_checksum(),
            "frame {i}: outer IPv4 checksum"
        );
        let Some(TransportSlice::Udp(u)) = &p.transport else { panic!("frame {i}: outer UDP") };
        assert_eq!(u.destination_port(), 4789, "frame {i}: VxLAN port");
        let vx = u.payload();
        assert!(vx.len() > 8 && vx[0] == 0x08, "frame {i}: VxLAN header with a VNI");
        let inner = &vx[8..];
        let n = left.get_mut(inner).unwrap_or_else(|| panic!("frame {i}: inner frame is no input frame"));
        assert!(*n > 0, "frame {i}: inner frame sent more often than received");
        *n -= 1;
    }
}

/// The reference: the same capture through the pure-Rust pcap backend.
fn pcap_backend(input: &Path, name: &str) -> (Vec<Vec<u8>>, [u64; 4]) {
    let out = temp(name);
    let stdout = run_ok(&[
        "run".into(),
        "--config".into(),
        config().display().to_string(),
        "--pcap-in".into(),
        input.display().to_string(),
        "--pcap-out".into(),
        out.display().to_string(),
        "--no-probes".into(),
        "--status-interval".into(),
        "0".into(),
    ]);
    (read(&out), counters(&stdout))
}

/// `lb-dpdk run --dpdk` with the given program options and EAL arguments.
fn dpdk_args(opts: &[&str], eal_args: Vec<String>) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "--dpdk".into(), "--config".into(), config().display().to_string()];
    a.push("--no-probes".into());
    a.extend(opts.iter().map(|s| s.to_string()));
    a.push("--".into());
    a.extend(eal_args);
    a
}

#[test]
fn net_pcap_sends_what_the_pcap_backend_sends() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (input, frames) = capture("e2e-in", 3000, 7);
    let (expected, ref_counts) = pcap_backend(&input, "e2e-ref");
    assert!(expected.len() > 2000, "most client frames reach a backend: {ref_counts:?}");
    check_tunnels(&expected, &frames);

    let out = temp("e2e-dpdk");
    let vdev = format!("net_pcap0,rx_pcap={},tx_pcap={}", input.display(), out.display());
    let stdout = run_ok(&dpdk_args(&["--dpdk-idle-exit", "1", "--status-interval", "0"], eal(&[vdev])));
    let got = read(&out);
    check_tunnels(&got, &frames);
    assert_eq!(multiset(&got), multiset(&expected), "same frames as the pcap backend");
    // One rx queue (net_pcap has one per rx_pcap): one worker, so the very same order.
    assert_eq!(got, expected, "same order with one queue");
    assert_eq!(counters(&stdout), ref_counts, "same counters");
    assert_eq!(counters(&stdout)[0], frames.len() as u64, "every frame received");
}

/// The first CPU this process may run on (the EAL lcores of the test all share it).
fn a_cpu() -> usize {
    // SAFETY: sched_getaffinity writes a cpu_set_t of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
        (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set)).expect("a cpu")
    }
}

#[test]
fn two_workers_share_nothing_and_each_sends_the_whole_answer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (input, frames) = capture("two-in", 2000, 11);
    let (expected, _) = pcap_backend(&input, "two-ref");
    // Two rx queues that each replay the whole capture, two tx queues that each write a file: each
    // worker has its own engine and must, alone, send exactly what the pcap backend sent.
    let (out0, out1) = (temp("two-q0"), temp("two-q1"));
    let vdev = format!(
        "net_pcap0,rx_pcap={i},rx_pcap={i},tx_pcap={},tx_pcap={}",
        out0.display(),
        out1.display(),
        i = input.display()
    );
    let cpu = a_cpu();
    let mut eal_args = eal(&[vdev]);
    eal_args.push(format!("--lcores=0@{cpu},1@{cpu},2@{cpu}"));
    let stdout = run_ok(&dpdk_args(&["--dpdk-idle-exit", "1", "--status-interval", "0"], eal_args));
    assert_eq!(read(&out0), expected, "queue 0");
    assert_eq!(read(&out1), expected, "queue 1");
    let c = counters(&stdout);
    assert_eq!(c[0], 2 * frames.len() as u64, "both queues received everything: {c:?}");
    assert_eq!(c[1], 2 * expected.len() as u64, "{c:?}");
}

#[test]
fn one_lcore_runs_the_worker_on_a_registered_thread() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (input, frames) = capture("one-in", 1000, 5);
    let (expected, ref_counts) = pcap_backend(&input, "one-ref");
    let out = temp("one-dpdk");
    let mut eal_args = eal(&[format!("net_pcap0,rx_pcap={},tx_pcap={}", input.display(), out.display())]);
    // Only the main lcore: no EAL worker lcore to launch on.
    eal_args.push(format!("--lcores=0@{}", a_cpu()));
    let args = dpdk_args(&["--dpdk-idle-exit", "1", "--status-interval", "0"], eal_args);
    let child = lb_dpdk(&args).spawn().unwrap();
    let o = wait(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("registered thread"), "{stderr}");
    assert_eq!(read(&out), expected);
    assert_eq!(counters(&String::from_utf8_lossy(&o.stdout)), ref_counts);
    assert_eq!(ref_counts[0], frames.len() as u64);
}

#[test]
fn mbufs_hold_what_the_device_takes_and_longer_frames_are_dropped_whole() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The mix with three frames longer than any mbuf (a 9,000-byte jumbo frame with its tags and a
    // tunnel fits; 9,500 bytes do not): net_pcap chains segments for those, and the port can make no
    // single writable segment of them and drops them.
    let (_, mut frames) = capture("long-mix", 1000, 9);
    let jumbo = 3;
    for _ in 0..jumbo {
        let mut f = frames[0].clone();
        f.resize(9500, 0);
        frames.push(f);
    }
    let input = temp("long-in");
    lb_testkit::write_pcap(std::fs::File::create(&input).unwrap(), &frames).unwrap();
    // A node MTU of 1000: the mbufs still hold every frame the device takes (the data room does not
    // follow the node's MTU), and a client's packet that cannot be sent within the MTU after
    // encapsulation gets an ICMP "fragmentation needed" / "packet too big" back (or, without DF,
    // is the MUX's drop, counted as `encap`).
    let node = temp("long-node").with_extension("json");
    let lb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo-lb.json");
    let text = std::fs::read_to_string(config()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["mtu"] = 1000.into();
    json["loadBalancerFile"] = lb.display().to_string().into();
    std::fs::write(&node, json.to_string()).unwrap();
    let out = temp("long-dpdk");
    let mut args = dpdk_args(
        &["--dpdk-idle-exit", "1", "--status-interval", "0"],
        eal(&[format!("net_pcap0,rx_pcap={},tx_pcap={}", input.display(), out.display())]),
    );
    args[3] = node.display().to_string();
    let o = wait(lb_dpdk(&args).spawn().unwrap(), Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stderr}");
    assert!(frames.iter().filter(|f| f.len() > 1026 && f.len() < 9500).count() > 0, "the mix has frames over the MTU");
    assert!(stderr.contains(&format!(": {jumbo} received frames dropped")), "{stderr}");
    let c = counters(&stdout);
    assert_eq!(c[0], (frames.len() - jumbo) as u64, "every other frame is received: {c:?}");
    let sent = read(&out);
    assert_eq!(sent.len() as u64, c[1]);
    let (tunnels, errors): (Vec<Vec<u8>>, Vec<Vec<u8>>) = sent.into_iter().partition(|f| {
        matches!(SlicedPacket::from_ethernet(f).map(|p| p.net), Ok(Some(NetSlice::Ipv4(ip))) if ip.header().source() == MUX_UNDERLAY)
    });
    check_tunnels(&tunnels, &frames[..frames.len() - jumbo]);
    assert!(!errors.is_empty(), "frames over the MTU are answered");
    for (i, e) in errors.iter().enumerate() {
        let p = SlicedPacket::from_ethernet(e).unwrap_or_else(|err| panic!("ICMP error {i}: {err}"));
        let kind = match &p.transport {
            Some(TransportSlice::Icmpv4(icmp)) => (icmp.type_u8(), icmp.code_u8()),
            Some(TransportSlice::Icmpv6(icmp)) => (icmp.type_u8(), icmp.code_u8()),
            other => panic!("frame {i} is neither a tunnel nor an ICMP error: {other:?}"),
        };
        assert!(kind == (3, 4) || kind == (2, 0), "ICMP error {i}: type and code {kind:?}");
    }
}

#[test]
fn sigint_stops_a_never_ending_port_with_a_report() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (input, _) = capture("sig-in", 500, 3);
    // Rx from a capture replayed forever, tx to another port (a null device): runs until a signal.
    let vdevs = [format!("net_pcap0,rx_pcap={},infinite_rx=1", input.display()), "net_null0,no-rx=1".into()];
    let args = dpdk_args(&["--dpdk-tx-port", "1", "--status-interval", "1"], eal(&vdevs));
    let mut child = lb_dpdk(&args).spawn().expect("run lb-dpdk");
    // Its stderr, line by line: the signal goes once two status lines showed traffic.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let line = line.unwrap();
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut busy_lines = 0;
    while busy_lines < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with('[') && !line.contains(" rx 0 ") => busy_lines += 1,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("no traffic in the status lines ({e}):\n{}", reader.join().unwrap());
            }
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "still running before the signal");
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = wait(child, Duration::from_secs(30));
    let stderr = reader.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(t0.elapsed() < Duration::from_secs(10), "stopped {:?} after the signal", t0.elapsed());
    let [rx, tx, failed, dropped] = counters(&stdout);
    assert!(rx > 500, "replayed the capture: {rx}\n{stderr}");
    assert_eq!(rx, tx + failed + dropped, "every frame accounted for");
    assert!(stderr.contains("port 1 (net_null)"), "{stderr}");
    assert!(stderr.contains("] in "), "status lines: {stderr}");
}

#[test]
fn eal_errors_are_reported() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // No device at all: port 0 does not exist.
    let out = wait(lb_dpdk(&dpdk_args(&[], eal(&[]))).spawn().unwrap(), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("DPDK port 0 does not exist"), "{stderr}");
    // A bad EAL option.
    let out =
        wait(lb_dpdk(&dpdk_args(&[], vec!["--no-such-eal-option".into()])).spawn().unwrap(), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("EAL initialisation"), "{stderr}");
}
