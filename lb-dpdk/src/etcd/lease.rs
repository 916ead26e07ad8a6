//! The status thread of a node in etcd mode: it holds the node's lease (granted for
//! `leaseSeconds`, renewed every third of it, granted anew when it lapsed) and writes, under it,
//! the node's status at `nodes/<nodeId>` whenever it changes (a change of SNAT ports in use alone
//! at most once a second) and at least every `leaseSeconds`, and a host agent's verdicts at
//! `health/<nodeId>` whenever they change. On stop it revokes the lease: the keys go at once, and
//! MUXes take a stopped host agent's backends out without waiting for the lease to run out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_control::etcd::EtcdError;
use lb_control::store::{HostHealth, NodeStatus, Store, StoreError};

use super::{Backoff, Outage};

/// What the control loop hands the status thread: the node's status, and a host agent's verdicts
/// once it has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The node's status (`updated` is set when it is written).
    pub status: NodeStatus,
    /// A host agent's verdicts (None: nothing to publish yet, or a MUX).
    pub health: Option<HostHealth>,
}

/// The shortest time between two writes of a status that differs in SNAT ports in use alone.
const SNAT_ONLY_PERIOD: Duration = Duration::from_secs(1);
/// How long the thread waits for news before it looks at its timers and its stop flag.
const TICK: Duration = Duration::from_millis(50);

/// Starts the thread; it runs until `stop` (or until the control loop's end of `rx` goes), then
/// revokes the lease.
pub fn spawn(
    store: Store,
    node_id: String,
    lease_secs: u32,
    stop: Arc<AtomicBool>,
    rx: Receiver<Published>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("lb-etcd-status".into()).spawn(move || {
        let mut keeper = Keeper::new(store, node_id, lease_secs);
        keeper.run(&stop, &rx);
    })
}

struct Keeper {
    store: Store,
    node_id: String,
    ttl: i64,
    /// Renewals go this often: a third of the TTL.
    renew_every: Duration,
    /// The lease, while the node holds one.
    lease: Option<i64>,
    /// Whether a lease was granted before (a new one is one that lapsed).
    granted_before: bool,
    next_renewal: Instant,
    latest: Option<Published>,
    /// The status as last written (`updated` 0) and when.
    written_status: Option<(NodeStatus, Instant)>,
    written_health: Option<HostHealth>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    outage: Outage,
}

impl Keeper {
    fn new(store: Store, node_id: String, lease_secs: u32) -> Self {
        Keeper {
            store,
            node_id,
            ttl: i64::from(lease_secs),
            renew_every: Duration::from_millis(u64::from(lease_secs) * 1000 / 3),
            lease: None,
            granted_before: false,
            next_renewal: Instant::now(),
            latest: None,
            written_status: None,
            written_health: None,
            backoff: Backoff::default(),
            retry_at: None,
            outage: Outage::new("writing the node's status"),
        }
    }

    fn run(&mut self, stop: &AtomicBool, rx: &Receiver<Published>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(p) => self.latest = Some(rx.try_iter().last().unwrap_or(p)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            match self.step() {
                Ok(()) => {
                    self.outage.answered();
                    self.backoff.reset();
                    self.retry_at = None;
                }
                // The lease is gone (it lapsed while etcd was out of reach, or was revoked): the
                // next step grants another and writes the keys again under it.
                Err(StoreError::Etcd(EtcdError::LeaseNotFound)) => self.lapsed(),
                Err(e) => {
                    self.outage.failed(&e);
                    self.retry_at = Some(Instant::now() + self.backoff.next_delay());
                }
            }
        }
        if let Some(id) = self.lease.take() {
            if let Err(e) = self.store.client().lease_revoke(id) {
                eprintln!("lb-dpdk: etcd: revoking the node's lease: {e} (its keys go when it runs out)");
            }
        }
    }

    fn lapsed(&mut self) {
        if self.lease.take().is_some() {
            eprintln!("lb-dpdk: etcd: the node's lease lapsed: granting another");
        }
        self.written_status = None;
        self.written_health = None;
    }

    /// Grants or renews the lease when due and writes what changed.
    fn step(&mut self) -> Result<(), StoreError> {
        let now = Instant::now();
        let id = match self.lease {
            Some(id) => {
                if now >= self.next_renewal {
                    if self.store.client().lease_keepalive(id)? <= 0 {
                        return Err(StoreError::Etcd(EtcdError::LeaseNotFound));
                    }
                    self.next_renewal = now + self.renew_every;
                }
                id
            }
            None => {
                let lease = self.store.client().lease_grant(self.ttl)?;
                if self.granted_before {
                    eprintln!("lb-dpdk: etcd: lease {:x} granted ({} s)", lease.id, lease.ttl);
                }
                self.granted_before = true;
                self.lease = Some(lease.id);
                self.next_renewal = now + self.renew_every;
                self.written_status = None;
                self.written_health = None;
                lease.id
            }
        };
        let Some(latest) = &self.latest else { return Ok(()) };
        if self.status_due(&latest.status, now) {
            let status = NodeStatus { updated: unix_now(), ..latest.status.clone() };
            self.store.put_node_status(&self.node_id, &status, Some(id))?;
            self.written_status = Some((latest.status.clone(), now));
        }
        if let Some(health) = latest.health.as_ref().filter(|h| self.written_health.as_ref() != Some(*h)) {
            self.store.put_host_health(&self.node_id, health, Some(id))?;
            self.written_health = Some(health.clone());
        }
        Ok(())
    }

    /// Whether `status` is to be written now: it was never written under this lease, it changed
    /// (SNAT ports alone: not within a second of the last write), or a lease's TTL passed since.
    fn status_due(&self, status: &NodeStatus, now: Instant) -> bool {
        let Some((written, at)) = &self.written_status else { return true };
        let since = now.duration_since(*at);
        if since >= Duration::from_secs(self.ttl.unsigned_abs()) {
            return true;
        }
        let same_but_ports = NodeStatus { snat_ports_in_use: written.snat_ports_in_use, ..status.clone() };
        if &same_but_ports != written {
            return true;
        }
        status.snat_ports_in_use != written.snat_ports_in_use && since >= SNAT_ONLY_PERIOD
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
