//! The MUX ("Step 4: MUX Processing"): classify a client frame, find its VIP and rule (load-balancing
//! rule, HA ports, inbound NAT rule or pool), keep established flows on their backend, pick a new
//! flow's backend from the pool's Maglev table (healthy members only), and VxLAN-encapsulate the
//! frame, in place, to the backend's host with the pool's VNI.
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

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use crate::config::{LoadBalancer, LoadDistribution, Protocol};
use crate::tables::maglev::mix64;
use crate::tables::{FlowTable, FlowTuple, Health, MaglevBackend, MaglevTable, NewFlow, ProbeState, Transition};
use crate::wire::flow::quoted_flow_key;
use crate::wire::{parse_flow_key, FlowKey, Fragment, HashFields, IpVersion, MacAddr, VxlanEncap, WireError};

/// This MUX node: its own addresses and the knobs of its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxNode {
    /// MAC of the port the MUX transmits on.
    pub mac: MacAddr,
    /// MAC of the next hop towards the hosts (the fabric router).
    pub gateway_mac: MacAddr,
    /// The MUX's underlay address (the outer source).
    pub underlay: IpAddr,
    /// Outer TTL / hop limit.
    pub ttl: u8,
    /// Underlay IP MTU.
    pub mtu: u16,
    /// Seed of every flow hash; the same on every MUX of a deployment.
    pub hash_seed: u64,
    /// Concurrent flows this core tracks.
    pub flow_capacity: usize,
    /// Maglev table size (a prime).
    pub maglev_size: u32,
}

/// Why a configuration or an API call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxError {
    /// The configuration is invalid.
    Config(crate::config::ConfigError),
    /// A pool's Maglev table could not be built.
    Maglev(crate::tables::MaglevError),
    /// A VxLAN tunnel could not be built (underlay version mismatch, VNI out of range).
    Tunnel(WireError),
    /// The flow table could not be allocated.
    FlowTable(crate::tables::FlowTableError),
    /// More distinct (host, VNI) tunnels than a flow entry can name.
    TooManyTunnels,
    /// A probe report names no pool member.
    UnknownBackend {
        /// Pool index.
        pool: usize,
        /// Member index.
        member: usize,
    },
}

impl fmt::Display for MuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MuxError::Config(e) => write!(f, "configuration: {e}"),
            MuxError::Maglev(e) => write!(f, "maglev: {e}"),
            MuxError::Tunnel(e) => write!(f, "tunnel: {e}"),
            MuxError::FlowTable(e) => write!(f, "flow table: {e:?}"),
            MuxError::TooManyTunnels => f.write_str("more than 65535 (host, VNI) tunnels"),
            MuxError::UnknownBackend { pool, member } => write!(f, "no member {member} in pool {pool}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for MuxError {}

/// Why a frame was dropped. Every drop has one, and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// The frame did not parse (see [`WireError`]).
    Malformed = 0,
    /// Its destination is no VIP of this MUX.
    NoVip = 1,
    /// The VIP has no rule for its protocol and port.
    NoRule = 2,
    /// The rule's pool has no healthy backend (or a NAT pool port has no member).
    NoBackend = 3,
    /// A later fragment whose first fragment was not seen.
    FragmentUnknown = 4,
    /// Not enough headroom, or the encapsulated frame would exceed the underlay MTU.
    Encap = 5,
}

/// Number of [`DropReason`]s.
pub const DROP_REASONS: usize = 6;

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
    fn add(&mut self, bytes: usize, new_flow: bool) {
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
    /// Per pool member.
    pub backends: Vec<Vec<Traffic>>,
    /// Per [`DropReason`].
    pub drops: [u64; DROP_REASONS],
}

/// What a listener leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Rule(usize),
    NatRule(usize),
    NatPool(usize),
}

/// One (protocol, port range) of a VIP.
#[derive(Debug, Clone, Copy)]
struct Listener {
    protocol: Protocol,
    lo: u16,
    hi: u16,
    target: Target,
    /// Index into the per-rule counters.
    counter: usize,
}

#[derive(Debug, Clone)]
struct Vip {
    version: IpVersion,
    addr: [u8; 16],
    listeners: Vec<Listener>,
}

#[derive(Debug, Clone)]
struct PoolState {
    table: MaglevTable,
    /// Maglev backend index → pool member index (only healthy, weighted members are in the table).
    in_table: Vec<usize>,
    health: Vec<ProbeState>,
    /// Pool member → tunnel id.
    tunnel: Vec<u16>,
}

/// Marks the flow-table entries that remember a fragmented datagram rather than a connection.
const FRAGMENT_MARK: u8 = 0x80;

/// One core's MUX.
pub struct Mux {
    node: MuxNode,
    lb: LoadBalancer,
    vips: Vec<Vip>,
    pools: Vec<PoolState>,
    /// Append-only: flows name their tunnel by index, so indices survive reconfiguration.
    tunnels: Vec<VxlanEncap>,
    tunnel_keys: Vec<(IpAddr, u32)>,
    /// Flow-table `backend` field → (pool, member) for counters; may be stale after an update.
    tunnel_owner: Vec<(usize, usize)>,
    flows: FlowTable,
    counters: MuxCounters,
}

impl Mux {
    /// Builds a MUX for a validated configuration.
    pub fn new(node: MuxNode, lb: LoadBalancer) -> Result<Self, MuxError> {
        let flows = FlowTable::with_capacity(node.flow_capacity).map_err(MuxError::FlowTable)?;
        let mut mux = Mux {
            node,
            lb: LoadBalancer::default(),
            vips: Vec::new(),
            pools: Vec::new(),
            tunnels: Vec::new(),
            tunnel_keys: Vec::new(),
            tunnel_owner: Vec::new(),
            flows,
            counters: MuxCounters::default(),
        };
        mux.update(lb)?;
        Ok(mux)
    }

    /// Applies a new configuration at run time. Established flows keep their backend (they name
    /// their tunnel, which stays); new flows follow the new rules and pools. Health of members that
    /// keep their address in a pool of the same name carries over. On error nothing changes.
    pub fn update(&mut self, lb: LoadBalancer) -> Result<(), MuxError> {
        lb.validate().map_err(MuxError::Config)?;
        let mut tunnels = self.tunnels.clone();
        let mut keys = self.tunnel_keys.clone();
        let mut owners = self.tunnel_owner.clone();
        let mut pools = Vec::with_capacity(lb.pools.len());
        for (pi, pool) in lb.pools.iter().enumerate() {
            let old = self.lb.pools.iter().position(|p| p.name == pool.name);
            let mut tunnel = Vec::with_capacity(pool.backends.len());
            let mut health = Vec::with_capacity(pool.backends.len());
            let probes = lb
                .rules
                .iter()
                .find(|r| r.pool == pi)
                .and_then(|r| r.probe)
                .map_or(2, |p| lb.probes[p].number_of_probes);
            for (mi, b) in pool.backends.iter().enumerate() {
                let key = (b.host, pool.vni);
                let id = match keys.iter().position(|k| *k == key) {
                    Some(id) => {
                        owners[id] = (pi, mi);
                        id
                    }
                    None => {
                        let t = VxlanEncap::new(
                            self.node.mac,
                            self.node.gateway_mac,
                            self.node.underlay,
                            b.host,
                            pool.vni,
                            self.node.ttl,
                            self.node.mtu,
                        )
                        .map_err(MuxError::Tunnel)?;
                        tunnels.push(t);
                        keys.push(key);
                        owners.push((pi, mi));
                        keys.len() - 1
                    }
                };
                tunnel.push(u16::try_from(id).map_err(|_| MuxError::TooManyTunnels)?);
                let kept = old.and_then(|o| {
                    let op = &self.lb.pools[o];
                    op.backends.iter().position(|x| x.address == b.address).map(|m| self.pools[o].health[m])
                });
                health.push(kept.unwrap_or_else(|| ProbeState::new(probes)));
            }
            let mut state = PoolState { table: MaglevTable::default(), in_table: Vec::new(), health, tunnel };
            rebuild_pool(&mut state, pool, self.node.maglev_size)?;
            pools.push(state);
        }
        let mut vips: Vec<Vip> = lb
            .frontends
            .iter()
            .map(|f| {
                let mut addr = [0u8; 16];
                let version = match f.address {
                    IpAddr::V4(a) => {
                        addr[..4].copy_from_slice(&a.octets());
                        IpVersion::V4
                    }
                    IpAddr::V6(a) => {
                        addr = a.octets();
                        IpVersion::V6
                    }
                };
                Vip { version, addr, listeners: Vec::new() }
            })
            .collect();
        // Every listener of every VIP, in counter order: load-balancing rules, NAT rules, NAT pools.
        let rules = lb.rules.iter().enumerate().map(|(i, r)| {
            let ports = if r.is_ha_ports() { (0, u16::MAX) } else { (r.frontend_port, r.frontend_port) };
            (r.frontend, r.protocol, ports, Target::Rule(i))
        });
        let nat_rules = lb
            .nat_rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.frontend, r.protocol, (r.frontend_port, r.frontend_port), Target::NatRule(i)));
        let nat_pools = lb
            .nat_pools
            .iter()
            .enumerate()
            .map(|(i, r)| (r.frontend, r.protocol, (r.port_start, r.port_end), Target::NatPool(i)));
        let mut counter = 0;
        for (frontend, protocol, (lo, hi), target) in rules.chain(nat_rules).chain(nat_pools) {
            vips[frontend].listeners.push(Listener { protocol, lo, hi, target, counter });
            counter += 1;
        }
        self.counters.vips.resize(vips.len(), Traffic::default());
        self.counters.rules.resize(counter, Traffic::default());
        self.counters.backends = lb.pools.iter().map(|p| vec![Traffic::default(); p.backends.len()]).collect();
        self.lb = lb;
        self.vips = vips;
        self.pools = pools;
        self.tunnels = tunnels;
        self.tunnel_keys = keys;
        self.tunnel_owner = owners;
        Ok(())
    }

    /// Reports one probe result for member `member` of pool `pool` (from the prober, off the packet
    /// path). A health change rebuilds the pool's Maglev table; flows already on the member stay.
    pub fn report_probe(&mut self, pool: usize, member: usize, success: bool) -> Result<Transition, MuxError> {
        let state = self.pools.get_mut(pool).ok_or(MuxError::UnknownBackend { pool, member })?;
        let probe = state.health.get_mut(member).ok_or(MuxError::UnknownBackend { pool, member })?;
        let t = probe.record(success);
        if t != Transition::None {
            rebuild_pool(state, &self.lb.pools[pool], self.node.maglev_size)?;
        }
        Ok(t)
    }

    /// Health of a pool member.
    pub fn health(&self, pool: usize, member: usize) -> Option<Health> {
        self.pools.get(pool)?.health.get(member).map(|p| p.health())
    }

    /// The counters.
    pub fn counters(&self) -> &MuxCounters {
        &self.counters
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
    /// `out[i]`. Frames are edited in place. Frames go one after another: a two-pass variant that
    /// parsed the whole burst and read every flow bucket first (plain loads standing in for
    /// prefetches, since lb-core has no `unsafe`) measured no faster on this machine.
    pub fn process_burst(&mut self, frames: &mut [(&mut [u8], usize, usize)], now: u32, out: &mut [Verdict]) {
        for ((buf, start, len), v) in frames.iter_mut().zip(out.iter_mut()) {
            *v = self.process(buf, *start, *len, now);
        }
    }

    /// Processes one frame at `buf[start..start + len]`, with headroom before it for the outer
    /// headers; `now` is in seconds.
    pub fn process(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> Verdict {
        let key = start.checked_add(len).and_then(|end| buf.get(start..end)).and_then(|f| parse_flow_key(f).ok());
        let v = match key {
            Some(k) => {
                let h = k.hash(self.node.hash_seed);
                self.steer(buf, start, len, &k, h, now)
            }
            None => Verdict::Drop(DropReason::Malformed),
        };
        if let Verdict::Drop(r) = v {
            self.counters.drops[r as usize] += 1;
        }
        v
    }

    /// Everything after parsing: `key` is the frame's flow key, `key_hash` its 5-tuple hash.
    #[inline]
    fn steer(&mut self, buf: &mut [u8], start: usize, len: usize, key: &FlowKey, key_hash: u32, now: u32) -> Verdict {
        let Some(vip) = self.vips.iter().position(|v| v.addr == key.dst_addr && v.version == key.ip_version) else {
            return Verdict::Drop(DropReason::NoVip);
        };
        let seed = self.node.hash_seed;
        // An ICMP error is steered by the connection it quotes (a packet the VIP sent), reversed.
        let (flow, hash) = if key.is_icmp_error() {
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
        // A later fragment has no ports: only its first fragment's record knows its flow.
        if flow.fragment == Fragment::Later {
            let (tuple, frag_hash) = fragment_record(&flow, seed);
            let Some(at) = self.flows.lookup(&tuple, frag_hash, now) else {
                return Verdict::Drop(DropReason::FragmentUnknown);
            };
            let e = self.flows.touch(at, 0, now);
            return self.forward(buf, start, len, vip, usize::from(e.rule), e.backend, false, frag_hash);
        }
        let Some(l) = self.vips[vip]
            .listeners
            .iter()
            .find(|l| l.protocol.matches(flow.protocol) && (l.lo..=l.hi).contains(&flow.dst_port))
            .copied()
        else {
            return Verdict::Drop(DropReason::NoRule);
        };
        let tuple = FlowTuple::from(&flow);
        let (tunnel, new_flow) = match self.flows.lookup(&tuple, hash, now) {
            Some(at) => (self.flows.touch(at, key.tcp_flags, now).backend, false),
            None => {
                let (pool, member, idle) = match l.target {
                    Target::Rule(r) => {
                        let rule = &self.lb.rules[r];
                        let h = match rule.load_distribution {
                            LoadDistribution::Default => hash,
                            LoadDistribution::SourceIpProtocol => flow.hash_fields(HashFields::ThreeTuple, seed),
                            LoadDistribution::SourceIp => flow.hash_fields(HashFields::TwoTuple, seed),
                        };
                        let state = &self.pools[rule.pool];
                        let Some(m) = state.table.lookup(h) else {
                            return Verdict::Drop(DropReason::NoBackend);
                        };
                        (rule.pool, state.in_table[m], rule.idle_timeout_minutes)
                    }
                    Target::NatRule(r) => {
                        let n = &self.lb.nat_rules[r];
                        (n.target.0, n.target.1, n.idle_timeout_minutes)
                    }
                    Target::NatPool(p) => {
                        let n = &self.lb.nat_pools[p];
                        let member = usize::from(flow.dst_port - n.port_start);
                        if member >= self.lb.pools[n.pool].backends.len() {
                            return Verdict::Drop(DropReason::NoBackend);
                        }
                        (n.pool, member, 4)
                    }
                };
                let tunnel = self.pools[pool].tunnel[member];
                if !key.is_icmp_error() {
                    let new = NewFlow { backend: tunnel, rule: l.counter as u16, idle_minutes: idle };
                    self.flows.insert(&tuple, hash, key.tcp_flags, new, now);
                }
                (tunnel, !key.is_icmp_error())
            }
        };
        if flow.fragment == Fragment::First {
            let (ft, fh) = fragment_record(&flow, seed);
            if self.flows.lookup(&ft, fh, now).is_none() {
                let new = NewFlow { backend: tunnel, rule: l.counter as u16, idle_minutes: 4 };
                self.flows.insert(&ft, fh, 0, new, now);
            }
        }
        self.forward(buf, start, len, vip, l.counter, tunnel, new_flow, hash)
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
            Err(_) => Verdict::Drop(DropReason::Encap),
        }
    }
}

/// The flow-table record that ties the fragments of one datagram together.
#[inline]
fn fragment_record(k: &FlowKey, seed: u64) -> (FlowTuple, u32) {
    let mut t = FlowTuple::from(k);
    t.src_port = (k.frag_ident >> 16) as u16;
    t.dst_port = k.frag_ident as u16;
    t.version |= FRAGMENT_MARK;
    let h = k.hash_fields(HashFields::ThreeTuple, seed) ^ (mix64(u64::from(k.frag_ident)) as u32);
    (t, h)
}

/// Rebuilds a pool's Maglev table over its healthy members of non-zero weight.
fn rebuild_pool(state: &mut PoolState, pool: &crate::config::Pool, size: u32) -> Result<(), MuxError> {
    let mut backends = Vec::new();
    state.in_table.clear();
    for (i, b) in pool.backends.iter().enumerate() {
        if state.health[i].health() == Health::Up && b.weight > 0 {
            backends.push(MaglevBackend { id: backend_id(b.address), weight: b.weight });
            state.in_table.push(i);
        }
    }
    state.table.rebuild(&backends, size).map_err(MuxError::Maglev)
}

/// A backend's Maglev identity: its address, so every MUX agrees without coordination.
fn backend_id(a: IpAddr) -> u64 {
    let o = match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    };
    mix64((o as u64) ^ mix64((o >> 64) as u64))
}
