//! The resource model read from JSON: every file in `examples/` loads into the model it describes,
//! and each kind of invalid configuration is refused with an error naming the resource kind, the
//! resource's name and the offending field.
//!
//! Run with `cargo test -p lb-core --features std --test config`.
#![cfg(feature = "std")]

use std::net::IpAddr;
use std::path::PathBuf;

use lb_core::config::json::from_json;
use lb_core::config::*;
use serde_json::{json, Value};

const BASIC: &str = "basic-web-app.json";
const THREE_TIER: &str = "internal-3-tier-ha-ports.json";
const OUTBOUND: &str = "outbound-snat.json";
const NAT_POOL: &str = "inbound-nat-pool.json";

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("examples")
}

fn text(file: &str) -> String {
    let path = examples_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(file: &str) -> LoadBalancer {
    from_json(&text(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `file` as a JSON value after `edit`.
fn edited(file: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(&text(file)).unwrap();
    edit(&mut v);
    v.to_string()
}

/// Loads `file` after `edit`, expecting success.
fn accept(file: &str, edit: impl FnOnce(&mut Value)) -> LoadBalancer {
    from_json(&edited(file, edit)).unwrap_or_else(|e| panic!("{file} (edited) refused: {e}"))
}

/// Loads `file` after `edit`, expecting refusal.
fn refuse(file: &str, edit: impl FnOnce(&mut Value)) -> ConfigError {
    match from_json(&edited(file, edit)) {
        Ok(lb) => panic!("{file} (edited) accepted: {lb:#?}"),
        Err(e) => e,
    }
}

/// The error names `kind`, `name` and `field`, in its fields and in its Display.
#[track_caller]
fn assert_names(e: &ConfigError, kind: &str, name: &str, field: &str) {
    assert_eq!((e.kind, e.name.as_str(), e.field), (kind, name, field), "{e}");
    assert!(!e.problem.is_empty(), "{e:?}");
    let shown = e.to_string();
    for part in [kind, &format!("'{name}'"), field, &e.problem] {
        assert!(shown.contains(part), "{shown:?} does not mention {part:?}");
    }
}

/// The `properties` of item `i` of collection `coll` (e.g. `loadBalancingRules`).
fn props<'a>(v: &'a mut Value, coll: &str, i: usize) -> &'a mut Value {
    &mut v["properties"][coll][i]["properties"]
}

/// Loads `file` with `value` at `path` below the `properties` of item `i` of `coll` (`/` between
/// keys and array indices), expecting refusal.
fn refuse_field(file: &str, coll: &str, i: usize, path: &str, value: Value) -> ConfigError {
    refuse(file, |v| {
        let mut at = props(v, coll, i);
        for key in path.split('/') {
            at = match key.parse::<usize>() {
                Ok(n) => &mut at[n],
                Err(_) => &mut at[key],
            };
        }
        *at = value;
    })
}

fn collection<'a>(v: &'a mut Value, coll: &str) -> &'a mut Vec<Value> {
    v["properties"][coll].as_array_mut().unwrap()
}

fn frontend_index(lb: &LoadBalancer, name: &str) -> usize {
    lb.frontends.iter().position(|f| f.name == name).unwrap_or_else(|| panic!("no frontend {name}"))
}

fn pool_index(lb: &LoadBalancer, name: &str) -> usize {
    lb.pools.iter().position(|p| p.name == name).unwrap_or_else(|| panic!("no pool {name}"))
}

/// An idle timeout of `m` minutes.
fn minutes(m: u8) -> IdleTimeout {
    IdleTimeout::from_minutes(m).unwrap()
}

fn rule<'a>(lb: &'a LoadBalancer, name: &str) -> &'a Rule {
    lb.rules.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no rule {name}"))
}

// ---------------------------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------------------------

/// The load balancers of `examples/`.
fn example_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // Node files (`*.node.json`) are lb-dpdk's: they name a load balancer, they are not one.
        .filter(|n| n.ends_with(".json") && !n.ends_with(".node.json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_loads() {
    let files = example_files();
    for f in [BASIC, THREE_TIER, OUTBOUND, NAT_POOL] {
        assert!(files.iter().any(|x| x == f), "examples/{f} missing: {files:?}");
    }
    for f in &files {
        let lb = load(f);
        assert!(!lb.name.is_empty(), "{f}");
        assert!(!lb.frontends.is_empty() && !lb.pools.is_empty(), "{f}");
        assert_eq!(lb.validate(), Ok(()), "{f}");
    }
}

/// The four kinds of resource that take an idle timeout, each as (example, collection, item,
/// name), and the model's timeout of that item.
const IDLE_HOLDERS: [(&str, &str, usize, &str); 4] = [
    (BASIC, "loadBalancingRules", 0, "HTTPRule"),
    (NAT_POOL, "inboundNatRules", 2, "Metrics-to-VM0"),
    (NAT_POOL, "inboundNatPools", 0, "SSH-Pool"),
    (OUTBOUND, "outboundRules", 0, "OutboundRule"),
];

fn idle_of(lb: &LoadBalancer, coll: &str, i: usize) -> IdleTimeout {
    match coll {
        "loadBalancingRules" => lb.rules[i].idle_timeout,
        "inboundNatRules" => lb.nat_rules[i].idle_timeout,
        "inboundNatPools" => lb.nat_pools[i].idle_timeout,
        "outboundRules" => lb.outbound_rules[i].idle_timeout,
        _ => unreachable!("{coll}"),
    }
}

#[test]
fn examples_read_the_same_through_a_json_round_trip_with_their_idle_timeouts_in_minutes() {
    for f in &example_files() {
        let lb = load(f);
        let v: Value = serde_json::from_str(&text(f)).unwrap();
        let again = from_json(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
        assert_eq!(again, lb, "{f}");
        for coll in ["loadBalancingRules", "inboundNatRules", "inboundNatPools", "outboundRules"] {
            let items = v["properties"][coll].as_array().cloned().unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                let given = item["properties"]["idleTimeoutInMinutes"].as_u64().map_or(4, |m| m as u8);
                assert_eq!(idle_of(&lb, coll, i), minutes(given), "{f} {coll} {i}");
            }
        }
    }
}

#[test]
fn basic_web_app() {
    let lb = load(BASIC);
    assert_eq!(lb.name, "WebLB");
    assert_eq!(lb.frontends.len(), 1);
    assert_eq!((lb.frontends[0].name.as_str(), lb.frontends[0].address), ("WebFrontend", ip("20.50.60.10")));

    assert_eq!(lb.pools.len(), 1);
    let pool = &lb.pools[0];
    assert_eq!((pool.name.as_str(), pool.vni), ("WebServers", 5001));
    let members: Vec<_> = pool.backends.iter().map(|b| (b.name.as_str(), b.address, b.host, b.weight)).collect();
    assert_eq!(
        members,
        [
            ("VM1", ip("10.0.1.4"), ip("172.16.10.21"), 1),
            ("VM2", ip("10.0.1.5"), ip("172.16.10.22"), 1),
            ("VM3", ip("10.0.1.6"), ip("172.16.10.23"), 1),
        ]
    );

    assert_eq!(lb.probes.len(), 2);
    let http = &lb.probes[0];
    assert_eq!(
        (http.protocol, http.port, http.request_path.as_deref(), http.interval_secs, http.number_of_probes),
        (ProbeProtocol::Http, 80, Some("/health"), 15, 2)
    );
    assert_eq!((lb.probes[1].protocol, lb.probes[1].port), (ProbeProtocol::Https, 443));

    assert_eq!(lb.rules.len(), 2);
    for (r, port, probe) in [(rule(&lb, "HTTPRule"), 80, 0), (rule(&lb, "HTTPSRule"), 443, 1)] {
        assert_eq!((r.frontend, r.pool, r.probe), (0, 0, Some(probe)), "{}", r.name);
        assert_eq!((r.protocol, r.frontend_port, r.backend_port), (Protocol::Tcp, port, port), "{}", r.name);
        assert_eq!(r.load_distribution, LoadDistribution::Default);
        assert!(r.tcp_reset && !r.floating_ip && !r.disable_outbound_snat && !r.is_ha_ports(), "{}", r.name);
        assert_eq!(r.idle_timeout, minutes(4));
    }
    assert!(lb.nat_rules.is_empty() && lb.nat_pools.is_empty() && lb.outbound_rules.is_empty());
}

#[test]
fn internal_three_tier_with_ha_ports() {
    let lb = load(THREE_TIER);
    let addresses: Vec<_> = lb.frontends.iter().map(|f| (f.name.as_str(), f.address)).collect();
    assert_eq!(
        addresses,
        [("AppFrontend", ip("10.0.2.100")), ("DBFrontend", ip("10.0.3.100")), ("NVAFrontend", ip("10.0.4.100"))]
    );
    let sizes: Vec<_> = lb.pools.iter().map(|p| (p.name.as_str(), p.backends.len(), p.vni)).collect();
    assert_eq!(sizes, [("AppServers", 3, 6002), ("DBServers", 2, 6003), ("NVAPool", 2, 6004)]);
    assert_eq!(lb.pools[0].backends[0].address, ip("10.0.2.4"));

    let app = rule(&lb, "AppRule");
    assert_eq!((app.frontend, app.pool), (frontend_index(&lb, "AppFrontend"), pool_index(&lb, "AppServers")));
    assert_eq!((app.protocol, app.frontend_port, app.backend_port), (Protocol::Tcp, 8080, 8080));
    assert_eq!(app.load_distribution, LoadDistribution::SourceIp);
    assert!(!app.is_ha_ports() && !app.floating_ip);

    let db = rule(&lb, "DBRule");
    assert_eq!((db.frontend_port, db.backend_port, db.idle_timeout), (1433, 1433, minutes(30)));
    assert_eq!(db.load_distribution, LoadDistribution::SourceIp);
    assert!(db.floating_ip && !db.is_ha_ports());
    assert_eq!(lb.probes[db.probe.unwrap()].interval_secs, 5);

    let ha = rule(&lb, "HA-Ports-Rule");
    assert!(ha.is_ha_ports());
    assert_eq!((ha.protocol, ha.frontend_port, ha.backend_port), (Protocol::All, 0, 0));
    assert_eq!((ha.frontend, ha.pool), (frontend_index(&lb, "NVAFrontend"), pool_index(&lb, "NVAPool")));
    assert_eq!(ha.load_distribution, LoadDistribution::SourceIpProtocol);
    let probe = &lb.probes[ha.probe.unwrap()];
    assert_eq!((probe.protocol, probe.request_path.as_deref()), (ProbeProtocol::Http, Some("/healthz")));
    // The HA-ports rule is alone on its frontend.
    assert_eq!(lb.rules.iter().filter(|r| r.frontend == ha.frontend).count(), 1);
    assert_eq!(lb.rules.iter().filter(|r| r.is_ha_ports()).count(), 1);
}

#[test]
fn outbound_snat() {
    let lb = load(OUTBOUND);
    let addresses: Vec<_> = lb.frontends.iter().map(|f| f.address).collect();
    assert_eq!(addresses, [ip("20.50.60.10"), ip("20.50.60.11"), ip("20.50.60.12")]);
    assert_eq!(lb.pools[0].backends.len(), 3);

    let http = rule(&lb, "HTTPRule");
    assert_eq!((http.frontend, http.frontend_port), (frontend_index(&lb, "InboundFrontend"), 80));
    assert!(http.disable_outbound_snat);

    assert_eq!(lb.outbound_rules.len(), 1);
    let out = &lb.outbound_rules[0];
    assert_eq!(out.name, "OutboundRule");
    assert_eq!(out.frontends, [frontend_index(&lb, "OutboundFrontend1"), frontend_index(&lb, "OutboundFrontend2")]);
    assert_eq!((out.pool, out.protocol), (0, Protocol::All));
    assert_eq!(out.allocated_outbound_ports, Some(1024));
    assert_eq!(out.idle_timeout, minutes(4));
    assert!(out.tcp_reset);
    // 3 backends × 1024 ports fit in 2 × 64000.
    assert!(1024 * lb.pools[out.pool].backends.len() <= 64_000 * out.frontends.len());
}

/// Default outbound SNAT through load-balancing rules (Azure Load Balancer, "Source Network Address
/// Translation (SNAT) for outbound connections"): the VMs that go out through a frontend share its
/// 64,000 ports evenly ("64,000 / 10 = 6,400 ports" a VM), in multiples of 8;
/// two pools on one frontend share it between all their VMs.
#[test]
fn default_outbound_snat_splits_the_frontend_between_its_vms() {
    let mut lb = load(BASIC);
    let pool = lb.rules[0].pool;
    let frontend = lb.rules[0].frontend;
    assert!(lb.rules.iter().any(|r| !r.disable_outbound_snat), "the example keeps default outbound SNAT");
    let vm = |i: usize| Backend {
        name: format!("vm{i}"),
        address: IpAddr::from([10, 0, 1, 100 + i as u8]),
        host: IpAddr::from([172, 16, 10, 20]),
        weight: 1,
    };
    lb.pools[pool].backends = (0..10).map(vm).collect();
    let plan = lb.snat_plan().unwrap();
    let lens: Vec<(usize, u16, u16)> = plan.grants.iter().map(|g| (g.member, g.first, g.len)).collect();
    assert_eq!(lens.len(), 10, "{lens:?}");
    for (m, first, len) in lens {
        assert_eq!(len, 6400, "64,000 / 10");
        assert_eq!(first, 1024 + 6400 * m as u16);
    }
    assert_eq!(plan.owner(frontend, 1024 + 64_000 - 1).map(|g| g.member), Some(9));

    // A second pool of 5 VMs behind another rule on the same frontend: 15 VMs share it.
    let mut second = lb.pools[pool].clone();
    second.name = "Second".into();
    second.backends = (10..15).map(vm).collect();
    lb.pools.push(second);
    let mut r = lb.rules[0].clone();
    r.name = "Second-HTTP".into();
    r.pool = lb.pools.len() - 1;
    r.frontend_port = 8081;
    r.probe = None;
    lb.rules.push(r);
    let plan = lb.snat_plan().unwrap();
    assert_eq!(plan.grants.len(), 15);
    let per = 64_000 / 15 / 8 * 8;
    assert!(plan.grants.iter().all(|g| usize::from(g.len) == per), "{per} each");
    let mut blocks: Vec<(u16, u16)> = plan.grants.iter().map(|g| (g.first, g.len)).collect();
    blocks.sort();
    assert!(blocks.windows(2).all(|w| u32::from(w[0].0) + u32::from(w[0].1) <= u32::from(w[1].0)), "disjoint");
    assert!(u32::from(blocks[14].0) + u32::from(blocks[14].1) <= 1024 + 64_000);
}

#[test]
fn default_outbound_snat_serves_the_protocols_of_its_rules() {
    let mut lb = load(BASIC);
    let tcp_only = lb.snat_plan().unwrap();
    assert!(tcp_only.grants.iter().all(|g| g.protocol.matches(6) && !g.protocol.matches(17)));
    // A UDP rule on the same frontend and pool (DNS): its VMs go out with UDP too.
    let mut dns = lb.rules[0].clone();
    dns.name = "DNS".into();
    (dns.protocol, dns.frontend_port, dns.backend_port, dns.probe) = (Protocol::Udp, 53, 53, None);
    lb.rules.push(dns);
    let plan = lb.snat_plan().unwrap();
    assert_eq!(plan.grants.len(), tcp_only.grants.len(), "still one block a VM");
    assert!(plan.grants.iter().all(|g| g.protocol.matches(6) && g.protocol.matches(17)), "{:?}", plan.grants);
}

#[test]
fn nat_pool_idle_timeout_floating_ip_and_reset() {
    let lb = load(NAT_POOL);
    let np = &lb.nat_pools[0];
    assert_eq!((np.idle_timeout, np.floating_ip, np.tcp_reset), (minutes(4), false, false), "Azure's defaults");
    let lb = accept(NAT_POOL, |v| {
        let p = props(v, "inboundNatPools", 0);
        p["idleTimeoutInMinutes"] = json!(30);
        p["enableFloatingIP"] = json!(true);
        p["enableTcpReset"] = json!(true);
    });
    let np = &lb.nat_pools[0];
    assert_eq!((np.idle_timeout, np.floating_ip, np.tcp_reset), (minutes(30), true, true));
    let e = refuse(NAT_POOL, |v| props(v, "inboundNatPools", 0)["idleTimeoutInMinutes"] = json!(2));
    assert_names(&e, "inboundNatPools", "SSH-Pool", "idleTimeoutInMinutes");
}

#[test]
fn inbound_nat_pool() {
    let lb = load(NAT_POOL);
    let public = frontend_index(&lb, "PublicFrontend");
    let mgmt = frontend_index(&lb, "MgmtFrontend");
    assert_eq!((lb.frontends[public].address, lb.frontends[mgmt].address), (ip("20.50.60.10"), ip("20.50.60.11")));
    assert_eq!(lb.pools[0].backends.len(), 5);

    assert_eq!(lb.nat_pools.len(), 1);
    let np = &lb.nat_pools[0];
    assert_eq!((np.name.as_str(), np.frontend, np.protocol, np.pool), ("SSH-Pool", public, Protocol::Tcp, 0));
    assert_eq!((np.port_start, np.port_end, np.backend_port), (50000, 50099, 22));

    let nat: Vec<_> =
        lb.nat_rules.iter().map(|r| (r.name.as_str(), r.frontend, r.frontend_port, r.backend_port, r.target)).collect();
    assert_eq!(
        nat,
        [
            ("SSH-to-VM1", mgmt, 50001, 2222, (0, 1)),
            ("SSH-to-VM2", mgmt, 50002, 2222, (0, 2)),
            ("Metrics-to-VM0", public, 50100, 9100, (0, 0)),
        ]
    );
    assert_eq!(lb.pools[0].backends[1].address, ip("10.0.1.5"));
    // No single NAT rule on the pool's frontend falls inside the pool's range.
    for r in lb.nat_rules.iter().filter(|r| r.frontend == np.frontend) {
        assert!(!(np.port_start..=np.port_end).contains(&r.frontend_port), "{}", r.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_frontend_reference() {
    let e = refuse_field(
        BASIC,
        "loadBalancingRules",
        0,
        "frontendIPConfiguration/id",
        json!("/subscriptions/.../loadBalancers/WebLB/frontendIPConfigurations/NoSuchFrontend"),
    );
    assert_names(&e, "loadBalancingRules", "HTTPRule", "frontendIPConfiguration");
    assert!(e.problem.contains("NoSuchFrontend"), "{e}");

    let gone = json!(".../frontendIPConfigurations/Gone");
    let e = refuse_field(OUTBOUND, "outboundRules", 0, "frontendIPConfigurations/1/id", gone.clone());
    assert_names(&e, "outboundRules", "OutboundRule", "frontendIPConfigurations");

    let e = refuse_field(NAT_POOL, "inboundNatPools", 0, "frontendIPConfiguration/id", gone);
    assert_names(&e, "inboundNatPools", "SSH-Pool", "frontendIPConfiguration");
}

#[test]
fn outbound_rule_frontend_listed_twice() {
    // Each frontend of an outbound rule gives every member a block of its ports; one listed twice
    // would hand two members the same ports.
    let e = refuse(OUTBOUND, |v| {
        let fs = &mut props(v, "outboundRules", 0)["frontendIPConfigurations"];
        fs[1] = fs[0].clone();
    });
    assert_names(&e, "outboundRules", "OutboundRule", "frontendIPConfigurations");
    assert!(e.problem.contains("listed twice"), "{e}");
}

#[test]
fn unknown_pool_reference() {
    for (file, coll, i, pool, name) in [
        (BASIC, "loadBalancingRules", 1, "ApiServers", "HTTPSRule"),
        (OUTBOUND, "outboundRules", 0, "Gone", "OutboundRule"),
        (NAT_POOL, "inboundNatPools", 0, "Gone", "SSH-Pool"),
    ] {
        let e = refuse_field(file, coll, i, "backendAddressPool/id", json!(format!(".../backendAddressPools/{pool}")));
        assert_names(&e, coll, name, "backendAddressPool");
    }
}

/// A field edit and the refusal it gives: file, collection, item, path below the item's properties
/// and value; then the kind, name and field the error names.
type Refusal = (&'static str, &'static str, usize, &'static str, Value, &'static str, &'static str, &'static str);

/// One field set to a value out of bounds, or naming nothing: the error names the resource and the
/// field (`kind` and `name` of the resource reported, which may be another than the one edited).
#[test]
fn one_field_out_of_bounds_is_refused_by_name() {
    // (file, collection, item, path below its properties, value; kind, name, field named)
    let cases: [Refusal; 12] = [
        // An unknown probe; an unknown NAT rule backend.
        (
            BASIC,
            "loadBalancingRules",
            0,
            "probe/id",
            json!(".../probes/TCP-Probe-80"),
            "loadBalancingRules",
            "HTTPRule",
            "probe",
        ),
        (
            NAT_POOL,
            "inboundNatRules",
            1,
            "backendIPConfiguration/id",
            json!(".../networkInterfaces/VM9-NIC/ipConfigurations/ipconfig1"),
            "inboundNatRules",
            "SSH-to-VM2",
            "backendIPConfiguration",
        ),
        // A backend address or name used twice in a pool.
        (
            BASIC,
            "backendAddressPools",
            0,
            "loadBalancerBackendAddresses/2/properties/ipAddress",
            json!("10.0.1.4"),
            "backendAddressPools",
            "WebServers",
            "ipAddress",
        ),
        (
            NAT_POOL,
            "backendAddressPools",
            0,
            "loadBalancerBackendAddresses/3/name",
            json!("VM1"),
            "backendAddressPools",
            "VMSSPool",
            "name",
        ),
        // Port 0 outside HA ports, for a rule's frontend and backend, a NAT rule's backend, a probe
        // and a NAT pool's range start.
        (BASIC, "loadBalancingRules", 0, "frontendPort", json!(0), "loadBalancingRules", "HTTPRule", "frontendPort"),
        (BASIC, "loadBalancingRules", 0, "backendPort", json!(0), "loadBalancingRules", "HTTPRule", "backendPort"),
        (NAT_POOL, "inboundNatRules", 0, "backendPort", json!(0), "inboundNatRules", "SSH-to-VM1", "backendPort"),
        (BASIC, "probes", 0, "port", json!(0), "probes", "HTTPHealthProbe", "port"),
        (
            NAT_POOL,
            "inboundNatPools",
            0,
            "frontendPortRangeStart",
            json!(0),
            "inboundNatPools",
            "SSH-Pool",
            "frontendPortRangeStart",
        ),
        // A probe's interval and count; a VNI beyond 24 bits (RFC 7348).
        (BASIC, "probes", 0, "intervalInSeconds", json!(4), "probes", "HTTPHealthProbe", "intervalInSeconds"),
        (BASIC, "probes", 0, "numberOfProbes", json!(0), "probes", "HTTPHealthProbe", "numberOfProbes"),
        (BASIC, "backendAddressPools", 0, "vni", json!(1 << 24), "backendAddressPools", "WebServers", "vni"),
    ];
    for (file, coll, i, path, value, kind, name, field) in cases {
        let e = refuse_field(file, coll, i, path, value);
        assert_names(&e, kind, name, field);
    }
}

#[test]
fn port_out_of_range() {
    let e = refuse_field(BASIC, "loadBalancingRules", 1, "frontendPort", json!(70000));
    assert_names(&e, "loadBalancingRules", "HTTPSRule", "frontendPort");
    assert!(e.problem.contains("70000"), "{e}");

    for (file, coll, i, field, name) in [
        (BASIC, "loadBalancingRules", 0, "backendPort", "HTTPRule"),
        (BASIC, "probes", 0, "port", "HTTPHealthProbe"),
        (NAT_POOL, "inboundNatPools", 0, "frontendPortRangeEnd", "SSH-Pool"),
        (NAT_POOL, "inboundNatRules", 0, "frontendPort", "SSH-to-VM1"),
    ] {
        let e = refuse_field(file, coll, i, field, json!(70000));
        assert_names(&e, coll, name, field);
    }
}

#[test]
fn overlapping_rules_on_one_frontend() {
    // HTTPSRule moved onto port 80 of the same frontend, same protocol.
    let e = refuse(BASIC, |v| props(v, "loadBalancingRules", 1)["frontendPort"] = json!(80));
    assert_names(&e, "loadBalancingRules", "HTTPSRule", "frontendPort");
    assert!(e.problem.contains("HTTPRule"), "{e}");

    // The same port over UDP does not overlap.
    let lb = accept(BASIC, |v| {
        let p = props(v, "loadBalancingRules", 1);
        p["frontendPort"] = json!(80);
        p["protocol"] = json!("Udp");
    });
    assert_eq!((lb.rules[1].protocol, lb.rules[1].frontend_port), (Protocol::Udp, 80));

    // A single NAT rule inside the NAT pool's range on the pool's frontend.
    let e = refuse(NAT_POOL, |v| {
        props(v, "inboundNatRules", 0)["frontendIPConfiguration"]["id"] =
            json!(".../frontendIPConfigurations/PublicFrontend");
    });
    assert_names(&e, "inboundNatPools", "SSH-Pool", "frontendPort");
    assert!(e.problem.contains("SSH-to-VM1"), "{e}");

    // A NAT rule on a load-balancing rule's port.
    let e = refuse(NAT_POOL, |v| props(v, "inboundNatRules", 2)["frontendPort"] = json!(80));
    assert_names(&e, "inboundNatRules", "Metrics-to-VM0", "frontendPort");
    assert!(e.problem.contains("HTTPRule"), "{e}");
}

#[test]
fn ha_ports_mixed_with_a_port_rule() {
    // A port rule added after the HA-ports rule, on the NVA frontend.
    let e = refuse(THREE_TIER, |v| {
        let mut extra = v["properties"]["loadBalancingRules"][0].clone();
        extra["name"] = json!("NVA-HTTPS");
        extra["properties"]["frontendIPConfiguration"]["id"] = json!(".../frontendIPConfigurations/NVAFrontend");
        extra["properties"]["frontendPort"] = json!(443);
        extra["properties"]["backendPort"] = json!(443);
        collection(v, "loadBalancingRules").push(extra);
    });
    assert_names(&e, "loadBalancingRules", "NVA-HTTPS", "frontendPort");
    assert!(e.problem.contains("HA-Ports-Rule"), "{e}");

    // A port rule listed before the HA-ports rule: the HA-ports rule is the one refused.
    let e = refuse(THREE_TIER, |v| {
        props(v, "loadBalancingRules", 0)["frontendIPConfiguration"]["id"] =
            json!(".../frontendIPConfigurations/NVAFrontend");
    });
    assert_names(&e, "loadBalancingRules", "HA-Ports-Rule", "protocol");
    assert!(e.problem.contains("AppRule"), "{e}");
}

#[test]
fn protocol_all_needs_ports_zero() {
    let e = refuse(BASIC, |v| props(v, "loadBalancingRules", 0)["protocol"] = json!("All"));
    assert_names(&e, "loadBalancingRules", "HTTPRule", "protocol");
    // One port 0 already: the other is what is off.
    for (port, field) in [("frontendPort", "backendPort"), ("backendPort", "frontendPort")] {
        let e = refuse(BASIC, |v| {
            props(v, "loadBalancingRules", 0)["protocol"] = json!("All");
            props(v, "loadBalancingRules", 0)[port] = json!(0);
        });
        assert_names(&e, "loadBalancingRules", "HTTPRule", field);
    }
}

#[test]
fn pool_of_1001_backends() {
    fn grow(v: &mut Value, n: usize) {
        let members: Vec<Value> = (0..n)
            .map(|i| {
                json!({
                    "name": format!("VM{i}"),
                    "properties": {
                        "ipAddress": format!("10.0.{}.{}", 1 + i / 250, 4 + i % 250),
                        "hostAddress": format!("172.16.{}.{}", 10 + i / 200, 20 + i % 200),
                    }
                })
            })
            .collect();
        props(v, "backendAddressPools", 0)["loadBalancerBackendAddresses"] = Value::Array(members);
    }
    let e = refuse(BASIC, |v| grow(v, MAX_POOL_SIZE + 1));
    assert_names(&e, "backendAddressPools", "WebServers", "loadBalancerBackendAddresses");
    assert!(e.problem.contains("1001"), "{e}");

    let lb = accept(BASIC, |v| grow(v, MAX_POOL_SIZE));
    assert_eq!(lb.pools[0].backends.len(), 1000);
}

#[test]
fn idle_timeout_out_of_range() {
    for minutes in [0, 3, 101, 300] {
        let e = refuse(BASIC, |v| props(v, "loadBalancingRules", 0)["idleTimeoutInMinutes"] = json!(minutes));
        assert_names(&e, "loadBalancingRules", "HTTPRule", "idleTimeoutInMinutes");
    }
    let e = refuse(OUTBOUND, |v| props(v, "outboundRules", 0)["idleTimeoutInMinutes"] = json!(3));
    assert_names(&e, "outboundRules", "OutboundRule", "idleTimeoutInMinutes");
    let e = refuse(NAT_POOL, |v| props(v, "inboundNatRules", 2)["idleTimeoutInMinutes"] = json!(3));
    assert_names(&e, "inboundNatRules", "Metrics-to-VM0", "idleTimeoutInMinutes");

    for minutes in [4, 100] {
        let lb = accept(BASIC, |v| props(v, "loadBalancingRules", 0)["idleTimeoutInMinutes"] = json!(minutes));
        assert_eq!(lb.rules[0].idle_timeout.seconds(), minutes * 60);
    }
}

#[test]
fn idle_timeout_in_seconds_on_every_kind_of_rule() {
    for (file, coll, i, name) in IDLE_HOLDERS {
        // Alone, seconds win over the default 4 minutes.
        for seconds in [1u8, 5, 127] {
            let lb = accept(file, |v| {
                let p = props(v, coll, i);
                p.as_object_mut().unwrap().remove("idleTimeoutInMinutes");
                p["idleTimeoutInSeconds"] = json!(seconds);
            });
            let idle = idle_of(&lb, coll, i);
            assert_eq!((idle.seconds(), idle.minutes()), (u32::from(seconds), None), "{coll} {seconds}");
        }
        for seconds in [json!(0), json!(128), json!(300), json!(1u64 << 32)] {
            let e = refuse(file, |v| {
                let p = props(v, coll, i);
                p.as_object_mut().unwrap().remove("idleTimeoutInMinutes");
                p["idleTimeoutInSeconds"] = seconds.clone();
            });
            assert_names(&e, coll, name, "idleTimeoutInSeconds");
            assert_eq!(e.problem, "must be 1..=127", "{coll} {seconds}");
        }
        // Both, even Azure's default given explicitly: refused, whichever is in range.
        for minutes in [4, 30] {
            let e = refuse(file, |v| {
                let p = props(v, coll, i);
                p["idleTimeoutInMinutes"] = json!(minutes);
                p["idleTimeoutInSeconds"] = json!(5);
            });
            assert_names(&e, coll, name, "idleTimeoutInSeconds");
            assert!(e.problem.contains("idleTimeoutInMinutes"), "{e}");
        }
        // Minutes alone keep Azure's bounds and message.
        let e = refuse(file, |v| props(v, coll, i)["idleTimeoutInMinutes"] = json!(3));
        assert_names(&e, coll, name, "idleTimeoutInMinutes");
        assert_eq!(e.problem, "must be 4..=100");
    }
}

#[test]
fn a_model_built_in_code_validates_seconds_and_azures_minutes() {
    let mut lb = load(BASIC);
    lb.rules[0].idle_timeout = IdleTimeout::from_seconds(5).unwrap();
    assert_eq!(lb.validate(), Ok(()));
    lb.rules[0].idle_timeout = minutes(2);
    let e = lb.validate().unwrap_err();
    assert_names(&e, "loadBalancingRules", "HTTPRule", "idleTimeoutInMinutes");
    assert_eq!(e.problem, "must be 4..=100");
}

#[test]
fn duplicate_names() {
    /// Appends a copy of item `i` of `coll` under `name` (the original keeps its references valid).
    fn copy_as(v: &mut Value, coll: &str, i: usize, name: &str) {
        let mut extra = v["properties"][coll][i].clone();
        extra["name"] = json!(name);
        collection(v, coll).push(extra);
    }
    let e = refuse(BASIC, |v| v["properties"]["loadBalancingRules"][1]["name"] = json!("HTTPRule"));
    assert_names(&e, "loadBalancingRules", "HTTPRule", "name");

    let e = refuse(BASIC, |v| copy_as(v, "probes", 1, "HTTPHealthProbe"));
    assert_names(&e, "probes", "HTTPHealthProbe", "name");

    let e = refuse(OUTBOUND, |v| copy_as(v, "frontendIPConfigurations", 2, "OutboundFrontend1"));
    assert_names(&e, "frontendIPConfigurations", "OutboundFrontend1", "name");

    let e = refuse(THREE_TIER, |v| copy_as(v, "backendAddressPools", 2, "AppServers"));
    assert_names(&e, "backendAddressPools", "AppServers", "name");

    let e = refuse(NAT_POOL, |v| v["properties"]["inboundNatRules"][1]["name"] = json!("SSH-to-VM1"));
    assert_names(&e, "inboundNatRules", "SSH-to-VM1", "name");

    let e = refuse(OUTBOUND, |v| copy_as(v, "outboundRules", 0, "OutboundRule"));
    assert_names(&e, "outboundRules", "OutboundRule", "name");

    let e = refuse(NAT_POOL, |v| {
        copy_as(v, "inboundNatPools", 0, "SSH-Pool");
        props(v, "inboundNatPools", 1)["frontendIPConfiguration"]["id"] =
            json!(".../frontendIPConfigurations/MgmtFrontend");
        props(v, "inboundNatPools", 1)["frontendPortRangeStart"] = json!(51000);
        props(v, "inboundNatPools", 1)["frontendPortRangeEnd"] = json!(51099);
    });
    assert_names(&e, "inboundNatPools", "SSH-Pool", "name");

    let e = refuse(BASIC, |v| copy_as(v, "probes", 1, ""));
    assert_names(&e, "probes", "", "name");
}

#[test]
fn bad_protocol_string() {
    let e = refuse(BASIC, |v| props(v, "loadBalancingRules", 0)["protocol"] = json!("Icmp"));
    assert_names(&e, "loadBalancingRules", "HTTPRule", "protocol");
    assert!(e.problem.contains("Icmp"), "{e}");

    let e = refuse(BASIC, |v| props(v, "probes", 1)["protocol"] = json!("Ftp"));
    assert_names(&e, "probes", "HTTPSHealthProbe", "protocol");

    let e = refuse(NAT_POOL, |v| props(v, "inboundNatPools", 0)["protocol"] = json!("Sctp"));
    assert_names(&e, "inboundNatPools", "SSH-Pool", "protocol");

    // NAT rules and pools take Tcp or Udp only.
    let e = refuse(NAT_POOL, |v| props(v, "inboundNatRules", 0)["protocol"] = json!("All"));
    assert_names(&e, "inboundNatRules", "SSH-to-VM1", "protocol");

    let e = refuse(BASIC, |v| props(v, "loadBalancingRules", 0)["loadDistribution"] = json!("RoundRobin"));
    assert_names(&e, "loadBalancingRules", "HTTPRule", "loadDistribution");
}

#[test]
fn malformed_json() {
    let full = text(BASIC);
    for broken in [&full[..full.len() / 2], "", "{\"name\": \"WebLB\", \"properties\": 7}", "not json"] {
        let e = from_json(broken).expect_err(broken);
        assert_names(&e, "loadBalancer", "", "json");
    }
    // A backend without its hostAddress is a schema error too.
    let without_host = edited(BASIC, |v| {
        let b = &mut props(v, "backendAddressPools", 0)["loadBalancerBackendAddresses"][0]["properties"];
        b.as_object_mut().unwrap().remove("hostAddress");
    });
    let e = from_json(&without_host).unwrap_err();
    assert_names(&e, "loadBalancer", "", "json");
    assert!(e.problem.contains("hostAddress"), "{e}");
}

#[test]
fn bad_addresses() {
    let e = refuse(BASIC, |v| {
        props(v, "frontendIPConfigurations", 0)["publicIPAddress"]["ipAddress"] = json!("20.50.60.300");
    });
    assert_names(&e, "frontendIPConfigurations", "WebFrontend", "ipAddress");

    let e =
        refuse(BASIC, |v| props(v, "frontendIPConfigurations", 0)["publicIPAddress"]["ipAddress"] = json!("0.0.0.0"));
    assert_names(&e, "frontendIPConfigurations", "WebFrontend", "ipAddress");

    let e = refuse(BASIC, |v| {
        props(v, "backendAddressPools", 0)["loadBalancerBackendAddresses"][1]["properties"]["hostAddress"] =
            json!("host-2");
    });
    assert_names(&e, "backendAddressPools", "WebServers", "hostAddress");

    // A public frontend whose address is not known.
    let e = refuse(BASIC, |v| {
        props(v, "frontendIPConfigurations", 0)["publicIPAddress"].as_object_mut().unwrap().remove("ipAddress");
    });
    assert_names(&e, "frontendIPConfigurations", "WebFrontend", "publicIPAddress");
}

#[test]
fn nat_pool_range_smaller_than_pool() {
    // 50000..=50003 is four ports for five instances.
    let e = refuse(NAT_POOL, |v| props(v, "inboundNatPools", 0)["frontendPortRangeEnd"] = json!(50003));
    assert_names(&e, "inboundNatPools", "SSH-Pool", "frontendPortRangeEnd");

    // An inverted range.
    let e = refuse(NAT_POOL, |v| props(v, "inboundNatPools", 0)["frontendPortRangeEnd"] = json!(49999));
    assert_names(&e, "inboundNatPools", "SSH-Pool", "frontendPortRangeEnd");

    // Exactly one port per instance is enough.
    let lb = accept(NAT_POOL, |v| props(v, "inboundNatPools", 0)["frontendPortRangeEnd"] = json!(50004));
    assert_eq!((lb.nat_pools[0].port_start, lb.nat_pools[0].port_end), (50000, 50004));
}

#[test]
fn allocated_outbound_ports_not_a_multiple_of_8() {
    for ports in [0, 1001, 1020, 64_008] {
        let e = refuse(OUTBOUND, |v| props(v, "outboundRules", 0)["allocatedOutboundPorts"] = json!(ports));
        assert_names(&e, "outboundRules", "OutboundRule", "allocatedOutboundPorts");
    }
}

#[test]
fn allocated_outbound_ports_exhausting_the_frontends() {
    // 3 backends × 48000 = 144000 > 2 frontends × 64000.
    let e = refuse(OUTBOUND, |v| props(v, "outboundRules", 0)["allocatedOutboundPorts"] = json!(48_000));
    assert_names(&e, "outboundRules", "OutboundRule", "allocatedOutboundPorts");
    assert!(e.problem.contains("144000") && e.problem.contains("72000 of them"), "{e}");

    // 3 × 40000 = 120000 fits two frontends ...
    let lb = accept(OUTBOUND, |v| props(v, "outboundRules", 0)["allocatedOutboundPorts"] = json!(40_000));
    assert_eq!(lb.outbound_rules[0].allocated_outbound_ports, Some(40_000));

    // ... but not one.
    let e = refuse(OUTBOUND, |v| {
        props(v, "outboundRules", 0)["allocatedOutboundPorts"] = json!(40_000);
        props(v, "outboundRules", 0)["frontendIPConfigurations"].as_array_mut().unwrap().pop();
    });
    assert_names(&e, "outboundRules", "OutboundRule", "allocatedOutboundPorts");

    // No frontend at all.
    let e = refuse(OUTBOUND, |v| props(v, "outboundRules", 0)["frontendIPConfigurations"] = json!([]));
    assert_names(&e, "outboundRules", "OutboundRule", "frontendIPConfigurations");
}

#[test]
fn frontend_and_pool_ip_versions_differ() {
    let e = refuse(BASIC, |v| {
        props(v, "frontendIPConfigurations", 0)["publicIPAddress"]["ipAddress"] = json!("2001:db8:50::10");
    });
    assert_names(&e, "loadBalancingRules", "HTTPRule", "backendAddressPool");

    // One IPv6 member in an IPv4 rule's pool.
    let e = refuse(BASIC, |v| {
        props(v, "backendAddressPools", 0)["loadBalancerBackendAddresses"][2]["properties"]["ipAddress"] =
            json!("fd00:1::6");
    });
    assert_names(&e, "loadBalancingRules", "HTTPRule", "backendAddressPool");

    // Underlay hosts mixing IPv4 and IPv6.
    let e = refuse(BASIC, |v| {
        props(v, "backendAddressPools", 0)["loadBalancerBackendAddresses"][2]["properties"]["hostAddress"] =
            json!("fd00:172:16::23");
    });
    assert_names(&e, "backendAddressPools", "WebServers", "hostAddress");
}

#[test]
fn http_probe_without_request_path() {
    let e = refuse(BASIC, |v| {
        props(v, "probes", 0).as_object_mut().unwrap().remove("requestPath");
    });
    assert_names(&e, "probes", "HTTPHealthProbe", "requestPath");

    let e = refuse(BASIC, |v| props(v, "probes", 1)["requestPath"] = json!("health"));
    assert_names(&e, "probes", "HTTPSHealthProbe", "requestPath");

    // A path no request can carry (the prober's HTTP client refuses it, so every probe fails).
    for bad in ["/my health", "/a\"b", "/{x}", "/a|b", "/\u{e9}t\u{e9}"] {
        let e = refuse(BASIC, |v| props(v, "probes", 0)["requestPath"] = json!(bad));
        assert_names(&e, "probes", "HTTPHealthProbe", "requestPath");
    }
    let lb = accept(BASIC, |v| props(v, "probes", 0)["requestPath"] = json!("/health/v1?deep=1&x=%20"));
    assert_eq!(lb.probes[0].request_path.as_deref(), Some("/health/v1?deep=1&x=%20"));

    // A TCP probe needs none.
    let lb = accept(BASIC, |v| {
        let p = props(v, "probes", 0);
        p["protocol"] = json!("Tcp");
        p.as_object_mut().unwrap().remove("requestPath");
    });
    assert_eq!((lb.probes[0].protocol, lb.probes[0].request_path.as_deref()), (ProbeProtocol::Tcp, None));
}

// ---------------------------------------------------------------------------------------------
// Refusals of resources that conflict with one another
// ---------------------------------------------------------------------------------------------

#[test]
fn ip_version_mismatch_outside_load_balancing_rules() {
    // Inbound NAT rule: IPv6 frontend, IPv4 target.
    let e = refuse(NAT_POOL, |v| {
        props(v, "frontendIPConfigurations", 1)["publicIPAddress"]["ipAddress"] = json!("2001:db8:50::11");
    });
    assert_eq!(e.kind, "inboundNatRules", "{e}");
    // Outbound rule: IPv6 SNAT address for an IPv4 pool.
    let e = refuse(OUTBOUND, |v| {
        props(v, "frontendIPConfigurations", 2)["publicIPAddress"]["ipAddress"] = json!("2001:db8:50::12");
    });
    assert_names(&e, "outboundRules", "OutboundRule", "frontendIPConfigurations");
    // Inbound NAT pool: IPv6 frontend, IPv4 pool (the HTTP rule moved to the IPv4 management frontend).
    let e = refuse(NAT_POOL, |v| {
        props(v, "frontendIPConfigurations", 0)["publicIPAddress"]["ipAddress"] = json!("2001:db8:50::10");
        props(v, "loadBalancingRules", 0)["frontendIPConfiguration"]["id"] =
            json!(".../frontendIPConfigurations/MgmtFrontend");
        collection(v, "inboundNatRules").pop();
    });
    assert_eq!(e.kind, "inboundNatPools", "{e}");
}

#[test]
fn two_frontends_with_one_address() {
    let e = refuse(BASIC, |v| {
        let mut twin = v["properties"]["frontendIPConfigurations"][0].clone();
        twin["name"] = json!("WebFrontend2");
        collection(v, "frontendIPConfigurations").push(twin);
        props(v, "loadBalancingRules", 1)["frontendIPConfiguration"]["id"] =
            json!(".../frontendIPConfigurations/WebFrontend2");
        props(v, "loadBalancingRules", 1)["frontendPort"] = json!(80);
    });
    assert_eq!(e.kind, "frontendIPConfigurations", "{e}");
}

#[test]
fn outbound_rules_sharing_a_frontend_exhaust_it() {
    // Two rules on the same two frontends, each 3 × 32000 = 96000 ports: 192000 > 128000.
    let e = refuse(OUTBOUND, |v| {
        props(v, "outboundRules", 0)["allocatedOutboundPorts"] = json!(32_000);
        let mut second = v["properties"]["outboundRules"][0].clone();
        second["name"] = json!("OutboundRule2");
        collection(v, "outboundRules").push(second);
    });
    assert_names(&e, "outboundRules", "OutboundRule2", "allocatedOutboundPorts");
}

#[test]
fn listeners_without_floating_ip_never_share_a_backend_port() {
    // A second rule to the web servers' port 80 (from the frontend's port 8080).
    let second = |floating: bool| {
        move |v: &mut Value| {
            let mut r = v["properties"]["loadBalancingRules"][0].clone();
            r["name"] = json!("HTTPAlt");
            r["properties"]["frontendPort"] = json!(8080);
            r["properties"]["enableFloatingIP"] = json!(floating);
            collection(v, "loadBalancingRules").push(r);
        }
    };
    let e = refuse(BASIC, second(false));
    assert_names(&e, "loadBalancingRules", "HTTPAlt", "backendPort");
    assert!(e.problem.contains("HTTPRule") && e.problem.contains("10.0.1.4"), "{e}");
    // Floating IP on the second rule: the backends see the frontend's address, not theirs.
    accept(BASIC, second(true));
    // The same port of another protocol is another socket.
    accept(BASIC, |v| {
        second(false)(v);
        props(v, "loadBalancingRules", 2)["protocol"] = json!("Udp");
    });

    // HA ports send to every port: no other listener without floating IP may send to the pool.
    let e = refuse(THREE_TIER, |v| {
        let mut r = v["properties"]["loadBalancingRules"][0].clone();
        r["name"] = json!("AppWeb");
        r["properties"]["protocol"] = json!("Tcp");
        r["properties"]["frontendPort"] = json!(80);
        r["properties"]["backendPort"] = json!(80);
        r["properties"]["frontendIPConfiguration"]["id"] =
            json!("/subscriptions/.../frontendIPConfigurations/DBFrontend");
        r["properties"]["backendAddressPool"]["id"] = json!("/subscriptions/.../backendAddressPools/NVAPool");
        collection(v, "loadBalancingRules").push(r);
    });
    assert_eq!((e.kind, e.name.as_str(), e.field), ("loadBalancingRules", "AppWeb", "backendPort"), "{e}");

    // An inbound NAT rule to a port a NAT pool already sends to.
    let e = refuse(NAT_POOL, |v| props(v, "inboundNatRules", 0)["backendPort"] = json!(22));
    assert_names(&e, "inboundNatPools", "SSH-Pool", "backendPort");
    assert!(e.problem.contains("SSH-to-VM1"), "{e}");
}

#[test]
fn internal_frontends_give_no_outbound_snat() {
    // The three-tier example is an internal load balancer: its rules keep outbound SNAT on, but a
    // private frontend address cannot take its VMs to the Internet.
    let lb = load(THREE_TIER);
    assert!(lb.frontends.iter().all(|f| f.internal));
    assert!(lb.rules.iter().any(|r| !r.disable_outbound_snat && !r.is_ha_ports()));
    assert!(lb.snat_plan().unwrap().grants.is_empty());
    assert!(load(BASIC).frontends.iter().all(|f| !f.internal), "publicIPAddress frontends are public");

    // An outbound rule through a private frontend is refused.
    let e = refuse(OUTBOUND, |v| {
        for f in collection(v, "frontendIPConfigurations") {
            let p = f["properties"].as_object_mut().unwrap();
            let a = p.remove("publicIPAddress").unwrap()["ipAddress"].clone();
            p.insert("privateIPAddress".into(), a);
        }
    });
    assert_names(&e, "outboundRules", "OutboundRule", "frontendIPConfigurations");
    assert!(e.problem.contains("private"), "{e}");
}

#[test]
fn a_pool_of_nic_references_is_refused_not_loaded_empty() {
    // A pool of NIC-based members (Azure's `backendIPConfigurations`) names its members by their NICs'
    // IP configurations.
    let e = refuse(BASIC, |v| {
        let p = props(v, "backendAddressPools", 0);
        p.as_object_mut().unwrap().remove("loadBalancerBackendAddresses");
        p["backendIPConfigurations"] =
            json!([{ "id": "/subscriptions/.../networkInterfaces/VM1-NIC/ipConfigurations/ipconfig1" }]);
    });
    assert_names(&e, "backendAddressPools", "WebServers", "backendIPConfigurations");
}

#[test]
fn floating_ip_listeners_never_look_alike_to_a_host() {
    // Two floating-IP rules of one frontend to the same backend port: a backend sees the
    // frontend's address and that port for both.
    let two_rules = |v: &mut Value| {
        props(v, "loadBalancingRules", 0)["enableFloatingIP"] = json!(true);
        let mut r = v["properties"]["loadBalancingRules"][0].clone();
        r["name"] = json!("HTTPAlt");
        r["properties"]["frontendPort"] = json!(8080);
        collection(v, "loadBalancingRules").push(r);
    };
    let e = refuse(BASIC, two_rules);
    assert_names(&e, "loadBalancingRules", "HTTPAlt", "backendPort");
    assert!(e.problem.contains("floating IP") && e.problem.contains("HTTPRule"), "{e}");

    // A floating-IP NAT pool: each member sees the frontend's address and the same port, so no
    // two of them may share a host; here each VM has a host of its own.
    let floating_pool = |v: &mut Value| props(v, "inboundNatPools", 0)["enableFloatingIP"] = json!(true);
    accept(NAT_POOL, floating_pool);
    let e = refuse(NAT_POOL, |v| {
        floating_pool(v);
        props(v, "backendAddressPools", 0)["loadBalancerBackendAddresses"][1]["properties"]["hostAddress"] =
            json!("172.16.10.20");
    });
    assert_names(&e, "inboundNatPools", "SSH-Pool", "backendPort");
    assert!(e.problem.contains("172.16.10.20"), "{e}");
}

#[test]
fn two_members_of_a_pool_on_one_host_need_different_backend_tags() {
    // Two addresses whose 24-bit tags collide (a birthday search over 10.x.y.z).
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0u32..1 << 20)
        .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | i)))
        .find_map(|ip| seen.insert(lb_core::paths::backend_tag(ip), ip).map(|other| (other, ip)))
        .expect("a collision among a million addresses");
    let with = |second_host: &'static str| {
        move |v: &mut Value| {
            let members = &mut props(v, "backendAddressPools", 0)["loadBalancerBackendAddresses"];
            members[0]["properties"]["ipAddress"] = json!(a.to_string());
            members[1]["properties"]["ipAddress"] = json!(b.to_string());
            members[0]["properties"]["hostAddress"] = json!("172.16.10.21");
            members[1]["properties"]["hostAddress"] = json!(second_host);
        }
    };
    let e = refuse(BASIC, with("172.16.10.21"));
    assert_names(&e, "backendAddressPools", "WebServers", "ipAddress");
    assert!(e.problem.contains(&a.to_string()) && e.problem.contains(&b.to_string()), "{e}");
    // On two hosts, the tags never meet.
    accept(BASIC, with("172.16.10.22"));
}
