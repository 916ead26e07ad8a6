//! A watch over the gateway: one long POST to `/v3/watch` whose chunked response carries one
//! JSON object a line, `{"result": WatchResponse}` (etcd: "gRPC gateway"; `Watch` in
//! `rpc.proto`).
//!
//! Reads wait at most the poll interval ([`Watch::with_poll`], 2 s by default), after which the
//! iterator yields [`WatchItem::Idle`] so a control thread can check a stop flag and call
//! `next()` again on the same stream. When the stream breaks, or stays silent longer than
//! [`Watch::with_silence`] (a dead peer looks silent), the watch connects again, to the next
//! endpoint that answers, from the revision after the last one it delivered, so no change is lost
//! or repeated. `progress_notify` makes etcd send a response without events now and then (every
//! 10 minutes by default, `--experimental-watch-progress-notify-interval`), which moves that
//! revision on while nothing under the prefix changes, so that a reconnect does not start at a
//! revision compacted since.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::wire::{self, b64, prefix_end, WatchLine};
use super::{classify, Attempt, Client, EtcdError, WatchResponse};

/// The longest line accepted: far above any batch of events the control plane watches.
const MAX_LINE: usize = 256 << 20;

/// What one `next()` of a [`Watch`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// Events, or a progress notification (no events).
    Response(WatchResponse),
    /// Nothing arrived within the poll interval (or the stream broke and the next call connects
    /// again): a moment to check a stop flag.
    Idle,
}

struct Stream {
    reader: ureq::BodyReader<'static>,
    /// Whether the stream has delivered a whole line: one that ends at once is refused, not
    /// reconnected to in a loop.
    delivered: bool,
    endpoint: String,
}

/// A watch of every key under a prefix; an iterator of [`WatchItem`]s that ends after
/// [`EtcdError::Compacted`] or [`EtcdError::WatchCanceled`] (read the keys anew, then watch again
/// from the revision of that read + 1). [`EtcdError::Unavailable`] and malformed messages do not
/// end it: the next `next()` connects again.
pub struct Watch {
    client: Client,
    prefix: Vec<u8>,
    /// The revision to start from when (re)connecting; 0 until the first connection: now.
    next_revision: i64,
    poll: Duration,
    silence: Duration,
    stream: Option<Stream>,
    buf: Vec<u8>,
    last_data: Instant,
    done: bool,
}

impl Watch {
    pub(super) fn new(client: Client, prefix: Vec<u8>, start_revision: i64) -> Self {
        Watch {
            client,
            prefix,
            next_revision: start_revision.max(0),
            poll: Duration::from_secs(2),
            silence: Duration::from_secs(60),
            stream: None,
            buf: Vec::new(),
            last_data: Instant::now(),
            done: false,
        }
    }

    /// Waits at most `poll` for data before yielding [`WatchItem::Idle`].
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// Connects again after `silence` without a byte from the server.
    pub fn with_silence(mut self, silence: Duration) -> Self {
        self.silence = silence;
        self
    }

    /// The revision the watch would resume from: every change before it has been delivered.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    fn connect(&mut self) -> Result<(), EtcdError> {
        let create = wire::WatchCreate {
            key: b64(&self.prefix),
            range_end: b64(&prefix_end(&self.prefix)),
            start_revision: self.next_revision,
            progress_notify: true,
        };
        let body = serde_json::to_string(&wire::WatchRequest { create_request: create }).unwrap_or_default();
        let timeout = self.client.timeout();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(timeout))
            .timeout_send_request(Some(timeout))
            .timeout_send_body(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(self.poll))
            .user_agent("lb-control")
            .build()
            .into();
        let endpoints = self.client.endpoints().to_vec();
        let n = endpoints.len();
        let start = self.client.preferred();
        let mut tried = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let endpoint = &endpoints[i];
            let url = format!("{endpoint}/v3/watch");
            let response = match agent.post(&url).header("content-type", "application/json").send(&body) {
                Ok(r) => r,
                Err(e) => {
                    tried.push(format!("{endpoint}: {e}"));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let mut reader = response.into_body().into_reader();
            if status != 200 {
                let mut bytes = Vec::new();
                let _ = (&mut reader).take(64 << 10).read_to_end(&mut bytes);
                match classify(status, bytes) {
                    Attempt::Unavailable(why) => {
                        tried.push(format!("{endpoint}: {why}"));
                        continue;
                    }
                    Attempt::Failed(e) => return Err(e),
                    Attempt::Answered(_) => {}
                }
            }
            self.client.answered(i);
            self.buf.clear();
            self.last_data = Instant::now();
            self.stream = Some(Stream { reader, delivered: false, endpoint: endpoint.clone() });
            return Ok(());
        }
        Err(EtcdError::Unavailable { tried })
    }

    /// Takes the next whole line out of the buffer, if there is one.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        Some(line)
    }

    /// Acts on one line; `Some` is what to yield.
    fn on_line(&mut self, line: &[u8]) -> Option<Result<WatchItem, EtcdError>> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        if let Some(s) = self.stream.as_mut() {
            s.delivered = true;
        }
        match wire::decode_watch_line(line) {
            Err(e) => {
                // The stream is out of step: start again from what was delivered, dropping what
                // followed the bad line, so that nothing after a lost change moves the revision on.
                self.stream = None;
                self.buf.clear();
                Some(Err(e))
            }
            Ok(WatchLine::Created { revision }) => {
                if self.next_revision == 0 {
                    self.next_revision = revision + 1;
                }
                None
            }
            Ok(WatchLine::Canceled { compact_revision, reason }) => {
                self.done = true;
                self.stream = None;
                if compact_revision > 0 {
                    Some(Err(EtcdError::Compacted { compact_revision }))
                } else {
                    Some(Err(EtcdError::WatchCanceled { reason }))
                }
            }
            Ok(WatchLine::Error { code, message }) => {
                let endpoint = self.stream.take().map(|s| s.endpoint).unwrap_or_default();
                self.buf.clear();
                if code == Some(14) {
                    Some(Err(EtcdError::Unavailable { tried: vec![format!("{endpoint}: {message}")] }))
                } else {
                    self.done = true;
                    Some(Err(EtcdError::WatchCanceled { reason: message }))
                }
            }
            Ok(WatchLine::Response(r)) => {
                let last = r.events.iter().map(|e| e.kv.mod_revision).max();
                match last {
                    Some(rev) => self.next_revision = self.next_revision.max(rev + 1),
                    None if r.revision > 0 => self.next_revision = self.next_revision.max(r.revision + 1),
                    None => {}
                }
                Some(Ok(WatchItem::Response(r)))
            }
        }
    }

    /// One read from the stream into the buffer; `Some` is what to yield.
    fn read_some(&mut self) -> Option<Result<WatchItem, EtcdError>> {
        let stream = self.stream.as_mut()?;
        let mut chunk = [0u8; 16 << 10];
        match stream.reader.read(&mut chunk) {
            Ok(0) => self.ended("the server ended the stream".into()),
            Ok(n) => {
                self.last_data = Instant::now();
                self.buf.extend_from_slice(&chunk[..n]);
                if self.buf.len() > MAX_LINE {
                    self.stream = None;
                    self.buf.clear();
                    let detail = format!("a line longer than {MAX_LINE} bytes");
                    return Some(Err(EtcdError::Decode { what: "watch response", detail }));
                }
                None
            }
            Err(e) => {
                if !is_timeout(&e) {
                    return self.ended(e.to_string());
                }
                if self.last_data.elapsed() >= self.silence {
                    self.stream = None;
                }
                Some(Ok(WatchItem::Idle))
            }
        }
    }

    /// The stream ended: connect again on the next `next()` (yielding [`WatchItem::Idle`] now, so
    /// that one call makes at most one connection), or, if it ended before delivering a line, the
    /// server is refusing it: report that.
    fn ended(&mut self, why: String) -> Option<Result<WatchItem, EtcdError>> {
        let s = self.stream.take()?;
        self.buf.clear();
        if s.delivered {
            Some(Ok(WatchItem::Idle))
        } else {
            Some(Err(EtcdError::Unavailable { tried: vec![format!("{}: {why}", s.endpoint)] }))
        }
    }
}

/// Whether a read failed only because the poll interval passed.
fn is_timeout(e: &io::Error) -> bool {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => true,
        _ => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_))),
    }
}

impl Iterator for Watch {
    type Item = Result<WatchItem, EtcdError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(line) = self.take_line() {
                if let Some(item) = self.on_line(&line) {
                    return Some(item);
                }
                continue;
            }
            if self.stream.is_none() {
                if let Err(e) = self.connect() {
                    if matches!(e, EtcdError::Http { .. }) {
                        self.done = true;
                    }
                    return Some(Err(e));
                }
            }
            if let Some(item) = self.read_some() {
                return Some(item);
            }
        }
    }
}
