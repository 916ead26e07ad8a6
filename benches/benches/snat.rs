//! The host agent's SNAT port allocator: one allocation, one release, and the pairs, on a block of
//! 1,024 ports with no quarantine. `cargo bench -p lb-benches --bench snat`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lb_core::tables::{PortBlock, SnatAllocator};

const PORTS: u16 = 1024;

fn allocator() -> SnatAllocator {
    SnatAllocator::new(&[PortBlock { address: 0, first: 20_000, len: PORTS }], 0).unwrap()
}

/// Runs `iters` allocations (`timed_alloc`) or releases (otherwise) in rounds of at most a block's
/// worth, timing only the chosen half of each round.
fn rounds(a: &mut SnatAllocator, iters: u64, timed_alloc: bool) -> Duration {
    let mut ports = [0u16; PORTS as usize];
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(u64::from(PORTS)) as usize;
        let start = Instant::now();
        for p in &mut ports[..n] {
            *p = a.alloc(black_box(0), black_box(0)).unwrap();
        }
        let allocated = start.elapsed();
        let start = Instant::now();
        for &p in &ports[..n] {
            a.release(black_box(0), black_box(p), black_box(0)).unwrap();
        }
        let released = start.elapsed();
        total += if timed_alloc { allocated } else { released };
        left -= n as u64;
    }
    total
}

fn snat(c: &mut Criterion) {
    let mut g = c.benchmark_group("snat");
    g.throughput(Throughput::Elements(1));
    let mut a = allocator();
    g.bench_function("alloc+release", |b| {
        b.iter(|| {
            let p = a.alloc(black_box(0), black_box(0)).unwrap();
            a.release(black_box(0), black_box(p), black_box(0)).unwrap();
            p
        })
    });
    g.bench_function("alloc", |b| b.iter_custom(|iters| rounds(&mut a, iters, true)));
    g.bench_function("release", |b| b.iter_custom(|iters| rounds(&mut a, iters, false)));
    // Every port in use by a TCP connection: each allocation shares the port at the cursor, the
    // release takes it back.
    let mut full = allocator();
    let size = full.block(0).map_or(0, |b| b.len);
    for _ in 0..size {
        full.alloc_shared(0, 0, |_| false).unwrap();
    }
    g.bench_function("alloc_shared+release/exhausted", |b| {
        b.iter(|| {
            let p = full.alloc_shared(black_box(0), black_box(0), |p| black_box(p) != 0).unwrap();
            full.release(black_box(0), black_box(p), black_box(0)).unwrap();
            p
        })
    });
    g.finish();
    let counters = a.counters();
    assert_eq!((counters.allocated, counters.exhausted), (counters.released, 0), "{counters:?}");
    assert_eq!(full.counters().shared, full.counters().released, "{:?}", full.counters());
}

criterion_group!(benches, snat);
criterion_main!(benches);
