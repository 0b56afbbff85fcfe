//! New work and new workers: uploads, batches (or the same batch again for a
//! remembered request id), registrations.

use super::requests::RequestKey;
use super::{BatchFit, Effects, Event, EventKind, Registration, Scheduler};
use crate::error::Result;
use crate::identity::Principal;
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{BatchRecord, Counts, JobRecord, JobState, Millis, NewBatch, Submitted, WorkerProfile};
use crate::store::{ImageRecord, StoreOp};

impl Scheduler {
    /// `owner` uploaded `image`: its bytes are recorded if new, and the
    /// owner's reference to them; true if the owner had none before.
    pub fn add_image(&mut self, image: ImageRecord, owner: &str, fx: &mut Effects) -> bool {
        let (sha256, created_ms) = (image.sha256.clone(), image.created_ms);
        // new bytes, or the same again: either way their upload time moves on
        self.images.insert(sha256.clone());
        fx.ops.push(StoreOp::InsertImage(image));
        if !self.image_refs.entry(sha256.clone()).or_default().insert(owner.to_string()) {
            return false;
        }
        fx.ops.push(StoreOp::InsertImageRef { sha256, owner: owner.to_string(), created_ms });
        true
    }

    /// A new batch owned by `owner`, or (same request id as a batch still
    /// remembered) that batch again, answered once it is committed.
    pub fn submit(&mut self, new: NewBatch, owner: &str, now: Millis, fx: &mut Effects, trace_id: &mut dyn FnMut() -> String) -> Submitted {
        if let Some(batch) = new.request_id.as_deref().and_then(|r| self.request_ids.get(&RequestKey::new(owner, r))) {
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
            paused: false,
            deleted_ms: None,
            requires: new.requires,
            notify: new.notify,
            unfinished_work: 0,
        };
        fx.ops.push(StoreOp::InsertBatch(batch.clone()));
        let mut ids = Vec::with_capacity(new.jobs.len());
        let mut fit = BatchFit::default();
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
                work: spec.work,
                max_attempts,
                attempt: 0,
                handed_back: 0,
                forgiven: 0,
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
                requires: batch.requires.iter().chain(&spec.requires).cloned().collect(),
            };
            self.next_job += 1;
            fit.add(&job);
            batch.counts.total += 1;
            batch.counts.queued += 1;
            batch.unfinished_work = batch.unfinished_work.saturating_add(job.work);
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
            self.request_ids.insert(RequestKey::new(owner, request_id), id, now);
        }
        self.batch_fit.insert(id, fit);
        self.members.insert(id, ids.clone());
        self.batches.insert(id, batch);
        fx.wake = true;
        // only the dashboard's farm-wide stream can be following a batch this new
        fx.events.push(Event { kind: EventKind::Queued, batch: id, job: None });
        Submitted { batch: id, jobs: ids, deduplicated: false }
    }

    /// Registers a worker for `caller`; see [`WorkerRegistry::register`].
    pub fn register_worker(
        &mut self,
        existing: Option<(WorkerId, String)>,
        caller: &Principal,
        profile: WorkerProfile,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Registration> {
        let existing = existing.as_ref().map(|(id, secret)| (*id, secret.as_str()));
        let registration = self.workers.register(existing, &caller.name, profile, now)?;
        fx.ops.push(StoreOp::UpsertWorker(registration.record.clone()));
        Ok(registration)
    }
}
