//! Shared helpers for the criterion benchmarks. The peer-crate extractors live in
//! `lb_testkit::oracle` (the property tests use the same code as oracles).

pub mod mux_setup;

pub use lb_testkit::oracle::{etherparse_tuple, smoltcp_tuple, Tuple5};

/// Folds a parser's 5-tuple into an accumulator (1 for a frame it refused), so that the benches
/// keep every parser's work and compare like with like.
#[inline(always)]
pub fn fold_tuple(acc: u64, t: Option<Tuple5>) -> u64 {
    match t {
        Some(t) => acc
            .wrapping_add(u64::from(t.src_port) ^ u64::from(t.dst_port) << 16 ^ u64::from(t.protocol) << 32)
            .wrapping_add(u64::from(t.src[3]) ^ u64::from(t.dst[15])),
        None => acc.wrapping_add(1),
    }
}

/// lb-core's flow key reduced to a [`Tuple5`].
#[inline]
pub fn lb_core_tuple(frame: &[u8]) -> Option<Tuple5> {
    let k = lb_core::wire::parse_flow_key(frame).ok()?;
    Some(Tuple5 { src: k.src_addr, dst: k.dst_addr, protocol: k.protocol, src_port: k.src_port, dst_port: k.dst_port })
}

/// The MUX node every bench runs (lb-fixtures' MUX, hash seed 42), with room for `flows` flows.
pub fn mux_node(flows: usize) -> lb_core::paths::MuxNode {
    lb_fixtures::mux_node_flows(42, flows)
}
