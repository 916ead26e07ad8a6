//! A node's own settings, by role: its link to the fabric and the sizes of its tables. The load
//! balancer it serves is configured beside them (see [`super::LoadBalancer`]); a node file holds
//! both (see [`super::node`]).

use alloc::vec::Vec;
use core::net::IpAddr;

use crate::wire::MacAddr;

/// What every node has, whatever its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBase {
    /// MAC of the node's fabric port.
    pub mac: MacAddr,
    /// MAC of the next hop towards the fabric (the router): the default next hop, for underlay
    /// peers without one of their own (see `Node::set_next_hop`), a MUX's relayed responses and
    /// a host agent's Direct Server Return frames and resets. 00:00:00:00:00:00 while unknown (a
    /// node file without `gatewayMac`, until the program sets it): frames that would leave for it
    /// are dropped as `no_next_hop`.
    pub gateway_mac: MacAddr,
    /// The node's underlay address (a MUX's outer source; where MUXes tunnel to a host).
    pub underlay: IpAddr,
    /// Outer TTL / hop limit.
    pub ttl: u8,
    /// Underlay IP MTU.
    pub mtu: u16,
    /// Seed of every flow hash; the same on every node of a deployment.
    pub hash_seed: u64,
    /// Flow-table capacity (a host agent's connections take two entries each).
    pub flow_capacity: usize,
}

/// A MUX's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxNode {
    /// What every node has.
    pub base: NodeBase,
    /// Maglev table size (a prime).
    pub maglev_size: u32,
}

/// How a host agent's responses and SNAT connections leave the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPath {
    /// VxLAN to a MUX, which strips the tunnel and forwards to the client (the default of a node's
    /// JSON configuration: the MUX sees both directions of every connection).
    ViaMux,
    /// Straight to the fabric router, with the VIP as source (Direct Server Return).
    Direct,
}

/// A host agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNode {
    /// What every node has.
    pub base: NodeBase,
    /// Underlay addresses of the MUXes that take responses back (one is picked by flow hash).
    pub muxes: Vec<IpAddr>,
    /// How responses leave.
    pub return_path: ReturnPath,
    /// Seconds a released SNAT port waits before it is handed out again.
    pub snat_quarantine_secs: u32,
    /// When a backend's SNAT ports are exhausted, answer its SYN with a RST (else drop it).
    pub reset_on_snat_exhaustion: bool,
    /// Lower the MSS option of TCP SYNs and SYN-ACKs crossing the host agent, both ways, to this
    /// (Ananta clamps to 1440 so that tunnelled segments fit the underlay); `None`: leave it. In
    /// [`MSS_CLAMP_MIN`]`..=`[`MSS_CLAMP_MAX`]; IPv6 segments are clamped to at least
    /// [`MSS_CLAMP_MIN_IPV6`].
    pub mss_clamp: Option<u16>,
}

/// The lowest MSS clamp: 536, the MSS every IPv4 host accepts (RFC 9293 3.7.1, the 576-byte
/// datagram less 40 bytes of headers).
pub const MSS_CLAMP_MIN: u16 = 536;
/// The highest MSS clamp: a jumbo frame's payload.
pub const MSS_CLAMP_MAX: u16 = 9000;
/// The lowest MSS an IPv6 segment is clamped to: 1220, the IPv6 minimum MTU (1280, RFC 8200 5)
/// less 60 bytes of headers; a lower clamp applies to IPv4 only.
pub const MSS_CLAMP_MIN_IPV6: u16 = 1220;

/// The settings of one node, by role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// A MUX.
    Mux(MuxNode),
    /// A host agent.
    Host(HostNode),
}

impl NodeRole {
    /// What every node has.
    pub fn base(&self) -> &NodeBase {
        match self {
            NodeRole::Mux(m) => &m.base,
            NodeRole::Host(h) => &h.base,
        }
    }

    /// What every node has, to change.
    pub fn base_mut(&mut self) -> &mut NodeBase {
        match self {
            NodeRole::Mux(m) => &mut m.base,
            NodeRole::Host(h) => &mut h.base,
        }
    }

    /// `"mux"` or `"host"`, as node files name the roles.
    pub fn name(&self) -> &'static str {
        match self {
            NodeRole::Mux(_) => "mux",
            NodeRole::Host(_) => "host",
        }
    }
}
