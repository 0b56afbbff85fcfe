//! The live scheduling state, in memory, with every change described as store
//! ops (made durable by the caller before it answers) and watch events.
//!
//! Order of service: highest priority first; within a priority, fair share
//! between batches (the batch with the fewest running jobs goes next, the older
//! batch on a tie); FIFO within a batch. A job goes only to a device whose
//! memory fits its estimate, and never to a worker that has failed that batch
//! `worker_batch_failure_limit` times.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};

use stylefarm_proto::JobProgress;

use crate::error::{CoordError, Result};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{
    AfterFailure, Backoff, BatchRecord, CancelOutcome, Counts, DeviceRecord, HeartbeatVerdict, ImageSource, JobOutputs, JobRecord,
    JobState, Millis, StateKind, WorkerRecord,
};
use crate::store::{ImageRecord, JobUpdate, Snapshot, StoreOp};

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub lease_ttl_ms: Millis,
    pub default_max_attempts: u32,
    pub backoff: Backoff,
    pub worker_batch_failure_limit: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_ttl_ms: 30_000,
            default_max_attempts: 3,
            backoff: Backoff { base_ms: 2_000, max_ms: 120_000 },
            worker_batch_failure_limit: 3,
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
    /// Batches that finished: their jobs leave memory once this is committed.
    pub finished_batches: Vec<BatchId>,
    /// New work became leasable: wake long-polling workers.
    pub wake: bool,
}

#[derive(Debug)]
pub struct NewJob {
    pub name: String,
    pub content: ImageSource,
    pub styles: Vec<ImageSource>,
    pub params_json: String,
    pub estimate_bytes: u64,
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
}

pub struct Scheduler {
    config: SchedulerConfig,
    batches: BTreeMap<BatchId, BatchRecord>,
    /// Jobs of unfinished batches (finished ones are read from the store).
    jobs: HashMap<JobId, JobRecord>,
    /// Each in-memory batch's jobs, in index order.
    members: HashMap<BatchId, Vec<JobId>>,
    /// Leasable jobs: priority (highest first) → batch → FIFO.
    ready: BTreeMap<Reverse<i32>, BTreeMap<BatchId, VecDeque<JobId>>>,
    /// Requeued jobs waiting out their backoff.
    delayed: BinaryHeap<Reverse<(Millis, JobId)>>,
    /// Lease deadlines (lazily updated: a heartbeat's extension is checked on pop).
    leases: BinaryHeap<Reverse<(Millis, JobId, u32)>>,
    workers: BTreeMap<WorkerId, WorkerRecord>,
    running_by_worker: HashMap<WorkerId, BTreeSet<JobId>>,
    failures: HashMap<(WorkerId, BatchId), u32>,
    progress: HashMap<JobId, JobProgress>,
    request_ids: HashMap<String, BatchId>,
    images: HashSet<String>,
    next_batch: i64,
    next_job: i64,
    next_worker: i64,
}

impl Scheduler {
    /// Resumes from the store's snapshot. Running jobs keep their lease for one
    /// more TTL from `now`, so their workers can reconnect and carry on.
    pub fn restore(config: SchedulerConfig, snapshot: Snapshot, now: Millis) -> Scheduler {
        let mut s = Scheduler {
            config,
            batches: BTreeMap::new(),
            jobs: HashMap::new(),
            members: HashMap::new(),
            ready: BTreeMap::new(),
            delayed: BinaryHeap::new(),
            leases: BinaryHeap::new(),
            workers: BTreeMap::new(),
            running_by_worker: HashMap::new(),
            failures: HashMap::new(),
            progress: HashMap::new(),
            request_ids: HashMap::new(),
            images: snapshot.images.into_iter().collect(),
            next_batch: snapshot.next_batch,
            next_job: snapshot.next_job,
            next_worker: snapshot.next_worker,
        };
        for mut batch in snapshot.batches {
            if batch.finished_ms.is_none() {
                batch.counts = Counts::default();
            }
            if let Some(request_id) = &batch.request_id {
                s.request_ids.insert(request_id.clone(), batch.id);
            }
            s.batches.insert(batch.id, batch);
        }
        for worker in snapshot.workers {
            s.workers.insert(worker.id, worker);
        }
        for mut job in snapshot.jobs {
            let Some(batch) = s.batches.get_mut(&job.batch) else { continue };
            batch.counts.total += 1;
            batch.counts.add(job.state.kind());
            match &mut job.state {
                JobState::Queued { not_before_ms } if *not_before_ms > now => s.delayed.push(Reverse((*not_before_ms, job.id))),
                JobState::Queued { .. } => s.ready.entry(Reverse(job.priority)).or_default().entry(job.batch).or_default().push_back(job.id),
                JobState::Running { worker, lease_expires_ms, .. } => {
                    *lease_expires_ms = now + s.config.lease_ttl_ms;
                    s.leases.push(Reverse((*lease_expires_ms, job.id, job.attempt)));
                    s.running_by_worker.entry(*worker).or_default().insert(job.id);
                }
                _ => {}
            }
            s.members.entry(job.batch).or_default().push(job.id);
            s.jobs.insert(job.id, job);
        }
        for members in s.members.values_mut() {
            members.sort_by_key(|id| s.jobs[id].index);
        }
        s
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    // ------------------------------------------------------------ queries

    pub fn batch(&self, id: BatchId) -> Option<&BatchRecord> {
        self.batches.get(&id)
    }

    /// Newest first, after `before` (exclusive), filtered by `keep`.
    pub fn list_batches(&self, before: Option<BatchId>, limit: usize, keep: impl Fn(&BatchRecord) -> bool) -> Vec<&BatchRecord> {
        let upper = before.map(|b| b.0).unwrap_or(i64::MAX);
        self.batches.range(..BatchId(upper)).rev().map(|(_, b)| b).filter(|b| keep(b)).take(limit).collect()
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

    pub fn workers(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }

    pub fn worker(&self, id: WorkerId) -> Option<&WorkerRecord> {
        self.workers.get(&id)
    }

    pub fn running_jobs_of(&self, worker: WorkerId) -> Vec<JobId> {
        self.running_by_worker.get(&worker).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    pub fn has_image(&self, sha256: &str) -> bool {
        self.images.contains(sha256)
    }

    pub fn batch_for_request(&self, request_id: &str) -> Option<BatchId> {
        self.request_ids.get(request_id).copied()
    }

    /// Whether `worker` has failed `batch` too often to get more of its jobs.
    pub fn is_blocked(&self, worker: WorkerId, batch: BatchId) -> bool {
        blocked(&self.failures, self.config.worker_batch_failure_limit, worker, batch)
    }

    // ------------------------------------------------------------ changes

    pub fn add_image(&mut self, image: ImageRecord, fx: &mut Effects) -> bool {
        if !self.images.insert(image.sha256.clone()) {
            return false;
        }
        fx.ops.push(StoreOp::InsertImage(image));
        true
    }

    pub fn submit(&mut self, new: NewBatch, now: Millis, fx: &mut Effects, trace_id: &mut dyn FnMut() -> String) -> Submitted {
        if let Some(existing) = new.request_id.as_deref().and_then(|r| self.request_ids.get(r)) {
            let batch = *existing;
            let jobs = self.batch_jobs(batch).map(|js| js.iter().map(|j| j.id).collect()).unwrap_or_default();
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
        };
        fx.ops.push(StoreOp::InsertBatch(batch.clone()));
        let queue = self.ready.entry(Reverse(batch.priority)).or_default().entry(id).or_default();
        let mut ids = Vec::with_capacity(new.jobs.len());
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
                state: JobState::Queued { not_before_ms: now },
                last_failure: None,
                created_ms: now,
                started_ms: None,
                finished_ms: None,
                trace_id: trace_id(),
            };
            self.next_job += 1;
            batch.counts.total += 1;
            batch.counts.queued += 1;
            queue.push_back(job.id);
            ids.push(job.id);
            fx.ops.push(StoreOp::InsertJob(Box::new(job.clone())));
            self.jobs.insert(job.id, job);
        }
        if let Some(request_id) = &batch.request_id {
            self.request_ids.insert(request_id.clone(), id);
        }
        self.members.insert(id, ids.clone());
        self.batches.insert(id, batch);
        fx.wake = true;
        Submitted { batch: id, jobs: ids, deduplicated: false }
    }

    pub fn register_worker(
        &mut self,
        existing: Option<WorkerId>,
        name: String,
        devices: Vec<DeviceRecord>,
        version: String,
        now: Millis,
        fx: &mut Effects,
    ) -> WorkerId {
        let id = match existing.filter(|id| self.workers.contains_key(id)) {
            Some(id) => id,
            None => {
                let id = WorkerId(self.next_worker);
                self.next_worker += 1;
                id
            }
        };
        let record = self.workers.entry(id).or_insert_with(|| WorkerRecord {
            id,
            name: name.clone(),
            devices: Vec::new(),
            version: String::new(),
            registered_ms: now,
            last_seen_ms: now,
            succeeded: 0,
            failed: 0,
        });
        record.name = name;
        record.devices = devices;
        record.version = version;
        record.last_seen_ms = now;
        fx.ops.push(StoreOp::UpsertWorker(record.clone()));
        id
    }

    fn seen(&mut self, worker: WorkerId, now: Millis) -> Result<()> {
        let record = self.workers.get_mut(&worker).ok_or_else(|| CoordError::not_found("worker", worker))?;
        record.last_seen_ms = now;
        Ok(())
    }

    /// The next job for an idle device of `worker` (memory 0 = do not match).
    pub fn lease(&mut self, worker: WorkerId, device_memory: u64, now: Millis, fx: &mut Effects) -> Result<Option<Grant>> {
        self.seen(worker, now)?;
        self.release_delayed(now, fx);
        let Some((priority, batch, job_id)) = self.pick(worker, device_memory) else {
            return Ok(None);
        };
        let ttl = self.config.lease_ttl_ms;
        let job = self.jobs.get_mut(&job_id).expect("picked jobs are in memory");
        let attempt = job.lease(worker, now, ttl)?;
        let grant = Grant { job: job.clone(), attempt };
        self.remove_ready(priority, batch, job_id);
        self.leases.push(Reverse((now + ttl, job_id, attempt)));
        self.running_by_worker.entry(worker).or_default().insert(job_id);
        let batch_record = self.batches.get_mut(&batch).expect("jobs have batches");
        batch_record.counts.moved(StateKind::Queued, StateKind::Running);
        batch_record.started = true;
        fx.ops.push(StoreOp::UpdateJob(JobUpdate::of(&grant.job)));
        fx.events.push(Event { kind: EventKind::Started, batch, job: Some(job_id) });
        Ok(Some(grant))
    }

    /// Fair-share choice: see the module docs.
    fn pick(&mut self, worker: WorkerId, device_memory: u64) -> Option<(Reverse<i32>, BatchId, JobId)> {
        let fits = |job: &JobRecord| device_memory == 0 || job.estimate_bytes <= device_memory;
        for (priority, batches) in self.ready.iter_mut() {
            let mut best: Option<(u32, BatchId, JobId)> = None;
            for (batch_id, queue) in batches.iter_mut() {
                if blocked(&self.failures, self.config.worker_batch_failure_limit, worker, *batch_id) {
                    continue;
                }
                let running = self.batches.get(batch_id).map(|b| b.counts.running).unwrap_or(0);
                if best.is_some_and(|(r, _, _)| r <= running) {
                    continue;
                }
                // entries of jobs that left the queue another way are dropped here
                while let Some(front) = queue.front() {
                    if matches!(self.jobs.get(front).map(|j| &j.state), Some(JobState::Queued { .. })) {
                        break;
                    }
                    queue.pop_front();
                }
                let candidate = queue.iter().copied().find(|id| self.jobs.get(id).is_some_and(|j| matches!(j.state, JobState::Queued { .. }) && fits(j)));
                if let Some(job_id) = candidate {
                    best = Some((running, *batch_id, job_id));
                }
            }
            if let Some((_, batch, job)) = best {
                return Some((*priority, batch, job));
            }
        }
        None
    }

    fn remove_ready(&mut self, priority: Reverse<i32>, batch: BatchId, job: JobId) {
        let Some(batches) = self.ready.get_mut(&priority) else { return };
        if let Some(queue) = batches.get_mut(&batch) {
            if queue.front() == Some(&job) {
                queue.pop_front();
            } else if let Some(pos) = queue.iter().position(|&j| j == job) {
                queue.remove(pos);
            }
            if queue.is_empty() {
                batches.remove(&batch);
            }
        }
        if batches.is_empty() {
            self.ready.remove(&priority);
        }
    }

    /// Progress in, verdicts out; the lease of every live attempt is extended.
    pub fn heartbeat(
        &mut self,
        worker: WorkerId,
        beats: Vec<(JobId, u32, Option<JobProgress>)>,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Vec<(JobId, u32, HeartbeatVerdict)>> {
        self.seen(worker, now)?;
        let ttl = self.config.lease_ttl_ms;
        let mut verdicts = Vec::with_capacity(beats.len());
        for (job_id, attempt, progress) in beats {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                verdicts.push((job_id, attempt, HeartbeatVerdict::LeaseLost));
                continue;
            };
            let verdict = job.heartbeat(worker, attempt, now, ttl);
            if verdict != HeartbeatVerdict::LeaseLost {
                if let Some(progress) = progress {
                    self.progress.insert(job_id, progress);
                    fx.events.push(Event { kind: EventKind::Progress, batch: job.batch, job: Some(job_id) });
                }
            }
            verdicts.push((job_id, attempt, verdict));
        }
        Ok(verdicts)
    }

    pub fn complete(&mut self, worker: WorkerId, job_id: JobId, attempt: u32, outputs: JobOutputs, now: Millis, fx: &mut Effects) -> Result<()> {
        self.seen(worker, now)?;
        let job = self.jobs.get_mut(&job_id).ok_or_else(|| stale_or_missing(job_id, attempt))?;
        job.complete(worker, attempt, outputs, now)?;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.succeeded += 1;
        }
        self.after_attempt(job_id, worker, StateKind::Running, now, fx);
        Ok(())
    }

    pub fn fail(
        &mut self,
        worker: WorkerId,
        job_id: JobId,
        attempt: u32,
        failure: (String, bool),
        cancelled: bool,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<AfterFailure> {
        self.seen(worker, now)?;
        let backoff = self.config.backoff;
        let job = self.jobs.get_mut(&job_id).ok_or_else(|| stale_or_missing(job_id, attempt))?;
        let after = job.fail(worker, attempt, failure, cancelled, now, backoff)?;
        let batch = job.batch;
        if after != AfterFailure::Cancelled {
            *self.failures.entry((worker, batch)).or_default() += 1;
            if let Some(w) = self.workers.get_mut(&worker) {
                w.failed += 1;
            }
        }
        self.after_attempt(job_id, worker, StateKind::Running, now, fx);
        Ok(after)
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
        let job_ids = self.members.get(&id).cloned().unwrap_or_default();
        let (mut cancelled, mut signalled) = (0, 0);
        for job_id in job_ids {
            let job = self.jobs.get_mut(&job_id).expect("listed above");
            match job.cancel(now) {
                CancelOutcome::CancelledNow => {
                    cancelled += 1;
                    self.after_attempt(job_id, WorkerId(0), StateKind::Queued, now, fx);
                }
                CancelOutcome::Signalled => {
                    signalled += 1;
                    fx.ops.push(StoreOp::UpdateJob(JobUpdate::of(job)));
                }
                CancelOutcome::AlreadyFinished => {}
            }
        }
        if let Some(batches) = self.ready.get_mut(&Reverse(self.batches[&id].priority)) {
            batches.remove(&id);
        }
        Ok((cancelled, signalled))
    }

    /// Expires overdue leases and releases jobs whose backoff is over.
    pub fn tick(&mut self, now: Millis, fx: &mut Effects) {
        let backoff = self.config.backoff;
        while let Some(Reverse((deadline, job_id, attempt))) = self.leases.peek().copied() {
            if deadline > now {
                break;
            }
            self.leases.pop();
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            if job.attempt != attempt {
                continue;
            }
            let (worker, expires) = match &job.state {
                JobState::Running { worker, lease_expires_ms, .. } => (*worker, *lease_expires_ms),
                _ => continue,
            };
            if expires > now {
                self.leases.push(Reverse((expires, job_id, attempt)));
                continue;
            }
            let Some(after) = job.expire(now, backoff) else { continue };
            let batch = job.batch;
            tracing::warn!(job_id = %job_id, batch_id = %batch, worker_id = %worker, attempt, outcome = ?after, "lease expired");
            if after != AfterFailure::Cancelled {
                *self.failures.entry((worker, batch)).or_default() += 1;
            }
            self.after_attempt(job_id, worker, StateKind::Running, now, fx);
        }
        self.release_delayed(now, fx);
    }

    fn release_delayed(&mut self, now: Millis, fx: &mut Effects) {
        while let Some(Reverse((due, job_id))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            let Some(job) = self.jobs.get(&job_id) else { continue };
            if !matches!(job.state, JobState::Queued { .. }) {
                continue;
            }
            // a retried job is older than anything behind it: it goes first
            self.ready.entry(Reverse(job.priority)).or_default().entry(job.batch).or_default().push_front(job_id);
            fx.wake = true;
        }
    }

    /// Bookkeeping after a job left `from`: counts, queues, worker sets, the
    /// store op, the event, and the batch's end.
    fn after_attempt(&mut self, job_id: JobId, worker: WorkerId, from: StateKind, now: Millis, fx: &mut Effects) {
        let job = &self.jobs[&job_id];
        let to = job.state.kind();
        let batch_id = job.batch;
        if from == StateKind::Running {
            if let Some(set) = self.running_by_worker.get_mut(&worker) {
                set.remove(&job_id);
            }
        }
        if let JobState::Queued { not_before_ms } = job.state {
            self.delayed.push(Reverse((not_before_ms, job_id)));
        }
        fx.ops.push(StoreOp::UpdateJob(JobUpdate::of(job)));
        if to.is_terminal() {
            self.progress.remove(&job_id);
        }
        let kind = match to {
            StateKind::Queued => EventKind::Queued,
            StateKind::Running => EventKind::Started,
            StateKind::Succeeded => EventKind::Succeeded,
            StateKind::Failed => EventKind::Failed,
            StateKind::Cancelled => EventKind::Cancelled,
        };
        fx.events.push(Event { kind, batch: batch_id, job: Some(job_id) });
        let batch = self.batches.get_mut(&batch_id).expect("jobs have batches");
        batch.counts.moved(from, to);
        if batch.counts.finished() && batch.finished_ms.is_none() {
            batch.finished_ms = Some(now);
            fx.ops.push(StoreOp::FinishBatch { id: batch_id, finished_ms: now, counts: batch.counts.clone(), started: batch.started });
            fx.events.push(Event { kind: EventKind::BatchFinished, batch: batch_id, job: None });
            fx.finished_batches.push(batch_id);
            tracing::info!(batch_id = %batch_id, counts = ?batch.counts, "batch finished");
        }
    }

    /// Drops a finished batch's jobs from memory (call once its end is committed).
    pub fn evict_batch(&mut self, id: BatchId) {
        if self.batches.get(&id).is_some_and(|b| b.finished_ms.is_some()) {
            for job in self.members.remove(&id).unwrap_or_default() {
                self.jobs.remove(&job);
                self.progress.remove(&job);
            }
        }
    }
}

impl StateKind {
    pub fn is_terminal(self) -> bool {
        matches!(self, StateKind::Succeeded | StateKind::Failed | StateKind::Cancelled)
    }
}

/// The per-batch block rule, shared by `is_blocked` and `pick` (which holds the
/// ready queues mutably and cannot call a `&self` method).
fn blocked(failures: &HashMap<(WorkerId, BatchId), u32>, limit: u32, worker: WorkerId, batch: BatchId) -> bool {
    failures.get(&(worker, batch)).is_some_and(|&n| n >= limit)
}

fn stale_or_missing(job: JobId, attempt: u32) -> CoordError {
    CoordError::StaleAttempt { job: job.to_string(), attempt, reason: "the job is finished or unknown".into() }
}
