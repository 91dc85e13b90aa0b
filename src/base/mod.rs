//! The bottom layer: small types and helpers every other module may use. It imports nothing of
//! ours (checked by `tests/layers.rs`).

pub mod clock;
pub mod header_scan;
pub mod html;
pub mod log_buffer;
pub mod ports;
pub mod request_ring;
pub mod thread_slot;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future: what the object-safe traits (registry backends, activity sinks)
/// return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A concurrent map with foldhash: several times cheaper than SipHash for the short keys of the
/// hot path (sandbox ids), randomly seeded per map. The maps it backs are bounded or keyed by
/// data the proxy already validated.
pub type FastMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

/// What a connection holds against the connection limits (global and per IP). Upgraded
/// connections (WebSockets) keep holding it after the HTTP connection task ends.
pub type ConnectionSlots = Arc<dyn std::any::Any + Send + Sync>;
