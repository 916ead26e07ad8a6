//! Azure's load balancer resource JSON (`Microsoft.Network/loadBalancers`, as the REST API
//! reference "Load Balancers - Create Or Update" shows it: camelCase names, `properties` objects,
//! references by `id` whose last path segment is the referenced resource's name) read into a
//! validated [`LoadBalancer`].
//!
//! Two fields the Azure resource leaves to other resources are part of a backend address here:
//! `hostAddress` (the underlay address of the host that runs the backend, where the MUX tunnels
//! to) and `weight` (default 1). A pool may carry `vni` (default: 4096 + its position). A public
//! frontend gives its address as `publicIPAddress.ipAddress`. An inbound NAT pool names the pool
//! whose members take its ports (`backendAddressPool`; in Azure the scale set names the NAT pool).
//! A pool's members are given as `loadBalancerBackendAddresses`: `backendIPConfigurations` (NIC
//! references) are refused. A load-balancing rule, inbound NAT rule or pool, or outbound rule may
//! give its idle timeout as `idleTimeoutInSeconds` (1..=127) instead of `idleTimeoutInMinutes`:
//! tests and short-lived UDP services need timeouts shorter than Azure's 4 minutes. Fields this
//! model does not use (`location`, `sku`, `subnet`, `virtualNetwork`, ids of the resources
//! themselves) are ignored.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::IpAddr;

use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource<P> {
    name: String,
    properties: P,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Root {
    name: String,
    properties: RootProps,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RootProps {
    #[serde(rename = "frontendIPConfigurations")]
    frontend_ip_configurations: Vec<Resource<FrontendProps>>,
    backend_address_pools: Vec<Resource<PoolProps>>,
    probes: Vec<Resource<ProbeProps>>,
    load_balancing_rules: Vec<Resource<RuleProps>>,
    inbound_nat_rules: Vec<Resource<NatRuleProps>>,
    inbound_nat_pools: Vec<Resource<NatPoolProps>>,
    outbound_rules: Vec<Resource<OutboundProps>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ref {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicIp {
    #[serde(rename = "ipAddress")]
    ip_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FrontendProps {
    #[serde(rename = "privateIPAddress", default)]
    private_ip_address: Option<String>,
    #[serde(rename = "publicIPAddress", default)]
    public_ip_address: Option<PublicIp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolProps {
    #[serde(default)]
    vni: Option<u32>,
    #[serde(default)]
    load_balancer_backend_addresses: Vec<Resource<BackendProps>>,
    /// Members named by their NICs' IP configurations (Azure Load Balancer: "Backend pool
    /// management", configuring a pool by NIC): resources this model cannot look up, so a pool
    /// given that way is refused rather than loaded empty.
    #[serde(rename = "backendIPConfigurations", default)]
    backend_ip_configurations: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackendProps {
    ip_address: String,
    host_address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeProps {
    protocol: String,
    port: u32,
    #[serde(default)]
    request_path: Option<String>,
    #[serde(default = "fifteen")]
    interval_in_seconds: u32,
    #[serde(default = "two")]
    number_of_probes: u32,
}

fn fifteen() -> u32 {
    15
}
fn two() -> u32 {
    2
}

/// What load-balancing rules, inbound NAT rules and NAT pools say of their connections.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionProps {
    #[serde(rename = "enableFloatingIP", default)]
    enable_floating_ip: bool,
    #[serde(flatten)]
    idle: IdleProps,
    #[serde(default)]
    enable_tcp_reset: bool,
}

/// A rule's idle timeout: Azure's `idleTimeoutInMinutes`, or this model's `idleTimeoutInSeconds`
/// (for tests and short-lived UDP services, which cannot wait Azure's 4 minutes at least). Both
/// are kept as given (absent: `None`), so that giving both is refused, not settled by a default.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdleProps {
    #[serde(default)]
    idle_timeout_in_minutes: Option<u64>,
    #[serde(default)]
    idle_timeout_in_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleProps {
    #[serde(rename = "frontendIPConfiguration")]
    frontend_ip_configuration: Ref,
    backend_address_pool: Ref,
    #[serde(default)]
    probe: Option<Ref>,
    protocol: String,
    frontend_port: u32,
    backend_port: u32,
    #[serde(flatten)]
    connection: ConnectionProps,
    #[serde(default)]
    load_distribution: Option<String>,
    #[serde(default)]
    disable_outbound_snat: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NatRuleProps {
    #[serde(rename = "frontendIPConfiguration")]
    frontend_ip_configuration: Ref,
    protocol: String,
    frontend_port: u32,
    backend_port: u32,
    #[serde(flatten)]
    connection: ConnectionProps,
    #[serde(rename = "backendIPConfiguration")]
    backend_ip_configuration: Ref,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NatPoolProps {
    #[serde(rename = "frontendIPConfiguration")]
    frontend_ip_configuration: Ref,
    protocol: String,
    frontend_port_range_start: u32,
    frontend_port_range_end: u32,
    backend_port: u32,
    backend_address_pool: Ref,
    #[serde(flatten)]
    connection: ConnectionProps,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutboundProps {
    #[serde(rename = "frontendIPConfigurations")]
    frontend_ip_configurations: Vec<Ref>,
    backend_address_pool: Ref,
    protocol: String,
    #[serde(default)]
    enable_tcp_reset: bool,
    #[serde(flatten)]
    idle: IdleProps,
    #[serde(default)]
    allocated_outbound_ports: Option<u32>,
}

/// Resolves references and field values of one resource, naming it in every error.
struct Ctx<'a> {
    kind: &'static str,
    name: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: &'static str, problem: impl Into<String>) -> ConfigError {
        err(self.kind, self.name, field, problem)
    }

    fn index<T>(&self, field: &'static str, r: &Ref, all: &[Resource<T>]) -> Result<usize, ConfigError> {
        let target = r.id.rsplit('/').next().unwrap_or("");
        all.iter()
            .position(|x| x.name == target)
            .ok_or_else(|| self.err(field, format!("unknown reference '{}'", r.id)))
    }

    /// The index of the frontend IP configuration `r` names.
    fn frontend(&self, r: &Ref, p: &RootProps) -> Result<usize, ConfigError> {
        self.index("frontendIPConfiguration", r, &p.frontend_ip_configurations)
    }

    fn port(&self, field: &'static str, v: u32) -> Result<u16, ConfigError> {
        u16::try_from(v).map_err(|_| self.err(field, format!("{v} is out of range 0..=65535")))
    }

    /// The idle timeout of `idle`: seconds if given alone, else minutes (default 4). Minutes
    /// one byte cannot hold are refused here, the rest of Azure's bounds by validation (which
    /// checks a model built in code too), both with the same message.
    fn idle(&self, idle: &IdleProps) -> Result<IdleTimeout, ConfigError> {
        match (idle.idle_timeout_in_minutes, idle.idle_timeout_in_seconds) {
            (Some(_), Some(_)) => Err(self.err("idleTimeoutInSeconds", "not with idleTimeoutInMinutes: give one")),
            (None, Some(s)) => u8::try_from(s)
                .ok()
                .and_then(IdleTimeout::from_seconds)
                .ok_or_else(|| self.err("idleTimeoutInSeconds", "must be 1..=127")),
            (m, None) => u8::try_from(m.unwrap_or(4))
                .ok()
                .and_then(IdleTimeout::from_minutes)
                .ok_or_else(|| self.err("idleTimeoutInMinutes", "must be 4..=100")),
        }
    }

    fn ip(&self, field: &'static str, s: &str) -> Result<IpAddr, ConfigError> {
        s.parse().map_err(|_| self.err(field, format!("'{s}' is not an IP address")))
    }

    /// A rule's `loadDistribution` (absent: `Default`).
    fn load_distribution(&self, s: Option<&str>) -> Result<LoadDistribution, ConfigError> {
        match s.unwrap_or("Default") {
            "Default" => Ok(LoadDistribution::Default),
            "SourceIPProtocol" => Ok(LoadDistribution::SourceIpProtocol),
            "SourceIP" => Ok(LoadDistribution::SourceIp),
            other => {
                Err(self.err("loadDistribution", format!("'{other}' is not Default, SourceIP or SourceIPProtocol")))
            }
        }
    }

    /// The (pool, member) an inbound NAT rule's `backendIPConfiguration` names, if any member has
    /// that name. `.../backendAddressPools/POOL/loadBalancerBackendAddresses/NAME` names its pool;
    /// a bare backend name must then be unique across pools.
    fn nat_target(&self, r: &Ref, pools: &[Pool]) -> Result<Option<(usize, usize)>, ConfigError> {
        let target = r.id.rsplit('/').next().unwrap_or("");
        let pool_named = r.id.split("/backendAddressPools/").nth(1).and_then(|rest| rest.split('/').next());
        let mut matches = pools
            .iter()
            .enumerate()
            .filter(|(_, pool)| pool_named.is_none_or(|n| pool.name == n))
            .filter_map(|(pi, pool)| pool.backends.iter().position(|b| b.name == target).map(|bi| (pi, bi)));
        let found = matches.next();
        if matches.next().is_some() {
            return Err(self.err("backendIPConfiguration", format!("'{target}' is in several pools: name the pool")));
        }
        Ok(found)
    }

    fn protocol(&self, s: &str) -> Result<Protocol, ConfigError> {
        match s {
            "Tcp" => Ok(Protocol::Tcp),
            "Udp" => Ok(Protocol::Udp),
            "All" => Ok(Protocol::All),
            _ => Err(self.err("protocol", format!("'{s}' is not Tcp, Udp or All"))),
        }
    }
}

/// Parses one load balancer's resource JSON and validates it.
///
/// Text that is not JSON of the resource's shape gives a [`ConfigErrorKind::Json`] error (resource
/// kind `loadBalancer`, field `json`); anything else wrong, a [`ConfigErrorKind::Invalid`] one.
pub fn from_json(text: &str) -> Result<LoadBalancer, ConfigError> {
    let root: Root = serde_json::from_str(text).map_err(|e| ConfigError {
        kind: "loadBalancer",
        name: String::new(),
        field: "json",
        problem: e.to_string(),
        error_kind: ConfigErrorKind::Json,
    })?;
    let p = &root.properties;
    let mut lb = LoadBalancer { name: root.name.clone(), ..LoadBalancer::default() };
    lb.frontends = parse_frontends(p)?;
    lb.pools = parse_pools(p)?;
    lb.probes = parse_probes(p)?;
    lb.rules = parse_rules(p)?;
    lb.nat_rules = parse_nat_rules(p, &lb.pools)?;
    lb.nat_pools = parse_nat_pools(p)?;
    lb.outbound_rules = parse_outbound_rules(p)?;
    lb.validate()?;
    Ok(lb)
}

/// `frontendIPConfigurations`: one address each, private or public.
fn parse_frontends(p: &RootProps) -> Result<Vec<Frontend>, ConfigError> {
    let mut frontends = Vec::new();
    for f in &p.frontend_ip_configurations {
        let c = Ctx { kind: "frontendIPConfigurations", name: &f.name };
        let (text, internal) = match (&f.properties.private_ip_address, &f.properties.public_ip_address) {
            (Some(a), None) => (a.as_str(), true),
            (None, Some(PublicIp { ip_address: Some(a), .. })) => (a.as_str(), false),
            (None, Some(PublicIp { ip_address: None, .. })) => {
                return Err(c.err("publicIPAddress", "needs its ipAddress (the address the frontend answers on)"))
            }
            _ => return Err(c.err("privateIPAddress", "exactly one of privateIPAddress and publicIPAddress.ipAddress")),
        };
        frontends.push(Frontend { name: f.name.clone(), address: c.ip("ipAddress", text)?, internal });
    }
    Ok(frontends)
}

/// `backendAddressPools`: members by address and host, VNI by position unless given.
fn parse_pools(p: &RootProps) -> Result<Vec<Pool>, ConfigError> {
    let mut pools = Vec::new();
    for (i, pool) in p.backend_address_pools.iter().enumerate() {
        let c = Ctx { kind: "backendAddressPools", name: &pool.name };
        if !pool.properties.backend_ip_configurations.is_empty() {
            return Err(c.err(
                "backendIPConfigurations",
                "NIC references cannot be resolved here: list the members in loadBalancerBackendAddresses \
                 (ipAddress, hostAddress)",
            ));
        }
        let mut backends = Vec::new();
        for b in &pool.properties.load_balancer_backend_addresses {
            backends.push(Backend {
                name: b.name.clone(),
                address: c.ip("ipAddress", &b.properties.ip_address)?,
                host: c.ip("hostAddress", &b.properties.host_address)?,
                weight: b.properties.weight,
            });
        }
        pools.push(Pool { name: pool.name.clone(), vni: pool.properties.vni.unwrap_or(4096 + i as u32), backends });
    }
    Ok(pools)
}

/// `probes`.
fn parse_probes(p: &RootProps) -> Result<Vec<Probe>, ConfigError> {
    let mut probes = Vec::new();
    for pr in &p.probes {
        let c = Ctx { kind: "probes", name: &pr.name };
        let protocol = match pr.properties.protocol.as_str() {
            "Tcp" => ProbeProtocol::Tcp,
            "Http" => ProbeProtocol::Http,
            "Https" => ProbeProtocol::Https,
            other => return Err(c.err("protocol", format!("'{other}' is not Tcp, Http or Https"))),
        };
        probes.push(Probe {
            name: pr.name.clone(),
            protocol,
            port: c.port("port", pr.properties.port)?,
            request_path: pr.properties.request_path.clone(),
            interval_secs: pr.properties.interval_in_seconds,
            number_of_probes: u8::try_from(pr.properties.number_of_probes)
                .map_err(|_| c.err("numberOfProbes", "must be 1..=100"))?,
        });
    }
    Ok(probes)
}

/// `loadBalancingRules`.
fn parse_rules(p: &RootProps) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::new();
    for r in &p.load_balancing_rules {
        let c = Ctx { kind: "loadBalancingRules", name: &r.name };
        let q = &r.properties;
        rules.push(Rule {
            name: r.name.clone(),
            frontend: c.frontend(&q.frontend_ip_configuration, p)?,
            pool: c.index("backendAddressPool", &q.backend_address_pool, &p.backend_address_pools)?,
            probe: q.probe.as_ref().map(|x| c.index("probe", x, &p.probes)).transpose()?,
            protocol: c.protocol(&q.protocol)?,
            frontend_port: c.port("frontendPort", q.frontend_port)?,
            backend_port: c.port("backendPort", q.backend_port)?,
            load_distribution: c.load_distribution(q.load_distribution.as_deref())?,
            floating_ip: q.connection.enable_floating_ip,
            idle_timeout: c.idle(&q.connection.idle)?,
            tcp_reset: q.connection.enable_tcp_reset,
            disable_outbound_snat: q.disable_outbound_snat,
        });
    }
    Ok(rules)
}

/// `inboundNatRules`, whose targets are members of `pools`.
fn parse_nat_rules(p: &RootProps, pools: &[Pool]) -> Result<Vec<NatRule>, ConfigError> {
    let mut nat_rules = Vec::new();
    for r in &p.inbound_nat_rules {
        let c = Ctx { kind: "inboundNatRules", name: &r.name };
        let q = &r.properties;
        let found = c.nat_target(&q.backend_ip_configuration, pools)?;
        nat_rules.push(NatRule {
            name: r.name.clone(),
            frontend: c.frontend(&q.frontend_ip_configuration, p)?,
            protocol: c.protocol(&q.protocol)?,
            frontend_port: c.port("frontendPort", q.frontend_port)?,
            backend_port: c.port("backendPort", q.backend_port)?,
            target: found.ok_or_else(|| {
                c.err("backendIPConfiguration", format!("unknown backend '{}'", q.backend_ip_configuration.id))
            })?,
            floating_ip: q.connection.enable_floating_ip,
            idle_timeout: c.idle(&q.connection.idle)?,
            tcp_reset: q.connection.enable_tcp_reset,
        });
    }
    Ok(nat_rules)
}

/// `inboundNatPools`.
fn parse_nat_pools(p: &RootProps) -> Result<Vec<NatPool>, ConfigError> {
    let mut nat_pools = Vec::new();
    for r in &p.inbound_nat_pools {
        let c = Ctx { kind: "inboundNatPools", name: &r.name };
        let q = &r.properties;
        nat_pools.push(NatPool {
            name: r.name.clone(),
            frontend: c.frontend(&q.frontend_ip_configuration, p)?,
            protocol: c.protocol(&q.protocol)?,
            port_start: c.port("frontendPortRangeStart", q.frontend_port_range_start)?,
            port_end: c.port("frontendPortRangeEnd", q.frontend_port_range_end)?,
            backend_port: c.port("backendPort", q.backend_port)?,
            pool: c.index("backendAddressPool", &q.backend_address_pool, &p.backend_address_pools)?,
            floating_ip: q.connection.enable_floating_ip,
            idle_timeout: c.idle(&q.connection.idle)?,
            tcp_reset: q.connection.enable_tcp_reset,
        });
    }
    Ok(nat_pools)
}

/// `outboundRules`.
fn parse_outbound_rules(p: &RootProps) -> Result<Vec<OutboundRule>, ConfigError> {
    let mut outbound_rules = Vec::new();
    for r in &p.outbound_rules {
        let c = Ctx { kind: "outboundRules", name: &r.name };
        let q = &r.properties;
        let frontends = q
            .frontend_ip_configurations
            .iter()
            .map(|f| c.index("frontendIPConfigurations", f, &p.frontend_ip_configurations))
            .collect::<Result<Vec<_>, _>>()?;
        outbound_rules.push(OutboundRule {
            name: r.name.clone(),
            frontends,
            pool: c.index("backendAddressPool", &q.backend_address_pool, &p.backend_address_pools)?,
            protocol: c.protocol(&q.protocol)?,
            allocated_outbound_ports: q.allocated_outbound_ports,
            idle_timeout: c.idle(&q.idle)?,
            tcp_reset: q.enable_tcp_reset,
        });
    }
    Ok(outbound_rules)
}
