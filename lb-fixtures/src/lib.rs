//! Fixtures shared by lb-core's integration tests, the benches, the fuzz targets and lb-ffi's tests:
//! the addresses of one fabric ([`addr`]), a builder for load balancers ([`build`]: frontends, pools
//! of backends on hosts, probes, load-balancing rules, inbound NAT rules and pools, outbound rules),
//! the topologies the tests and benches run ([`topology`]), node settings for a MUX and for host
//! agents ([`node`]), and client frames to a VIP, written and read back with etherparse, an
//! independent parser ([`frames`]).
//!
//! Everything is re-exported at the root: `use lb_fixtures::*;`.
//!
//! lb-core's integration tests dev-depend on this crate although it depends on lb-core: cargo builds
//! one lb-core for both. Unit tests inside lb-core's `src/` cannot use it (there the crate under test
//! and the one this crate links are two different crates).

pub mod addr;
pub mod build;
pub mod frames;
pub mod node;
pub mod topology;

pub use addr::*;
pub use build::*;
pub use frames::*;
pub use node::*;
pub use topology::*;

#[cfg(test)]
mod tests;
