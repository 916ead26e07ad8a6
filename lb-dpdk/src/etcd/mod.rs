//! A node configured from etcd (the node file's `etcd` section), as Ananta Manager configures
//! MUXes and host agents: the node runs the union of every load balancer stored under the prefix
//! (lb-control's keys), reports its status under a lease, and its backends' health comes from the
//! hosts they run on.
//!
//! Two threads talk to etcd, so that the control loop and the data path never wait on it:
//! - [`watch`]: reads the load balancers (and on a MUX the hosts' health), then follows them;
//!   each change is an [`watch::Update`] the control loop applies as it applies a reload (checked
//!   on a trial engine, then one `Control::Reload` generation for every worker, or the staged
//!   withdrawal of the VIPs it removes first);
//! - [`lease`]: holds the node's lease and writes its status (and a host agent's verdicts).
//!
//! [`EtcdNode`] is the control loop's side: what it applied at which revision, what it refused,
//! the hosts' health (a MUX) or its own verdicts (a host agent), and the status it publishes.
//! [`health`] holds the rules of both (pure functions).

pub mod health;
pub mod lease;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lb_control::etcd::Client;
use lb_control::store::{HostHealth, NodeStatus, Refusal, Store};
use lb_core::config::node::{Etcd, Role};
use lb_core::config::LoadBalancer;
use lb_core::paths::node::MemberHealth;

use crate::probe::{ProbeResult, MAX_PROBE_TIMEOUT};
use crate::worker::WorkerHandle;

use health::{HostVerdicts, Hosts};
use lease::Published;
use watch::Update;

/// The longest wait before etcd is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The first wait.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long each call to etcd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A watch that hears nothing for this long (not even another node's status) connects again:
/// the member it is on may be cut off from the others.
const WATCH_SILENCE: Duration = Duration::from_secs(10);
/// How often the control loop looks at what the workers run and publishes the status.
const STATUS_TICK: Duration = Duration::from_millis(100);
/// How long a host agent that starts waits for a first result on each of its backends before it
/// publishes its verdicts anyway (those it has): every prober probes at once when it starts and
/// waits at most this long less a second for its answer.
const FIRST_VERDICTS_BOUND: Duration = Duration::from_secs(MAX_PROBE_TIMEOUT.as_secs() + 1);

/// Doubling waits between attempts, from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`].
#[derive(Debug, Default)]
pub struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// The wait before the next attempt (each call doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next.unwrap_or(FIRST_BACKOFF);
        self.next = Some((d * 2).min(MAX_BACKOFF));
        d
    }

    /// Sleeps [`Backoff::next_delay`], or until `stop`.
    pub fn sleep(&mut self, stop: &AtomicBool) {
        let until = Instant::now() + self.next_delay();
        while !stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// An attempt succeeded: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// Says once that etcd stopped answering, and once that it answers again.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    down: bool,
}

impl Outage {
    /// An outage of `what` (`reading the load balancers`, ...).
    pub fn new(what: &'static str) -> Self {
        Outage { what, down: false }
    }

    /// An attempt failed.
    pub fn failed(&mut self, e: &dyn fmt::Display) {
        if !self.down {
            eprintln!("lb-dpdk: etcd: {}: {e}; trying again (the node runs what it has)", self.what);
            self.down = true;
        }
    }

    /// An attempt succeeded.
    pub fn answered(&mut self) {
        if self.down {
            eprintln!("lb-dpdk: etcd: {}: etcd answers again", self.what);
            self.down = false;
        }
    }
}

/// The control loop's side of a node in etcd mode.
pub struct EtcdNode {
    role: Role,
    underlay: IpAddr,
    updates: Receiver<Update>,
    publish: Sender<Published>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The etcd revision of each configuration the control loop numbered (its generation).
    revisions: BTreeMap<u64, i64>,
    /// The revision last logged as in force.
    in_force: i64,
    /// The last configuration refused, while the node runs an older one.
    refused: Option<Refusal>,
    /// A MUX: every host's health, as last read.
    hosts: Hosts,
    /// A MUX: the hosts' health changed since it was last derived.
    hosts_changed: bool,
    /// A MUX: the health it applies (derived for the configuration in force).
    applied: Vec<MemberHealth>,
    /// A host agent: its verdicts on its own backends.
    verdicts: HostVerdicts,
    /// A host agent: when the first configuration from etcd took effect (verdicts are published
    /// from then on, once complete or after [`FIRST_VERDICTS_BOUND`]).
    configured_at: Option<Instant>,
    last_tick: Option<Instant>,
    last_published: Option<Published>,
}

impl EtcdNode {
    /// Starts the configuration and status threads. `role` and `underlay`: this node's;
    /// `no_probes`: a host agent that runs no probes publishes its backends as up.
    pub fn start(etcd: &Etcd, role: Role, underlay: IpAddr, no_probes: bool) -> Result<EtcdNode, String> {
        let client = Client::new(etcd.endpoints.clone(), CALL_TIMEOUT);
        let store = Store::new(client, &etcd.prefix);
        let stop = Arc::new(AtomicBool::new(false));
        let (update_tx, updates) = mpsc::channel();
        let (publish, publish_rx) = mpsc::channel();
        let mut threads = Vec::new();
        let spawned = watch::spawn(store.clone(), role == Role::Mux, stop.clone(), update_tx);
        threads.push(spawned.map_err(|e| format!("etcd: cannot start the configuration thread: {e}"))?);
        let spawned = lease::spawn(store, etcd.node_id.clone(), etcd.lease_secs, stop.clone(), publish_rx);
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(format!("etcd: cannot start the status thread: {e}"));
            }
        }
        eprintln!(
            "lb-dpdk: etcd: node '{}' reads the load balancers under {} from {} (lease {} s)",
            etcd.node_id,
            etcd.prefix,
            etcd.endpoints.join(", "),
            etcd.lease_secs
        );
        Ok(EtcdNode {
            role,
            underlay,
            updates,
            publish,
            stop,
            threads,
            revisions: BTreeMap::from([(0, 0)]),
            in_force: 0,
            refused: None,
            hosts: Hosts::new(),
            hosts_changed: false,
            applied: Vec::new(),
            verdicts: HostVerdicts::new(no_probes),
            configured_at: None,
            last_tick: None,
            last_published: None,
        })
    }

    /// Takes what the configuration thread sent: keeps the hosts' health, and returns the newest
    /// set of load balancers if one came (several in a row: the last is the one to run).
    pub fn take_config(&mut self) -> Option<(i64, Result<LoadBalancer, String>)> {
        let mut config = None;
        for u in self.updates.try_iter() {
            if let Some(h) = u.hosts {
                self.hosts = h;
                self.hosts_changed = true;
            }
            if u.config.is_some() {
                config = u.config;
            }
        }
        config
    }

    /// The configuration of `revision` is refused (the union cannot be built, or the trial engine
    /// or a worker refuses it): the node runs what it runs and says why.
    pub fn refuse(&mut self, revision: i64, error: String) {
        eprintln!("lb-dpdk: etcd: revision {revision} refused, running configuration kept: {error}");
        self.refused = Some(Refusal { revision, error });
    }

    /// The health a MUX applies with `lb` (derived from the hosts' keys); none on a host agent.
    pub fn health_for(&mut self, lb: &LoadBalancer) -> Vec<MemberHealth> {
        match self.role {
            Role::Mux => {
                self.hosts_changed = false;
                health::derive(lb, &self.hosts)
            }
            Role::Host => Vec::new(),
        }
    }

    /// The control loop applied `lb`, of `revision`, as its configuration number `generation`,
    /// with `health` (a MUX).
    pub fn applied(&mut self, generation: u64, revision: i64, lb: &LoadBalancer, health: Vec<MemberHealth>) {
        self.revisions.insert(generation, revision);
        self.applied = health;
        self.verdicts.reconfigure(lb, self.underlay);
        self.configured_at.get_or_insert_with(Instant::now);
    }

    /// The set of `revision` is the one running as configuration `generation` already.
    pub fn unchanged(&mut self, generation: u64, revision: i64) {
        let r = self.revisions.entry(generation).or_insert(revision);
        *r = (*r).max(revision);
        self.configured_at.get_or_insert_with(Instant::now);
    }

    /// A MUX: the health to hand the workers for `lb`, when the hosts' keys changed it.
    pub fn health_change(&mut self, lb: &LoadBalancer) -> Option<Vec<MemberHealth>> {
        if self.role != Role::Mux || !self.hosts_changed {
            return None;
        }
        let health = self.health_for(lb);
        if health == self.applied {
            return None;
        }
        // The same configuration: the same members in the same order.
        for now in health.iter().zip(&self.applied).filter(|(n, w)| n.up != w.up).map(|(n, _)| n) {
            let (Some(p), Some(q)) = (lb.pools.get(now.pool), lb.probes.get(now.probe)) else { continue };
            let Some(b) = p.backends.get(now.member) else { continue };
            let verdict = if now.up { "up" } else { "down (its host says so, or no host reports it)" };
            eprintln!(
                "lb-dpdk: etcd: {} {} ({}, host {}) for probe {}: {verdict}",
                p.name, b.name, b.address, b.host, q.name
            );
        }
        self.applied = health.clone();
        Some(health)
    }

    /// The health a MUX applies, by (pool, member) over every probe (what its speaker waits for).
    pub fn applied_by_member(&self) -> BTreeMap<(usize, usize), bool> {
        health::by_member(&self.applied)
    }

    /// A host agent's probe result on `lb`, the configuration in force.
    pub fn probe_result(&mut self, lb: &LoadBalancer, r: &ProbeResult) {
        self.verdicts.record(lb, r.pool, r.probe, r.member, r.success);
    }

    /// Every [`STATUS_TICK`]: logs a revision the workers all run now, takes in their refusals,
    /// and hands the status thread the node's status (and a host agent's verdicts).
    /// `generation`: the control loop's configuration number, of `lb`; `vips`: what the speaker
    /// announces.
    pub fn tick(&mut self, lb: &LoadBalancer, generation: u64, workers: &[WorkerHandle], vips: Vec<IpAddr>) {
        if self.last_tick.is_some_and(|t| t.elapsed() < STATUS_TICK) {
            return;
        }
        self.last_tick = Some(Instant::now());
        let mut running = generation;
        let mut snat_ports = 0;
        let mut worker_refusal: Option<(u64, String)> = None;
        for w in workers {
            let Ok(s) = w.stats.lock() else { continue };
            running = running.min(s.generation);
            snat_ports += s.snat_ports;
            if let Some((g, e)) = s.refused.as_ref().filter(|(g, _)| *g > s.generation) {
                if worker_refusal.as_ref().is_none_or(|(h, _)| g > h) {
                    worker_refusal = Some((*g, e.clone()));
                }
            }
        }
        let revision = self.revision_of(running);
        if revision > self.in_force {
            eprintln!("lb-dpdk: etcd: revision {revision} in force");
            self.in_force = revision;
        }
        if let Some((g, error)) = worker_refusal {
            let r = self.revision_of(g);
            if r > revision && self.refused.as_ref().is_none_or(|f| f.revision < r) {
                self.refuse(r, format!("refused by a worker: {error}"));
            }
        }
        if self.refused.as_ref().is_some_and(|f| f.revision <= revision) {
            self.refused = None;
        }
        let (backends, health) = match self.role {
            Role::Mux => (health::as_reported(lb, &self.applied), None),
            Role::Host => {
                let backends = self.verdicts.published(lb, self.underlay);
                let ready = self
                    .configured_at
                    .is_some_and(|t| self.verdicts.complete(lb, self.underlay) || t.elapsed() >= FIRST_VERDICTS_BOUND);
                let revision = self.revision_of(generation);
                let health = ready.then(|| HostHealth { revision, backends: backends.clone() });
                (backends, health)
            }
        };
        // Once published, verdicts stay published (a new configuration's are complete again only
        // once its new members have answered).
        let health = health.or_else(|| self.last_published.as_ref().and_then(|p| p.health.clone()));
        let status = NodeStatus {
            role: match self.role {
                Role::Mux => lb_control::store::Role::Mux,
                Role::Host => lb_control::store::Role::Host,
            },
            revision,
            refused: self.refused.clone(),
            vips,
            snat_ports_in_use: snat_ports,
            backends,
            updated: 0,
        };
        let p = Published { status, health };
        if self.last_published.as_ref() != Some(&p) {
            let _ = self.publish.send(p.clone());
            self.last_published = Some(p);
        }
        self.revisions = self.revisions.split_off(&running);
    }

    /// The etcd revision of configuration `generation` (the newest numbered at or before it).
    fn revision_of(&self, generation: u64) -> i64 {
        self.revisions.range(..=generation).next_back().map_or(0, |(_, r)| *r)
    }

    /// Stops both threads; the status thread revokes the lease, so the node's keys go at once.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.publish);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
