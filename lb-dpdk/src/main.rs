//! `lb-dpdk`: the load balancer's program. For now it has one subcommand, `inspect`, which shows what
//! the `lb-core` wire layer sees in a pcap; the MUX / host-agent poll loop comes with its own issue.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod inspect;

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Inspect(args) => inspect::main(&args),
    }
}
