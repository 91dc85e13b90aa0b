//! The `daytona` registry backend: the API client ([`api`], also used by the `daytona` activity
//! sink), the [`Registry`](super::Registry) impl ([`backend`]) and the optional Redis L2 ([`l2`]).

pub mod api;
mod backend;
mod l2;

pub use api::DaytonaApi;
pub use backend::DaytonaRegistry;
