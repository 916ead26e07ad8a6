//! The configuration thread of a node in etcd mode: it reads the stored load balancers
//! ([`Store::snapshot`]) and, on a MUX, every host's health, hands the control loop their union,
//! then watches the prefix from the revision after that read and hands it each change: a new
//! union whenever a key under `loadbalancers/` changes (one a watch response, however many keys a
//! transaction wrote), the hosts' health whenever a key under `health/` does.
//!
//! etcd unreachable: the node keeps what it runs; the thread tries again with a backoff of at
//! most [`super::MAX_BACKOFF`], and the watch resumes from the revision after the last change it
//! delivered. A compaction past that revision (or a watch etcd ends) means a new snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lb_control::etcd::{EtcdError, Event, EventKind, WatchItem};
use lb_control::store::{HostHealth, Snapshot, Store, StoredLoadBalancer};
use lb_core::config::LoadBalancer;

use super::health::Hosts;
use super::{Backoff, Outage, WATCH_SILENCE};

/// How long a watch read waits before the thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(500);

/// What the configuration thread hands the control loop. Both parts of one update come from one
/// watch response (or one snapshot), so the control loop applies them together.
#[derive(Debug)]
pub struct Update {
    /// A new set of load balancers, at the revision it was read or changed at: its union, or why
    /// the set cannot run.
    pub config: Option<(i64, Result<LoadBalancer, String>)>,
    /// Every host's health (a MUX), when a key under `health/` changed.
    pub hosts: Option<Hosts>,
}

/// What the thread knows of the store.
struct State {
    /// The stored load balancers by key, in key order (the order etcd ranges them in, so that a
    /// union rebuilt from watch events is the one a snapshot gives).
    lbs: BTreeMap<Vec<u8>, StoredLoadBalancer>,
    /// Every host's health by id, with the revision of its key.
    hosts: BTreeMap<String, (i64, HostHealth)>,
    /// The revision the hosts' keys were read at: events up to it are in what was read.
    hosts_read_at: i64,
}

impl State {
    fn hosts(&self) -> Hosts {
        self.hosts.iter().map(|(id, (_, h))| (id.clone(), h.clone())).collect()
    }

    fn union(&self, revision: i64) -> Result<LoadBalancer, String> {
        let snapshot =
            Snapshot { revision, load_balancers: self.lbs.values().cloned().collect(), ..Snapshot::default() };
        snapshot.union().map_err(|e| e.to_string())
    }
}

/// Starts the thread: it runs until `stop`, sending to `tx`; `with_health`: a MUX, which follows
/// the hosts' health too.
pub fn spawn(
    store: Store,
    with_health: bool,
    stop: Arc<AtomicBool>,
    tx: Sender<Update>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("lb-etcd-config".into()).spawn(move || run(&store, with_health, &stop, &tx))
}

fn run(store: &Store, with_health: bool, stop: &AtomicBool, tx: &Sender<Update>) {
    let mut backoff = Backoff::default();
    let mut outage = Outage::new("reading the load balancers");
    while !stop.load(Ordering::Relaxed) {
        let (mut state, first) = match read(store, with_health) {
            Ok(r) => r,
            Err(e) => {
                outage.failed(&e);
                backoff.sleep(stop);
                continue;
            }
        };
        outage.answered();
        backoff.reset();
        let from = first.config.as_ref().map_or(0, |c| c.0) + 1;
        if tx.send(first).is_err() {
            return;
        }
        // A MUX watches the whole prefix, so that the load balancers and the hosts' health come in
        // one stream, in revision order: every MUX sees the same sequence of states.
        let keys = store.keys();
        let watched = if with_health { keys.prefix().to_owned() } else { keys.load_balancers() };
        let mut watch = store.client().watch(&watched, from).with_poll(POLL).with_silence(WATCH_SILENCE);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match watch.next() {
                None => break,
                // Idle after a failure: the watch is connected again (a connection comes first).
                Some(Ok(WatchItem::Idle)) => {
                    outage.answered();
                    backoff.reset();
                }
                Some(Ok(WatchItem::Response(r))) => {
                    outage.answered();
                    backoff.reset();
                    if let Some(update) = apply(store, &mut state, &r.events) {
                        if tx.send(update).is_err() {
                            return;
                        }
                    }
                }
                Some(Err(e @ (EtcdError::Compacted { .. } | EtcdError::WatchCanceled { .. }))) => {
                    eprintln!("lb-dpdk: etcd: {e}: reading the load balancers anew");
                    break;
                }
                Some(Err(e)) => {
                    outage.failed(&e);
                    backoff.sleep(stop);
                }
            }
        }
        backoff.sleep(stop);
    }
}

/// The load balancers (and, for a MUX, the hosts' health) as stored now, and the update that
/// hands them to the control loop.
fn read(store: &Store, with_health: bool) -> Result<(State, Update), EtcdError> {
    let snapshot = store.snapshot()?;
    let lb_prefix = store.keys().load_balancers();
    let lbs = snapshot.load_balancers.iter().map(|s| ((lb_prefix.clone() + &s.name).into_bytes(), s.clone())).collect();
    let mut state = State { lbs, hosts: BTreeMap::new(), hosts_read_at: 0 };
    let mut hosts = None;
    if with_health {
        let prefix = store.keys().health();
        let (revision, kvs) = store.client().range_prefix(&prefix)?;
        for kv in kvs {
            let Some(id) = kv.key.strip_prefix(prefix.as_bytes()) else { continue };
            let id = String::from_utf8_lossy(id).into_owned();
            if let Some(h) = decode_health(&id, &kv.value) {
                state.hosts.insert(id, (kv.mod_revision, h));
            }
        }
        state.hosts_read_at = revision;
        hosts = Some(state.hosts());
    }
    let config = Some((snapshot.revision, snapshot.union().map_err(|e| e.to_string())));
    Ok((state, Update { config, hosts }))
}

/// A host's health key; one that does not decode counts as absent (its members down) and is
/// reported.
fn decode_health(id: &str, value: &[u8]) -> Option<HostHealth> {
    serde_json::from_slice(value)
        .map_err(|e| eprintln!("lb-dpdk: etcd: health of host '{id}' is unreadable, its backends count as down: {e}"))
        .ok()
}

/// Applies one watch response's events; the update they make, if any.
fn apply(store: &Store, state: &mut State, events: &[Event]) -> Option<Update> {
    let lb_prefix = store.keys().load_balancers();
    let health_prefix = store.keys().health();
    let mut config_revision = None;
    let mut hosts_changed = false;
    for e in events {
        let kv = &e.kv;
        if let Some(name) = kv.key.strip_prefix(lb_prefix.as_bytes()) {
            match e.kind {
                EventKind::Put => {
                    let stored = StoredLoadBalancer {
                        name: String::from_utf8_lossy(name).into_owned(),
                        json: String::from_utf8_lossy(&kv.value).into_owned(),
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                    };
                    state.lbs.insert(kv.key.clone(), stored);
                }
                EventKind::Delete => {
                    state.lbs.remove(&kv.key);
                }
            }
            config_revision = config_revision.max(Some(kv.mod_revision));
        } else if let Some(id) = kv.key.strip_prefix(health_prefix.as_bytes()) {
            // The keys as read include every change up to the read.
            if kv.mod_revision <= state.hosts_read_at {
                continue;
            }
            let id = String::from_utf8_lossy(id).into_owned();
            let health = match e.kind {
                EventKind::Put => decode_health(&id, &kv.value),
                EventKind::Delete => None,
            };
            let before = state.hosts.get(&id).map(|(_, h)| h);
            if before != health.as_ref() {
                hosts_changed = true;
            }
            match health {
                Some(h) => state.hosts.insert(id, (kv.mod_revision, h)),
                None => state.hosts.remove(&id),
            };
        }
    }
    let config = config_revision.map(|r| (r, state.union(r)));
    let hosts = hosts_changed.then(|| state.hosts());
    (config.is_some() || hosts.is_some()).then_some(Update { config, hosts })
}
