//! `lb-dpdk`: the load balancer's program. `run` runs the MUX or the host agent of a node file on a
//! pcap (the pure-Rust default) or on DPDK (feature `dpdk`); `inspect` shows what the wire layer sees
//! in a pcap.

#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Layers, each using only those listed before it: the kernel's tables, counters and the port
// trait; the poll loop; the ports; the program (the live ports' control, probes, metrics, `run`,
// `inspect`).
mod netlink;
mod port;
mod stats;
mod worker;
// The ports are the modules with unsafe code: the DPDK bindings, the AF_XDP rings and the
// AF_PACKET ring, each behind the port trait.
#[allow(dead_code, unsafe_code)]
mod afpacket;
#[allow(dead_code, unsafe_code)]
mod afxdp;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)]
mod dpdk;
mod pcap;

mod live;

// ExaBGP as a child process (its parent-death signal is set between fork and exec).
#[allow(unsafe_code)]
mod bgp;
mod datapath;
mod etcd;
mod history;
mod inspect;
mod metrics;
mod probe;
mod run;

/// Command line of `lb-dpdk`.
#[derive(Debug, Parser)]
#[command(name = "lb-dpdk", version, about = "Azure-SLB-style L4 load balancer data plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a pcap and print what the wire layer sees: per-frame flow keys (--verbose) and a summary.
    Inspect(inspect::InspectArgs),
    /// Run the MUX or the host agent a node file describes, on a pcap (default) or DPDK.
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Inspect(args) => inspect::main(&args),
        Command::Run(args) => run::main(&args),
    }
}
