//! The SLB host agent: the half of the load balancer that runs beside the backends (the Host Agent
//! of the Ananta paper, SIGCOMM 2013), with the inbound NAT, floating IP, outbound rules and TCP
//! reset on idle that Azure Load Balancer's public documentation describes
//! (<https://learn.microsoft.com/azure/load-balancer/outbound-rules>,
//! <https://learn.microsoft.com/azure/load-balancer/load-balancer-floating-ip>,
//! <https://learn.microsoft.com/azure/load-balancer/load-balancer-tcp-reset>).
//!
//! - From the fabric ([`HostAgent::from_fabric`], in `fabric.rs`): a VxLAN frame from a MUX is
//!   decapsulated in place, its VNI and backend tag (which backend the MUX chose; several of one
//!   pool may run on one host) checked, the flow recorded, and the inner frame DNATed
//!   (VIP:frontendPort → DIP:backendPort, checksums updated incrementally) or, with floating IP,
//!   delivered with the VIP untouched. Replies to SNAT connections come the same way and are
//!   translated back to the backend's own address and port.
//! - From a backend ([`HostAgent::from_backend`], in `backend.rs`): a response of a recorded flow is
//!   reverse-NATed (DIP:backendPort → VIP:frontendPort) and sent back through a MUX (VxLAN) or
//!   straight to the client (Direct Server Return), as the node is configured. A connection the
//!   backend opens is SNATed to a port of its own block on an outbound frontend address (see
//!   [`crate::config::snat`]). Anything else is dropped and counted: nothing leaves with a private
//!   source address.
//! - Timers ([`HostAgent::expire`], in `expiry.rs`): idle flows are removed, their SNAT ports
//!   released (they come back after a quarantine), and, where the rule asks for TCP reset, a RST
//!   goes to both ends with the sequence numbers the flow last showed.
//! - Reconfiguration ([`HostAgent::update`], in `update.rs`): established connections follow their
//!   backend and frontend into the new configuration; the rest are flushed.
//!
//! Every connection has two entries in the flow table, one per direction, each naming the other's
//! slot; a packet refreshes both (no second hash). `connection.rs` keeps the pair. SNAT ports are
//! shared between TCP connections to different destinations once a block has no fresh port left; a
//! UDP flow always takes a port of its own (one port per UDP 5-tuple, never shared while in use).
//!
//! Fragments: a first fragment records how its datagram was translated; later fragments (no ports)
//! get the same address translation from that record. ICMP errors (fragmentation needed, packet too
//! big, unreachable) are found by the connection they quote and translated like it, in the outer
//! header and in the quote, so path MTU discovery works through the NAT in both directions. Both
//! are in `related.rs`.

mod backend;
mod connection;
mod expiry;
mod fabric;
mod related;
mod update;

use crate::paths::drops::drop_reasons;
use crate::paths::next_hop::{distinct, NextHops};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use self::fabric::Tunnel;
use super::listen::{addr16, Vips};
use super::mux::Traffic;
use crate::config::{ConfigError, LoadBalancer, Protocol, SnatGrant};
use crate::tables::snat::{SnatAllocator, SnatCounters, SnatError};
use crate::tables::{FlowSlot, FlowTable, FlowTableError, FlowTuple, FlowValue};
use crate::wire::ethernet::ETHERNET_HEADER_LEN;
use crate::wire::tcp::clamp_mss;
use crate::wire::vxlan::{decapsulate, OUTER_LEN_V4, OUTER_LEN_V6};
use crate::wire::{ip_proto, FlowKey, Fragment, IpVersion, MacAddr, TcpFlags, VxlanEncap};

pub use crate::config::settings::{HostNode, ReturnPath, MSS_CLAMP_MAX, MSS_CLAMP_MIN, MSS_CLAMP_MIN_IPV6};

/// Why a host agent refuses a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// Invalid configuration.
    Config(ConfigError),
    /// A tunnel to a MUX could not be built.
    Tunnel(crate::wire::WireError),
    /// The flow table could not be allocated.
    FlowTable(FlowTableError),
    /// The SNAT blocks could not be laid out.
    Snat(SnatError),
    /// `ReturnPath::ViaMux` with no MUX address.
    NoMux,
    /// An MSS clamp outside [`MSS_CLAMP_MIN`]`..=`[`MSS_CLAMP_MAX`].
    MssClamp(u16),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Config(e) => write!(f, "configuration: {e}"),
            HostError::Tunnel(e) => write!(f, "tunnel to a MUX: {e}"),
            HostError::FlowTable(e) => write!(f, "flow table: {e}"),
            HostError::Snat(e) => write!(f, "SNAT: {e}"),
            HostError::NoMux => f.write_str("return path via MUX but no MUX address"),
            HostError::MssClamp(mss) => {
                write!(f, "MSS clamp {mss} outside {MSS_CLAMP_MIN}..={MSS_CLAMP_MAX}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for HostError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HostError::Config(e) => Some(e),
            HostError::Tunnel(e) => Some(e),
            HostError::FlowTable(e) => Some(e),
            HostError::Snat(e) => Some(e),
            HostError::NoMux | HostError::MssClamp(_) => None,
        }
    }
}

drop_reasons! {
    /// Why the host agent dropped a frame.
    pub enum HostDrop, HOST_DROPS {
        /// Did not parse (outer or inner).
        Malformed = 0 => "malformed",
        /// A tunnel frame not addressed to this host.
        NotForThisHost = 1 => "not_for_this_host",
        /// The VNI or backend tag names no backend of this host.
        UnknownBackend = 2 => "unknown_backend",
        /// To a VIP, but no rule matches its protocol and port, and no flow.
        NoRule = 3 => "no_rule",
        /// From a backend, matching no flow and no outbound rule (never sent with a private source).
        NoFlow = 4 => "no_flow",
        /// The backend's SNAT ports are exhausted.
        SnatExhausted = 5 => "snat_exhausted",
        /// A later fragment whose first fragment was not seen.
        FragmentUnknown = 6 => "fragment_unknown",
        /// Not enough headroom or over the MTU for the tunnel to a MUX.
        Encap = 7 => "encap",
        /// An ICMP error whose quoted packet belongs to no connection of this host.
        IcmpUntranslated = 8 => "icmp_untranslated",
        /// A new connection found no room for both its entries (the flow table is too small for the
        /// load: its `evicted` counter moves too).
        FlowTableFull = 9 => "flow_table_full",
        /// The next hop is not known yet: the MUX's tunnel has no MAC of its own and the node no
        /// gateway MAC, or a Direct Server Return frame finds no gateway MAC (a node file without
        /// `gatewayMac`, before the program learned it). Nothing leaves with a zero destination MAC.
        NoNextHop = 10 => "no_next_hop",
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostVerdict {
    /// Hand `buf[start..start + len]` to local backend `backend` (see [`HostAgent::local_backends`]).
    Deliver {
        /// Local backend index.
        backend: usize,
        /// Frame start.
        start: usize,
        /// Frame length.
        len: usize,
    },
    /// Send `buf[start..start + len]` on the fabric port.
    Transmit {
        /// Frame start.
        start: usize,
        /// Frame length.
        len: usize,
    },
    /// Drop it.
    Drop(HostDrop),
}

/// Where a frame the host agent makes on its own (a TCP reset) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEgress {
    /// To a local backend.
    Backend(usize),
    /// On the fabric port.
    Fabric,
}

/// The host agent's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostCounters {
    /// Frames from MUXes delivered to backends (load-balanced and NAT rules).
    pub inbound: Traffic,
    /// Responses sent back towards clients.
    pub responses: Traffic,
    /// Frames of backend-initiated connections sent out with an SNAT address.
    pub snat_out: Traffic,
    /// Replies to them delivered back to the backends.
    pub snat_in: Traffic,
    /// Per local backend: frames delivered to it.
    pub backends: Vec<Traffic>,
    /// TCP resets sent (idle timeout, SNAT exhaustion).
    pub resets: u64,
    /// Connections torn down because a reconfiguration removed what they used.
    pub flushed: u64,
    /// Second chances: packets a MUX flagged that this host had no flow for, forwarded to the
    /// alternate backend's host, and the later packets of their connections.
    pub second_chance: Traffic,
    /// Backends' packets too big for the tunnel to a MUX, answered with an ICMPv4 "fragmentation
    /// needed" or ICMPv6 "packet too big" error to the backend (path MTU discovery, RFC 1191 and
    /// RFC 8201) instead of being dropped.
    pub too_big: u64,
    /// Per [`HostDrop`].
    pub drops: [u64; HOST_DROPS],
    /// SNAT connections by frontend and backend address, in the order each pair first had a
    /// block (Azure Load Balancer's "SNAT Connection Count"); kept across reconfigurations.
    pub snat_connections: Vec<SnatConnections>,
}

/// The SNAT connections of one backend address through one frontend address, each counted once,
/// in the state it reached (the "Connection state" dimension of Azure Load Balancer's "SNAT
/// Connection Count" metric): answered, refused, or ended while still waiting for its first reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatConnections {
    /// The frontend address SNAT uses.
    pub frontend: IpAddr,
    /// The backend that opens the connections.
    pub backend: IpAddr,
    /// Connections whose first reply came back (Azure's "successful"), counted when it arrives.
    pub successful: u64,
    /// New connections refused because none of the backend's blocks for the protocol had a port
    /// (SNAT port exhaustion, Azure's "failed"), counted under the first of those blocks' address.
    pub failed: u64,
    /// Connections that ended (idle timeout, reset, a flow table too full to keep them) before
    /// any reply came back: still "pending" in Azure's terms when they ended. Those a
    /// reconfiguration flushes are counted in [`HostCounters::flushed`] only.
    pub pending: u64,
}

/// One SNAT block's ports (Azure Load Balancer's "Allocated SNAT Ports" and "Used SNAT Ports").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatPortsReport {
    /// The frontend address the block's ports are on.
    pub frontend: IpAddr,
    /// The backend the block is lent to.
    pub backend: IpAddr,
    /// The protocols the block serves (its outbound rule's).
    pub protocol: Protocol,
    /// Ports lent to the backend, less those a listener on the same address claims.
    pub allocated: u32,
    /// Ports that carry at least one connection.
    pub used: u32,
}

/// Which direction an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum HostFlowKind {
    /// Unused.
    #[default]
    None = 0,
    /// Client → VIP (as it arrives from a MUX).
    Inbound = 1,
    /// Backend → client (as the backend sends it).
    Response = 2,
    /// Backend → remote, a connection the backend opened.
    SnatOut = 3,
    /// Remote → SNAT address and port.
    SnatIn = 4,
    /// A fragmented datagram's record.
    Fragment = 5,
    /// A connection another host's backend holds, that a MUX sent here with a second chance:
    /// forwarded to that host ([`HostFlow::block`] indexes the host agent's redirect targets).
    Redirect = 6,
}

/// [`HostFlow::flags`]: the backend sees the VIP as destination (floating IP).
const FLOATING: u8 = 1;
/// [`HostFlow::flags`]: the rule asks for a RST to both ends when the connection times out.
const RESET: u8 = 2;
/// [`HostFlow::flags`]: [`HostFlow::seq`] holds a sequence number this direction sent.
const SEQ_SEEN: u8 = 4;
/// [`HostFlow::flags`]: [`HostFlow::ack`] holds an acknowledgment this direction sent.
const ACK_SEEN: u8 = 8;
/// Fragment record: rewrite the source (else the destination).
const FRAG_SRC: u8 = 16;
/// Fragment record of an SNAT connection's datagram (counted as SNAT traffic).
const FRAG_SNAT: u8 = 32;
/// This entry's direction has sent a FIN.
const FIN_SEEN: u8 = 64;
/// SNAT connection entries: a reply came back (set on both entries with the first one, so that
/// the connection is counted as successful once and, when it ends, not as pending).
const REPLIED: u8 = 128;
/// [`HostFlow::peer`] of an entry without a pair (a fragment record, or the first entry of a pair
/// while the second is inserted).
const NO_PEER: u32 = u32::MAX;
/// A redirect target on this host (another local backend).
const LOCAL_TARGET: u16 = u16::MAX;
/// [`HostFlow::local`] of a redirect entry: no local backend.
const NO_LOCAL: u16 = u16::MAX;

/// What the host agent stores with each flow entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct HostFlow {
    /// Direction.
    pub kind: HostFlowKind,
    /// Floating IP, TCP reset, sequence tracking.
    pub flags: u8,
    /// Local backend index.
    pub local: u16,
    /// Frontend index (the VIP, or the SNAT address).
    pub frontend: u16,
    /// Inbound: backend port; Response: frontend port; SNAT: the SNAT port.
    pub port: u16,
    /// SnatIn: the backend's own source port; Inbound: the frontend port.
    pub orig_port: u16,
    /// SNAT allocator block; Redirect: the redirect target (host tunnel and backend tag).
    pub block: u16,
    /// Slot of the other direction's entry.
    pub peer: u32,
    /// Next sequence number of this direction's sender.
    pub seq: u32,
    /// Last acknowledgment number this direction's sender sent.
    pub ack: u32,
}

impl FlowValue for HostFlow {
    const TRACK_REMOVALS: bool = true;
}

/// A backend of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBackend {
    /// Pool index.
    pub pool: usize,
    /// Member index.
    pub member: usize,
    /// Its address (DIP).
    pub address: IpAddr,
    /// The tag MUXes stamp for it.
    pub tag: u32,
    addr: (IpVersion, [u8; 16]),
    /// Its SNAT blocks (allocator block indices).
    blocks: Vec<usize>,
    /// Its MAC and VLAN (outermost tag), as its frames last opened or answered a connection, or
    /// its MAC as the program last set it ([`HostAgent::set_backend_mac`]): where frames delivered
    /// to it are addressed, and where a TCP reset the host agent makes for it goes (a broadcast
    /// MAC, until one is known; a guest's stack drops a TCP segment it was not addressed).
    link: Option<(MacAddr, Option<u16>)>,
}

/// One core's host agent.
pub struct HostAgent {
    node: HostNode,
    lb: LoadBalancer,
    vips: Vips,
    locals: Vec<LocalBackend>,
    grants: Vec<SnatGrant>,
    /// The (block, port) pairs of `grants` a listener on the same address claims, reserved in
    /// `snat` (they never go to SNAT).
    claims: Vec<(usize, u16)>,
    snat: SnatAllocator,
    /// Per pool, per MUX.
    tunnels: Vec<Vec<VxlanEncap>>,
    /// Tunnels to the other hosts of the configuration, per (host, VNI), for second chances.
    hosts: Vec<VxlanEncap>,
    /// (host, VNI) of each of `hosts`.
    host_keys: Vec<(IpAddr, u32)>,
    /// Every backend of the configuration as a second chance may name it: (VNI, tag, index into
    /// `hosts`, or [`LOCAL_TARGET`] for this host's), sorted for a binary search.
    targets: Vec<(u32, u32, u16)>,
    flows: FlowTable<HostFlow>,
    counters: HostCounters,
    /// The flow-table bucket the next expiry sweep starts at.
    cursor: usize,
    underlay: (IpVersion, [u8; 16]),
    /// The largest frame a tunnel to a MUX takes: the underlay MTU less the outer IP, UDP and
    /// VxLAN headers.
    max_frame: usize,
    /// The next hops the program set, by MUX (see [`HostAgent::set_next_hop`]); the others go to
    /// the gateway MAC.
    next_hops: NextHops,
    /// Every tunnel has a next hop (checked once per configuration or next hop, not per packet).
    hops_known: bool,
    /// Backends' MACs the program set (see [`HostAgent::set_backend_mac`]), kept for backends a
    /// later configuration adds.
    backend_macs: Vec<(IpAddr, MacAddr)>,
    /// Per SNAT block: its index in [`HostCounters::snat_connections`].
    snat_series: Vec<usize>,
}

impl HostAgent {
    /// Builds the host agent of `node` for a validated configuration.
    pub fn new(node: HostNode, lb: LoadBalancer) -> Result<Self, HostError> {
        Self::with_flow_memory(node, lb, |_, _| {})
    }

    /// [`HostAgent::new`], handing the flow table's memory to `prepare` before it is first written
    /// (see [`FlowTable::with_capacity_prepared`]).
    pub fn with_flow_memory(
        node: HostNode,
        lb: LoadBalancer,
        prepare: impl FnOnce(*const u8, usize),
    ) -> Result<Self, HostError> {
        if let Some(mss) = node.mss_clamp.filter(|m| !(MSS_CLAMP_MIN..=MSS_CLAMP_MAX).contains(m)) {
            return Err(HostError::MssClamp(mss));
        }
        let flows =
            FlowTable::with_capacity_prepared(node.base.flow_capacity, prepare).map_err(HostError::FlowTable)?;
        let outer_ip = match node.base.underlay {
            IpAddr::V4(_) => OUTER_LEN_V4,
            IpAddr::V6(_) => OUTER_LEN_V6,
        } - ETHERNET_HEADER_LEN;
        let mut h = HostAgent {
            lb: LoadBalancer::default(),
            vips: Vips::default(),
            locals: Vec::new(),
            grants: Vec::new(),
            claims: Vec::new(),
            snat: SnatAllocator::new(&[], node.snat_quarantine_secs).map_err(HostError::Snat)?,
            tunnels: Vec::new(),
            hosts: Vec::new(),
            host_keys: Vec::new(),
            targets: Vec::new(),
            flows,
            counters: HostCounters::default(),
            cursor: 0,
            underlay: addr16(node.base.underlay),
            max_frame: usize::from(node.base.mtu).saturating_sub(outer_ip),
            next_hops: NextHops::default(),
            hops_known: false,
            backend_macs: Vec::new(),
            snat_series: Vec::new(),
            node,
        };
        h.update(lb)?;
        Ok(h)
    }

    /// The configuration in force.
    pub fn config(&self) -> &LoadBalancer {
        &self.lb
    }

    /// The backends of this host, in local index order.
    pub fn local_backends(&self) -> &[LocalBackend] {
        &self.locals
    }

    /// The counters.
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }

    /// The underlay addresses of this host's MUXes (each once): the peers whose next hops the
    /// program resolves and hands to [`HostAgent::set_next_hop`].
    pub fn underlay_peers(&self) -> Vec<IpAddr> {
        distinct(self.node.muxes.iter().copied().chain(self.host_keys.iter().map(|&(h, _)| h)))
    }

    /// Frames tunnelled to MUX `peer` leave for `mac` from now on: the tunnels' prebuilt outer
    /// headers are rewritten in place, and those a reconfiguration builds take it too.
    /// 00:00:00:00:00:00 says the next hop is unknown: frames to `peer` are dropped as
    /// [`HostDrop::NoNextHop`] until it is known.
    pub fn set_next_hop(&mut self, peer: IpAddr, mac: MacAddr) {
        self.next_hops.set(peer, mac);
        self.apply_next_hops();
    }

    /// Forgets `peer`'s own next hop: frames to it go to the gateway MAC again.
    pub fn clear_next_hop(&mut self, peer: IpAddr) {
        self.next_hops.clear(peer);
        self.apply_next_hops();
    }

    /// The default next hop: for MUXes without one of their own, Direct Server Return frames and
    /// the resets that leave towards the fabric.
    pub fn set_gateway_mac(&mut self, mac: MacAddr) {
        self.node.base.gateway_mac = mac;
        self.apply_next_hops();
    }

    /// The MAC frames to `peer` leave for.
    pub(super) fn next_hop(&self, peer: IpAddr) -> MacAddr {
        self.next_hops.mac_for(peer, self.node.base.gateway_mac)
    }

    /// Rewrites every tunnel's destination MAC to its MUX's next hop.
    fn apply_next_hops(&mut self) {
        let hops: Vec<MacAddr> = self.node.muxes.iter().map(|&m| self.next_hop(m)).collect();
        for per_mux in &mut self.tunnels {
            for (t, &mac) in per_mux.iter_mut().zip(&hops) {
                t.set_dst_mac(mac);
            }
        }
        self.hops_known = self.tunnels.iter().flatten().all(VxlanEncap::has_next_hop);
        for i in 0..self.hosts.len() {
            let mac = self.next_hop(self.host_keys[i].0);
            self.hosts[i].set_dst_mac(mac);
        }
    }

    /// The addresses of this host's backends (each once), whose MACs the program may look up and
    /// hand to [`HostAgent::set_backend_mac`].
    pub fn local_backend_addresses(&self) -> Vec<IpAddr> {
        distinct(self.locals.iter().map(|l| l.address))
    }

    /// Frames delivered to the backend at `address` are addressed to `mac` from now on (from this
    /// host's MAC), as are the resets the host agent makes for it; a frame the backend sends later
    /// teaches its MAC again. Kept for a backend at that address a later configuration adds.
    pub fn set_backend_mac(&mut self, address: IpAddr, mac: MacAddr) {
        match self.backend_macs.iter_mut().find(|(a, _)| *a == address) {
            Some(known) => known.1 = mac,
            None => self.backend_macs.push((address, mac)),
        }
        for l in self.locals.iter_mut().filter(|l| l.address == address) {
            l.link = Some((mac, l.link.and_then(|(_, vlan)| vlan)));
        }
    }

    /// The MAC the program set for the backend at `address`.
    pub(super) fn backend_mac(&self, address: IpAddr) -> Option<MacAddr> {
        self.backend_macs.iter().find(|(a, _)| *a == address).map(|&(_, mac)| mac)
    }

    /// Records the MAC and VLAN local backend `local`'s own frames come from, for every local
    /// backend at its address (a backend in several pools is one local backend of each).
    pub(super) fn learn_link(&mut self, local: usize, link: (MacAddr, Option<u16>)) {
        let Some(l) = self.locals.get(local) else { return };
        if l.link == Some(link) {
            return;
        }
        let address = l.address;
        for l in self.locals.iter_mut().filter(|l| l.address == address) {
            l.link = Some(link);
        }
    }

    /// The SNAT allocator's counters (allocations, sharing, releases, exhaustion).
    pub fn snat_counters(&self) -> SnatCounters {
        self.snat.counters()
    }

    /// SNAT ports in use by local backend `local`, over all its blocks.
    pub fn snat_ports_in_use(&self, local: usize) -> u32 {
        self.locals.get(local).map_or(0, |l| l.blocks.iter().map(|&b| self.snat.ports_in_use(b)).sum())
    }

    /// Each SNAT block's ports, in block order (local backends in order, each one's blocks in
    /// turn). Control plane: allocates.
    pub fn snat_ports(&self) -> Vec<SnatPortsReport> {
        self.grants
            .iter()
            .enumerate()
            .filter_map(|(b, g)| {
                Some(SnatPortsReport {
                    frontend: self.lb.frontends.get(g.frontend)?.address,
                    backend: self.lb.pools.get(g.pool)?.backends.get(g.member)?.address,
                    protocol: g.protocol,
                    allocated: u32::from(g.len).saturating_sub(self.snat.reserved(b)),
                    used: self.snat.ports_in_use(b),
                })
            })
            .collect()
    }

    /// Gives every SNAT block its (frontend address, backend address) series in
    /// [`HostCounters::snat_connections`], adding the pairs seen for the first time: after every
    /// change of the blocks, so that the packet path counts by block index alone.
    fn index_snat_connections(&mut self) {
        let (lb, series) = (&self.lb, &mut self.counters.snat_connections);
        let mut at: BTreeMap<(IpAddr, IpAddr), usize> =
            series.iter().enumerate().map(|(i, s)| ((s.frontend, s.backend), i)).collect();
        self.snat_series = self
            .grants
            .iter()
            .map(|g| {
                let frontend = lb.frontends.get(g.frontend).map(|f| f.address);
                let backend = lb.pools.get(g.pool).and_then(|p| p.backends.get(g.member)).map(|b| b.address);
                let (Some(frontend), Some(backend)) = (frontend, backend) else { return usize::MAX };
                *at.entry((frontend, backend)).or_insert_with(|| {
                    series.push(SnatConnections { frontend, backend, successful: 0, failed: 0, pending: 0 });
                    series.len() - 1
                })
            })
            .collect();
    }

    /// The series of SNAT block `block` (`None` for a block out of range).
    #[inline(always)]
    fn snat_counter(&mut self, block: usize) -> Option<&mut SnatConnections> {
        let i = *self.snat_series.get(block)?;
        self.counters.snat_connections.get_mut(i)
    }

    /// The first reply of the SNAT connection whose reply entry is at `slot` came back: counted
    /// as successful, and both entries marked. Once per connection, off the path of later replies.
    #[cold]
    #[inline(never)]
    fn snat_replied(&mut self, slot: FlowSlot, v: &HostFlow) {
        if let Some(s) = self.snat_counter(usize::from(v.block)) {
            s.successful += 1;
        }
        // A reply that closed the connection (a RST) left nothing to mark here: its pair is
        // marked, and the connection is released with both entries' flags.
        if self.flows.live(slot).is_some() {
            self.flows.value_mut(slot).flags |= REPLIED;
        }
        let peer = FlowSlot::from_index(v.peer);
        if v.peer != NO_PEER && self.flows.live(peer).is_some_and(|p| p.value.peer == slot.to_index()) {
            self.flows.value_mut(peer).flags |= REPLIED;
        }
    }

    /// A new SNAT connection of local backend `local` for IP protocol `protocol` found no port:
    /// counted as failed under the backend's first block for the protocol.
    #[cold]
    #[inline(never)]
    fn snat_refused(&mut self, local: usize, protocol: u8) {
        let block = self.locals.get(local).and_then(|l| {
            l.blocks.iter().copied().find(|&b| self.grants.get(b).is_some_and(|g| g.protocol.matches(protocol)))
        });
        if let Some(s) = block.and_then(|b| self.snat_counter(b)) {
            s.failed += 1;
        }
    }

    /// The flow table (counters, size).
    pub fn flows(&self) -> &FlowTable<HostFlow> {
        &self.flows
    }

    /// A frame from a port that carries both sides (a single-port program, a C appliance that does
    /// not say): a VxLAN frame addressed to this host, or sent by one of its MUXes, is fabric
    /// traffic (refused as not for this host when it is for another); anything else comes from a
    /// backend.
    /// The tunnel is decapsulated once, whichever way the frame goes.
    pub fn from_either(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let tunnel = start
            .checked_add(len)
            .and_then(|end| buf.get(start..end))
            .and_then(|f| decapsulate(f).ok())
            .filter(|d| addr16(d.outer_dst) == self.underlay || self.node.muxes.contains(&d.outer_src))
            .map(|d| Tunnel::of(start, &d));
        let v = match tunnel {
            Some(t) => self.tunnelled(buf, t, now),
            None => self.backend_frame(buf, start, len, now),
        };
        self.settle(now);
        self.count(v)
    }

    /// Lowers the MSS option of a SYN or SYN-ACK (`frame`, parsed as `key`) to the node's clamp;
    /// any other packet costs one test of its flags.
    #[inline(always)]
    pub(super) fn clamp_mss(&self, frame: &mut [u8], key: &FlowKey) {
        if key.tcp_flags & TcpFlags::SYN != 0 {
            self.clamp_syn(frame, key);
        }
    }

    #[cold]
    #[inline(never)]
    fn clamp_syn(&self, frame: &mut [u8], key: &FlowKey) {
        let Some(mss) = self.node.mss_clamp else { return };
        if key.protocol != ip_proto::TCP || key.fragment == Fragment::Later || key.is_icmp_error() {
            return;
        }
        let mss = if key.ip_version == IpVersion::V6 { mss.max(MSS_CLAMP_MIN_IPV6) } else { mss };
        let (o, n) = (usize::from(key.l4_offset), usize::from(key.l4_len));
        if let Some(segment) = frame.get_mut(o..o + n) {
            clamp_mss(segment, mss);
        }
    }

    /// Counts a drop under its reason; returns the verdict.
    fn count(&mut self, v: HostVerdict) -> HostVerdict {
        if let HostVerdict::Drop(r) = v {
            self.counters.drops[r as usize] += 1;
        }
        v
    }
}

/// The hash of a stored tuple (the same function as [`FlowKey::hash`]).
fn tuple_hash(t: &FlowTuple, seed: u64) -> u32 {
    let k = FlowKey {
        src_addr: t.src,
        dst_addr: t.dst,
        src_port: t.src_port,
        dst_port: t.dst_port,
        protocol: t.protocol,
        ip_version: if t.version & 0x7f == 4 { IpVersion::V4 } else { IpVersion::V6 },
        ..FlowKey::default()
    };
    k.hash(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Frontend, IdleTimeout, NodeBase, OutboundRule, Pool};
    use crate::paths::mux::{Mux, MuxNode, Verdict};
    use alloc::vec;
    use core::net::Ipv4Addr;
    use etherparse::PacketBuilder;

    const HOST: [u8; 4] = [172, 16, 10, 20];
    const MUX: [u8; 4] = [172, 16, 5, 10];
    const SNAT: [u8; 4] = [20, 0, 0, 20];
    const REMOTE: [u8; 4] = [93, 184, 216, 34];
    const HEADROOM: usize = 128;
    const NOW: u32 = 1000;

    /// Two backends on this host reaching out through one address, 8 ports each.
    fn config() -> LoadBalancer {
        LoadBalancer {
            name: "lb".into(),
            frontends: vec![Frontend { name: "out".into(), address: Ipv4Addr::from(SNAT).into(), internal: false }],
            pools: vec![Pool {
                name: "pool".into(),
                vni: 7,
                backends: (0..2u8)
                    .map(|b| Backend {
                        name: alloc::format!("b{b}"),
                        address: Ipv4Addr::new(10, 0, 0, 4 + b).into(),
                        host: Ipv4Addr::from(HOST).into(),
                        weight: 1,
                    })
                    .collect(),
            }],
            outbound_rules: vec![OutboundRule {
                name: "outbound".into(),
                frontends: vec![0],
                pool: 0,
                protocol: Protocol::All,
                allocated_outbound_ports: Some(8),
                idle_timeout: IdleTimeout::default(),
                tcp_reset: false,
            }],
            ..LoadBalancer::default()
        }
    }

    fn base(underlay: [u8; 4]) -> NodeBase {
        NodeBase {
            mac: MacAddr([2, 0, 0, 0, 0, underlay[3]]),
            gateway_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            underlay: Ipv4Addr::from(underlay).into(),
            ttl: 64,
            mtu: 9000,
            hash_seed: 7,
            flow_capacity: 1000,
        }
    }

    fn host() -> HostAgent {
        let node = HostNode {
            base: base(HOST),
            muxes: vec![Ipv4Addr::from(MUX).into()],
            return_path: ReturnPath::Direct,
            snat_quarantine_secs: 60,
            reset_on_snat_exhaustion: false,
            mss_clamp: None,
        };
        HostAgent::new(node, config()).unwrap()
    }

    /// A TCP segment in a buffer with headroom: a SYN, else an ACK (with `rst`, a RST).
    fn segment(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool, rst: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 20]).ipv4(src, dst, 64);
        let b = b.tcp(sport, dport, 1000, 65535);
        let b = if syn { b.syn() } else { b.ack(5001) };
        let b = if rst { b.rst() } else { b };
        let mut f = vec![0u8; HEADROOM];
        b.write(&mut f, b"").unwrap();
        f
    }

    /// Backend 10.0.0.4 opens a connection from `sport` to the remote web server: the SNAT port,
    /// or `None` if it was refused.
    fn open(h: &mut HostAgent, sport: u16) -> Option<u16> {
        let mut f = segment([10, 0, 0, 4], sport, REMOTE, 443, true, false);
        let len = f.len() - HEADROOM;
        match h.from_backend(&mut f, HEADROOM, len, NOW) {
            HostVerdict::Transmit { start, .. } => Some(u16::from_be_bytes([f[start + 34], f[start + 35]])),
            HostVerdict::Drop(HostDrop::SnatExhausted) => None,
            v => panic!("{v:?}"),
        }
    }

    /// The remote's reply to SNAT port `port`, through the MUX to the host.
    fn reply(h: &mut HostAgent, mux: &mut Mux, port: u16, rst: bool) {
        let mut f = segment(REMOTE, 443, SNAT, port, false, rst);
        let len = f.len() - HEADROOM;
        let Verdict::Forward { start, len } = mux.process(&mut f, HEADROOM, len, NOW) else { panic!("MUX steers it") };
        let v = h.from_fabric(&mut f, start, len, NOW);
        assert!(matches!(v, HostVerdict::Deliver { backend: 0, .. }), "{v:?}");
    }

    fn series(h: &HostAgent) -> Vec<(u64, u64, u64)> {
        h.counters().snat_connections.iter().map(|s| (s.successful, s.failed, s.pending)).collect()
    }

    /// Each SNAT connection is counted once: successful when its first reply comes back (a RST
    /// too), failed when it finds no port, pending when it ends unanswered.
    #[test]
    fn snat_connections_are_counted_by_the_state_they_reach() {
        let mut h = host();
        let node = MuxNode { base: base(MUX), maglev_size: 251 };
        let mut mux = Mux::new(node, config()).unwrap();
        let c = &h.counters().snat_connections;
        let addr = |a: [u8; 4]| IpAddr::from(Ipv4Addr::from(a));
        assert_eq!(c.len(), 2, "one series per backend and address, from the start");
        assert_eq!((c[0].frontend, c[0].backend, c[1].backend), (addr(SNAT), addr([10, 0, 0, 4]), addr([10, 0, 0, 5])));

        // Eight ports, all to one destination (no sharing): the ninth connection fails.
        let ports: Vec<u16> = (0..8).map(|i| open(&mut h, 10000 + i).expect("a port")).collect();
        assert_eq!(open(&mut h, 10008), None);
        assert_eq!(series(&h), [(0, 1, 0), (0, 0, 0)]);
        let report = h.snat_ports();
        assert_eq!(report.len(), 2);
        assert_eq!((report[0].allocated, report[0].used, report[0].protocol), (8, 8, Protocol::All));
        assert_eq!((report[1].allocated, report[1].used), (8, 0));

        // Replies: the first one counts, later ones do not; a RST answers too (and ends it).
        reply(&mut h, &mut mux, ports[0], false);
        reply(&mut h, &mut mux, ports[0], false);
        reply(&mut h, &mut mux, ports[1], false);
        reply(&mut h, &mut mux, ports[2], true);
        assert_eq!(series(&h), [(3, 1, 0), (0, 0, 0)]);
        assert_eq!(h.snat_ports()[0].used, 7, "the reset connection gave its port back");

        // Idle timeout: the five never answered end pending, the two answered do not.
        h.expire(NOW + 4 * 60 + 1, usize::MAX >> 1, |_, _| {});
        assert_eq!(series(&h), [(3, 1, 5), (0, 0, 0)]);
        assert_eq!(h.snat_ports()[0].used, 0);

        // The series survive a reconfiguration.
        h.update(config()).unwrap();
        assert_eq!(series(&h), [(3, 1, 5), (0, 0, 0)]);
    }
}
