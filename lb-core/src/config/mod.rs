//! The load balancer's resource model, as the seed's Azure resource JSON describes it, validated
//! into indices the data path can use without string lookups.
//!
//! [`LoadBalancer`] is the checked model: frontends (VIPs), backend pools, probes, load-balancing
//! rules (HA ports included), inbound NAT rules and pools, outbound rules. Every reference is an
//! index, every port a `u16`, every conflict refused by [`LoadBalancer::validate`] with a
//! [`ConfigError`] naming the resource and the field. With the `std` feature, [`json`] reads the
//! seed's JSON (camelCase, `properties` objects, `id` references) into this model.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

#[cfg(feature = "std")]
pub mod json;
#[cfg(feature = "std")]
pub mod node;
pub mod snat;

pub use snat::{SnatGrant, SnatPlan, SnatSource};

/// The largest pool the Standard SKU allows.
pub const MAX_POOL_SIZE: usize = 1000;

/// SNAT ports one frontend address offers (of 65,536, less the well-known range).
pub const SNAT_PORTS_PER_ADDRESS: u64 = 64_000;

/// Transport protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// Every IP protocol (HA ports, outbound rules).
    All,
}

impl Protocol {
    /// Whether a packet of IP protocol `p` matches.
    #[inline(always)]
    pub fn matches(self, p: u8) -> bool {
        match self {
            Protocol::Tcp => p == crate::wire::ip_proto::TCP,
            Protocol::Udp => p == crate::wire::ip_proto::UDP,
            Protocol::All => true,
        }
    }
}

/// `loadDistribution` of a rule: which fields pick the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadDistribution {
    /// 5-tuple.
    #[default]
    Default,
    /// Source and destination address + protocol (`SourceIPProtocol`).
    SourceIpProtocol,
    /// Source and destination address (`SourceIP`).
    SourceIp,
}

/// Probe protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeProtocol {
    /// A TCP handshake.
    Tcp,
    /// `GET requestPath` answered with 200.
    Http,
    /// The same over TLS.
    Https,
}

/// A frontend IP configuration: one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// Resource name.
    pub name: String,
    /// The VIP.
    pub address: IpAddr,
    /// A private address (`privateIPAddress`: an internal load balancer's frontend), not a public
    /// one. Backends never go out to the Internet through it: it gives no outbound SNAT.
    pub internal: bool,
}

/// One member of a backend pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Resource name.
    pub name: String,
    /// The backend's own address (DIP).
    pub address: IpAddr,
    /// Underlay address of the host that runs it (where the MUX tunnels to).
    pub host: IpAddr,
    /// Relative weight (default 1; 0 takes no new flows).
    pub weight: u32,
}

/// A backend address pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Resource name.
    pub name: String,
    /// VxLAN network identifier of the pool's tunnel (24 bits).
    pub vni: u32,
    /// Members, in order (inbound NAT pools map port ranges onto this order).
    pub backends: Vec<Backend>,
}

/// A health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Resource name.
    pub name: String,
    /// Protocol.
    pub protocol: ProbeProtocol,
    /// Port probed on each backend.
    pub port: u16,
    /// Path for HTTP(S).
    pub request_path: Option<String>,
    /// Seconds between probes.
    pub interval_secs: u32,
    /// Consecutive results that flip health.
    pub number_of_probes: u8,
}

/// A load-balancing rule (an HA-ports rule is protocol `All` with both ports 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Resource name.
    pub name: String,
    /// Index into [`LoadBalancer::frontends`].
    pub frontend: usize,
    /// Index into [`LoadBalancer::pools`].
    pub pool: usize,
    /// Index into [`LoadBalancer::probes`], if any.
    pub probe: Option<usize>,
    /// Protocol.
    pub protocol: Protocol,
    /// Frontend port (0 for HA ports).
    pub frontend_port: u16,
    /// Backend port (0 for HA ports: the port is kept).
    pub backend_port: u16,
    /// Which fields pick the backend.
    pub load_distribution: LoadDistribution,
    /// Deliver with the VIP as destination (Direct Server Return).
    pub floating_ip: bool,
    /// Idle timeout, 4..=100 minutes.
    pub idle_timeout_minutes: u8,
    /// Send RSTs on idle timeout.
    pub tcp_reset: bool,
    /// Do not use this rule's frontend for outbound SNAT.
    pub disable_outbound_snat: bool,
}

impl Rule {
    /// Whether this is an HA-ports rule.
    pub fn is_ha_ports(&self) -> bool {
        self.protocol == Protocol::All && self.frontend_port == 0 && self.backend_port == 0
    }
}

/// An inbound NAT rule: one frontend port to one backend's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRule {
    /// Resource name.
    pub name: String,
    /// Frontend index.
    pub frontend: usize,
    /// Protocol (Tcp or Udp).
    pub protocol: Protocol,
    /// Frontend port.
    pub frontend_port: u16,
    /// Backend port.
    pub backend_port: u16,
    /// Pool index and member index of the target.
    pub target: (usize, usize),
    /// Floating IP.
    pub floating_ip: bool,
    /// Idle timeout in minutes.
    pub idle_timeout_minutes: u8,
    /// TCP reset on idle.
    pub tcp_reset: bool,
}

/// An inbound NAT pool: `frontendPortRangeStart + i` → member `i` of the pool, `backendPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatPool {
    /// Resource name.
    pub name: String,
    /// Frontend index.
    pub frontend: usize,
    /// Protocol (Tcp or Udp).
    pub protocol: Protocol,
    /// First frontend port.
    pub port_start: u16,
    /// Last frontend port (inclusive).
    pub port_end: u16,
    /// Backend port.
    pub backend_port: u16,
    /// Pool index whose members, in order, receive the ports.
    pub pool: usize,
    /// Floating IP: the member sees the frontend's address (and port) as the destination.
    pub floating_ip: bool,
    /// Idle timeout of its connections, minutes.
    pub idle_timeout_minutes: u8,
    /// Send TCP resets when one of its connections idles out.
    pub tcp_reset: bool,
}

/// An outbound rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    /// Resource name.
    pub name: String,
    /// Frontend indices whose addresses SNAT uses.
    pub frontends: Vec<usize>,
    /// Pool index.
    pub pool: usize,
    /// Protocol.
    pub protocol: Protocol,
    /// Ports per backend, a multiple of 8 (`None`: the default table by pool size).
    pub allocated_outbound_ports: Option<u32>,
    /// Idle timeout in minutes.
    pub idle_timeout_minutes: u8,
    /// TCP reset on idle.
    pub tcp_reset: bool,
}

/// The validated resource model of one load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadBalancer {
    /// Resource name.
    pub name: String,
    /// Frontend IP configurations.
    pub frontends: Vec<Frontend>,
    /// Backend pools.
    pub pools: Vec<Pool>,
    /// Probes.
    pub probes: Vec<Probe>,
    /// Load-balancing rules.
    pub rules: Vec<Rule>,
    /// Inbound NAT rules.
    pub nat_rules: Vec<NatRule>,
    /// Inbound NAT pools.
    pub nat_pools: Vec<NatPool>,
    /// Outbound rules.
    pub outbound_rules: Vec<OutboundRule>,
}

/// What is wrong with a configuration: the resource (kind and name), the field, the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Kind of resource, as the JSON calls the collection (e.g. `loadBalancingRules`).
    pub kind: &'static str,
    /// The resource's name.
    pub name: String,
    /// The offending field (camelCase, as in the JSON).
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}': {}: {}", self.kind, self.name, self.field, self.problem)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}

/// Whether `c` may appear as it is in an HTTP request's path and query (RFC 3986: unreserved,
/// sub-delims, ':', '@', '/', '?' and the '%' of a percent-encoding). A probe whose path has any
/// other character (a space, a quote, a brace) would fail on every backend and take the pool down.
fn is_uri_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(c)
}

fn err(kind: &'static str, name: &str, field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { kind, name: name.into(), field, problem: problem.into() }
}

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
        for (i, f) in self.frontends.iter().enumerate() {
            if f.address.is_unspecified() || f.address.is_multicast() {
                return Err(err("frontendIPConfigurations", &f.name, "ipAddress", "not a unicast address"));
            }
            if let Some(twin) = self.frontends[..i].iter().find(|o| o.address == f.address) {
                let problem = alloc::format!("{} is already frontend '{}'", f.address, twin.name);
                return Err(err("frontendIPConfigurations", &f.name, "ipAddress", problem));
            }
        }
        // One underlay: every host address is IPv4, or every one is IPv6.
        let underlay_v4 = self.pools.iter().flat_map(|p| &p.backends).next().map(|b| b.host.is_ipv4());
        for p in &self.pools {
            if p.backends.len() > MAX_POOL_SIZE {
                let n = p.backends.len();
                return Err(err(
                    "backendAddressPools",
                    &p.name,
                    "loadBalancerBackendAddresses",
                    alloc::format!("{n} backends; at most {MAX_POOL_SIZE}"),
                ));
            }
            if p.vni > crate::wire::vxlan::MAX_VNI {
                return Err(err("backendAddressPools", &p.name, "vni", "above 24 bits"));
            }
            for (i, b) in p.backends.iter().enumerate() {
                if p.backends[..i].iter().any(|o| o.name == b.name) {
                    let problem = alloc::format!("backend '{}' listed twice", b.name);
                    return Err(err("backendAddressPools", &p.name, "name", problem));
                }
                if p.backends[..i].iter().any(|o| o.address == b.address) {
                    return Err(err(
                        "backendAddressPools",
                        &p.name,
                        "ipAddress",
                        alloc::format!("{} listed twice", b.address),
                    ));
                }
                // A MUX names the member to its host by a 24-bit tag derived from the member's
                // address: two members of a pool on one host must not share one, or the host
                // could tell neither apart and would drop both's traffic (a hash collision: one
                // chance in 16.8 million a pair on one host).
                let tag = crate::paths::backend_tag(b.address);
                if let Some(o) =
                    p.backends[..i].iter().find(|o| o.host == b.host && crate::paths::backend_tag(o.address) == tag)
                {
                    let problem = alloc::format!(
                        "{} and {} on host {} have the same VxLAN backend tag {tag:#08x} (a hash of the \
                         address): one of them needs another address or host",
                        o.address,
                        b.address,
                        b.host
                    );
                    return Err(err("backendAddressPools", &p.name, "ipAddress", problem));
                }
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
            if p.protocol != ProbeProtocol::Tcp {
                let path = p.request_path.as_deref().unwrap_or("");
                if !path.starts_with('/') {
                    return Err(err("probes", &p.name, "requestPath", "HTTP(S) probes need a path starting with '/'"));
                }
                if let Some(c) = path.chars().find(|&c| !is_uri_path_char(c)) {
                    return Err(err(
                        "probes",
                        &p.name,
                        "requestPath",
                        alloc::format!("{c:?} cannot be sent in a request path (percent-encode it)"),
                    ));
                }
            }
        }
        let mut claims: Vec<Claim<'_>> = Vec::new();
        for r in &self.rules {
            let k = "loadBalancingRules";
            self.frontend_ok(k, &r.name, r.frontend)?;
            self.pool_ok(k, &r.name, r.pool)?;
            if let Some(p) = r.probe {
                if p >= self.probes.len() {
                    return Err(err(k, &r.name, "probe", "unknown probe"));
                }
            }
            idle_ok(k, &r.name, r.idle_timeout_minutes)?;
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
            self.same_version(k, &r.name, "backendAddressPool", r.frontend, r.pool)?;
            claims.push(Claim {
                kind: k,
                name: &r.name,
                frontend: r.frontend,
                protocol: r.protocol,
                ports: (r.frontend_port, r.frontend_port),
                ha,
            });
        }
        for r in &self.nat_rules {
            let k = "inboundNatRules";
            self.frontend_ok(k, &r.name, r.frontend)?;
            idle_ok(k, &r.name, r.idle_timeout_minutes)?;
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
            claims.push(Claim {
                kind: k,
                name: &r.name,
                frontend: r.frontend,
                protocol: r.protocol,
                ports: (r.frontend_port, r.frontend_port),
                ha: false,
            });
        }
        for r in &self.nat_pools {
            let k = "inboundNatPools";
            self.frontend_ok(k, &r.name, r.frontend)?;
            self.pool_ok(k, &r.name, r.pool)?;
            idle_ok(k, &r.name, r.idle_timeout_minutes)?;
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
            claims.push(Claim {
                kind: k,
                name: &r.name,
                frontend: r.frontend,
                protocol: r.protocol,
                ports: (r.port_start, r.port_end),
                ha: false,
            });
        }
        check_overlaps(&claims)?;
        self.check_backend_ports()?;
        for r in &self.outbound_rules {
            let k = "outboundRules";
            if r.frontends.is_empty() {
                return Err(err(k, &r.name, "frontendIPConfigurations", "at least one"));
            }
            self.pool_ok(k, &r.name, r.pool)?;
            for (i, &f) in r.frontends.iter().enumerate() {
                self.frontend_ok(k, &r.name, f)?;
                // Each frontend gives every member its own block of ports: listed twice, it would
                // give two members the same ports.
                if r.frontends[..i].contains(&f) {
                    let problem = alloc::format!("frontend '{}' listed twice", self.frontends[f].name);
                    return Err(err(k, &r.name, "frontendIPConfigurations", problem));
                }
                self.same_version(k, &r.name, "frontendIPConfigurations", f, r.pool)?;
                if self.frontends[f].internal {
                    let problem = alloc::format!(
                        "frontend '{}' has a private address: outbound rules go out through public frontends",
                        self.frontends[f].name
                    );
                    return Err(err(k, &r.name, "frontendIPConfigurations", problem));
                }
                if let Some(ha) = self.rules.iter().find(|x| x.frontend == f && x.is_ha_ports()) {
                    let problem = alloc::format!(
                        "frontend '{}' has the HA-ports rule '{}', which claims every port",
                        self.frontends[f].name,
                        ha.name
                    );
                    return Err(err(k, &r.name, "frontendIPConfigurations", problem));
                }
            }
            idle_ok(k, &r.name, r.idle_timeout_minutes)?;
            if let Some(n) = r.allocated_outbound_ports {
                if n == 0 || n % 8 != 0 || u64::from(n) > SNAT_PORTS_PER_ADDRESS {
                    return Err(err(k, &r.name, "allocatedOutboundPorts", "a multiple of 8 in 8..=64000"));
                }
            }
        }
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

fn idle_ok(kind: &'static str, name: &str, minutes: u8) -> Result<(), ConfigError> {
    if (4..=100).contains(&minutes) {
        Ok(())
    } else {
        Err(err(kind, name, "idleTimeoutInMinutes", "must be 4..=100"))
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
    /// way to reuse a backend port. With floating IP, the destination is the frontend's address:
    /// then two frontend ports of one frontend must not lead to the same backend port on one host
    /// (a floating NAT pool's members on one host, say).
    fn check_backend_ports(&self) -> Result<(), ConfigError> {
        let mut held: alloc::collections::BTreeMap<Destination, Vec<BackendClaim<'_>>> = Default::default();
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
    held: &mut alloc::collections::BTreeMap<Destination, Vec<BackendClaim<'a>>>,
    to: Destination,
    c: BackendClaim<'a>,
) -> Result<(), ConfigError> {
    let there = held.entry(to).or_default();
    for o in there.iter() {
        let protocols = c.protocol == o.protocol || c.protocol == Protocol::All || o.protocol == Protocol::All;
        if o.origin != c.origin && protocols && c.ports.0 <= o.ports.1 && o.ports.0 <= c.ports.1 {
            let field = if c.ports == (1, u16::MAX) { "enableFloatingIP" } else { "backendPort" };
            let problem = match to {
                Destination::Backend(addr) => alloc::format!(
                    "{} '{}' already sends to that port of backend {addr}: without floating IP, only one \
                     listener may (enable floating IP on both to reuse a backend port)",
                    o.kind,
                    o.name
                ),
                Destination::Floating { host, frontend } => alloc::format!(
                    "{} '{}' already sends connections to {frontend} on that port to a backend on host \
                     {host} (floating IP): the host agent could not tell them apart",
                    o.kind,
                    o.name
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
                    alloc::format!("HA ports cannot share a frontend with {} '{}'", b.kind, b.name),
                ));
            }
            let protocols = a.protocol == b.protocol || a.protocol == Protocol::All || b.protocol == Protocol::All;
            if protocols && a.ports.0 <= b.ports.1 && b.ports.0 <= a.ports.1 {
                return Err(err(
                    a.kind,
                    a.name,
                    "frontendPort",
                    alloc::format!("overlaps {} '{}' on the same frontend and protocol", b.kind, b.name),
                ));
            }
        }
    }
    Ok(())
}
