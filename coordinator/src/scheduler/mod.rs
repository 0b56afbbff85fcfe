//! The live scheduling state, in memory, with every change described as store
//! ops (made durable by the caller before it answers) and watch events.
//!
//! Order of service: highest priority first; within a priority, fair share
//! between batches (the batch with the fewest running jobs goes next, the older
//! batch on a tie); FIFO within a batch ([`queue`]). A job goes only to a device
//! whose memory fits its estimate, and never to a worker that has failed that
//! batch `worker_batch_failure_limit` times ([`workers`]). Leases expire unless
//! heartbeats extend them, and an attempt that outlives the job's time limit is
//! ended ([`leases`]). A queued job that no connected device can fit says so, and
//! fails with that reason after `unfit_grace_ms`.
//!
//! Files by idea: [`restore`] (resume from the store), [`submit`], [`attempts`]
//! (lease, heartbeat, complete, fail), [`control`] (cancel, pause, retry,
//! delete), [`rotation`] (disable, drain, forget workers), [`tick`] (time
//! passing), [`queries`]; [`transition`] is the one path by which a job moves
//! between states and every index follows, and [`invariants`] says what must
//! hold between the indexes after every call. The output vocabulary
//! ([`Effects`], [`Event`], [`Observation`]) is [`effects`]'s.
//!
//! Memory stays bounded: a finished batch leaves memory once its end is
//! committed (the store answers for it), request ids are kept for a window
//! ([`requests`]), and workers unseen for `forget_workers_after_ms` are dropped.

mod attempts;
mod control;
mod deps;
mod effects;
mod invariants;
mod leases;
mod queries;
mod queue;
mod requests;
mod restore;
mod rotation;
mod submit;
mod tick;
mod transition;
mod uploads;
mod workers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use stylefarm_core::labels::{self, Labels};
use stylefarm_proto::JobProgress;

use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{AttemptStop, Backoff, BatchRecord, JobRecord, JobState, Millis, SpanRecord};
use crate::secrets::{LeaseClaim, Secret};
use deps::Dependencies;
use queue::{PickRules, ReadyQueue};
use requests::RequestIds;
use workers::WorkerRegistry;

pub use control::{DeleteMode, PauseMode, RetryTarget};
pub use effects::{AttemptEnd, Effects, Event, EventKind, Observation};
pub use rotation::WorkerAction;
pub use workers::Registration;

/// Jobs by what a worker could do about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// Queued, including those waiting out a retry backoff and those no device fits.
    pub queued: u64,
    pub running: u64,
    /// Queued jobs that no registered device can fit.
    pub unfit: u64,
    /// Queued jobs waiting for a dependency to succeed.
    pub blocked: u64,
    /// Queued jobs of paused batches (neither unfit nor blocked).
    pub paused: u64,
}

impl Demand {
    /// Jobs a worker could take now or is running: what autoscaling follows.
    pub fn workable(&self) -> u64 {
        self.queued.saturating_sub(self.unfit + self.blocked + self.paused) + self.running
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub lease_ttl_ms: Millis,
    pub default_max_attempts: u32,
    pub backoff: Backoff,
    pub worker_batch_failure_limit: u32,
    /// How long a queued job may wait while connected workers have no device
    /// that fits it, before it fails with that reason.
    pub unfit_grace_ms: Millis,
    /// How long submit request ids are remembered in memory.
    pub request_id_window_ms: Millis,
    /// Workers unseen this long (running nothing) leave memory.
    pub forget_workers_after_ms: Millis,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_ttl_ms: 30_000,
            default_max_attempts: 3,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(120)),
            worker_batch_failure_limit: 3,
            unfit_grace_ms: 600_000,
            request_id_window_ms: 24 * 3_600_000,
            forget_workers_after_ms: 24 * 3_600_000,
        }
    }
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Grant {
    pub job: JobRecord,
    pub attempt: u32,
    pub secret: Secret,
    /// How long the job waited to be leased.
    pub queue_wait_ms: Millis,
    /// The committed outputs of the jobs it depends on, in `depends_on` order.
    pub inputs: Vec<DependencyOutput>,
}

/// Where a dependency's committed attempt put its outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyOutput {
    pub job: JobId,
    pub name: String,
    pub prefix: String,
}

/// One job's part of a heartbeat.
pub type Beat = (JobId, LeaseClaim, Option<JobProgress>);

/// How a worker reports an attempt that did not succeed.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    /// The worker's words (kept in the job's history).
    pub reason: String,
    pub stop: AttemptStop,
    /// The worker's steps up to the failure.
    pub spans: Vec<SpanRecord>,
}

/// How often the fit check runs.
const FIT_CHECK_EVERY_MS: Millis = 1_000;
/// How often the sizes of the in-memory indexes are logged (debug, target `stylefarm_coordinator::sizes`).
const SIZES_LOG_EVERY_MS: Millis = 10_000;

pub struct Scheduler {
    config: SchedulerConfig,
    batches: BTreeMap<BatchId, BatchRecord>,
    /// What the fit check needs of each in-memory batch, so it skips, with one
    /// look, the batches that fit every device and require no labels.
    batch_fit: HashMap<BatchId, BatchFit>,
    /// Jobs of unfinished batches (finished ones are read from the store).
    jobs: HashMap<JobId, JobRecord>,
    /// Each in-memory batch's jobs, in index order.
    members: HashMap<BatchId, Vec<JobId>>,
    queue: ReadyQueue,
    /// Running jobs per principal (owners with none are absent): fair share
    /// between principals comes before fair share between batches.
    running_by_owner: HashMap<String, u32>,
    workers: WorkerRegistry,
    /// Workers whose succeeded/failed counters changed since they were last
    /// written: statistics, written once a second (and before any read of them)
    /// rather than with every job, which would add a page to every commit.
    dirty_counters: HashSet<WorkerId>,
    progress: HashMap<JobId, JobProgress>,
    /// Which jobs wait on which; queued jobs whose dependencies have not all succeeded.
    deps: Dependencies,
    /// Queued jobs no connected device fits: why, and since when.
    waiting: HashMap<JobId, (String, Millis)>,
    last_fit_check: Millis,
    request_ids: RequestIds,
    images: HashSet<String>,
    /// sha256 → who uploaded it, so may use it (per principal: one user's
    /// upload tells nobody else that the bytes exist).
    image_refs: HashMap<String, HashSet<String>>,
    next_batch: i64,
    next_job: i64,
}

/// A batch's jobs taken together, for the fit check.
#[derive(Debug, Default, Clone, Copy)]
struct BatchFit {
    /// The largest estimate among its jobs.
    max_estimate: u64,
    /// Whether any of its jobs requires worker labels (a pool).
    pooled: bool,
}

impl BatchFit {
    fn add(&mut self, job: &JobRecord) {
        self.max_estimate = self.max_estimate.max(job.estimate_bytes);
        self.pooled |= !job.requires.is_empty();
    }
}

struct Rules<'a> {
    jobs: &'a HashMap<JobId, JobRecord>,
    batches: &'a BTreeMap<BatchId, BatchRecord>,
    running_by_owner: &'a HashMap<String, u32>,
    workers: &'a WorkerRegistry,
    worker: WorkerId,
    /// The worker's labels: a job goes only where they meet its requirements (pools).
    labels: &'a Labels,
    limit: u32,
    memory: u64,
}

impl PickRules for Rules<'_> {
    fn eligible(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_some_and(|j| {
            matches!(j.state, JobState::Queued { .. }) && (self.memory == 0 || j.estimate_bytes <= self.memory) && labels::satisfied(&j.requires, self.labels)
        })
    }
    fn gone(&self, job: JobId) -> bool {
        !matches!(self.jobs.get(&job).map(|j| &j.state), Some(JobState::Queued { .. }))
    }
    fn blocked(&self, batch: BatchId) -> bool {
        // a batch whose requirements this worker does not meet is skipped whole (cheap: one check per batch)
        self.batches.get(&batch).is_some_and(|b| b.paused || !labels::satisfied(&b.requires, self.labels))
            || self.workers.blocked(self.worker, batch, self.limit)
    }
    fn share(&self, batch: BatchId) -> (u32, u32) {
        self.batches.get(&batch).map_or((0, 0), |b| (self.running_by_owner.get(&b.owner).copied().unwrap_or(0), b.counts.running))
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
