//! The MUX timed for a shared VM, as `flow_key_min` times the flow key: many passes over a set of
//! frames, each burst of 32 timed on its own, and the minimum pass kept (other tenants can only
//! make a pass slower). A fixed workload too, for `valgrind --tool=callgrind`: the difference
//! between two `--samples` counts, divided by the frames of the extra passes, is the MUX's
//! instructions a packet (about 10 of them the harness's: two clock reads a burst of 32, and the
//! count of the verdicts).
//!
//! ```text
//! mux_min established [FLOWS]     # the mux bench's probe frames, FLOWS (10,000) other flows in the table
//! mux_min demo NODE_FILE          # the DPDK bench's case: that node's MUX, 4,000 frames of seed 42
//!         [--frames K]            # only the first K frames (64: all of them in L1)
//!         [--samples S]           # passes timed (default 3,000)
//! ```
//!
//! `cargo run --release -p lb-benches --example mux_min -- demo examples/demo-mux.node.json`

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use lb_benches::mux_setup::{demo, fill, mux, probes, InFrame, BURST};
use lb_core::paths::{DropReason, Mux, Verdict};

/// Seconds the flows of every pass are seen at (the first, untimed pass creates the new ones).
const NOW: u32 = 2;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str| -> Result<Option<usize>, String> {
        match args.iter().position(|a| a == name) {
            Some(i) => {
                let v = args.get(i + 1).ok_or(format!("{name} needs a number"))?;
                v.parse().map(Some).map_err(|_| format!("{name} {v}: not a number"))
            }
            None => Ok(None),
        }
    };
    let samples = option("--samples")?.unwrap_or(3000);
    if samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    let (mut m, mut frames, what) = match args.first().map(String::as_str) {
        Some("demo") => {
            let node = args.get(1).filter(|a| !a.starts_with("--")).ok_or("demo needs a node file")?;
            let (m, frames) = demo(Path::new(node), 4000, 42)?;
            (m, frames, format!("{node}, frames of seed 42"))
        }
        Some("established") | None => {
            let flows = match args.get(1).filter(|a| !a.starts_with("--")) {
                Some(a) => a.parse().map_err(|_| format!("{a}: not a number of flows"))?,
                None => 10_000,
            };
            let mut m = mux(flows);
            fill(&mut m, flows);
            (m, probes(), format!("established flows, {flows} more in the table"))
        }
        Some(other) => return Err(format!("{other}: expected `established` or `demo`")),
    };
    if let Some(k) = option("--frames")? {
        frames.truncate(k.max(1));
    }
    let forwarded = pass(&mut m, &mut frames, 1).1;
    let mut times: Vec<f64> =
        (0..samples).map(|_| pass(black_box(&mut m), &mut frames, NOW).0 as f64 / frames.len() as f64).collect();
    times.sort_by(f64::total_cmp);
    let best = times[0];
    let quartile = |q: usize| times[(times.len() - 1) * q / 4];
    // The mean is what a program's own average (lb-dpdk's engine time) compares with. The
    // quartiles show the machine's state: on a shared VM a process may run either fast or much
    // slower, for its whole life or for seconds at a time (other tenants), so a minimum and a
    // median far apart say the run straddled both.
    println!(
        "MUX, {what}: {} frames, {forwarded} forwarded; {samples} passes: minimum {best:.2} ns a frame ({:.1} Mpps), \
         quartiles {:.2} / {:.2} / {:.2} ns, mean {:.2} ns",
        frames.len(),
        1e3 / best,
        quartile(1),
        quartile(2),
        quartile(3),
        times.iter().sum::<f64>() / times.len() as f64
    );
    Ok(())
}

/// One pass over `frames` in bursts: the nanoseconds spent in the MUX and the frames forwarded.
fn pass(m: &mut Mux, frames: &mut [InFrame], now: u32) -> (u128, usize) {
    let (mut spent, mut forwarded) = (0, 0);
    for burst in frames.chunks_mut(BURST) {
        let mut out = [Verdict::Drop(DropReason::Malformed); BURST];
        let t = Instant::now();
        m.process_burst(burst, now, &mut out);
        spent += t.elapsed().as_nanos();
        forwarded += out.iter().filter(|v| matches!(v, Verdict::Forward { .. })).count();
    }
    (spent, forwarded)
}
