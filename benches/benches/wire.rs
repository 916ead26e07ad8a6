//! Wire-layer benchmarks: flow-key extraction on a realistic traffic mix (lb-core against etherparse
//! and smoltcp on the same frames, in the same run) and VxLAN encap/decap.
//!
//! `cargo bench -p lb-benches --bench wire`. Throughput is in elements (packets), so criterion
//! prints Melem/s = Mpps next to the time per batch.

use std::hint::black_box;
use std::net::Ipv6Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lb_benches::{etherparse_tuple, fold_tuple, lb_core_tuple, smoltcp_tuple};
use lb_core::wire::vxlan::decapsulate;
use lb_core::wire::{parse_flow_key, VxlanEncap};
use lb_fixtures::{tunnel_to_host_a, HOST_MAC, MUX_MAC};
use lb_testkit::{MixConfig, TrafficGenerator};

/// The flow-key comparison runs on two batches of the same realistic mix:
/// - `hot`: 256 frames whose header lines stay in L1/L2 across iterations: the parsers' own cost;
/// - `cold`: 1024 frames of IMIX sizes (about 600 KiB, larger than a typical per-core L2), so
///   every frame's first cache line comes from L3, as a frame fresh from the NIC does. This one is
///   dominated by memory latency, not by the parser.
const HOT: usize = 256;
const COLD: usize = 1024;

fn mix(n: usize) -> Vec<Vec<u8>> {
    TrafficGenerator::new(0x5eed, MixConfig::realistic()).take(n).into_iter().map(|f| f.bytes).collect()
}

fn flow_key(c: &mut Criterion) {
    for (name, n) in [("hot", HOT), ("cold", COLD)] {
        let frames = mix(n);
        // All parsers must agree on every frame they all decode, or the comparison is meaningless.
        for f in &frames {
            if let (Some(mut a), Some(b)) = (lb_core_tuple(f), smoltcp_tuple(f)) {
                if !matches!(a.protocol, 6 | 17) {
                    // lb-core reports the ICMP echo identifier as the ports; the others report none.
                    (a.src_port, a.dst_port) = (b.src_port, b.dst_port);
                }
                assert_eq!(a, b, "lb-core and smoltcp disagree on {f:02x?}");
            }
        }
        let mut g = c.benchmark_group(format!("flow_key/{name}"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("lb-core", |b| {
            b.iter(|| {
                let mut acc = 0u64;
                for f in black_box(frames.as_slice()) {
                    acc = match parse_flow_key(f) {
                        Ok(k) => acc
                            .wrapping_add(
                                u64::from(k.src_port) ^ u64::from(k.dst_port) << 16 ^ u64::from(k.protocol) << 32,
                            )
                            .wrapping_add(u64::from(k.src_addr[3]) ^ u64::from(k.dst_addr[15])),
                        Err(_) => acc.wrapping_add(1),
                    };
                }
                acc
            })
        });
        g.bench_function("smoltcp", |b| {
            b.iter(|| black_box(frames.as_slice()).iter().fold(0u64, |acc, f| fold_tuple(acc, smoltcp_tuple(f))))
        });
        g.bench_function("etherparse", |b| {
            b.iter(|| black_box(frames.as_slice()).iter().fold(0u64, |acc, f| fold_tuple(acc, etherparse_tuple(f))))
        });
        g.finish();
    }
}

fn vxlan(c: &mut Criterion) {
    let v4 = tunnel_to_host_a(42, 9000);
    let (mux6, host6) = (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 5, 10), Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 10, 20));
    let v6 = |zero| {
        let t = VxlanEncap::new(MUX_MAC, HOST_MAC, mux6.into(), host6.into(), 42, 64, 9000).unwrap();
        t.with_zero_ipv6_udp_checksum(zero)
    };
    let v6_zero = v6(true);
    let v6_csum = v6(false);
    let frames = mix(HOT);
    const HEADROOM: usize = 128;
    let mut g = c.benchmark_group("vxlan");
    // The smallest and the largest frame of the mix: a bare TCP segment and a full-size one.
    let smallest = frames.iter().min_by_key(|f| f.len()).cloned().unwrap();
    let largest = frames.iter().max_by_key(|f| f.len()).cloned().unwrap();
    for (name, inner) in [(format!("{}B", smallest.len()), smallest), (format!("{}B", largest.len()), largest)] {
        let len = inner.len();
        let mut buf = vec![0u8; HEADROOM + len];
        buf[HEADROOM..].copy_from_slice(&inner);
        g.throughput(Throughput::Elements(1));
        let mut hash = 0u32;
        for (tname, t) in [("v4", &v4), ("v6-zero-csum", &v6_zero), ("v6-udp-csum", &v6_csum)] {
            g.bench_function(format!("encap/{tname}/{name}"), |b| {
                b.iter(|| {
                    hash = hash.wrapping_add(0x9e37_79b9);
                    t.encapsulate(black_box(&mut buf), HEADROOM, len, hash)
                })
            });
            let start = t.encapsulate(&mut buf, HEADROOM, len, 7).unwrap();
            let outer = buf[start..].to_vec();
            g.bench_function(format!("decap/{tname}/{name}"), |b| {
                b.iter(|| decapsulate(black_box(&outer)).map(|d| d.inner_offset))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, flow_key, vxlan);
criterion_main!(benches);
