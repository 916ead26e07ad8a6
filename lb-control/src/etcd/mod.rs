//! A small blocking etcd v3 client over etcd's JSON gRPC gateway (etcd: "gRPC gateway",
//! <https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/>): HTTP/1.1 POSTs of JSON to `/v3/kv/*`,
//! `/v3/lease/*` and `/v3/watch`, so that a node needs neither an async runtime nor gRPC.
//!
//! Each call tries the endpoints in turn, from the one that answered last, and moves on when one
//! does not answer (connection refused, a timeout, HTTP 503, gRPC `Unavailable`). A write whose
//! answer is lost may so be sent twice; [`Client::txn`] guarded by compares is how a caller makes
//! a write safe to repeat. Nothing a server sends makes the client panic: anything unexpected is
//! an [`EtcdError`].

mod watch;
pub mod wire;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use watch::{Watch, WatchItem};
use wire::b64;
pub use wire::prefix_end;

/// The largest response body read, beyond which the response is refused: far above any range
/// the control plane reads (etcd's own request limit is 1.5 MiB a value).
const MAX_BODY: u64 = 256 << 20;

/// What went wrong talking to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint answered; each entry is `endpoint: why`.
    Unavailable {
        /// The endpoints tried and what each did.
        tried: Vec<String>,
    },
    /// An endpoint answered with an HTTP error other than "unavailable".
    Http {
        /// HTTP status.
        status: u16,
        /// The body (the gateway's `{"error", "message", "code"}` JSON, usually).
        body: String,
    },
    /// A response that is not what the API documents.
    Decode {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A watch started at a revision etcd has compacted away: read the keys anew and watch from
    /// the revision of that read.
    Compacted {
        /// The oldest revision etcd still has.
        compact_revision: i64,
    },
    /// A transaction's compares did not hold.
    TxnFailed {
        /// The store's revision when it was evaluated.
        revision: i64,
    },
    /// The lease named is gone (expired or revoked).
    LeaseNotFound,
    /// The server ended a watch for another reason than compaction.
    WatchCanceled {
        /// etcd's reason, or the stream's error message.
        reason: String,
    },
}

impl EtcdError {
    /// Whether no etcd endpoint could be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EtcdError::Unavailable { .. })
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Unavailable { tried } if tried.is_empty() => write!(f, "etcd unavailable: no endpoints"),
            EtcdError::Unavailable { tried } => write!(f, "etcd unavailable: {}", tried.join("; ")),
            EtcdError::Http { status, body } => match wire::error_body(body.as_bytes()) {
                Some((code, message)) => write!(f, "etcd answered HTTP {status}: {message} (gRPC code {code})"),
                None => write!(f, "etcd answered HTTP {status}: {}", body.trim()),
            },
            EtcdError::Decode { what, detail } => write!(f, "etcd sent a malformed {what}: {detail}"),
            EtcdError::Compacted { compact_revision } => {
                write!(f, "etcd has compacted the revisions watched (oldest kept: {compact_revision})")
            }
            EtcdError::TxnFailed { revision } => write!(f, "etcd transaction's compares failed at revision {revision}"),
            EtcdError::LeaseNotFound => write!(f, "etcd lease not found (expired or revoked)"),
            EtcdError::WatchCanceled { reason } => write!(f, "etcd canceled the watch: {reason}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// A key and its value as stored, with its revisions (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in a delete event).
    pub value: Vec<u8>,
    /// Revision of the key's creation (0 in a delete event).
    pub create_revision: i64,
    /// Revision of its last change (of the delete, in a delete event).
    pub mod_revision: i64,
    /// Number of changes since its creation.
    pub version: i64,
    /// The lease it is attached to, 0 for none.
    pub lease: i64,
}

impl KeyValue {
    /// The key as text (invalid UTF-8 replaced).
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
}

/// How a compare relates the stored value to the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// Stored == given.
    Equal,
    /// Stored > given.
    Greater,
    /// Stored < given.
    Less,
    /// Stored != given.
    NotEqual,
}

/// What a compare looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The revision of the key's last change (0 for a key that does not exist).
    ModRevision(i64),
    /// The revision of its creation (0 for a key that does not exist).
    CreateRevision(i64),
    /// Its number of changes.
    Version(i64),
    /// Its value.
    Value(Vec<u8>),
}

/// One condition of a transaction (etcd's `Compare`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// With a range end, every key in `[key, range_end)` must satisfy it.
    pub range_end: Option<Vec<u8>>,
    /// The relation.
    pub result: CompareResult,
    /// What is compared, with the given value.
    pub target: CompareTarget,
}

impl Compare {
    /// The key's last change was at `revision` (0: the key does not exist).
    pub fn mod_revision(key: impl AsRef<[u8]>, revision: i64) -> Self {
        Compare {
            key: key.as_ref().to_vec(),
            range_end: None,
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// The key was created at `revision` (0: the key does not exist).
    pub fn create_revision(key: impl AsRef<[u8]>, revision: i64) -> Self {
        Compare {
            key: key.as_ref().to_vec(),
            range_end: None,
            result: CompareResult::Equal,
            target: CompareTarget::CreateRevision(revision),
        }
    }

    /// The key holds `value`.
    pub fn value(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        Compare {
            key: key.as_ref().to_vec(),
            range_end: None,
            result: CompareResult::Equal,
            target: CompareTarget::Value(value.as_ref().to_vec()),
        }
    }

    /// The same condition with another relation.
    pub fn with_result(mut self, result: CompareResult) -> Self {
        self.result = result;
        self
    }

    /// The same condition over every key that starts with this compare's key.
    pub fn over_prefix(mut self) -> Self {
        self.range_end = Some(prefix_end(&self.key));
        self
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Put `value` at `key`, attached to a lease or not.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease, if any.
        lease: Option<i64>,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Delete every key that starts with `prefix`.
    DeletePrefix {
        /// The prefix.
        prefix: Vec<u8>,
    },
}

impl TxnOp {
    /// A put without a lease.
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        TxnOp::Put { key: key.as_ref().to_vec(), value: value.as_ref().to_vec(), lease: None }
    }

    /// A delete of one key.
    pub fn delete(key: impl AsRef<[u8]>) -> Self {
        TxnOp::Delete { key: key.as_ref().to_vec() }
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and the success operations ran).
    pub succeeded: bool,
    /// The store's revision after it.
    pub revision: i64,
}

impl TxnResponse {
    /// The revision, or [`EtcdError::TxnFailed`] if the compares did not hold.
    pub fn require_success(self) -> Result<i64, EtcdError> {
        if self.succeeded {
            Ok(self.revision)
        } else {
            Err(EtcdError::TxnFailed { revision: self.revision })
        }
    }
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: i64,
    /// Its TTL in seconds, as granted.
    pub ttl: i64,
}

/// Whether a change created or updated a key, or deleted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key as changed (for a delete: the key and the revision of the delete).
    pub kv: KeyValue,
}

/// One message of a watch: events, or none (a progress notification, saying the store reached
/// `revision` with nothing new under the watched prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    /// The store's revision when it was sent.
    pub revision: i64,
    /// The changes, in revision order.
    pub events: Vec<Event>,
}

/// A blocking etcd client over the gateway; cheap to clone (clones share the agent and which
/// endpoint answered last).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    timeout: Duration,
    agent: ureq::Agent,
    /// The endpoint that answered last: calls start there.
    preferred: AtomicUsize,
}

/// What one endpoint did with a request.
pub(crate) enum Attempt {
    Answered(Vec<u8>),
    /// It answered, with an error that another endpoint would give as well.
    Failed(EtcdError),
    /// It did not answer, or answered that it cannot serve: try the next.
    Unavailable(String),
}

impl Client {
    /// A client of these endpoints (`http://198.18.0.10:2379`, ...), each call and each attempt
    /// bounded by `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        let endpoints = endpoints.into_iter().map(|e| e.trim().trim_end_matches('/').to_owned()).collect();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .user_agent("lb-control")
            .build();
        Client { inner: Arc::new(Inner { endpoints, timeout, agent: config.into(), preferred: AtomicUsize::new(0) }) }
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The timeout of each call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Index of the endpoint to try first, and a note that `i` answered.
    fn preferred(&self) -> usize {
        self.inner.preferred.load(Ordering::Relaxed)
    }

    fn answered(&self, i: usize) {
        self.inner.preferred.store(i, Ordering::Relaxed);
    }

    /// POSTs `body` to `path` on each endpoint in turn until one answers.
    fn call(&self, path: &str, body: &str) -> Result<Vec<u8>, EtcdError> {
        let n = self.inner.endpoints.len();
        let start = self.preferred();
        let mut tried = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let endpoint = &self.inner.endpoints[i];
            match self.attempt(endpoint, path, body) {
                Attempt::Answered(bytes) => {
                    self.answered(i);
                    return Ok(bytes);
                }
                Attempt::Failed(e) => {
                    self.answered(i);
                    return Err(e);
                }
                Attempt::Unavailable(why) => tried.push(format!("{endpoint}: {why}")),
            }
        }
        Err(EtcdError::Unavailable { tried })
    }

    fn attempt(&self, endpoint: &str, path: &str, body: &str) -> Attempt {
        let url = format!("{endpoint}{path}");
        let response = self.inner.agent.post(&url).header("content-type", "application/json").send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Attempt::Unavailable(e.to_string()),
        };
        let status = response.status().as_u16();
        let bytes = match response.body_mut().with_config().limit(MAX_BODY).read_to_vec() {
            Ok(b) => b,
            Err(e) => return Attempt::Unavailable(format!("reading the response: {e}")),
        };
        classify(status, bytes)
    }

    /// Every key-value at `key` (none or one), with the store's revision.
    pub fn range(&self, key: impl AsRef<[u8]>) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let req = wire::RangeRequest { key: b64(key.as_ref()), range_end: None };
        wire::decode_range(&self.call("/v3/kv/range", &to_json(&req))?)
    }

    /// Every key-value under `prefix`, in key order, with the store's revision.
    pub fn range_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let p = prefix.as_ref();
        let req = wire::RangeRequest { key: b64(p), range_end: Some(b64(&prefix_end(p))) };
        wire::decode_range(&self.call("/v3/kv/range", &to_json(&req))?)
    }

    /// Puts `value` at `key`, attached to `lease` if given (the key goes when the lease does).
    /// Returns the revision of the write.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, lease: Option<i64>) -> Result<i64, EtcdError> {
        let req = wire::PutRequest { key: b64(key.as_ref()), value: b64(value.as_ref()), lease: lease.unwrap_or(0) };
        wire::decode_revision("put response", &self.call("/v3/kv/put", &to_json(&req))?)
    }

    /// Deletes `key`; returns the revision and how many keys went (0 or 1).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<(i64, i64), EtcdError> {
        let req = wire::DeleteRangeRequest { key: b64(key.as_ref()), range_end: None };
        wire::decode_delete(&self.call("/v3/kv/deleterange", &to_json(&req))?)
    }

    /// Deletes every key under `prefix`; returns the revision and how many keys went.
    pub fn delete_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<(i64, i64), EtcdError> {
        let p = prefix.as_ref();
        let req = wire::DeleteRangeRequest { key: b64(p), range_end: Some(b64(&prefix_end(p))) };
        wire::decode_delete(&self.call("/v3/kv/deleterange", &to_json(&req))?)
    }

    /// Runs `success` if every compare holds, else `failure`, atomically (etcd: "Transaction").
    /// etcd refuses more than 128 compares or operations a side (`--max-txn-ops`).
    pub fn txn(&self, compares: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> Result<TxnResponse, EtcdError> {
        let req = wire::TxnRequest::new(compares, success, failure);
        let (succeeded, revision) = wire::decode_txn(&self.call("/v3/kv/txn", &to_json(&req))?)?;
        Ok(TxnResponse { succeeded, revision })
    }

    /// A new lease of `ttl_secs` seconds (etcd may grant a longer one, never a shorter).
    pub fn lease_grant(&self, ttl_secs: i64) -> Result<Lease, EtcdError> {
        let req = wire::LeaseGrantRequest { ttl: ttl_secs };
        let (id, ttl) = wire::decode_lease_grant(&self.call("/v3/lease/grant", &to_json(&req))?)?;
        Ok(Lease { id, ttl })
    }

    /// Renews the lease once; returns the TTL it has now, 0 when it is gone (expired or
    /// revoked: grant another).
    pub fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let req = wire::LeaseIdRequest { id };
        wire::decode_keepalive(&self.call("/v3/lease/keepalive", &to_json(&req))?)
    }

    /// Revokes the lease: every key attached to it goes at once.
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let req = wire::LeaseIdRequest { id };
        wire::decode_revision("lease revoke response", &self.call("/v3/lease/revoke", &to_json(&req))?).map(|_| ())
    }

    /// Watches every key under `prefix` from `start_revision` (0: from now on). The watch
    /// connects on its first `next()`; see [`Watch`].
    pub fn watch(&self, prefix: impl AsRef<[u8]>, start_revision: i64) -> Watch {
        Watch::new(self.clone(), prefix.as_ref().to_vec(), start_revision)
    }
}

/// Serializes a request (plain structs of strings and numbers: cannot fail).
fn to_json<T: serde::Serialize>(req: &T) -> String {
    serde_json::to_string(req).unwrap_or_default()
}

/// gRPC's `Unavailable`: the member cannot serve now (no leader, shutting down); another may.
const GRPC_UNAVAILABLE: i64 = 14;
/// gRPC's `NotFound`, which etcd gives for a lease that is gone.
const GRPC_NOT_FOUND: i64 = 5;

/// Sorts a response by its status and error body.
pub(crate) fn classify(status: u16, body: Vec<u8>) -> Attempt {
    if status == 200 {
        return Attempt::Answered(body);
    }
    let error = wire::error_body(&body);
    match error {
        Some((GRPC_UNAVAILABLE, message)) => return Attempt::Unavailable(message),
        Some((GRPC_NOT_FOUND, message)) if message.contains("lease not found") => {
            return Attempt::Failed(EtcdError::LeaseNotFound)
        }
        _ => {}
    }
    if status == 503 || status == 502 || status == 504 {
        return Attempt::Unavailable(format!("HTTP {status}"));
    }
    let body = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
    Attempt::Failed(EtcdError::Http { status, body })
}

#[cfg(test)]
mod tests;
