//! `lb-gen --count N --seed S [--mix realistic|uniform] --out FILE.pcap`
//!
//! Writes N generated Ethernet frames to a pcap file and prints how many of
//! each kind it wrote.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::process::ExitCode;

use lb_testkit::{FrameKind, MixConfig, TrafficGenerator};

const USAGE: &str = "usage: lb-gen --count N --seed S [--mix realistic|uniform] --out FILE.pcap";

struct Args {
    count: usize,
    seed: u64,
    mix: MixConfig,
    mix_name: String,
    out: String,
}

fn parse_args() -> Result<Args, String> {
    let mut count = None;
    let mut seed = None;
    let mut mix_name = String::from("realistic");
    let mut out = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("missing value after {flag}"))?;
        match flag.as_str() {
            "--count" | "-n" => count = Some(value.parse().map_err(|e| format!("--count {value}: {e}"))?),
            "--seed" | "-s" => seed = Some(value.parse().map_err(|e| format!("--seed {value}: {e}"))?),
            "--mix" | "-m" => mix_name = value,
            "--out" | "-o" => out = Some(value),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let mix = match mix_name.as_str() {
        "realistic" => MixConfig::realistic(),
        "uniform" => MixConfig::uniform(),
        other => return Err(format!("unknown mix {other} (realistic|uniform)")),
    };
    Ok(Args {
        count: count.ok_or("--count is required")?,
        seed: seed.ok_or("--seed is required")?,
        mix,
        mix_name,
        out: out.ok_or("--out is required")?,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("lb-gen: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut gen = TrafficGenerator::new(args.seed, args.mix);
    let mut counts: BTreeMap<FrameKind, usize> = BTreeMap::new();
    let mut bytes = 0usize;
    let frames = (0..args.count).map(|_| {
        let f = gen.next_frame();
        *counts.entry(f.kind).or_default() += 1;
        bytes += f.bytes.len();
        f.bytes
    });
    let file = match std::fs::File::create(&args.out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lb-gen: cannot create {}: {e}", args.out);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = lb_testkit::write_pcap(BufWriter::new(file), frames) {
        eprintln!("lb-gen: writing {}: {e}", args.out);
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {} frames ({} bytes of frames) to {} (seed {}, mix {})",
        args.count, bytes, args.out, args.seed, args.mix_name
    );
    for kind in FrameKind::ALL {
        let n = counts.get(&kind).copied().unwrap_or(0);
        println!("{:>18} {:>10}", kind.name(), n);
    }
    ExitCode::SUCCESS
}
