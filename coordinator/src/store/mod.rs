//! Durable state behind a trait, so PostgreSQL can stand beside SQLite later.
//!
//! The scheduler keeps the live state in memory and describes every change as
//! [`StoreOp`]s; a store commits them in order, in groups (one transaction for
//! all the changes that arrived while the last one was being written), and
//! acknowledges each group. The coordinator answers a request only after its
//! changes are committed, so an acknowledged submit, lease or completion
//! survives `kill -9`.

mod outbox;
mod rows;
mod sqlite;
mod uploads;

use tokio::sync::oneshot;

use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{AttemptRecord, Availability, BatchRecord, Counts, Failure, JobRecord, JobState, Millis, WorkerRecord};

pub use sqlite::{Commits, Durability, SqliteStore};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub sha256: String,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub created_ms: Millis,
}

/// The mutable part of a job row.
#[derive(Debug, Clone)]
pub struct JobUpdate {
    pub id: JobId,
    pub attempt: u32,
    pub state: JobState,
    pub last_failure: Option<Failure>,
    pub started_ms: Option<Millis>,
    pub finished_ms: Option<Millis>,
    pub handed_back: u32,
    pub forgiven: u32,
}

impl JobUpdate {
    pub fn of(job: &JobRecord) -> JobUpdate {
        JobUpdate {
            id: job.id,
            attempt: job.attempt,
            state: job.state.clone(),
            last_failure: job.last_failure.clone(),
            started_ms: job.started_ms,
            finished_ms: job.finished_ms,
            handed_back: job.handed_back,
            forgiven: job.forgiven,
        }
    }
}

#[derive(Debug, Clone)]
pub enum StoreOp {
    InsertBatch(BatchRecord),
    InsertJob(Box<JobRecord>),
    UpdateJob(JobUpdate),
    CancelBatch(BatchId),
    /// The batch's last job finished: its final counts are kept with it (its
    /// jobs then live only in the store).
    FinishBatch {
        id: BatchId,
        finished_ms: Millis,
        counts: Counts,
        started: bool,
    },
    /// The batch's first lease.
    StartBatch {
        id: BatchId,
        started_ms: Millis,
    },
    /// A finished batch runs again (a retry): unfinished, not cancelled, its
    /// blocklist cleared.
    ReopenBatch(BatchId),
    /// An operator paused or resumed the batch.
    SetPaused {
        batch: BatchId,
        paused: bool,
    },
    /// An operator gave the batch (and so each of its jobs) a new priority.
    SetPriority {
        batch: BatchId,
        priority: i32,
    },
    UpsertWorker(WorkerRecord),
    /// A worker's success and failure counts (cheaper than the whole record).
    WorkerCounters {
        id: WorkerId,
        succeeded: u64,
        failed: u64,
    },
    /// A worker's failures of a batch so far (the per-batch blocklist).
    CountFailure {
        worker: WorkerId,
        batch: BatchId,
        failures: u32,
    },
    /// Bytes uploaded: new, or again (then only their time moves on, so
    /// retention counts an upload's age from its last upload).
    InsertImage(ImageRecord),
    /// Retention removes an upload no batch uses: its bytes' row and every
    /// principal's reference (unless a batch uses it by now).
    ForgetUpload(String),
    /// `owner` uploaded the image (its bytes may have been stored before, by someone else).
    InsertImageRef {
        sha256: String,
        owner: String,
        created_ms: Millis,
    },
    /// An attempt ended (the job's history).
    InsertAttempt(Box<AttemptRecord>),
    /// A finished batch is deleted: its jobs, their attempts and its
    /// blocklist go; its row stays as a tombstone (owner, request id) marked
    /// `deleted_ms`, so deleting again is idempotent and lists skip it.
    DeleteBatch {
        id: BatchId,
        deleted_ms: Millis,
    },
    /// An admin disabled or enabled the worker.
    SetAvailability {
        worker: WorkerId,
        availability: Availability,
    },
    /// An admin forgot a worker that was gone.
    DeleteWorker(WorkerId),
    /// A webhook delivery owed, delivered or put off.
    Outbox(OutboxOp),
}

/// A webhook delivery owed: the body is fixed when the event happens; the
/// signature is made at each try (it covers the time of sending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub target: String,
    /// `batch.finished` or `job.failed`.
    pub event: String,
    pub batch: BatchId,
    /// The JSON body.
    pub body: String,
    pub created_ms: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub entry: OutboxEntry,
    /// Tries so far.
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub enum OutboxOp {
    Enqueue(OutboxEntry),
    /// Delivered, or given up: the row goes.
    Done(i64),
    /// A try failed: the next one not before `next_ms`.
    Retry {
        id: i64,
        next_ms: Millis,
        attempts: u32,
        error: String,
    },
}

/// The owner of every image reference an older build stored (before uploads
/// were per principal): anyone may use those, as then.
pub const LEGACY_IMAGE_OWNER: &str = "*";

/// Everything the scheduler needs to resume after a restart: unfinished
/// batches and their jobs, workers, blocklist counts, image hashes.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub batches: Vec<BatchRecord>,
    /// Jobs of unfinished batches only.
    pub jobs: Vec<JobRecord>,
    pub workers: Vec<WorkerRecord>,
    pub failures: Vec<(WorkerId, BatchId, u32)>,
    pub images: Vec<String>,
    /// (owner, sha256): who uploaded which image ([`LEGACY_IMAGE_OWNER`] for images an older build stored).
    pub image_refs: Vec<(String, String)>,
    pub next_batch: i64,
    pub next_job: i64,
    pub next_worker: i64,
}

pub use crate::error::StoreError;

pub type StoreResult<T> = Result<T, StoreError>;

/// Resolves when the ops it was given are durable.
pub type CommitTicket = oneshot::Receiver<StoreResult<()>>;

pub trait Store: Send + Sync + 'static {
    /// The state to resume from. A row that cannot be read is logged and
    /// skipped (or, for a job's state, loaded as failed with the reason), never
    /// a reason not to start.
    fn load(&self) -> StoreResult<Snapshot>;
    /// Queues `ops` behind every earlier commit; the ticket resolves once they
    /// are durable. Empty `ops` make a barrier: it resolves once everything
    /// queued before it is durable.
    fn commit(&self, ops: Vec<StoreOp>) -> CommitTicket;
    fn batch(&self, id: BatchId) -> StoreResult<Option<BatchRecord>>;
    /// Newest first, ids below `before`, owned by `owner` if given.
    fn batches_before(&self, before: BatchId, limit: usize, owner: Option<&str>) -> StoreResult<Vec<BatchRecord>>;
    /// Batches that finished before `cutoff` and are not deleted, the oldest
    /// first, at most `limit` (retention's next step).
    fn finished_before(&self, cutoff: Millis, limit: usize) -> StoreResult<Vec<BatchId>>;
    /// The batch `owner` submitted with `request_id` (ids are per submitter).
    fn batch_for_request(&self, owner: &str, request_id: &str) -> StoreResult<Option<BatchId>>;
    fn batch_jobs(&self, batch: BatchId) -> StoreResult<Vec<JobRecord>>;
    fn job(&self, id: JobId) -> StoreResult<Option<JobRecord>>;
    /// The job's ended attempts, oldest first.
    fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>>;
    fn image(&self, sha256: &str) -> StoreResult<Option<ImageRecord>>;
    /// Uploads no batch uses, last uploaded before `cutoff`, the oldest first,
    /// at most `limit` (retention's uploads step).
    fn unused_uploads(&self, cutoff: Millis, limit: usize) -> StoreResult<Vec<String>>;
    /// Webhook deliveries due at `now`, the longest due first, at most `limit`.
    fn outbox_due(&self, now: Millis, limit: usize) -> StoreResult<Vec<OutboxRow>>;
    /// How many webhook deliveries are owed.
    fn outbox_pending(&self) -> StoreResult<u64>;
    /// Where the state lives, for logs.
    fn describe(&self) -> String;
}
