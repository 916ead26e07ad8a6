//! Reconfiguration at run time ([`HostAgent::update`]): the new configuration is checked and
//! everything derived from it built first (nothing changes on error); then established connections
//! follow their backend and frontend (by address) into it, SNAT connections keep their ports where
//! a block still holds them, released ports keep their quarantine, and the rest is flushed.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::net::IpAddr;

use super::{HostAgent, HostError, HostFlowKind, LocalBackend, ReturnPath, LOCAL_TARGET};
use crate::config::{LoadBalancer, SnatGrant, SnatPlan};
use crate::paths::listen::{addr16, backend_tag, build_vips, Vips};
use crate::paths::mux::Traffic;
use crate::tables::snat::{PortBlock, SnatAllocator};
use crate::wire::{ip_proto, VxlanEncap};

/// A new configuration with everything the host agent derives from it, built and checked:
/// putting it in force cannot fail.
struct Reconfiguration {
    lb: LoadBalancer,
    locals: Vec<LocalBackend>,
    grants: Vec<SnatGrant>,
    vips: Vips,
    claims: Vec<(usize, u16)>,
    /// The SNAT blocks, their owners and the listeners' claims are those in force: the allocator
    /// stays.
    same_snat: bool,
    /// The new allocator, unless `same_snat`.
    snat: Option<SnatAllocator>,
    tunnels: Vec<Vec<VxlanEncap>>,
    /// Tunnels to the other hosts, their (host, VNI), and the second-chance targets.
    hosts: Hosts,
}

/// The tunnels to the other hosts of a configuration, per (host, VNI), their keys, and every
/// backend as a second chance names it: (VNI, tag, tunnel or [`LOCAL_TARGET`]), sorted.
type Hosts = (Vec<VxlanEncap>, Vec<(IpAddr, u32)>, Vec<(u32, u32, u16)>);

/// What remapping the flow table to a new configuration left to do.
#[derive(Default)]
struct Remapped {
    /// Entries removed (two per connection).
    flushed: u64,
    /// The latest second the table has seen, on its wrapping clock.
    latest: Option<u32>,
    /// SNAT connections removed while the allocator stays: their (block, port), to release (once
    /// each: with their outbound entry).
    released: Vec<(usize, u16)>,
    /// SNAT connections kept while the allocator is rebuilt: (block, port, UDP), for the new one to
    /// take.
    adopt: Vec<(usize, u16, bool)>,
    /// SNAT connections ended while the allocator is rebuilt: (address, port).
    ended: Vec<([u8; 16], u16)>,
}

impl HostAgent {
    /// Applies a new configuration at run time. Established connections keep going if their
    /// backend and frontend are still there (their entries are remapped); SNAT connections keep
    /// their ports if the backend still has a block with the port on the same address, for the
    /// connection's protocol, that no listener claims. The rest are removed and counted
    /// (`flushed`). On error nothing changes.
    pub fn update(&mut self, lb: LoadBalancer) -> Result<(), HostError> {
        let next = self.prepare(lb)?;
        self.apply(next);
        Ok(())
    }

    /// Checks `lb` and builds what the host agent derives from it, changing nothing.
    fn prepare(&self, lb: LoadBalancer) -> Result<Reconfiguration, HostError> {
        lb.validate().map_err(HostError::Config)?;
        if self.node.return_path == ReturnPath::ViaMux && self.node.muxes.is_empty() {
            return Err(HostError::NoMux);
        }
        let plan = lb.snat_plan().map_err(HostError::Config)?;
        let (locals, grants) = local_backends(&lb, &plan, self.node.base.underlay);
        let (vips, _) = build_vips(&lb);
        let claims = listener_claims(&grants, &vips);
        let same_snat = grants == self.grants
            && claims == self.claims
            && snat_owners(&lb, &vips, &grants) == snat_owners(&self.lb, &self.vips, &self.grants);
        let snat = if same_snat { None } else { Some(self.snat_allocator(&grants, &claims)?) };
        let tunnels = self.tunnels_for(&lb)?;
        let hosts = self.hosts_for(&lb)?;
        Ok(Reconfiguration { lb, locals, grants, vips, claims, same_snat, snat, tunnels, hosts })
    }

    /// The tunnels to every other host of `lb` (per host and VNI; hosts of the other IP version
    /// than the underlay's are left out) and the second-chance targets, built once per
    /// configuration so that forwarding a second chance allocates nothing.
    fn hosts_for(&self, lb: &LoadBalancer) -> Result<Hosts, HostError> {
        let me = self.node.base.underlay;
        let mut index: BTreeMap<(IpAddr, u32), u16> = BTreeMap::new();
        let (mut hosts, mut keys, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for pool in &lb.pools {
            for b in &pool.backends {
                let at = if b.host == me {
                    LOCAL_TARGET
                } else if let Some(&i) = index.get(&(b.host, pool.vni)) {
                    i
                } else {
                    if b.host.is_ipv4() != me.is_ipv4() || hosts.len() >= usize::from(LOCAL_TARGET) {
                        continue;
                    }
                    let t = VxlanEncap::new(
                        self.node.base.mac,
                        self.next_hop(b.host),
                        me,
                        b.host,
                        pool.vni,
                        self.node.base.ttl,
                        self.node.base.mtu,
                    )
                    .map_err(HostError::Tunnel)?;
                    let i = hosts.len() as u16;
                    hosts.push(t);
                    keys.push((b.host, pool.vni));
                    index.insert((b.host, pool.vni), i);
                    i
                };
                targets.push((pool.vni, backend_tag(b.address), at));
            }
        }
        targets.sort_unstable();
        targets.dedup_by_key(|t| (t.0, t.1));
        Ok((hosts, keys, targets))
    }

    /// An allocator for `grants`, with the ports listeners claim reserved.
    fn snat_allocator(&self, grants: &[SnatGrant], claims: &[(usize, u16)]) -> Result<SnatAllocator, HostError> {
        let blocks: Vec<PortBlock> =
            grants.iter().map(|g| PortBlock { address: g.frontend as u16, first: g.first, len: g.len }).collect();
        let mut a = SnatAllocator::new(&blocks, self.node.snat_quarantine_secs).map_err(HostError::Snat)?;
        for &(bi, port) in claims {
            a.reserve(bi, port).map_err(HostError::Snat)?;
        }
        Ok(a)
    }

    /// The tunnels to the MUXes: per pool of `lb` (its VNI), per MUX.
    fn tunnels_for(&self, lb: &LoadBalancer) -> Result<Vec<Vec<VxlanEncap>>, HostError> {
        let me = self.node.base.underlay;
        let mut tunnels = Vec::with_capacity(lb.pools.len());
        for pool in &lb.pools {
            let mut per_mux = Vec::with_capacity(self.node.muxes.len());
            for &m in &self.node.muxes {
                let t = VxlanEncap::new(
                    self.node.base.mac,
                    self.next_hop(m),
                    me,
                    m,
                    pool.vni,
                    self.node.base.ttl,
                    self.node.base.mtu,
                )
                .map_err(HostError::Tunnel)?;
                per_mux.push(t);
            }
            tunnels.push(per_mux);
        }
        Ok(tunnels)
    }

    /// Puts a prepared configuration in force: the flow table is remapped, SNAT ports are released
    /// or carried into the new allocator, and counters and backends' links follow their backends.
    fn apply(&mut self, mut next: Reconfiguration) {
        // Established flows follow local backends and frontends by address.
        let old_locals = core::mem::take(&mut self.locals);
        let old_lb = core::mem::take(&mut self.lb);
        let local_map = local_map(&old_locals, &old_lb, &next.locals, &next.lb);
        let frontend_map = frontend_map(&old_lb, &next.lb);
        let remapped = self.remap_flows(&next, &local_map, &frontend_map);
        // Ports of removed SNAT connections go back to the allocator that stays, stamped with the
        // latest second the table has seen.
        for &(block, port) in &remapped.released {
            let _ = self.snat.release(block, port, remapped.latest.unwrap_or(0));
        }
        if let Some(a) = next.snat.as_mut() {
            self.carry_quarantine(a, &next.vips, &next.grants, &remapped);
        }
        self.counters.flushed += remapped.flushed / 2;
        self.carry_backend_counters(&local_map, next.locals.len());
        if let Some(a) = next.snat {
            self.snat = a;
        }
        self.grants = next.grants;
        self.claims = next.claims;
        for (o, n) in old_locals.iter().zip(&local_map) {
            if let Some(l) = n.and_then(|n| next.locals.get_mut(usize::from(n))) {
                l.link = l.link.or(o.link);
            }
        }
        for l in next.locals.iter_mut().filter(|l| l.link.is_none()) {
            l.link = self.backend_mac(l.address).map(|mac| (mac, None));
        }
        self.locals = next.locals;
        self.vips = next.vips;
        self.tunnels = next.tunnels;
        (self.hosts, self.host_keys, self.targets) = next.hosts;
        self.hops_known = self.tunnels.iter().flatten().all(VxlanEncap::has_next_hop);
        self.lb = next.lb;
        self.index_snat_connections();
    }

    /// Renumbers every entry of the flow table to the new local backend and frontend indices, and
    /// removes (and counts) the connections whose backend, frontend or SNAT port does not carry
    /// over.
    fn remap_flows(
        &mut self,
        next: &Reconfiguration,
        local_map: &[Option<u16>],
        frontend_map: &[Option<u16>],
    ) -> Remapped {
        let mut r = Remapped::default();
        let old_vips = &self.vips;
        // A redirect follows its target (VNI, tag) if it is still on the same host.
        let me = self.node.base.underlay;
        let host_of = |keys: &[(IpAddr, u32)], at: u16| {
            if at == LOCAL_TARGET {
                Some(me)
            } else {
                keys.get(usize::from(at)).map(|k| k.0)
            }
        };
        let (_, new_keys, new_targets) = &next.hosts;
        let redirects: Vec<Option<u16>> = self
            .targets
            .iter()
            .map(|&(vni, tag, at)| {
                let i = new_targets.binary_search_by_key(&(vni, tag), |t| (t.0, t.1)).ok()?;
                let same = host_of(&self.host_keys, at) == host_of(new_keys, new_targets[i].2);
                (same && new_targets[i].2 != LOCAL_TARGET).then_some(i as u16)
            })
            .collect();
        self.flows.retain(|e| {
            if e.value.kind == HostFlowKind::Redirect {
                let Some(n) = redirects.get(usize::from(e.value.block)).copied().flatten() else { return false };
                e.value.block = n;
                return true;
            }
            // The later of the two on a clock that may wrap (as the flow table's deadlines are).
            r.latest = match r.latest {
                Some(l) if (e.last_seen.wrapping_sub(l) as i32) <= 0 => Some(l),
                _ => Some(e.last_seen),
            };
            let v = &mut e.value;
            let snat = matches!(v.kind, HostFlowKind::SnatOut | HostFlowKind::SnatIn);
            let local = local_map.get(usize::from(v.local)).copied().flatten();
            let frontend = frontend_map.get(usize::from(v.frontend)).copied().flatten();
            match (local, frontend) {
                (Some(l), Some(f)) if !snat || next.same_snat => {
                    v.local = l;
                    v.frontend = f;
                    true
                }
                // The blocks changed (a backend added, a rule's timeout, ...): an SNAT connection
                // goes on if its backend still has a block with its port on its address for its
                // protocol, not claimed by a listener; the new allocator takes its port (once, with
                // the outbound entry; both entries name the new block).
                (Some(l), Some(f)) if snat => {
                    let Some(b) = next.block_keeping(l, f, v.port, e.tuple.protocol) else {
                        if v.kind == HostFlowKind::SnatOut {
                            r.ended.extend(old_vips.get(usize::from(v.frontend)).map(|f| (f.addr, v.port)));
                        }
                        r.flushed += 1;
                        return false;
                    };
                    if v.kind == HostFlowKind::SnatOut {
                        r.adopt.push((b, v.port, e.tuple.protocol == ip_proto::UDP));
                    }
                    v.local = l;
                    v.frontend = f;
                    v.block = b as u16;
                    true
                }
                _ => {
                    if next.same_snat && v.kind == HostFlowKind::SnatOut {
                        r.released.push((usize::from(v.block), v.port));
                    } else if v.kind == HostFlowKind::SnatOut {
                        r.ended.extend(old_vips.get(usize::from(v.frontend)).map(|f| (f.addr, v.port)));
                    }
                    r.flushed += 1;
                    false
                }
            }
        });
        r
    }

    /// The new allocator `a` takes the kept connections' ports in one pass; the ports the old one
    /// holds in quarantine, and those of the connections this reload ended, wait out their
    /// quarantine in it (by address and port: the blocks moved), or a new connection could take
    /// one at once, to a destination still holding the old connection's state.
    fn carry_quarantine(&self, a: &mut SnatAllocator, vips: &Vips, grants: &[SnatGrant], remapped: &Remapped) {
        a.adopt(&remapped.adopt);
        let mut held = self.quarantined_ports(remapped.latest);
        // The latest time there is, on the wrapping clock (the table's, else the releases').
        let later = |a: u32, b: u32| if (b.wrapping_sub(a) as i32) > 0 { b } else { a };
        let now = remapped.latest.or_else(|| held.values().copied().reduce(later)).unwrap_or(0);
        for &key in &remapped.ended {
            held.insert(key, now);
        }
        if !held.is_empty() {
            a.hold(now, |b, port| held.get(&(vips[grants[b].frontend].addr, port)).copied());
        }
    }

    /// The ports the allocator in force holds in quarantine, by address and port, with when each
    /// was released: only those still in quarantine at `latest`, the latest time the table saw (the
    /// others are as good as fresh), so that the map stays small.
    fn quarantined_ports(&self, latest: Option<u32>) -> BTreeMap<([u8; 16], u16), u32> {
        let mut held = BTreeMap::new();
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
        held
    }

    /// A local backend's counters follow it (by pool name and address, as its flows do), so that
    /// they never go down while it stays; a new one starts at zero. `count`: the new number of
    /// local backends.
    fn carry_backend_counters(&mut self, local_map: &[Option<u16>], count: usize) {
        let mut backends = vec![Traffic::default(); count];
        for (old, new) in self.counters.backends.iter().zip(local_map) {
            if let Some(b) = new.and_then(|n| backends.get_mut(usize::from(n))) {
                *b = *old;
            }
        }
        self.counters.backends = backends;
    }
}

impl Reconfiguration {
    /// The block of new local backend `local` that keeps an SNAT connection on `port` of frontend
    /// `frontend` for `protocol`: one with the port on that address, serving the protocol, where no
    /// listener claims the port.
    fn block_keeping(&self, local: u16, frontend: u16, port: u16, protocol: u8) -> Option<usize> {
        self.locals[usize::from(local)].blocks.iter().copied().find(|&b| {
            let g = &self.grants[b];
            g.frontend == usize::from(frontend)
                && g.contains(port)
                && g.protocol.matches(protocol)
                && self.claims.binary_search(&(b, port)).is_err()
        })
    }
}

/// The backends of `lb` on the host at `underlay`, in local index order, and the SNAT grants of
/// them all (each backend's `blocks` index these).
fn local_backends(lb: &LoadBalancer, plan: &SnatPlan, underlay: IpAddr) -> (Vec<LocalBackend>, Vec<SnatGrant>) {
    let mut locals = Vec::new();
    let mut grants = Vec::new();
    for (pi, pool) in lb.pools.iter().enumerate() {
        for (mi, b) in pool.backends.iter().enumerate() {
            if b.host != underlay {
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
    (locals, grants)
}

/// The (block, port) pairs of `grants` that a listener on the same address claims. They never go
/// to SNAT (the MUX would send the replies of a connection on such a port to the listener), so a
/// new listener's claim rebuilds the allocator as a change of blocks does.
fn listener_claims(grants: &[SnatGrant], vips: &Vips) -> Vec<(usize, u16)> {
    grants
        .iter()
        .enumerate()
        .flat_map(|(bi, g)| (g.first..=g.first + (g.len - 1)).map(move |port| (bi, port)))
        .filter(|&(bi, port)| vips[grants[bi].frontend].claims(port))
        .collect()
}

/// Who owns each grant: its frontend's address and its backend's. A grant names its frontend and
/// member by position, so two frontends that swapped addresses compare equal by the grants alone;
/// the same blocks of the same ports are the same SNAT only for the same addresses and backends.
fn snat_owners(lb: &LoadBalancer, vips: &Vips, grants: &[SnatGrant]) -> Vec<([u8; 16], IpAddr)> {
    grants.iter().map(|g| (vips[g.frontend].addr, lb.pools[g.pool].backends[g.member].address)).collect()
}

/// For each old local backend, its index among the new ones: the same address in a pool of the
/// same name.
fn local_map(
    old_locals: &[LocalBackend],
    old_lb: &LoadBalancer,
    locals: &[LocalBackend],
    lb: &LoadBalancer,
) -> Vec<Option<u16>> {
    old_locals
        .iter()
        .map(|o| {
            locals.iter().position(|n| n.address == o.address && lb.pools[n.pool].name == old_lb.pools[o.pool].name)
        })
        .map(|p| p.map(|p| p as u16))
        .collect()
}

/// For each old frontend, the index of the new one at the same address.
fn frontend_map(old_lb: &LoadBalancer, lb: &LoadBalancer) -> Vec<Option<u16>> {
    old_lb
        .frontends
        .iter()
        .map(|o| lb.frontends.iter().position(|n| n.address == o.address).map(|p| p as u16))
        .collect()
}
