use super::*;

/// A load balancer with one public frontend, one pool per `(pool, vni)` (each with one member,
/// whose address depends on the name, the port and the pool), and a TCP rule on `port` to the
/// first pool.
fn lb_json(name: &str, vip: &str, port: u16, pools: &[(&str, Option<u32>)]) -> String {
    let first = pools.first().map(|p| p.0).unwrap_or_default();
    let pools: Vec<String> = pools
        .iter()
        .enumerate()
        .map(|(i, (pool, vni))| {
            let vni = vni.map(|v| format!(r#""vni": {v},"#)).unwrap_or_default();
            format!(
                r#"{{ "name": "{pool}", "properties": {{ {vni} "loadBalancerBackendAddresses": [
                  {{ "name": "m", "properties": {{ "ipAddress": "10.{port_hi}.{i}.{host}", "hostAddress": "198.18.1.10" }} }} ] }} }}"#,
                port_hi = port % 256,
                host = name.bytes().next().unwrap_or(1)
            )
        })
        .collect();
    format!(
        r#"{{ "name": "{name}", "properties": {{
          "frontendIPConfigurations": [ {{ "name": "fe", "properties": {{ "publicIPAddress": {{ "ipAddress": "{vip}" }} }} }} ],
          "backendAddressPools": [ {pools} ],
          "loadBalancingRules": [ {{ "name": "rule", "properties": {{
            "frontendIPConfiguration": {{ "id": "fe" }}, "backendAddressPool": {{ "id": "{first}" }},
            "protocol": "Tcp", "frontendPort": {port}, "backendPort": {port} }} }} ] }} }}"#,
        pools = pools.join(","),
    )
}

fn stored(name: &str, json: &str, revision: i64) -> StoredLoadBalancer {
    StoredLoadBalancer { name: name.into(), json: json.into(), create_revision: revision, mod_revision: revision }
}

fn snapshot(lbs: Vec<StoredLoadBalancer>) -> Snapshot {
    Snapshot { revision: 100, config_revision: 99, load_balancers: lbs, generation: 99 }
}

/// Applies `json` to the snapshot as [`Store::apply`] does before writing.
fn plan_for(s: &Snapshot, json: &str) -> Result<Plan, ApplyError> {
    let name = from_json(json).map_err(|error| invalid(json, error))?.name;
    plan(s, &name, &serde_json::from_str(json).unwrap())
}

fn vnis(json: &str) -> Vec<u32> {
    from_json(json).unwrap().pools.iter().map(|p| p.vni).collect()
}

#[test]
fn pools_without_a_vni_get_the_lowest_free_one() {
    let a = lb_json("A", "198.18.100.1", 80, &[("web", Some(4096)), ("api", Some(4098))]);
    let s = snapshot(vec![stored("A", &a, 5)]);
    let b = lb_json("B", "198.18.100.2", 80, &[("x", None), ("y", Some(4097)), ("z", None)]);
    let p = plan_for(&s, &b).unwrap();
    assert_eq!(vnis(&p.json), [4099, 4097, 4100]);
    assert_eq!(p.assigned, [("x".to_owned(), 4099), ("z".to_owned(), 4100)]);
    // The stored JSON carries the VNIs explicitly, and is what lb-core reads.
    let stored_json: Value = serde_json::from_str(&p.json).unwrap();
    assert_eq!(stored_json["properties"]["backendAddressPools"][0]["properties"]["vni"], 4099);
}

#[test]
fn a_reapplied_pool_keeps_its_vni() {
    let before = lb_json("A", "198.18.100.1", 80, &[("web", Some(7000)), ("api", Some(4096))]);
    let other = lb_json("B", "198.18.100.2", 80, &[("x", Some(4097))]);
    let s = snapshot(vec![stored("A", &before, 5), stored("B", &other, 6)]);
    let again = lb_json("A", "198.18.100.1", 80, &[("web", None), ("api", None), ("new", None)]);
    let p = plan_for(&s, &again).unwrap();
    assert_eq!(vnis(&p.json), [7000, 4096, 4098]);

    // A kept VNI another load balancer has taken since is given up for a free one.
    let taker = lb_json("B", "198.18.100.2", 80, &[("x", Some(7000))]);
    let s = snapshot(vec![stored("A", &before, 5), stored("B", &taker, 6)]);
    let p = plan_for(&s, &again).unwrap();
    assert_eq!(vnis(&p.json), [4097, 4096, 4098]);
}

#[test]
fn collisions_with_other_load_balancers_name_both() {
    let a = lb_json("A", "198.18.100.1", 80, &[("web", Some(4096))]);
    let s = snapshot(vec![stored("A", &a, 5)]);

    let same_port = lb_json("B", "198.18.100.1", 80, &[("pool", None)]);
    match plan_for(&s, &same_port) {
        Err(e @ ApplyError::FrontendCollision(_)) => assert_eq!(
            e.to_string(),
            "loadBalancer 'B': loadBalancingRules 'rule': frontendPort: 198.18.100.1 Tcp 80 is taken by \
             loadBalancer 'A' loadBalancingRules 'rule'"
        ),
        other => panic!("{:?}", other.map(|p| p.json)),
    }
    // Another port of the same VIP runs beside it.
    assert!(plan_for(&s, &lb_json("B", "198.18.100.1", 443, &[("pool", None)])).is_ok());

    let same_vni = lb_json("B", "198.18.100.2", 80, &[("pool", Some(4096))]);
    match plan_for(&s, &same_vni) {
        Err(e @ ApplyError::VniCollision { .. }) => assert_eq!(
            e.to_string(),
            "loadBalancer 'B': backendAddressPools 'pool': vni: 4096 is the VNI of loadBalancer 'A' \
             backendAddressPools 'web'"
        ),
        other => panic!("{:?}", other.map(|p| p.json)),
    }
    // Re-applying A itself collides with nothing.
    assert!(plan_for(&s, &a).is_ok());
}

#[test]
fn conflicts_only_the_union_sees_are_refused() {
    // Both send to port 80 of one backend without floating IP, from different VIPs.
    let a = lb_json("A", "198.18.100.1", 80, &[("web", Some(4096))]);
    let s = snapshot(vec![stored("A", &a, 5)]);
    let b = a.replace(r#""A""#, r#""B""#).replace("198.18.100.1", "198.18.100.2").replace("4096", "4097");
    match plan_for(&s, &b) {
        Err(ApplyError::Union(UnionError::Invalid(e))) => {
            assert_eq!((e.kind, e.name.as_str(), e.field), ("loadBalancingRules", "B/rule", "backendPort"))
        }
        other => panic!("{:?}", other.map(|p| p.json)),
    }
}

#[test]
fn a_stored_load_balancer_lb_core_refuses_blocks_others_not_itself() {
    let a = lb_json("A", "198.18.100.1", 80, &[("web", Some(4096))]);
    let s = snapshot(vec![stored("Broken", "{", 5)]);
    assert!(matches!(plan_for(&s, &a), Err(ApplyError::Stored { name, .. }) if name == "Broken"));
    let fixed = lb_json("Broken", "198.18.100.1", 80, &[("web", None)]);
    assert!(plan_for(&s, &fixed).is_ok());
}

#[test]
fn snapshot_union_names_resources_by_load_balancer() {
    let a = lb_json("A", "198.18.100.1", 80, &[("web", Some(4096))]);
    let b = lb_json("B", "198.18.100.2", 81, &[("web", Some(4097))]);
    // The key's name wins over the JSON's.
    let s = snapshot(vec![stored("A", &a, 5), stored("Bee", &b, 6)]);
    let u = s.union().unwrap();
    assert_eq!(u.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["A/web", "Bee/web"]);
    let broken = snapshot(vec![stored("A", &a, 5), stored("X", "[]", 6)]);
    assert!(matches!(broken.union(), Err(SnapshotError::Stored { name, .. }) if name == "X"));
}

#[test]
fn names() {
    for ok in ["a", "WebLB", "web-lb.v2_", "A1"] {
        assert!(valid_name(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "a/b", "a b", "é", &"a".repeat(81), ".a"] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn keys() {
    let k = Keys::new("/lb/v1");
    assert_eq!(k.prefix(), "/lb/v1/");
    assert_eq!(k.load_balancer("web"), "/lb/v1/loadbalancers/web");
    assert_eq!(k.node("mux-1"), "/lb/v1/nodes/mux-1");
    assert_eq!(k.host_health("host-1"), "/lb/v1/health/host-1");
    assert_eq!(k.generation(), "/lb/v1/generation");
    assert_eq!(Keys::default().load_balancers(), "/lb/v1/loadbalancers/");
}

#[test]
fn node_status_json() {
    let s = NodeStatus {
        role: Role::Mux,
        revision: 42,
        refused: Some(Refusal { revision: 43, error: "loadBalancingRules 'A/r': frontendPort: ...".into() }),
        vips: vec!["198.18.100.1".parse().unwrap()],
        snat_ports_in_use: 3,
        backends: vec![BackendHealth {
            address: "10.0.0.4".parse().unwrap(),
            pool: "A/web".into(),
            probe: None,
            host: None,
            up: true,
        }],
        updated: 1_700_000_000,
    };
    let json: Value = serde_json::to_value(&s).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "role": "mux", "revision": 42,
            "refused": {"revision": 43, "error": "loadBalancingRules 'A/r': frontendPort: ..."},
            "vips": ["198.18.100.1"], "snatPortsInUse": 3,
            "backends": [{"address": "10.0.0.4", "pool": "A/web", "up": true}],
            "updated": 1_700_000_000u64,
        })
    );
    assert_eq!(serde_json::from_value::<NodeStatus>(json).unwrap(), s);
    let none = serde_json::to_value(NodeStatus { refused: None, ..s }).unwrap();
    assert_eq!(none["refused"], Value::Null);
    // A minimal status decodes; an unknown role does not.
    let min: NodeStatus = serde_json::from_str(r#"{"role":"host"}"#).unwrap();
    assert_eq!((min.role, min.revision, min.vips.len()), (Role::Host, 0, 0));
    assert!(serde_json::from_str::<NodeStatus>(r#"{"role":"router"}"#).is_err());
}

#[test]
fn host_health_json() {
    let h = HostHealth {
        revision: 7,
        backends: vec![BackendHealth {
            address: "10.0.0.5".parse().unwrap(),
            pool: "A/web".into(),
            probe: Some("A/http".into()),
            host: Some("172.16.10.20".parse().unwrap()),
            up: false,
        }],
    };
    let json = serde_json::to_value(&h).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"revision": 7, "backends": [
            {"address": "10.0.0.5", "pool": "A/web", "probe": "A/http", "host": "172.16.10.20", "up": false}]})
    );
    assert_eq!(serde_json::from_value::<HostHealth>(json).unwrap(), h);
    // Without a probe and a host: the backend's health over every probe, wherever it runs.
    let plain: HostHealth =
        serde_json::from_str(r#"{"revision":7,"backends":[{"address":"10.0.0.5","pool":"A/web","up":true}]}"#).unwrap();
    assert_eq!((plain.backends[0].probe.as_deref(), plain.backends[0].host, plain.backends[0].up), (None, None, true));
}

#[test]
fn refusals_name_the_load_balancer() {
    let bad = r#"{"name":"x","properties":{"probes":[{"name":"p","properties":{"protocol":"Tcp","port":0}}]}}"#;
    let e = plan_for(&snapshot(vec![]), bad).map(|p| p.json).unwrap_err();
    assert_eq!(e.to_string(), "loadBalancer 'x': probes 'p': port: must be 1..=65535");
    assert!(plan_for(&snapshot(vec![]), "{").is_err());
}

#[test]
fn apply_errors_sort_refusals_from_failures() {
    assert!(ApplyError::Name { name: "a/b".into() }.is_refusal());
    assert!(!ApplyError::Conflict { attempts: 5 }.is_refusal());
    assert!(!ApplyError::Etcd(EtcdError::Unavailable { tried: vec![] }).is_refusal());
}
