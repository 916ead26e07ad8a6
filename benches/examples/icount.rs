//! Instruction counts per packet, for `valgrind --tool=callgrind` (repeatable on a busy machine,
//! unlike wall time): `icount LIB ROUNDS [KIND]` parses 256 frames ROUNDS times in the same loop
//! as `flow_key_min` (each parser inlined, its 5-tuple folded with `fold_tuple`); the difference
//! between two ROUNDS values, divided by the extra frames, is the instructions a frame, the loop
//! and the fold (about 10) included.
//!
//! - LIB: `lb-core`, `smoltcp` or `etherparse`;
//! - KIND: the wire bench's hot batch (`mix`, the default), or only frames of one lb-testkit
//!   `FrameKind`, as its `Debug` prints it, untagged (`Ipv4Tcp`), behind one VLAN tag
//!   (`Ipv4Tcp+vlan`) or two (`Ipv4Tcp+qinq`); up to 256 of them (the count is printed).
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
    const USAGE: &str = "usage: icount LIB ROUNDS [KIND]: LIB lb-core, smoltcp or etherparse; KIND mix (the \
                         default) or a FrameKind as Debug prints it (Ipv4Tcp), +vlan or +qinq for tagged ones";
    let args: Vec<String> = std::env::args().collect();
    let lib = args.get(1).map(String::as_str).ok_or(USAGE)?;
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).ok_or(USAGE)?;
    let frames: Vec<Vec<u8>> = match args.get(3).map(String::as_str) {
        None | Some("mix") => {
            TrafficGenerator::new(0x5eed, MixConfig::realistic()).take(FRAMES).into_iter().map(|f| f.bytes).collect()
        }
        Some(kind) => {
            let frames: Vec<Vec<u8>> = TrafficGenerator::new(0x5eed, MixConfig::realistic())
                .take(100 * FRAMES)
                .into_iter()
                .filter(|f| {
                    let tag = ["", "+vlan", "+qinq"].get(f.expected.vlans.len()).copied().unwrap_or("+more");
                    format!("{:?}{tag}", f.kind) == kind
                })
                .take(FRAMES)
                .map(|f| f.bytes)
                .collect();
            if frames.is_empty() {
                return Err(format!("no frame of kind {kind}; {USAGE}"));
            }
            frames
        }
    };
    let acc = match lib {
        "lb-core" => run(&frames, rounds, lb_core_tuple),
        "smoltcp" => run(&frames, rounds, smoltcp_tuple),
        "etherparse" => run(&frames, rounds, etherparse_tuple),
        _ => return Err(format!("{lib}: {USAGE}")),
    };
    println!("{lib} {rounds} rounds of {} frames: {acc}", frames.len());
    Ok(())
}
