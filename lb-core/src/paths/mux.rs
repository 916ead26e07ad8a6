//! The MUX (the Mux of the Ananta paper, SIGCOMM 2013): classify a client frame, find its VIP and
//! rule (load-balancing rule, HA ports, inbound NAT rule or pool), keep established flows on their
//! backend, pick a new flow's backend from the pool's Maglev table (healthy members only), and
//! VxLAN-encapsulate the frame, in place, to the backend's host with the pool's VNI.
//!
//! One `Mux` per core: it owns its flow table and counters, so nothing on the packet path is shared
//! or locked, and nothing allocates. Any number of MUXes built from the same configuration pick the
//! same backend for a new flow (Maglev tables depend only on the set of healthy backends).
//!
//! Fragments: the first fragment carries the ports and is steered like any packet of its flow; it
//! also records its (addresses, protocol, identification) in the flow table, where later fragments
//! find the same backend. A later fragment that arrives before its first is dropped and counted.
//!
//! ICMP errors (destination unreachable, fragmentation needed, packet too big, ...) about a packet
//! a backend sent from the VIP are steered by the flow they quote, reversed: they reach the backend
//! that owns the connection.

use crate::paths::drops::drop_reasons;
use crate::paths::next_hop::{distinct, NextHops};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use super::listen::{
    addr16, backend_id, backend_tag, build_vips, fragment_record, Listener, ListenerIdentity, Target, Vips,
};
use crate::config::{IdleTimeout, LoadBalancer, LoadDistribution, SnatPlan};
use crate::tables::{
    FlowProbe, FlowSlot, FlowTable, FlowTuple, Health, MaglevBackend, MaglevTable, MuxFlow, ProbeState, Transition,
};
use crate::wire::flow::quoted_flow_key;
use crate::wire::icmp::TooBigRepr;
use crate::wire::vxlan::{decapsulate, mark_second_chance};
use crate::wire::TcpFlags;
use crate::wire::{
    ip_proto, parse_flow_key, parse_flow_key_into, FlowKey, Fragment, HashFields, MacAddr, VxlanEncap, WireError,
    VXLAN_PORT,
};

pub use crate::config::settings::MuxNode;

/// Why a configuration or an API call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxError {
    /// The configuration is invalid.
    Config(crate::config::ConfigError),
    /// A pool's Maglev table could not be built.
    Maglev(crate::tables::MaglevError),
    /// The VxLAN tunnel to a backend's host could not be built (the host and the underlay of
    /// different IP versions, VNI out of range).
    Tunnel(IpAddr, WireError),
    /// The flow table could not be allocated.
    FlowTable(crate::tables::FlowTableError),
    /// More distinct (host, VNI) tunnels than a flow entry can name.
    TooManyTunnels,
    /// More listeners (VIP, protocol, port range) in one configuration than a flow entry can name.
    TooManyListeners,
    /// A probe report names no pool member.
    UnknownBackend {
        /// Pool index.
        pool: usize,
        /// Member index.
        member: usize,
    },
    /// A probe report names a probe that no load-balancing rule of the pool uses.
    NotProbed {
        /// Pool index.
        pool: usize,
        /// Probe index.
        probe: usize,
    },
}

impl fmt::Display for MuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MuxError::Config(e) => write!(f, "configuration: {e}"),
            MuxError::Maglev(e) => write!(f, "maglev: {e}"),
            MuxError::Tunnel(host, WireError::BadVersion(_)) => {
                write!(f, "tunnel to host {host}: not of the underlay's IP version")
            }
            MuxError::Tunnel(host, e) => write!(f, "tunnel to host {host}: {e}"),
            MuxError::FlowTable(e) => write!(f, "flow table: {e}"),
            MuxError::TooManyTunnels => f.write_str("more than 65535 (host, VNI) tunnels"),
            MuxError::TooManyListeners => f.write_str("more than 65534 listeners (VIP, protocol, ports)"),
            MuxError::UnknownBackend { pool, member } => write!(f, "no member {member} in pool {pool}"),
            MuxError::NotProbed { pool, probe } => write!(f, "no rule probes pool {pool} with probe {probe}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for MuxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MuxError::Config(e) => Some(e),
            MuxError::Maglev(e) => Some(e),
            MuxError::Tunnel(_, e) => Some(e),
            MuxError::FlowTable(e) => Some(e),
            MuxError::TooManyTunnels
            | MuxError::TooManyListeners
            | MuxError::UnknownBackend { .. }
            | MuxError::NotProbed { .. } => None,
        }
    }
}

drop_reasons! {
    /// Why a frame was dropped. Every drop has one, and a counter.
    pub enum DropReason, DROP_REASONS {
        /// The frame did not parse (see [`WireError`]).
        Malformed = 0 => "malformed",
        /// Its destination is no VIP of this MUX.
        NoVip = 1 => "no_vip",
        /// The VIP has no rule for its protocol and port.
        NoRule = 2 => "no_rule",
        /// The rule's pool has no healthy backend (or a NAT pool port has no member).
        NoBackend = 3 => "no_backend",
        /// A later fragment whose first fragment was not seen.
        FragmentUnknown = 4 => "fragment_unknown",
        /// Not enough headroom, or the encapsulated frame would exceed the underlay MTU.
        Encap = 5 => "encap",
        /// A frame a host sent back through this MUX whose inner source is no VIP (a MUX relays only
        /// what its VIPs send, so it is no open relay).
        NotFromVip = 6 => "not_from_vip",
        /// The next hop is not known yet: the tunnel's peer has no MAC of its own and the node no
        /// gateway MAC (a node file without `gatewayMac`, before the program learned it), or the
        /// program set 00:00:00:00:00:00. Nothing leaves with a zero destination MAC.
        NoNextHop = 7 => "no_next_hop",
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit `buf[start..start + len]` (the encapsulated frame).
    Forward {
        /// Where the outer frame starts.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Drop it.
    Drop(DropReason),
}

/// Packets, bytes and new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traffic {
    /// Frames forwarded.
    pub packets: u64,
    /// Their bytes (before encapsulation).
    pub bytes: u64,
    /// Flows created.
    pub new_flows: u64,
}

impl Traffic {
    #[inline(always)]
    pub(crate) fn add(&mut self, bytes: usize, new_flow: bool) {
        self.packets += 1;
        self.bytes += bytes as u64;
        self.new_flows += u64::from(new_flow);
    }
}

/// The MUX's counters. Indices follow the configuration: `vips` by frontend, `rules` by load-balancing
/// rule then inbound NAT rule then NAT pool, `backends[pool][member]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MuxCounters {
    /// Per frontend.
    pub vips: Vec<Traffic>,
    /// Per rule (load-balancing rules, then inbound NAT rules, then NAT pools).
    pub rules: Vec<Traffic>,
    /// Per rule, as `rules`: TCP SYNs without ACK received (Azure Load Balancer's "SYN Count").
    pub syns: Vec<u64>,
    /// Per pool member.
    pub backends: Vec<Vec<Traffic>>,
    /// Replies to SNAT connections, steered to the host that owns the port.
    pub snat_replies: Traffic,
    /// Frames hosts sent back through this MUX (responses, SNAT connections), decapsulated and
    /// forwarded towards the client.
    pub relayed: Traffic,
    /// Client frames too big for the tunnel once encapsulated, answered with an ICMPv4
    /// "fragmentation needed" or ICMPv6 "packet too big" error (path MTU discovery, RFC 1191 and
    /// RFC 8201) instead of being dropped.
    pub too_big: u64,
    /// Packets of no flow, TCP and not SYNs, steered by the current Maglev table but flagged for a
    /// second chance with the previous table's choice, which differed (see [`SECOND_CHANCE_SECONDS`]).
    pub second_chance: u64,
    /// SYNs that met a flow whose backend the rule no longer balances over (down, or gone from the
    /// pool) and opened a new connection instead.
    pub reopened: u64,
    /// Per [`DropReason`].
    pub drops: [u64; DROP_REASONS],
}

/// How long after a rebuild (a reconfiguration or a health change) a balancer keeps its previous
/// Maglev table for second chances: 10 minutes. A connection that started before the change and
/// whose MUX dies within the window still finds its backend; the longer the window, the more such
/// connections do, at no cost on a flow hit and one table lookup on a TCP packet with no flow. Ten
/// minutes covers the connections that most of the time are short (web requests, RPCs) and the
/// default idle timeouts (4 minutes in Azure), while a MUX failure long after the change is
/// unlikely to find many connections of before it that the current table moved.
pub const SECOND_CHANCE_SECONDS: u32 = 600;

#[derive(Debug, Clone)]
struct PoolState {
    /// Pool member → tunnel id.
    tunnel: Vec<u16>,
}

/// A pool as one health probe sees it: what the load-balancing rules that send to the pool with
/// that probe (or with none) balance new flows over. In Azure Load Balancer a health probe belongs to
/// a load-balancing rule (the rule's `probe`), so two rules on one pool with different probes (HTTP
/// on 80, HTTPS on 443) each take a member out on their own probe's failures only; a rule without a
/// probe sends to every member.
#[derive(Debug, Clone)]
struct Balancer {
    pool: usize,
    /// Index into the configuration's probes; `None`: no probe, every member stays up.
    probe: Option<usize>,
    table: Arc<MaglevTable>,
    /// The members `table` was built over (identity and weight, in pool order): a rebuild over
    /// the same ones keeps it instead of building it again.
    built_from: Vec<MaglevBackend>,
    /// Maglev backend index → pool member index (only healthy, weighted members are in the table).
    in_table: Vec<usize>,
    /// Maglev backend index → backend tag.
    tags: Vec<u32>,
    /// The table this one replaced, for second chances.
    previous: Option<Previous>,
    health: Vec<ProbeState>,
    /// A probe result changed a member's health since the table was built.
    stale: bool,
}

/// Maglev tables built ahead of an update by [`Mux::prepare`], by the members they are built
/// over (identity and weight, in pool order), for one table size.
#[derive(Debug, Clone, Default)]
pub struct PreparedTables {
    size: u32,
    tables: BTreeMap<Vec<MaglevBackend>, Arc<MaglevTable>>,
}

impl PreparedTables {
    /// How many distinct tables it holds.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// A balancer's table before its last change, kept [`SECOND_CHANCE_SECONDS`] for second chances.
#[derive(Debug, Clone)]
struct Previous {
    table: Arc<MaglevTable>,
    /// Maglev backend index → backend tag (the members may be gone from the configuration).
    tags: Vec<u32>,
    /// When it was replaced (the MUX's clock, seconds).
    since: u32,
}

/// Frames a burst pass handles together (DPDK's usual burst).
pub const BURST: usize = 32;
/// How many frames ahead a burst prefetches frame bytes.
const PREFETCH_AHEAD: usize = 4;

/// A frame a burst edits in place: its whole buffer (headroom included) and where the frame lies in
/// it. Implemented for `(buffer, start, len)` tuples; a program implements it for its own buffers
/// (DPDK mbufs) so that a burst of them is processed where it lies, with no array of views built
/// for each burst.
pub trait BurstFrame {
    /// `(buffer, frame start, frame length)`.
    fn parts(&mut self) -> (&mut [u8], usize, usize);
}

impl BurstFrame for (&mut [u8], usize, usize) {
    #[inline(always)]
    fn parts(&mut self) -> (&mut [u8], usize, usize) {
        (&mut *self.0, self.1, self.2)
    }
}

/// Prefetches the first bytes of a frame and the headroom line its outer headers will go to.
#[inline(always)]
fn prefetch_frame(f: &mut impl BurstFrame) {
    let (buf, start, _) = f.parts();
    if let Some(b) = buf.get(start) {
        crate::prefetch::prefetch(b);
    }
    if let Some(b) = buf.get(start.saturating_sub(64)) {
        crate::prefetch::prefetch(b);
    }
}

/// How a configuration's listeners map to the indices flows name them by.
struct ListenerPlan {
    /// Every identity with an index, the index being the position.
    ids: Vec<ListenerIdentity>,
    /// Index → (VIP, counter) in the configuration, `NO_ROUTE` if it has no such listener.
    route: Vec<(u32, u32)>,
    /// Counter → index.
    counter_listener: Vec<u16>,
}

impl ListenerPlan {
    /// Identity → index.
    fn index(&self) -> alloc::collections::BTreeMap<SortableIdentity, usize> {
        self.ids.iter().enumerate().map(|(id, x)| (sortable_identity(x), id)).collect()
    }
}

/// A listener identity as an ordered key.
type SortableIdentity = (u8, [u8; 16], u8, u16, u16);

fn sortable_identity((v, a, p, lo, hi): &ListenerIdentity) -> SortableIdentity {
    (*v as u8, *a, *p as u8, *lo, *hi)
}

/// The indices of `vips`' listeners (`counters` of them), keeping those of `ids` and giving new
/// identities the next ones.
fn plan_listeners(ids: Vec<ListenerIdentity>, vips: &Vips, counters: usize) -> ListenerPlan {
    let mut plan = ListenerPlan { ids, route: Vec::new(), counter_listener: alloc::vec![GONE_LISTENER; counters] };
    let mut known = plan.index();
    for (vip, c, identity) in vips.identities() {
        let id = *known.entry(sortable_identity(&identity)).or_insert_with(|| {
            plan.ids.push(identity);
            plan.ids.len() - 1
        });
        if let Some(slot) = plan.counter_listener.get_mut(c) {
            *slot = u16::try_from(id).unwrap_or(GONE_LISTENER);
        }
        if plan.route.len() <= id {
            plan.route.resize(id + 1, NO_ROUTE);
        }
        plan.route[id] = (vip as u32, c as u32);
    }
    plan.route.resize(plan.ids.len(), NO_ROUTE);
    plan
}

/// The tunnels of a configuration and each pool member's (see `Mux::plan_tunnels`).
struct TunnelPlan {
    /// Index → tunnel; those in force keep their index.
    tunnels: Vec<VxlanEncap>,
    /// (host, VNI, backend tag) of each tunnel.
    keys: Vec<(IpAddr, u32, u32)>,
    /// Tunnel → the (pool, member) whose counters its packets count under.
    owners: Vec<(usize, usize)>,
    /// Per pool, member → tunnel.
    pools: Vec<PoolState>,
}

/// The listener index of a flow whose listener no configuration has any more (never given out:
/// at most `SNAT_REPLY_LISTENER` indices, 0 to 65,533, are).
const GONE_LISTENER: u16 = u16::MAX;
/// The listener a fragment record names for a reply to an SNAT connection (whose first fragment
/// no listener took): its later fragments go where the port sent the first, counted as SNAT
/// replies. Listener indices stop below it.
const SNAT_REPLY_LISTENER: u16 = GONE_LISTENER - 1;

/// One core's MUX.
pub struct Mux {
    node: MuxNode,
    lb: LoadBalancer,
    vips: Vips,
    pools: Vec<PoolState>,
    /// One per (pool, probe) pair of the load-balancing rules.
    balancers: Vec<Balancer>,
    /// Load-balancing rule → its balancer.
    rule_balancer: Vec<usize>,
    /// Append-only: flows name their tunnel by index, so indices survive reconfiguration.
    tunnels: Vec<VxlanEncap>,
    /// (host, VNI, backend tag) of each tunnel.
    tunnel_keys: Vec<(IpAddr, u32, u32)>,
    /// Flow-table `backend` field → (pool, member) for counters; may be stale after an update.
    tunnel_owner: Vec<(usize, usize)>,
    flows: FlowTable,
    /// Every listener identity this MUX has had (position = index), so that a flow names its
    /// listener by an index that survives reconfiguration; it only grows, except that `update`
    /// starts it again from the configuration in force when it would outgrow `listener_limit`.
    listener_ids: Vec<ListenerIdentity>,
    /// Listener index → its VIP and counter in the configuration in force (`NO_ROUTE` if it is
    /// not there).
    listener_route: Vec<(u32, u32)>,
    /// Counter → listener index, for new flows.
    counter_listener: Vec<u16>,
    /// How many listener indices a flow entry can name (`GONE_LISTENER`; lowered by tests).
    listener_limit: usize,
    /// The flow keys of the burst in flight (kept here so that a burst does not initialise them).
    burst_keys: Vec<FlowKey>,
    /// The `now` of the last frames processed: when a rebuild replaces a table.
    clock: u32,
    counters: MuxCounters,
    snat: SnatPlan,
    underlay: (crate::wire::IpVersion, [u8; 16]),
    /// The next hops the program set, by underlay peer (see [`Mux::set_next_hop`]); the others go
    /// to the gateway MAC.
    next_hops: NextHops,
    /// Every tunnel has a next hop (checked once per configuration or next hop, not per packet).
    hops_known: bool,
    /// Updates build the Maglev tables (not in a MUX made by [`Mux::check`]).
    tables_built: bool,
}

/// No (VIP, listener or counter) pair: a listener index whose listener is not in the configuration
/// in force, or a packet of a burst whose VIP and listener were not looked up ahead.
const NO_ROUTE: (u32, u32) = (u32::MAX, u32::MAX);

impl Mux {
    /// Builds a MUX for a validated configuration.
    pub fn new(node: MuxNode, lb: LoadBalancer) -> Result<Self, MuxError> {
        Self::with_flow_memory(node, lb, |_, _| {})
    }

    /// [`Mux::new`], handing the flow table's memory to `prepare` before it is first written (see
    /// [`FlowTable::with_capacity_prepared`]: the program asks for large pages there).
    pub fn with_flow_memory(
        node: MuxNode,
        lb: LoadBalancer,
        prepare: impl FnOnce(*const u8, usize),
    ) -> Result<Self, MuxError> {
        let mut mux = Self::empty(node, prepare)?;
        mux.update(lb)?;
        Ok(mux)
    }

    /// The Maglev tables an update of a MUX of `node` to `lb` builds when each probed member's
    /// health is `health(pool, probe, member)` (indices in `lb`; `None`: up, as a member no probe
    /// has spoken on yet): a program builds them once, away from its workers, and hands them to
    /// every worker's [`Mux::update_prepared`], which share them. Those `previous` holds for the
    /// same members are shared too. `lb` is checked as [`Mux::check`] checks it.
    pub fn prepare(
        node: &MuxNode,
        lb: &LoadBalancer,
        health: impl Fn(usize, usize, usize) -> Option<bool>,
        previous: Option<&PreparedTables>,
    ) -> Result<PreparedTables, MuxError> {
        Self::check(node.clone(), lb.clone())?;
        let size = node.maglev_size;
        let mut tables = BTreeMap::new();
        for rule in &lb.rules {
            let pool = &lb.pools[rule.pool];
            let members: Vec<MaglevBackend> = pool
                .backends
                .iter()
                .enumerate()
                .filter(|&(m, b)| b.weight > 0 && rule.probe.and_then(|q| health(rule.pool, q, m)).unwrap_or(true))
                .map(|(_, b)| MaglevBackend { id: backend_id(b.address), weight: b.weight })
                .collect();
            if let alloc::collections::btree_map::Entry::Vacant(slot) = tables.entry(members) {
                // The tables of `previous` for the same members are shared, not built again.
                let kept = previous.filter(|p| p.size == size).and_then(|p| p.tables.get(slot.key()));
                let table = match kept {
                    Some(t) => Arc::clone(t),
                    None => Arc::new(MaglevTable::build(slot.key(), size).map_err(MuxError::Maglev)?),
                };
                slot.insert(table);
            }
        }
        Ok(PreparedTables { size, tables })
    }

    /// Whether [`Mux::new`] (or [`Mux::update`] of a MUX of `node`) takes `lb`: every check they
    /// make, without building the Maglev tables, so that a program can check a configuration of
    /// thousands of rules before its workers build it.
    pub fn check(mut node: MuxNode, lb: LoadBalancer) -> Result<(), MuxError> {
        node.base.flow_capacity = 1;
        let mut mux = Self::empty(node, |_, _| {})?;
        mux.tables_built = false;
        mux.update(lb)
    }

    /// A MUX of `node` with no configuration.
    fn empty(node: MuxNode, prepare: impl FnOnce(*const u8, usize)) -> Result<Self, MuxError> {
        // The table size is the node's, whatever the configuration: refused here, not at the first
        // configuration whose rules build a table.
        MaglevTable::check(&[], node.maglev_size).map_err(MuxError::Maglev)?;
        let flows = FlowTable::with_capacity_prepared(node.base.flow_capacity, prepare).map_err(MuxError::FlowTable)?;
        let mux = Mux {
            lb: LoadBalancer::default(),
            vips: Vips::default(),
            pools: Vec::new(),
            balancers: Vec::new(),
            rule_balancer: Vec::new(),
            tunnels: Vec::new(),
            tunnel_keys: Vec::new(),
            tunnel_owner: Vec::new(),
            flows,
            listener_ids: Vec::new(),
            listener_route: Vec::new(),
            counter_listener: Vec::new(),
            listener_limit: usize::from(SNAT_REPLY_LISTENER),
            burst_keys: alloc::vec![FlowKey::default(); BURST],
            clock: 0,
            counters: MuxCounters::default(),
            snat: SnatPlan::default(),
            underlay: addr16(node.base.underlay),
            next_hops: NextHops::default(),
            hops_known: false,
            tables_built: true,
            node,
        };
        Ok(mux)
    }

    /// Applies a new configuration at run time. Established flows keep their backend (they name
    /// their tunnel, which stays); new flows follow the new rules and pools. Health of members that
    /// keep their address in a pool of the same name, probed by a probe of the same name, carries
    /// over; a pool no rule probes any more has every member up. On error nothing changes.
    ///
    /// It does not visit the flows, with one exception: after 65,534 distinct listeners (VIP,
    /// protocol, ports) over the MUX's life, the indices flows name them by start again from
    /// this configuration, and that update renumbers the flows in one walk of the table.
    pub fn update(&mut self, lb: LoadBalancer) -> Result<(), MuxError> {
        self.update_with_health(lb, |_, _, _| None)
    }

    /// [`Mux::update`], with the health of members set outright where `health(pool, probe,
    /// member)` (indices in `lb`) gives it, as [`Mux::set_health`] sets it: the first tables of
    /// the new configuration are built with it, so that no frame meets a table built on health
    /// that is about to change (a control plane that hands MUXes their members' health applies
    /// a configuration and the health that goes with it at once).
    pub fn update_with_health(
        &mut self,
        lb: LoadBalancer,
        health: impl Fn(usize, usize, usize) -> Option<bool>,
    ) -> Result<(), MuxError> {
        self.update_prepared(lb, health, None)
    }

    /// [`Mux::update_with_health`], taking the tables it needs from `prepared` (built by
    /// [`Mux::prepare`] away from the data path) where their members match: a table is then
    /// shared, not built, so that the frames waiting behind the update do not wait for Maglev
    /// builds, and every core holds one copy of it. Tables that `prepared` does not hold (health
    /// that differs on this core) are built as usual.
    pub fn update_prepared(
        &mut self,
        lb: LoadBalancer,
        health: impl Fn(usize, usize, usize) -> Option<bool>,
        prepared: Option<&PreparedTables>,
    ) -> Result<(), MuxError> {
        lb.validate().map_err(MuxError::Config)?;
        let prepared = prepared.filter(|p| p.size == self.node.maglev_size);
        let TunnelPlan { tunnels, keys, owners, pools } = self.plan_tunnels(&lb)?;
        let (balancers, rule_balancer) = self.plan_balancers(&lb, &health, prepared)?;
        let snat = lb.snat_plan().map_err(MuxError::Config)?;
        let (vips, counter) = build_vips(&lb);
        let ListenerPlan { ids: listener_ids, route: listener_route, counter_listener } =
            self.plan_listener_indices(&vips, counter)?;
        // Nothing below fails: the new configuration takes effect as a whole.
        self.carry_counters(&lb, counter);
        self.lb = lb;
        self.snat = snat;
        self.vips = vips;
        self.pools = pools;
        self.balancers = balancers;
        self.rule_balancer = rule_balancer;
        self.tunnels = tunnels;
        self.tunnel_keys = keys;
        self.tunnel_owner = owners;
        self.listener_ids = listener_ids;
        self.listener_route = listener_route;
        self.counter_listener = counter_listener;
        self.hops_known = self.tunnels.iter().all(VxlanEncap::has_next_hop);
        Ok(())
    }

    /// The underlay addresses of the hosts this MUX tunnels to (each once, in the order their
    /// tunnels were built): those of the configuration in force and those established flows still
    /// go to. The program resolves each one's next hop and hands it to [`Mux::set_next_hop`].
    pub fn underlay_peers(&self) -> Vec<IpAddr> {
        distinct(self.tunnel_keys.iter().map(|&(host, _, _)| host))
    }

    /// Frames tunnelled to `peer` leave for `mac` from now on: the tunnels' prebuilt outer headers
    /// are rewritten in place, and tunnels built later (by [`Mux::update`]) take it too.
    /// 00:00:00:00:00:00 says the next hop is unknown: frames to `peer` are dropped as
    /// [`DropReason::NoNextHop`] until it is known.
    pub fn set_next_hop(&mut self, peer: IpAddr, mac: MacAddr) {
        self.next_hops.set(peer, mac);
        self.apply_next_hops();
    }

    /// Forgets `peer`'s own next hop: frames to it go to the gateway MAC again.
    pub fn clear_next_hop(&mut self, peer: IpAddr) {
        self.next_hops.clear(peer);
        self.apply_next_hops();
    }

    /// The default next hop: for peers without one of their own and for the responses this MUX
    /// relays towards clients.
    pub fn set_gateway_mac(&mut self, mac: MacAddr) {
        self.node.base.gateway_mac = mac;
        self.apply_next_hops();
    }

    /// The MAC frames to `peer` leave for.
    fn next_hop(&self, peer: IpAddr) -> MacAddr {
        self.next_hops.mac_for(peer, self.node.base.gateway_mac)
    }

    /// Rewrites every tunnel's destination MAC to its peer's next hop.
    fn apply_next_hops(&mut self) {
        for i in 0..self.tunnels.len() {
            let mac = self.next_hop(self.tunnel_keys[i].0);
            self.tunnels[i].set_dst_mac(mac);
        }
        self.hops_known = self.tunnels.iter().all(VxlanEncap::has_next_hop);
    }

    /// The tunnels `lb` needs: those in force, whose indices established flows name, and one more
    /// for each new (host, VNI, backend) of its pools; and each pool member's.
    fn plan_tunnels(&self, lb: &LoadBalancer) -> Result<TunnelPlan, MuxError> {
        let mut tunnels = self.tunnels.clone();
        let mut keys = self.tunnel_keys.clone();
        let mut owners = self.tunnel_owner.clone();
        // Tunnel key → index, so that a configuration of many backends is planned in n log n.
        let mut index: BTreeMap<(IpAddr, u32, u32), usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let mut pools = Vec::with_capacity(lb.pools.len());
        for (pi, pool) in lb.pools.iter().enumerate() {
            let mut tunnel = Vec::with_capacity(pool.backends.len());
            for (mi, b) in pool.backends.iter().enumerate() {
                let key = (b.host, pool.vni, backend_tag(b.address));
                let id = match index.get(&key).copied() {
                    Some(id) => {
                        owners[id] = (pi, mi);
                        id
                    }
                    None => {
                        let t = VxlanEncap::new(
                            self.node.base.mac,
                            self.next_hop(b.host),
                            self.node.base.underlay,
                            b.host,
                            pool.vni,
                            self.node.base.ttl,
                            self.node.base.mtu,
                        )
                        .and_then(|t| t.with_backend_tag(key.2))
                        .map_err(|e| MuxError::Tunnel(b.host, e))?;
                        tunnels.push(t);
                        keys.push(key);
                        owners.push((pi, mi));
                        index.insert(key, keys.len() - 1);
                        keys.len() - 1
                    }
                };
                tunnel.push(u16::try_from(id).map_err(|_| MuxError::TooManyTunnels)?);
            }
            pools.push(PoolState { tunnel });
        }
        Ok(TunnelPlan { tunnels, keys, owners, pools })
    }

    /// The listener indices of `vips` (`counters` listeners). Established flows name their
    /// listener by an index kept for its identity (VIP, protocol, ports) across reconfigurations;
    /// the new configuration gives each index its counter, or none, and a flow whose listener is
    /// gone takes the full path (see `steer`).
    ///
    /// Indices only ever grow (one per identity ever configured). When they would no longer fit a
    /// flow entry, they start again from `vips` alone and the flows are renumbered once, in a walk
    /// of the table. That walk is the one change made before `update` commits, and nothing after
    /// it can fail.
    fn plan_listener_indices(&mut self, vips: &Vips, counters: usize) -> Result<ListenerPlan, MuxError> {
        let plan = plan_listeners(self.listener_ids.clone(), vips, counters);
        if plan.ids.len() <= self.listener_limit {
            return Ok(plan);
        }
        let plan = plan_listeners(Vec::new(), vips, counters);
        if plan.ids.len() > self.listener_limit {
            return Err(MuxError::TooManyListeners);
        }
        self.renumber_flows(&plan);
        Ok(plan)
    }

    /// Gives every flow the index `plan` has for its listener's identity; a flow whose listener is
    /// gone gets `GONE_LISTENER`.
    fn renumber_flows(&mut self, plan: &ListenerPlan) {
        let sortable = plan.index();
        let renumber: Vec<u16> = self
            .listener_ids
            .iter()
            .map(|x| sortable.get(&sortable_identity(x)).map_or(GONE_LISTENER, |&id| id as u16))
            .collect();
        self.flows.retain(|e| {
            // An SNAT reply's fragment record names no listener: it keeps its marker.
            if e.value.listener != SNAT_REPLY_LISTENER {
                e.value.listener = renumber.get(usize::from(e.value.listener)).copied().unwrap_or(GONE_LISTENER);
            }
            true
        });
    }

    /// Moves the counters to `lb`'s indices. Counters follow their resource (by name; backends by
    /// pool name and address), wherever it moves in the new configuration; a new resource starts
    /// at zero, a removed one's go. `counters`: how many listener counters `lb` has.
    fn carry_counters(&mut self, lb: &LoadBalancer, counters: usize) {
        let old = &self.lb;
        // Name → position in the configuration in force, so that thousands of rules and pools
        // are matched in n log n.
        let old_frontends: BTreeMap<&str, usize> =
            old.frontends.iter().enumerate().map(|(i, f)| (f.name.as_str(), i)).collect();
        let old_vips = core::mem::take(&mut self.counters.vips);
        self.counters.vips = lb
            .frontends
            .iter()
            .map(|f| old_frontends.get(f.name.as_str()).and_then(|&i| old_vips.get(i).copied()).unwrap_or_default())
            .collect();
        let (old_names, new_names) = (rule_names(old), rule_names(lb));
        let old_rule_at: BTreeMap<(u8, &str), usize> = old_names.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let old_rules = core::mem::take(&mut self.counters.rules);
        self.counters.rules = new_names
            .iter()
            .map(|n| old_rule_at.get(n).and_then(|&i| old_rules.get(i).copied()).unwrap_or_default())
            .collect();
        debug_assert_eq!(self.counters.rules.len(), counters);
        let old_syns = core::mem::take(&mut self.counters.syns);
        self.counters.syns = new_names
            .iter()
            .map(|n| old_rule_at.get(n).and_then(|&i| old_syns.get(i).copied()).unwrap_or_default())
            .collect();
        let old_pools: BTreeMap<&str, usize> =
            old.pools.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
        let old_backends = core::mem::take(&mut self.counters.backends);
        self.counters.backends = lb
            .pools
            .iter()
            .map(|p| {
                let op = old_pools.get(p.name.as_str()).copied();
                p.backends
                    .iter()
                    .map(|b| {
                        op.and_then(|oi| {
                            let bi = old.pools[oi].backends.iter().position(|x| x.address == b.address)?;
                            old_backends.get(oi)?.get(bi).copied()
                        })
                        .unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
    }

    /// The balancers of `lb`'s load-balancing rules, one per (pool, probe) pair, and each rule's.
    fn plan_balancers<'a>(
        &'a self,
        lb: &'a LoadBalancer,
        preset: &impl Fn(usize, usize, usize) -> Option<bool>,
        prepared: Option<&PreparedTables>,
    ) -> Result<(Vec<Balancer>, Vec<usize>), MuxError> {
        let size = self.node.maglev_size;
        let mut balancers: Vec<Balancer> = Vec::new();
        let mut of_rule = Vec::with_capacity(lb.rules.len());
        // (pool, probe) → its balancer, new and old (by names), so that thousands of rules are
        // planned in n log n.
        let mut planned: BTreeMap<(usize, Option<usize>), usize> = BTreeMap::new();
        let probe_name = |lb: &'a LoadBalancer, p: Option<usize>| p.map(|p| lb.probes[p].name.as_str());
        let olds: BTreeMap<(&str, Option<&str>), &Balancer> = self
            .balancers
            .iter()
            .map(|b| ((self.lb.pools[b.pool].name.as_str(), probe_name(&self.lb, b.probe)), b))
            .collect();
        for rule in &lb.rules {
            if let Some(&at) = planned.get(&(rule.pool, rule.probe)) {
                of_rule.push(at);
                continue;
            }
            let pool = &lb.pools[rule.pool];
            let threshold = rule.probe.map_or(1, |p| lb.probes[p].number_of_probes);
            // The same pool probed by the same probe before (by names): its members keep their health.
            let old = olds.get(&(pool.name.as_str(), probe_name(lb, rule.probe))).copied();
            let health = pool
                .backends
                .iter()
                .enumerate()
                .map(|(member, m)| {
                    let kept = old.and_then(|o| {
                        let i = self.lb.pools[o.pool].backends.iter().position(|x| x.address == m.address)?;
                        Some(o.health[i])
                    });
                    let mut state = kept.map_or_else(|| ProbeState::new(threshold), |k| k.with_threshold(threshold));
                    if let Some(up) = rule.probe.and_then(|p| preset(rule.pool, p, member)) {
                        state.set(up);
                    }
                    state
                })
                .collect();
            // Every member may come up later: the table must have room for all of them.
            let all: Vec<MaglevBackend> = pool
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| MaglevBackend { id: backend_id(b.address), weight: b.weight })
                .collect();
            MaglevTable::check(&all, size).map_err(MuxError::Maglev)?;
            // The old table stays the current one until the rebuild finds a change, so that a
            // reconfiguration that leaves this table alone does not cut a second chance short.
            let mut b = Balancer {
                pool: rule.pool,
                probe: rule.probe,
                table: old.map(|o| o.table.clone()).unwrap_or_default(),
                built_from: old.map(|o| o.built_from.clone()).unwrap_or_default(),
                in_table: Vec::new(),
                tags: old.map(|o| o.tags.clone()).unwrap_or_default(),
                previous: old.and_then(|o| o.previous.clone()),
                health,
                stale: false,
            };
            if self.tables_built {
                b.rebuild(pool, size, self.clock, prepared)?;
            }
            planned.insert((rule.pool, rule.probe), balancers.len());
            balancers.push(b);
            of_rule.push(balancers.len() - 1);
        }
        Ok((balancers, of_rule))
    }

    /// Gives each balancer a previous table for second chances from `earlier`, a configuration
    /// this MUX's pool ran before: the table of the pool of the same name over its members of
    /// non-zero weight, all healthy, replaced `age` seconds before `now` (the clock of
    /// [`Mux::process`]). A MUX that starts after a change
    /// has no history of its own; the program recalls what the node ran before it restarted (or
    /// what the control plane stored), so that the connections established before the change and
    /// moved onto this MUX still find their backends. A balancer whose pool `earlier` lacks, or
    /// whose earlier table is the current one, keeps what it has.
    pub fn recall(&mut self, earlier: &LoadBalancer, age: u32, now: u32) -> Result<(), MuxError> {
        let size = self.node.maglev_size;
        let since = now.wrapping_sub(age);
        if age >= SECOND_CHANCE_SECONDS {
            return Ok(());
        }
        for b in &mut self.balancers {
            let name = &self.lb.pools[b.pool].name;
            let Some(pool) = earlier.pools.iter().find(|p| &p.name == name) else { continue };
            let members = pool.backends.iter().filter(|m| m.weight > 0);
            let backends: Vec<MaglevBackend> =
                members.clone().map(|m| MaglevBackend { id: backend_id(m.address), weight: m.weight }).collect();
            let tags: Vec<u32> = members.map(|m| backend_tag(m.address)).collect();
            let table = MaglevTable::build(&backends, size).map_err(MuxError::Maglev)?;
            if table.is_empty() || (table == *b.table && tags == b.tags) {
                continue;
            }
            b.previous = Some(Previous { table: Arc::new(table), tags, since });
        }
        Ok(())
    }

    /// Reports one result of probe `probe` for member `member` of pool `pool` (indices in the
    /// configuration's order; from the prober, off the packet path). A health change rebuilds the
    /// Maglev table of the rules that send to the pool with that probe; flows already on the member
    /// stay. [`Mux::record_probe`] and [`Mux::apply_probes`] do the same for many results at once.
    pub fn report_probe(
        &mut self,
        pool: usize,
        probe: usize,
        member: usize,
        success: bool,
    ) -> Result<Transition, MuxError> {
        let t = self.record_probe(pool, probe, member, success)?;
        self.apply_probes()?;
        Ok(t)
    }

    /// Records one probe result without rebuilding any table yet: a batch of results (every
    /// prober's, after a zone failed) then costs one rebuild a balancer in [`Mux::apply_probes`],
    /// not one a result.
    pub fn record_probe(
        &mut self,
        pool: usize,
        probe: usize,
        member: usize,
        success: bool,
    ) -> Result<Transition, MuxError> {
        let b = self
            .balancers
            .iter_mut()
            .find(|b| b.pool == pool && b.probe == Some(probe))
            .ok_or(MuxError::NotProbed { pool, probe })?;
        let state = b.health.get_mut(member).ok_or(MuxError::UnknownBackend { pool, member })?;
        let t = state.record(success);
        b.stale |= t != Transition::None;
        Ok(t)
    }

    /// Sets the health of member `member` of pool `pool` as probe `probe` sees it outright, with
    /// no threshold counting (the verdict was made elsewhere: a host agent that probes its own
    /// backends and applied `numberOfProbes` itself), without rebuilding any table yet:
    /// [`Mux::apply_probes`] rebuilds what changed.
    pub fn set_health(&mut self, pool: usize, probe: usize, member: usize, up: bool) -> Result<Transition, MuxError> {
        let b = self
            .balancers
            .iter_mut()
            .find(|b| b.pool == pool && b.probe == Some(probe))
            .ok_or(MuxError::NotProbed { pool, probe })?;
        let state = b.health.get_mut(member).ok_or(MuxError::UnknownBackend { pool, member })?;
        let t = state.set(up);
        b.stale |= t != Transition::None;
        Ok(t)
    }

    /// Rebuilds the tables whose members' health [`Mux::record_probe`] or [`Mux::set_health`]
    /// changed.
    pub fn apply_probes(&mut self) -> Result<(), MuxError> {
        for b in self.balancers.iter_mut().filter(|b| b.stale) {
            b.rebuild(&self.lb.pools[b.pool], self.node.maglev_size, self.clock, None)?;
        }
        Ok(())
    }

    /// Health of a pool member: down if any probe of the pool's rules has taken it out (then some
    /// rule sends it no new flows), up otherwise.
    pub fn health(&self, pool: usize, member: usize) -> Option<Health> {
        self.lb.pools.get(pool)?.backends.get(member)?;
        let down = self.balancers.iter().any(|b| b.pool == pool && b.health[member].health() == Health::Down);
        Some(if down { Health::Down } else { Health::Up })
    }

    /// Health of a pool member as probe `probe` sees it (`None` if no rule probes the pool with it).
    pub fn probe_health(&self, pool: usize, probe: usize, member: usize) -> Option<Health> {
        let b = self.balancers.iter().find(|b| b.pool == pool && b.probe == Some(probe))?;
        b.health.get(member).map(ProbeState::health)
    }

    /// The counters.
    pub fn counters(&self) -> &MuxCounters {
        &self.counters
    }

    /// Sets the MUX's clock (seconds, the `now` frames are processed with; each burst sets it too):
    /// a rebuild (reconfiguration, health change) replaces a table at this time, and its previous
    /// table gives second chances for [`SECOND_CHANCE_SECONDS`] after it.
    pub fn set_clock(&mut self, now: u32) {
        self.clock = now;
    }

    /// The flow table (for its counters, sweeping and status).
    pub fn flows(&mut self) -> &mut FlowTable {
        &mut self.flows
    }

    /// The configuration in force.
    pub fn config(&self) -> &LoadBalancer {
        &self.lb
    }

    /// Processes a burst: `frames[i]` is `(buffer, frame start, frame length)`; the verdicts go to
    /// `out[i]`. Frames are edited in place. Three passes over each group of [`BURST`] frames: the
    /// first parses and hashes every frame, prefetching the frames a few ahead and each flow's
    /// buckets; the second reads the buckets' signatures, prefetching the entry each flow will be
    /// compared with (or the slot a new one will take) and finding a new flow's VIP and listener;
    /// the third steers them, by then mostly from the cache (what DPDK's bulk hash lookup does, so
    /// that the misses of a burst overlap instead of being paid one after another).
    pub fn process_burst(&mut self, frames: &mut [impl BurstFrame], now: u32, out: &mut [Verdict]) {
        let n = frames.len().min(out.len());
        let seed = self.node.base.hash_seed;
        // Each key is parsed straight into its slot and read from there by the later passes (no
        // copy of a freshly written key, which would stall on its narrow stores). The slots live
        // in the MUX, taken out for the burst so that steering can borrow the MUX; they are always
        // BURST long, so the resize does nothing (it would allocate only after a panic had lost them).
        self.clock = now;
        let mut keys = core::mem::take(&mut self.burst_keys);
        keys.resize(BURST, FlowKey::default());
        for (group, verdicts) in frames[..n].chunks_mut(BURST).zip(out[..n].chunks_mut(BURST)) {
            // Both cut to one length the compiler knows is at most BURST: then no index below into
            // the burst's arrays needs a bounds check.
            let count = group.len().min(verdicts.len()).min(BURST);
            let (group, verdicts) = (&mut group[..count], &mut verdicts[..count]);
            let keys = &mut keys[..BURST];
            let mut hashes = [0u32; BURST];
            let mut probes = [FlowProbe::UNSET; BURST];
            let mut parsed = [false; BURST];
            for f in group.iter_mut().take(PREFETCH_AHEAD) {
                prefetch_frame(f);
            }
            for i in 0..count {
                if let Some(f) = group.get_mut(i + PREFETCH_AHEAD) {
                    prefetch_frame(f);
                }
                let (buf, start, len) = group[i].parts();
                if let Some(frame) = start.checked_add(len).and_then(|end| buf.get(start..end)) {
                    if parse_flow_key_into(frame, &mut keys[i]).is_ok() {
                        parsed[i] = true;
                        hashes[i] = keys[i].hash(seed);
                        probes[i] = self.flows.probe(hashes[i]);
                        self.flows.prefetch_probe(&probes[i]);
                    }
                }
            }
            // Where a new flow will go: the VIP and listener, found here once.
            let mut routes = [NO_ROUTE; BURST];
            for i in 0..count {
                if parsed[i] && self.flows.prefetch_entry(&mut probes[i], now) {
                    routes[i] = self.prefetch_choice(&keys[i], hashes[i]);
                }
            }
            for i in 0..count {
                let v = if parsed[i] {
                    let (buf, start, len) = group[i].parts();
                    self.steer(buf, start, len, &keys[i], hashes[i], &probes[i], routes[i], now)
                } else {
                    Verdict::Drop(DropReason::Malformed)
                };
                // Stored variant by variant: a plain `verdicts[i] = v` copies the verdict out of the
                // stack slot steer's return paths meet in, the byte ranges of both variants' layouts
                // one by one; rebuilt here, each variant stores only its own fields.
                match v {
                    Verdict::Forward { start, len } => verdicts[i] = Verdict::Forward { start, len },
                    Verdict::Drop(r) => {
                        self.counters.drops[r as usize] += 1;
                        verdicts[i] = Verdict::Drop(r);
                    }
                }
            }
        }
        self.burst_keys = keys;
    }

    /// Processes one frame at `buf[start..start + len]`, with headroom before it for the outer
    /// headers; `now` is in seconds.
    pub fn process(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> Verdict {
        self.clock = now;
        let key = self.classify(buf, start, len);
        self.finish(buf, start, len, key.as_ref(), now)
    }

    /// The frame's flow key and its hash, if it parses.
    #[inline(always)]
    fn classify(&self, buf: &[u8], start: usize, len: usize) -> Option<(FlowKey, u32)> {
        let k = start.checked_add(len).and_then(|end| buf.get(start..end)).and_then(|f| parse_flow_key(f).ok())?;
        Some((k, k.hash(self.node.base.hash_seed)))
    }

    #[inline(always)]
    fn finish(&mut self, buf: &mut [u8], start: usize, len: usize, key: Option<&(FlowKey, u32)>, now: u32) -> Verdict {
        let v = match key {
            Some((k, h)) => {
                let probe = self.flows.probe(*h);
                self.steer(buf, start, len, k, *h, &probe, NO_ROUTE, now)
            }
            None => Verdict::Drop(DropReason::Malformed),
        };
        if let Verdict::Drop(r) = v {
            self.counters.drops[r as usize] += 1;
        }
        v
    }

    /// Everything after parsing: `key` is the frame's flow key, `key_hash` its 5-tuple hash. The
    /// common case (a whole TCP/UDP/ICMP-echo packet to a VIP port with a rule) stays in this one
    /// short function; fragments and ICMP errors take [`Mux::steer_special`].
    ///
    /// Always inlined: in lb-dpdk, where the burst loop is inlined into the poll loop, a plain
    /// `#[inline]` leaves it a function of its own there, its eight arguments passed through the
    /// stack, even where the benches inline it.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn steer(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        key: &FlowKey,
        key_hash: u32,
        probe: &FlowProbe,
        route: (u32, u32),
        now: u32,
    ) -> Verdict {
        let special = key.fragment != Fragment::None || key.is_icmp_error();
        // An established connection first: its flow names its listener, whose counter in the
        // configuration in force gives the VIP and the counters, so neither the VIP nor the
        // listener is looked up again. A listener that is gone sends the packet down the full path
        // below, which finds what took its VIP, protocol and port now (the flow keeps its backend).
        let mut known_miss = false;
        if !special {
            match self.flows.lookup_probed(probe, key, now) {
                Some(at) => {
                    // Touched (its TCP state moved, a RST removing it) only if it is steered here:
                    // otherwise the full path below finds it again and touches it once.
                    let named = self.listener_route.get(usize::from(self.flows.entry(at).value.listener)).copied();
                    // A new connection's SYN (a port that came round again) may meet a flow whose
                    // backend is gone: the full path below checks that.
                    let opening = key.protocol == ip_proto::TCP && is_opening(key.tcp_flags);
                    if let Some((vip, rule)) = named.filter(|&r| r != NO_ROUTE && !opening) {
                        let backend = self.flows.touch(at, key.tcp_flags, now).value.backend;
                        return self.forward(buf, start, len, vip as usize, rule as usize, backend, false, key_hash);
                    }
                }
                None => known_miss = true,
            }
        }
        // A new flow whose VIP and listener the burst's middle pass found (a miss then and now).
        if known_miss && route != NO_ROUTE {
            let vip = route.0 as usize;
            if let Some(&l) = self.vips.get(vip).and_then(|v| v.listeners.get(route.1 as usize)) {
                self.count_syn(&l, key);
                return match self.open(&l, key, key_hash, probe, key.tcp_flags, true, now) {
                    Ok(chosen) => self.forward_new(buf, start, len, vip, l.counter, chosen, key_hash),
                    Err(reason) => Verdict::Drop(reason),
                };
            }
        }
        let Some(vip) = self.vips.find(key.ip_version, &key.dst_addr) else {
            return self.relay(buf, start, len, key);
        };
        if special {
            return self.steer_special(buf, start, len, vip, key, key_hash, now);
        }
        let Some(l) = self.vips[vip].listener(key.protocol, key.dst_port) else {
            return self.snat_reply(buf, start, len, vip, key, key_hash);
        };
        self.count_syn(&l, key);
        let found = if known_miss {
            // The table holds no flow for it (looked up above): a new connection.
            self.open(&l, key, key_hash, probe, key.tcp_flags, true, now).map(|(t, a)| (t, true, a))
        } else {
            self.connection(&l, key, key_hash, probe, key.tcp_flags, true, now)
        };
        match found {
            Ok((tunnel, true, alternate)) => {
                self.forward_new(buf, start, len, vip, l.counter, (tunnel, alternate), key_hash)
            }
            Ok((tunnel, false, _)) => self.forward(buf, start, len, vip, l.counter, tunnel, false, key_hash),
            Err(reason) => Verdict::Drop(reason),
        }
    }

    /// Counts a SYN without ACK that listener `l` takes. Only the paths below the established-flow
    /// one in [`Mux::steer`] call it: a SYN never takes that one, so it costs nothing per packet
    /// of an established flow.
    #[inline(always)]
    fn count_syn(&mut self, l: &Listener, key: &FlowKey) {
        if key.protocol == ip_proto::TCP && is_opening(key.tcp_flags) {
            if let Some(c) = self.counters.syns.get_mut(l.counter) {
                *c += 1;
            }
        }
    }

    /// The backend (tunnel) of connection `flow` (hash `hash`, at `probe` in the flow table) that
    /// `l` accepts, and whether it is new: its flow's if it has one (the packet's `tcp_flags`
    /// recorded), else a new choice, remembered as a flow when `record`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn connection(
        &mut self,
        l: &Listener,
        flow: &FlowKey,
        hash: u32,
        probe: &FlowProbe,
        tcp_flags: u8,
        record: bool,
        now: u32,
    ) -> Result<(u16, bool, u32), DropReason> {
        if let Some(at) = self.flows.lookup_probed(probe, flow, now) {
            let backend = self.flows.entry(at).value.backend;
            if flow.protocol == ip_proto::TCP && is_opening(tcp_flags) && !self.balances_over(l, backend) {
                return self.reopen(at, l, flow, hash, tcp_flags, now);
            }
            let backend = self.flows.touch(at, tcp_flags, now).value.backend;
            // The listener that takes it now (the one it named may be gone).
            self.flows.value_mut(at).listener = self.listener_of(l);
            return Ok((backend, false, 0));
        }
        let (tunnel, alternate) = self.open(l, flow, hash, probe, tcp_flags, record, now)?;
        Ok((tunnel, record, alternate))
    }

    /// Whether load-balancing rule listener `l` still sends new connections to `tunnel` (a healthy
    /// member of its current table). NAT rules and pools name their member whatever its health.
    #[cold]
    #[inline(never)]
    fn balances_over(&self, l: &Listener, tunnel: u16) -> bool {
        let Target::Rule(r) = l.target else { return true };
        let (Some(rule), Some(b)) =
            (self.lb.rules.get(r), self.rule_balancer.get(r).and_then(|&b| self.balancers.get(b)))
        else {
            return true;
        };
        let tunnels = &self.pools[rule.pool].tunnel;
        b.in_table.iter().any(|&m| tunnels.get(m) == Some(&tunnel))
    }

    /// A SYN that opens a connection on the 5-tuple of flow `at`, whose backend the rule no longer
    /// balances over (it went down, or left the pool): the earlier connection is over (its backend
    /// refused it, or the client's port came round again), so the SYN is a new connection and the
    /// flow takes the current choice. Without this, a port that comes round within the flow's idle
    /// timeout would be sent to the dead backend again.
    #[cold]
    #[inline(never)]
    fn reopen(
        &mut self,
        at: FlowSlot,
        l: &Listener,
        flow: &FlowKey,
        hash: u32,
        tcp_flags: u8,
        now: u32,
    ) -> Result<(u16, bool, u32), DropReason> {
        let (tunnel, _, _) = self.choose(l, flow, hash, tcp_flags, now)?;
        self.flows.touch(at, tcp_flags, now);
        let listener = self.listener_of(l);
        *self.flows.value_mut(at) = MuxFlow { backend: tunnel, listener };
        self.counters.reopened += 1;
        Ok((tunnel, true, 0))
    }

    /// The backend (tunnel) of a new connection `flow` (hash `hash`, with no flow at `probe`) that
    /// `l` accepts, remembered as a flow when `record`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        l: &Listener,
        flow: &FlowKey,
        hash: u32,
        probe: &FlowProbe,
        tcp_flags: u8,
        record: bool,
        now: u32,
    ) -> Result<(u16, u32), DropReason> {
        let (tunnel, idle, alternate) = self.choose(l, flow, hash, tcp_flags, now)?;
        if record {
            let new = MuxFlow { backend: tunnel, listener: self.listener_of(l) };
            self.flows.insert_probed(probe, &FlowTuple::from(flow), tcp_flags, new, idle, now);
        }
        Ok((tunnel, alternate))
    }

    /// Forwards a new flow's packet through `tunnel`; with an `alternate` backend tag (not 0), the
    /// VxLAN header, once written, is flagged for a second chance and names the alternate.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn forward_new(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        vip: usize,
        rule: usize,
        (tunnel, alternate): (u16, u32),
        hash: u32,
    ) -> Verdict {
        if alternate == 0 {
            return self.forward(buf, start, len, vip, rule, tunnel, true, hash);
        }
        self.forward_second_chance(buf, start, len, vip, rule, tunnel, alternate, hash)
    }

    /// [`Mux::forward_new`] with a second chance.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn forward_second_chance(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        vip: usize,
        rule: usize,
        tunnel: u16,
        alternate: u32,
        hash: u32,
    ) -> Verdict {
        let too_big = self.counters.too_big;
        let v = self.forward(buf, start, len, vip, rule, tunnel, true, hash);
        // An ICMP error that went back instead (the packet did not fit) is no tunnel frame.
        if let (Verdict::Forward { start: outer, .. }, true) = (v, self.counters.too_big == too_big) {
            let outer_len = self.tunnels[usize::from(tunnel)].outer_len();
            if mark_second_chance(buf, outer, outer_len, alternate) {
                self.counters.second_chance += 1;
            }
        }
        v
    }

    /// Fragments and ICMP errors: an ICMP error is steered by the connection it quotes (a packet
    /// the VIP sent, reversed) and creates no flow; a first fragment also leaves a record that
    /// its later fragments, which carry no ports, are steered by.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn steer_special(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        vip: usize,
        key: &FlowKey,
        key_hash: u32,
        now: u32,
    ) -> Verdict {
        let seed = self.node.base.hash_seed;
        let icmp_error = key.is_icmp_error();
        let (flow, hash) = if icmp_error {
            let quoted = buf.get(start..start + len).map(|frame| quoted_flow_key(frame, key));
            match quoted {
                Some(Ok(q)) if q.src_addr == key.dst_addr => {
                    let f = q.reversed();
                    (f, f.hash(seed))
                }
                _ => return Verdict::Drop(DropReason::Malformed),
            }
        } else {
            (*key, key_hash)
        };
        if flow.fragment == Fragment::Later {
            let (tuple, frag_hash) = fragment_record(&flow, seed);
            let Some(at) = self.flows.lookup(&tuple, frag_hash, now) else {
                return Verdict::Drop(DropReason::FragmentUnknown);
            };
            let e = self.flows.touch(at, 0, now);
            if e.value.listener == SNAT_REPLY_LISTENER {
                return self.snat_forward(buf, start, len, vip, e.value.backend, frag_hash);
            }
            // Counted under its first fragment's listener, if the configuration still has it.
            let rule = self.listener_route.get(usize::from(e.value.listener)).map_or(usize::MAX, |&(_, c)| c as usize);
            return self.forward(buf, start, len, vip, rule, e.value.backend, false, frag_hash);
        }
        let Some(l) = self.vips[vip].listener(flow.protocol, flow.dst_port) else {
            if flow.fragment == Fragment::First && !icmp_error {
                // A reply to an SNAT connection: its later fragments carry no port, so they follow
                // a record of the host the port names.
                if let Ok(tunnel) = self.snat_tunnel(vip, &flow) {
                    self.record_first_fragment(&flow, MuxFlow { backend: tunnel, listener: SNAT_REPLY_LISTENER }, now);
                }
            }
            return self.snat_reply(buf, start, len, vip, &flow, hash);
        };
        // An ICMP error creates no flow: it only follows one.
        let probe = self.flows.probe(hash);
        // Fragments and ICMP errors get no second chance.
        let (tunnel, new_flow) = match self.connection(&l, &flow, hash, &probe, key.tcp_flags, !icmp_error, now) {
            Ok((tunnel, new_flow, _)) => (tunnel, new_flow),
            Err(reason) => return Verdict::Drop(reason),
        };
        if flow.fragment == Fragment::First {
            self.record_first_fragment(&flow, MuxFlow { backend: tunnel, listener: self.listener_of(&l) }, now);
        }
        self.forward(buf, start, len, vip, l.counter, tunnel, new_flow, hash)
    }

    /// A first fragment leaves the record its later fragments, which carry no ports, are steered
    /// by (once a datagram: a retransmitted first fragment finds it there).
    fn record_first_fragment(&mut self, flow: &FlowKey, value: MuxFlow, now: u32) {
        let (t, h) = fragment_record(flow, self.node.base.hash_seed);
        match self.flows.lookup(&t, h, now) {
            // The identification came round again (a sender numbers its datagrams to a destination
            // from one counter): the new datagram's later fragments follow the new first fragment.
            Some(at) => {
                *self.flows.value_mut(at) = value;
                // And lives as long as a new record would.
                let state = self.flows.entry(at).state;
                self.flows.refresh(at, state, now);
            }
            None => {
                self.flows.insert(&t, h, 0, value, const { IdleTimeout::from_minutes(4).unwrap() }, now);
            }
        }
    }

    /// For a packet whose flow the table does not hold (a new flow, most likely): starts loading
    /// the Maglev slot that choosing its backend will read, a few packets before it is read, and
    /// returns the VIP and listener it found (indices; `NO_ROUTE` if none), which steering the
    /// packet then need not look up again. Out of line: established flows never come here, and
    /// inlined it crowds their loop.
    #[inline(never)]
    fn prefetch_choice(&self, key: &FlowKey, hash: u32) -> (u32, u32) {
        if key.fragment != Fragment::None || key.is_icmp_error() {
            return NO_ROUTE;
        }
        let Some(vip) = self.vips.find(key.ip_version, &key.dst_addr) else { return NO_ROUTE };
        let Some(li) = self.vips[vip].listener_index(key.protocol, key.dst_port) else { return NO_ROUTE };
        if let Target::Rule(r) = self.vips[vip].listeners[li].target {
            if let Some(rule) = self.lb.rules.get(r) {
                if let Some(b) = self.rule_balancer.get(r).and_then(|&b| self.balancers.get(b)) {
                    b.table.prefetch(self.rule_hash(rule, key, hash));
                }
            }
        }
        (vip as u32, li as u32)
    }

    /// The index a flow names listener `l` by.
    #[inline(always)]
    fn listener_of(&self, l: &Listener) -> u16 {
        self.counter_listener.get(l.counter).copied().unwrap_or(GONE_LISTENER)
    }

    /// The hash a rule balances `flow` (5-tuple hash `hash`) by: its distribution mode's fields.
    #[inline(always)]
    fn rule_hash(&self, rule: &crate::config::Rule, flow: &FlowKey, hash: u32) -> u32 {
        let seed = self.node.base.hash_seed;
        match rule.load_distribution {
            LoadDistribution::Default => hash,
            LoadDistribution::SourceIpProtocol => flow.hash_fields(HashFields::ThreeTuple, seed),
            LoadDistribution::SourceIp => flow.hash_fields(HashFields::TwoTuple, seed),
        }
    }

    /// The backend (tunnel) of a new connection of `flow` that `l` accepts, and the flow's idle
    /// timeout: Maglev by the rule's distribution mode, or the NAT rule's or pool's member.
    ///
    /// The third value is the backend tag of a second chance (0: none): for a TCP packet that is
    /// not a SYN, the choice of the balancer's previous table, if it is within its window and
    /// differs.
    fn choose(
        &self,
        l: &Listener,
        flow: &FlowKey,
        hash: u32,
        tcp_flags: u8,
        now: u32,
    ) -> Result<(u16, IdleTimeout, u32), DropReason> {
        let mut alternate = 0;
        let (pool, member, idle) = match l.target {
            Target::Rule(r) => {
                let rule = &self.lb.rules[r];
                let h = self.rule_hash(rule, flow, hash);
                let b = &self.balancers[self.rule_balancer[r]];
                let m = b.table.lookup(h).ok_or(DropReason::NoBackend)?;
                if b.previous.is_some() && flow.protocol == ip_proto::TCP && tcp_flags & TcpFlags::SYN == 0 {
                    alternate = b.alternate(h, m, now);
                }
                (rule.pool, b.in_table[m], rule.idle_timeout)
            }
            Target::NatRule(r) => {
                let n = &self.lb.nat_rules[r];
                (n.target.0, n.target.1, n.idle_timeout)
            }
            Target::NatPool(p) => {
                let n = &self.lb.nat_pools[p];
                let member = usize::from(flow.dst_port - n.port_start);
                if member >= self.lb.pools[n.pool].backends.len() {
                    return Err(DropReason::NoBackend);
                }
                (n.pool, member, n.idle_timeout)
            }
        };
        Ok((self.pools[pool].tunnel[member], idle, alternate))
    }

    /// A reply to a connection a backend opened through SNAT: the port names the backend (every
    /// node derives the same [`SnatPlan`]), so it goes to that backend's host with no flow state.
    #[cold]
    #[inline(never)]
    fn snat_reply(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        vip: usize,
        flow: &FlowKey,
        hash: u32,
    ) -> Verdict {
        match self.snat_tunnel(vip, flow) {
            Ok(tunnel) => self.snat_forward(buf, start, len, vip, tunnel, hash),
            Err(reason) => Verdict::Drop(reason),
        }
    }

    /// The tunnel to the host of the backend whose SNAT port `flow` is addressed to on `vip`.
    fn snat_tunnel(&self, vip: usize, flow: &FlowKey) -> Result<u16, DropReason> {
        let tcp_or_udp = flow.protocol == ip_proto::TCP || flow.protocol == ip_proto::UDP;
        let Some(g) = self.snat.owner(vip, flow.dst_port).filter(|g| tcp_or_udp && g.protocol.matches(flow.protocol))
        else {
            return Err(DropReason::NoRule);
        };
        self.pools.get(g.pool).and_then(|p| p.tunnel.get(g.member)).copied().ok_or(DropReason::NoBackend)
    }

    /// Sends an SNAT reply (or a later fragment of one) through `tunnel`, counted as one.
    fn snat_forward(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        vip: usize,
        tunnel: u16,
        hash: u32,
    ) -> Verdict {
        let Some(t) = self.tunnels.get(usize::from(tunnel)) else {
            return Verdict::Drop(DropReason::NoBackend);
        };
        if !self.hops_known && !t.has_next_hop() {
            return Verdict::Drop(DropReason::NoNextHop);
        }
        match t.encapsulate(buf, start, len, hash) {
            Ok(outer) => {
                self.counters.vips[vip].add(len, false);
                self.counters.snat_replies.add(len, false);
                Verdict::Forward { start: outer, len: len + t.outer_len() }
            }
            Err(WireError::MtuExceeded { .. }) => self.too_big(buf, start, len, tunnel),
            Err(_) => Verdict::Drop(DropReason::Encap),
        }
    }

    /// A frame addressed to no VIP: if it is a VxLAN frame a host sent to this MUX (a response or an
    /// SNAT connection going back to a client), strip the tunnel and forward the inner frame towards
    /// the fabric router, provided its source is one of this MUX's VIPs.
    #[cold]
    fn relay(&mut self, buf: &mut [u8], start: usize, len: usize, key: &FlowKey) -> Verdict {
        let to_me = (key.ip_version, key.dst_addr) == self.underlay
            && key.protocol == ip_proto::UDP
            && key.dst_port == VXLAN_PORT
            && key.fragment == Fragment::None;
        if !to_me {
            return Verdict::Drop(DropReason::NoVip);
        }
        let Some((inner_at, inner_len)) = buf.get(start..start + len).and_then(|f| {
            let d = decapsulate(f).ok()?;
            Some((start + d.inner_offset, d.inner.len()))
        }) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let inner = &mut buf[inner_at..inner_at + inner_len];
        let Ok(k) = parse_flow_key(inner) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if self.vips.find(k.ip_version, &k.src_addr).is_none() {
            return Verdict::Drop(DropReason::NotFromVip);
        }
        if self.node.base.gateway_mac == MacAddr::default() {
            return Verdict::Drop(DropReason::NoNextHop);
        }
        inner[..6].copy_from_slice(&self.node.base.gateway_mac.0);
        inner[6..12].copy_from_slice(&self.node.base.mac.0);
        self.counters.relayed.add(inner_len, false);
        Verdict::Forward { start: inner_at, len: inner_len }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn forward(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        vip: usize,
        rule: usize,
        tunnel: u16,
        new_flow: bool,
        hash: u32,
    ) -> Verdict {
        let Some(t) = self.tunnels.get(usize::from(tunnel)) else {
            return Verdict::Drop(DropReason::NoBackend);
        };
        if !self.hops_known && !t.has_next_hop() {
            return Verdict::Drop(DropReason::NoNextHop);
        }
        match t.encapsulate(buf, start, len, hash) {
            Ok(outer) => {
                self.counters.vips[vip].add(len, new_flow);
                if let Some(c) = self.counters.rules.get_mut(rule) {
                    c.add(len, new_flow);
                }
                let (p, m) = self.tunnel_owner[usize::from(tunnel)];
                if let Some(c) = self.counters.backends.get_mut(p).and_then(|b| b.get_mut(m)) {
                    c.add(len, new_flow);
                }
                Verdict::Forward { start: outer, len: len + t.outer_len() }
            }
            Err(WireError::MtuExceeded { .. }) => self.too_big(buf, start, len, tunnel),
            Err(_) => Verdict::Drop(DropReason::Encap),
        }
    }

    /// A client's frame too big for `tunnel` once encapsulated: turned, in place, into the ICMP
    /// error that tells the client the path's MTU (RFC 1191, RFC 8201), back to the MAC the frame
    /// came from, from the VIP it was sent to. The MTU is the underlay's less the tunnel's overhead
    /// and the frame's VLAN tags. No error about an ICMP error or a later fragment (RFC 1122
    /// 3.2.2, RFC 4443 2.4 (e)), nor about an IPv4 packet without DF, which the sender lets routers
    /// fragment: those are dropped as [`DropReason::Encap`].
    #[cold]
    #[inline(never)]
    fn too_big(&mut self, buf: &mut [u8], start: usize, len: usize, tunnel: u16) -> Verdict {
        let Some(t) = self.tunnels.get(usize::from(tunnel)) else {
            return Verdict::Drop(DropReason::Encap);
        };
        let Some(key) = buf.get(start..start + len).and_then(|f| parse_flow_key(f).ok()) else {
            return Verdict::Drop(DropReason::Encap);
        };
        let mtu = t.inner_mtu(usize::from(key.vlan_count));
        match too_big_error(buf, start, len, &key, key.dst_ip(), mtu, &self.node.base) {
            Some((at, n)) => {
                self.counters.too_big += 1;
                Verdict::Forward { start: at, len: n }
            }
            None => Verdict::Drop(DropReason::Encap),
        }
    }
}

/// Turns the frame at `buf[start..start + len]` (parsed as `key`) into the ICMP error saying it
/// did not fit `mtu`, from `src`, to the packet's source, back to the MAC it came from, from the
/// node's; returns where the error frame lies. `None` (the frame untouched) for what gets no
/// error: an ICMP error, a later fragment, an IPv4 packet without DF, a frame without the headroom.
pub(crate) fn too_big_error(
    buf: &mut [u8],
    start: usize,
    len: usize,
    key: &FlowKey,
    src: IpAddr,
    mtu: u16,
    node: &crate::config::NodeBase,
) -> Option<(usize, usize)> {
    let l3 = usize::from(key.l3_offset);
    if key.is_icmp_error() || key.fragment == Fragment::Later {
        return None;
    }
    if key.ip_version == crate::wire::IpVersion::V4 && buf.get(start + l3 + 6)? & 0x40 == 0 {
        return None;
    }
    let back_to = MacAddr(buf.get(start + 6..start + 12)?.try_into().ok()?);
    let error = TooBigRepr { src_mac: node.mac, dst_mac: back_to, src, mtu, hop_limit: node.ttl };
    error.emit_in_place(buf, start, len, l3).ok()
}

/// A TCP packet that opens a connection: SYN without ACK.
#[inline(always)]
fn is_opening(tcp_flags: u8) -> bool {
    tcp_flags & (TcpFlags::SYN | TcpFlags::ACK) == TcpFlags::SYN
}

/// Every listener's resource, in counter order (load-balancing rules, NAT rules, NAT pools).
fn rule_names(lb: &LoadBalancer) -> Vec<(u8, &str)> {
    let rules = lb.rules.iter().map(|r| (0, r.name.as_str()));
    let nat_rules = lb.nat_rules.iter().map(|r| (1, r.name.as_str()));
    let nat_pools = lb.nat_pools.iter().map(|r| (2, r.name.as_str()));
    rules.chain(nat_rules).chain(nat_pools).collect()
}

impl Balancer {
    /// Rebuilds the Maglev table over the pool's healthy members of non-zero weight. On error the
    /// table and its member map stay as they were, together.
    ///
    /// A table that changes (at `now`) becomes the previous one, for second chances; a rebuild that
    /// gives the same table keeps the previous one and its time.
    fn rebuild(
        &mut self,
        pool: &crate::config::Pool,
        size: u32,
        now: u32,
        prepared: Option<&PreparedTables>,
    ) -> Result<(), MuxError> {
        let mut backends = Vec::new();
        let mut in_table = Vec::new();
        let mut tags = Vec::new();
        for (i, b) in pool.backends.iter().enumerate() {
            if self.health[i].health() == Health::Up && b.weight > 0 {
                backends.push(MaglevBackend { id: backend_id(b.address), weight: b.weight });
                in_table.push(i);
                tags.push(backend_tag(b.address));
            }
        }
        // The same members, equally weighted, make the same table (it depends only on them).
        if backends == self.built_from && tags == self.tags {
            self.in_table = in_table;
            self.stale = false;
            return Ok(());
        }
        let table = match prepared.and_then(|p| p.tables.get(&backends)) {
            Some(t) => Arc::clone(t),
            None => Arc::new(MaglevTable::build(&backends, size).map_err(MuxError::Maglev)?),
        };
        self.built_from = backends;
        if *table != *self.table || tags != self.tags {
            let old = core::mem::replace(&mut self.table, table);
            let old_tags = core::mem::replace(&mut self.tags, tags);
            // An empty table chose nothing: there is no second chance to give from it.
            self.previous = (!old.is_empty()).then_some(Previous { table: old, tags: old_tags, since: now });
        }
        self.in_table = in_table;
        self.stale = false;
        Ok(())
    }

    /// The tag of the backend the previous table chooses for `hash`, if it is still within its
    /// window and differs from the current table's choice (Maglev index `current`); else 0.
    #[cold]
    #[inline(never)]
    fn alternate(&self, hash: u32, current: usize, now: u32) -> u32 {
        let Some(p) = &self.previous else { return 0 };
        if now.wrapping_sub(p.since) >= SECOND_CHANCE_SECONDS {
            return 0;
        }
        let alt = p.table.lookup(hash).and_then(|i| p.tags.get(i)).copied().unwrap_or(0);
        if Some(&alt) == self.tags.get(current) {
            0
        } else {
            alt
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Frontend, Pool, Protocol, Rule};
    use core::net::Ipv4Addr;

    const HEADROOM: usize = 128;

    fn config(ports: &[u16]) -> LoadBalancer {
        let rule = |port: u16| Rule {
            name: alloc::format!("tcp-{port}"),
            frontend: 0,
            pool: 0,
            probe: None,
            protocol: Protocol::Tcp,
            frontend_port: port,
            backend_port: port,
            load_distribution: crate::config::LoadDistribution::Default,
            floating_ip: false,
            idle_timeout: IdleTimeout::default(),
            tcp_reset: false,
            disable_outbound_snat: false,
        };
        LoadBalancer {
            name: "lb".into(),
            frontends: alloc::vec![Frontend {
                name: "vip".into(),
                address: Ipv4Addr::new(20, 0, 0, 1).into(),
                internal: false
            }],
            pools: alloc::vec![Pool {
                name: "pool".into(),
                vni: 7,
                backends: (0..4u8)
                    .map(|b| Backend {
                        name: alloc::format!("b{b}"),
                        address: Ipv4Addr::new(10, 0, 0, 4 + b).into(),
                        host: Ipv4Addr::new(172, 16, 0, 4 + b).into(),
                        weight: 1,
                    })
                    .collect(),
            }],
            rules: ports.iter().map(|&p| rule(p)).collect(),
            ..LoadBalancer::default()
        }
    }

    fn mux(ports: &[u16]) -> Mux {
        let node = MuxNode {
            base: crate::config::NodeBase {
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                gateway_mac: MacAddr([2, 0, 0, 0, 0, 2]),
                underlay: Ipv4Addr::new(172, 16, 5, 10).into(),
                ttl: 64,
                mtu: 9000,
                hash_seed: 1,
                flow_capacity: 1000,
            },
            maglev_size: 251,
        };
        Mux::new(node, config(ports)).unwrap()
    }

    /// A TCP segment from client `c` to the VIP's `port`, in a buffer with headroom; `syn` or ACK.
    fn segment(c: u8, port: u16, syn: bool) -> alloc::vec::Vec<u8> {
        let mut f = alloc::vec![0u8; HEADROOM];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, c, 20, 0, 0, 1]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, if syn { 0x02 } else { 0x10 }, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    /// The underlay host a segment was tunnelled to, or the drop reason.
    fn run(m: &mut Mux, c: u8, port: u16, syn: bool) -> Result<[u8; 4], DropReason> {
        let mut f = segment(c, port, syn);
        let len = f.len() - HEADROOM;
        match m.process(&mut f, HEADROOM, len, 10) {
            Verdict::Forward { start, .. } => Ok(f[start + 30..start + 34].try_into().unwrap()),
            Verdict::Drop(r) => Err(r),
        }
    }

    /// The hosts new flows from 256 clients to port 80 go to.
    fn hosts_of_new_flows(m: &mut Mux) -> alloc::collections::BTreeSet<[u8; 4]> {
        (0..=255u8).filter_map(|c| run(m, c, 80, true).ok()).collect()
    }

    /// `Mux::check` refuses what `Mux::new` refuses and accepts what it accepts, without tables.
    #[test]
    fn check_makes_the_checks_of_new_without_tables() {
        let node = mux(&[80]).node.clone();
        assert!(Mux::check(node.clone(), config(&[80, 443])).is_ok());
        let mut small = node.clone();
        small.maglev_size = 3;
        assert!(matches!(Mux::check(small, config(&[80])), Err(MuxError::Maglev(_))));
        let mut bad = config(&[80]);
        bad.rules[0].pool = 5;
        assert!(matches!(Mux::check(node, bad), Err(MuxError::Config(_))));
    }

    /// `config(&[80, 443])` with a fifth member in its pool.
    fn with_fifth_member() -> LoadBalancer {
        let mut grown = config(&[80, 443]);
        let extra = Backend {
            name: "b9".into(),
            address: Ipv4Addr::new(10, 0, 0, 9).into(),
            ..grown.pools[0].backends[0].clone()
        };
        grown.pools[0].backends.push(extra);
        grown
    }

    /// Tables prepared away from the MUX are the ones it would build, and an update shares them
    /// where their members match; where none matches it builds its own.
    #[test]
    fn an_update_takes_prepared_tables() {
        let grown = with_fifth_member();
        let mut built = mux(&[80]);
        built.update(grown.clone()).unwrap();
        let node = built.node.clone();
        let prepared = Mux::prepare(&node, &grown, |_, _, _| None, None).unwrap();
        assert_eq!(prepared.len(), 1);
        let mut taken = mux(&[80]);
        taken.update_prepared(grown.clone(), |_, _, _| None, Some(&prepared)).unwrap();
        assert!(taken.balancers[0].table == built.balancers[0].table);
        // A prepared table is shared, not rebuilt: one planted under these members is the one used.
        assert!(Arc::ptr_eq(&taken.balancers[0].table, prepared.tables.values().next().unwrap()));
        let again = Mux::prepare(&node, &grown, |_, _, _| None, Some(&prepared)).unwrap();
        assert!(Arc::ptr_eq(again.tables.values().next().unwrap(), prepared.tables.values().next().unwrap()));
        let members = taken.balancers[0].built_from.clone();
        let planted = MaglevTable::build(&members[..2], node.maglev_size).unwrap();
        let mut fake = PreparedTables { size: node.maglev_size, tables: BTreeMap::new() };
        fake.tables.insert(members, Arc::new(planted.clone()));
        let mut m = mux(&[80]);
        m.update_prepared(grown.clone(), |_, _, _| None, Some(&fake)).unwrap();
        assert!(*m.balancers[0].table == planted);
        // Another table size, or other members: built as usual.
        let mut other = fake.clone();
        other.size = 257;
        let mut m = mux(&[80]);
        m.update_prepared(grown, |_, _, _| None, Some(&other)).unwrap();
        assert!(m.balancers[0].table == built.balancers[0].table);
    }

    /// An update that leaves a pool's members as they are keeps its table and its second
    /// chances; one that changes them builds a new table.
    #[test]
    fn an_unchanged_pool_keeps_its_table() {
        let mut m = mux(&[80]);
        let before = m.balancers[0].table.clone();
        m.update(config(&[80, 443])).unwrap();
        assert!(m.balancers[0].table == before && m.balancers[0].previous.is_none());
        let grown = with_fifth_member();
        m.update(grown).unwrap();
        assert!(m.balancers[0].table != before && m.balancers[0].previous.is_some());
        assert_eq!(m.balancers[0].built_from.len(), 5);
    }

    /// A health verdict made elsewhere (a host agent's) takes a member out or brings it back at
    /// once, without `numberOfProbes` results; with a configuration, the first tables already
    /// have it.
    #[test]
    fn health_is_set_outright_and_with_a_configuration() {
        let probed = |members: u8| {
            let mut lb = config(&[80]);
            lb.probes = alloc::vec![crate::config::Probe {
                name: "tcp".into(),
                protocol: crate::config::ProbeProtocol::Tcp,
                port: 80,
                request_path: None,
                interval_secs: 5,
                number_of_probes: 3,
            }];
            lb.rules[0].probe = Some(0);
            for b in 4..members {
                lb.pools[0].backends.push(Backend {
                    name: alloc::format!("b{b}"),
                    address: Ipv4Addr::new(10, 0, 0, 4 + b).into(),
                    host: Ipv4Addr::new(172, 16, 0, 4 + b).into(),
                    weight: 1,
                });
            }
            lb
        };
        let mut m = mux(&[80]);
        m.update(probed(4)).unwrap();
        assert!(hosts_of_new_flows(&mut m).contains(&[172, 16, 0, 5]));
        assert_eq!(m.set_health(0, 0, 1, false).unwrap(), Transition::WentDown, "one verdict, no counting");
        assert_eq!(m.set_health(0, 0, 1, false).unwrap(), Transition::None);
        m.apply_probes().unwrap();
        assert_eq!(m.health(0, 1), Some(Health::Down));
        let hosts = hosts_of_new_flows(&mut m);
        assert!(!hosts.contains(&[172, 16, 0, 5]) && hosts.len() == 3, "{hosts:?}");
        assert_eq!(m.set_health(0, 0, 9, true), Err(MuxError::UnknownBackend { pool: 0, member: 9 }));
        assert_eq!(m.set_health(0, 1, 0, true), Err(MuxError::NotProbed { pool: 0, probe: 1 }));

        // A fifth member, down from the start, and b1 back: no table is built without them so.
        let mut m2 = mux(&[80]);
        m2.update(probed(4)).unwrap();
        m2.set_health(0, 0, 1, false).unwrap();
        m2.apply_probes().unwrap();
        let preset = |pool, probe, member| match (pool, probe, member) {
            (0, 0, 4) => Some(false),
            (0, 0, 1) => Some(true),
            _ => None,
        };
        m2.update_with_health(probed(5), preset).unwrap();
        assert_eq!((m2.health(0, 1), m2.health(0, 4)), (Some(Health::Up), Some(Health::Down)));
        let hosts = hosts_of_new_flows(&mut m2);
        assert!(hosts.contains(&[172, 16, 0, 5]) && !hosts.contains(&[172, 16, 0, 8]), "{hosts:?}");
        // Plain results go on counting from the verdict.
        for _ in 0..2 {
            assert_eq!(m2.record_probe(0, 0, 1, false).unwrap(), Transition::None);
        }
        assert_eq!(m2.record_probe(0, 0, 1, false).unwrap(), Transition::WentDown);
    }

    /// Listener indices only grow, one per identity ever configured; when they would not fit a flow
    /// entry any more, they start again from the configuration in force and the flows are
    /// renumbered once: established flows keep their backend and their counters, the flows of a
    /// listener that is gone take the full path, and a configuration with more listeners than
    /// an entry can name is refused with the running one kept.
    #[test]
    fn listener_indices_start_again_when_they_run_out() {
        let mut m = mux(&[80, 443]);
        m.listener_limit = 3;
        let web: alloc::vec::Vec<_> = (0..40).map(|c| run(&mut m, c, 80, true).unwrap()).collect();
        let tls: alloc::vec::Vec<_> = (0..40).map(|c| run(&mut m, c, 443, true).unwrap()).collect();
        // A fragment record of an SNAT reply names no listener, and keeps its marker.
        let record = FlowTuple { version: 0x84, src_port: 7, ..FlowTuple::default() };
        let at = m.flows.insert(
            &record,
            99,
            0,
            MuxFlow { backend: 0, listener: SNAT_REPLY_LISTENER },
            IdleTimeout::default(),
            10,
        );
        m.update(config(&[80, 8080])).unwrap();
        assert_eq!(m.listener_ids.len(), 3, "80, 443 and 8080 have indices");
        m.update(config(&[9090, 80])).unwrap();
        assert_eq!(m.listener_ids.len(), 2, "started again from 9090 and 80");
        assert_eq!(m.flows.entry(at).value.listener, SNAT_REPLY_LISTENER, "renumbered around the record");
        let before = m.counters().rules[1].packets;
        for c in 0..40 {
            assert_eq!(run(&mut m, c, 80, false), Ok(web[usize::from(c)]), "flow {c} keeps its backend");
            assert_eq!(run(&mut m, c, 443, false), Err(DropReason::NoRule), "443 is gone");
        }
        assert_eq!(m.counters().rules[1].packets, before + 40, "counted under tcp-80, now rule 1");
        assert_eq!(m.counters().rules[0].packets, 0);
        // 443 back: its connections, still in the table (renumbered as gone), go on to their
        // backends through the full path, which gives them their new index.
        m.update(config(&[9090, 80, 443])).unwrap();
        for c in 0..40 {
            assert_eq!(run(&mut m, c, 443, false), Ok(tls[usize::from(c)]), "flow {c} of 443");
            assert_eq!(run(&mut m, c, 443, false), Ok(tls[usize::from(c)]), "and by its new index");
        }
        assert_eq!(m.counters().vips[0].new_flows, 80, "no flow was opened again");
        // One listener more than an entry can name: refused, the running configuration kept.
        assert_eq!(m.update(config(&[1, 2, 3, 4])), Err(MuxError::TooManyListeners));
        assert_eq!(m.config().rules.len(), 3);
    }

    /// `config` with a fifth backend, 10.0.0.8 on host 172.16.0.8.
    fn grown(ports: &[u16]) -> LoadBalancer {
        let mut lb = config(ports);
        lb.pools[0].backends.push(Backend {
            name: "b4".into(),
            address: Ipv4Addr::new(10, 0, 0, 8).into(),
            host: Ipv4Addr::new(172, 16, 0, 8).into(),
            weight: 1,
        });
        lb
    }

    /// What a segment's VxLAN frame said: (outer destination, backend tag, second-chance flag).
    fn sent(m: &mut Mux, c: u8, syn: bool, now: u32) -> ([u8; 4], u32, bool) {
        let mut f = segment(c, 80, syn);
        let len = f.len() - HEADROOM;
        let Verdict::Forward { start, .. } = m.process(&mut f, HEADROOM, len, now) else { panic!("dropped") };
        let d = decapsulate(&f[start..]).unwrap();
        (f[start + 30..start + 34].try_into().unwrap(), d.backend_tag, d.second_chance)
    }

    /// After a backend was added, a MUX with no flow for a connection (not a SYN) whose slot the
    /// new backend took sends it to the new backend's host, flagged, with the old backend's tag;
    /// the others, SYNs, flow hits and packets after the window go unflagged.
    #[test]
    fn second_chance_names_the_previous_tables_backend() {
        let mut before = mux(&[80]);
        let mut m = mux(&[80]);
        m.update(grown(&[80])).unwrap();
        let new_host = [172, 16, 0, 8];
        let (mut moved, mut to_new) = (0u64, 0u64);
        for c in 0..=255u8 {
            let (old_host, _, _) = sent(&mut before, c, true, 10);
            let old_tag = backend_tag(Ipv4Addr::new(10, 0, 0, old_host[3]).into());
            let (host, tag, flag) = sent(&mut m, c, false, 10);
            if host == old_host {
                assert!(!flag, "client {c}: the same choice, no second chance");
                assert_eq!(tag, backend_tag(Ipv4Addr::new(10, 0, 0, host[3]).into()));
                continue;
            }
            moved += 1;
            to_new += u64::from(host == new_host);
            assert!(flag, "client {c}: flagged");
            assert_eq!(tag, old_tag, "client {c}: the alternate is the old backend");
            // Its flow is in the table now: later packets hit it, unflagged, to the primary.
            let primary = backend_tag(Ipv4Addr::new(10, 0, 0, host[3]).into());
            assert_eq!(sent(&mut m, c, false, 11), (host, primary, false));
        }
        // Maglev moves about a fifth of the slots to the new backend, and a few others (the table
        // is small here).
        assert!(moved > 20 && to_new * 10 > moved * 8, "{to_new} of {moved} moved to the new backend");
        assert_eq!(m.counters().second_chance, moved);
        // A SYN opens a new connection: no second chance.
        let mut m = mux(&[80]);
        m.update(grown(&[80])).unwrap();
        for c in 0..=255u8 {
            assert!(!sent(&mut m, c, true, 10).2, "client {c}: a SYN");
        }
        assert_eq!(m.counters().second_chance, 0);
        // Outside the window: no second chance.
        let mut m = mux(&[80]);
        m.update(grown(&[80])).unwrap();
        let flagged = |m: &mut Mux, now: u32| (0..=255u8).filter(|&c| sent(m, c, false, now).2).count();
        assert_eq!(flagged(&mut m, SECOND_CHANCE_SECONDS), 0);
        // A reconfiguration that leaves the table alone keeps the previous table and its time.
        let mut m = mux(&[80]);
        m.update(grown(&[80])).unwrap();
        m.process(&mut segment(0, 81, true), HEADROOM, 54, 100);
        m.update(grown(&[80, 443])).unwrap();
        assert_eq!(flagged(&mut m, SECOND_CHANCE_SECONDS - 1) as u64, moved);
    }
    /// A SYN on the 5-tuple of a flow whose backend left the pool (or went down) is a new
    /// connection: it takes the current table's choice, and the flow follows it. A SYN on a flow
    /// whose backend is still balanced over (a retransmission) keeps it.
    #[test]
    fn a_syn_meeting_a_gone_backends_flow_opens_a_new_connection() {
        let mut m = mux(&[80]);
        let first: alloc::vec::Vec<[u8; 4]> = (0..64u8).map(|c| sent(&mut m, c, true, 10).0).collect();
        let gone = [172, 16, 0, 4];
        let on_gone = first.iter().filter(|&&h| h == gone).count() as u64;
        assert!(on_gone > 4, "{on_gone} of 64 on b0");
        let mut without = config(&[80]);
        without.pools[0].backends.remove(0);
        m.update(without).unwrap();
        for c in 0..64u8 {
            let (host, _, flag) = sent(&mut m, c, true, 20);
            assert!(!flag, "client {c}: a SYN gets no second chance");
            if first[usize::from(c)] == gone {
                assert_ne!(host, gone, "client {c}: a new connection, not to the gone backend");
                assert_eq!(sent(&mut m, c, false, 21).0, host, "client {c}: its packets follow");
            } else {
                assert_eq!(host, first[usize::from(c)], "client {c}: keeps its backend");
            }
        }
        assert_eq!(m.counters().reopened, on_gone);
    }
    /// A MUX started on the grown pool, told what ran before, gives the same second chances as
    /// one that ran through the change; the recall's age counts against the window.
    #[test]
    fn a_recalled_configuration_gives_second_chances() {
        let mut ran = mux(&[80]);
        ran.update(grown(&[80])).unwrap();
        let node = ran.node.clone();
        let mut fresh = Mux::new(node.clone(), grown(&[80])).unwrap();
        fresh.recall(&config(&[80]), 100, 110).unwrap();
        let mut old = Mux::new(node.clone(), grown(&[80])).unwrap();
        old.recall(&config(&[80]), SECOND_CHANCE_SECONDS, 110).unwrap();
        let mut flagged = 0;
        for c in 0..=255u8 {
            let want = sent(&mut ran, c, false, 10);
            assert_eq!(sent(&mut fresh, c, false, 110), want, "client {c}");
            assert!(!sent(&mut old, c, false, 110).2, "client {c}: outside the window");
            flagged += usize::from(want.2);
        }
        assert!(flagged > 20, "{flagged} second chances");
        // What it runs itself is no earlier table.
        let mut same = Mux::new(node, grown(&[80])).unwrap();
        same.recall(&grown(&[80]), 1, 110).unwrap();
        assert!((0..=255u8).all(|c| !sent(&mut same, c, false, 110).2));
    }
}
