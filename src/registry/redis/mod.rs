//! The `redis` registry backend (key schema: `docs/redis.md`), its cache invalidation channel,
//! and the one Redis handle that the backend, the `redis` activity sink and the admin CLI share.
//!
//! The handle lives here, below the registry's other users: `activity` may import `registry`
//! (its sinks reuse the registry's clients), and `registry` never imports `activity`.

pub mod backend;
pub mod conn;
pub mod invalidation;

pub use backend::RedisRegistry;
pub use conn::{RedisFailure, RedisHandle};
pub use invalidation::Invalidation;
