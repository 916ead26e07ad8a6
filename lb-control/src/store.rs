//! The control plane's keys in etcd and the operations on them.
//!
//! Every key is under one prefix (default `/lb/v1/`, so that a schema change can live beside
//! this one):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `loadbalancers/<name>` | the load balancer: Azure's `Microsoft.Network/loadBalancers` resource JSON as [`lb_core::config::json::from_json`] reads it, every pool's `vni` explicit | [`Store::apply`], [`Store::delete`] (`lbctl`) |
//! | `generation` | `{"op": "apply"\|"delete", "name": ..., "updated": <unix secs>}`: its `mod_revision` is the revision of the last change of the set of load balancers | the same transactions |
//! | `nodes/<node-id>` | [`NodeStatus`] | each node, under its own lease |
//! | `health/<host-id>` | [`HostHealth`] | each host agent, under its own lease |
//!
//! Nodes run the [`union`] of every stored load balancer: they read `loadbalancers/`
//! ([`Store::snapshot`]), then watch it from the revision after that read. A node reports the
//! revision of the set it runs; it is current when that revision is at least the store's
//! [`Snapshot::config_revision`]. Status keys live under leases, so a node that stops goes away
//! with its lease.
//!
//! [`Store::apply`] checks and writes in one transaction that compares the `mod_revision` of
//! `generation` (read first), of every load balancer read, and of every key under
//! `loadbalancers/` against the revision of the read (and, for a new name, that it does not exist
//! yet), so two concurrent applies cannot both pass the checks against the same set.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use lb_core::config::json::from_json;
use lb_core::config::{ConfigError, LoadBalancer, Protocol};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::etcd::{Client, Compare, CompareResult, EtcdError, KeyValue, TxnOp};
use crate::union::{union, UnionError};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/lb/v1/";

/// The first VNI assigned to a pool given without one (below are the reserved and the small
/// ones an operator may pick by hand).
pub const FIRST_ASSIGNED_VNI: u32 = 4096;

/// The largest VNI (24 bits, RFC 7348).
const MAX_VNI: u32 = 0x00ff_ffff;

/// How often [`Store::apply`] reads and tries again when another write got in between.
const APPLY_ATTEMPTS: usize = 5;

/// Per-key compares in one transaction, below etcd's default `--max-txn-ops` of 128; with more
/// load balancers, the compares on the prefix and on `generation` stand for them.
const MAX_KEY_COMPARES: usize = 100;

/// The keys of one schema prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys under `prefix` (a `/` is added if it does not end with one).
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    /// The prefix, ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix of every load balancer key (what nodes watch).
    pub fn load_balancers(&self) -> String {
        format!("{}loadbalancers/", self.prefix)
    }

    /// The key of load balancer `name`.
    pub fn load_balancer(&self, name: &str) -> String {
        format!("{}loadbalancers/{name}", self.prefix)
    }

    /// The key whose `mod_revision` is the last change of the set of load balancers.
    pub fn generation(&self) -> String {
        format!("{}generation", self.prefix)
    }

    /// The prefix of every node status.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    /// The key of node `id`'s status.
    pub fn node(&self, id: &str) -> String {
        format!("{}nodes/{id}", self.prefix)
    }

    /// The prefix of every host's health.
    pub fn health(&self) -> String {
        format!("{}health/", self.prefix)
    }

    /// The key of host `id`'s health.
    pub fn host_health(&self, id: &str) -> String {
        format!("{}health/{id}", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

/// A node's role, as its status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A MUX.
    Mux,
    /// A host agent.
    Host,
}

/// A configuration a node would not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The revision of the set of load balancers refused.
    pub revision: i64,
    /// Why (lb-core's error, naming the resource and the field).
    pub error: String,
}

/// One backend's health as a node or a host agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    /// The backend's address (DIP).
    pub address: IpAddr,
    /// Its pool, as the union names it: `<load balancer>/<pool>`.
    pub pool: String,
    /// The probe this verdict is of, as the union names it: `<load balancer>/<probe>` (each
    /// load-balancing rule is steered by its own probe). Absent: the backend's health under
    /// every probe of its pool's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// The underlay address of the backend's host (its `hostAddress`) as the node that says this
    /// has it: a MUX takes a host agent's verdict only on a member it places on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// Whether it takes new flows: a host agent's verdict, `numberOfProbes` applied.
    pub up: bool,
}

/// What a node writes at `nodes/<node-id>`, under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// MUX or host agent.
    pub role: Role,
    /// The revision of the set of load balancers it runs (0: none yet).
    #[serde(default)]
    pub revision: i64,
    /// The last set it refused, if it runs an older one for that reason.
    #[serde(default)]
    pub refused: Option<Refusal>,
    /// The VIPs it announces (a MUX over BGP).
    #[serde(default)]
    pub vips: Vec<IpAddr>,
    /// SNAT ports its connections hold (a host agent).
    #[serde(default)]
    pub snat_ports_in_use: u64,
    /// The backends it sends to or hosts, and their health.
    #[serde(default)]
    pub backends: Vec<BackendHealth>,
    /// When it wrote this, in seconds since the Unix epoch.
    #[serde(default)]
    pub updated: u64,
}

/// What a host agent writes at `health/<host-id>`, under its lease: its verdicts on its own
/// backends, one per (pool, probe, backend), each after `numberOfProbes` as the probe says. MUXes
/// take a member whose host has no such key, or whose host's key does not name it, as down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHealth {
    /// The revision of the set of load balancers whose probes these are.
    #[serde(default)]
    pub revision: i64,
    /// Each probed backend.
    #[serde(default)]
    pub backends: Vec<BackendHealth>,
}

/// A load balancer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLoadBalancer {
    /// Its name (the last segment of its key).
    pub name: String,
    /// Its resource JSON.
    pub json: String,
    /// The revision it was first applied at.
    pub create_revision: i64,
    /// The revision it was last applied at.
    pub mod_revision: i64,
}

impl StoredLoadBalancer {
    /// The model, named as its key (lb-core validates it).
    pub fn parse(&self) -> Result<LoadBalancer, ConfigError> {
        let mut lb = from_json(&self.json)?;
        lb.name.clone_from(&self.name);
        Ok(lb)
    }
}

/// Every stored load balancer at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The store's revision when read: the revision a node running this set reports.
    pub revision: i64,
    /// The revision of the last change of the set (0: never changed).
    pub config_revision: i64,
    /// The load balancers, by name.
    pub load_balancers: Vec<StoredLoadBalancer>,
    /// The `mod_revision` of `generation` (0: absent), which writes to the set compare.
    pub generation: i64,
}

/// Why a snapshot cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// A stored load balancer that lb-core refuses (written past `lbctl`).
    Stored {
        /// Its name.
        name: String,
        /// lb-core's refusal.
        error: ConfigError,
    },
    /// The load balancers cannot run together.
    Union(UnionError),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Stored { name, error } => write!(f, "stored loadBalancer '{name}': {error}"),
            SnapshotError::Union(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl Snapshot {
    /// The one load balancer a node runs for this set.
    pub fn union(&self) -> Result<LoadBalancer, SnapshotError> {
        let lbs = self
            .load_balancers
            .iter()
            .map(|s| s.parse().map_err(|error| SnapshotError::Stored { name: s.name.clone(), error }))
            .collect::<Result<Vec<_>, _>>()?;
        union(&lbs).map_err(SnapshotError::Union)
    }

    /// The stored load balancer `name`.
    pub fn get(&self, name: &str) -> Option<&StoredLoadBalancer> {
        self.load_balancers.iter().find(|s| s.name == name)
    }
}

/// A node's status key, decoded or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node's id.
    pub id: String,
    /// Its status, or why it does not decode.
    pub status: Result<NodeStatus, String>,
}

/// A host's health key, decoded or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The host's id.
    pub id: String,
    /// Its health, or why it does not decode.
    pub health: Result<HostHealth, String>,
}

/// Everything `lbctl status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The stored load balancers.
    pub snapshot: Snapshot,
    /// Every node's status, by id.
    pub nodes: Vec<NodeEntry>,
    /// Every host's health, by id.
    pub hosts: Vec<HostEntry>,
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The load balancer's name.
    pub name: String,
    /// The revision it is stored at.
    pub revision: i64,
    /// Whether the name was new.
    pub created: bool,
    /// Whether the stored JSON was the same already (nothing written).
    pub unchanged: bool,
    /// The VNIs given to pools that had none: `(pool, vni)`.
    pub assigned_vnis: Vec<(String, u32)>,
}

/// Two load balancers' listeners on one frontend address, protocol and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendCollision {
    /// The load balancer applied.
    pub load_balancer: String,
    /// Its listener: `loadBalancingRules 'web'`.
    pub listener: String,
    /// The address.
    pub address: IpAddr,
    /// The protocol and ports taken: `Tcp 80`, `Udp 5000-5010`, `HA ports`.
    pub what: String,
    /// The stored load balancer that has them.
    pub other_load_balancer: String,
    /// Its listener.
    pub other_listener: String,
}

/// Why [`Store::apply`] refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// lb-core refuses the load balancer (JSON or model): names the resource and the field.
    Invalid {
        /// The load balancer's name, if the JSON gives one.
        name: String,
        /// lb-core's refusal.
        error: ConfigError,
    },
    /// Its name cannot be a key: 1 to 80 letters, digits, `_`, `.` and `-`, starting with a
    /// letter or digit, ending with a letter, digit or `_` (Azure's rule for resource names).
    Name {
        /// The name.
        name: String,
    },
    /// One of its listeners takes a frontend address, protocol and port another load balancer's
    /// listener has.
    FrontendCollision(Box<FrontendCollision>),
    /// One of its pools has the VNI of another load balancer's pool.
    VniCollision {
        /// This load balancer.
        load_balancer: String,
        /// Its pool.
        pool: String,
        /// The VNI.
        vni: u32,
        /// The other load balancer.
        other_load_balancer: String,
        /// Its pool.
        other_pool: String,
    },
    /// No VNI is left to assign.
    VniExhausted {
        /// The pool that needs one.
        pool: String,
    },
    /// A stored load balancer lb-core refuses (written past `lbctl`): apply it anew or delete it.
    Stored {
        /// Its name.
        name: String,
        /// lb-core's refusal.
        error: ConfigError,
    },
    /// It cannot run together with the stored ones.
    Union(UnionError),
    /// Other writes kept getting in between the read and the write.
    Conflict {
        /// Attempts made.
        attempts: usize,
    },
    /// etcd failed.
    Etcd(EtcdError),
}

impl ApplyError {
    /// Whether the input is refused (as opposed to etcd failing or being busy).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ApplyError::Etcd(_) | ApplyError::Conflict { .. })
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Invalid { name, error } if name.is_empty() => write!(f, "loadBalancer: {error}"),
            ApplyError::Invalid { name, error } => write!(f, "loadBalancer '{name}': {error}"),
            ApplyError::Name { name } => write!(
                f,
                "loadBalancer '{name}': name: 1 to 80 letters, digits, '_', '.' or '-', starting with a letter or \
                 digit and ending with a letter, digit or '_'"
            ),
            ApplyError::FrontendCollision(c) => write!(
                f,
                "loadBalancer '{}': {}: frontendPort: {} {} is taken by loadBalancer '{}' {}",
                c.load_balancer, c.listener, c.address, c.what, c.other_load_balancer, c.other_listener
            ),
            ApplyError::VniCollision { load_balancer, pool, vni, other_load_balancer, other_pool } => write!(
                f,
                "loadBalancer '{load_balancer}': backendAddressPools '{pool}': vni: {vni} is the VNI of \
                 loadBalancer '{other_load_balancer}' backendAddressPools '{other_pool}'"
            ),
            ApplyError::VniExhausted { pool } => {
                write!(f, "backendAddressPools '{pool}': vni: no VNI is free from {FIRST_ASSIGNED_VNI} up")
            }
            ApplyError::Stored { name, error } => {
                write!(f, "stored loadBalancer '{name}' is refused by lb-core (apply it anew or delete it): {error}")
            }
            ApplyError::Union(e) => e.fmt(f),
            ApplyError::Conflict { attempts } => {
                write!(f, "other writes to the load balancers got in between {attempts} times; try again")
            }
            ApplyError::Etcd(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ApplyError {}

impl From<EtcdError> for ApplyError {
    fn from(e: EtcdError) -> Self {
        ApplyError::Etcd(e)
    }
}

/// Why another store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No load balancer has that name.
    NotFound {
        /// The name.
        name: String,
    },
    /// A node or host id that cannot be a key segment (empty, or holding `/`).
    InvalidId {
        /// The id.
        id: String,
    },
    /// etcd failed.
    Etcd(EtcdError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound { name } => write!(f, "loadBalancer '{name}': not found"),
            StoreError::InvalidId { id } => write!(f, "node id '{id}': empty or holds '/'"),
            StoreError::Etcd(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        StoreError::Etcd(e)
    }
}

/// Whether `name` can be a load balancer's key (see [`ApplyError::Name`]).
pub fn valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    !name.is_empty()
        && name.len() <= 80
        && name.chars().all(ok)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('/')
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The control plane's view of etcd under one prefix.
#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
}

impl Store {
    /// The store under `prefix` (see [`Keys::new`]).
    pub fn new(client: Client, prefix: &str) -> Self {
        Store { client, keys: Keys::new(prefix) }
    }

    /// The etcd client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Every stored load balancer, and the revisions of the set.
    pub fn snapshot(&self) -> Result<Snapshot, EtcdError> {
        // `generation` first: a change between the two reads then changes it after it was read,
        // and the compare on it fails, rather than the change going unseen.
        let (_, generation) = self.client.range(self.keys.generation())?;
        let generation = generation.first().map(|kv| kv.mod_revision).unwrap_or(0);
        let lb_prefix = self.keys.load_balancers();
        let (revision, kvs) = self.client.range_prefix(&lb_prefix)?;
        let load_balancers: Vec<StoredLoadBalancer> = kvs
            .into_iter()
            .filter_map(|kv| {
                let name = kv.key.strip_prefix(lb_prefix.as_bytes())?;
                Some(StoredLoadBalancer {
                    name: String::from_utf8_lossy(name).into_owned(),
                    json: String::from_utf8_lossy(&kv.value).into_owned(),
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                })
            })
            .collect();
        let newest = load_balancers.iter().map(|s| s.mod_revision).max().unwrap_or(0);
        Ok(Snapshot { revision, config_revision: generation.max(newest), load_balancers, generation })
    }

    /// Validates `json_text` (a load balancer resource) with lb-core, gives pools without a `vni`
    /// one, checks it against every other stored load balancer and stores it, atomically. Nothing
    /// is written when it is refused.
    pub fn apply(&self, json_text: &str) -> Result<ApplyOutcome, ApplyError> {
        let name = from_json(json_text).map_err(|error| invalid(json_text, error))?.name;
        if !valid_name(&name) {
            return Err(ApplyError::Name { name });
        }
        // lb-core read it, so it is JSON.
        let value: Value = serde_json::from_str(json_text).unwrap_or_default();
        for _ in 0..APPLY_ATTEMPTS {
            let snapshot = self.snapshot()?;
            let plan = plan(&snapshot, &name, &value)?;
            let key = self.keys.load_balancer(&name);
            let previous = snapshot.get(&name);
            if previous.is_some_and(|p| p.json == plan.json) {
                return Ok(ApplyOutcome {
                    name,
                    revision: previous.map(|p| p.mod_revision).unwrap_or(0),
                    created: false,
                    unchanged: true,
                    assigned_vnis: plan.assigned,
                });
            }
            let mut compares = self.set_compares(&snapshot);
            if previous.is_none() {
                compares.push(Compare::create_revision(&key, 0));
            }
            let success = [TxnOp::put(&key, &plan.json), self.generation_op("apply", &name)];
            let r = self.client.txn(&compares, &success, &[])?;
            if r.succeeded {
                return Ok(ApplyOutcome {
                    name,
                    revision: r.revision,
                    created: previous.is_none(),
                    unchanged: false,
                    assigned_vnis: plan.assigned,
                });
            }
        }
        Err(ApplyError::Conflict { attempts: APPLY_ATTEMPTS })
    }

    /// Compares that hold while the set of load balancers is as `snapshot` read it: `generation`
    /// unchanged, no key under the prefix written since the read (a new one included), and each
    /// key read still at its revision (a deleted one included).
    fn set_compares(&self, snapshot: &Snapshot) -> Vec<Compare> {
        let unchanged = Compare::mod_revision(self.keys.load_balancers(), snapshot.revision + 1);
        let mut compares = vec![
            Compare::mod_revision(self.keys.generation(), snapshot.generation),
            unchanged.with_result(CompareResult::Less).over_prefix(),
        ];
        // Past etcd's limit on compares, `generation` stands for deletes made by `lbctl`.
        if snapshot.load_balancers.len() <= MAX_KEY_COMPARES {
            for s in &snapshot.load_balancers {
                compares.push(Compare::mod_revision(self.keys.load_balancer(&s.name), s.mod_revision));
            }
        }
        compares
    }

    fn generation_op(&self, op: &str, name: &str) -> TxnOp {
        let value = serde_json::json!({ "op": op, "name": name, "updated": now_secs() });
        TxnOp::put(self.keys.generation(), value.to_string())
    }

    /// Deletes load balancer `name`; returns the revision of the delete.
    pub fn delete(&self, name: &str) -> Result<i64, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::NotFound { name: name.into() });
        }
        let key = self.keys.load_balancer(name);
        let exists = Compare::create_revision(&key, 0).with_result(CompareResult::Greater);
        let r = self.client.txn(&[exists], &[TxnOp::delete(&key), self.generation_op("delete", name)], &[])?;
        if r.succeeded {
            Ok(r.revision)
        } else {
            Err(StoreError::NotFound { name: name.into() })
        }
    }

    /// Every stored load balancer (as [`Store::snapshot`]).
    pub fn list(&self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot()?)
    }

    /// Load balancer `name` as stored.
    pub fn show(&self, name: &str) -> Result<StoredLoadBalancer, StoreError> {
        let not_found = || StoreError::NotFound { name: name.into() };
        if !valid_name(name) {
            return Err(not_found());
        }
        let (_, kvs) = self.client.range(self.keys.load_balancer(name))?;
        let kv = kvs.into_iter().next().ok_or_else(not_found)?;
        Ok(StoredLoadBalancer {
            name: name.into(),
            json: String::from_utf8_lossy(&kv.value).into_owned(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        })
    }

    /// The load balancers, every node's status and every host's health.
    pub fn status(&self) -> Result<Status, StoreError> {
        let snapshot = self.snapshot()?;
        let (_, nodes) = self.client.range_prefix(self.keys.nodes())?;
        let (_, hosts) = self.client.range_prefix(self.keys.health())?;
        let id = |kv: &KeyValue, prefix: &str| {
            String::from_utf8_lossy(kv.key.strip_prefix(prefix.as_bytes()).unwrap_or(&kv.key)).into_owned()
        };
        let (np, hp) = (self.keys.nodes(), self.keys.health());
        let nodes = nodes
            .iter()
            .map(|kv| NodeEntry {
                id: id(kv, &np),
                status: serde_json::from_slice(&kv.value).map_err(|e| e.to_string()),
            })
            .collect();
        let hosts = hosts
            .iter()
            .map(|kv| HostEntry {
                id: id(kv, &hp),
                health: serde_json::from_slice(&kv.value).map_err(|e| e.to_string()),
            })
            .collect();
        Ok(Status { snapshot, nodes, hosts })
    }

    /// Writes node `id`'s status, under `lease` (see [`Client::lease_grant`]).
    pub fn put_node_status(&self, id: &str, status: &NodeStatus, lease: Option<i64>) -> Result<i64, StoreError> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId { id: id.into() });
        }
        let json = serde_json::to_string(status).unwrap_or_default();
        Ok(self.client.put(self.keys.node(id), json, lease)?)
    }

    /// Writes host `id`'s health, under `lease`.
    pub fn put_host_health(&self, id: &str, health: &HostHealth, lease: Option<i64>) -> Result<i64, StoreError> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId { id: id.into() });
        }
        let json = serde_json::to_string(health).unwrap_or_default();
        Ok(self.client.put(self.keys.host_health(id), json, lease)?)
    }
}

/// lb-core's refusal of `json_text`, with the load balancer's name if the JSON has one.
fn invalid(json_text: &str, error: ConfigError) -> ApplyError {
    let name = serde_json::from_str::<Value>(json_text)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    ApplyError::Invalid { name, error }
}

/// What to write for one apply.
struct Plan {
    json: String,
    assigned: Vec<(String, u32)>,
}

/// Assigns VNIs and checks `value` (load balancer `name`) against the other stored ones.
fn plan(snapshot: &Snapshot, name: &str, value: &Value) -> Result<Plan, ApplyError> {
    let mut others = Vec::new();
    for s in snapshot.load_balancers.iter().filter(|s| s.name != name) {
        others.push(s.parse().map_err(|error| ApplyError::Stored { name: s.name.clone(), error })?);
    }
    let previous = snapshot.get(name).and_then(|s| s.parse().ok());
    let (value, assigned) = assign_vnis(value, previous.as_ref(), &others)?;
    let json = value.to_string();
    let mut lb = from_json(&json).map_err(|error| invalid(&json, error))?;
    lb.name = name.into();
    check_collisions(&lb, &others)?;
    others.push(lb);
    union(&others).map_err(ApplyError::Union)?;
    Ok(Plan { json, assigned })
}

/// The pools of the resource JSON, mutable.
fn pools_mut(value: &mut Value) -> Option<&mut Vec<Value>> {
    value.get_mut("properties")?.get_mut("backendAddressPools")?.as_array_mut()
}

/// Gives every pool without a `vni` one: the one it had when this load balancer was last
/// applied, if no other load balancer has it since, else the lowest free from
/// [`FIRST_ASSIGNED_VNI`] up.
fn assign_vnis(
    value: &Value,
    previous: Option<&LoadBalancer>,
    others: &[LoadBalancer],
) -> Result<(Value, Vec<(String, u32)>), ApplyError> {
    let mut value = value.clone();
    let mut assigned = Vec::new();
    let Some(pools) = pools_mut(&mut value) else {
        return Ok((value, assigned));
    };
    let taken_by_others: BTreeSet<u32> = others.iter().flat_map(|lb| lb.pools.iter().map(|p| p.vni)).collect();
    let explicit = |p: &Value| p.get("properties").and_then(|p| p.get("vni")).filter(|v| !v.is_null()).cloned();
    let mut used: BTreeSet<u32> = taken_by_others.clone();
    used.extend(pools.iter().filter_map(explicit).filter_map(|v| v.as_u64()).filter_map(|v| u32::try_from(v).ok()));
    let kept: BTreeMap<&str, u32> =
        previous.map(|lb| lb.pools.iter().map(|p| (p.name.as_str(), p.vni)).collect()).unwrap_or_default();
    // Kept VNIs first, so that a new pool does not take the one a later pool had.
    let mut chosen: Vec<Option<u32>> = vec![None; pools.len()];
    for (pool, slot) in pools.iter().zip(chosen.iter_mut()) {
        let name = pool.get("name").and_then(Value::as_str).unwrap_or_default();
        if explicit(pool).is_none() {
            if let Some(&v) = kept.get(name).filter(|v| !used.contains(v)) {
                used.insert(v);
                *slot = Some(v);
            }
        }
    }
    let mut next = FIRST_ASSIGNED_VNI;
    for (pool, slot) in pools.iter_mut().zip(chosen) {
        if explicit(pool).is_some() {
            continue;
        }
        let name = pool.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let vni = match slot {
            Some(v) => v,
            None => {
                while used.contains(&next) {
                    next += 1;
                }
                if next > MAX_VNI {
                    return Err(ApplyError::VniExhausted { pool: name });
                }
                used.insert(next);
                next
            }
        };
        if let Some(props) = pool.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("vni".into(), Value::from(vni));
            assigned.push((name, vni));
        }
    }
    Ok((value, assigned))
}

/// A listener's claim on a frontend address.
struct Claim<'a> {
    lb: &'a str,
    kind: &'static str,
    name: &'a str,
    address: IpAddr,
    protocol: Protocol,
    ports: (u16, u16),
    ha: bool,
}

impl Claim<'_> {
    fn collides(&self, o: &Claim<'_>) -> bool {
        let protocols = self.protocol == o.protocol || self.protocol == Protocol::All || o.protocol == Protocol::All;
        self.address == o.address
            && (self.ha || o.ha || (protocols && self.ports.0 <= o.ports.1 && o.ports.0 <= self.ports.1))
    }

    fn what(&self) -> String {
        match (self.ha, self.ports) {
            (true, _) => "HA ports".into(),
            (false, (a, b)) if a == b => format!("{:?} {a}", self.protocol),
            (false, (a, b)) => format!("{:?} {a}-{b}", self.protocol),
        }
    }

    fn label(&self) -> String {
        format!("{} '{}'", self.kind, self.name)
    }
}

fn claims(lb: &LoadBalancer) -> Vec<Claim<'_>> {
    let address = |f: usize| lb.frontends.get(f).map(|f| f.address);
    let mut out = Vec::new();
    for r in &lb.rules {
        if let Some(address) = address(r.frontend) {
            let ports = (r.frontend_port, r.frontend_port);
            let (kind, ha) = ("loadBalancingRules", r.is_ha_ports());
            out.push(Claim { lb: &lb.name, kind, name: &r.name, address, protocol: r.protocol, ports, ha });
        }
    }
    for r in &lb.nat_rules {
        if let Some(address) = address(r.frontend) {
            let ports = (r.frontend_port, r.frontend_port);
            let kind = "inboundNatRules";
            out.push(Claim { lb: &lb.name, kind, name: &r.name, address, protocol: r.protocol, ports, ha: false });
        }
    }
    for r in &lb.nat_pools {
        if let Some(address) = address(r.frontend) {
            let ports = (r.port_start, r.port_end);
            let kind = "inboundNatPools";
            out.push(Claim { lb: &lb.name, kind, name: &r.name, address, protocol: r.protocol, ports, ha: false });
        }
    }
    out
}

/// Refuses a listener or a VNI of `lb` that another load balancer has.
fn check_collisions(lb: &LoadBalancer, others: &[LoadBalancer]) -> Result<(), ApplyError> {
    for p in &lb.pools {
        for o in others {
            if let Some(op) = o.pools.iter().find(|op| op.vni == p.vni) {
                return Err(ApplyError::VniCollision {
                    load_balancer: lb.name.clone(),
                    pool: p.name.clone(),
                    vni: p.vni,
                    other_load_balancer: o.name.clone(),
                    other_pool: op.name.clone(),
                });
            }
        }
    }
    let mine = claims(lb);
    for o in others {
        for theirs in claims(o) {
            if let Some(c) = mine.iter().find(|c| c.collides(&theirs)) {
                return Err(ApplyError::FrontendCollision(Box::new(FrontendCollision {
                    load_balancer: c.lb.into(),
                    listener: c.label(),
                    address: c.address,
                    what: c.what(),
                    other_load_balancer: theirs.lb.into(),
                    other_listener: theirs.label(),
                })));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
