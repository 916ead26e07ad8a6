//! [`LoadBalancer::validate`]: every rule the data path relies on, checked one kind of resource at
//! a time in a fixed order (names, frontends, pools, probes, load-balancing rules, inbound NAT
//! rules, inbound NAT pools, overlaps between listeners, backend ports, outbound rules, SNAT
//! ports), so that a configuration with several problems always reports the same one.
//!
//! Where Azure Load Balancer (Standard SKU) documents a rule, the check follows it: "Azure
//! subscription and service limits" (1,000 members a pool), "Azure Load Balancer health probes",
//! "High availability ports overview", "Inbound NAT rules", "Outbound rules Azure Load Balancer"
//! (public frontends, ports in multiples of 8) and "Load Balancer TCP Reset and Idle Timeout"
//! (4 to 100 minutes).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;

use super::{
    err, Backend, ConfigError, IdleTimeout, LoadBalancer, NatPool, NatRule, OutboundRule, Pool, Probe, ProbeProtocol,
    Protocol, Rule, MAX_POOL_SIZE, SNAT_PORTS_PER_ADDRESS,
};
use crate::wire::vxlan::{backend_tag, MAX_VNI};

/// Which frontend ports a listener takes, for overlap checks.
#[derive(Clone, Copy)]
struct Claim<'a> {
    kind: &'static str,
    name: &'a str,
    frontend: usize,
    protocol: Protocol,
    ports: (u16, u16),
    ha: bool,
}

impl LoadBalancer {
    /// Checks everything the data path relies on; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_names()?;
        self.validate_frontends()?;
        self.validate_pools()?;
        self.validate_probes()?;
        let mut claims: Vec<Claim<'_>> = Vec::new();
        self.validate_rules(&mut claims)?;
        self.validate_nat_rules(&mut claims)?;
        self.validate_nat_pools(&mut claims)?;
        check_overlaps(&claims)?;
        self.check_backend_ports()?;
        self.validate_outbound_rules()?;
        // SNAT ports each frontend address hands out, over every outbound rule that uses it.
        self.snat_plan()?;
        Ok(())
    }

    fn check_names(&self) -> Result<(), ConfigError> {
        fn unique<'a>(kind: &'static str, names: impl Iterator<Item = &'a String>) -> Result<(), ConfigError> {
            let mut seen: Vec<&String> = Vec::new();
            for n in names {
                if n.is_empty() {
                    return Err(err(kind, n, "name", "empty"));
                }
                if seen.contains(&n) {
                    return Err(err(kind, n, "name", "used twice"));
                }
                seen.push(n);
            }
            Ok(())
        }
        unique("frontendIPConfigurations", self.frontends.iter().map(|x| &x.name))?;
        unique("backendAddressPools", self.pools.iter().map(|x| &x.name))?;
        unique("probes", self.probes.iter().map(|x| &x.name))?;
        unique("loadBalancingRules", self.rules.iter().map(|x| &x.name))?;
        unique("inboundNatRules", self.nat_rules.iter().map(|x| &x.name))?;
        unique("inboundNatPools", self.nat_pools.iter().map(|x| &x.name))?;
        unique("outboundRules", self.outbound_rules.iter().map(|x| &x.name))
    }

    /// Each frontend is one unicast address that no other frontend has.
    fn validate_frontends(&self) -> Result<(), ConfigError> {
        for (i, f) in self.frontends.iter().enumerate() {
            if f.address.is_unspecified() || f.address.is_multicast() {
                return Err(err("frontendIPConfigurations", &f.name, "ipAddress", "not a unicast address"));
            }
            if let Some(twin) = self.frontends[..i].iter().find(|o| o.address == f.address) {
                let problem = format!("{} is already frontend '{}'", f.address, twin.name);
                return Err(err("frontendIPConfigurations", &f.name, "ipAddress", problem));
            }
        }
        Ok(())
    }

    /// Pool size and VNI, and each member against the members before it.
    fn validate_pools(&self) -> Result<(), ConfigError> {
        // One underlay: every host address is IPv4, or every one is IPv6.
        let underlay_v4 = self.pools.iter().flat_map(|p| &p.backends).next().map(|b| b.host.is_ipv4());
        for p in &self.pools {
            if p.backends.len() > MAX_POOL_SIZE {
                let n = p.backends.len();
                return Err(err(
                    "backendAddressPools",
                    &p.name,
                    "loadBalancerBackendAddresses",
                    format!("{n} backends; at most {MAX_POOL_SIZE}"),
                ));
            }
            if p.vni > MAX_VNI {
                return Err(err("backendAddressPools", &p.name, "vni", "above 24 bits"));
            }
            for (i, b) in p.backends.iter().enumerate() {
                validate_member(p, &p.backends[..i], b)?;
                if Some(b.host.is_ipv4()) != underlay_v4 {
                    return Err(err(
                        "backendAddressPools",
                        &p.name,
                        "hostAddress",
                        "underlay addresses mix IPv4 and IPv6",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Probe port, interval and count, and an HTTP(S) probe's request path.
    fn validate_probes(&self) -> Result<(), ConfigError> {
        for p in &self.probes {
            if p.port == 0 {
                return Err(err("probes", &p.name, "port", "must be 1..=65535"));
            }
            if !(5..=300).contains(&p.interval_secs) {
                return Err(err("probes", &p.name, "intervalInSeconds", "must be 5..=300"));
            }
            if !(1..=100).contains(&p.number_of_probes) {
                return Err(err("probes", &p.name, "numberOfProbes", "must be 1..=100"));
            }
            validate_request_path(p)?;
        }
        Ok(())
    }

    /// References, idle timeout, ports (HA ports: protocol All with both ports 0) and IP version of
    /// every load-balancing rule; records the frontend ports each takes.
    fn validate_rules<'a>(&'a self, claims: &mut Vec<Claim<'a>>) -> Result<(), ConfigError> {
        let k = "loadBalancingRules";
        for r in &self.rules {
            self.frontend_ok(k, &r.name, r.frontend)?;
            self.pool_ok(k, &r.name, r.pool)?;
            if let Some(p) = r.probe {
                if p >= self.probes.len() {
                    return Err(err(k, &r.name, "probe", "unknown probe"));
                }
            }
            idle_ok(k, &r.name, r.idle_timeout)?;
            validate_rule_ports(r)?;
            self.same_version(k, &r.name, "backendAddressPool", r.frontend, r.pool)?;
            claims.push(Claim {
                kind: k,
                name: &r.name,
                frontend: r.frontend,
                protocol: r.protocol,
                ports: (r.frontend_port, r.frontend_port),
                ha: r.is_ha_ports(),
            });
        }
        Ok(())
    }

    /// Frontend, idle timeout, protocol, ports and target of every inbound NAT rule; records the
    /// frontend port each takes.
    fn validate_nat_rules<'a>(&'a self, claims: &mut Vec<Claim<'a>>) -> Result<(), ConfigError> {
        let k = "inboundNatRules";
        for r in &self.nat_rules {
            self.validate_nat_rule(r)?;
            claims.push(Claim {
                kind: k,
                name: &r.name,
                frontend: r.frontend,
                protocol: r.protocol,
                ports: (r.frontend_port, r.frontend_port),
                ha: false,
            });
        }
        Ok(())
    }

    fn validate_nat_rule(&self, r: &NatRule) -> Result<(), ConfigError> {
        let k = "inboundNatRules";
        self.frontend_ok(k, &r.name, r.frontend)?;
        idle_ok(k, &r.name, r.idle_timeout)?;
        if r.protocol == Protocol::All {
            return Err(err(k, &r.name, "protocol", "Tcp or Udp"));
        }
        if r.frontend_port == 0 {
            return Err(err(k, &r.name, "frontendPort", "must be 1..=65535"));
        }
        if r.backend_port == 0 {
            return Err(err(k, &r.name, "backendPort", "must be 1..=65535"));
        }
        let (p, m) = r.target;
        let Some(target) = self.pools.get(p).and_then(|pool| pool.backends.get(m)) else {
            return Err(err(k, &r.name, "backendIPConfiguration", "unknown backend"));
        };
        if target.address.is_ipv4() != self.frontends[r.frontend].address.is_ipv4() {
            return Err(err(k, &r.name, "backendIPConfiguration", "backend and frontend differ in IP version"));
        }
        Ok(())
    }

    /// References, idle timeout, protocol and port range of every inbound NAT pool (one frontend
    /// port for each member at least); records the frontend ports each takes.
    fn validate_nat_pools<'a>(&'a self, claims: &mut Vec<Claim<'a>>) -> Result<(), ConfigError> {
        let k = "inboundNatPools";
        for r in &self.nat_pools {
            self.validate_nat_pool(r)?;
            claims.push(Claim {
                kind: k,
                name: &r.name,
                frontend: r.frontend,
                protocol: r.protocol,
                ports: (r.port_start, r.port_end),
                ha: false,
            });
        }
        Ok(())
    }

    fn validate_nat_pool(&self, r: &NatPool) -> Result<(), ConfigError> {
        let k = "inboundNatPools";
        self.frontend_ok(k, &r.name, r.frontend)?;
        self.pool_ok(k, &r.name, r.pool)?;
        idle_ok(k, &r.name, r.idle_timeout)?;
        if r.protocol == Protocol::All {
            return Err(err(k, &r.name, "protocol", "Tcp or Udp"));
        }
        if r.port_start == 0 {
            return Err(err(k, &r.name, "frontendPortRangeStart", "must be 1..=65535"));
        }
        if r.port_end < r.port_start {
            return Err(err(k, &r.name, "frontendPortRangeEnd", "below frontendPortRangeStart"));
        }
        self.same_version(k, &r.name, "backendAddressPool", r.frontend, r.pool)?;
        if usize::from(r.port_end - r.port_start) + 1 < self.pools[r.pool].backends.len() {
            return Err(err(k, &r.name, "frontendPortRangeEnd", "fewer ports than pool members"));
        }
        if r.backend_port == 0 {
            return Err(err(k, &r.name, "backendPort", "must be 1..=65535"));
        }
        Ok(())
    }

    /// Frontends (at least one, public, each once, none with an HA-ports rule), pool, idle timeout
    /// and port allocation of every outbound rule.
    fn validate_outbound_rules(&self) -> Result<(), ConfigError> {
        let k = "outboundRules";
        for r in &self.outbound_rules {
            if r.frontends.is_empty() {
                return Err(err(k, &r.name, "frontendIPConfigurations", "at least one"));
            }
            self.pool_ok(k, &r.name, r.pool)?;
            for (i, &f) in r.frontends.iter().enumerate() {
                self.validate_outbound_frontend(r, &r.frontends[..i], f)?;
            }
            idle_ok(k, &r.name, r.idle_timeout)?;
            if let Some(n) = r.allocated_outbound_ports {
                if n == 0 || n % 8 != 0 || u64::from(n) > SNAT_PORTS_PER_ADDRESS {
                    return Err(err(k, &r.name, "allocatedOutboundPorts", "a multiple of 8 in 8..=64000"));
                }
            }
        }
        Ok(())
    }

    /// Frontend `f` of outbound rule `r`, listed after `before`.
    fn validate_outbound_frontend(&self, r: &OutboundRule, before: &[usize], f: usize) -> Result<(), ConfigError> {
        let k = "outboundRules";
        self.frontend_ok(k, &r.name, f)?;
        // Each frontend gives every member its own block of ports: listed twice, it would give two
        // members the same ports.
        if before.contains(&f) {
            let problem = format!("frontend '{}' listed twice", self.frontends[f].name);
            return Err(err(k, &r.name, "frontendIPConfigurations", problem));
        }
        self.same_version(k, &r.name, "frontendIPConfigurations", f, r.pool)?;
        if self.frontends[f].internal {
            let problem = format!(
                "frontend '{}' has a private address: outbound rules go out through public frontends",
                self.frontends[f].name
            );
            return Err(err(k, &r.name, "frontendIPConfigurations", problem));
        }
        if let Some(ha) = self.rules.iter().find(|x| x.frontend == f && x.is_ha_ports()) {
            let problem = format!(
                "frontend '{}' has the HA-ports rule '{}', which claims every port",
                self.frontends[f].name, ha.name
            );
            return Err(err(k, &r.name, "frontendIPConfigurations", problem));
        }
        Ok(())
    }

    /// Frontend `f` and every member of pool `p` must be of one IP version (the MUX and the host do
    /// not translate between them).
    fn same_version(
        &self,
        kind: &'static str,
        name: &str,
        field: &'static str,
        f: usize,
        p: usize,
    ) -> Result<(), ConfigError> {
        let v4 = self.frontends[f].address.is_ipv4();
        if self.pools[p].backends.iter().any(|b| b.address.is_ipv4() != v4) {
            return Err(err(kind, name, field, "backends and frontend differ in IP version"));
        }
        Ok(())
    }

    fn frontend_ok(&self, kind: &'static str, name: &str, f: usize) -> Result<(), ConfigError> {
        if f < self.frontends.len() {
            Ok(())
        } else {
            Err(err(kind, name, "frontendIPConfiguration", "unknown frontend"))
        }
    }

    fn pool_ok(&self, kind: &'static str, name: &str, p: usize) -> Result<(), ConfigError> {
        if p < self.pools.len() {
            Ok(())
        } else {
            Err(err(kind, name, "backendAddressPool", "unknown pool"))
        }
    }
}

/// Member `b` of pool `p` against the members listed before it: its name and address are its own,
/// and so is its backend tag on its host.
fn validate_member(p: &Pool, before: &[Backend], b: &Backend) -> Result<(), ConfigError> {
    if before.iter().any(|o| o.name == b.name) {
        let problem = format!("backend '{}' listed twice", b.name);
        return Err(err("backendAddressPools", &p.name, "name", problem));
    }
    if before.iter().any(|o| o.address == b.address) {
        return Err(err("backendAddressPools", &p.name, "ipAddress", format!("{} listed twice", b.address)));
    }
    // A MUX names the member to its host by a 24-bit tag derived from the member's address: two
    // members of a pool on one host must not share one, or the host could tell neither apart and
    // would drop both's traffic (a hash collision: one chance in 16.8 million a pair on one host).
    let tag = backend_tag(b.address);
    if let Some(o) = before.iter().find(|o| o.host == b.host && backend_tag(o.address) == tag) {
        let problem = format!(
            "{} and {} on host {} have the same VxLAN backend tag {tag:#08x} (a hash of the address): one of \
             them needs another address or host",
            o.address, b.address, b.host
        );
        return Err(err("backendAddressPools", &p.name, "ipAddress", problem));
    }
    Ok(())
}

/// An HTTP(S) probe's path starts with '/' and has only characters a request path may carry.
fn validate_request_path(p: &Probe) -> Result<(), ConfigError> {
    if p.protocol == ProbeProtocol::Tcp {
        return Ok(());
    }
    let path = p.request_path.as_deref().unwrap_or("");
    if !path.starts_with('/') {
        return Err(err("probes", &p.name, "requestPath", "HTTP(S) probes need a path starting with '/'"));
    }
    if let Some(c) = path.chars().find(|&c| !is_uri_path_char(c)) {
        return Err(err(
            "probes",
            &p.name,
            "requestPath",
            format!("{c:?} cannot be sent in a request path (percent-encode it)"),
        ));
    }
    Ok(())
}

/// Whether `c` may appear as it is in an HTTP request's path and query (RFC 3986: unreserved,
/// sub-delims, ':', '@', '/', '?' and the '%' of a percent-encoding). A probe whose path has any
/// other character (a space, a quote, a brace) would fail on every backend and take the pool down.
fn is_uri_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(c)
}

/// A load-balancing rule's ports: both 0 with protocol All (HA ports), neither 0 otherwise.
fn validate_rule_ports(r: &Rule) -> Result<(), ConfigError> {
    let k = "loadBalancingRules";
    let ha = r.is_ha_ports();
    if r.protocol == Protocol::All && !ha {
        // One port 0 and not the other: that other port is what is off; neither 0: the protocol.
        let (field, problem) = match (r.frontend_port, r.backend_port) {
            (0, _) => ("backendPort", "must be 0 with protocol All (HA ports take every port)"),
            (_, 0) => ("frontendPort", "must be 0 with protocol All (HA ports take every port)"),
            _ => ("protocol", "All requires frontendPort and backendPort 0 (HA ports)"),
        };
        return Err(err(k, &r.name, field, problem));
    }
    if !ha && r.frontend_port == 0 {
        return Err(err(k, &r.name, "frontendPort", "port 0 only with protocol All (HA ports)"));
    }
    if !ha && r.backend_port == 0 {
        return Err(err(k, &r.name, "backendPort", "port 0 only with protocol All (HA ports)"));
    }
    Ok(())
}

/// Azure's bounds on a timeout in minutes; one in seconds is 1..=127 by construction.
fn idle_ok(kind: &'static str, name: &str, idle: IdleTimeout) -> Result<(), ConfigError> {
    match idle.minutes() {
        Some(minutes) if !(4..=100).contains(&minutes) => {
            Err(err(kind, name, "idleTimeoutInMinutes", "must be 4..=100"))
        }
        _ => Ok(()),
    }
}

/// What a backend-side connection is told apart by, for [`LoadBalancer::check_backend_ports`]:
/// without floating IP, its destination is the backend's own address; with floating IP, it is the
/// frontend's, and the host agent, which tells its backends' connections apart by 5-tuple alone
/// (a backend answering from the frontend's address names no backend), sees the connections of
/// every backend on the host alike.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
    Backend(IpAddr),
    Floating { host: IpAddr, frontend: IpAddr },
}

/// Ports a listener sends to at a [`Destination`] (HA ports: every port), and where from: the
/// listener and the frontend port (a NAT pool's members each have their own).
struct BackendClaim<'a> {
    kind: &'static str,
    name: &'a str,
    protocol: Protocol,
    ports: (u16, u16),
    origin: (&'static str, usize, u16),
}

impl LoadBalancer {
    /// Two listeners must not send connections that look alike to one backend, or to one host
    /// agent: a client that reaches both from one source port (clients behind one NAT often do)
    /// then makes two connections that the backend, or the host's reverse translation, cannot
    /// tell apart, and replies leave with the wrong frontend. Without floating IP, that is two
    /// listeners sending to the same port of one backend, which Azure refuses; floating IP is the
    /// way to reuse a backend port (Azure Load Balancer: "Multiple frontends for Azure Load
    /// Balancer"). With floating IP, the destination is the frontend's address: then two frontend
    /// ports of one frontend must not lead to the same backend port on one host (a floating NAT
    /// pool's members on one host, say).
    fn check_backend_ports(&self) -> Result<(), ConfigError> {
        let mut held: BTreeMap<Destination, Vec<BackendClaim<'_>>> = Default::default();
        let mut claim = |to, c| claim_backend_port(&mut held, to, c);
        let at = |b: &Backend, floating: bool, frontend: usize| {
            if floating {
                Destination::Floating { host: b.host, frontend: self.frontends[frontend].address }
            } else {
                Destination::Backend(b.address)
            }
        };
        for (i, r) in self.rules.iter().enumerate() {
            let k = "loadBalancingRules";
            let ports = if r.is_ha_ports() { (1, u16::MAX) } else { (r.backend_port, r.backend_port) };
            for b in &self.pools[r.pool].backends {
                let origin = (k, i, r.frontend_port);
                let c = BackendClaim { kind: k, name: &r.name, protocol: r.protocol, ports, origin };
                claim(at(b, r.floating_ip, r.frontend), c)?;
            }
        }
        for (i, r) in self.nat_rules.iter().enumerate() {
            let k = "inboundNatRules";
            let b = &self.pools[r.target.0].backends[r.target.1];
            let (ports, origin) = ((r.backend_port, r.backend_port), (k, i, r.frontend_port));
            claim(
                at(b, r.floating_ip, r.frontend),
                BackendClaim { kind: k, name: &r.name, protocol: r.protocol, ports, origin },
            )?;
        }
        for (i, r) in self.nat_pools.iter().enumerate() {
            let k = "inboundNatPools";
            for (m, b) in self.pools[r.pool].backends.iter().enumerate() {
                let ports = (r.backend_port, r.backend_port);
                let origin = (k, i, r.port_start.saturating_add(m as u16));
                let c = BackendClaim { kind: k, name: &r.name, protocol: r.protocol, ports, origin };
                claim(at(b, r.floating_ip, r.frontend), c)?;
            }
        }
        Ok(())
    }
}

/// Records `c` at `to`, unless another listener (or frontend port) already sends to one of its
/// ports there.
fn claim_backend_port<'a>(
    held: &mut BTreeMap<Destination, Vec<BackendClaim<'a>>>,
    to: Destination,
    c: BackendClaim<'a>,
) -> Result<(), ConfigError> {
    let there = held.entry(to).or_default();
    for o in there.iter() {
        let protocols = c.protocol == o.protocol || c.protocol == Protocol::All || o.protocol == Protocol::All;
        if o.origin != c.origin && protocols && c.ports.0 <= o.ports.1 && o.ports.0 <= c.ports.1 {
            let field = if c.ports == (1, u16::MAX) { "enableFloatingIP" } else { "backendPort" };
            let problem = match to {
                Destination::Backend(addr) => format!(
                    "{} '{}' already sends to that port of backend {addr}: without floating IP, only one \
                     listener may (enable floating IP on both to reuse a backend port)",
                    o.kind, o.name
                ),
                Destination::Floating { host, frontend } => format!(
                    "{} '{}' already sends connections to {frontend} on that port to a backend on host \
                     {host} (floating IP): the host agent could not tell them apart",
                    o.kind, o.name
                ),
            };
            return Err(err(c.kind, c.name, field, problem));
        }
    }
    there.push(c);
    Ok(())
}

/// Two listeners on one frontend conflict when their protocols intersect and their port ranges
/// overlap; an HA-ports rule conflicts with any other listener on its frontend.
fn check_overlaps(claims: &[Claim<'_>]) -> Result<(), ConfigError> {
    for (i, a) in claims.iter().enumerate() {
        for b in &claims[..i] {
            if a.frontend != b.frontend {
                continue;
            }
            if a.ha || b.ha {
                let field = if a.ha { "protocol" } else { "frontendPort" };
                return Err(err(
                    a.kind,
                    a.name,
                    field,
                    format!("HA ports cannot share a frontend with {} '{}'", b.kind, b.name),
                ));
            }
            let protocols = a.protocol == b.protocol || a.protocol == Protocol::All || b.protocol == Protocol::All;
            if protocols && a.ports.0 <= b.ports.1 && b.ports.0 <= a.ports.1 {
                return Err(err(
                    a.kind,
                    a.name,
                    "frontendPort",
                    format!("overlaps {} '{}' on the same frontend and protocol", b.kind, b.name),
                ));
            }
        }
    }
    Ok(())
}
