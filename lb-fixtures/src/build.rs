//! A builder for load balancers in the shape of Azure Load Balancer's resource model: frontend IP
//! configurations, backend pools, health probes, load-balancing rules, inbound NAT rules and pools,
//! outbound rules. Every constructor takes what tells its resource apart and gives the rest Azure's
//! defaults (4 minutes of idle timeout, no floating IP, no TCP reset, default distribution, outbound
//! SNAT on); the traits [`Connection`], [`Floating`] and [`RuleExt`] change one setting each.
//!
//! ```
//! use lb_core::config::Protocol;
//! use lb_fixtures::*;
//!
//! let lb = LbBuilder::new("lb")
//!     .frontend("Public", VIP)
//!     .pool("Web", 0x1001, [backend("vm0", v4(0), HOST_A), backend("vm1", v4(1), HOST_B)])
//!     .rule(rule("HTTP", 0, 0, Protocol::Tcp, 80, 8080).tcp_reset(true))
//!     .build();
//! assert_eq!(lb.validate(), Ok(()));
//! ```

use core::net::IpAddr;
use core::ops::RangeInclusive;

use lb_core::config::*;

/// Azure's default idle timeout of a rule, in minutes.
pub const IDLE_MINUTES: u8 = 4;

/// Builds a [`LoadBalancer`] one resource after another; resources are numbered in the order they
/// are added (rules name their frontend and pool by that number). [`LbBuilder::build`] does not
/// validate: refusals are tested too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbBuilder {
    lb: LoadBalancer,
}

/// Builder methods that append one resource to one collection of the load balancer.
macro_rules! push {
    ($($(#[$doc:meta])* $method:ident($t:ty) => $field:ident;)*) => {$(
        $(#[$doc])*
        pub fn $method(mut self, item: $t) -> Self {
            self.lb.$field.push(item);
            self
        }
    )*};
}

impl LbBuilder {
    /// An empty load balancer named `name`.
    pub fn new(name: &str) -> Self {
        LbBuilder { lb: LoadBalancer { name: name.into(), ..LoadBalancer::default() } }
    }

    /// Adds a public frontend.
    pub fn frontend(mut self, name: &str, address: impl Into<IpAddr>) -> Self {
        self.lb.frontends.push(frontend(name, address));
        self
    }

    /// Adds an internal frontend (no outbound SNAT through it).
    pub fn internal_frontend(mut self, name: &str, address: impl Into<IpAddr>) -> Self {
        self.lb.frontends.push(Frontend { internal: true, ..frontend(name, address) });
        self
    }

    /// Adds a backend pool with its VxLAN VNI.
    pub fn pool(mut self, name: &str, vni: u32, backends: impl IntoIterator<Item = Backend>) -> Self {
        self.lb.pools.push(Pool { name: name.into(), vni, backends: backends.into_iter().collect() });
        self
    }

    push! {
        /// Adds a health probe.
        probe(Probe) => probes;
        /// Adds a load-balancing rule.
        rule(Rule) => rules;
        /// Adds an inbound NAT rule.
        nat_rule(NatRule) => nat_rules;
        /// Adds an inbound NAT pool.
        nat_pool(NatPool) => nat_pools;
        /// Adds an outbound rule.
        outbound(OutboundRule) => outbound_rules;
    }

    /// The load balancer, unvalidated.
    pub fn build(self) -> LoadBalancer {
        self.lb
    }
}

/// A public frontend.
pub fn frontend(name: &str, address: impl Into<IpAddr>) -> Frontend {
    Frontend { name: name.into(), address: address.into(), internal: false }
}

/// A backend of weight 1 with its private address and the host it runs on.
pub fn backend(name: impl Into<String>, address: impl Into<IpAddr>, host: impl Into<IpAddr>) -> Backend {
    Backend { name: name.into(), address: address.into(), host: host.into(), weight: 1 }
}

/// An HTTP probe of `path` on `port`: every 15 s, 2 probes to change state (Azure's defaults).
pub fn http_probe(name: &str, port: u16, path: &str) -> Probe {
    Probe {
        name: name.into(),
        protocol: ProbeProtocol::Http,
        port,
        request_path: Some(path.into()),
        interval_secs: 15,
        number_of_probes: 2,
    }
}

/// A load-balancing rule from `frontend_port` of frontend `frontend` to `backend_port` of pool
/// `pool`'s members, with Azure's defaults (no probe).
pub fn rule(
    name: &str,
    frontend: usize,
    pool: usize,
    protocol: Protocol,
    frontend_port: u16,
    backend_port: u16,
) -> Rule {
    Rule {
        name: name.into(),
        frontend,
        pool,
        probe: None,
        protocol,
        frontend_port,
        backend_port,
        load_distribution: LoadDistribution::Default,
        floating_ip: false,
        idle_timeout: IdleTimeout::default(),
        tcp_reset: false,
        disable_outbound_snat: false,
    }
}

/// An HA-ports rule: every protocol and port of the frontend to the same port of the pool's members.
pub fn ha_ports(name: &str, frontend: usize, pool: usize) -> Rule {
    rule(name, frontend, pool, Protocol::All, 0, 0)
}

/// An inbound NAT rule: `frontend_port` of frontend `frontend` to `backend_port` of one member
/// (`target`: pool and member index).
pub fn nat_rule(
    name: &str,
    frontend: usize,
    protocol: Protocol,
    frontend_port: u16,
    backend_port: u16,
    target: (usize, usize),
) -> NatRule {
    NatRule {
        name: name.into(),
        frontend,
        protocol,
        frontend_port,
        backend_port,
        target,
        floating_ip: false,
        idle_timeout: IdleTimeout::default(),
        tcp_reset: false,
    }
}

/// An inbound NAT pool: frontend port `ports.start() + i` to `backend_port` of member `i` of `pool`.
pub fn nat_pool(
    name: &str,
    frontend: usize,
    protocol: Protocol,
    ports: RangeInclusive<u16>,
    backend_port: u16,
    pool: usize,
) -> NatPool {
    NatPool {
        name: name.into(),
        frontend,
        protocol,
        port_start: *ports.start(),
        port_end: *ports.end(),
        backend_port,
        pool,
        floating_ip: false,
        idle_timeout: IdleTimeout::default(),
        tcp_reset: false,
    }
}

/// An outbound rule: `pool`'s members reach out through the `frontends`' addresses, with
/// `ports_per_backend` SNAT ports each (`None`: the frontends' ports split evenly).
pub fn outbound_rule(
    name: &str,
    frontends: &[usize],
    pool: usize,
    protocol: Protocol,
    ports_per_backend: Option<u32>,
) -> OutboundRule {
    OutboundRule {
        name: name.into(),
        frontends: frontends.to_vec(),
        pool,
        protocol,
        allocated_outbound_ports: ports_per_backend,
        idle_timeout: IdleTimeout::default(),
        tcp_reset: false,
    }
}

/// The connection settings every kind of rule has.
pub trait Connection: Sized {
    /// With or without TCP resets on idle timeout (`enableTcpReset`).
    fn tcp_reset(self, on: bool) -> Self;
    /// With an idle timeout of `minutes` (`idleTimeoutInMinutes`; panics outside 1..=127, what
    /// the model holds: 4..=100 validates).
    fn idle_minutes(self, minutes: u8) -> Self;
    /// With an idle timeout of `seconds` (`idleTimeoutInSeconds`; panics outside 1..=127).
    fn idle_seconds(self, seconds: u8) -> Self;
}

/// Floating IP (direct server return with the VIP as destination), for the inbound rules.
pub trait Floating: Sized {
    /// With floating IP on.
    fn floating_ip(self) -> Self;
}

/// The settings only a load-balancing rule has.
pub trait RuleExt: Sized {
    /// Watched by probe `probe`.
    fn probe(self, probe: usize) -> Self;
    /// With this distribution mode.
    fn distribution(self, mode: LoadDistribution) -> Self;
    /// With `disableOutboundSnat`: the rule's frontend gives its members no outbound SNAT.
    fn no_outbound_snat(self) -> Self;
}

macro_rules! connection {
    ($($t:ty),*) => {$(
        impl Connection for $t {
            fn tcp_reset(mut self, on: bool) -> Self {
                self.tcp_reset = on;
                self
            }
            fn idle_minutes(mut self, minutes: u8) -> Self {
                self.idle_timeout = IdleTimeout::from_minutes(minutes).expect("1..=127 minutes");
                self
            }
            fn idle_seconds(mut self, seconds: u8) -> Self {
                self.idle_timeout = IdleTimeout::from_seconds(seconds).expect("1..=127 seconds");
                self
            }
        }
    )*};
}
connection!(Rule, NatRule, NatPool, OutboundRule);

macro_rules! floating {
    ($($t:ty),*) => {$(
        impl Floating for $t {
            fn floating_ip(mut self) -> Self {
                self.floating_ip = true;
                self
            }
        }
    )*};
}
floating!(Rule, NatRule, NatPool);

impl RuleExt for Rule {
    fn probe(mut self, probe: usize) -> Self {
        self.probe = Some(probe);
        self
    }
    fn distribution(mut self, mode: LoadDistribution) -> Self {
        self.load_distribution = mode;
        self
    }
    fn no_outbound_snat(mut self) -> Self {
        self.disable_outbound_snat = true;
        self
    }
}
