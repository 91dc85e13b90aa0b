//! sandgate: a reverse proxy for sandbox platforms.
//!
//! Layers, each importing only the ones below it (checked by `tests/layers.rs`):
//! the binary (`main.rs`) → [`app`] (composition root) → [`http`] (server and the request
//! pipeline) → [`auth`], [`registry`], [`activity`], [`ssh`], [`tls`], [`wake`] → [`config`],
//! [`metrics`] → [`base`].
//!
//! A request flows through the phases of [`http::pipeline`], in this order:
//! route → resolve → admit → activity → forward → respond.

pub mod activity;
pub mod app;
pub mod auth;
pub mod base;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod ssh;
pub mod tls;
pub mod wake;

pub use crate::app::{start, Running, StartError};
pub use crate::base::FastMap;
// The old top-level paths of the modules now under `http/` (other modules and the fuzz targets
// still name them).
pub use crate::http::pipeline as proxy;
pub use crate::http::{
    body, client_addr, client_io, forward, relay, respond, route, server, upstream,
};
