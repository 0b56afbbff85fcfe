//! stylefarm's coordinator: takes batches of style-transfer jobs over gRPC, keeps
//! them in SQLite, leases them to workers with fencing, and serves progress,
//! results and outputs back to users.
//!
//! Layout: [`model`] (records and the job state machine), [`scheduler`] (queues,
//! fair share, leases, in memory), [`store`] (durable state, group commit),
//! [`farm`] (the two joined, events, the clock), [`api`] (the gRPC services),
//! [`validate`] / [`convert`] (the wire edge), [`web`] (the dashboard),
//! [`server`] (`run`).

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod convert;
pub mod error;
pub mod events;
pub mod farm;
pub mod filewatch;
pub mod follow;
pub mod gate;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod quota;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tiling;
pub mod traces;
pub mod validate;
pub mod video;
pub mod web;

pub use config::CoordinatorConfig;
pub use server::run;
