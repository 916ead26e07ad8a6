//! The whole MUX path (parse → VIP/rule → flow table or Maglev → VxLAN encap in place), bursts of
//! 32, on lb-testkit's realistic mix of inbound frames: established flows with 10 thousand and
//! 1 million flows in the table, and new flows. `cargo bench -p lb-benches --bench mux`.
//! Katran publishes 101-119 ns a packet a core for comparison.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lb_core::config::*;
use lb_core::paths::{BurstFrame, Mux, Verdict};
use lb_core::wire::parse_flow_key;
use lb_testkit::{MixConfig, TrafficGenerator, VIPS_V4, VIPS_V6};

const HEADROOM: usize = 128;
const BURST: usize = 32;
const PROBES: usize = 4096;

fn config() -> LoadBalancer {
    let mut lb = LoadBalancer { name: "bench".into(), ..LoadBalancer::default() };
    for (i, v) in VIPS_V4.iter().map(|&a| IpAddr::V4(a)).chain(VIPS_V6.iter().map(|&a| IpAddr::V6(a))).enumerate() {
        lb.frontends.push(Frontend { name: format!("vip{i}"), address: v });
    }
    let pool = |name: &str, v6: bool, vni: u32| Pool {
        name: name.into(),
        vni,
        backends: (0..32u16)
            .map(|b| Backend {
                name: format!("{name}-{b}"),
                address: if v6 {
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 4 + b))
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 1, 4 + b as u8))
                },
                host: IpAddr::V4(Ipv4Addr::new(172, 16, 10, 20 + b as u8)),
                weight: 1,
            })
            .collect(),
    };
    lb.pools = vec![pool("web4", false, 100), pool("web6", true, 101)];
    // Every VIP takes every protocol and port (HA ports), so that the whole mix is balanced.
    for f in 0..lb.frontends.len() {
        lb.rules.push(Rule {
            name: format!("ha{f}"),
            frontend: f,
            pool: usize::from(f >= VIPS_V4.len()),
            probe: None,
            protocol: Protocol::All,
            frontend_port: 0,
            backend_port: 0,
            load_distribution: LoadDistribution::Default,
            floating_ip: false,
            idle_timeout_minutes: 30,
            tcp_reset: false,
            disable_outbound_snat: false,
        });
    }
    lb
}

fn mux(flows: usize) -> Mux {
    Mux::with_flow_memory(lb_benches::mux_node(flows + PROBES), config(), lb_core::mem::huge_pages).unwrap()
}

/// A frame in a buffer with headroom before it, handed to the MUX where it lies (as the DPDK
/// program hands it its mbufs): no array of views is built for each burst.
struct InFrame {
    buf: Vec<u8>,
    len: usize,
}

impl BurstFrame for InFrame {
    #[inline(always)]
    fn parts(&mut self) -> (&mut [u8], usize, usize) {
        (&mut self.buf, HEADROOM, self.len)
    }
}

/// Inbound frames of the realistic mix (the MUX only ever sees traffic towards its VIPs), each in
/// a buffer with headroom.
fn probes() -> Vec<InFrame> {
    let vips: Vec<IpAddr> = VIPS_V4.iter().map(|&a| a.into()).chain(VIPS_V6.iter().map(|&a| a.into())).collect();
    let mut gen = TrafficGenerator::new(9, MixConfig::realistic());
    let mut out = Vec::new();
    while out.len() < PROBES {
        let f = gen.next_frame();
        if parse_flow_key(&f.bytes).is_ok_and(|k| vips.contains(&k.dst_ip())) {
            let mut buf = vec![0u8; HEADROOM + f.bytes.len()];
            buf[HEADROOM..].copy_from_slice(&f.bytes);
            out.push(InFrame { buf, len: f.bytes.len() });
        }
    }
    out
}

/// Fills the table with `n` established TCP flows of other clients.
fn fill(mux: &mut Mux, n: usize) {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([100, 64, 0, 0], VIPS_V4[0].octets(), 64)
        .tcp(1, 443, 1, 1000)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    let mut buf = vec![0u8; HEADROOM + frame.len()];
    for i in 0..n as u32 {
        buf[HEADROOM..].copy_from_slice(&frame);
        // Source address 100.64.x.y and port: a distinct flow each time.
        buf[HEADROOM + 28..HEADROOM + 30].copy_from_slice(&((i >> 16) as u16).to_be_bytes());
        buf[HEADROOM + 34..HEADROOM + 36].copy_from_slice(&(i as u16).to_be_bytes());
        let len = frame.len();
        assert!(matches!(mux.process(&mut buf, HEADROOM, len, 0), Verdict::Forward { .. }));
    }
}

fn run_bursts(mux: &mut Mux, probes: &mut [InFrame], now: u32) -> usize {
    let mut forwarded = 0;
    for burst in probes.chunks_mut(BURST) {
        let mut out = [Verdict::Drop(lb_core::paths::DropReason::Malformed); BURST];
        mux.process_burst(burst, now, &mut out);
        forwarded += out.iter().filter(|v| matches!(v, Verdict::Forward { .. })).count();
    }
    forwarded
}

fn established(c: &mut Criterion) {
    let sizes: &[usize] = if std::env::args().any(|a| a == "--bench") { &[10_000, 1_000_000] } else { &[10_000] };
    for &n in sizes {
        let mut m = mux(n);
        fill(&mut m, n);
        let mut p = probes();
        let forwarded = run_bursts(&mut m, &mut p, 1);
        assert!(forwarded * 100 >= PROBES * 95, "{forwarded} of {PROBES} forwarded");
        let mut g = c.benchmark_group(format!("mux/established/{n}-flows"));
        g.throughput(Throughput::Elements(PROBES as u64));
        g.bench_function("burst-32", |b| b.iter(|| run_bursts(black_box(&mut m), &mut p, 2)));
        g.finish();
    }
}

fn new_flows(c: &mut Criterion) {
    let mut m = mux(1_000_000);
    let mut p = probes();
    let mut g = c.benchmark_group("mux/new-flows");
    g.throughput(Throughput::Elements(PROBES as u64));
    // Where each probe's client port and address live, found once, outside the measurement.
    let edits: Vec<(Option<usize>, usize)> = p
        .iter()
        .map(|InFrame { buf, .. }| {
            let k = parse_flow_key(&buf[HEADROOM..]).unwrap();
            let port = (matches!(k.protocol, 6 | 17) && k.fragment == lb_core::wire::Fragment::None)
                .then_some(HEADROOM + usize::from(k.l4_offset));
            let v4 = k.ip_version == lb_core::wire::IpVersion::V4;
            (port, HEADROOM + usize::from(k.l3_offset) + if v4 { 12 } else { 8 })
        })
        .collect();
    let mut round = 0u32;
    g.bench_function("burst-32", |b| {
        b.iter(|| {
            // A client port and address byte that no frame has used before, on every TCP and UDP
            // frame (94% of the mix) of every round: each of them misses the flow table, is hashed
            // into Maglev and inserted. (The 4,096 frames hold 1,024 flows: one new port per
            // round for all of them would let three frames in four hit the flow the first made.)
            // The table holds 1 million flows: after a few hundred rounds every insert replaces
            // the entry nearest its idle deadline.
            round = round.wrapping_add(1);
            for (i, (InFrame { buf, .. }, &(port, addr))) in p.iter_mut().zip(&edits).enumerate() {
                let n = round.wrapping_mul(PROBES as u32).wrapping_add(i as u32);
                if let Some(at) = port {
                    buf[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
                }
                buf[addr] = (n >> 16) as u8;
            }
            run_bursts(black_box(&mut m), &mut p, round)
        })
    });
    g.finish();
}

criterion_group!(benches, established, new_flows);
criterion_main!(benches);
