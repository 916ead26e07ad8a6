//! Node settings: a MUX on [`MUX_IP`] and a host agent on any host of the fabric, both behind the
//! router [`GATEWAY`], with an underlay MTU of 9000 (jumbo frames leave room for the 50 bytes of
//! VxLAN over IPv4, RFC 7348). Change a setting with struct update syntax:
//! `MuxNode { maglev_size: 251, ..mux_node_flows(7, 256) }`.

use core::net::IpAddr;

use lb_core::config::NodeBase;
use lb_core::paths::{HostNode, MuxNode, ReturnPath};
use lb_core::wire::VxlanEncap;

use crate::addr::*;

/// A MUX with room for 100,000 flows and a Maglev table of 65,537 entries (the Maglev paper's
/// prime, M = 65537), hashing with `hash_seed`.
pub fn mux_node(hash_seed: u64) -> MuxNode {
    MuxNode {
        base: NodeBase {
            mac: MUX_MAC,
            gateway_mac: GATEWAY,
            underlay: IpAddr::from(MUX_IP),
            ttl: 64,
            mtu: 9000,
            hash_seed,
            flow_capacity: 100_000,
        },
        maglev_size: 65_537,
    }
}

/// [`mux_node`] with room for `flows` flows.
pub fn mux_node_flows(hash_seed: u64, flows: usize) -> MuxNode {
    let mut node = mux_node(hash_seed);
    node.base.flow_capacity = flows;
    node
}

/// The host agent of the host at `addr`, behind the MUX at [`MUX_IP`]: room for 100,000 flows, SNAT
/// ports quarantined 60 s after use, SNAT exhaustion answered by a drop, no MSS clamping.
pub fn host_node(addr: [u8; 4], return_path: ReturnPath) -> HostNode {
    HostNode {
        base: NodeBase {
            mac: host_mac(addr),
            gateway_mac: GATEWAY,
            underlay: IpAddr::from(addr),
            ttl: 64,
            mtu: 9000,
            hash_seed: 7,
            flow_capacity: 100_000,
        },
        muxes: vec![IpAddr::from(MUX_IP)],
        return_path,
        snat_quarantine_secs: 60,
        reset_on_snat_exhaustion: false,
        mss_clamp: None,
    }
}

/// [`host_node`] with room for `flows` flow entries (two a connection).
pub fn host_node_flows(addr: [u8; 4], return_path: ReturnPath, flows: usize) -> HostNode {
    let mut node = host_node(addr, return_path);
    node.base.flow_capacity = flows;
    node
}

/// The VxLAN tunnel from the MUX to host A with `vni`, over an underlay of `mtu`.
pub fn tunnel_to_host_a(vni: u32, mtu: u16) -> VxlanEncap {
    VxlanEncap::new(MUX_MAC, HOST_MAC, IpAddr::from(MUX_IP), IpAddr::from(HOST_A), vni, 64, mtu)
        .expect("a tunnel between two IPv4 underlay addresses")
}

/// [`mux_node`] over an underlay of `mtu` bytes (1500: what fits a tunnel is 50 bytes less).
pub fn mux_node_mtu(hash_seed: u64, mtu: u16) -> MuxNode {
    let mut node = mux_node(hash_seed);
    node.base.mtu = mtu;
    node
}

/// [`host_node`] over an underlay of `mtu` bytes.
pub fn host_node_mtu(addr: [u8; 4], return_path: ReturnPath, mtu: u16) -> HostNode {
    let mut node = host_node(addr, return_path);
    node.base.mtu = mtu;
    node
}
