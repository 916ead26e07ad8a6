//! Shared helpers for the criterion benchmarks. The peer-crate extractors live in
//! `lb_testkit::oracle` (the property tests use the same code as oracles).

pub use lb_testkit::oracle::{etherparse_tuple, smoltcp_tuple, Tuple5};

/// lb-core's flow key reduced to a [`Tuple5`].
#[inline]
pub fn lb_core_tuple(frame: &[u8]) -> Option<Tuple5> {
    let k = lb_core::wire::parse_flow_key(frame).ok()?;
    Some(Tuple5 { src: k.src_addr, dst: k.dst_addr, protocol: k.protocol, src_port: k.src_port, dst_port: k.dst_port })
}
