//! The SLB host agent ("Step 5: Compute Host Processing", "Outbound Response Flow", "Outbound
//! Rules"): the half of the load balancer that runs beside the backends.
//!
//! - From the fabric ([`HostAgent::from_fabric`]): a VxLAN frame from a MUX is decapsulated in
//!   place, its VNI and backend tag (which backend the MUX chose; several of one pool may run on one
//!   host) checked, the flow recorded, and the inner frame DNATed (VIP:frontendPort →
//!   DIP:backendPort, checksums updated incrementally) or, with floating IP, delivered with the VIP
//!   untouched. Replies to SNAT connections come the same way and are translated back to the
//!   backend's own address and port.
//! - From a backend ([`HostAgent::from_backend`]): a response of a recorded flow is reverse-NATed
//!   (DIP:backendPort → VIP:frontendPort) and sent back through a MUX (VxLAN) or straight to the
//!   client (Direct Server Return), as the node is configured. A connection the backend opens is
//!   SNATed to a port of its own block on an outbound frontend address (see
//!   [`crate::config::snat`]). Anything else is dropped and counted: nothing leaves with a private
//!   source address.
//! - Timers ([`HostAgent::expire`]): idle flows are removed, their SNAT ports released (they come
//!   back after a quarantine), and, where the rule asks for TCP reset, a RST goes to both ends with
//!   the sequence numbers the flow last showed.
//!
//! Every connection has two entries in the flow table, one per direction, each naming the other's
//! slot; a packet refreshes both (no second hash). SNAT ports are shared between TCP connections to
//! different destinations once a block has no fresh port left; a UDP flow always takes a port of
//! its own (one port per UDP 5-tuple, never shared while in use).
//!
//! Fragments: a first fragment records how its datagram was translated; later fragments (no ports)
//! get the same address translation from that record. ICMP errors (fragmentation needed, packet too
//! big, unreachable) are found by the connection they quote and translated like it, in the outer
//! header and in the quote, so path MTU discovery works through the NAT in both directions.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use super::listen::{addr16, backend_tag, build_vips, fragment_record, Vips};
use super::mux::Traffic;
use crate::config::{ConfigError, LoadBalancer, SnatGrant};
use crate::tables::snat::{PortBlock, SnatAllocator, SnatCounters, SnatError};
use crate::tables::{FlowEntry, FlowSlot, FlowTable, FlowTableError, FlowTuple, FlowValue, TcpState};
use crate::wire::flow::quoted_flow_key;
use crate::wire::nat::{rewrite, rewrite_quoted, Side, TcpResetRepr};
use crate::wire::vxlan::decapsulate;
use crate::wire::{ip_proto, parse_flow_key, FlowKey, Fragment, IpVersion, MacAddr, TcpFlags, VxlanEncap};

/// How responses and SNAT connections leave the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPath {
    /// VxLAN to a MUX, which strips the tunnel and forwards to the client (the seed's default).
    ViaMux,
    /// Straight to the fabric router, with the VIP as source (Direct Server Return).
    Direct,
}

/// This host: its addresses and knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNode {
    /// MAC of the host's fabric port.
    pub mac: MacAddr,
    /// MAC of the fabric router.
    pub gateway_mac: MacAddr,
    /// The host's underlay address (where MUXes tunnel to).
    pub underlay: IpAddr,
    /// Underlay addresses of the MUXes that take responses back (one is picked by flow hash).
    pub muxes: Vec<IpAddr>,
    /// How responses leave.
    pub return_path: ReturnPath,
    /// Outer TTL.
    pub ttl: u8,
    /// Underlay MTU.
    pub mtu: u16,
    /// Flow hash seed.
    pub hash_seed: u64,
    /// Flow-table capacity (each connection takes two entries).
    pub flow_capacity: usize,
    /// Seconds a released SNAT port waits before it is handed out again.
    pub snat_quarantine_secs: u32,
    /// When a backend's SNAT ports are exhausted, answer its SYN with a RST (else drop it).
    pub reset_on_snat_exhaustion: bool,
}

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
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Config(e) => write!(f, "configuration: {e}"),
            HostError::Tunnel(e) => write!(f, "tunnel to a MUX: {e}"),
            HostError::FlowTable(e) => write!(f, "flow table: {e:?}"),
            HostError::Snat(e) => write!(f, "SNAT: {e}"),
            HostError::NoMux => f.write_str("return path via MUX but no MUX address"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for HostError {}

/// Why the host agent dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HostDrop {
    /// Did not parse (outer or inner).
    Malformed = 0,
    /// A tunnel frame not addressed to this host.
    NotForThisHost = 1,
    /// The VNI or backend tag names no backend of this host.
    UnknownBackend = 2,
    /// To a VIP, but no rule matches its protocol and port, and no flow.
    NoRule = 3,
    /// From a backend, matching no flow and no outbound rule (never sent with a private source).
    NoFlow = 4,
    /// The backend's SNAT ports are exhausted.
    SnatExhausted = 5,
    /// A later fragment whose first fragment was not seen.
    FragmentUnknown = 6,
    /// Not enough headroom or over the MTU for the tunnel to a MUX.
    Encap = 7,
    /// An ICMP error whose quoted packet belongs to no connection of this host.
    IcmpUntranslated = 8,
    /// A new connection found no room for both its entries (the flow table is too small for the
    /// load: its `evicted` counter moves too).
    FlowTableFull = 9,
}

/// Number of [`HostDrop`] reasons.
pub const HOST_DROPS: usize = 10;

impl HostDrop {
    /// Every reason, in counter order (`HostCounters::drops[r as usize]`).
    pub const ALL: [HostDrop; HOST_DROPS] = [
        HostDrop::Malformed,
        HostDrop::NotForThisHost,
        HostDrop::UnknownBackend,
        HostDrop::NoRule,
        HostDrop::NoFlow,
        HostDrop::SnatExhausted,
        HostDrop::FragmentUnknown,
        HostDrop::Encap,
        HostDrop::IcmpUntranslated,
        HostDrop::FlowTableFull,
    ];

    /// The reason's name in reports and metrics, NUL-terminated for the C ABI.
    pub fn c_name(self) -> &'static core::ffi::CStr {
        match self {
            HostDrop::Malformed => c"malformed",
            HostDrop::NotForThisHost => c"not_for_this_host",
            HostDrop::UnknownBackend => c"unknown_backend",
            HostDrop::NoRule => c"no_rule",
            HostDrop::NoFlow => c"no_flow",
            HostDrop::SnatExhausted => c"snat_exhausted",
            HostDrop::FragmentUnknown => c"fragment_unknown",
            HostDrop::Encap => c"encap",
            HostDrop::IcmpUntranslated => c"icmp_untranslated",
            HostDrop::FlowTableFull => c"flow_table_full",
        }
    }

    /// The reason's name in reports and metrics.
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("")
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
    /// Per [`HostDrop`].
    pub drops: [u64; HOST_DROPS],
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
}

const FLOATING: u8 = 1;
const RESET: u8 = 2;
const SEQ_SEEN: u8 = 4;
const ACK_SEEN: u8 = 8;
/// Fragment record: rewrite the source (else the destination).
const FRAG_SRC: u8 = 16;
/// Fragment record of an SNAT connection's datagram (counted as SNAT traffic).
const FRAG_SNAT: u8 = 32;
/// This entry's direction has sent a FIN.
const FIN_SEEN: u8 = 64;
const NO_PEER: u32 = u32::MAX;

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
    /// SNAT allocator block.
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
    /// Its MAC and VLAN (outermost tag), as its frames last opened or answered a connection: where
    /// a TCP reset the host agent makes for it goes (a broadcast MAC, until it has sent one; a
    /// guest's stack drops a TCP segment it was not addressed).
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
    flows: FlowTable<HostFlow>,
    counters: HostCounters,
    cursor: usize,
    underlay: (IpVersion, [u8; 16]),
}

/// Headroom a frame the host agent builds (a RST) keeps for the tunnel.
const RST_HEADROOM: usize = 128;

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
        let flows = FlowTable::with_capacity_prepared(node.flow_capacity, prepare).map_err(HostError::FlowTable)?;
        let mut h = HostAgent {
            lb: LoadBalancer::default(),
            vips: Vips::default(),
            locals: Vec::new(),
            grants: Vec::new(),
            claims: Vec::new(),
            snat: SnatAllocator::new(&[], node.snat_quarantine_secs).map_err(HostError::Snat)?,
            tunnels: Vec::new(),
            flows,
            counters: HostCounters::default(),
            cursor: 0,
            underlay: addr16(node.underlay),
            node,
        };
        h.update(lb)?;
        Ok(h)
    }

    /// Applies a new configuration at run time. Established connections keep going if their
    /// backend and frontend are still there (their entries are remapped); SNAT connections keep
    /// their ports if the backend still has a block with the port on the same address, for the
    /// connection's protocol, that no listener claims. The rest are removed and counted
    /// (`flushed`). On error nothing changes.
    pub fn update(&mut self, lb: LoadBalancer) -> Result<(), HostError> {
        lb.validate().map_err(HostError::Config)?;
        if self.node.return_path == ReturnPath::ViaMux && self.node.muxes.is_empty() {
            return Err(HostError::NoMux);
        }
        let plan = lb.snat_plan().map_err(HostError::Config)?;
        let me = self.node.underlay;
        let mut locals = Vec::new();
        let mut grants = Vec::new();
        for (pi, pool) in lb.pools.iter().enumerate() {
            for (mi, b) in pool.backends.iter().enumerate() {
                if b.host != me {
                    continue;
                }
                let mut blocks = Vec::new();
                for g in plan.for_member(pi, mi) {
                    blocks.push(grants.len());
                    grants.push(*g);
                }
                let tag = backend_tag(b.address);
                locals.push(LocalBackend {
                    pool: pi,
                    member: mi,
                    address: b.address,
                    tag,
                    addr: addr16(b.address),
                    blocks,
                    link: None,
                });
            }
        }
        let (vips, _) = build_vips(&lb);
        // Ports a listener claims on the same address never go to SNAT: a new listener's claim
        // rebuilds the allocator as a change of blocks does (the MUX would send the replies of a
        // connection on such a port to the listener).
        let claims: Vec<(usize, u16)> = grants
            .iter()
            .enumerate()
            .flat_map(|(bi, g)| (g.first..=g.first + (g.len - 1)).map(move |port| (bi, port)))
            .filter(|&(bi, port)| vips[grants[bi].frontend].claims(port))
            .collect();
        // The same blocks of the same ports, of the same addresses for the same backends: a grant
        // names its frontend and member by position, so two frontends that swapped addresses
        // compare equal by the grants alone, while each connection's address is remapped.
        let owners = |lb: &LoadBalancer, vips: &Vips, grants: &[SnatGrant]| -> Vec<([u8; 16], IpAddr)> {
            grants.iter().map(|g| (vips[g.frontend].addr, lb.pools[g.pool].backends[g.member].address)).collect()
        };
        let same_snat = grants == self.grants
            && claims == self.claims
            && owners(&lb, &vips, &grants) == owners(&self.lb, &self.vips, &self.grants);
        let mut snat = if same_snat {
            None
        } else {
            let blocks: Vec<PortBlock> =
                grants.iter().map(|g| PortBlock { address: g.frontend as u16, first: g.first, len: g.len }).collect();
            let mut a = SnatAllocator::new(&blocks, self.node.snat_quarantine_secs).map_err(HostError::Snat)?;
            for &(bi, port) in &claims {
                a.reserve(bi, port).map_err(HostError::Snat)?;
            }
            Some(a)
        };
        let mut tunnels = Vec::with_capacity(lb.pools.len());
        for pool in &lb.pools {
            let mut per_mux = Vec::with_capacity(self.node.muxes.len());
            for &m in &self.node.muxes {
                let t = VxlanEncap::new(
                    self.node.mac,
                    self.node.gateway_mac,
                    me,
                    m,
                    pool.vni,
                    self.node.ttl,
                    self.node.mtu,
                )
                .map_err(HostError::Tunnel)?;
                per_mux.push(t);
            }
            tunnels.push(per_mux);
        }
        // Remap established flows: local backends by address, frontends by address.
        let old_locals = core::mem::take(&mut self.locals);
        let old_lb = core::mem::take(&mut self.lb);
        let local_map: Vec<Option<u16>> = old_locals
            .iter()
            .map(|o| {
                locals.iter().position(|n| n.address == o.address && lb.pools[n.pool].name == old_lb.pools[o.pool].name)
            })
            .map(|p| p.map(|p| p as u16))
            .collect();
        let frontend_map: Vec<Option<u16>> = old_lb
            .frontends
            .iter()
            .map(|o| lb.frontends.iter().position(|n| n.address == o.address).map(|p| p as u16))
            .collect();
        let mut flushed = 0;
        // SNAT connections removed while the allocator stays give their ports back (once each:
        // with their outbound entry), stamped with the latest second the table has seen.
        let (mut ports, mut latest) = (Vec::new(), None::<u32>);
        let mut adopt = Vec::new();
        // SNAT connections ended while the allocator is rebuilt: (address, port).
        let mut ended: Vec<([u8; 16], u16)> = Vec::new();
        let old_vips = &self.vips;
        self.flows.retain(|e| {
            // The later of the two on a clock that may wrap (as the flow table's deadlines are).
            latest = match latest {
                Some(l) if (e.last_seen.wrapping_sub(l) as i32) <= 0 => Some(l),
                _ => Some(e.last_seen),
            };
            let v = &mut e.value;
            let snat = matches!(v.kind, HostFlowKind::SnatOut | HostFlowKind::SnatIn);
            let local = local_map.get(usize::from(v.local)).copied().flatten();
            let frontend = frontend_map.get(usize::from(v.frontend)).copied().flatten();
            match (local, frontend) {
                (Some(l), Some(f)) if !snat || same_snat => {
                    v.local = l;
                    v.frontend = f;
                    true
                }
                // The blocks changed (a backend added, a rule's timeout, ...): an SNAT connection
                // goes on if its backend still has a block with its port on its address for its
                // protocol, not claimed by a listener; the new allocator takes its port (once, with
                // the outbound entry; both entries name the new block).
                (Some(l), Some(f)) if snat => {
                    let kept = locals[usize::from(l)].blocks.iter().copied().find(|&b| {
                        let g = &grants[b];
                        g.frontend == usize::from(f)
                            && g.contains(v.port)
                            && g.protocol.matches(e.tuple.protocol)
                            && claims.binary_search(&(b, v.port)).is_err()
                    });
                    let Some(b) = kept else {
                        if v.kind == HostFlowKind::SnatOut {
                            ended.extend(old_vips.get(usize::from(v.frontend)).map(|f| (f.addr, v.port)));
                        }
                        flushed += 1;
                        return false;
                    };
                    if v.kind == HostFlowKind::SnatOut {
                        adopt.push((b, v.port, e.tuple.protocol == ip_proto::UDP));
                    }
                    v.local = l;
                    v.frontend = f;
                    v.block = b as u16;
                    true
                }
                _ => {
                    if same_snat && v.kind == HostFlowKind::SnatOut {
                        ports.push((usize::from(v.block), v.port));
                    } else if v.kind == HostFlowKind::SnatOut {
                        ended.extend(old_vips.get(usize::from(v.frontend)).map(|f| (f.addr, v.port)));
                    }
                    flushed += 1;
                    false
                }
            }
        });
        for (block, port) in ports {
            let _ = self.snat.release(block, port, latest.unwrap_or(0));
        }
        // The kept connections' ports, taken by the new allocator in one pass; the ports the old
        // one held in quarantine, and those of the connections this reload ended, wait out their
        // quarantine in it (by address and port: the blocks moved), or a new connection could
        // take one at once, to a destination still holding the old connection's state.
        if let Some(a) = snat.as_mut() {
            a.adopt(&adopt);
            let mut held: alloc::collections::BTreeMap<([u8; 16], u16), u32> = Default::default();
            // Only ports still in quarantine at the latest time the table saw (the others are as
            // good as fresh), so that the map stays small.
            let q = self.snat.quarantine_secs() as i32;
            for (ob, g) in self.grants.iter().enumerate() {
                let addr = self.vips[g.frontend].addr;
                for port in g.first..=g.first + (g.len - 1) {
                    if let Some(at) = self.snat.released_at(ob, port) {
                        if latest.is_none_or(|l| (l.wrapping_sub(at) as i32) < q) {
                            held.insert((addr, port), at);
                        }
                    }
                }
            }
            // The latest time there is, on the wrapping clock (the table's, else the releases').
            let later = |a: u32, b: u32| if (b.wrapping_sub(a) as i32) > 0 { b } else { a };
            let now = latest.or_else(|| held.values().copied().reduce(later)).unwrap_or(0);
            for key in ended {
                held.insert(key, now);
            }
            if !held.is_empty() {
                a.hold(now, |b, port| held.get(&(vips[grants[b].frontend].addr, port)).copied());
            }
        }
        self.counters.flushed += flushed / 2;
        // A local backend's counters follow it (by pool name and address, as its flows do), so
        // that they never go down while it stays; a new one starts at zero.
        let mut backends = vec![Traffic::default(); locals.len()];
        for (old, new) in self.counters.backends.iter().zip(&local_map) {
            if let Some(b) = new.and_then(|n| backends.get_mut(usize::from(n))) {
                *b = *old;
            }
        }
        self.counters.backends = backends;
        if let Some(a) = snat {
            self.snat = a;
        }
        self.grants = grants;
        self.claims = claims;
        for (o, n) in old_locals.iter().zip(&local_map) {
            if let Some(l) = n.and_then(|n| locals.get_mut(usize::from(n))) {
                l.link = l.link.or(o.link);
            }
        }
        self.locals = locals;
        self.vips = vips;
        self.tunnels = tunnels;
        self.lb = lb;
        Ok(())
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

    /// The SNAT allocator's counters (allocations, sharing, releases, exhaustion).
    pub fn snat_counters(&self) -> SnatCounters {
        self.snat.counters()
    }

    /// SNAT ports in use by local backend `local`, over all its blocks.
    pub fn snat_ports_in_use(&self, local: usize) -> u32 {
        self.locals.get(local).map_or(0, |l| l.blocks.iter().map(|&b| self.snat.ports_in_use(b)).sum())
    }

    /// The flow table (counters, size).
    pub fn flows(&self) -> &FlowTable<HostFlow> {
        &self.flows
    }

    /// A frame from the fabric at `buf[start..start + len]` (a VxLAN frame from a MUX).
    pub fn from_fabric(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let v = self.fabric_frame(buf, start, len, now);
        self.settle(now);
        self.count(v)
    }

    /// A frame a local backend sent, at `buf[start..start + len]`, with headroom before it for the
    /// tunnel to a MUX.
    pub fn from_backend(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let v = self.backend_frame(buf, start, len, now);
        self.settle(now);
        self.count(v)
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

    fn count(&mut self, v: HostVerdict) -> HostVerdict {
        if let HostVerdict::Drop(r) = v {
            self.counters.drops[r as usize] += 1;
        }
        v
    }

    fn fabric_frame(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let Some(frame) = start.checked_add(len).and_then(|end| buf.get(start..end)) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let Ok(d) = decapsulate(frame) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let t = Tunnel::of(start, &d);
        self.tunnelled(buf, t, now)
    }

    /// A decapsulated frame from the fabric: the inner frame lies at `buf[t.at..t.at + t.len]`.
    fn tunnelled(&mut self, buf: &mut [u8], t: Tunnel, now: u32) -> HostVerdict {
        if addr16(t.outer_dst) != self.underlay {
            return HostVerdict::Drop(HostDrop::NotForThisHost);
        }
        let (at, ilen, vni, tag) = (t.at, t.len, t.vni, t.tag);
        let inner = &mut buf[at..at + ilen];
        let Ok(key) = parse_flow_key(inner) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let seed = self.node.hash_seed;
        if key.fragment == Fragment::Later {
            return match self.later_fragment(inner, &key, now) {
                Ok((local, snat)) => self.deliver(local, at, ilen, snat),
                Err(d) => HostVerdict::Drop(d),
            };
        }
        if key.is_icmp_error() {
            return match self.icmp_error(inner, &key, Side::Dst, now) {
                Ok((local, snat)) => self.deliver(local, at, ilen, snat),
                Err(d) => HostVerdict::Drop(d),
            };
        }
        let tuple = FlowTuple::from(&key);
        let hash = key.hash(seed);
        if let Some(at_slot) = self.flows.lookup(&tuple, hash, now) {
            let e = self.flows.touch(at_slot, key.tcp_flags, now);
            self.follow(at_slot, &e, inner, &key, now);
            let v = e.value;
            let local = usize::from(v.local);
            let Some(l) = self.locals.get(local) else {
                return HostVerdict::Drop(HostDrop::UnknownBackend);
            };
            let (addr, port, snat) = match v.kind {
                HostFlowKind::Inbound if v.flags & FLOATING != 0 => (key.dst_addr, v.port, false),
                HostFlowKind::Inbound => (l.addr.1, v.port, false),
                HostFlowKind::SnatIn => (l.addr.1, v.orig_port, true),
                _ => return HostVerdict::Drop(HostDrop::NoRule),
            };
            if rewrite(inner, &key, Side::Dst, &addr, port).is_err() {
                return HostVerdict::Drop(HostDrop::Malformed);
            }
            self.record_first_fragment(&key, &e.value, Side::Dst, now);
            return self.deliver(local, at, ilen, snat);
        }
        let Some(vip) = self.vips.find(key.ip_version, &key.dst_addr) else {
            return HostVerdict::Drop(HostDrop::NoRule);
        };
        let Some(listener) = self.vips[vip].listener(key.protocol, key.dst_port) else {
            // A reply to an SNAT connection that is gone, or a port nobody listens on.
            return HostVerdict::Drop(HostDrop::NoRule);
        };
        let delivery = listener.target.delivery(&self.lb, key.dst_port);
        if self.lb.pools[delivery.pool].vni != vni {
            return HostVerdict::Drop(HostDrop::UnknownBackend);
        }
        let Some(local) = self.local_for(delivery.pool, delivery.member, tag) else {
            return HostVerdict::Drop(HostDrop::UnknownBackend);
        };
        let backend_port = delivery.backend_port.unwrap_or(key.dst_port);
        let mut flags = if delivery.floating_ip { FLOATING } else { 0 };
        if delivery.tcp_reset {
            flags |= RESET;
        }
        let l = &self.locals[local];
        let dst = if delivery.floating_ip { key.dst_addr } else { l.addr.1 };
        let inbound = HostFlow {
            kind: HostFlowKind::Inbound,
            flags,
            local: local as u16,
            frontend: vip as u16,
            port: backend_port,
            orig_port: key.dst_port,
            ..HostFlow::default()
        };
        // The response as the backend will send it: from its address (or the VIP) and port.
        let mut back = tuple;
        back.src = dst;
        back.src_port = backend_port;
        back.dst = tuple.src;
        back.dst_port = tuple.src_port;
        let response = HostFlow { kind: HostFlowKind::Response, port: key.dst_port, ..inbound };
        let Some(slot) =
            self.insert_pair(&tuple, hash, key.tcp_flags, inbound, &back, response, delivery.idle_minutes, now)
        else {
            return HostVerdict::Drop(HostDrop::FlowTableFull);
        };
        let e = *self.flows.entry(slot);
        self.follow(slot, &e, inner, &key, now);
        if rewrite(inner, &key, Side::Dst, &dst, backend_port).is_err() {
            return HostVerdict::Drop(HostDrop::Malformed);
        }
        self.record_first_fragment(&key, &inbound, Side::Dst, now);
        let v = self.deliver(local, at, ilen, false);
        self.counters.inbound.new_flows += 1;
        if let Some(c) = self.counters.backends.get_mut(local) {
            c.new_flows += 1;
        }
        v
    }

    fn backend_frame(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let Some(frame) = start.checked_add(len).and_then(|end| buf.get_mut(start..end)) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let Ok(key) = parse_flow_key(frame) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let seed = self.node.hash_seed;
        let hash = key.hash(seed);
        if key.fragment == Fragment::Later {
            return match self.later_fragment(frame, &key, now) {
                Ok((local, snat)) => {
                    let leg = if snat { Leg::Snat } else { Leg::Response };
                    self.egress(buf, start, len, self.locals[local].pool, hash, leg)
                }
                Err(d) => HostVerdict::Drop(d),
            };
        }
        if key.is_icmp_error() {
            return match self.icmp_error(frame, &key, Side::Src, now) {
                Ok((local, snat)) => {
                    let leg = if snat { Leg::Snat } else { Leg::Response };
                    self.egress(buf, start, len, self.locals[local].pool, hash, leg)
                }
                Err(d) => HostVerdict::Drop(d),
            };
        }
        let tuple = FlowTuple::from(&key);
        if let Some(slot) = self.flows.lookup(&tuple, hash, now) {
            let e = self.flows.touch(slot, key.tcp_flags, now);
            self.follow(slot, &e, frame, &key, now);
            let v = e.value;
            let leg = match v.kind {
                HostFlowKind::Response => Leg::Response,
                HostFlowKind::SnatOut => Leg::Snat,
                _ => return HostVerdict::Drop(HostDrop::NoFlow),
            };
            let Some(l) = self.locals.get_mut(usize::from(v.local)) else {
                return HostVerdict::Drop(HostDrop::UnknownBackend);
            };
            // Only from the backend's own side of its connection (a frame that matched the client's
            // side is not the backend's).
            if key.tcp_flags & TcpFlags::SYN != 0 || l.link.is_none() {
                l.link = Some(link_of(frame, &key));
            }
            let pool = l.pool;
            let Some((_, vip)) = self.vips.get(usize::from(v.frontend)).map(|f| (f.version, f.addr)) else {
                return HostVerdict::Drop(HostDrop::NoFlow);
            };
            if rewrite(frame, &key, Side::Src, &vip, v.port).is_err() {
                return HostVerdict::Drop(HostDrop::Malformed);
            }
            self.record_first_fragment(&key, &v, Side::Src, now);
            return self.egress(buf, start, len, pool, hash, leg);
        }
        // No flow: a connection the backend opens, if an outbound rule (or default SNAT) covers it.
        let link = link_of(frame, &key);
        let tcp = key.protocol == ip_proto::TCP;
        if !(tcp || key.protocol == ip_proto::UDP) || key.is_icmp_error() {
            return HostVerdict::Drop(HostDrop::NoFlow);
        }
        // Only a SYN opens a TCP connection. Anything else is a segment of a connection this host
        // no longer knows (expired, or from before a restart): sent out through SNAT it would
        // leave from the wrong address on a port of its own, and the entry it made would answer
        // for the connection even once the client's next segment recreated its flow.
        if tcp && key.tcp_flags & (TcpFlags::SYN | TcpFlags::ACK) != TcpFlags::SYN {
            return HostVerdict::Drop(HostDrop::NoFlow);
        }
        // A backend in several pools is a local backend of each: any of them with a port block for
        // this protocol may open the connection. None with one: no rule covers it (not an
        // exhaustion); all of them out of ports: exhausted.
        let (mut opened, mut refused) = (None, None);
        for local in 0..self.locals.len() {
            let l = &self.locals[local];
            let serves = |b: &usize| self.grants.get(*b).is_some_and(|g| g.protocol.matches(key.protocol));
            if l.addr != (key.ip_version, key.src_addr) || !l.blocks.iter().any(serves) {
                continue;
            }
            if let Some(got) = self.allocate(local, &key, now) {
                opened = Some((local, got));
                break;
            }
            refused.get_or_insert(local);
        }
        if let Some((local, _)) = opened {
            self.locals[local].link = Some(link);
        }
        let Some((local, (block, port))) = opened else {
            let Some(local) = refused else {
                return HostVerdict::Drop(HostDrop::NoFlow);
            };
            if tcp && self.node.reset_on_snat_exhaustion && key.tcp_flags & TcpFlags::SYN != 0 {
                return self.refuse_with_reset(buf, start, &key, local);
            }
            return HostVerdict::Drop(HostDrop::SnatExhausted);
        };
        let g = self.grants[block];
        let (_, faddr) = (self.vips[g.frontend].version, self.vips[g.frontend].addr);
        let mut flags = 0;
        if g.tcp_reset {
            flags |= RESET;
        }
        let out = HostFlow {
            kind: HostFlowKind::SnatOut,
            flags,
            local: local as u16,
            frontend: g.frontend as u16,
            port,
            orig_port: key.src_port,
            block: block as u16,
            ..HostFlow::default()
        };
        let mut back = tuple;
        back.src = tuple.dst;
        back.src_port = tuple.dst_port;
        back.dst = faddr;
        back.dst_port = port;
        let back_in = HostFlow { kind: HostFlowKind::SnatIn, ..out };
        let Some(slot) =
            self.insert_pair(&tuple, hash, key.tcp_flags, out, &back, back_in, g.idle_timeout_minutes, now)
        else {
            return HostVerdict::Drop(HostDrop::FlowTableFull);
        };
        let e = *self.flows.entry(slot);
        let Some(frame) = buf.get_mut(start..start + len) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        self.follow(slot, &e, frame, &key, now);
        if rewrite(frame, &key, Side::Src, &faddr, port).is_err() {
            return HostVerdict::Drop(HostDrop::Malformed);
        }
        self.record_first_fragment(&key, &out, Side::Src, now);
        let pool = self.locals[local].pool;
        let v = self.egress(buf, start, len, pool, hash, Leg::Snat);
        if matches!(v, HostVerdict::Transmit { .. }) {
            self.counters.snat_out.new_flows += 1;
        }
        v
    }

    /// An SNAT port for a new connection of local backend `local`: a fresh port of one of its blocks
    /// serving the protocol, else (TCP) a port in use whose connections all go elsewhere.
    fn allocate(&mut self, local: usize, key: &FlowKey, now: u32) -> Option<(usize, u16)> {
        let seed = self.node.hash_seed;
        for &b in &self.locals[local].blocks {
            let g = &self.grants[b];
            if !g.protocol.matches(key.protocol) {
                continue;
            }
            let faddr = self.vips[g.frontend].addr;
            let r = if key.protocol == ip_proto::TCP {
                let flows = &self.flows;
                self.snat.alloc_shared(b, now, |p| {
                    let mut back = FlowTuple::from(key);
                    back.src = key.dst_addr;
                    back.src_port = key.dst_port;
                    back.dst = faddr;
                    back.dst_port = p;
                    !flows.holds(&back, tuple_hash(&back, seed))
                })
            } else {
                self.snat.alloc(b, now)
            };
            if let Ok(p) = r {
                return Some((b, p));
            }
        }
        None
    }

    /// Inserts both directions of a connection, each naming the other's slot; returns the first's,
    /// or `None` (nothing inserted, nothing held) if the second insert had to evict the first.
    #[allow(clippy::too_many_arguments)]
    fn insert_pair(
        &mut self,
        a: &FlowTuple,
        a_hash: u32,
        tcp_flags: u8,
        a_value: HostFlow,
        b: &FlowTuple,
        b_value: HostFlow,
        idle: u8,
        now: u32,
    ) -> Option<FlowSlot> {
        self.settle(now);
        let sa = self.flows.insert(a, a_hash, tcp_flags, HostFlow { peer: NO_PEER, ..a_value }, idle, now);
        self.settle(now);
        let b_hash = tuple_hash(b, self.node.hash_seed);
        let b_flags = if tcp_flags & TcpFlags::SYN != 0 { TcpFlags::SYN } else { 0 };
        let sb = self.flows.insert(b, b_hash, b_flags, HostFlow { peer: sa.to_index(), ..b_value }, idle, now);
        // The second insert evicted the first (a full bucket pair): settling releases what the
        // first held (its SNAT port, once); the second goes too, without a second release.
        self.settle(now);
        if sb == sa || !self.flows.live(sa).is_some_and(|e| e.tuple == *a) {
            self.flows.remove(sb);
            return None;
        }
        self.flows.value_mut(sa).peer = sb.to_index();
        Some(sa)
    }

    /// After a packet of entry `slot`: refresh its pair (one idle timer per connection) and keep
    /// the sequence numbers a TCP reset will need.
    fn follow(&mut self, slot: FlowSlot, e: &FlowEntry<HostFlow>, frame: &[u8], key: &FlowKey, now: u32) {
        let peer = e.value.peer;
        let mut state = e.state;
        // Only a SYN, a FIN or a closing connection has FIN bookkeeping to do: a data segment of
        // an established one goes straight to the refresh.
        let tcp = key.protocol == ip_proto::TCP && e.value.kind != HostFlowKind::Fragment;
        if tcp
            && (key.tcp_flags & (TcpFlags::SYN | TcpFlags::FIN) != 0 || state == TcpState::Closing)
            && self.flows.live(slot).is_some()
        {
            state = self.closing(slot, peer, state, key.tcp_flags, now);
        }
        if peer != NO_PEER {
            self.flows.refresh(FlowSlot::from_index(peer), state, now);
        }
        if key.protocol != ip_proto::TCP || key.fragment == Fragment::Later || self.flows.live(slot).is_none() {
            return;
        }
        let o = usize::from(key.l4_offset);
        let Some(h) = frame.get(o..o + 20) else { return };
        let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let data = usize::from(key.l4_len).saturating_sub(usize::from(h[12] >> 4) * 4) as u32;
        let flags = h[13];
        let next = seq
            .wrapping_add(data)
            .wrapping_add(u32::from(flags & TcpFlags::SYN != 0))
            .wrapping_add(u32::from(flags & TcpFlags::FIN != 0));
        let v = self.flows.value_mut(slot);
        v.seq = next;
        v.flags |= SEQ_SEEN;
        if flags & TcpFlags::ACK != 0 {
            v.ack = ack;
            v.flags |= ACK_SEEN;
        }
    }

    /// The FIN bookkeeping of a live TCP entry at `slot` (state `state` after a segment with
    /// `tcp_flags`) and its pair's entry `peer`; returns the state the pair takes.
    fn closing(&mut self, slot: FlowSlot, peer: u32, state: TcpState, tcp_flags: u8, now: u32) -> TcpState {
        // The pair's other entry, if it names this one back (slots are reused).
        let other = (peer != NO_PEER)
            .then(|| self.flows.live(FlowSlot::from_index(peer)))
            .flatten()
            .filter(|p| p.value.peer == slot.to_index())
            .map(|p| p.value.flags);
        if state == TcpState::SynSeen && tcp_flags & TcpFlags::SYN != 0 {
            // A new connection on the 5-tuple (or its SYN-ACK): no side has closed it.
            self.flows.value_mut(slot).flags &= !FIN_SEEN;
            if other.is_some() {
                self.flows.value_mut(FlowSlot::from_index(peer)).flags &= !FIN_SEEN;
            }
        }
        if tcp_flags & (TcpFlags::FIN | TcpFlags::RST) == TcpFlags::FIN {
            self.flows.value_mut(slot).flags |= FIN_SEEN;
        }
        // A FIN closes one direction only: until the other side's, the connection is half closed
        // and that side may still send, for as long as its idle timeout (a server that thinks for
        // a minute after the client's request and FIN). The short closing timeout is for a
        // connection both sides have closed (or whose other side is gone).
        if state == TcpState::Closing && other.is_some_and(|f| f & FIN_SEEN == 0) {
            self.flows.refresh(slot, TcpState::Established, now);
            return TcpState::Established;
        }
        state
    }

    /// Releases what removed entries held: the pair's other entry, the SNAT port.
    fn settle(&mut self, now: u32) {
        while let Some((at, e)) = self.flows.take_removed() {
            self.take_peer(at, &e);
            self.release(&e, now);
        }
    }

    /// Removes and returns the other entry of the pair whose entry `e` was at `at`: the entry `e`
    /// names, provided it names `at` back (slots are reused, so only a mutual link is a pair).
    fn take_peer(&mut self, at: FlowSlot, e: &FlowEntry<HostFlow>) -> Option<FlowEntry<HostFlow>> {
        if e.value.peer == NO_PEER {
            return None;
        }
        let p = FlowSlot::from_index(e.value.peer);
        if self.flows.live(p)?.value.peer != at.to_index() {
            return None;
        }
        self.flows.remove(p)
    }

    /// Releases the SNAT port a removed connection held (its pair is gone with it).
    fn release(&mut self, e: &FlowEntry<HostFlow>, now: u32) {
        if matches!(e.value.kind, HostFlowKind::SnatOut | HostFlowKind::SnatIn) {
            // Both entries carry the port; it is released once, with whichever goes first.
            let _ = self.snat.release(usize::from(e.value.block), e.value.port, now);
        }
    }

    /// Expires idle flows in up to `buckets` buckets of the flow table (call it from the poll loop
    /// with a small budget): ports go back to their blocks, and TCP connections of rules with
    /// `enableTcpReset` get a RST towards each end, handed to `emit` with where it goes.
    pub fn expire(&mut self, now: u32, buckets: usize, mut emit: impl FnMut(HostEgress, &[u8])) {
        let buckets = buckets.min(self.flows.slots() / crate::tables::flow::BUCKET_SLOTS);
        for _ in 0..buckets {
            let mut removed = [(FlowSlot::default(), FlowEntry::<HostFlow>::default()); 8];
            let mut n = 0;
            self.cursor = self.flows.sweep_with(self.cursor, 1, now, |slot, e| {
                removed[n] = (slot, *e);
                n += 1;
            });
            for i in 0..n {
                let (slot, e) = removed[i];
                if e.value.kind == HostFlowKind::None {
                    continue; // already handled as the pair of an earlier one
                }
                // The pair, if the same bucket held it (then it was swept too), else in the table.
                let mutual = |(s, p): &(FlowSlot, FlowEntry<HostFlow>)| {
                    s.to_index() == e.value.peer && p.value.peer == slot.to_index() && e.value.peer != NO_PEER
                };
                let peer = match removed[..n].iter().position(mutual) {
                    Some(j) => {
                        // Handed on as it was (its kind says where its reset goes), then marked.
                        let pair = removed[j].1;
                        removed[j].1.value.kind = HostFlowKind::None;
                        Some(pair)
                    }
                    None => self.take_peer(slot, &e),
                };
                self.release(&e, now);
                if e.tuple.protocol == ip_proto::TCP && e.value.flags & RESET != 0 && e.state != TcpState::Closing {
                    self.reset_both(&e, peer.as_ref(), &mut emit);
                }
            }
            self.settle(now);
        }
    }

    /// A RST to the sender of each entry of a timed-out connection.
    fn reset_both(
        &mut self,
        a: &FlowEntry<HostFlow>,
        b: Option<&FlowEntry<HostFlow>>,
        emit: &mut impl FnMut(HostEgress, &[u8]),
    ) {
        for (e, other) in [(Some(a), b), (b, Some(a))] {
            let Some(e) = e else { continue };
            // Exactly what the receiver expects next (RFC 5961 accepts such a RST at once): the other
            // side's next sequence number, else the last acknowledgment the receiver sent.
            let seq = match other.filter(|o| o.value.flags & SEQ_SEEN != 0) {
                Some(o) => o.value.seq,
                None if e.value.flags & ACK_SEEN != 0 => e.value.ack,
                None => 0,
            };
            let ack = (e.value.flags & SEQ_SEEN != 0).then_some(e.value.seq);
            let to_backend = matches!(e.value.kind, HostFlowKind::Response | HostFlowKind::SnatOut);
            let version = if e.tuple.version & 0x7f == 4 { IpVersion::V4 } else { IpVersion::V6 };
            let ip = |a: &[u8; 16]| crate::wire::flow::ip_of(version, a);
            let backend_link = self.locals.get(usize::from(e.value.local)).and_then(|l| l.link);
            let (dst_mac, vlan) = match (to_backend, backend_link) {
                (true, Some(link)) => link,
                (true, None) => (MacAddr([0xff; 6]), None),
                (false, _) => (self.node.gateway_mac, None),
            };
            let rst = TcpResetRepr {
                src_mac: self.node.mac,
                dst_mac,
                vlan,
                src: ip(&e.tuple.dst),
                dst: ip(&e.tuple.src),
                src_port: e.tuple.dst_port,
                dst_port: e.tuple.src_port,
                seq,
                ack,
            };
            let mut buf = [0u8; RST_HEADROOM + 128];
            let Ok(n) = rst.emit(&mut buf[RST_HEADROOM..]) else { continue };
            self.counters.resets += 1;
            if to_backend {
                emit(HostEgress::Backend(usize::from(e.value.local)), &buf[RST_HEADROOM..RST_HEADROOM + n]);
                continue;
            }
            let pool = self.locals.get(usize::from(e.value.local)).map_or(0, |l| l.pool);
            let hash = tuple_hash(&e.tuple, self.node.hash_seed);
            match self.egress(&mut buf, RST_HEADROOM, n, pool, hash, Leg::Reset) {
                HostVerdict::Transmit { start, len } => emit(HostEgress::Fabric, &buf[start..start + len]),
                _ => self.counters.resets -= 1,
            }
        }
    }

    /// Answers a SYN that found no SNAT port with a RST, in place, back to the backend.
    fn refuse_with_reset(&mut self, buf: &mut [u8], start: usize, key: &FlowKey, local: usize) -> HostVerdict {
        let o = usize::from(key.l4_offset);
        let Some(seq) = buf.get(start + o + 4..start + o + 8).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let rst = TcpResetRepr {
            src_mac: self.node.mac,
            dst_mac: MacAddr([
                buf[start + 6],
                buf[start + 7],
                buf[start + 8],
                buf[start + 9],
                buf[start + 10],
                buf[start + 11],
            ]),
            vlan: (key.vlan_count > 0).then_some(key.vlans[0]),
            src: key.dst_ip(),
            dst: key.src_ip(),
            src_port: key.dst_port,
            dst_port: key.src_port,
            seq: 0,
            ack: Some(seq.wrapping_add(1)),
        };
        self.counters.drops[HostDrop::SnatExhausted as usize] += 1;
        let Ok(n) = rst.emit(&mut buf[start..]) else {
            return HostVerdict::Drop(HostDrop::SnatExhausted);
        };
        self.counters.resets += 1;
        HostVerdict::Deliver { backend: local, start, len: n }
    }

    /// The local backend a MUX meant: by tag, among this host's members of `pool` (and the NAT
    /// target member, if the rule names one). Tag 0 (a MUX that does not stamp): the only member.
    fn local_for(&self, pool: usize, member: Option<usize>, tag: u32) -> Option<usize> {
        let mut candidates = self
            .locals
            .iter()
            .enumerate()
            .filter(|(_, l)| l.pool == pool && member.is_none_or(|m| m == l.member))
            .filter(|(_, l)| tag == 0 || l.tag == tag);
        let first = candidates.next()?.0;
        candidates.next().is_none().then_some(first)
    }

    /// An ICMP error about a packet of one of this host's connections (a router's "fragmentation
    /// needed" about a response, a backend's "port unreachable" about a request): found by the flow
    /// it quotes, reversed, and translated like that connection's packets, in the outer header and in
    /// the quote. `outer` is the side of the outer header this direction translates (`Dst` from the
    /// fabric, `Src` from a backend). Returns the local backend and whether the flow is SNAT.
    fn icmp_error(
        &mut self,
        frame: &mut [u8],
        key: &FlowKey,
        outer: Side,
        now: u32,
    ) -> Result<(usize, bool), HostDrop> {
        let quoted = quoted_flow_key(frame, key).map_err(|_| HostDrop::Malformed)?;
        let t = FlowTuple::from(&quoted.reversed());
        let slot = self.flows.lookup(&t, tuple_hash(&t, self.node.hash_seed), now);
        self.settle(now);
        let v = slot.map(|s| self.flows.entry(s).value).ok_or(HostDrop::IcmpUntranslated)?;
        let local = usize::from(v.local);
        let l = self.locals.get(local).ok_or(HostDrop::UnknownBackend)?;
        let frontend = self.vips.get(usize::from(v.frontend)).map(|f| f.addr).ok_or(HostDrop::IcmpUntranslated)?;
        // (address, port) the quoted packet's other end gets, for each kind of entry.
        let (addr, port, snat) = match (outer, v.kind) {
            (Side::Dst, HostFlowKind::Inbound) if v.flags & FLOATING != 0 => (quoted.src_addr, v.port, false),
            (Side::Dst, HostFlowKind::Inbound) => (l.addr.1, v.port, false),
            (Side::Dst, HostFlowKind::SnatIn) => (l.addr.1, v.orig_port, true),
            (Side::Src, HostFlowKind::Response) => (frontend, v.port, false),
            (Side::Src, HostFlowKind::SnatOut) => (frontend, v.port, true),
            _ => return Err(HostDrop::IcmpUntranslated),
        };
        // The quote is a packet the other way: its source is our destination, and vice versa.
        let quoted_side = if outer == Side::Dst { Side::Src } else { Side::Dst };
        rewrite_quoted(frame, key, &quoted, quoted_side, &addr, port).map_err(|_| HostDrop::Malformed)?;
        rewrite(frame, key, outer, &addr, 0).map_err(|_| HostDrop::Malformed)?;
        Ok((local, snat))
    }

    /// A first fragment records the translation its later fragments need.
    fn record_first_fragment(&mut self, key: &FlowKey, v: &HostFlow, side: Side, now: u32) {
        if key.fragment != Fragment::First {
            return;
        }
        // Whatever this packet's own lookup or touch removed is settled before an insert can evict
        // another entry (two removals of one pair before settling would release its port twice).
        self.settle(now);
        let (t, h) = fragment_record(key, self.node.hash_seed);
        let found = self.flows.lookup(&t, h, now);
        self.settle(now);
        let mut flags = v.flags & FLOATING;
        if side == Side::Src {
            flags |= FRAG_SRC;
        }
        if matches!(v.kind, HostFlowKind::SnatOut | HostFlowKind::SnatIn) {
            flags |= FRAG_SNAT;
        }
        let rec = HostFlow { kind: HostFlowKind::Fragment, flags, peer: NO_PEER, ..*v };
        match found {
            // The identification came round again (a sender numbers its datagrams to a destination
            // from one counter): the new datagram's later fragments follow the new first fragment.
            Some(at) => {
                *self.flows.value_mut(at) = rec;
                // And lives as long as a new record would.
                let state = self.flows.entry(at).state;
                self.flows.refresh(at, state, now);
            }
            None => {
                self.flows.insert(&t, h, 0, rec, 1, now);
            }
        }
        self.settle(now);
    }

    /// A later fragment: the address translation of its first fragment; returns the local backend.
    fn later_fragment(&mut self, frame: &mut [u8], key: &FlowKey, now: u32) -> Result<(usize, bool), HostDrop> {
        let (t, h) = fragment_record(key, self.node.hash_seed);
        let at = self.flows.lookup(&t, h, now).ok_or(HostDrop::FragmentUnknown)?;
        let v = self.flows.touch(at, 0, now).value;
        let local = usize::from(v.local);
        let snat = v.flags & FRAG_SNAT != 0;
        let l = self.locals.get(local).ok_or(HostDrop::UnknownBackend)?;
        let (side, addr) = if v.flags & FRAG_SRC != 0 {
            (Side::Src, self.vips.get(usize::from(v.frontend)).ok_or(HostDrop::NoFlow)?.addr)
        } else if v.flags & FLOATING != 0 {
            return Ok((local, snat));
        } else {
            (Side::Dst, l.addr.1)
        };
        rewrite(frame, key, side, &addr, 0).map_err(|_| HostDrop::Malformed)?;
        Ok((local, snat))
    }

    fn deliver(&mut self, local: usize, start: usize, len: usize, snat: bool) -> HostVerdict {
        if snat {
            self.counters.snat_in.add(len, false);
        } else {
            self.counters.inbound.add(len, false);
        }
        if let Some(c) = self.counters.backends.get_mut(local) {
            c.add(len, false);
        }
        HostVerdict::Deliver { backend: local, start, len }
    }

    /// Sends a translated frame towards the client: through a MUX (VxLAN, the pool's VNI, a MUX
    /// picked by flow hash) or directly to the fabric router.
    fn egress(&mut self, buf: &mut [u8], start: usize, len: usize, pool: usize, hash: u32, leg: Leg) -> HostVerdict {
        let v = match self.node.return_path {
            ReturnPath::Direct => {
                let Some(f) = buf.get_mut(start..start + len).filter(|f| f.len() >= 12) else {
                    return HostVerdict::Drop(HostDrop::Malformed);
                };
                f[..6].copy_from_slice(&self.node.gateway_mac.0);
                f[6..12].copy_from_slice(&self.node.mac.0);
                HostVerdict::Transmit { start, len }
            }
            ReturnPath::ViaMux => {
                let Some(per_mux) = self.tunnels.get(pool).filter(|t| !t.is_empty()) else {
                    return HostVerdict::Drop(HostDrop::Encap);
                };
                let t = &per_mux[((u64::from(hash) * per_mux.len() as u64) >> 32) as usize];
                match t.encapsulate(buf, start, len, hash) {
                    Ok(outer) => HostVerdict::Transmit { start: outer, len: len + t.outer_len() },
                    Err(_) => return HostVerdict::Drop(HostDrop::Encap),
                }
            }
        };
        match leg {
            Leg::Response => self.counters.responses.add(len, false),
            Leg::Snat => self.counters.snat_out.add(len, false),
            Leg::Reset => {}
        }
        v
    }
}

/// Where a decapsulated frame lies in its buffer, and what its tunnel said.
#[derive(Clone, Copy)]
struct Tunnel {
    outer_dst: IpAddr,
    at: usize,
    len: usize,
    vni: u32,
    tag: u32,
}

impl Tunnel {
    fn of(start: usize, d: &crate::wire::VxlanDecap<'_>) -> Self {
        Tunnel {
            outer_dst: d.outer_dst,
            at: start + d.inner_offset,
            len: d.inner.len(),
            vni: d.vni,
            tag: d.backend_tag,
        }
    }
}

/// Which counter an egress frame moves.
#[derive(Clone, Copy)]
enum Leg {
    Response,
    Snat,
    Reset,
}

/// The sender's MAC and outermost VLAN of a parsed frame (at least an Ethernet header long).
fn link_of(frame: &[u8], key: &FlowKey) -> (MacAddr, Option<u16>) {
    let mut mac = [0xff; 6];
    if let Some(m) = frame.get(6..12) {
        mac.copy_from_slice(m);
    }
    (MacAddr(mac), (key.vlan_count > 0).then_some(key.vlans[0]))
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
