//! Reads of the live state (what is in memory: unfinished batches, live
//! workers); finished batches are the store's to answer.

use stylefarm_core::labels::{self, Labels, Requirement};
use stylefarm_proto::JobProgress;

use super::requests::RequestKey;
use super::{Demand, Scheduler, SchedulerConfig};
use crate::identity::{Principal, Role};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{BatchRecord, JobRecord, JobState, Load, Millis, WorkerRecord};
use crate::store::LEGACY_IMAGE_OWNER;

impl Scheduler {
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

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

    /// Largest device memory among the workers seen within a lease's time
    /// whose labels meet `requires` (None: no such worker connected).
    pub fn largest_connected_device(&self, now: Millis, requires: &[Requirement]) -> Option<u64> {
        self.workers.largest_device(now - self.config.lease_ttl_ms, requires)
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

    /// Whether the image's bytes are in the store (uploaded by anyone).
    pub fn has_image(&self, sha256: &str) -> bool {
        self.images.contains(sha256)
    }

    /// Whether `caller` may name the upload `sha256` in a job: they uploaded
    /// it, an older build stored it (shared then), or they are an admin.
    pub fn may_use_image(&self, caller: &Principal, sha256: &str) -> bool {
        match caller.role {
            Role::Admin => self.has_image(sha256),
            _ => self.image_refs.get(sha256).is_some_and(|owners| owners.contains(&caller.name) || owners.contains(LEGACY_IMAGE_OWNER)),
        }
    }

    /// The batch `owner` submitted with `request_id`, while the id is in the window.
    /// Queued and running jobs of `owner`'s batches (what its `unfinished_jobs` quota counts).
    /// What `owner` has queued and running: jobs, and their pixels × iterations.
    pub fn unfinished_of(&self, owner: &str) -> Load {
        self.batches
            .values()
            .filter(|b| b.owner == owner)
            .map(|b| Load { jobs: u64::from(b.counts.queued) + u64::from(b.counts.running), work: b.unfinished_work })
            .fold(Load::default(), Load::plus)
    }

    pub fn batch_for_request(&self, owner: &str, request_id: &str) -> Option<BatchId> {
        self.request_ids.get(&RequestKey::new(owner, request_id))
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
        // paused batches are rare and small to walk; their jobs that are
        // neither unfit nor blocked would be counted as workable otherwise
        let paused = self
            .batches
            .values()
            .filter(|b| b.paused)
            .flat_map(|b| self.members.get(&b.id).map(Vec::as_slice).unwrap_or_default())
            .filter(|j| {
                self.jobs.get(j).is_some_and(|r| matches!(r.state, JobState::Queued { .. })) && !self.waiting.contains_key(j) && !self.deps.is_blocked(**j)
            })
            .count() as u64;
        Demand { queued, running, unfit: self.waiting.len() as u64, blocked: self.deps.blocked_count() as u64, paused }
    }

    /// Jobs a worker with `labels` could take now or is running: one pool's
    /// autoscaling demand. Queued jobs whose requirements the labels meet
    /// (except those waiting on a dependency or in a paused batch) plus running
    /// ones that match. Unlike [`Demand::workable`] it counts jobs that wait
    /// because no connected worker has the labels: a pool scaled to zero must
    /// grow for them. A job with no requirements counts for every pool.
    pub fn pool_demand(&self, labels: &Labels) -> u64 {
        self.batches
            .values()
            // finished and all-waiting batches hold nothing to count: O(live jobs)
            .filter(|b| b.counts.queued + b.counts.running > 0 && labels::satisfied(&b.requires, labels))
            .flat_map(|b| self.members.get(&b.id).map(Vec::as_slice).unwrap_or_default().iter().map(move |j| (b.paused, j)))
            .filter_map(|(paused, j)| self.jobs.get(j).map(|job| (paused, job)))
            .filter(|(paused, job)| {
                labels::satisfied(&job.requires, labels)
                    && match job.state {
                        JobState::Queued { .. } => !paused && !self.deps.is_blocked(job.id),
                        JobState::Running { .. } => true,
                        _ => false,
                    }
            })
            .count() as u64
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
}
