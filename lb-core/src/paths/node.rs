//! One interface over both data paths: a [`Node`] is a MUX or a host agent, fed bursts of frames and
//! answering one [`Action`] a frame. The program's ports and the C ABI drive nodes through it, so
//! that building a role, dispatching a burst, sweeping the flow table, reconfiguring and reading
//! counters are written once.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use super::host::{HostAgent, HostDrop, HostEgress, HostError, HostVerdict, SnatConnections, SnatPortsReport};
use super::mux::{BurstFrame, DropReason, Mux, MuxCounters, MuxError, PreparedTables, Traffic, Verdict, BURST};
use crate::config::{LoadBalancer, Protocol};
use crate::tables::Health;
use crate::wire::MacAddr;

pub use crate::config::settings::NodeRole;

/// Where a frame handed to a host agent comes from (a MUX takes frames from one side only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// Decided per frame: VxLAN to this host, or anything sent by one of its MUXes, is the
    /// fabric's; the rest a backend's.
    #[default]
    Either,
    /// The fabric (VxLAN from a MUX, replies to SNAT connections).
    Fabric,
    /// A local backend.
    Backend,
}

/// Why a node dropped a frame: its role's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// A MUX's reason.
    Mux(DropReason),
    /// A host agent's reason.
    Host(HostDrop),
}

impl DropCause {
    /// The reason's index in its role's counters ([`Node::drops`]).
    pub fn index(self) -> usize {
        match self {
            DropCause::Mux(r) => r as usize,
            DropCause::Host(r) => r as usize,
        }
    }

    /// The reason's name (`snake_case`, as metrics and the C ABI give it).
    pub fn name(self) -> &'static str {
        match self {
            DropCause::Mux(r) => r.name(),
            DropCause::Host(r) => r.name(),
        }
    }

    /// The name, NUL-terminated for the C ABI.
    pub fn c_name(self) -> &'static core::ffi::CStr {
        match self {
            DropCause::Mux(r) => r.c_name(),
            DropCause::Host(r) => r.c_name(),
        }
    }

    /// A MUX's reason `index` (`None` past the last).
    pub fn mux(index: usize) -> Option<Self> {
        DropReason::ALL.get(index).map(|&r| DropCause::Mux(r))
    }

    /// A host agent's reason `index` (`None` past the last).
    pub fn host(index: usize) -> Option<Self> {
        HostDrop::ALL.get(index).map(|&r| DropCause::Host(r))
    }
}

/// What to do with a frame after a node processed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `buf[start..start + len]` on the fabric side.
    Transmit {
        /// Where the frame to send starts.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Hand `buf[start..start + len]` to local backend `backend` (a host agent's index into
    /// [`HostAgent::local_backends`]).
    Deliver {
        /// The local backend.
        backend: usize,
        /// Where the frame starts.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Dropped, and counted under its cause.
    Drop(DropCause),
}

impl From<Verdict> for Action {
    #[inline(always)]
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Forward { start, len } => Action::Transmit { start, len },
            Verdict::Drop(r) => Action::Drop(DropCause::Mux(r)),
        }
    }
}

impl From<HostVerdict> for Action {
    #[inline(always)]
    fn from(v: HostVerdict) -> Self {
        match v {
            HostVerdict::Transmit { start, len } => Action::Transmit { start, len },
            HostVerdict::Deliver { backend, start, len } => Action::Deliver { backend, start, len },
            HostVerdict::Drop(r) => Action::Drop(DropCause::Host(r)),
        }
    }
}

/// Why a node refused to start, a reconfiguration or a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// The MUX refused it.
    Mux(MuxError),
    /// The host agent refused it.
    Host(HostError),
    /// The call applies to the other role (probe results go to MUXes only).
    WrongRole,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Mux(e) => fmt::Display::fmt(e, f),
            NodeError::Host(e) => fmt::Display::fmt(e, f),
            NodeError::WrongRole => f.write_str("not supported by this node's role"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Mux(e) => Some(e),
            NodeError::Host(e) => Some(e),
            NodeError::WrongRole => None,
        }
    }
}

impl From<MuxError> for NodeError {
    fn from(e: MuxError) -> Self {
        NodeError::Mux(e)
    }
}

impl From<HostError> for NodeError {
    fn from(e: HostError) -> Self {
        NodeError::Host(e)
    }
}

/// A node's totals, the same for both roles (a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeTotals {
    /// Frames sent on (transmitted or delivered).
    pub forwarded: u64,
    /// Their bytes, without tunnel headers.
    pub forwarded_bytes: u64,
    /// New connections: those a MUX steered; those a host agent delivered or its backends opened
    /// through SNAT.
    pub new_flows: u64,
    /// Live flow-table entries.
    pub flows: u64,
    /// SNAT ports in use (host agent).
    pub snat_ports_in_use: u64,
    /// TCP resets sent (host agent).
    pub tcp_resets: u64,
    /// ICMPv4 "fragmentation needed" and ICMPv6 "packet too big" errors sent for frames too big
    /// for a tunnel: a MUX's to clients, a host agent's to its backends.
    pub icmp_too_big: u64,
    /// Second chances: a MUX's packets of moved connections sent with the previous table's
    /// backend, a host agent's forwarded to that backend's host.
    pub second_chance: u64,
    /// A MUX's SYNs that met the flow of an earlier connection on the same 5-tuple whose backend
    /// had gone down or left the pool, and opened a new connection on a healthy one.
    pub syn_reopened: u64,
}

/// A pool member's health as probe `probe` sees it, decided elsewhere (a host agent's verdict
/// on its own backends, handed to MUXes by the control plane): see [`Node::set_health`] and
/// [`Node::update_with_health`]. Indices are in the configuration's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHealth {
    /// Pool index.
    pub pool: usize,
    /// Probe index.
    pub probe: usize,
    /// Member index in the pool.
    pub member: usize,
    /// Whether it takes new flows of the rules that send to the pool with that probe.
    pub up: bool,
}

/// One backend's line in a node's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReport {
    /// The pool's name.
    pub pool: String,
    /// The backend's name.
    pub backend: String,
    /// Its address.
    pub address: IpAddr,
    /// Frames sent to it and flows opened to it.
    pub traffic: Traffic,
    /// A MUX's health verdict (whether it takes new flows); `None` on a host agent, which does not
    /// steer by health.
    pub up: Option<bool>,
}

/// Which kind of listener a [`RuleReport`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    /// A load-balancing rule (HA ports included).
    LoadBalancing,
    /// An inbound NAT rule.
    InboundNat,
    /// An inbound NAT pool.
    InboundNatPool,
}

/// A pool member as a load-balancing rule's health probe sees it (Azure Load Balancer's "Health
/// Probe Status" per backend IP address and port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The backend's address.
    pub address: IpAddr,
    /// The rule's backend port (0 for HA ports: each connection keeps its own).
    pub port: u16,
    /// Whether the rule sends it new flows: its probe's verdict, or always with no probe.
    pub up: bool,
}

/// One listener's line in a MUX's report: the rows of Azure Load Balancer's per-rule metrics
/// ("Byte Count", "Packet Count", "SYN Count", "Health Probe Status").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleReport {
    /// What kind of listener.
    pub kind: RuleKind,
    /// Its name.
    pub name: String,
    /// Its frontend's address.
    pub frontend: IpAddr,
    /// Its frontend ports, first and last: one port, a NAT pool's range, or 0 for HA ports.
    pub ports: (u16, u16),
    /// Its protocol.
    pub protocol: Protocol,
    /// Client frames it took (a MUX sees the inbound direction only), their bytes and the flows
    /// they opened.
    pub traffic: Traffic,
    /// TCP SYNs without ACK it received (connection attempts, retransmitted SYNs included).
    pub syns: u64,
    /// A load-balancing rule's pool members, in pool order, as its probe sees them; empty for
    /// inbound NAT rules and pools, which send to their member whatever its health.
    pub members: Vec<MemberStatus>,
}

/// What a node reports per listener and per SNAT frontend and backend: the rows of Azure Load
/// Balancer's multi-dimensional metrics. A MUX fills `rules`, a host agent the SNAT rows.
/// Control plane: building one allocates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeReport {
    /// Per listener (see [`Node::rules`]).
    pub rules: Vec<RuleReport>,
    /// Per SNAT frontend address, backend and protocol (see [`Node::snat_ports`]).
    pub snat_ports: Vec<SnatPortsReport>,
    /// Per SNAT frontend address and backend (see [`Node::snat_connections`]).
    pub snat_connections: Vec<SnatConnections>,
}

impl NodeReport {
    /// Adds another engine's report (workers of one node, each with its own counters): rows meet
    /// by what they name, not by position (for a moment after a reload, engines run different
    /// configurations). Counters add up; a member is up only if every engine has it up; allocated
    /// SNAT ports, which every engine is configured with alike, are not added twice.
    pub fn merge(&mut self, other: &NodeReport) {
        merge_rows(&mut self.rules, &other.rules, RuleReport::key, |a, r| {
            a.traffic.packets += r.traffic.packets;
            a.traffic.bytes += r.traffic.bytes;
            a.traffic.new_flows += r.traffic.new_flows;
            a.syns += r.syns;
            merge_rows(&mut a.members, &r.members, |m| (m.address, m.port), |x, m| x.up &= m.up);
        });
        merge_rows(&mut self.snat_ports, &other.snat_ports, SnatPortsReport::key, |a, p| {
            a.allocated = a.allocated.max(p.allocated);
            a.used += p.used;
        });
        merge_rows(
            &mut self.snat_connections,
            &other.snat_connections,
            |c| (c.frontend, c.backend),
            |a, c| {
                a.successful += c.successful;
                a.failed += c.failed;
                a.pending += c.pending;
            },
        );
    }
}

impl RuleReport {
    /// What a row names: the same listener in two engines' reports.
    fn key(&self) -> (RuleKind, String, IpAddr, (u16, u16), u8) {
        (self.kind, self.name.clone(), self.frontend, self.ports, protocol_order(self.protocol))
    }
}

impl SnatPortsReport {
    /// What a row names: the same frontend address, backend and protocol.
    fn key(&self) -> (IpAddr, IpAddr, u8) {
        (self.frontend, self.backend, protocol_order(self.protocol))
    }
}

/// A protocol as a sort key.
fn protocol_order(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::All => 2,
    }
}

/// Adds `theirs` to `mine` row by row, rows meeting by `key`; a row only `theirs` has is added as
/// it is. Linear when both list the same rows in the same order (engines of one configuration),
/// n log n otherwise (a node may have tens of thousands of rows, merged every round).
fn merge_rows<T: Clone, K: Ord>(mine: &mut Vec<T>, theirs: &[T], key: impl Fn(&T) -> K, add: impl Fn(&mut T, &T)) {
    if mine.is_empty() {
        mine.extend_from_slice(theirs);
        return;
    }
    if mine.len() == theirs.len() && mine.iter().zip(theirs).all(|(a, b)| key(a) == key(b)) {
        for (a, b) in mine.iter_mut().zip(theirs) {
            add(a, b);
        }
        return;
    }
    let mut at: BTreeMap<K, usize> = BTreeMap::new();
    for (i, b) in theirs.iter().enumerate() {
        at.insert(key(b), i);
    }
    let mut found = alloc::vec![None; theirs.len()];
    for (j, a) in mine.iter().enumerate() {
        if let Some(&i) = at.get(&key(a)) {
            found[i] = Some(j);
        }
    }
    for (b, j) in theirs.iter().zip(found) {
        match j {
            Some(j) => add(&mut mine[j], b),
            None => mine.push(b.clone()),
        }
    }
}

enum Path {
    Mux {
        mux: Box<Mux>,
        /// Where the flow-table sweep goes on next.
        sweep: usize,
        /// Traffic of frontends a reconfiguration removed (their counters go with them), so that
        /// the totals never go backwards.
        retired: Traffic,
    },
    Host(Box<HostAgent>),
}

/// Health verdicts by (pool, probe, member).
fn verdicts(health: &[MemberHealth]) -> BTreeMap<(usize, usize, usize), bool> {
    health.iter().map(|h| ((h.pool, h.probe, h.member), h.up)).collect()
}

/// A MUX or a host agent behind one interface.
pub struct Node {
    path: Path,
}

impl Node {
    /// Builds the node `role` asks for, serving `lb`.
    pub fn new(role: NodeRole, lb: LoadBalancer) -> Result<Self, NodeError> {
        Self::with_flow_memory(role, lb, |_, _| {})
    }

    /// [`Node::new`], handing the flow table's memory to `prepare` before it is first written (the
    /// program asks for large pages there).
    pub fn with_flow_memory(
        role: NodeRole,
        lb: LoadBalancer,
        prepare: impl FnOnce(*const u8, usize),
    ) -> Result<Self, NodeError> {
        let path = match role {
            NodeRole::Mux(node) => Path::Mux {
                mux: Box::new(Mux::with_flow_memory(node, lb, prepare)?),
                sweep: 0,
                retired: Traffic::default(),
            },
            NodeRole::Host(node) => Path::Host(Box::new(HostAgent::with_flow_memory(node, lb, prepare)?)),
        };
        Ok(Node { path })
    }

    /// Whether a node `role` describes takes `lb` ([`Node::new`] and [`Node::update`] make the
    /// same checks), without building its tables or its flow table: a program checks a
    /// configuration this way before its workers build it.
    pub fn check(role: NodeRole, lb: LoadBalancer) -> Result<(), NodeError> {
        match role {
            NodeRole::Mux(node) => Ok(Mux::check(node, lb)?),
            NodeRole::Host(mut node) => {
                node.base.flow_capacity = 1;
                HostAgent::new(node, lb)?;
                Ok(())
            }
        }
    }

    /// The MUX, if this node is one.
    pub fn mux(&mut self) -> Option<&mut Mux> {
        match &mut self.path {
            Path::Mux { mux, .. } => Some(mux),
            Path::Host(_) => None,
        }
    }

    /// The host agent, if this node is one.
    pub fn host(&mut self) -> Option<&mut HostAgent> {
        match &mut self.path {
            Path::Host(h) => Some(h),
            Path::Mux { .. } => None,
        }
    }

    /// Whether this node is a MUX.
    pub fn is_mux(&self) -> bool {
        matches!(self.path, Path::Mux { .. })
    }

    /// The load balancer in force.
    pub fn config(&self) -> &LoadBalancer {
        match &self.path {
            Path::Mux { mux, .. } => mux.config(),
            Path::Host(h) => h.config(),
        }
    }

    /// Processes a burst of frames where they lie, at `now` (seconds of any monotonic clock):
    /// `out[i]` says what to do with `frames[i]`. A MUX takes [`BURST`] frames at a time (every
    /// frame parsed and its flow prefetched before any is steered); a host agent takes them from
    /// `side`. Frames past `out.len()` are left alone.
    #[inline]
    pub fn process_burst(&mut self, frames: &mut [impl BurstFrame], side: Side, now: u32, out: &mut [Action]) {
        let n = frames.len().min(out.len());
        match &mut self.path {
            Path::Mux { mux, .. } => {
                for (fs, acts) in frames[..n].chunks_mut(BURST).zip(out[..n].chunks_mut(BURST)) {
                    let mut verdicts = [Verdict::Drop(DropReason::Malformed); BURST];
                    let verdicts = &mut verdicts[..fs.len()];
                    mux.process_burst(fs, now, verdicts);
                    for (a, v) in acts.iter_mut().zip(verdicts.iter()) {
                        *a = Action::from(*v);
                    }
                }
            }
            Path::Host(h) => {
                for (f, a) in frames[..n].iter_mut().zip(out[..n].iter_mut()) {
                    let (buf, start, len) = f.parts();
                    let v = match side {
                        Side::Either => h.from_either(buf, start, len, now),
                        Side::Fabric => h.from_fabric(buf, start, len, now),
                        Side::Backend => h.from_backend(buf, start, len, now),
                    };
                    *a = Action::from(v);
                }
            }
        }
    }

    /// Buckets of the flow table (what a full sweep visits).
    pub fn buckets(&mut self) -> usize {
        let slots = match &mut self.path {
            Path::Mux { mux, .. } => mux.flows().slots(),
            Path::Host(h) => h.flows().slots(),
        };
        slots / crate::tables::flow::BUCKET_SLOTS
    }

    /// Expires flows idle past their timeout in up to `buckets` buckets, going on where the last
    /// call stopped. A host agent releases their SNAT ports and hands each TCP reset it sends to
    /// `emit`, with the side it leaves on.
    pub fn expire(&mut self, now: u32, buckets: usize, emit: impl FnMut(HostEgress, &[u8])) {
        match &mut self.path {
            Path::Mux { mux, sweep, .. } => {
                // The poll loop comes here even when no frame does: the MUX's clock, which dates
                // its tables' rebuilds for second chances, stays current.
                mux.set_clock(now);
                *sweep = mux.flows().sweep(*sweep, buckets, now);
            }
            Path::Host(h) => h.expire(now, buckets, emit),
        }
    }

    /// A MUX's second chances from a configuration its pool ran before, replaced `age` seconds
    /// before `now` (see [`Mux::recall`]); a host agent has nothing to recall.
    pub fn recall(&mut self, earlier: &LoadBalancer, age: u32, now: u32) -> Result<(), NodeError> {
        match &mut self.path {
            Path::Mux { mux, .. } => Ok(mux.recall(earlier, age, now)?),
            Path::Host(_) => Ok(()),
        }
    }

    /// Applies a new load balancer; on error the running one stays. Established flows keep their
    /// backends.
    pub fn update(&mut self, lb: LoadBalancer) -> Result<(), NodeError> {
        self.update_with_health(lb, &[])
    }

    /// [`Node::update`], with the health of the members `health` names set outright (as
    /// [`Node::set_health`] sets it) in the first tables the new configuration builds: a MUX
    /// told its members' health by the control plane takes a configuration and its health at
    /// once. A host agent, which does not steer by health, takes the configuration alone.
    pub fn update_with_health(&mut self, lb: LoadBalancer, health: &[MemberHealth]) -> Result<(), NodeError> {
        self.update_prepared(lb, health, None)
    }

    /// The Maglev tables a MUX of `role` builds for `lb` with the members' health `health` (the
    /// others up), built here, away from the workers, for every worker's
    /// [`Node::update_prepared`], sharing those of `previous` with the same members (see
    /// [`Mux::prepare`]); `None` for a host agent, which has none.
    pub fn prepare(
        role: &NodeRole,
        lb: &LoadBalancer,
        health: &[MemberHealth],
        previous: Option<&PreparedTables>,
    ) -> Result<Option<PreparedTables>, NodeError> {
        match role {
            NodeRole::Mux(node) => {
                let verdicts = verdicts(health);
                let preset = |pool: usize, probe: usize, member: usize| verdicts.get(&(pool, probe, member)).copied();
                Ok(Some(Mux::prepare(node, lb, preset, previous)?))
            }
            NodeRole::Host(_) => Ok(None),
        }
    }

    /// [`Node::update_with_health`], sharing the tables `prepared` holds instead of building them
    /// (see [`Mux::update_prepared`]).
    pub fn update_prepared(
        &mut self,
        lb: LoadBalancer,
        health: &[MemberHealth],
        prepared: Option<&PreparedTables>,
    ) -> Result<(), NodeError> {
        let verdicts = verdicts(health);
        let preset = |pool: usize, probe: usize, member: usize| verdicts.get(&(pool, probe, member)).copied();
        match &mut self.path {
            Path::Mux { mux, retired, .. } => {
                let before = frontend_totals(mux.counters());
                let r = mux.update_prepared(lb, preset, prepared);
                let after = frontend_totals(mux.counters());
                retired.packets += before.packets.saturating_sub(after.packets);
                retired.bytes += before.bytes.saturating_sub(after.bytes);
                retired.new_flows += before.new_flows.saturating_sub(after.new_flows);
                Ok(r?)
            }
            Path::Host(h) => Ok(h.update(lb)?),
        }
    }

    /// The underlay addresses this node tunnels to, each once: a MUX's hosts (those of the
    /// configuration in force and those its established flows still go to), a host agent's MUXes.
    /// The program resolves each one's next hop from the kernel's routing and neighbour tables and
    /// hands it to [`Node::set_next_hop`]; the list changes with [`Node::update`].
    pub fn underlay_peers(&self) -> Vec<IpAddr> {
        match &self.path {
            Path::Mux { mux, .. } => mux.underlay_peers(),
            Path::Host(h) => h.underlay_peers(),
        }
    }

    /// Frames tunnelled to `peer` leave with destination MAC `mac`: the prebuilt tunnels are
    /// rewritten in place (nothing per packet), and the next hop is kept across [`Node::update`]
    /// for the tunnels it builds. 00:00:00:00:00:00 marks the next hop unknown: frames to `peer`
    /// are dropped as `no_next_hop` until it is set again. A peer that is none of this node's is
    /// remembered for when a configuration makes it one.
    pub fn set_next_hop(&mut self, peer: IpAddr, mac: MacAddr) {
        match &mut self.path {
            Path::Mux { mux, .. } => mux.set_next_hop(peer, mac),
            Path::Host(h) => h.set_next_hop(peer, mac),
        }
    }

    /// Forgets `peer`'s own next hop ([`Node::set_next_hop`]): frames to it go to the gateway MAC
    /// again.
    pub fn clear_next_hop(&mut self, peer: IpAddr) {
        match &mut self.path {
            Path::Mux { mux, .. } => mux.clear_next_hop(peer),
            Path::Host(h) => h.clear_next_hop(peer),
        }
    }

    /// The default next hop (the node settings' `gateway_mac`): for underlay peers without one of
    /// their own, a MUX's relayed responses towards clients, a host agent's Direct Server Return
    /// frames and the resets it sends towards the fabric. 00:00:00:00:00:00 marks it unknown.
    pub fn set_gateway_mac(&mut self, mac: MacAddr) {
        match &mut self.path {
            Path::Mux { mux, .. } => mux.set_gateway_mac(mac),
            Path::Host(h) => h.set_gateway_mac(mac),
        }
    }

    /// The addresses of a host agent's local backends (each once), whose MACs the program may
    /// look up in the kernel's neighbour table for [`Node::set_backend_mac`]; none on a MUX.
    pub fn local_backend_addresses(&self) -> Vec<IpAddr> {
        match &self.path {
            Path::Mux { .. } => Vec::new(),
            Path::Host(h) => h.local_backend_addresses(),
        }
    }

    /// Frames a host agent delivers to the backend at `address` are addressed to `mac` from now on
    /// (from the node's MAC), until the backend's own frames show another; kept across
    /// [`Node::update`]. Nothing on a MUX.
    pub fn set_backend_mac(&mut self, address: IpAddr, mac: MacAddr) {
        if let Path::Host(h) = &mut self.path {
            h.set_backend_mac(address, mac);
        }
    }

    /// Records one result of probe `probe` for member `member` of pool `pool` (a MUX's health
    /// state machine); [`Node::apply_probes`] then rebuilds what changed. A host agent does not
    /// steer by health.
    pub fn record_probe(&mut self, pool: usize, probe: usize, member: usize, up: bool) -> Result<(), NodeError> {
        match &mut self.path {
            Path::Mux { mux, .. } => mux.record_probe(pool, probe, member, up).map(|_| ()).map_err(NodeError::Mux),
            Path::Host(_) => Err(NodeError::WrongRole),
        }
    }

    /// Sets a MUX's health of member `member` of pool `pool` as probe `probe` sees it outright,
    /// with no threshold counting (a verdict made elsewhere: a host agent applied `numberOfProbes`
    /// to its own probes of the member); [`Node::apply_probes`] then rebuilds what changed. A host
    /// agent does not steer by health.
    pub fn set_health(&mut self, pool: usize, probe: usize, member: usize, up: bool) -> Result<(), NodeError> {
        match &mut self.path {
            Path::Mux { mux, .. } => mux.set_health(pool, probe, member, up).map(|_| ()).map_err(NodeError::Mux),
            Path::Host(_) => Err(NodeError::WrongRole),
        }
    }

    /// Rebuilds the Maglev tables whose members' health the recorded results or the verdicts set
    /// changed.
    pub fn apply_probes(&mut self) -> Result<(), NodeError> {
        match &mut self.path {
            Path::Mux { mux, .. } => mux.apply_probes().map_err(NodeError::Mux),
            Path::Host(_) => Ok(()),
        }
    }

    /// A MUX's health of a pool member (`None` for a host agent or indices out of range).
    pub fn health(&self, pool: usize, member: usize) -> Option<Health> {
        match &self.path {
            Path::Mux { mux, .. } => mux.health(pool, member),
            Path::Host(_) => None,
        }
    }

    /// Drops per reason, in counter order (a reason's index is [`DropCause::index`]).
    pub fn drops(&self) -> impl Iterator<Item = (DropCause, u64)> + '_ {
        let (mux, host): (&[_], &[_]) = match &self.path {
            Path::Mux { mux, .. } => (&mux.counters().drops, &[]),
            Path::Host(h) => (&[], &h.counters().drops),
        };
        let mux = DropReason::ALL.iter().zip(mux).map(|(&r, &n)| (DropCause::Mux(r), n));
        let host = HostDrop::ALL.iter().zip(host).map(|(&r, &n)| (DropCause::Host(r), n));
        mux.chain(host)
    }

    /// The totals both roles keep.
    pub fn totals(&mut self) -> NodeTotals {
        match &mut self.path {
            Path::Mux { mux, retired, .. } => {
                let flows = mux.flows().len() as u64;
                let k = mux.counters();
                let t = frontend_totals(k);
                NodeTotals {
                    forwarded: t.packets + retired.packets + k.relayed.packets,
                    forwarded_bytes: t.bytes + retired.bytes + k.relayed.bytes,
                    new_flows: t.new_flows + retired.new_flows,
                    flows,
                    icmp_too_big: k.too_big,
                    second_chance: k.second_chance,
                    syn_reopened: k.reopened,
                    ..NodeTotals::default()
                }
            }
            Path::Host(h) => {
                let k = h.counters();
                let mut totals = NodeTotals {
                    new_flows: k.inbound.new_flows + k.snat_out.new_flows,
                    flows: h.flows().len() as u64,
                    snat_ports_in_use: (0..h.local_backends().len()).map(|l| u64::from(h.snat_ports_in_use(l))).sum(),
                    tcp_resets: k.resets,
                    icmp_too_big: k.too_big,
                    second_chance: k.second_chance.packets,
                    ..NodeTotals::default()
                };
                for t in [k.inbound, k.responses, k.snat_out, k.snat_in, k.second_chance] {
                    totals.forwarded += t.packets;
                    totals.forwarded_bytes += t.bytes;
                }
                totals
            }
        }
    }

    /// One line per backend: a MUX's every pool member, a host agent's local backends.
    pub fn backends(&self) -> Vec<BackendReport> {
        match &self.path {
            Path::Mux { mux, .. } => {
                let (c, lb) = (mux.counters(), mux.config());
                let mut rows = Vec::new();
                for (pi, p) in lb.pools.iter().enumerate() {
                    for (bi, b) in p.backends.iter().enumerate() {
                        rows.push(BackendReport {
                            pool: p.name.clone(),
                            backend: b.name.clone(),
                            address: b.address,
                            traffic: c.backends.get(pi).and_then(|x| x.get(bi)).copied().unwrap_or_default(),
                            up: Some(mux.health(pi, bi) != Some(Health::Down)),
                        });
                    }
                }
                rows
            }
            Path::Host(h) => {
                let c = h.counters();
                h.local_backends()
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let pool = &h.config().pools[l.pool];
                        BackendReport {
                            pool: pool.name.clone(),
                            backend: pool.backends[l.member].name.clone(),
                            address: l.address,
                            traffic: c.backends.get(i).copied().unwrap_or_default(),
                            up: None,
                        }
                    })
                    .collect()
            }
        }
    }
}

impl Node {
    /// A MUX's listeners, in counter order (load-balancing rules, then inbound NAT rules, then NAT
    /// pools) with their traffic since they were configured (a listener keeps its counters across
    /// reconfigurations by name) and, for load-balancing rules, their members' health as the
    /// rule's probe sees it. None on a host agent. Control plane: allocates.
    pub fn rules(&self) -> Vec<RuleReport> {
        let Path::Mux { mux, .. } = &self.path else { return Vec::new() };
        let (lb, c) = (mux.config(), mux.counters());
        let address = |f: usize| lb.frontends.get(f).map(|f| f.address);
        let mut rows = Vec::with_capacity(lb.rules.len() + lb.nat_rules.len() + lb.nat_pools.len());
        // Counters are in the order listeners are listed in, whether or not a row is kept.
        let mut counter = 0;
        let mut row = |kind, name: &str, frontend, ports, protocol, members| {
            let i = counter;
            counter += 1;
            let Some(frontend) = frontend else { return };
            rows.push(RuleReport {
                kind,
                name: String::from(name),
                frontend,
                ports,
                protocol,
                traffic: c.rules.get(i).copied().unwrap_or_default(),
                syns: c.syns.get(i).copied().unwrap_or_default(),
                members,
            });
        };
        for r in &lb.rules {
            let members = lb.pools.get(r.pool).map_or_else(Vec::new, |pool| {
                (0..pool.backends.len())
                    .map(|m| MemberStatus {
                        address: pool.backends[m].address,
                        port: r.backend_port,
                        up: r.probe.is_none_or(|p| mux.probe_health(r.pool, p, m) != Some(Health::Down)),
                    })
                    .collect()
            });
            let ports = (r.frontend_port, r.frontend_port);
            row(RuleKind::LoadBalancing, &r.name, address(r.frontend), ports, r.protocol, members);
        }
        for r in &lb.nat_rules {
            let ports = (r.frontend_port, r.frontend_port);
            row(RuleKind::InboundNat, &r.name, address(r.frontend), ports, r.protocol, Vec::new());
        }
        for r in &lb.nat_pools {
            let ports = (r.port_start, r.port_end);
            row(RuleKind::InboundNatPool, &r.name, address(r.frontend), ports, r.protocol, Vec::new());
        }
        rows
    }

    /// A host agent's SNAT ports per frontend address, backend and protocol (the blocks of one
    /// backend on one address for one protocol added up), in the order they first appear; none
    /// on a MUX. Control plane: allocates.
    pub fn snat_ports(&self) -> Vec<SnatPortsReport> {
        let Path::Host(h) = &self.path else { return Vec::new() };
        let mut rows: Vec<SnatPortsReport> = Vec::new();
        let mut at = BTreeMap::new();
        for p in h.snat_ports() {
            match at.get(&p.key()) {
                Some(&i) => {
                    let a: &mut SnatPortsReport = &mut rows[i];
                    a.allocated += p.allocated;
                    a.used += p.used;
                }
                None => {
                    at.insert(p.key(), rows.len());
                    rows.push(p);
                }
            }
        }
        rows
    }

    /// A host agent's SNAT connections per frontend address and backend, by the state each
    /// reached (see [`SnatConnections`]); none on a MUX.
    pub fn snat_connections(&self) -> Vec<SnatConnections> {
        match &self.path {
            Path::Host(h) => h.counters().snat_connections.clone(),
            Path::Mux { .. } => Vec::new(),
        }
    }

    /// [`Node::rules`], [`Node::snat_ports`] and [`Node::snat_connections`] at once.
    pub fn report(&self) -> NodeReport {
        NodeReport { rules: self.rules(), snat_ports: self.snat_ports(), snat_connections: self.snat_connections() }
    }
}

/// The sum of a MUX's per-frontend traffic.
fn frontend_totals(c: &MuxCounters) -> Traffic {
    c.vips.iter().fold(Traffic::default(), |a, t| Traffic {
        packets: a.packets + t.packets,
        bytes: a.bytes + t.bytes,
        new_flows: a.new_flows + t.new_flows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Backend, Frontend, IdleTimeout, LoadDistribution, NatPool, NatRule, NodeBase, Pool, Probe, ProbeProtocol, Rule,
    };
    use crate::paths::host::HostNode;
    use crate::paths::mux::MuxNode;
    use crate::paths::ReturnPath;
    use alloc::vec;
    use core::net::Ipv4Addr;
    use etherparse::PacketBuilder;

    const HEADROOM: usize = 128;
    const VIP: [u8; 4] = [20, 0, 0, 1];

    fn rule(name: &str, protocol: Protocol, port: u16, backend_port: u16, probe: Option<usize>) -> Rule {
        Rule {
            name: name.into(),
            frontend: 0,
            pool: 0,
            probe,
            protocol,
            frontend_port: port,
            backend_port,
            load_distribution: LoadDistribution::Default,
            floating_ip: false,
            idle_timeout: IdleTimeout::default(),
            tcp_reset: false,
            disable_outbound_snat: true,
        }
    }

    /// A VIP with a probed TCP rule, an unprobed UDP rule, an inbound NAT rule and a NAT pool over
    /// two backends on two hosts.
    fn config() -> LoadBalancer {
        LoadBalancer {
            name: "lb".into(),
            frontends: vec![Frontend { name: "vip".into(), address: Ipv4Addr::from(VIP).into(), internal: false }],
            pools: vec![Pool {
                name: "pool".into(),
                vni: 7,
                backends: (0..2u8)
                    .map(|b| Backend {
                        name: alloc::format!("b{b}"),
                        address: Ipv4Addr::new(10, 0, 0, 4 + b).into(),
                        host: Ipv4Addr::new(172, 16, 10, 20 + b).into(),
                        weight: 1,
                    })
                    .collect(),
            }],
            probes: vec![Probe {
                name: "tcp".into(),
                protocol: ProbeProtocol::Tcp,
                port: 8080,
                request_path: None,
                interval_secs: 5,
                number_of_probes: 2,
            }],
            rules: vec![rule("web", Protocol::Tcp, 80, 8080, Some(0)), rule("dns", Protocol::Udp, 53, 53, None)],
            nat_rules: vec![NatRule {
                name: "ssh".into(),
                frontend: 0,
                protocol: Protocol::Tcp,
                frontend_port: 60001,
                backend_port: 2222,
                target: (0, 1),
                floating_ip: false,
                idle_timeout: IdleTimeout::default(),
                tcp_reset: false,
            }],
            nat_pools: vec![NatPool {
                name: "ssh-pool".into(),
                frontend: 0,
                protocol: Protocol::Tcp,
                port_start: 50000,
                port_end: 50001,
                backend_port: 22,
                pool: 0,
                floating_ip: false,
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

    fn mux() -> Node {
        Node::new(NodeRole::Mux(MuxNode { base: base([172, 16, 5, 10]), maglev_size: 251 }), config()).unwrap()
    }

    /// A client's TCP segment (a SYN, else an ACK) to the VIP's `port`, through the MUX: its length.
    fn send(node: &mut Node, client: u8, port: u16, syn: bool) -> usize {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 10]).ipv4([198, 18, 0, client], VIP, 64);
        let b = b.tcp(40000, port, 1000, 65535);
        let b = if syn { b.syn() } else { b.ack(1) };
        let mut f = vec![0u8; HEADROOM];
        b.write(&mut f, b"hello").unwrap();
        let len = f.len() - HEADROOM;
        let v = node.mux().unwrap().process(&mut f, HEADROOM, len, 10);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        len
    }

    #[test]
    fn a_mux_reports_each_listener_with_its_traffic_and_its_members_health() {
        let mut node = mux();
        // A SYN, its retransmission, an ACK; a SYN to the NAT rule.
        let len = send(&mut node, 1, 80, true)
            + send(&mut node, 1, 80, true)
            + send(&mut node, 1, 80, false)
            + send(&mut node, 2, 60001, true);
        let rows = node.rules();
        let names: Vec<(RuleKind, &str, (u16, u16), Protocol)> =
            rows.iter().map(|r| (r.kind, r.name.as_str(), r.ports, r.protocol)).collect();
        assert_eq!(
            names,
            [
                (RuleKind::LoadBalancing, "web", (80, 80), Protocol::Tcp),
                (RuleKind::LoadBalancing, "dns", (53, 53), Protocol::Udp),
                (RuleKind::InboundNat, "ssh", (60001, 60001), Protocol::Tcp),
                (RuleKind::InboundNatPool, "ssh-pool", (50000, 50001), Protocol::Tcp),
            ]
        );
        assert!(rows.iter().all(|r| r.frontend == IpAddr::from(VIP)));
        let (web, ssh) = (&rows[0], &rows[2]);
        assert_eq!((web.traffic.packets, web.traffic.new_flows), (3, 1));
        assert_eq!((web.syns, ssh.syns, rows[1].syns), (2, 1, 0), "SYNs without ACK, retransmitted ones too");
        assert_eq!((ssh.traffic.packets, ssh.traffic.new_flows), (1, 1));
        assert_eq!(web.traffic.bytes + ssh.traffic.bytes, len as u64);
        assert_eq!(rows[1].traffic, Traffic::default());
        let up: Vec<(IpAddr, u16, bool)> = web.members.iter().map(|m| (m.address, m.port, m.up)).collect();
        assert_eq!(
            up,
            [(Ipv4Addr::new(10, 0, 0, 4).into(), 8080, true), (Ipv4Addr::new(10, 0, 0, 5).into(), 8080, true)]
        );
        assert!(ssh.members.is_empty() && rows[3].members.is_empty(), "NAT listeners have no verdict");

        // Counters follow their listener through a reconfiguration.
        node.update(config()).unwrap();
        assert_eq!(node.rules(), rows);

        // The probe takes b1 out of the probed rule only.
        node.set_health(0, 0, 1, false).unwrap();
        node.apply_probes().unwrap();
        let rows = node.rules();
        assert_eq!(rows[0].members.iter().map(|m| m.up).collect::<Vec<_>>(), [true, false]);
        assert_eq!(rows[1].members.iter().map(|m| m.up).collect::<Vec<_>>(), [true, true], "no probe: always up");

        // A host agent has no listeners to report; a MUX no SNAT.
        let host = HostNode {
            base: base([172, 16, 10, 20]),
            muxes: vec![Ipv4Addr::new(172, 16, 5, 10).into()],
            return_path: ReturnPath::Direct,
            snat_quarantine_secs: 60,
            reset_on_snat_exhaustion: false,
            mss_clamp: None,
        };
        let host = Node::new(NodeRole::Host(host), config()).unwrap();
        assert!(host.rules().is_empty());
        let report = node.report();
        assert_eq!(report.rules, rows);
        assert!(report.snat_ports.is_empty() && report.snat_connections.is_empty());
    }

    #[test]
    fn reports_of_engines_merge_by_what_their_rows_name() {
        let mut a = mux();
        send(&mut a, 1, 80, true);
        let mut b = mux();
        send(&mut b, 2, 80, true);
        send(&mut b, 3, 80, true);
        b.set_health(0, 0, 0, false).unwrap();
        b.apply_probes().unwrap();
        let mut total = a.report();
        let mut other = b.report();
        // An engine that has not applied a reload yet: a rule the other does not have.
        other.rules[1].name = "dns-old".into();
        total.merge(&other);
        assert_eq!(total.rules.len(), 5);
        assert_eq!((total.rules[0].traffic.packets, total.rules[0].traffic.new_flows), (3, 3));
        assert_eq!(total.rules[0].syns, 3);
        assert_eq!(total.rules[0].members.iter().map(|m| m.up).collect::<Vec<_>>(), [false, true]);
        assert_eq!(total.rules[4].name, "dns-old");

        let ports = |allocated, used| SnatPortsReport {
            frontend: Ipv4Addr::new(20, 0, 0, 20).into(),
            backend: Ipv4Addr::new(10, 0, 0, 4).into(),
            protocol: Protocol::All,
            allocated,
            used,
        };
        let conns = |n| SnatConnections {
            frontend: Ipv4Addr::new(20, 0, 0, 20).into(),
            backend: Ipv4Addr::new(10, 0, 0, 4).into(),
            successful: n,
            failed: 1,
            pending: 2,
        };
        let mut x =
            NodeReport { snat_ports: vec![ports(8, 3)], snat_connections: vec![conns(4)], ..NodeReport::default() };
        x.merge(&NodeReport {
            snat_ports: vec![ports(8, 2)],
            snat_connections: vec![conns(1)],
            ..NodeReport::default()
        });
        assert_eq!(x.snat_ports, [ports(8, 5)], "every engine has the same blocks: allocated once");
        assert_eq!((x.snat_connections[0].successful, x.snat_connections[0].failed), (5, 2));
    }
}
