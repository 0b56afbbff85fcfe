//! Records the coordinator keeps, and a job's life as a state machine with pure
//! transitions (no I/O, no clock: `now` is passed in), so every rule is tested
//! directly.
//!
//! ```text
//!                 lease                    complete (current attempt)
//!   ┌────────┐ ───────────▶ ┌─────────┐ ──────────────────────────▶ ┌───────────┐
//!   │ Queued │              │ Running │                             │ Succeeded │
//!   └────────┘ ◀─────────── └─────────┘ ──┐                         └───────────┘
//!     │   ▲  lease expired / retryable    │ non-retryable failure,
//!     │   │  failure, attempts left       │ or attempts exhausted   ┌────────┐
//!     │   │  (not before now + backoff)   └───────────────────────▶ │ Failed │
//!     │                                                             └────────┘
//!     │ cancel                 cancel: flagged; the worker stops    ┌───────────┐
//!     └──────────────────────▶ at its next heartbeat, or the lease ▶│ Cancelled │
//!                              expires                              └───────────┘
//! ```
//!
//! Fencing: every lease is attempt `n` with a fresh random lease secret;
//! heartbeats, completions and failures carry both ([`LeaseClaim`]), and any
//! `n` other than the job's current running attempt, or a wrong secret, is
//! rejected. Only the committed attempt's outputs become the job's result. An
//! attempt a draining worker hands back is requeued at once and does not count
//! against `max_attempts`.
//!
//! One file per record: [`job`] (the state machine), [`batch`], [`worker`],
//! and [`submit`] (what a submit asks for, before ids exist).

pub mod batch;
#[cfg(test)]
pub mod fixtures;
pub mod job;
pub mod submit;
pub mod worker;

pub use batch::{BatchPhase, BatchRecord, Counts, Load, Notify, NotifyOn};
pub use job::{
    AfterFailure, AttemptEnd, AttemptRecord, AttemptStop, Backoff, CancelOutcome, Failure, HeartbeatVerdict, ImageSource, JobOutputs, JobRecord, JobState,
    OutputRecord, SpanRecord, StateKind,
};
pub use submit::{NewBatch, NewJob, Submitted};
pub use worker::{Availability, BusyReading, DeviceReadings, DeviceRecord, MemoryReading, WorkerProfile, WorkerRecord};

/// Milliseconds since the Unix epoch (the coordinator's one time unit).
pub type Millis = i64;
