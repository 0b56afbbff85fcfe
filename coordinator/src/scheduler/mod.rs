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
//! Memory stays bounded: a finished batch leaves memory once its end is
//! committed (the store answers for it), request ids are kept for a window
//! ([`requests`]), and workers unseen for `forget_workers_after_ms` are dropped.

mod deps;
mod leases;
mod queue;
mod requests;
mod workers;

use std::collections::{BTreeMap, HashMap, HashSet};

use stylefarm_proto::JobProgress;

use crate::auth::Principal;
use crate::error::{CoordError, Result};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::metrics::{AttemptEnd, Observation};
use crate::model::{
    AfterFailure, AttemptRecord, Backoff, BatchRecord, CancelOutcome, Counts, DeviceRecord, HeartbeatVerdict, ImageSource, JobOutputs, JobRecord, JobState,
    MemoryReading, Millis, SpanRecord, StateKind, WorkerRecord,
};
use crate::secrets::{LeaseClaim, Secret};
use crate::store::{ImageRecord, JobUpdate, Snapshot, StoreOp};
use deps::Dependencies;
use leases::Due;
use queue::{PickRules, ReadyQueue};
use requests::RequestIds;
pub use workers::Registration;
use workers::WorkerRegistry;

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
}

impl Demand {
    /// Jobs a worker could take now or is running: what autoscaling follows.
    pub fn workable(&self) -> u64 {
        self.queued.saturating_sub(self.unfit + self.blocked) + self.running
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
            backoff: Backoff { base_ms: 2_000, max_ms: 120_000 },
            worker_batch_failure_limit: 3,
            unfit_grace_ms: 600_000,
            request_id_window_ms: 24 * 3_600_000,
            forget_workers_after_ms: 24 * 3_600_000,
        }
    }
}

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

#[derive(Debug)]
pub struct NewJob {
    pub name: String,
    pub content: ImageSource,
    pub styles: Vec<ImageSource>,
    pub params_json: String,
    pub estimate_bytes: u64,
    pub time_limit_ms: u64,
    /// Indices of earlier jobs of the same batch that must succeed first.
    pub depends_on: Vec<u32>,
    /// What the worker does (JSON), for jobs other than a plain render.
    pub task: Option<String>,
}

#[derive(Debug)]
pub struct NewBatch {
    pub name: String,
    pub priority: i32,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub request_id: Option<String>,
    pub jobs: Vec<NewJob>,
}

#[derive(Debug)]
pub struct Submitted {
    pub batch: BatchId,
    pub jobs: Vec<JobId>,
    pub deduplicated: bool,
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
    pub reason: String,
    /// The worker's steps up to the failure.
    pub spans: Vec<SpanRecord>,
    pub retryable: bool,
    /// Stopped because a heartbeat said CANCEL.
    pub cancelled: bool,
    /// Handed back unfinished by a draining worker: not counted.
    pub handed_back: bool,
}

/// How often the fit check runs.
const FIT_CHECK_EVERY_MS: Millis = 1_000;
/// How often the sizes of the in-memory indexes are logged (debug, target `stylefarm_coordinator::sizes`).
const SIZES_LOG_EVERY_MS: Millis = 10_000;

pub struct Scheduler {
    config: SchedulerConfig,
    batches: BTreeMap<BatchId, BatchRecord>,
    /// Largest estimate among each in-memory batch's jobs (the fit check skips
    /// batches that fit).
    batch_max_estimate: HashMap<BatchId, u64>,
    /// Jobs of unfinished batches (finished ones are read from the store).
    jobs: HashMap<JobId, JobRecord>,
    /// Each in-memory batch's jobs, in index order.
    members: HashMap<BatchId, Vec<JobId>>,
    queue: ReadyQueue,
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
    next_batch: i64,
    next_job: i64,
}

struct Rules<'a> {
    jobs: &'a HashMap<JobId, JobRecord>,
    batches: &'a BTreeMap<BatchId, BatchRecord>,
    workers: &'a WorkerRegistry,
    worker: WorkerId,
    limit: u32,
    memory: u64,
}

impl PickRules for Rules<'_> {
    fn eligible(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_some_and(|j| matches!(j.state, JobState::Queued { .. }) && (self.memory == 0 || j.estimate_bytes <= self.memory))
    }
    fn gone(&self, job: JobId) -> bool {
        !matches!(self.jobs.get(&job).map(|j| &j.state), Some(JobState::Queued { .. }))
    }
    fn blocked(&self, batch: BatchId) -> bool {
        self.workers.blocked(self.worker, batch, self.limit)
    }
    fn running(&self, batch: BatchId) -> u32 {
        self.batches.get(&batch).map(|b| b.counts.running).unwrap_or(0)
    }
}

impl Scheduler {
    /// Resumes from the store's snapshot (unfinished batches only). Running
    /// jobs keep their lease for one more TTL from `now`, so their workers can
    /// reconnect and carry on.
    pub fn restore(config: SchedulerConfig, snapshot: Snapshot, now: Millis) -> Scheduler {
        let mut s = Scheduler {
            request_ids: RequestIds::new(config.request_id_window_ms),
            config,
            batches: BTreeMap::new(),
            batch_max_estimate: HashMap::new(),
            jobs: HashMap::new(),
            members: HashMap::new(),
            queue: ReadyQueue::default(),
            workers: WorkerRegistry::new(snapshot.next_worker),
            dirty_counters: HashSet::new(),
            progress: HashMap::new(),
            deps: Dependencies::default(),
            waiting: HashMap::new(),
            last_fit_check: now,
            images: snapshot.images.into_iter().collect(),
            next_batch: snapshot.next_batch,
            next_job: snapshot.next_job,
        };
        for mut batch in snapshot.batches {
            if batch.finished_ms.is_some() {
                continue;
            }
            batch.counts = Counts::default();
            if let Some(request_id) = &batch.request_id {
                s.request_ids.insert(request_id.clone(), batch.id, batch.created_ms);
            }
            s.batches.insert(batch.id, batch);
        }
        for worker in snapshot.workers {
            s.workers.restore(worker);
        }
        for (worker, batch, failures) in snapshot.failures {
            if s.batches.contains_key(&batch) {
                s.workers.restore_failures(worker, batch, failures);
            }
        }
        let mut waiting_on_deps = Vec::new();
        for mut job in snapshot.jobs {
            let Some(batch) = s.batches.get_mut(&job.batch) else { continue };
            batch.counts.total += 1;
            batch.counts.add(job.state.kind());
            let max = s.batch_max_estimate.entry(job.batch).or_default();
            *max = (*max).max(job.estimate_bytes);
            s.deps.add(job.id, &job.depends_on, false);
            match &mut job.state {
                JobState::Queued { .. } if !job.depends_on.is_empty() => waiting_on_deps.push(job.id),
                JobState::Queued { not_before_ms } if *not_before_ms > now => s.queue.delay(*not_before_ms, job.id),
                JobState::Queued { .. } => s.queue.push_back(job.priority, job.batch, job.id),
                JobState::Running { worker, lease_expires_ms, .. } => {
                    *lease_expires_ms = now + s.config.lease_ttl_ms;
                    s.workers.start(*worker, job.id);
                }
                _ => {}
            }
            s.members.entry(job.batch).or_default().push(job.id);
            s.jobs.insert(job.id, job);
        }
        for members in s.members.values_mut() {
            members.sort_by_key(|id| s.jobs[id].index);
        }
        // a job whose dependencies all succeeded goes in the queue (it may be
        // a retry, backing off); the others wait
        for id in waiting_on_deps {
            let job = &s.jobs[&id];
            if job.dependencies_met(|d| s.jobs.get(&d).map(|j| j.state.kind())) {
                match job.state {
                    JobState::Queued { not_before_ms } if not_before_ms > now => s.queue.delay(not_before_ms, id),
                    _ => s.queue.push_back(job.priority, job.batch, id),
                }
            } else {
                s.deps.add(id, &[], true);
            }
        }
        s
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    // ------------------------------------------------------------ queries

    /// An unfinished batch (finished ones live in the store).
    pub fn batch(&self, id: BatchId) -> Option<&BatchRecord> {
        self.batches.get(&id)
    }

    /// The job if it is in memory (its batch is unfinished).
    pub fn job(&self, id: JobId) -> Option<&JobRecord> {
        self.jobs.get(&id)
    }

    /// The batch's jobs if they are in memory, in index order.
    pub fn batch_jobs(&self, id: BatchId) -> Option<Vec<&JobRecord>> {
        let batch = self.batches.get(&id)?;
        if batch.finished_ms.is_some() {
            return None;
        }
        let members = self.members.get(&id)?;
        Some(members.iter().filter_map(|j| self.jobs.get(j)).collect())
    }

    pub fn progress(&self, id: JobId) -> Option<&JobProgress> {
        self.progress.get(&id)
    }

    pub fn waiting_reason(&self, id: JobId) -> Option<&str> {
        self.waiting.get(&id).map(|(r, _)| r.as_str())
    }

    pub fn workers(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.all()
    }

    pub fn worker(&self, id: WorkerId) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    pub fn running_jobs_of(&self, worker: WorkerId) -> Vec<JobId> {
        self.workers.running_jobs(worker)
    }

    pub fn has_image(&self, sha256: &str) -> bool {
        self.images.contains(sha256)
    }

    pub fn batch_for_request(&self, request_id: &str) -> Option<BatchId> {
        self.request_ids.get(request_id)
    }

    /// Whether `worker` has failed `batch` too often to get more of its jobs.
    pub fn is_blocked(&self, worker: WorkerId, batch: BatchId) -> bool {
        self.workers.blocked(worker, batch, self.config.worker_batch_failure_limit)
    }

    /// Batches not finished yet (those in memory).
    pub fn live_batches(&self) -> impl Iterator<Item = &BatchRecord> {
        self.batches.values()
    }

    /// What the farm has to do now, for autoscaling.
    pub fn demand(&self) -> Demand {
        let (queued, running) = self.batches.values().fold((0u64, 0u64), |(q, r), b| (q + b.counts.queued as u64, r + b.counts.running as u64));
        Demand { queued, running, unfit: self.waiting.len() as u64, blocked: self.deps.blocked_count() as u64 }
    }

    /// Sizes of the in-memory indexes (the soak benchmark prints them).
    pub fn sizes(&self) -> String {
        format!(
            "batches={} jobs={} progress={} waiting={} dependencies={} blocked={} request_ids={} workers={} running={}",
            self.batches.len(),
            self.jobs.len(),
            self.progress.len(),
            self.waiting.len(),
            self.deps.len(),
            self.deps.blocked_count(),
            self.request_ids.len(),
            self.workers.len(),
            self.workers.all_running().count()
        )
    }

    // ------------------------------------------------------------ changes

    pub fn add_image(&mut self, image: ImageRecord, fx: &mut Effects) -> bool {
        if !self.images.insert(image.sha256.clone()) {
            return false;
        }
        fx.ops.push(StoreOp::InsertImage(image));
        true
    }

    /// A new batch owned by `owner`, or (same request id as a batch still
    /// remembered) that batch again, answered once it is committed.
    pub fn submit(&mut self, new: NewBatch, owner: &str, now: Millis, fx: &mut Effects, trace_id: &mut dyn FnMut() -> String) -> Submitted {
        if let Some(batch) = new.request_id.as_deref().and_then(|r| self.request_ids.get(r)) {
            let jobs = self.batch_jobs(batch).map(|js| js.iter().map(|j| j.id).collect()).unwrap_or_default();
            fx.barrier = true;
            return Submitted { batch, jobs, deduplicated: true };
        }
        let id = BatchId(self.next_batch);
        self.next_batch += 1;
        let max_attempts = if new.max_attempts == 0 { self.config.default_max_attempts } else { new.max_attempts };
        let mut batch = BatchRecord {
            id,
            name: new.name,
            priority: new.priority,
            labels: new.labels,
            max_attempts,
            request_id: new.request_id,
            created_ms: now,
            finished_ms: None,
            cancel_requested: false,
            counts: Counts::default(),
            started: false,
            started_ms: None,
            owner: owner.to_string(),
        };
        fx.ops.push(StoreOp::InsertBatch(batch.clone()));
        let mut ids = Vec::with_capacity(new.jobs.len());
        let mut max_estimate = 0;
        for (index, spec) in new.jobs.into_iter().enumerate() {
            let job = JobRecord {
                id: JobId(self.next_job),
                batch: id,
                index: index as u32,
                name: spec.name,
                priority: batch.priority,
                content: spec.content,
                styles: spec.styles,
                params_json: spec.params_json,
                estimate_bytes: spec.estimate_bytes,
                max_attempts,
                attempt: 0,
                handed_back: 0,
                time_limit_ms: spec.time_limit_ms,
                state: JobState::Queued { not_before_ms: now },
                last_failure: None,
                created_ms: now,
                started_ms: None,
                finished_ms: None,
                trace_id: trace_id(),
                // validated at the edge: indices of earlier jobs
                depends_on: spec.depends_on.iter().filter_map(|&i| ids.get(i as usize).copied()).collect(),
                task: spec.task,
            };
            self.next_job += 1;
            max_estimate = max_estimate.max(job.estimate_bytes);
            batch.counts.total += 1;
            batch.counts.queued += 1;
            if job.depends_on.is_empty() {
                self.queue.push_back(batch.priority, id, job.id);
            } else {
                self.deps.add(job.id, &job.depends_on, true);
            }
            ids.push(job.id);
            fx.ops.push(StoreOp::InsertJob(Box::new(job.clone())));
            self.jobs.insert(job.id, job);
        }
        if let Some(request_id) = &batch.request_id {
            self.request_ids.insert(request_id.clone(), id, now);
        }
        self.batch_max_estimate.insert(id, max_estimate);
        self.members.insert(id, ids.clone());
        self.batches.insert(id, batch);
        fx.wake = true;
        // only the dashboard's farm-wide stream can be following a batch this new
        fx.events.push(Event { kind: EventKind::Queued, batch: id, job: None });
        Submitted { batch: id, jobs: ids, deduplicated: false }
    }

    /// Registers a worker for `caller`; see [`WorkerRegistry::register`].
    #[allow(clippy::too_many_arguments)]
    pub fn register_worker(
        &mut self,
        existing: Option<(WorkerId, String)>,
        caller: &Principal,
        name: String,
        devices: Vec<DeviceRecord>,
        version: String,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Registration> {
        let existing = existing.as_ref().map(|(id, secret)| (*id, secret.as_str()));
        let registration = self.workers.register(existing, &caller.name, name, devices, version, now)?;
        fx.ops.push(StoreOp::UpsertWorker(registration.record.clone()));
        Ok(registration)
    }

    /// The next job for an idle device of `worker` (memory 0 = do not match).
    pub fn lease(&mut self, worker: WorkerId, caller: &Principal, device_memory: u64, now: Millis, fx: &mut Effects) -> Result<Option<Grant>> {
        self.workers.act_as(worker, &caller.name, caller.is_admin(), now)?;
        self.release_delayed(now, fx);
        let rules = Rules {
            jobs: &self.jobs,
            batches: &self.batches,
            workers: &self.workers,
            worker,
            limit: self.config.worker_batch_failure_limit,
            memory: device_memory,
        };
        let Some((priority, batch, job_id)) = self.queue.pick(&rules) else {
            return Ok(None);
        };
        let ttl = self.config.lease_ttl_ms;
        let job = self.jobs.get_mut(&job_id).ok_or_else(|| CoordError::Internal(format!("picked job {job_id} is not in memory")))?;
        let leasable_since = match job.state {
            JobState::Queued { not_before_ms } => not_before_ms.max(job.created_ms),
            _ => job.created_ms,
        };
        let (attempt, secret) = job.lease(worker, now, ttl)?;
        let queue_wait_ms = now - leasable_since;
        fx.observations.push(Observation::Leased { queue_wait_ms });
        let mut grant = Grant { job: job.clone(), attempt, secret, queue_wait_ms, inputs: Vec::new() };
        grant.inputs = self.dependency_outputs(&grant.job);
        self.queue.remove(priority, batch, job_id);
        self.workers.start(worker, job_id);
        self.waiting.remove(&job_id);
        let batch_record = self.batches.get_mut(&batch).ok_or_else(|| CoordError::Internal(format!("job {job_id} has no batch")))?;
        batch_record.counts.moved(StateKind::Queued, StateKind::Running);
        if !batch_record.started {
            batch_record.started = true;
            batch_record.started_ms = Some(now);
            fx.ops.push(StoreOp::StartBatch { id: batch, started_ms: now });
        }
        fx.ops.push(StoreOp::UpdateJob(JobUpdate::of(&grant.job)));
        fx.events.push(Event { kind: EventKind::Started, batch, job: Some(job_id) });
        Ok(Some(grant))
    }

    /// The committed outputs of `job`'s dependencies (all succeeded: it was leasable).
    fn dependency_outputs(&self, job: &JobRecord) -> Vec<DependencyOutput> {
        job.depends_on
            .iter()
            .filter_map(|d| self.jobs.get(d))
            .filter_map(|d| match &d.state {
                JobState::Succeeded { outputs, .. } => Some(DependencyOutput { job: d.id, name: d.name.clone(), prefix: outputs.prefix.clone() }),
                _ => None,
            })
            .collect()
    }

    /// Progress in, verdicts out; the lease of every live attempt is extended.
    pub fn heartbeat(
        &mut self,
        worker: WorkerId,
        caller: &Principal,
        beats: Vec<Beat>,
        memory: Vec<MemoryReading>,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Vec<(JobId, u32, HeartbeatVerdict)>> {
        let record = self.workers.act_as(worker, &caller.name, caller.is_admin(), now)?;
        if let Some((i, reading)) = memory.iter().enumerate().find(|(_, m)| !record.devices.iter().any(|d| d.name == m.device)) {
            return Err(CoordError::invalid(format!("memory[{i}].device"), format!("`{}` is not one of this worker's registered devices", reading.device)));
        }
        record.memory = memory;
        let ttl = self.config.lease_ttl_ms;
        let mut verdicts = Vec::with_capacity(beats.len());
        for (job_id, claim, progress) in beats {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                verdicts.push((job_id, claim.attempt, HeartbeatVerdict::LeaseLost));
                continue;
            };
            let verdict = job.heartbeat(worker, &claim, now, ttl);
            if verdict != HeartbeatVerdict::LeaseLost {
                if let Some(progress) = progress {
                    self.progress.insert(job_id, progress);
                    fx.events.push(Event { kind: EventKind::Progress, batch: job.batch, job: Some(job_id) });
                }
            }
            verdicts.push((job_id, claim.attempt, verdict));
        }
        Ok(verdicts)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn complete(
        &mut self,
        worker: WorkerId,
        caller: &Principal,
        job_id: JobId,
        claim: &LeaseClaim,
        outputs: JobOutputs,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<()> {
        self.workers.act_as(worker, &caller.name, caller.is_admin(), now)?;
        let job = self.jobs.get_mut(&job_id).ok_or_else(|| stale_or_missing(job_id, claim.attempt))?;
        let leased_ms = job.state.leased_ms();
        let spans = outputs.spans.clone();
        job.complete(worker, claim, outputs, now)?;
        let ended = Ended { job: job_id, attempt: claim.attempt, worker: Some(worker), leased_ms, end: AttemptEnd::Succeeded };
        attempt_ended(fx, ended, String::new(), spans, now);
        if let Some(record) = self.workers.get_mut(worker) {
            record.succeeded += 1;
            self.dirty_counters.insert(worker);
        }
        self.after_attempt(job_id, Some(worker), StateKind::Running, now, fx);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn fail(
        &mut self,
        worker: WorkerId,
        caller: &Principal,
        job_id: JobId,
        claim: &LeaseClaim,
        failure: AttemptFailure,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<AfterFailure> {
        self.workers.act_as(worker, &caller.name, caller.is_admin(), now)?;
        let backoff = self.config.backoff;
        let job = self.jobs.get_mut(&job_id).ok_or_else(|| stale_or_missing(job_id, claim.attempt))?;
        let leased_ms = job.state.leased_ms();
        let after = if failure.handed_back {
            job.hand_back(worker, claim, now)?
        } else {
            job.fail(worker, claim, (failure.reason.clone(), failure.retryable), failure.cancelled, now, backoff)?
        };
        let end = match after {
            _ if failure.handed_back => AttemptEnd::HandedBack,
            AfterFailure::Cancelled => AttemptEnd::Cancelled,
            AfterFailure::Requeued { .. } | AfterFailure::Failed => AttemptEnd::Failed,
        };
        let handed_back = failure.handed_back;
        let ended = Ended { job: job_id, attempt: claim.attempt, worker: Some(worker), leased_ms, end };
        attempt_ended(fx, ended, failure.reason, failure.spans, now);
        if matches!(after, AfterFailure::Requeued { .. }) && !handed_back {
            fx.observations.push(Observation::Retried);
        }
        let batch = job.batch;
        if after != AfterFailure::Cancelled && !handed_back {
            self.count_failure(worker, batch, fx);
        }
        self.after_attempt(job_id, Some(worker), StateKind::Running, now, fx);
        Ok(after)
    }

    fn count_failure(&mut self, worker: WorkerId, batch: BatchId, fx: &mut Effects) {
        let failures = self.workers.count_failure(worker, batch);
        fx.ops.push(StoreOp::CountFailure { worker, batch, failures });
        if failures == self.config.worker_batch_failure_limit {
            fx.observations.push(Observation::WorkerBlocked);
            tracing::warn!(worker_id = %worker, batch_id = %batch, failures, "worker blocked from the batch");
        }
        if let Some(record) = self.workers.get_mut(worker) {
            record.failed += 1;
            self.dirty_counters.insert(worker);
        }
    }

    /// Writes the worker counters that changed since the last flush (the tick
    /// does it every second; reads of the counters and shutdown do it first).
    pub fn flush_counters(&mut self, fx: &mut Effects) {
        for id in self.dirty_counters.drain() {
            if let Some(record) = self.workers.get(id) {
                fx.ops.push(StoreOp::WorkerCounters { id, succeeded: record.succeeded, failed: record.failed });
            }
        }
    }

    /// Cancels the batch: queued jobs at once, running ones at their next heartbeat.
    pub fn cancel_batch(&mut self, id: BatchId, now: Millis, fx: &mut Effects) -> Result<(u32, u32)> {
        let batch = self.batches.get_mut(&id).ok_or_else(|| CoordError::not_found("batch", id))?;
        if batch.finished_ms.is_some() {
            return Ok((0, 0));
        }
        if !batch.cancel_requested {
            batch.cancel_requested = true;
            fx.ops.push(StoreOp::CancelBatch(id));
        }
        let priority = batch.priority;
        let cancelled_before = batch.counts.cancelled;
        let job_ids = self.members.get(&id).cloned().unwrap_or_default();
        let mut signalled = 0;
        for job_id in job_ids {
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            match job.cancel(now) {
                CancelOutcome::CancelledNow => {
                    // its dependents are cancelled with it (and counted below)
                    self.after_attempt(job_id, None, StateKind::Queued, now, fx);
                }
                CancelOutcome::Signalled => {
                    signalled += 1;
                    fx.ops.push(StoreOp::UpdateJob(JobUpdate::of(job)));
                }
                CancelOutcome::AlreadyFinished => {}
            }
        }
        self.queue.remove_batch(priority, id);
        fx.barrier = true;
        let cancelled = self.batches.get(&id).map(|b| b.counts.cancelled - cancelled_before).unwrap_or(0);
        Ok((cancelled, signalled))
    }

    /// Expires overdue leases, ends attempts past their time limit, releases
    /// jobs whose backoff is over, checks that queued jobs fit some device, and
    /// forgets what the windows say to.
    pub fn tick(&mut self, now: Millis, fx: &mut Effects) {
        let backoff = self.config.backoff;
        for (job_id, due) in leases::due(&self.jobs, self.workers.all_running(), now) {
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            let Some(worker) = job.running_worker() else { continue };
            let (attempt, batch, leased_ms) = (job.attempt, job.batch, job.state.leased_ms());
            let after = match due {
                Due::Expired => job.expire(now, backoff),
                Due::OverTime => job.time_out(now, backoff),
            };
            let Some(after) = after else { continue };
            let end = match (due, after) {
                (_, AfterFailure::Cancelled) => AttemptEnd::Cancelled,
                (Due::Expired, _) => AttemptEnd::Expired,
                (Due::OverTime, _) => AttemptEnd::TimedOut,
            };
            let reason = match end {
                AttemptEnd::Expired => "the lease expired: the worker stopped sending heartbeats".to_string(),
                AttemptEnd::TimedOut => format!("the attempt exceeded its time limit of {} s", job.time_limit_ms / 1000),
                _ => "cancelled".to_string(),
            };
            attempt_ended(fx, Ended { job: job_id, attempt, worker: Some(worker), leased_ms, end }, reason, Vec::new(), now);
            if matches!(after, AfterFailure::Requeued { .. }) {
                fx.observations.push(Observation::Retried);
            }
            match due {
                Due::Expired => {
                    tracing::warn!(job_id = %job_id, batch_id = %batch, worker_id = %worker, attempt, outcome = ?after, "lease expired");
                    if after != AfterFailure::Cancelled {
                        self.count_failure(worker, batch, fx);
                    }
                }
                Due::OverTime => {
                    tracing::warn!(job_id = %job_id, batch_id = %batch, worker_id = %worker, attempt, outcome = ?after, "attempt exceeded its time limit")
                }
            }
            self.after_attempt(job_id, Some(worker), StateKind::Running, now, fx);
        }
        self.release_delayed(now, fx);
        if now - self.last_fit_check >= FIT_CHECK_EVERY_MS {
            if now / SIZES_LOG_EVERY_MS != self.last_fit_check / SIZES_LOG_EVERY_MS {
                tracing::debug!(target: "stylefarm_coordinator::sizes", sizes = %self.sizes(), "in-memory indexes");
            }
            self.last_fit_check = now;
            self.check_fit(now, fx);
            self.flush_counters(fx);
            self.request_ids.expire(now);
            for id in self.workers.forget_idle(now - self.config.forget_workers_after_ms) {
                tracing::info!(worker_id = %id, "worker unseen for too long: forgotten (kept in the store)");
            }
        }
    }

    /// Marks queued jobs that no connected worker's device can fit (and fails
    /// those that waited longer than the grace period); clears the mark when
    /// such a device shows up.
    fn check_fit(&mut self, now: Millis, fx: &mut Effects) {
        let largest = self.workers.largest_device(now - self.config.lease_ttl_ms);
        let mut unfit = Vec::new();
        if let Some(largest) = largest {
            for (batch, entries) in self.queue.batches() {
                if self.batch_max_estimate.get(&batch).is_none_or(|&m| m <= largest) {
                    continue;
                }
                for id in entries {
                    if let Some(job) = self.jobs.get(id).filter(|j| matches!(j.state, JobState::Queued { .. }) && j.estimate_bytes > largest) {
                        unfit.push((job.id, job.batch, job.estimate_bytes));
                    }
                }
            }
        }
        let unfit_ids: HashSet<JobId> = unfit.iter().map(|(id, _, _)| *id).collect();
        let cleared: Vec<JobId> = self.waiting.keys().filter(|id| !unfit_ids.contains(id)).copied().collect();
        for id in cleared {
            self.waiting.remove(&id);
            if let Some(job) = self.jobs.get(&id).filter(|j| matches!(j.state, JobState::Queued { .. })) {
                fx.events.push(Event { kind: EventKind::Waiting, batch: job.batch, job: Some(id) });
            }
        }
        let Some(largest) = largest else { return };
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        for (id, batch, estimate) in unfit {
            let reason = format!(
                "no connected worker has a device that fits it: it needs about {:.1} GiB, the largest device has {:.1} GiB",
                gib(estimate),
                gib(largest)
            );
            let since = match self.waiting.get(&id) {
                Some((_, since)) => *since,
                None => {
                    fx.events.push(Event { kind: EventKind::Waiting, batch, job: Some(id) });
                    now
                }
            };
            self.waiting.insert(id, (reason.clone(), since));
            if now - since >= self.config.unfit_grace_ms {
                let Some(job) = self.jobs.get_mut(&id) else { continue };
                if job.fail_queued(format!("{reason} (waited {} s)", (now - since) / 1000), now) {
                    self.waiting.remove(&id);
                    self.after_attempt(id, None, StateKind::Queued, now, fx);
                }
            }
        }
    }

    fn release_delayed(&mut self, now: Millis, fx: &mut Effects) {
        for job_id in self.queue.due(now) {
            let Some(job) = self.jobs.get(&job_id) else { continue };
            if !matches!(job.state, JobState::Queued { .. }) {
                continue;
            }
            self.queue.push_front(job.priority, job.batch, job_id);
            fx.wake = true;
        }
    }

    /// Bookkeeping after a job left `from`: counts, queues, worker sets, the
    /// store op, the event, and the batch's end.
    fn after_attempt(&mut self, job_id: JobId, worker: Option<WorkerId>, from: StateKind, now: Millis, fx: &mut Effects) {
        let Some((to, batch_id)) = self.settle(job_id, worker, from, now, fx) else { return };
        match to {
            StateKind::Succeeded => self.release_dependents(job_id, fx),
            StateKind::Failed | StateKind::Cancelled => self.end_dependents(job_id, now, fx),
            _ => {}
        }
        let Some(batch) = self.batches.get_mut(&batch_id) else { return };
        if batch.counts.finished() && batch.finished_ms.is_none() {
            batch.finished_ms = Some(now);
            fx.ops.push(StoreOp::FinishBatch { id: batch_id, finished_ms: now, counts: batch.counts.clone(), started: batch.started });
            fx.events.push(Event { kind: EventKind::BatchFinished, batch: batch_id, job: None });
            fx.finished_batches.push(batch_id);
            tracing::info!(batch_id = %batch_id, counts = ?batch.counts, "batch finished");
        }
    }

    /// The job's own bookkeeping after it left `from` (not its dependents', not
    /// the batch's end): its new state and batch.
    fn settle(&mut self, job_id: JobId, worker: Option<WorkerId>, from: StateKind, now: Millis, fx: &mut Effects) -> Option<(StateKind, BatchId)> {
        let job = self.jobs.get(&job_id)?;
        let to = job.state.kind();
        let batch_id = job.batch;
        if let (StateKind::Running, Some(worker)) = (from, worker) {
            self.workers.stop(worker, job_id);
        }
        if let JobState::Queued { not_before_ms } = job.state {
            if not_before_ms <= now {
                self.queue.push_front(job.priority, job.batch, job_id);
                fx.wake = true;
            } else {
                self.queue.delay(not_before_ms, job_id);
            }
        }
        fx.ops.push(StoreOp::UpdateJob(JobUpdate::of(job)));
        if to.is_terminal() {
            self.progress.remove(&job_id);
            self.waiting.remove(&job_id);
            self.deps.unblock(job_id);
            fx.observations.push(Observation::Finished { job: job_id, state: to });
        }
        let kind = match to {
            StateKind::Queued => EventKind::Queued,
            StateKind::Running => EventKind::Started,
            StateKind::Succeeded => EventKind::Succeeded,
            StateKind::Failed => EventKind::Failed,
            StateKind::Cancelled => EventKind::Cancelled,
        };
        fx.events.push(Event { kind, batch: batch_id, job: Some(job_id) });
        if let Some(batch) = self.batches.get_mut(&batch_id) {
            batch.counts.moved(from, to);
        }
        Some((to, batch_id))
    }

    /// `job` succeeded: its dependents whose dependencies have all succeeded join the queue.
    fn release_dependents(&mut self, job_id: JobId, fx: &mut Effects) {
        let state_of = |d: JobId| self.jobs.get(&d).map(|j| j.state.kind());
        let ready: Vec<JobId> = self
            .deps
            .dependents(job_id)
            .iter()
            .copied()
            .filter(|d| {
                self.deps.is_blocked(*d) && self.jobs.get(d).is_some_and(|j| matches!(j.state, JobState::Queued { .. }) && j.dependencies_met(state_of))
            })
            .collect();
        for id in ready {
            self.deps.unblock(id);
            let job = &self.jobs[&id];
            self.queue.push_back(job.priority, job.batch, id);
            fx.wake = true;
        }
    }

    /// `job` failed or was cancelled: every queued job that depends on it (and
    /// on those, transitively) fails naming it, or is cancelled with it. A
    /// worklist, not recursion: a chain of thousands of frames ends in one pass.
    fn end_dependents(&mut self, job_id: JobId, now: Millis, fx: &mut Effects) {
        let mut ended = vec![job_id];
        while let Some(id) = ended.pop() {
            let Some(record) = self.jobs.get(&id).cloned() else { continue };
            for dependent in self.deps.dependents(id).to_vec() {
                let Some(job) = self.jobs.get_mut(&dependent) else { continue };
                if job.dependency_ended(&record, now) {
                    self.deps.unblock(dependent);
                    self.settle(dependent, None, StateKind::Queued, now, fx);
                    ended.push(dependent);
                }
            }
        }
    }

    /// Drops a finished batch from memory (call once its end is committed).
    pub fn evict_batch(&mut self, id: BatchId) {
        if self.batches.get(&id).is_some_and(|b| b.finished_ms.is_some()) {
            self.batches.remove(&id);
            self.batch_max_estimate.remove(&id);
            self.workers.forget_batch(id);
            for job in self.members.remove(&id).unwrap_or_default() {
                self.jobs.remove(&job);
                self.progress.remove(&job);
                self.waiting.remove(&job);
                self.deps.forget(job);
            }
        }
    }
}

impl StateKind {
    /// The states a job ends in.
    pub const FINAL: [StateKind; 3] = [StateKind::Succeeded, StateKind::Failed, StateKind::Cancelled];

    pub fn is_terminal(self) -> bool {
        matches!(self, StateKind::Succeeded | StateKind::Failed | StateKind::Cancelled)
    }

    /// The state's name in metrics labels and span attributes.
    pub fn label(self) -> &'static str {
        match self {
            StateKind::Queued => "queued",
            StateKind::Running => "running",
            StateKind::Succeeded => "succeeded",
            StateKind::Failed => "failed",
            StateKind::Cancelled => "cancelled",
        }
    }
}

fn stale_or_missing(job: JobId, attempt: u32) -> CoordError {
    CoordError::StaleAttempt { job: job.to_string(), attempt, reason: "the job is finished or unknown".into() }
}

#[cfg(test)]
mod tests;

/// Which attempt ended, how, and since when it ran.
struct Ended {
    job: JobId,
    attempt: u32,
    worker: Option<WorkerId>,
    leased_ms: Option<Millis>,
    end: AttemptEnd,
}

/// An attempt ended: the metrics and traces hear of it, and the store keeps it
/// in the job's history.
fn attempt_ended(fx: &mut Effects, e: Ended, reason: String, spans: Vec<SpanRecord>, now: Millis) {
    let leased_ms = e.leased_ms.unwrap_or(now);
    fx.observations.push(Observation::AttemptEnded { job: e.job, attempt: e.attempt, end: e.end, run_ms: now - leased_ms });
    let record =
        AttemptRecord { job: e.job, attempt: e.attempt, worker: e.worker, leased_ms, ended_ms: now, outcome: e.end.label().to_string(), reason, spans };
    fx.ops.push(StoreOp::InsertAttempt(Box::new(record)));
}
