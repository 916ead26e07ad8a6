//! Instruction counts per packet, for `valgrind --tool=callgrind` (repeatable on a busy machine,
//! unlike wall time): `icount LIB ROUNDS` parses the realistic mix ROUNDS times; the difference
//! between two ROUNDS values divided by the packets is the per-packet instruction cost.

use std::hint::black_box;

use lb_benches::{etherparse_tuple, lb_core_tuple, smoltcp_tuple};
use lb_testkit::{MixConfig, TrafficGenerator};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lib = args.get(1).map(String::as_str).unwrap_or("lb-core");
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(10);
    let mut frames: Vec<Vec<u8>> =
        TrafficGenerator::new(0x5eed, MixConfig::realistic()).take(1024).into_iter().map(|f| f.bytes).collect();
    if std::env::var_os("ICOUNT_SAME").is_some() {
        // One IPv4 TCP frame repeated: the cost of the common case alone.
        let tcp =
            frames.iter().find(|f| f.len() > 34 && f[12..14] == [8, 0] && f[23] == 6).cloned().unwrap_or_default();
        frames = vec![tcp; 1024];
    }
    let f = match lib {
        "smoltcp" => smoltcp_tuple,
        "etherparse" => etherparse_tuple,
        _ => lb_core_tuple,
    };
    let mut acc = 0u64;
    for _ in 0..rounds {
        for fr in &frames {
            if let Some(t) = f(black_box(fr)) {
                acc = acc.wrapping_add(u64::from(t.src_port) ^ u64::from(t.protocol));
            }
        }
    }
    println!("{lib} {rounds} {acc}");
}
