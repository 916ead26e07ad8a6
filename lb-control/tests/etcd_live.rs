//! The client and the store against a real etcd (3.4 or later), named by `LB_ETCD_ENDPOINTS`
//! (comma-separated URLs). Without it every test says it is skipped and passes: live tests run
//! in network namespaces a harness sets up, never against the host's loopback. Each test works
//! under a prefix of its own and deletes it at the end.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_control::etcd::{Client, Compare, EtcdError, EventKind, TxnOp, WatchItem};
use lb_control::store::{
    ApplyError, BackendHealth, HostHealth, NodeStatus, Role, Store, StoreError, FIRST_ASSIGNED_VNI,
};

/// A client of the etcd under test, or `None` (and a note) when there is none.
fn client(test: &str) -> Option<Client> {
    match std::env::var("LB_ETCD_ENDPOINTS") {
        Ok(e) if !e.trim().is_empty() => {
            Some(Client::new(e.split(',').map(|s| s.trim().to_owned()).collect(), Duration::from_secs(5)))
        }
        _ => {
            eprintln!("{test}: skipped, LB_ETCD_ENDPOINTS is not set");
            None
        }
    }
}

/// A prefix no other test or run uses.
fn prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("/lb-control-test/{test}-{}-{nanos}/", std::process::id())
}

/// Deletes the prefix when the test ends, passed or not.
struct Cleanup(Client, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.delete_prefix(&self.1);
    }
}

fn lb(name: &str, vip: &str, port: u16, member: &str, vni: Option<u32>) -> String {
    let vni = vni.map(|v| format!(r#""vni": {v},"#)).unwrap_or_default();
    format!(
        r#"{{ "name": "{name}", "properties": {{
          "frontendIPConfigurations": [ {{ "name": "fe", "properties": {{ "publicIPAddress": {{ "ipAddress": "{vip}" }} }} }} ],
          "backendAddressPools": [ {{ "name": "pool", "properties": {{ {vni} "loadBalancerBackendAddresses": [
            {{ "name": "m0", "properties": {{ "ipAddress": "{member}", "hostAddress": "198.18.1.10" }} }} ] }} }} ],
          "loadBalancingRules": [ {{ "name": "rule", "properties": {{
            "frontendIPConfiguration": {{ "id": "fe" }}, "backendAddressPool": {{ "id": "pool" }},
            "protocol": "Tcp", "frontendPort": {port}, "backendPort": {port} }} }} ] }} }}"#
    )
}

#[test]
fn kv_and_transactions() {
    let Some(c) = client("kv_and_transactions") else { return };
    let p = prefix("kv");
    let _cleanup = Cleanup(c.clone(), p.clone());
    let a = format!("{p}a");
    let rev_a = c.put(&a, "1", None).unwrap();
    c.put(format!("{p}b"), "2", None).unwrap();
    let (rev, kvs) = c.range(&a).unwrap();
    assert!(rev >= rev_a);
    assert_eq!((kvs[0].value.as_slice(), kvs[0].mod_revision, kvs[0].create_revision), (b"1".as_slice(), rev_a, rev_a));
    let (_, all) = c.range_prefix(&p).unwrap();
    assert_eq!(all.iter().map(|kv| kv.key_str().into_owned()).collect::<Vec<_>>(), [a.clone(), format!("{p}b")]);

    // A transaction on what was read, then the same one again: the second's compares fail.
    let compares = [Compare::mod_revision(&a, rev_a), Compare::create_revision(format!("{p}c"), 0)];
    let ops = [TxnOp::put(&a, "2"), TxnOp::put(format!("{p}c"), "3")];
    let first = c.txn(&compares, &ops, &[]).unwrap();
    assert!(first.succeeded);
    let second = c.txn(&compares, &ops, &[TxnOp::put(format!("{p}lost"), "x")]).unwrap();
    assert!(!second.succeeded);
    assert!(matches!(second.require_success(), Err(EtcdError::TxnFailed { revision }) if revision > first.revision));
    assert_eq!(c.range(format!("{p}lost")).unwrap().1.len(), 1, "the failure branch ran");
    assert!(c.txn(&[Compare::value(&a, "2")], &[], &[]).unwrap().succeeded);

    assert_eq!(c.delete(&a).unwrap().1, 1);
    assert_eq!(c.delete(&a).unwrap().1, 0);
    assert_eq!(c.delete_prefix(&p).unwrap().1, 3);
    assert!(c.range_prefix(&p).unwrap().1.is_empty());
}

#[test]
fn leases() {
    let Some(c) = client("leases") else { return };
    let p = prefix("lease");
    let _cleanup = Cleanup(c.clone(), p.clone());
    let lease = c.lease_grant(10).unwrap();
    assert!(lease.ttl >= 10);
    let key = format!("{p}node");
    c.put(&key, "up", Some(lease.id)).unwrap();
    assert_eq!(c.range(&key).unwrap().1[0].lease, lease.id);
    let ttl = c.lease_keepalive(lease.id).unwrap();
    assert!((1..=lease.ttl).contains(&ttl), "{ttl}");
    c.lease_revoke(lease.id).unwrap();
    assert!(c.range(&key).unwrap().1.is_empty(), "the key went with its lease");
    assert_eq!(c.lease_keepalive(lease.id).unwrap(), 0);
    assert_eq!(c.lease_revoke(lease.id), Err(EtcdError::LeaseNotFound));
    assert_eq!(c.put(&key, "up", Some(lease.id)), Err(EtcdError::LeaseNotFound));
}

#[test]
fn watch_delivers_changes_in_order_and_idles() {
    let Some(c) = client("watch") else { return };
    let p = prefix("watch");
    let _cleanup = Cleanup(c.clone(), p.clone());
    let (rev, _) = c.range_prefix(&p).unwrap();
    let mut w = c.watch(&p, rev + 1).with_poll(Duration::from_millis(300));
    let writer = c.clone();
    let wp = p.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1000));
        writer.put(format!("{wp}x"), "1", None).unwrap();
        writer.put(format!("{wp}x"), "2", None).unwrap();
        writer.delete(format!("{wp}x")).unwrap();
        writer.put(format!("{p}-outside"), "not watched", None).unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut events, mut idle) = (Vec::new(), 0);
    while events.len() < 3 && Instant::now() < deadline {
        match w.next() {
            Some(Ok(WatchItem::Idle)) => idle += 1,
            Some(Ok(WatchItem::Response(r))) => {
                events.extend(r.events.into_iter().map(|e| (e.kind, String::from_utf8_lossy(&e.kv.value).into_owned())))
            }
            other => panic!("{other:?}"),
        }
    }
    t.join().unwrap();
    assert_eq!(
        events,
        [(EventKind::Put, "1".into()), (EventKind::Put, "2".into()), (EventKind::Delete, String::new())]
    );
    assert!(idle >= 2, "the watch came back while nothing happened: {idle}");
}

#[test]
fn store_apply_list_show_delete() {
    let Some(c) = client("store") else { return };
    let p = prefix("store");
    let _cleanup = Cleanup(c.clone(), p.clone());
    let store = Store::new(c, &p);

    let a = store.apply(&lb("A", "198.18.100.1", 80, "10.0.0.4", None)).unwrap();
    assert!(a.created && !a.unchanged);
    assert_eq!(a.assigned_vnis, [("pool".to_owned(), FIRST_ASSIGNED_VNI)]);
    let b = store.apply(&lb("B", "198.18.100.1", 443, "10.0.1.4", None)).unwrap();
    assert_eq!(b.assigned_vnis, [("pool".to_owned(), FIRST_ASSIGNED_VNI + 1)]);
    // Applied again without a VNI: unchanged, the pool keeps the one it was given.
    let again = store.apply(&lb("A", "198.18.100.1", 80, "10.0.0.4", None)).unwrap();
    assert!(again.unchanged);
    assert_eq!(again.revision, a.revision);
    // Changed: a new revision, same VNI.
    let changed = store.apply(&lb("A", "198.18.100.1", 80, "10.0.0.5", None)).unwrap();
    assert!(!changed.created && changed.revision > b.revision);
    assert_eq!(changed.assigned_vnis, [("pool".to_owned(), FIRST_ASSIGNED_VNI)]);

    match store.apply(&lb("C", "198.18.100.1", 443, "10.0.2.4", None)) {
        Err(ApplyError::FrontendCollision(c)) => {
            assert_eq!((c.load_balancer.as_str(), c.other_load_balancer.as_str()), ("C", "B"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.apply(&lb("C", "198.18.100.3", 80, "10.0.2.4", Some(FIRST_ASSIGNED_VNI))),
        Err(ApplyError::VniCollision { .. })
    ));
    assert!(matches!(store.apply("{}"), Err(ApplyError::Invalid { .. })));

    let snapshot = store.list().unwrap();
    assert_eq!(snapshot.load_balancers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["A", "B"]);
    assert_eq!(snapshot.config_revision, changed.revision);
    let union = snapshot.union().unwrap();
    assert_eq!(union.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["A/rule", "B/rule"]);
    assert_eq!(union.frontends.len(), 1, "one VIP, two load balancers");

    let shown = store.show("B").unwrap();
    assert!(shown.json.contains(&format!(r#""vni":{}"#, FIRST_ASSIGNED_VNI + 1)), "{}", shown.json);
    let deleted = store.delete("B").unwrap();
    assert!(matches!(store.show("B"), Err(StoreError::NotFound { .. })));
    assert!(matches!(store.delete("B"), Err(StoreError::NotFound { .. })));
    assert_eq!(store.list().unwrap().config_revision, deleted, "a delete changes the set");
}

#[test]
fn concurrent_applies_do_not_both_take_one_port() {
    let Some(c) = client("concurrent") else { return };
    let p = prefix("race");
    let _cleanup = Cleanup(c.clone(), p.clone());
    let store = Store::new(c, &p);
    for round in 0..10u8 {
        let vip = format!("198.18.101.{}", round + 1);
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = ["X", "Y"]
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let json = lb(&format!("{n}{round}"), &vip, 80, &format!("10.1.{round}.{}", i + 1), None);
                thread::spawn(move || {
                    barrier.wait();
                    store.apply(&json)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        assert!(results.iter().any(|r| matches!(r, Err(ApplyError::FrontendCollision(_)))), "{results:?}");
    }
    // Every pool got its own VNI.
    let union = store.snapshot().unwrap().union().unwrap();
    let mut vnis: Vec<u32> = union.pools.iter().map(|p| p.vni).collect();
    vnis.sort_unstable();
    vnis.dedup();
    assert_eq!(vnis.len(), 10);
}

#[test]
fn node_status_and_host_health_under_leases() {
    let Some(c) = client("status") else { return };
    let p = prefix("status");
    let _cleanup = Cleanup(c.clone(), p.clone());
    let store = Store::new(c.clone(), &p);
    let applied = store.apply(&lb("A", "198.18.100.1", 80, "10.0.0.4", None)).unwrap();
    let lease = c.lease_grant(10).unwrap();
    let status = NodeStatus {
        role: Role::Mux,
        revision: applied.revision,
        refused: None,
        vips: vec!["198.18.100.1".parse().unwrap()],
        snat_ports_in_use: 0,
        backends: vec![],
        updated: 1,
    };
    store.put_node_status("mux-1", &status, Some(lease.id)).unwrap();
    let health = HostHealth {
        revision: applied.revision,
        backends: vec![BackendHealth {
            address: "10.0.0.4".parse().unwrap(),
            pool: "A/pool".into(),
            probe: None,
            host: None,
            up: true,
        }],
    };
    store.put_host_health("host-1", &health, Some(lease.id)).unwrap();
    assert!(matches!(store.put_node_status("a/b", &status, None), Err(StoreError::InvalidId { .. })));

    let s = store.status().unwrap();
    assert_eq!(s.nodes.len(), 1);
    assert_eq!((s.nodes[0].id.as_str(), s.nodes[0].status.as_ref().unwrap()), ("mux-1", &status));
    assert_eq!(s.hosts[0].health.as_ref().unwrap(), &health);
    assert_eq!(s.snapshot.config_revision, applied.revision);

    c.lease_revoke(lease.id).unwrap();
    let s = store.status().unwrap();
    assert!(s.nodes.is_empty() && s.hosts.is_empty(), "status goes with the lease");
}
