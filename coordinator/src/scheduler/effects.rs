//! What one scheduler call did, as data: store ops to commit, events for
//! watchers, and [`Observation`]s for metrics and traces. The scheduler's
//! output vocabulary lives here so that metrics and traces depend on the
//! scheduler, never the reverse.

use crate::ids::{BatchId, JobId};
pub use crate::model::AttemptEnd;
use crate::model::{Millis, StateKind};
use crate::store::StoreOp;

/// What a watcher is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Queued,
    Started,
    Progress,
    Succeeded,
    Failed,
    Cancelled,
    BatchFinished,
    Waiting,
    /// An operator changed the batch itself (its priority).
    BatchChanged,
}

impl EventKind {
    /// The event a job's move into `state` makes.
    pub fn of(state: StateKind) -> EventKind {
        match state {
            StateKind::Queued => EventKind::Queued,
            StateKind::Running => EventKind::Started,
            StateKind::Succeeded => EventKind::Succeeded,
            StateKind::Failed => EventKind::Failed,
            StateKind::Cancelled => EventKind::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub batch: BatchId,
    pub job: Option<JobId>,
}

/// The side effects of one scheduler call.
#[derive(Debug, Default)]
pub struct Effects {
    pub ops: Vec<StoreOp>,
    pub events: Vec<Event>,
    /// Batches that finished: they leave memory once this is committed.
    pub finished_batches: Vec<BatchId>,
    /// New work became leasable: wake long-polling workers.
    pub wake: bool,
    /// Answer only after every earlier change is committed (even with no ops).
    pub barrier: bool,
    /// What the metrics count (recorded once the change is committed).
    pub observations: Vec<Observation>,
}

/// What the scheduler tells the metrics about one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A job was leased after waiting this long since it became leasable.
    Leased { queue_wait_ms: Millis },
    /// An attempt ended after running this long.
    AttemptEnded { job: JobId, attempt: u32, end: AttemptEnd, run_ms: Millis },
    /// A failed, expired or timed-out attempt put its job back in the queue.
    Retried,
    /// A job reached a final state.
    Finished { job: JobId, state: StateKind },
    /// A worker reached the failure limit on a batch and gets no more of its jobs.
    WorkerBlocked,
}
