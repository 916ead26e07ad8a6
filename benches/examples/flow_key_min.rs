//! Flow-key extraction of the three parsers on the wire bench's `hot` batch (256 frames of the
//! realistic mix), timed for a shared VM whose other tenants move criterion's means by tens of
//! percent from one minute to the next: many short samples (20 passes over the batch each), the
//! three parsers interleaved sample by sample, and the minimum per parser, which interference can
//! only make slower. `cargo run --release -p lb-benches --example flow_key_min [SAMPLES]`.

use std::hint::black_box;
use std::time::Instant;

use lb_benches::{etherparse_tuple, fold_tuple, lb_core_tuple, smoltcp_tuple, Tuple5};
use lb_testkit::{MixConfig, TrafficGenerator};

const PASSES: usize = 20;

/// Nanoseconds a frame for one sample of `parse` over `frames`.
#[inline(always)]
fn sample(frames: &[Vec<u8>], parse: impl Fn(&[u8]) -> Option<Tuple5>) -> f64 {
    let t = Instant::now();
    for _ in 0..PASSES {
        black_box(black_box(frames).iter().fold(0u64, |acc, f| fold_tuple(acc, parse(f))));
    }
    t.elapsed().as_nanos() as f64 / (PASSES * frames.len()) as f64
}

fn main() {
    let samples: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3000);
    let frames: Vec<Vec<u8>> =
        TrafficGenerator::new(0x5eed, MixConfig::realistic()).take(256).into_iter().map(|f| f.bytes).collect();
    let mut best = [f64::MAX; 3];
    for _ in 0..samples {
        best[0] = best[0].min(sample(&frames, lb_core_tuple));
        best[1] = best[1].min(sample(&frames, smoltcp_tuple));
        best[2] = best[2].min(sample(&frames, etherparse_tuple));
    }
    println!("flow key, hot mix, minimum of {samples} interleaved samples of {PASSES} x 256 frames:");
    for (name, ns) in ["lb-core", "smoltcp", "etherparse"].iter().zip(best) {
        println!("  {name:<10} {ns:6.2} ns/frame  {:7.1} Mpps  ({:.2}x lb-core)", 1e3 / ns, ns / best[0]);
    }
}
