//! The load balancer's resource model, as Azure's `Microsoft.Network/loadBalancers` resource
//! describes it (Azure Load Balancer: "Azure Load Balancer components" and the REST API reference
//! "Load Balancers - Create Or Update"), validated into indices the data path can use without
//! string lookups.
//!
//! [`LoadBalancer`] is the checked model: frontends (VIPs), backend pools, probes, load-balancing
//! rules (HA ports included), inbound NAT rules and pools, outbound rules. Every reference is an
//! index, every port a `u16`, every conflict refused by [`LoadBalancer::validate`] with a
//! [`ConfigError`] naming the resource and the field. With the `std` feature, [`json`] reads that
//! resource's JSON (camelCase, `properties` objects, `id` references) into this model.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

#[cfg(feature = "std")]
pub mod json;
#[cfg(feature = "std")]
pub mod node;
pub mod settings;
pub mod snat;
mod validate;

pub use crate::tables::flow::IdleTimeout;
pub use settings::{HostNode, MuxNode, NodeBase, NodeRole, ReturnPath};
pub use snat::{SnatGrant, SnatPlan, SnatSource};

/// The largest pool the Standard SKU allows (Azure: "Azure subscription and service limits").
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
    /// Idle timeout: 4..=100 minutes (`idleTimeoutInMinutes`) or 1..=127 seconds
    /// (`idleTimeoutInSeconds`).
    pub idle_timeout: IdleTimeout,
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
    /// Idle timeout, as for [`Rule::idle_timeout`].
    pub idle_timeout: IdleTimeout,
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
    /// Idle timeout of its connections, as for [`Rule::idle_timeout`].
    pub idle_timeout: IdleTimeout,
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
    /// Idle timeout, as for [`Rule::idle_timeout`].
    pub idle_timeout: IdleTimeout,
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

/// What kind of failure a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigErrorKind {
    /// The text is not JSON, or not JSON of the expected shape (a missing or mistyped field): the
    /// error's `field` is `"json"` and its `problem` is the JSON parser's message.
    Json,
    /// A resource breaks a rule of the model (an unknown reference, a value out of range, a
    /// conflict with another resource): every error of [`LoadBalancer::validate`], and those of
    /// JSON of the right shape whose values the model cannot hold.
    Invalid,
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
    /// What failed: the JSON itself, or a rule of the resource model.
    pub error_kind: ConfigErrorKind,
}

impl ConfigError {
    /// Whether the text is not JSON of the expected shape ([`ConfigErrorKind::Json`]), as opposed
    /// to a resource that breaks a rule.
    pub fn is_json(&self) -> bool {
        self.error_kind == ConfigErrorKind::Json
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}': {}: {}", self.kind, self.name, self.field, self.problem)
    }
}

// The JSON parser's error is kept as its message (the error stays `Clone` and `Eq`), so there is
// no `source`.
impl core::error::Error for ConfigError {}

/// A resource that breaks a rule of the model ([`ConfigErrorKind::Invalid`]).
fn err(kind: &'static str, name: &str, field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { kind, name: name.into(), field, problem: problem.into(), error_kind: ConfigErrorKind::Invalid }
}
