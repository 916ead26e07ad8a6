//! The one [`LoadBalancer`] a node runs for every load balancer stored.
//!
//! lb-core's model references resources by index (a rule's `frontend`, `pool` and `probe`, an
//! inbound NAT rule's `(pool, member)`, ...), so the union appends each load balancer's
//! collections and offsets its indices. Every resource's name becomes `<load balancer>/<name>`,
//! unique across load balancers whose names are unique and free of `/`. Frontends are the one
//! exception: lb-core holds one frontend an address, so load balancers that share a VIP (on other
//! ports) share the first one's frontend; both must agree on whether it is internal. The result is
//! validated as a whole: listeners on a shared VIP, backend ports, SNAT ports and VNIs meet
//! lb-core's rules across load balancers too.

use std::fmt;
use std::net::IpAddr;

use lb_core::config::{ConfigError, Frontend, LoadBalancer, NatPool, NatRule, OutboundRule, Pool, Probe, Rule};

/// Why load balancers cannot run together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnionError {
    /// A load balancer's name is empty or holds `/` (it prefixes its resources' names).
    Name {
        /// The name.
        name: String,
    },
    /// Two load balancers have one name.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// Two load balancers share a frontend address, one as internal, the other as public.
    FrontendMismatch {
        /// The address.
        address: IpAddr,
        /// The frontend that has it first (`<lb>/<frontend>`).
        first: String,
        /// The other (`<lb>/<frontend>`).
        second: String,
    },
    /// A load balancer references a resource it does not have (it was not validated).
    Reference {
        /// The load balancer.
        load_balancer: String,
        /// The kind of the referencing resource (`loadBalancingRules`, ...).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The union breaks a rule of the model; names are `<lb>/<resource>`.
    Invalid(ConfigError),
}

impl fmt::Display for UnionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnionError::Name { name } => write!(f, "loadBalancer '{name}': name: empty or holds '/'"),
            UnionError::DuplicateName { name } => write!(f, "loadBalancer '{name}': name: used twice"),
            UnionError::FrontendMismatch { address, first, second } => write!(
                f,
                "frontendIPConfigurations '{second}': ipAddress: {address} is also frontend '{first}', which \
                 differs in being internal (privateIPAddress) or public"
            ),
            UnionError::Reference { load_balancer, kind, name } => {
                write!(f, "loadBalancer '{load_balancer}': {kind} '{name}': references a resource it does not have")
            }
            UnionError::Invalid(e) => write!(f, "the load balancers together: {e}"),
        }
    }
}

impl std::error::Error for UnionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UnionError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Merges `lbs` into one load balancer (named by theirs joined with `+`) and validates it.
pub fn union(lbs: &[LoadBalancer]) -> Result<LoadBalancer, UnionError> {
    let mut out = LoadBalancer {
        name: lbs.iter().map(|lb| lb.name.as_str()).collect::<Vec<_>>().join("+"),
        ..LoadBalancer::default()
    };
    for (i, lb) in lbs.iter().enumerate() {
        if lb.name.is_empty() || lb.name.contains('/') {
            return Err(UnionError::Name { name: lb.name.clone() });
        }
        if lbs[..i].iter().any(|o| o.name == lb.name) {
            return Err(UnionError::DuplicateName { name: lb.name.clone() });
        }
        merge(&mut out, lb)?;
    }
    out.validate().map_err(UnionError::Invalid)?;
    Ok(out)
}

/// Appends `lb`'s resources to `out`, renamed and re-indexed.
fn merge(out: &mut LoadBalancer, lb: &LoadBalancer) -> Result<(), UnionError> {
    let named = |n: &str| format!("{}/{n}", lb.name);
    let missing = |kind, name: &str| UnionError::Reference { load_balancer: lb.name.clone(), kind, name: name.into() };

    // Frontends: one per address across load balancers.
    let mut frontend_at = Vec::with_capacity(lb.frontends.len());
    for f in &lb.frontends {
        match out.frontends.iter().position(|o| o.address == f.address) {
            Some(j) if out.frontends[j].internal != f.internal => {
                return Err(UnionError::FrontendMismatch {
                    address: f.address,
                    first: out.frontends[j].name.clone(),
                    second: named(&f.name),
                })
            }
            Some(j) => frontend_at.push(j),
            None => {
                frontend_at.push(out.frontends.len());
                out.frontends.push(Frontend { name: named(&f.name), ..f.clone() });
            }
        }
    }
    let frontend = |kind, name: &str, i: usize| frontend_at.get(i).copied().ok_or_else(|| missing(kind, name));

    let pools = out.pools.len();
    let pool = |kind, name: &str, i: usize| if i < lb.pools.len() { Ok(pools + i) } else { Err(missing(kind, name)) };
    out.pools.extend(lb.pools.iter().map(|p| Pool { name: named(&p.name), ..p.clone() }));

    let probes = out.probes.len();
    out.probes.extend(lb.probes.iter().map(|p| Probe { name: named(&p.name), ..p.clone() }));

    for r in &lb.rules {
        let k = "loadBalancingRules";
        let probe = match r.probe {
            Some(p) if p < lb.probes.len() => Some(probes + p),
            Some(_) => return Err(missing(k, &r.name)),
            None => None,
        };
        out.rules.push(Rule {
            name: named(&r.name),
            frontend: frontend(k, &r.name, r.frontend)?,
            pool: pool(k, &r.name, r.pool)?,
            probe,
            ..r.clone()
        });
    }
    for r in &lb.nat_rules {
        let k = "inboundNatRules";
        let (p, member) = r.target;
        if lb.pools.get(p).is_none_or(|p| member >= p.backends.len()) {
            return Err(missing(k, &r.name));
        }
        out.nat_rules.push(NatRule {
            name: named(&r.name),
            frontend: frontend(k, &r.name, r.frontend)?,
            target: (pools + p, member),
            ..r.clone()
        });
    }
    for r in &lb.nat_pools {
        let k = "inboundNatPools";
        out.nat_pools.push(NatPool {
            name: named(&r.name),
            frontend: frontend(k, &r.name, r.frontend)?,
            pool: pool(k, &r.name, r.pool)?,
            ..r.clone()
        });
    }
    for r in &lb.outbound_rules {
        let k = "outboundRules";
        let frontends = r.frontends.iter().map(|&f| frontend(k, &r.name, f)).collect::<Result<Vec<_>, _>>()?;
        out.outbound_rules.push(OutboundRule {
            name: named(&r.name),
            frontends,
            pool: pool(k, &r.name, r.pool)?,
            ..r.clone()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::config::json::from_json;

    fn web(name: &str, vip: &str, port: u16, dip: &str, vni: Option<u32>) -> LoadBalancer {
        let vni = vni.map(|v| format!(r#""vni": {v},"#)).unwrap_or_default();
        from_json(&format!(
            r#"{{ "name": "{name}", "properties": {{
              "frontendIPConfigurations": [ {{ "name": "fe", "properties": {{ "publicIPAddress": {{ "ipAddress": "{vip}" }} }} }} ],
              "backendAddressPools": [ {{ "name": "pool", "properties": {{ {vni} "loadBalancerBackendAddresses": [
                {{ "name": "b0", "properties": {{ "ipAddress": "{dip}", "hostAddress": "198.18.1.10" }} }} ] }} }} ],
              "probes": [ {{ "name": "probe", "properties": {{ "protocol": "Tcp", "port": {port} }} }} ],
              "loadBalancingRules": [ {{ "name": "rule", "properties": {{
                "frontendIPConfiguration": {{ "id": "fe" }}, "backendAddressPool": {{ "id": "pool" }},
                "probe": {{ "id": "probe" }}, "protocol": "Tcp", "frontendPort": {port}, "backendPort": {port} }} }} ],
              "inboundNatRules": [ {{ "name": "ssh", "properties": {{
                "frontendIPConfiguration": {{ "id": "fe" }}, "protocol": "Tcp", "frontendPort": {ssh}, "backendPort": 22,
                "backendIPConfiguration": {{ "id": "b0" }} }} }} ],
              "outboundRules": [ {{ "name": "out", "properties": {{
                "frontendIPConfigurations": [ {{ "id": "fe" }} ], "backendAddressPool": {{ "id": "pool" }},
                "protocol": "All", "allocatedOutboundPorts": 1024 }} }} ] }} }}"#,
            ssh = port + 1000
        ))
        .expect("valid test load balancer")
    }

    #[test]
    fn union_of_two_keeps_both_and_offsets_indices() {
        let a = web("A", "198.18.100.1", 80, "10.0.0.4", Some(4096));
        let b = web("B", "198.18.100.2", 443, "10.0.1.4", Some(4097));
        let u = union(&[a, b]).expect("the union validates");
        assert_eq!(u.name, "A+B");
        assert_eq!(u.frontends.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["A/fe", "B/fe"]);
        assert_eq!(u.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["A/rule", "B/rule"]);
        let r = &u.rules[1];
        assert_eq!((r.frontend, r.pool, r.probe, r.frontend_port), (1, 1, Some(1), 443));
        assert_eq!(u.pools[r.pool].name, "B/pool");
        assert_eq!(u.nat_rules[1].target, (1, 0));
        assert_eq!(u.nat_rules[1].frontend, 1);
        assert_eq!(u.outbound_rules[1].frontends, [1]);
        assert_eq!(u.outbound_rules[1].pool, 1);
        assert_eq!(u.pools.iter().map(|p| p.vni).collect::<Vec<_>>(), [4096, 4097]);
    }

    #[test]
    fn a_shared_vip_is_one_frontend() {
        let a = web("A", "198.18.100.1", 80, "10.0.0.4", Some(4096));
        let b = web("B", "198.18.100.1", 443, "10.0.1.4", Some(4097));
        let u = union(&[a, b]).expect("other ports of one VIP");
        assert_eq!(u.frontends.len(), 1);
        assert_eq!(u.rules[1].frontend, 0);
        assert_eq!(u.outbound_rules[1].frontends, [0]);
    }

    #[test]
    fn conflicts_across_load_balancers_are_refused() {
        let a = web("A", "198.18.100.1", 80, "10.0.0.4", Some(4096));
        let b = web("B", "198.18.100.1", 80, "10.0.1.4", Some(4097));
        let e = union(&[a.clone(), b]).unwrap_err();
        assert!(matches!(&e, UnionError::Invalid(c) if c.name.starts_with("B/")), "{e}");
        assert!(matches!(union(&[a.clone(), a.clone()]), Err(UnionError::DuplicateName { .. })));
        let mut slash = a.clone();
        slash.name = "x/y".into();
        assert!(matches!(union(&[slash]), Err(UnionError::Name { .. })));
        let mut internal = web("C", "198.18.100.1", 8080, "10.0.2.4", Some(4098));
        internal.frontends[0].internal = true;
        assert!(matches!(union(&[a, internal]), Err(UnionError::FrontendMismatch { .. })));
    }

    #[test]
    fn dangling_indices_are_refused_not_panicked_on() {
        let mut a = web("A", "198.18.100.1", 80, "10.0.0.4", None);
        a.rules[0].pool = 7;
        assert!(matches!(union(&[a.clone()]), Err(UnionError::Reference { .. })));
        a.rules.clear();
        a.nat_rules[0].target = (0, 9);
        assert!(matches!(union(&[a.clone()]), Err(UnionError::Reference { .. })));
        a.nat_rules.clear();
        a.outbound_rules[0].frontends = vec![3];
        assert!(matches!(union(&[a]), Err(UnionError::Reference { .. })));
    }

    #[test]
    fn no_load_balancer_is_an_empty_one() {
        assert_eq!(union(&[]).expect("empty"), LoadBalancer::default());
    }
}
