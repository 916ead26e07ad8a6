//! Flow-table hits at 10 thousand, 1 million and 40 million concurrent flows (the largest table a
//! MUX is sized for), one lookup at a time and in bursts of 32. `cargo bench -p lb-benches --bench
//! flow_table`.
//! The 40M case allocates about 3 GiB; set `LB_BENCH_FLOWS=10000,1000000` to skip it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lb_core::tables::flow::IdleTimeout;
use lb_core::tables::maglev::mix64;
use lb_core::tables::{FlowTable, FlowTuple, MuxFlow};

const BURST: usize = 32;
const PROBES: usize = 4096;

/// Flow `i`: a pseudo-random IPv4 client address and port to the VIP's port 443 over TCP, and the
/// flow's hash.
fn tuple(i: u64) -> (FlowTuple, u32) {
    let x = mix64(i);
    let mut t =
        FlowTuple { src_port: (x >> 32) as u16, dst_port: 443, protocol: 6, version: 4, ..FlowTuple::default() };
    t.src[..4].copy_from_slice(&(x as u32).to_be_bytes());
    t.dst[..4].copy_from_slice(&lb_fixtures::VIP);
    (t, mix64(x) as u32)
}

fn sizes() -> Vec<usize> {
    // Under `cargo test --benches` (no `--bench` argument) criterion runs each benchmark once, in a
    // debug build: a small table is enough to prove the bench works.
    if !std::env::args().any(|a| a == "--bench") {
        return vec![10_000];
    }
    std::env::var("LB_BENCH_FLOWS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 1_000_000, 40_000_000])
}

fn hits(c: &mut Criterion) {
    for n in sizes() {
        let mut table = FlowTable::with_capacity_prepared(n, lb_core::mem::huge_pages).unwrap();
        for i in 0..n as u64 {
            let (t, h) = tuple(i);
            table.insert(&t, h, 0x02, MuxFlow { backend: (i % 1000) as u16, listener: 0 }, IdleTimeout::default(), 0);
        }
        // Random established flows, as packets of many connections interleave on a link.
        let picks: Vec<(FlowTuple, u32)> = (0..PROBES as u64).map(|i| tuple(mix64(i ^ 0xabc) % n as u64)).collect();
        let tuples: Vec<FlowTuple> = picks.iter().map(|p| p.0).collect();
        let hashes: Vec<u32> = picks.iter().map(|p| p.1).collect();
        let mut g = c.benchmark_group(format!("flow_table/hit/{n}"));
        g.throughput(Throughput::Elements(PROBES as u64));
        g.bench_function("one-by-one", |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for (t, h) in tuples.iter().zip(&hashes) {
                    if let Some(at) = table.lookup(black_box(t), *h, 1) {
                        acc ^= u32::from(table.entry(at).value.backend);
                    }
                }
                acc
            })
        });
        let mut out = vec![None; BURST];
        g.bench_function("burst-32", |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for (t, h) in tuples.chunks(BURST).zip(hashes.chunks(BURST)) {
                    table.lookup_burst(black_box(t), h, 1, &mut out);
                    for at in out.iter().flatten() {
                        acc ^= u32::from(table.entry(*at).value.backend);
                    }
                }
                acc
            })
        });
        g.finish();
        let evicted = table.counters().evicted;
        assert!(evicted * 10_000 <= n as u64, "{evicted} of {n} flows evicted at nominal capacity");
    }
}

criterion_group!(benches, hits);
criterion_main!(benches);
