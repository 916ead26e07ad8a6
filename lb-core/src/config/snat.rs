//! Where every backend's SNAT ports are: a plan that each node (every MUX, every host agent) derives
//! from the same configuration, so that a host knows the ports it may hand out and a MUX knows, for
//! a reply to a frontend address and port, which backend's host to tunnel it to, with no
//! coordination between them (the Ananta paper, SIGCOMM 2013, has its manager hand out port
//! ranges instead; deriving them from the configuration needs no such round trip).
//!
//! Sources of ports, in this order:
//! - outbound rules (Azure Load Balancer: "Outbound rules Azure Load Balancer"): each member of the
//!   rule's pool gets `allocatedOutboundPorts` (or the default split by pool size of "Source
//!   Network Address Translation (SNAT) for outbound connections"); the pool's ports are spread
//!   evenly over the rule's frontend addresses, so a member's ports may lie on more than one
//!   address;
//! - load-balancing rules that do not disable outbound SNAT, for pools no outbound rule covers
//!   ("default outbound through the load-balancing rule"), once per (frontend, pool): the ports
//!   outbound rules leave on the rule's frontend are split evenly between every VM that goes out
//!   through it (64,000 / 10 = 6,400 ports a VM for one pool of 10), in multiples of 8 (a
//!   frontend shared by so many VMs that fewer than 8 ports are left each gives none: their
//!   connections are refused and counted). Azure's own default for this case is the smaller
//!   per-pool-size table; an even split gives every VM all the ports the frontend can spare.
//!
//! Ports on an address are handed out from [`SNAT_FIRST_PORT`] upwards, at most
//! [`SNAT_PORTS_PER_ADDRESS`] of them (the 64,000 ephemeral ports Azure gives each frontend
//! address); ports a listener claims inside a block stay out of use (the host agent reserves them).

use alloc::vec::Vec;

use super::{err, ConfigError, IdleTimeout, LoadBalancer, OutboundRule, Protocol, SNAT_PORTS_PER_ADDRESS};
use crate::tables::snat::{default_ports_per_backend, SNAT_FIRST_PORT};

/// The rule a grant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnatSource {
    /// An outbound rule (index).
    OutboundRule(usize),
    /// A load-balancing rule's default outbound SNAT (index).
    LoadBalancingRule(usize),
}

/// A block of SNAT ports of one backend on one frontend address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatGrant {
    /// Where the grant comes from.
    pub source: SnatSource,
    /// Pool index.
    pub pool: usize,
    /// Member index in the pool.
    pub member: usize,
    /// Frontend index (the address SNAT uses).
    pub frontend: usize,
    /// First port.
    pub first: u16,
    /// Number of ports.
    pub len: u16,
    /// Protocols the grant serves.
    pub protocol: Protocol,
    /// Idle timeout of the connections it carries.
    pub idle_timeout: IdleTimeout,
    /// Reset idle TCP connections.
    pub tcp_reset: bool,
}

impl SnatGrant {
    /// Whether `port` lies in the block.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.first && u32::from(port) < u32::from(self.first) + u32::from(self.len)
    }
}

/// Every grant of a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnatPlan {
    /// Grants in layout order.
    pub grants: Vec<SnatGrant>,
    /// Per frontend: indices into `grants`, sorted by first port (for [`SnatPlan::owner`]).
    by_frontend: Vec<Vec<usize>>,
}

impl SnatPlan {
    /// The grants of one pool member.
    pub fn for_member(&self, pool: usize, member: usize) -> impl Iterator<Item = &SnatGrant> + '_ {
        self.grants.iter().filter(move |g| g.pool == pool && g.member == member)
    }

    /// The grant that holds `port` on `frontend`, if any (a binary search: this runs on the MUX's
    /// packet path for replies to SNAT connections).
    #[inline]
    pub fn owner(&self, frontend: usize, port: u16) -> Option<&SnatGrant> {
        let list = self.by_frontend.get(frontend)?;
        let i = list.partition_point(|&g| self.grants[g].first <= port);
        let g = &self.grants[*list.get(i.checked_sub(1)?)?];
        g.contains(port).then_some(g)
    }

    /// Whether any grant uses `frontend`.
    pub fn uses_frontend(&self, frontend: usize) -> bool {
        self.by_frontend.get(frontend).is_some_and(|l| !l.is_empty())
    }
}

impl LoadBalancer {
    /// Lays out the SNAT ports of this configuration (see the module docs). Refuses outbound rules
    /// whose addresses cannot hold their pool's ports, naming the rule and the address.
    pub fn snat_plan(&self) -> Result<SnatPlan, ConfigError> {
        // Ports handed out so far on each frontend address, from SNAT_FIRST_PORT up.
        let mut used = alloc::vec![0u64; self.frontends.len()];
        let mut plan = SnatPlan { grants: Vec::new(), by_frontend: alloc::vec![Vec::new(); self.frontends.len()] };
        for (ri, r) in self.outbound_rules.iter().enumerate() {
            self.grant_outbound_rule(ri, r, &mut used, &mut plan.grants)?;
        }
        let defaults = self.default_outbound_rules();
        self.grant_default_outbound(&defaults, &mut used, &mut plan.grants);
        for (i, g) in plan.grants.iter().enumerate() {
            plan.by_frontend[g.frontend].push(i);
        }
        let grants = &plan.grants;
        for list in &mut plan.by_frontend {
            list.sort_by_key(|&g| grants[g].first);
        }
        Ok(plan)
    }

    /// Outbound rule `ri`: each member of its pool gets its ports, the pool's ports spread evenly
    /// over the rule's frontend addresses (a member's block may straddle two of them).
    fn grant_outbound_rule(
        &self,
        ri: usize,
        r: &OutboundRule,
        used: &mut [u64],
        grants: &mut Vec<SnatGrant>,
    ) -> Result<(), ConfigError> {
        let k = "outboundRules";
        let n = self.pools[r.pool].backends.len();
        if n == 0 {
            return Ok(());
        }
        let per_backend = match r.allocated_outbound_ports {
            Some(p) => u64::from(p),
            None => default_ports_per_backend(n)
                .map(u64::from)
                .ok_or_else(|| err(k, &r.name, "allocatedOutboundPorts", "no default for a pool over 1,000"))?,
        };
        let need = per_backend * n as u64;
        let per_address = need.div_ceil(r.frontends.len() as u64);
        for &f in &r.frontends {
            if used[f] + per_address > SNAT_PORTS_PER_ADDRESS {
                let problem = alloc::format!(
                    "{need} ports needed ({per_backend} for each of {n} backends), {per_address} of them from \
                     frontend '{}', which has {} of its {SNAT_PORTS_PER_ADDRESS} left",
                    self.frontends[f].name,
                    SNAT_PORTS_PER_ADDRESS - used[f]
                );
                return Err(err(k, &r.name, "allocatedOutboundPorts", problem));
            }
        }
        let source = SnatSource::OutboundRule(ri);
        let bases: Vec<u64> = r.frontends.iter().map(|&f| used[f]).collect();
        for member in 0..n {
            // The member's ports, as a range of the pool's ports laid end to end over the addresses.
            let mut v = member as u64 * per_backend;
            let end = v + per_backend;
            while v < end {
                let (j, off) = ((v / per_address) as usize, v % per_address);
                let len = (per_address - off).min(end - v);
                grants.push(SnatGrant {
                    source,
                    pool: r.pool,
                    member,
                    frontend: r.frontends[j],
                    first: SNAT_FIRST_PORT + (bases[j] + off) as u16,
                    len: len as u16,
                    protocol: r.protocol,
                    idle_timeout: r.idle_timeout,
                    tcp_reset: r.tcp_reset,
                });
                v += len;
            }
        }
        for &f in &r.frontends {
            used[f] += per_address;
        }
        Ok(())
    }

    /// The load-balancing rules that give default outbound SNAT, once per (frontend, pool), as
    /// `(rule, frontend, pool)`.
    fn default_outbound_rules(&self) -> Vec<(usize, usize, usize)> {
        let covered: Vec<usize> = self.outbound_rules.iter().map(|r| r.pool).collect();
        let mut defaults: Vec<(usize, usize, usize)> = Vec::new();
        for (ri, r) in self.rules.iter().enumerate() {
            if r.disable_outbound_snat
                || r.is_ha_ports()
                // An internal frontend's address is private: nothing on the Internet could answer it.
                || self.frontends[r.frontend].internal
                || covered.contains(&r.pool)
                || defaults.iter().any(|&(_, f, p)| (f, p) == (r.frontend, r.pool))
            {
                continue;
            }
            defaults.push((ri, r.frontend, r.pool));
        }
        defaults
    }

    /// Default outbound SNAT: the VMs that go out through one frontend share evenly what outbound
    /// rules leave of its ports (64,000 / 10 = 6,400 ports a VM for one pool of 10), in multiples
    /// of 8 as `allocatedOutboundPorts` is. The shares never add up to more than what is left, so
    /// every pool's fits.
    fn grant_default_outbound(
        &self,
        defaults: &[(usize, usize, usize)],
        used: &mut [u64],
        grants: &mut Vec<SnatGrant>,
    ) {
        let left = used.to_vec();
        for &(ri, f, pool) in defaults {
            let r = &self.rules[ri];
            // Each rule gives SNAT for its own protocol: a TCP and a UDP rule of one frontend and
            // pool give both (the idle timeout and reset are the first rule's).
            let protocol = self
                .rules
                .iter()
                .filter(|x| (x.frontend, x.pool) == (f, pool) && !x.disable_outbound_snat && !x.is_ha_ports())
                .map(|x| x.protocol)
                .fold(r.protocol, |a, b| if a == b { a } else { Protocol::All });
            let n = self.pools[pool].backends.len();
            let sharing: u64 =
                defaults.iter().filter(|d| d.1 == f).map(|d| self.pools[d.2].backends.len() as u64).sum();
            // Below 8 ports a VM (or for an empty pool), none.
            let per_backend = (SNAT_PORTS_PER_ADDRESS - left[f]).checked_div(sharing).unwrap_or(0) / 8 * 8;
            if per_backend == 0 {
                continue;
            }
            for member in 0..n {
                grants.push(SnatGrant {
                    source: SnatSource::LoadBalancingRule(ri),
                    pool,
                    member,
                    frontend: f,
                    first: SNAT_FIRST_PORT + (used[f] + member as u64 * per_backend) as u16,
                    len: per_backend as u16,
                    protocol,
                    idle_timeout: r.idle_timeout,
                    tcp_reset: r.tcp_reset,
                });
            }
            used[f] += per_backend * n as u64;
        }
    }
}
