//! The owner's view: the last requests of each sandbox (`[log] requests_per_sandbox`), kept in
//! memory and served on the admin listener as JSON (`GET /sandboxes/<id>/requests`) or as a
//! live Server-Sent Events stream (`?follow=1`).
//!
//! The hot path pays one push into a preallocated slot: the ring hangs off the cached sandbox
//! record (`SandboxRecord::request_ring`), so finding it is a pointer read; the table below is
//! only consulted for a sandbox's first request through a record (a new or refreshed one).
//!
//! Memory is bounded globally: at most `request_log_sandboxes` rings (a new sandbox evicts the
//! least recently used, whose entries are freed at once) of `requests_per_sandbox` fixed-size
//! entries (`Ring::bytes_for`, about 480 bytes per entry: 64 x 1024 take about 30 MiB).
//!
//! Never recorded: hosts (a signed preview host is a credential), queries, headers, cookies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{Either, StreamBody};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::base::request_ring::{Batch, Entry, FollowGuard, Ring};
use crate::config::LogConfig;
use crate::http::body::ProxyBody;
use crate::metrics::RouteKind;
use crate::registry::SandboxRecord;

/// Live followers at once, over all sandboxes; beyond: 503.
pub const MAX_FOLLOWERS: usize = 64;
/// A comment line this often keeps idle streams open through proxies and load balancers.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Sandbox id (lower-case) → its ring.
type Rings = HashMap<Box<str>, Arc<Ring>, foldhash::fast::RandomState>;

pub struct RequestLog {
    per_sandbox: usize,
    max_sandboxes: usize,
    rings: Mutex<Rings>,
    followers: AtomicUsize,
}

/// What the pipeline tells about one request whose sandbox was resolved.
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub bytes: Option<u64>,
    pub kind: RouteKind,
    pub port: Option<u16>,
    pub request_id: Option<&'a HeaderValue>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl RequestLog {
    /// `None` when `log.requests_per_sandbox` is 0 (the pipeline then skips it entirely).
    pub fn new(config: &LogConfig) -> Option<Arc<RequestLog>> {
        if config.requests_per_sandbox == 0 || config.request_log_sandboxes == 0 {
            return None;
        }
        Some(Arc::new(RequestLog {
            per_sandbox: config.requests_per_sandbox,
            max_sandboxes: config.request_log_sandboxes,
            rings: Mutex::default(),
            followers: AtomicUsize::new(0),
        }))
    }

    /// Records `request` in `sandbox`'s ring.
    pub fn record(&self, sandbox: &SandboxRecord, request: &Request<'_>) {
        // Written in place: no entry is built and copied (an entry is ~480 bytes).
        let fill = |e: &mut Entry| {
            e.micros = request.elapsed.as_micros() as u64;
            e.bytes = request.bytes;
            e.status = request.status;
            e.port = request.port;
            e.kind = request.kind.name();
            e.method.set(request.method.as_str());
            e.path.set(request.path);
            // Request ids are ASCII: `pipeline::request_id` accepts no other.
            e.request_id
                .set_ascii(request.request_id.map_or(&[], |id| id.as_bytes()));
        };
        let now = now_micros();
        match sandbox.request_ring.get() {
            Some(ring) if !ring.is_evicted() => ring.push(now, fill),
            _ => {
                let ring = self.ring(&sandbox.id);
                // Fails when the record already holds an evicted ring: it then comes here
                // each time, until the cache refreshes the record.
                let _ = sandbox.request_ring.set(ring.clone());
                ring.push(now, fill);
            }
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ring of sandbox `id` (lower-case), made (evicting the least recently used one when
    /// the table is full) if there is none.
    fn ring(&self, id: &str) -> Arc<Ring> {
        let id = id.to_ascii_lowercase();
        let mut rings = self.rings();
        if let Some(ring) = rings.get(id.as_str()) {
            return ring.clone();
        }
        if rings.len() >= self.max_sandboxes {
            let oldest = rings
                .iter()
                .min_by_key(|(_, ring)| ring.last_used())
                .map(|(id, _)| id.clone());
            if let Some(ring) = oldest.and_then(|id| rings.remove(&id)) {
                ring.evict();
            }
        }
        let ring = Arc::new(Ring::new(self.per_sandbox, now_micros()));
        rings.insert(id.into(), ring.clone());
        ring
    }

    /// The ring of sandbox `id` (lower-case) if it has one.
    fn existing(&self, id: &str) -> Option<Arc<Ring>> {
        self.rings().get(id).cloned()
    }
}

/// The admin listener's body: a small one, or an event stream.
pub type AdminBody = Either<ProxyBody, EventStream>;
pub type EventStream =
    StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// `GET /sandboxes/<id>/requests[?limit=N][&follow=1]` on the admin listener. `log` is `None`
/// when the request log is off.
pub fn admin(
    log: Option<&Arc<RequestLog>>,
    id: &str,
    query: Option<&str>,
    shutdown: &CancellationToken,
) -> Response<AdminBody> {
    let Some(log) = log else {
        return error(
            StatusCode::NOT_FOUND,
            "the request log is off (log.requests_per_sandbox = 0)",
        );
    };
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return error(
            StatusCode::BAD_REQUEST,
            "the sandbox id must be 1 to 128 characters [A-Za-z0-9_-]",
        );
    }
    let id = id.to_ascii_lowercase();
    let (limit, follow) = match parse_query(query) {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if !follow {
        return list(log, &id, limit);
    }
    match Follow::start(log, &id, limit, shutdown) {
        Some(follow) => events(follow),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many followers of the request log; try again later",
        ),
    }
}

/// `limit` (default: all) and `follow` from the query.
fn parse_query(query: Option<&str>) -> Result<(usize, bool), &'static str> {
    let (mut limit, mut follow) = (usize::MAX, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("limit", n) => limit = n.parse().map_err(|_| "limit must be a whole number")?,
            ("follow", "1" | "true" | "") => follow = true,
            ("follow", "0" | "false") => follow = false,
            ("follow", _) => return Err("follow must be 1 or 0"),
            _ => return Err("the only parameters are limit and follow"),
        }
    }
    Ok((limit, follow))
}

fn list(log: &RequestLog, id: &str, limit: usize) -> Response<AdminBody> {
    let batch = match log.existing(id) {
        Some(ring) => ring.since(1, limit),
        None => Batch {
            entries: Vec::new(),
            dropped: 0,
            next_seq: 1,
        },
    };
    let body = serde_json::json!({
        "sandbox": id,
        "requests": batch.entries.iter().map(EntryJson::from).collect::<Vec<_>>(),
        "next_seq": batch.next_seq,
    });
    respond(StatusCode::OK, "application/json", body.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    let body = serde_json::json!({ "error": message });
    respond(status, "application/json", body.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<AdminBody> {
    let mut response = Response::new(Either::Left(ProxyBody::full(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An entry as JSON: what the admin listener serves and `sandgate logs --json` prints.
#[derive(Serialize)]
struct EntryJson<'a> {
    seq: u64,
    time: String,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    path_truncated: bool,
    status: u16,
    micros: u64,
    bytes: Option<u64>,
    kind: &'static str,
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl<'a> From<&'a Entry> for EntryJson<'a> {
    fn from(e: &'a Entry) -> Self {
        let time = UNIX_EPOCH + Duration::from_micros(e.unix_micros);
        EntryJson {
            seq: e.seq,
            time: humantime::format_rfc3339_micros(time).to_string(),
            method: e.method.as_str(),
            path: e.path.as_str(),
            path_truncated: e.path.truncated(),
            status: e.status,
            micros: e.micros,
            bytes: e.bytes,
            kind: e.kind,
            port: e.port,
            request_id: Some(e.request_id.as_str()).filter(|id| !id.is_empty()),
        }
    }
}

/// One live reader of a sandbox's ring. Its buffer is the ring itself: it reads only when the
/// connection takes more, so a slow reader costs no memory; what the ring overwrote meanwhile
/// is reported as a `dropped` event.
struct Follow {
    log: Arc<RequestLog>,
    id: Box<str>,
    guard: FollowGuard,
    next: u64,
    /// The backlog's size on the first read; everything after.
    limit: usize,
    first: bool,
    shutdown: CancellationToken,
}

impl Follow {
    /// `None` when [`MAX_FOLLOWERS`] already follow.
    fn start(
        log: &Arc<RequestLog>,
        id: &str,
        limit: usize,
        shutdown: &CancellationToken,
    ) -> Option<Follow> {
        if log.followers.fetch_add(1, Ordering::AcqRel) >= MAX_FOLLOWERS {
            log.followers.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Follow {
            log: log.clone(),
            id: id.into(),
            guard: log.ring(id).follow(),
            next: 1,
            limit,
            first: true,
            shutdown: shutdown.clone(),
        })
    }

    /// The next piece of the stream: new entries, a keep-alive comment, or `None` at shutdown.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.guard.ring().is_evicted() {
                self.guard = self.log.ring(&self.id).follow();
                self.next = 1;
            }
            let ring = self.guard.ring().clone();
            let mut notified = std::pin::pin!(ring.notified());
            notified.as_mut().enable();
            let batch = ring.since(self.next, std::mem::replace(&mut self.limit, usize::MAX));
            let dropped = if std::mem::take(&mut self.first) {
                0
            } else {
                batch.dropped
            };
            self.next = batch.next_seq;
            if dropped > 0 || !batch.entries.is_empty() {
                return Some(render_events(&batch.entries, dropped));
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                _ = &mut notified => {}
                _ = tokio::time::sleep(KEEP_ALIVE) => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.log.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `event: dropped` (how many entries the reader missed), then one `event: request` per entry
/// with its sequence number as the event id.
fn render_events(entries: &[Entry], dropped: u64) -> Bytes {
    let mut out = Vec::with_capacity(64 + entries.len() * 256);
    if dropped > 0 {
        out.extend_from_slice(
            format!("event: dropped\ndata: {{\"dropped\":{dropped}}}\n\n").as_bytes(),
        );
    }
    for entry in entries {
        out.extend_from_slice(format!("id: {}\nevent: request\ndata: ", entry.seq).as_bytes());
        // Serialising a struct of strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &EntryJson::from(entry));
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

fn events(follow: Follow) -> Response<AdminBody> {
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        let chunk = follow.next_chunk().await?;
        Some((Ok(Frame::data(chunk)), follow))
    });
    let mut response = Response::new(Either::Right(StreamBody::new(Box::pin(stream) as _)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_strictly() {
        assert_eq!(parse_query(None), Ok((usize::MAX, false)));
        assert_eq!(parse_query(Some("limit=5&follow=1")), Ok((5, true)));
        assert_eq!(parse_query(Some("follow")), Ok((usize::MAX, true)));
        assert!(parse_query(Some("limit=-1")).is_err());
        assert!(parse_query(Some("follow=yes")).is_err());
        assert!(parse_query(Some("token=x")).is_err());
    }

    #[test]
    fn the_least_recently_used_sandbox_is_evicted_and_its_ring_freed() {
        let log = RequestLog::new(&LogConfig {
            requests_per_sandbox: 2,
            request_log_sandboxes: 2,
            ..LogConfig::default()
        })
        .unwrap();
        let a = log.ring("a");
        let b = log.ring("B");
        assert!(Arc::ptr_eq(&b, &log.ring("b")), "ids are lower-cased");
        push(&a, 10);
        push(&b, 20);
        let c = log.ring("c");
        assert!(a.is_evicted() && !b.is_evicted() && !c.is_evicted());
        assert!(log.existing("a").is_none());
    }

    /// A reader that falls behind costs no memory: the ring is its buffer, and what the ring
    /// overwrote meanwhile is told as a count.
    #[tokio::test]
    async fn a_slow_follower_is_told_how_many_it_missed() {
        let log = RequestLog::new(&LogConfig {
            requests_per_sandbox: 2,
            ..LogConfig::default()
        })
        .unwrap();
        let shutdown = CancellationToken::new();
        let mut follow = Follow::start(&log, "s", usize::MAX, &shutdown).unwrap();
        let ring = log.ring("s");
        push(&ring, 1);
        let first = follow.next_chunk().await.unwrap();
        assert!(
            first.starts_with(b"id: 1\nevent: request\ndata: {"),
            "{first:?}"
        );
        for micros in 2..=6 {
            push(&ring, micros);
        }
        let behind = String::from_utf8(follow.next_chunk().await.unwrap().to_vec()).unwrap();
        assert!(
            behind.starts_with("event: dropped\ndata: {\"dropped\":3}\n\nid: 5\n"),
            "{behind}"
        );
        assert!(behind.contains("\nid: 6\n"), "{behind}");
        shutdown.cancel();
        assert!(follow.next_chunk().await.is_none(), "ends at shutdown");
        assert!(Follow::start(&log, "s", 0, &shutdown).is_some());
        drop(follow);
        assert_eq!(log.followers.load(Ordering::Relaxed), 0);
    }

    fn push(ring: &Ring, unix_micros: u64) {
        ring.push(unix_micros, |e| {
            e.kind = "toolbox";
            e.method.set("GET");
            e.path.set("/");
        });
    }
}
