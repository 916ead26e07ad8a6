//! The whole MUX path (parse → VIP/rule → flow table or Maglev → VxLAN encap in place), bursts of
//! 32, on lb-testkit's realistic mix of inbound frames: established flows with 10 thousand and
//! 1 million flows in the table, and new flows. `cargo bench -p lb-benches --bench mux`.
//! Katran publishes 101-119 ns a packet a core for comparison.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lb_benches::mux_setup::{fill, mux, probes, run_bursts, InFrame, HEADROOM, PROBES};
use lb_core::wire::parse_flow_key;

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
