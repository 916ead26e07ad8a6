//! The MUX benches' setup, shared by `benches/mux.rs` (criterion) and `examples/mux_min.rs`
//! (the minimum of many short samples, for a shared VM, and a fixed workload for callgrind).

use std::net::{IpAddr, Ipv4Addr};

use lb_core::config::LoadBalancer;
use lb_core::paths::{BurstFrame, Mux, Verdict};
use lb_core::wire::parse_flow_key;
use lb_fixtures::{backend, ha_ports, v4, v6, Connection, Floating, LbBuilder};
use lb_testkit::{MixConfig, TrafficGenerator, VIPS_V4, VIPS_V6};

/// Headroom before every frame, for the outer headers.
pub const HEADROOM: usize = 128;
/// Frames a burst.
pub const BURST: usize = 32;
/// Frames [`probes`] makes.
pub const PROBES: usize = 4096;

/// The load balancer every MUX bench runs: every VIP of lb-testkit's generator with an HA-ports
/// rule onto one of two pools (IPv4 and IPv6 members) of 32 members each.
pub fn config() -> LoadBalancer {
    let vips = VIPS_V4.iter().map(|&a| IpAddr::V4(a)).chain(VIPS_V6.iter().map(|&a| IpAddr::V6(a)));
    let mut b = vips.enumerate().fold(LbBuilder::new("bench"), |b, (i, v)| b.frontend(&format!("vip{i}"), v));
    for (name, ipv6, vni) in [("web4", false, 100), ("web6", true, 101)] {
        let members = (0..32u8).map(|m| {
            let dip = if ipv6 { v6(m) } else { v4(m) };
            backend(format!("{name}-{m}"), dip, Ipv4Addr::new(172, 16, 10, 20 + m))
        });
        b = b.pool(name, vni, members);
    }
    // Every VIP takes every protocol and port (HA ports), so that the whole mix is balanced.
    for f in 0..VIPS_V4.len() + VIPS_V6.len() {
        let r = ha_ports(&format!("ha{f}"), f, usize::from(f >= VIPS_V4.len())).idle_minutes(30);
        // Two VIPs sending every port to one pool need floating IP (the backends could not tell
        // their connections apart otherwise); the first of each IP version goes without.
        b = b.rule(if f % VIPS_V4.len() != 0 { r.floating_ip() } else { r });
    }
    b.build()
}

/// A MUX of [`config`] with room for `flows` flows and the probe frames' own.
pub fn mux(flows: usize) -> Mux {
    Mux::with_flow_memory(crate::mux_node(flows + PROBES), config(), lb_core::mem::huge_pages).unwrap()
}

/// A frame in a buffer with headroom before it, handed to the MUX where it lies (as the DPDK
/// program hands it its mbufs): no array of views is built for each burst.
pub struct InFrame {
    /// The buffer: headroom, then the frame.
    pub buf: Vec<u8>,
    /// The frame's length.
    pub len: usize,
}

impl BurstFrame for InFrame {
    #[inline(always)]
    fn parts(&mut self) -> (&mut [u8], usize, usize) {
        (&mut self.buf, HEADROOM, self.len)
    }
}

/// Inbound frames of the realistic mix (the MUX only ever sees traffic towards its VIPs), each in
/// a buffer with headroom.
pub fn probes() -> Vec<InFrame> {
    let vips: Vec<IpAddr> = VIPS_V4.iter().map(|&a| a.into()).chain(VIPS_V6.iter().map(|&a| a.into())).collect();
    let mut gen = TrafficGenerator::new(9, MixConfig::realistic());
    let mut out = Vec::new();
    while out.len() < PROBES {
        let f = gen.next_frame();
        if parse_flow_key(&f.bytes).is_ok_and(|k| vips.contains(&k.dst_ip())) {
            let mut buf = vec![0u8; HEADROOM + f.bytes.len()];
            buf[HEADROOM..].copy_from_slice(&f.bytes);
            out.push(InFrame { buf, len: f.bytes.len() });
        }
    }
    out
}

/// Fills the table with `n` established TCP flows of other clients.
pub fn fill(mux: &mut Mux, n: usize) {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([100, 64, 0, 0], VIPS_V4[0].octets(), 64)
        .tcp(1, 443, 1, 1000)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    let mut buf = vec![0u8; HEADROOM + frame.len()];
    for i in 0..n as u32 {
        buf[HEADROOM..].copy_from_slice(&frame);
        // Source address 100.64.x.y and port: a distinct flow each time.
        buf[HEADROOM + 28..HEADROOM + 30].copy_from_slice(&((i >> 16) as u16).to_be_bytes());
        buf[HEADROOM + 34..HEADROOM + 36].copy_from_slice(&(i as u16).to_be_bytes());
        let len = frame.len();
        assert!(matches!(mux.process(&mut buf, HEADROOM, len, 0), Verdict::Forward { .. }));
    }
}

/// Runs `probes` through `mux` in bursts of [`BURST`]; returns how many were forwarded.
pub fn run_bursts(mux: &mut Mux, probes: &mut [InFrame], now: u32) -> usize {
    let mut forwarded = 0;
    for burst in probes.chunks_mut(BURST) {
        let mut out = [Verdict::Drop(lb_core::paths::DropReason::Malformed); BURST];
        mux.process_burst(burst, now, &mut out);
        forwarded += out.iter().filter(|v| matches!(v, Verdict::Forward { .. })).count();
    }
    forwarded
}

/// The DPDK bench's case outside DPDK: the MUX of node file `node` and the first `count` frames of
/// lb-testkit's realistic mix with seed `seed` (`scripts/dpdk-bench.sh` replays 4,000 with seed 42,
/// clients' and servers' frames alike), each in a buffer with headroom.
pub fn demo(node: &std::path::Path, count: usize, seed: u64) -> Result<(Mux, Vec<InFrame>), String> {
    let cfg = lb_core::config::node::load(node).map_err(|e| format!("{}: {e}", node.display()))?;
    let lb_core::paths::NodeRole::Mux(settings) = cfg.role else {
        return Err(format!("{}: not a MUX", node.display()));
    };
    let mux = Mux::with_flow_memory(settings, cfg.lb, lb_core::mem::huge_pages).map_err(|e| format!("{e:?}"))?;
    let frames = TrafficGenerator::new(seed, MixConfig::realistic())
        .take(count)
        .into_iter()
        .map(|f| {
            let mut buf = vec![0u8; HEADROOM + f.bytes.len()];
            buf[HEADROOM..].copy_from_slice(&f.bytes);
            InFrame { buf, len: f.bytes.len() }
        })
        .collect();
    Ok((mux, frames))
}
