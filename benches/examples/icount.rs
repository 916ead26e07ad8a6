//! Instruction counts per packet, for `valgrind --tool=callgrind` (repeatable on a busy machine,
//! unlike wall time): `icount LIB ROUNDS [KIND]` parses 256 frames ROUNDS times in the same loop
//! as `flow_key_min` (each parser inlined, its 5-tuple folded with `fold_tuple`); the difference
//! between two ROUNDS values, divided by the extra frames, is the instructions a frame, the loop
//! and the fold (about 10) included.
//!
//! - LIB: `lb-core` (default), `smoltcp` or `etherparse`;
//! - KIND: the wire bench's hot batch (default), or only frames of one lb-testkit `FrameKind`, as
//!   its `Debug` prints it, untagged (`Ipv4Tcp`) or behind VLAN tags (`Ipv4Tcp+vlan`).
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/icount lb-core 10 Ipv4Fragment
//! ```

use std::hint::black_box;

use lb_benches::{etherparse_tuple, fold_tuple, lb_core_tuple, smoltcp_tuple, Tuple5};
use lb_testkit::{MixConfig, TrafficGenerator};

const FRAMES: usize = 256;

#[inline(never)]
fn run(frames: &[Vec<u8>], rounds: usize, parse: impl Fn(&[u8]) -> Option<Tuple5>) -> u64 {
    let mut acc = 0;
    for _ in 0..rounds {
        acc ^= black_box(frames).iter().fold(0u64, |acc, f| fold_tuple(acc, parse(f)));
    }
    acc
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let lib = args.get(1).map(String::as_str).unwrap_or("lb-core");
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(10);
    let frames: Vec<Vec<u8>> = match args.get(3) {
        None => {
            TrafficGenerator::new(0x5eed, MixConfig::realistic()).take(FRAMES).into_iter().map(|f| f.bytes).collect()
        }
        Some(kind) => {
            let frames: Vec<Vec<u8>> = TrafficGenerator::new(0x5eed, MixConfig::realistic())
                .take(100 * FRAMES)
                .into_iter()
                .filter(|f| {
                    let tag = if f.expected.vlans.is_empty() { "" } else { "+vlan" };
                    format!("{:?}{tag}", f.kind) == *kind
                })
                .take(FRAMES)
                .map(|f| f.bytes)
                .collect();
            if frames.is_empty() {
                return Err(format!("no frame of kind {kind} (a FrameKind as Debug prints it, `+vlan` for tagged)"));
            }
            frames
        }
    };
    let acc = match lib {
        "smoltcp" => run(&frames, rounds, smoltcp_tuple),
        "etherparse" => run(&frames, rounds, etherparse_tuple),
        _ => run(&frames, rounds, lb_core_tuple),
    };
    println!("{lib} {rounds} rounds of {} frames: {acc}", frames.len());
    Ok(())
}
