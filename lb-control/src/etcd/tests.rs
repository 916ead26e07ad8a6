//! Decoding of responses captured from etcd 3.4.23's gateway (`testdata/`), malformed bodies,
//! and the client and watch against a stand-in server on an ephemeral loopback port that replays
//! those bytes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::wire::{self, WatchLine};
use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("testdata/", $name)).as_slice()
    };
}

fn kv(key: &str, value: &str, create: i64, modified: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modified,
        version: 1,
        lease: 0,
    }
}

#[test]
fn range_responses() {
    let (rev, kvs) = wire::decode_range(fixture!("range_prefix.json")).unwrap();
    assert_eq!(rev, 18);
    assert_eq!(kvs.len(), 3);
    assert_eq!(kvs[0], kv("/lb/v1/loadbalancers/api", r#"{"name":"api"}"#, 17, 17));
    assert_eq!(kvs[1], kv("/lb/v1/loadbalancers/web", r#"{"name":"web"}"#, 16, 16));
    assert_eq!(kvs[2].key_str(), "/lb/v1/nodes/mux-1");
    assert_eq!(kvs[2].lease, 2324035869106092327);
    assert_eq!(wire::decode_range(fixture!("range_empty.json")).unwrap(), (18, vec![]));
}

#[test]
fn write_responses() {
    assert_eq!(wire::decode_revision("put", fixture!("put.json")).unwrap(), 16);
    assert_eq!(wire::decode_revision("put", fixture!("put_lease.json")).unwrap(), 18);
    assert_eq!(wire::decode_delete(fixture!("delete.json")).unwrap(), (21, 1));
    assert_eq!(wire::decode_delete(fixture!("delete_none.json")).unwrap(), (21, 0));
    assert_eq!(wire::decode_txn(fixture!("txn_ok.json")).unwrap(), (true, 20));
    // A failed transaction leaves `succeeded` out (false is its zero value).
    assert_eq!(wire::decode_txn(fixture!("txn_failed.json")).unwrap(), (false, 20));
}

#[test]
fn lease_responses() {
    assert_eq!(wire::decode_lease_grant(fixture!("lease_grant.json")).unwrap(), (2324035869106092327, 30));
    assert_eq!(wire::decode_keepalive(fixture!("keepalive.json")).unwrap(), 30);
    // A lease that is gone: the keep-alive answers without a TTL.
    assert_eq!(wire::decode_keepalive(fixture!("keepalive_gone.json")).unwrap(), 0);
    assert_eq!(wire::decode_revision("revoke", fixture!("revoke.json")).unwrap(), 19);
    assert!(wire::decode_lease_grant(fixture!("put.json")).is_err(), "a grant without an id");
}

#[test]
fn error_bodies() {
    let e = |b: &[u8]| wire::error_body(b).unwrap();
    assert_eq!(e(fixture!("revoke_gone.json")), (5, "etcdserver: requested lease not found".into()));
    assert_eq!(e(fixture!("error_no_key.json")).0, 3);
    assert_eq!(e(fixture!("error_compacted.json")).0, 11);
    assert!(wire::error_body(fixture!("error_404.txt")).is_none());
    assert!(matches!(classify(404, fixture!("revoke_gone.json").to_vec()), Attempt::Failed(EtcdError::LeaseNotFound)));
    match classify(400, fixture!("error_no_key.json").to_vec()) {
        Attempt::Failed(e @ EtcdError::Http { status: 400, .. }) => {
            assert_eq!(e.to_string(), "etcd answered HTTP 400: etcdserver: key is not provided (gRPC code 3)")
        }
        _ => panic!("a bad request is an HTTP error"),
    }
    assert!(matches!(classify(404, fixture!("error_404.txt").to_vec()), Attempt::Failed(EtcdError::Http { .. })));
    let no_leader = br#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
    assert!(matches!(classify(503, no_leader.to_vec()), Attempt::Unavailable(_)));
    assert!(matches!(classify(502, b"bad gateway".to_vec()), Attempt::Unavailable(_)));
}

#[test]
fn malformed_bodies_are_typed_errors() {
    let bodies: [&[u8]; 9] = [
        b"",
        b"not json",
        b"[1,2]",
        br#"{"header":{"revision":"x"}}"#,
        br#"{"header":{"revision":"1"},"kvs":[{"key":"!!notbase64"}]}"#,
        br#"{"header":{"revision":"1"},"kvs":[{"key":"YQ==","value":7}]}"#,
        br#"{"header":{"revision":"99999999999999999999999"}}"#,
        b"\xff\xfe",
        br#"{"header":{"revision":"1"},"kvs":{}}"#,
    ];
    for b in bodies {
        assert!(matches!(wire::decode_range(b), Err(EtcdError::Decode { .. })), "{:?}", String::from_utf8_lossy(b));
    }
    assert!(wire::decode_txn(br#"{"succeeded":"yes"}"#).is_err());
    assert!(wire::decode_keepalive(b"").is_err());
    assert!(wire::decode_keepalive(br#"{"result":{"TTL":"x"}}"#).is_err());
    assert!(wire::decode_keepalive(br#"{"error":{"grpc_code":14,"message":"closing"}}"#).is_err());
    assert!(wire::decode_watch_line(b"{").is_err());
    assert!(wire::decode_watch_line(br#"{"result":{"events":[{"type":"MOVE","kv":{}}]}}"#).is_err());
    assert!(wire::decode_watch_line(br#"{"result":{"events":[{"type":"DELETE"}]}}"#).is_err());
    assert!(wire::decode_watch_line(b"{}").is_err());
}

#[test]
fn watch_lines() {
    let lines: Vec<&[u8]> = fixture!("watch_stream.jsonl").split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(wire::decode_watch_line(lines[0]).unwrap(), WatchLine::Created { revision: 21 });
    let WatchLine::Response(r) = wire::decode_watch_line(lines[1]).unwrap() else { panic!("events") };
    assert_eq!(r.revision, 21);
    let kinds: Vec<_> = r.events.iter().map(|e| (e.kind, e.kv.key_str().into_owned(), e.kv.mod_revision)).collect();
    assert_eq!(kinds[3], (EventKind::Delete, "/lb/v1/nodes/mux-1".into(), 19));
    assert_eq!(kinds[5], (EventKind::Delete, "/lb/v1/loadbalancers/new".into(), 21));
    assert_eq!(r.events[2].kv.lease, 2324035869106092327);
    assert_eq!(r.events.len(), 6);
    let WatchLine::Response(r) = wire::decode_watch_line(lines[3]).unwrap() else { panic!("events") };
    assert_eq!((r.revision, r.events.len()), (23, 2), "a transaction's events come together");
    assert_eq!(r.events[0].kind, EventKind::Delete);
    assert_eq!(r.events[1].kv.value, br#"{"op":"delete"}"#);

    let progress = fixture!("watch_progress.jsonl").split(|&b| b == b'\n').nth(1).unwrap();
    assert_eq!(
        wire::decode_watch_line(progress).unwrap(),
        WatchLine::Response(WatchResponse { revision: 23, events: vec![] })
    );
    let canceled = fixture!("watch_compacted.jsonl").split(|&b| b == b'\n').nth(1).unwrap();
    assert_eq!(
        wire::decode_watch_line(canceled).unwrap(),
        WatchLine::Canceled { compact_revision: 20, reason: String::new() }
    );
    // grpc-gateway's error object in a stream (its documented shape; etcd sends it when a
    // stream fails after its headers).
    let error = br#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#;
    assert_eq!(
        wire::decode_watch_line(error).unwrap(),
        WatchLine::Error { code: Some(14), message: "transport is closing".into() }
    );
}

#[test]
fn requests_are_the_gateway_json() {
    let txn = wire::TxnRequest::new(
        &[
            Compare::mod_revision("/a", 16),
            Compare::create_revision("/b", 0),
            Compare::value("/c", "v").with_result(CompareResult::NotEqual),
            Compare::mod_revision("/p/", 9).with_result(CompareResult::Less).over_prefix(),
        ],
        &[TxnOp::Put { key: b"/b".to_vec(), value: b"x".to_vec(), lease: Some(7) }, TxnOp::delete("/a")],
        &[TxnOp::DeletePrefix { prefix: b"/p/".to_vec() }],
    );
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&txn).unwrap()).unwrap();
    let expected = serde_json::json!({
        "compare": [
            {"key": "L2E=", "target": "MOD", "result": "EQUAL", "mod_revision": "16"},
            {"key": "L2I=", "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
            {"key": "L2M=", "target": "VALUE", "result": "NOT_EQUAL", "value": "dg=="},
            {"key": "L3Av", "range_end": "L3Aw", "target": "MOD", "result": "LESS", "mod_revision": "9"},
        ],
        "success": [
            {"request_put": {"key": "L2I=", "value": "eA==", "lease": "7"}},
            {"request_delete_range": {"key": "L2E="}},
        ],
        "failure": [{"request_delete_range": {"key": "L3Av", "range_end": "L3Aw"}}],
    });
    assert_eq!(json, expected);
}

#[test]
fn prefix_ends() {
    assert_eq!(prefix_end(b"/lb/v1/"), b"/lb/v10");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    assert_eq!(prefix_end(b""), b"\0");
}

// ---- a stand-in gateway ----

/// What the stand-in answers to one connection.
enum Reply {
    /// A whole response.
    Full(u16, &'static [u8]),
    /// A chunked 200 response: each part after its delay, then the stream ends.
    Stream(Vec<(u64, Vec<u8>)>),
}

struct Server {
    endpoint: String,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    thread: thread::JoinHandle<()>,
}

/// Serves `replies`, one a connection, in order, then stops listening.
fn serve(replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let thread = thread::spawn(move || {
        for reply in replies {
            let (stream, _) = listener.accept().unwrap();
            let request = read_request(&stream);
            seen.lock().unwrap().push(request);
            answer(stream, reply);
        }
    });
    Server { endpoint, requests, thread }
}

fn read_request(stream: &TcpStream) -> (String, String) {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    (path, String::from_utf8(body).unwrap())
}

fn answer(mut stream: TcpStream, reply: Reply) {
    match reply {
        Reply::Full(status, body) => {
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
        Reply::Stream(parts) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            for (delay, part) in parts {
                thread::sleep(Duration::from_millis(delay));
                let _ = stream.write_all(format!("{:x}\r\n", part.len()).as_bytes());
                let _ = stream.write_all(&part);
                let _ = stream.write_all(b"\r\n");
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
    }
}

/// An endpoint nothing listens on.
fn closed_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn client(endpoints: Vec<String>) -> Client {
    Client::new(endpoints, Duration::from_secs(2))
}

#[test]
fn calls_move_to_the_next_endpoint_and_stay_there() {
    let server = serve(vec![Reply::Full(200, fixture!("range_prefix.json")), Reply::Full(200, fixture!("put.json"))]);
    let c = client(vec![closed_endpoint(), server.endpoint.clone()]);
    let (rev, kvs) = c.range_prefix("/lb/v1/").unwrap();
    assert_eq!((rev, kvs.len()), (18, 3));
    // The second call starts at the endpoint that answered: the server sees it.
    assert_eq!(c.put("/lb/v1/x", "y", Some(5)).unwrap(), 16);
    server.thread.join().unwrap();
    let requests = server.requests.lock().unwrap();
    assert_eq!(requests[0].0, "/v3/kv/range");
    let range: serde_json::Value = serde_json::from_str(&requests[0].1).unwrap();
    assert_eq!(range, serde_json::json!({"key": "L2xiL3YxLw==", "range_end": "L2xiL3YxMA=="}));
    assert_eq!(requests[1].0, "/v3/kv/put");
    let put: serde_json::Value = serde_json::from_str(&requests[1].1).unwrap();
    assert_eq!(put, serde_json::json!({"key": "L2xiL3YxL3g=", "value": "eQ==", "lease": "5"}));
}

#[test]
fn no_endpoint_answering_is_unavailable() {
    let c = client(vec![closed_endpoint(), closed_endpoint()]);
    match c.range("/k") {
        Err(EtcdError::Unavailable { tried }) => assert_eq!(tried.len(), 2),
        other => panic!("{other:?}"),
    }
    assert!(client(vec![]).range("/k").unwrap_err().is_unavailable());
    assert!(client(vec!["not a url".into()]).range("/k").unwrap_err().is_unavailable());
}

#[test]
fn http_errors_and_garbage_are_typed() {
    let server = serve(vec![
        Reply::Full(400, fixture!("error_no_key.json")),
        Reply::Full(404, fixture!("revoke_gone.json")),
        Reply::Full(200, b"<html>"),
        Reply::Full(200, fixture!("keepalive_gone.json")),
        Reply::Full(200, fixture!("txn_failed.json")),
    ]);
    let c = client(vec![server.endpoint.clone()]);
    assert!(matches!(c.put("", "v", None), Err(EtcdError::Http { status: 400, .. })));
    assert_eq!(c.lease_revoke(1), Err(EtcdError::LeaseNotFound));
    assert!(matches!(c.delete("/k"), Err(EtcdError::Decode { .. })));
    assert_eq!(c.lease_keepalive(1), Ok(0));
    let r = c.txn(&[Compare::create_revision("/k", 0)], &[TxnOp::put("/k", "v")], &[]).unwrap();
    assert_eq!(r, TxnResponse { succeeded: false, revision: 20 });
    assert_eq!(r.require_success(), Err(EtcdError::TxnFailed { revision: 20 }));
    server.thread.join().unwrap();
}

fn lines(fixture: &[u8]) -> Vec<Vec<u8>> {
    fixture.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

#[test]
fn watch_yields_idle_while_silent_and_resumes_after_a_break() {
    let stream = lines(fixture!("watch_stream.jsonl"));
    // The first stream: created, a batch of events, then silence past three polls, the next
    // event, and the end. The second: its last event.
    let mut first: Vec<(u64, Vec<u8>)> = vec![(0, stream[0].clone()), (0, stream[1].clone())];
    // One line split over two chunks.
    let (a, b) = stream[2].split_at(40);
    first.push((700, a.to_vec()));
    first.push((0, b.to_vec()));
    let server = serve(vec![Reply::Stream(first), Reply::Stream(vec![(0, stream[0].clone()), (0, stream[3].clone())])]);
    let c = client(vec![server.endpoint.clone()]);
    let mut w = c.watch("/lb/v1/", 16).with_poll(Duration::from_millis(200));
    let mut events = Vec::new();
    let mut idle = 0;
    while events.len() < 9 {
        match w.next() {
            Some(Ok(WatchItem::Response(r))) => events.extend(r.events.into_iter().map(|e| e.kv.mod_revision)),
            Some(Ok(WatchItem::Idle)) => idle += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(events, [16, 17, 18, 19, 20, 21, 22, 23, 23]);
    assert!(idle >= 2, "{idle} idle rounds");
    assert_eq!(w.next_revision(), 24);
    server.thread.join().unwrap();
    let requests = server.requests.lock().unwrap();
    let start = |i: usize| {
        let v: serde_json::Value = serde_json::from_str(&requests[i].1).unwrap();
        v["create_request"]["start_revision"].as_str().map(str::to_owned)
    };
    assert_eq!(requests[0].0, "/v3/watch");
    assert_eq!(start(0).as_deref(), Some("16"));
    // Resumed after the last event delivered.
    assert_eq!(start(1).as_deref(), Some("23"));
    let v: serde_json::Value = serde_json::from_str(&requests[0].1).unwrap();
    assert_eq!(v["create_request"]["progress_notify"], true);
}

#[test]
fn watch_from_now_resumes_after_the_created_revision() {
    let progress = lines(fixture!("watch_progress.jsonl"));
    let server = serve(vec![Reply::Stream(vec![(0, progress[0].clone())]), Reply::Stream(vec![])]);
    let c = client(vec![server.endpoint.clone()]);
    let mut w = c.watch("/lb/v1/", 0).with_poll(Duration::from_millis(200));
    // The first stream ends after its created line: the watch says idle, then connects again.
    assert_eq!(w.next(), Some(Ok(WatchItem::Idle)));
    assert_eq!(w.next_revision(), 24);
    // The second ends before any line: the server refuses it.
    assert!(matches!(w.next(), Some(Err(EtcdError::Unavailable { .. }))));
    server.thread.join().unwrap();
    let requests = server.requests.lock().unwrap();
    assert!(!requests[0].1.contains("start_revision"));
    assert!(requests[1].1.contains(r#""start_revision":"24""#));
}

#[test]
fn watch_ends_on_compaction_and_on_a_bad_request() {
    let compacted = lines(fixture!("watch_compacted.jsonl"));
    let server = serve(vec![Reply::Stream(compacted.iter().map(|l| (0, l.clone())).collect())]);
    let c = client(vec![server.endpoint.clone()]);
    let mut w = c.watch("/lb/v1/", 16);
    assert_eq!(w.next(), Some(Err(EtcdError::Compacted { compact_revision: 20 })));
    assert_eq!(w.next(), None);
    server.thread.join().unwrap();

    let server = serve(vec![Reply::Full(500, fixture!("watch_bad_request.json"))]);
    let mut w = client(vec![server.endpoint.clone()]).watch("/lb/v1/", 16);
    assert!(matches!(w.next(), Some(Err(EtcdError::Http { status: 500, .. }))));
    assert_eq!(w.next(), None);
    server.thread.join().unwrap();
}

#[test]
fn watch_survives_garbage_in_the_stream() {
    let stream = lines(fixture!("watch_stream.jsonl"));
    // A bad line and, in the same chunk, a good one after it: the good one is not delivered out
    // of order; the watch connects again from the revision after the last one delivered.
    let bad_then_good = [b"{not json\n".as_slice(), &stream[3]].concat();
    let server = serve(vec![
        Reply::Stream(vec![(0, stream[0].clone()), (0, bad_then_good)]),
        Reply::Stream(vec![(0, stream[0].clone()), (0, stream[2].clone()), (0, stream[3].clone())]),
    ]);
    let c = client(vec![server.endpoint.clone()]);
    let mut w = c.watch("/lb/v1/", 22).with_poll(Duration::from_millis(200));
    assert!(matches!(w.next(), Some(Err(EtcdError::Decode { .. }))));
    let mut revisions = Vec::new();
    for item in w.by_ref() {
        if let Ok(WatchItem::Response(r)) = item {
            revisions.extend(r.events.iter().map(|e| e.kv.mod_revision));
            if revisions.len() >= 3 {
                break;
            }
        }
    }
    assert_eq!(revisions, [22, 23, 23]);
    server.thread.join().unwrap();
    assert!(server.requests.lock().unwrap()[1].1.contains(r#""start_revision":"22""#));
}
