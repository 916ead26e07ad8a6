//! Maglev tables: build time for N backends over M = 65,537 slots, and lookups, against the
//! `maglev` crate in the same run. `cargo bench -p lb-benches --bench maglev`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lb_core::tables::maglev::mix64;
use lb_core::tables::{MaglevBackend, MaglevTable, DEFAULT_TABLE_SIZE};
use lb_core::wire::parse_flow_key;
use lb_testkit::{MixConfig, TrafficGenerator};
use maglev::{ConsistentHasher, Maglev};

fn backends(n: u64) -> Vec<MaglevBackend> {
    (0..n).map(|i| MaglevBackend { id: mix64(0x0a00_0000 + i), weight: 1 }).collect()
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev/build");
    g.sample_size(20);
    for n in [10u64, 100, 1000] {
        let b = backends(n);
        g.bench_function(format!("lb-core/N={n}/M=65537"), |bench| {
            bench.iter(|| MaglevTable::build(black_box(&b), DEFAULT_TABLE_SIZE).unwrap())
        });
        let mut table = MaglevTable::build(&b, DEFAULT_TABLE_SIZE).unwrap();
        g.bench_function(format!("lb-core-rebuild/N={n}/M=65537"), |bench| {
            bench.iter(|| table.rebuild(black_box(&b), DEFAULT_TABLE_SIZE).unwrap())
        });
        let nodes: Vec<u64> = b.iter().map(|x| x.id).collect();
        g.bench_function(format!("maglev-crate/N={n}/M=65537"), |bench| {
            bench.iter_batched(
                || nodes.clone(),
                |nodes| Maglev::with_capacity(nodes, DEFAULT_TABLE_SIZE as usize),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let b = backends(1000);
    let table = MaglevTable::build(&b, DEFAULT_TABLE_SIZE).unwrap();
    let crate_table = Maglev::with_capacity(b.iter().map(|x| x.id).collect::<Vec<_>>(), DEFAULT_TABLE_SIZE as usize);
    let keys: Vec<_> = TrafficGenerator::new(7, MixConfig::realistic())
        .take(1024)
        .iter()
        .filter_map(|f| parse_flow_key(&f.bytes).ok())
        .collect();
    let hashes: Vec<u32> = keys.iter().map(|k| k.hash(0)).collect();
    let tuples: Vec<_> = keys.iter().map(|k| (k.src_addr, k.dst_addr, k.protocol, k.src_port, k.dst_port)).collect();
    let mut g = c.benchmark_group("maglev/lookup");
    g.throughput(Throughput::Elements(hashes.len() as u64));
    g.bench_function("lb-core/precomputed-hash", |bench| {
        bench.iter(|| hashes.iter().fold(0usize, |acc, &h| acc ^ table.lookup(black_box(h)).unwrap_or(0)))
    });
    g.bench_function("lb-core/hash+lookup", |bench| {
        bench.iter(|| keys.iter().fold(0usize, |acc, k| acc ^ table.lookup(black_box(k).hash(0)).unwrap_or(0)))
    });
    g.bench_function("maglev-crate/hash+lookup", |bench| {
        bench.iter(|| tuples.iter().fold(0u64, |acc, t| acc ^ crate_table.get(black_box(t)).copied().unwrap_or(0)))
    });
    g.finish();
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
