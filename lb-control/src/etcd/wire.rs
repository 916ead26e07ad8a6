//! The JSON of etcd's gRPC gateway: the protobuf messages of `etcdserverpb` in proto3's JSON
//! mapping, as etcd 3.4 writes and reads them (etcd: "gRPC gateway"; the messages are in
//! `etcdserver/etcdserverpb/rpc.proto`). `bytes` fields (keys, values) are base64, `int64` fields
//! are JSON strings, and fields at their zero value are left out (a failed transaction has no
//! `succeeded`, a lease that is gone no `TTL`). Every decoder here takes the bytes of a body and
//! returns a typed error, never panics, on anything else.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::{Compare, CompareResult, CompareTarget, EtcdError, Event, EventKind, KeyValue, TxnOp, WatchResponse};

/// Encodes bytes as the gateway's `bytes` fields want them.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(what: &'static str, text: &str) -> Result<Vec<u8>, EtcdError> {
    STANDARD.decode(text).map_err(|e| EtcdError::Decode { what, detail: format!("base64: {e}") })
}

/// The end of the range of every key that starts with `prefix` (etcd's `range_end`: the prefix
/// with its last byte below 0xff incremented; `\0`, every key, for a prefix of 0xff bytes only).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `int64` as proto3's JSON mapping writes it: a string (a plain number is accepted too).
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(|_| de::Error::custom(format!("not an int64: {s:?}"))),
    }
}

fn int_str<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

// ---- requests ----

#[derive(Serialize)]
pub struct RangeRequest {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
}

#[derive(Serialize)]
pub struct PutRequest {
    pub key: String,
    pub value: String,
    #[serde(serialize_with = "int_str", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

#[derive(Serialize)]
pub struct DeleteRangeRequest {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
}

#[derive(Serialize)]
struct CompareJson {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end: Option<String>,
    target: &'static str,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mod_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

#[derive(Serialize)]
enum RequestOp {
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    Delete(DeleteRangeRequest),
}

#[derive(Serialize)]
pub struct TxnRequest {
    compare: Vec<CompareJson>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
}

impl TxnRequest {
    pub fn new(compares: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> Self {
        TxnRequest {
            compare: compares.iter().map(compare_json).collect(),
            success: success.iter().map(op_json).collect(),
            failure: failure.iter().map(op_json).collect(),
        }
    }
}

fn compare_json(c: &Compare) -> CompareJson {
    let mut j = CompareJson {
        key: b64(&c.key),
        range_end: c.range_end.as_deref().map(b64),
        target: "",
        result: match c.result {
            CompareResult::Equal => "EQUAL",
            CompareResult::Greater => "GREATER",
            CompareResult::Less => "LESS",
            CompareResult::NotEqual => "NOT_EQUAL",
        },
        mod_revision: None,
        create_revision: None,
        version: None,
        value: None,
    };
    match &c.target {
        CompareTarget::ModRevision(r) => (j.target, j.mod_revision) = ("MOD", Some(r.to_string())),
        CompareTarget::CreateRevision(r) => (j.target, j.create_revision) = ("CREATE", Some(r.to_string())),
        CompareTarget::Version(v) => (j.target, j.version) = ("VERSION", Some(v.to_string())),
        CompareTarget::Value(v) => (j.target, j.value) = ("VALUE", Some(b64(v))),
    }
    j
}

fn op_json(op: &TxnOp) -> RequestOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            RequestOp::Put(PutRequest { key: b64(key), value: b64(value), lease: lease.unwrap_or(0) })
        }
        TxnOp::Delete { key } => RequestOp::Delete(DeleteRangeRequest { key: b64(key), range_end: None }),
        TxnOp::DeletePrefix { prefix } => {
            RequestOp::Delete(DeleteRangeRequest { key: b64(prefix), range_end: Some(b64(&prefix_end(prefix))) })
        }
    }
}

#[derive(Serialize)]
pub struct LeaseGrantRequest {
    #[serde(rename = "TTL", serialize_with = "int_str")]
    pub ttl: i64,
}

#[derive(Serialize)]
pub struct LeaseIdRequest {
    #[serde(rename = "ID", serialize_with = "int_str")]
    pub id: i64,
}

#[derive(Serialize)]
pub struct WatchCreate {
    pub key: String,
    pub range_end: String,
    #[serde(serialize_with = "int_str", skip_serializing_if = "is_zero")]
    pub start_revision: i64,
    pub progress_notify: bool,
}

#[derive(Serialize)]
pub struct WatchRequest {
    pub create_request: WatchCreate,
}

// ---- responses ----

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    version: i64,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
}

impl RawKv {
    fn decode(self) -> Result<KeyValue, EtcdError> {
        Ok(KeyValue {
            key: unb64("key", &self.key)?,
            value: unb64("value", &self.value)?,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        })
    }
}

fn parse<'a, T: Deserialize<'a>>(what: &'static str, body: &'a [u8]) -> Result<T, EtcdError> {
    serde_json::from_slice(body).map_err(|e| EtcdError::Decode { what, detail: e.to_string() })
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

/// A `RangeResponse`: its header's revision and its key-values.
pub fn decode_range(body: &[u8]) -> Result<(i64, Vec<KeyValue>), EtcdError> {
    let r: RangeResponse = parse("range response", body)?;
    let kvs = r.kvs.into_iter().map(RawKv::decode).collect::<Result<Vec<_>, _>>()?;
    Ok((r.header.revision, kvs))
}

#[derive(Deserialize)]
struct HeaderOnly {
    #[serde(default)]
    header: Header,
}

/// The header revision of a `PutResponse`, `LeaseRevokeResponse` or any response whose header is
/// all the client needs.
pub fn decode_revision(what: &'static str, body: &[u8]) -> Result<i64, EtcdError> {
    parse::<HeaderOnly>(what, body).map(|r| r.header.revision)
}

#[derive(Deserialize)]
struct DeleteRangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default, deserialize_with = "int")]
    deleted: i64,
}

/// A `DeleteRangeResponse`: header revision and the number of keys deleted.
pub fn decode_delete(body: &[u8]) -> Result<(i64, i64), EtcdError> {
    parse::<DeleteRangeResponse>("delete response", body).map(|r| (r.header.revision, r.deleted))
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
}

/// A `TxnResponse`: whether the compares held, and the header revision.
pub fn decode_txn(body: &[u8]) -> Result<(bool, i64), EtcdError> {
    parse::<TxnResponse>("txn response", body).map(|r| (r.succeeded, r.header.revision))
}

#[derive(Deserialize)]
struct LeaseResponse {
    #[serde(rename = "ID", default, deserialize_with = "int")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

/// A `LeaseGrantResponse`: the lease's id and TTL.
pub fn decode_lease_grant(body: &[u8]) -> Result<(i64, i64), EtcdError> {
    let r: LeaseResponse = parse("lease grant response", body)?;
    if !r.error.is_empty() {
        return Err(EtcdError::Decode { what: "lease grant response", detail: r.error });
    }
    if r.id == 0 || r.ttl <= 0 {
        return Err(EtcdError::Decode { what: "lease grant response", detail: "no lease id or TTL".into() });
    }
    Ok((r.id, r.ttl))
}

/// One message of a streamed response: `{"result": ...}`, or `{"error": ...}` when the stream
/// fails after its headers (grpc-gateway's stream error).
#[derive(Deserialize)]
struct Streamed<T> {
    result: Option<T>,
    error: Option<serde_json::Value>,
}

/// Why a stream message carried an error: its `message` (or the whole error object).
fn stream_error(e: &serde_json::Value) -> (Option<i64>, String) {
    let code = e.get("grpc_code").or_else(|| e.get("code")).and_then(|c| c.as_i64());
    let message = e.get("message").and_then(|m| m.as_str()).map(str::to_owned).unwrap_or_else(|| e.to_string());
    (code, message)
}

/// The first `LeaseKeepAliveResponse` of the keep-alive stream: the TTL left, 0 when the lease
/// is gone (etcd then leaves `TTL` out).
pub fn decode_keepalive(body: &[u8]) -> Result<i64, EtcdError> {
    let first = body.split(|&b| b == b'\n').find(|l| !l.iter().all(u8::is_ascii_whitespace)).unwrap_or(b"");
    let m: Streamed<LeaseResponse> = parse("lease keepalive response", first)?;
    match (m.result, m.error) {
        (Some(r), _) => Ok(r.ttl.max(0)),
        (None, Some(e)) => Err(EtcdError::Decode { what: "lease keepalive response", detail: stream_error(&e).1 }),
        (None, None) => Err(EtcdError::Decode { what: "lease keepalive response", detail: "no result".into() }),
    }
}

/// An error body of the gateway: `{"error": ..., "message": ..., "code": <gRPC code>}`.
#[derive(Deserialize)]
struct GatewayError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    code: i64,
}

/// The gRPC status code and message of an error body, if it is one.
pub fn error_body(body: &[u8]) -> Option<(i64, String)> {
    let e: GatewayError = serde_json::from_slice(body).ok()?;
    let message = if e.message.is_empty() { e.error } else { e.message };
    Some((e.code, message))
}

#[derive(Deserialize)]
struct RawEvent {
    /// `PUT` is the enum's zero value, so etcd leaves it out.
    #[serde(rename = "type", default)]
    kind: Option<serde_json::Value>,
    kv: Option<RawKv>,
}

#[derive(Deserialize)]
struct RawWatchResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

/// One line of the watch stream, decoded.
#[derive(Debug, PartialEq)]
pub enum WatchLine {
    /// The watch is set up; the store was at this revision.
    Created { revision: i64 },
    /// Events, or none (a progress notification).
    Response(WatchResponse),
    /// The server ended the watch: compacted past its start, or for another reason.
    Canceled { compact_revision: i64, reason: String },
    /// The stream failed after its headers (grpc-gateway's stream error object).
    Error { code: Option<i64>, message: String },
}

/// Decodes one newline-delimited message of `/v3/watch`.
pub fn decode_watch_line(line: &[u8]) -> Result<WatchLine, EtcdError> {
    let m: Streamed<RawWatchResponse> = parse("watch response", line)?;
    let r = match (m.result, m.error) {
        (Some(r), _) => r,
        (None, Some(e)) => {
            let (code, message) = stream_error(&e);
            return Ok(WatchLine::Error { code, message });
        }
        (None, None) => return Err(EtcdError::Decode { what: "watch response", detail: "no result".into() }),
    };
    if r.canceled {
        return Ok(WatchLine::Canceled { compact_revision: r.compact_revision, reason: r.cancel_reason });
    }
    if r.created && r.events.is_empty() {
        return Ok(WatchLine::Created { revision: r.header.revision });
    }
    let mut events = Vec::with_capacity(r.events.len());
    for e in r.events {
        let kind = match &e.kind {
            None => EventKind::Put,
            Some(v) if v == "PUT" || v == 0 => EventKind::Put,
            Some(v) if v == "DELETE" || v == 1 => EventKind::Delete,
            Some(v) => return Err(EtcdError::Decode { what: "watch event", detail: format!("unknown type {v}") }),
        };
        let kv = e.kv.ok_or(EtcdError::Decode { what: "watch event", detail: "no kv".into() })?.decode()?;
        events.push(Event { kind, kv });
    }
    Ok(WatchLine::Response(WatchResponse { revision: r.header.revision, events }))
}
