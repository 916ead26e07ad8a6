//! The host agent's packet paths (`lb_core::paths::HostAgent`), PROBES frames an iteration, one
//! after another. `cargo bench -p lb-benches --bench host`.
//!
//! - `host/inbound/N-flows`: VxLAN frames exactly as a MUX produces them (built by a real `Mux`),
//!   of N established client connections (TCP ACKs with 32 bytes of data, 3 in 4 IPv4, 1 in 4 IPv6,
//!   to port 80 → 8080) → `from_fabric`: decapsulation, flow lookup (and refresh of the pair),
//!   sequence tracking, DNAT with incremental checksums.
//! - `host/response/N-flows`: the backends' answers on the same connections → `from_backend`: flow
//!   lookup, reverse NAT, and `via-mux` VxLAN back to the MUX or `direct` (DSR, L2 rewrite).
//! - `host/snat-new`: PROBES new outbound TCP connections (SYNs from 4 backends to distinct remote
//!   ends) → `from_backend`: SNAT port allocation, two flow-table inserts, SNAT and VxLAN; then
//!   `expire` at a time past the idle timeout releases every connection (a sweep of the whole
//!   table, both entries removed, the port released). Throughput counts connections: the figure is
//!   the whole life of one connection but its packets in between.
//!
//! Every path rewrites its frames in place, so each iteration gets fresh copies of pristine frames;
//! that copy is criterion's `iter_batched_ref` setup and is not in the figures (`copy` in each
//! group measures it alone, for reference). Established flows are picked at random over the N, as
//! packets of many connections interleave on a link. Under `cargo test --benches` (no `--bench`
//! argument) every benchmark runs once with N = 10,000.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lb_core::config::LoadBalancer;
use lb_core::paths::{HostAgent, HostNode, HostVerdict, Mux, ReturnPath, Verdict};
use lb_core::tables::maglev::mix64;
use lb_core::wire::parse_flow_key;
use lb_fixtures::*;

const PROBES: usize = 4096;
const PAYLOAD: &[u8] = &[0x5a; 32];
/// SNAT ports per backend: the 4 IPv4 backends together hold more than PROBES connections.
const SNAT_PORTS: u32 = 2048;

fn sizes() -> Vec<usize> {
    // Under `cargo test --benches` (no `--bench` argument) criterion runs each benchmark once, in a
    // debug build: a small table is enough to prove the bench works.
    if std::env::args().any(|a| a == "--bench") {
        vec![10_000, 1_000_000]
    } else {
        vec![10_000]
    }
}

/// Four IPv4 and two IPv6 backends, all on the benchmarked host (the MUX's backend tag picks one),
/// HTTP on each VIP with port translation, and an outbound rule for the IPv4 pool.
fn config() -> LoadBalancer {
    one_host(4, 2, SNAT_PORTS)
}

fn mux(flows: usize) -> Mux {
    Mux::with_flow_memory(lb_benches::mux_node(flows + PROBES), config(), lb_core::mem::huge_pages).unwrap()
}

fn host(connections: usize, return_path: ReturnPath) -> HostAgent {
    // Two entries a connection, and room to spare: no connection is evicted.
    let mut node =
        HostNode { snat_quarantine_secs: 0, ..host_node_flows(HOST_A, return_path, 2 * connections + connections / 2) };
    node.base.hash_seed = 42;
    HostAgent::with_flow_memory(node, config(), lb_core::mem::huge_pages).unwrap()
}

/// Client `i`: a distinct address and port; every 4th one IPv6.
fn client(i: usize) -> (IpAddr, u16) {
    let i = i as u32;
    let port = 1024 + (i % 60_000) as u16;
    let k = i / 60_000;
    if i % 4 == 3 {
        (Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, (k >> 16) as u16, k as u16).into(), port)
    } else {
        (Ipv4Addr::new(100, 64, (k >> 8) as u8, k as u8).into(), port)
    }
}

/// A TCP frame (`syn`: a SYN, else an ACK carrying `PAYLOAD`), in a buffer with headroom.
fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, syn: bool) -> Vec<u8> {
    with_headroom(&frame(src, sport, dst, dport, Some(syn), if syn { &[] } else { PAYLOAD }))
}

/// What the MUX sends to the host for a client frame (the whole buffer is the VxLAN frame).
fn through_mux(mux: &mut Mux, mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() - HEADROOM;
    let Verdict::Forward { start, len } = mux.process(&mut buf, HEADROOM, len, 0) else { panic!("MUX forwards") };
    buf[start..start + len].to_vec()
}

/// N established connections: the MUX's VxLAN frame of each SYN (to open them on a host), and for
/// PROBES random picks the MUX's VxLAN frame of a client ACK and the backend's ACK back.
struct Flows {
    syns: Vec<Vec<u8>>,
    picks: Vec<usize>,
    inbound: Vec<Vec<u8>>,
}

impl Flows {
    fn new(n: usize) -> Flows {
        let mut m = mux(n);
        let vip = |c: IpAddr| if c.is_ipv4() { IpAddr::from(VIP) } else { IpAddr::from(VIP6) };
        let syns = (0..n)
            .map(|i| {
                let (c, p) = client(i);
                through_mux(&mut m, tcp(c, p, vip(c), 80, true))
            })
            .collect();
        let picks: Vec<usize> = (0..PROBES as u64).map(|i| (mix64(i ^ 0xabc) % n as u64) as usize).collect();
        let inbound = picks
            .iter()
            .map(|&i| {
                let (c, p) = client(i);
                through_mux(&mut m, tcp(c, p, vip(c), 80, false))
            })
            .collect();
        Flows { syns, picks, inbound }
    }

    /// Opens every connection on `h`; returns, for each pick, the backend's response (in a buffer
    /// with headroom for the tunnel).
    fn open(&self, h: &mut HostAgent) -> Vec<Vec<u8>> {
        let mut dips = Vec::with_capacity(self.syns.len());
        for f in &self.syns {
            let mut buf = f.clone();
            let n = buf.len();
            let HostVerdict::Deliver { start, len, .. } = h.from_fabric(&mut buf, 0, n, 0) else {
                panic!("the host delivers a new connection")
            };
            dips.push(parse_flow_key(&buf[start..start + len]).unwrap().dst_ip());
        }
        self.picks
            .iter()
            .map(|&i| {
                let (c, p) = client(i);
                tcp(dips[i], 8080, c, p, false)
            })
            .collect()
    }
}

/// Runs every frame through `f`; returns how many got `want`.
fn run(frames: &mut [Vec<u8>], mut f: impl FnMut(&mut [u8]) -> HostVerdict, want: fn(&HostVerdict) -> bool) -> usize {
    let mut ok = 0;
    for buf in frames.iter_mut() {
        if want(&f(buf)) {
            ok += 1;
        }
    }
    ok
}

fn delivered(v: &HostVerdict) -> bool {
    matches!(v, HostVerdict::Deliver { .. })
}

fn transmitted(v: &HostVerdict) -> bool {
    matches!(v, HostVerdict::Transmit { .. })
}

fn inbound_fn(h: &mut HostAgent) -> impl FnMut(&mut [u8]) -> HostVerdict + '_ {
    |buf: &mut [u8]| {
        let n = buf.len();
        h.from_fabric(black_box(buf), 0, n, 1)
    }
}

fn backend_fn(h: &mut HostAgent, now: u32) -> impl FnMut(&mut [u8]) -> HostVerdict + '_ {
    move |buf: &mut [u8]| {
        let n = buf.len() - HEADROOM;
        h.from_backend(black_box(buf), HEADROOM, n, now)
    }
}

fn established(c: &mut Criterion) {
    for n in sizes() {
        let flows = Flows::new(n);
        let mut via_mux = host(n, ReturnPath::ViaMux);
        let responses = flows.open(&mut via_mux);
        // Once untimed, to check every frame takes the path measured (and warm the table).
        let ok = run(&mut flows.inbound.clone(), inbound_fn(&mut via_mux), delivered);
        assert_eq!(ok, PROBES, "inbound frames delivered");
        let mut g = c.benchmark_group(format!("host/inbound/{n}-flows"));
        g.throughput(Throughput::Elements(PROBES as u64));
        g.bench_function("copy", |b| b.iter(|| black_box(flows.inbound.clone())));
        g.bench_function("from_fabric", |b| {
            b.iter_batched_ref(
                || flows.inbound.clone(),
                |frames| run(frames, inbound_fn(&mut via_mux), delivered),
                BatchSize::LargeInput,
            )
        });
        g.finish();

        let mut g = c.benchmark_group(format!("host/response/{n}-flows"));
        g.throughput(Throughput::Elements(PROBES as u64));
        g.bench_function("copy", |b| b.iter(|| black_box(responses.clone())));
        let ok = run(&mut responses.clone(), backend_fn(&mut via_mux, 1), transmitted);
        assert_eq!(ok, PROBES, "responses sent via the MUX");
        g.bench_function("via-mux", |b| {
            b.iter_batched_ref(
                || responses.clone(),
                |frames| run(frames, backend_fn(&mut via_mux, 1), transmitted),
                BatchSize::LargeInput,
            )
        });
        assert_eq!(via_mux.flows().counters().evicted, 0, "no connection evicted");
        drop(via_mux);
        let mut direct = host(n, ReturnPath::Direct);
        let responses = flows.open(&mut direct);
        let ok = run(&mut responses.clone(), backend_fn(&mut direct, 1), transmitted);
        assert_eq!(ok, PROBES, "responses sent directly");
        g.bench_function("direct", |b| {
            b.iter_batched_ref(
                || responses.clone(),
                |frames| run(frames, backend_fn(&mut direct, 1), transmitted),
                BatchSize::LargeInput,
            )
        });
        g.finish();
        assert_eq!(direct.flows().counters().evicted, 0, "no connection evicted");
    }
}

fn snat_new(c: &mut Criterion) {
    // PROBES connections, each from one of the 4 IPv4 backends to a distinct remote end.
    let frames: Vec<Vec<u8>> = (0..PROBES)
        .map(|i| {
            let dip = v4((i % 4) as u8);
            let remote = IpAddr::V4(Ipv4Addr::new(93, 184, (i >> 8) as u8, i as u8));
            tcp(dip, 10_000 + (i / 4) as u16, remote, 443, true)
        })
        .collect();
    let mut h = host(2 * PROBES, ReturnPath::ViaMux);
    let mut now = 0u32;
    // One connection's life: its SYN (allocation, two inserts, SNAT, tunnel), then, past the idle
    // timeout, its share of the sweep that removes both entries and releases the port.
    let mut round = |h: &mut HostAgent, frames: &mut [Vec<u8>]| {
        let ok = run(frames, backend_fn(h, now), transmitted);
        now += 4 * 60 + 1;
        h.expire(now, usize::MAX, |_, f| {
            black_box(f);
        });
        ok
    };
    let ok = round(&mut h, &mut frames.clone());
    assert_eq!(ok, PROBES, "new SNAT connections sent");
    assert_eq!((h.flows().len(), (0..4).map(|l| h.snat_ports_in_use(l)).sum::<u32>()), (0, 0), "all released");
    let mut g = c.benchmark_group("host/snat-new");
    g.throughput(Throughput::Elements(PROBES as u64));
    g.bench_function("copy", |b| b.iter(|| black_box(frames.clone())));
    g.bench_function("from_backend+expire", |b| {
        b.iter_batched_ref(|| frames.clone(), |f| round(&mut h, f), BatchSize::LargeInput)
    });
    g.finish();
    let s = h.snat_counters();
    assert_eq!((s.allocated, s.shared, s.exhausted), (s.released, 0, 0), "{s:?}");
}

criterion_group!(benches, established, snat_new);
criterion_main!(benches);
