//! What users and operators do to work already submitted: cancel a batch or
//! one job, change a batch's priority, pause and resume it, retry failed or
//! cancelled jobs, delete it. Every job state change goes through
//! [`Scheduler::transition`].

use std::collections::HashSet;

use super::attempts::{attempt_ended, Ended};
use super::transition::Was;
use super::{Effects, Event, EventKind, Scheduler};
use crate::error::{CoordError, Result};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{BatchRecord, CancelOutcome, Counts, JobRecord, JobState, Load, Millis};
use crate::store::{JobUpdate, StoreOp};

/// Which jobs of a batch a retry runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryTarget {
    /// One failed or cancelled job.
    Job(JobId),
    /// Every failed job of the batch.
    Failed,
}

/// Whether deleting a batch may stop its running jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// Refused while any of its jobs runs.
    IfIdle,
    /// Running jobs are taken back (their attempts not counted) and cancelled first.
    CancelRunning,
}

/// What pausing does to a batch's running jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// They run to their end; only new leases stop.
    FinishRunning,
    /// They go back to the queue now, the attempt not counted; each worker
    /// learns at its next heartbeat that its lease is gone and stops.
    HandBackNow,
}

impl Scheduler {
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
                    self.transition(job_id, Was::Queued, now, fx);
                }
                CancelOutcome::Signalled => {
                    // still running (no transition): the flag is persisted and
                    // its next heartbeat tells the worker to stop
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

    /// Cancels one job: queued, at once (its dependents follow, as when a
    /// batch is cancelled); running, at its next heartbeat.
    pub fn cancel_job(&mut self, id: JobId, now: Millis, fx: &mut Effects) -> Result<CancelOutcome> {
        let job = self.jobs.get_mut(&id).ok_or_else(|| CoordError::not_found("job", id))?;
        let outcome = job.cancel(now);
        match outcome {
            CancelOutcome::CancelledNow => self.transition(id, Was::Queued, now, fx),
            CancelOutcome::Signalled => fx.ops.push(StoreOp::UpdateJob(JobUpdate::of(job))),
            CancelOutcome::AlreadyFinished => {}
        }
        fx.barrier = true;
        Ok(outcome)
    }

    /// Gives an unfinished batch a new priority: its queued jobs move to that
    /// level in their order, and every job leased from now on uses it.
    /// Returns the old priority.
    pub fn set_priority(&mut self, id: BatchId, priority: i32, fx: &mut Effects) -> Result<i32> {
        let batch = self.batches.get_mut(&id).ok_or_else(|| CoordError::not_found("batch", id))?;
        let old = batch.priority;
        fx.barrier = true;
        if old == priority {
            return Ok(old);
        }
        batch.priority = priority;
        for job_id in self.members.get(&id).map(Vec::as_slice).unwrap_or_default() {
            if let Some(job) = self.jobs.get_mut(job_id) {
                job.priority = priority;
            }
        }
        self.queue.move_batch(old, priority, id);
        fx.ops.push(StoreOp::SetPriority { batch: id, priority });
        fx.events.push(Event { kind: EventKind::BatchChanged, batch: id, job: None });
        fx.wake = true;
        Ok(old)
    }

    /// Pauses an unfinished batch: none of its jobs is leased until it is
    /// resumed. Returns how many running jobs were handed back.
    pub fn pause_batch(&mut self, id: BatchId, mode: PauseMode, now: Millis, fx: &mut Effects) -> Result<u32> {
        let batch = self.batches.get_mut(&id).ok_or_else(|| CoordError::not_found("batch", id))?;
        fx.barrier = true;
        if !batch.paused {
            batch.paused = true;
            fx.ops.push(StoreOp::SetPaused { batch: id, paused: true });
            fx.events.push(Event { kind: EventKind::BatchChanged, batch: id, job: None });
        }
        if mode == PauseMode::FinishRunning {
            return Ok(0);
        }
        let members = self.members.get(&id).cloned().unwrap_or_default();
        Ok(members.into_iter().filter(|&job| self.hand_back(job, "the batch was paused", now, fx)).count() as u32)
    }

    /// Takes a running job back from its worker without spending the attempt
    /// (it is queued again; the worker learns at its next heartbeat that the
    /// lease is gone). Returns whether it was running.
    pub(super) fn hand_back(&mut self, job_id: JobId, why: &str, now: Millis, fx: &mut Effects) -> bool {
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        let attempt = job.attempt;
        let Some((worker, leased_ms, end)) = job.take_back(now) else { return false };
        attempt_ended(fx, Ended { job: job_id, attempt, worker: Some(worker), leased_ms: Some(leased_ms), end }, why.to_string(), Vec::new(), now);
        self.transition(job_id, Was::Running(worker), now, fx);
        true
    }

    /// Deletes a batch's state: an unfinished one is cancelled first (refused
    /// while jobs run, unless `mode` takes them back), then its jobs and
    /// their history go from the store and its row stays as a tombstone. A
    /// batch only in the store (finished) is deleted there. The caller removes
    /// its objects. Returns how many jobs this cancelled.
    pub fn delete_batch(&mut self, id: BatchId, mode: DeleteMode, now: Millis, fx: &mut Effects) -> Result<u32> {
        let mut cancelled = 0;
        if let Some(batch) = self.batches.get(&id).filter(|b| b.finished_ms.is_none()) {
            let running = batch.counts.running;
            if running > 0 && mode == DeleteMode::IfIdle {
                return Err(CoordError::FailedPrecondition(format!(
                    "batch {id} has {running} running job(s): cancel it and wait for them to stop, or delete with --force (mode CANCEL_RUNNING)"
                )));
            }
            let members = self.members.get(&id).cloned().unwrap_or_default();
            for job in members {
                self.hand_back(job, "the batch was deleted", now, fx);
            }
            let (now_cancelled, signalled) = self.cancel_batch(id, now, fx)?;
            if signalled > 0 {
                return Err(CoordError::Internal(format!("batch {id} kept {signalled} running job(s) after they were taken back")));
            }
            cancelled = now_cancelled;
        }
        fx.ops.push(StoreOp::DeleteBatch { id, deleted_ms: now });
        fx.barrier = true;
        Ok(cancelled)
    }

    /// Resumes a paused batch: its queued jobs are leased again.
    pub fn resume_batch(&mut self, id: BatchId, fx: &mut Effects) -> Result<()> {
        let batch = self.batches.get_mut(&id).ok_or_else(|| CoordError::not_found("batch", id))?;
        fx.barrier = true;
        if batch.paused {
            batch.paused = false;
            fx.ops.push(StoreOp::SetPaused { batch: id, paused: false });
            fx.events.push(Event { kind: EventKind::BatchChanged, batch: id, job: None });
            fx.wake = true;
        }
        Ok(())
    }

    /// Brings a finished batch back into memory (as the store has it) so that
    /// [`Scheduler::retry`] can run its jobs again; a retry that finds nothing
    /// to run lets it leave memory again.
    pub fn load_finished_batch(&mut self, mut batch: BatchRecord, jobs: Vec<JobRecord>) {
        let id = batch.id;
        if self.batches.contains_key(&id) || batch.finished_ms.is_none() {
            return;
        }
        batch.counts = Counts { total: jobs.len() as u32, ..Counts::default() };
        batch.unfinished_work = 0;
        let mut members = Vec::with_capacity(jobs.len());
        for job in jobs {
            batch.counts.add(job.state.kind());
            if job.state.kind().is_unfinished() {
                batch.unfinished_work = batch.unfinished_work.saturating_add(job.work);
            }
            self.batch_fit.entry(id).or_default().add(&job);
            self.deps.add(job.id, &job.depends_on, false);
            members.push(job.id);
            self.jobs.insert(job.id, job);
        }
        members.sort_by_key(|j| self.jobs[j].index);
        self.members.insert(id, members);
        self.batches.insert(id, batch);
    }

    /// Runs failed or cancelled jobs of an in-memory batch again (see
    /// [`Scheduler::load_finished_batch`] for one that had left memory), each with a fresh
    /// attempt budget. The jobs that ended because of a retried one (its
    /// dependents, failed naming it or cancelled with it) run again too, once
    /// it succeeds. Returns how many jobs were requeued.
    pub fn retry(&mut self, id: BatchId, target: RetryTarget, now: Millis, fx: &mut Effects) -> Result<u32> {
        self.retry_admitted(id, target, |_| Ok(()), now, fx)
    }

    /// [`Scheduler::retry`], once `admit` has accepted the jobs and work that
    /// would run again (a quota); refused, nothing changes.
    pub fn retry_admitted(&mut self, id: BatchId, target: RetryTarget, admit: impl FnOnce(Load) -> Result<()>, now: Millis, fx: &mut Effects) -> Result<u32> {
        let members = self.members.get(&id).cloned().ok_or_else(|| CoordError::not_found("batch", id))?;
        let roots: Vec<JobId> = match target {
            RetryTarget::Job(job) => {
                let record = self.jobs.get(&job).filter(|j| j.batch == id).ok_or_else(|| CoordError::not_found("job", job))?;
                if let JobState::Failed { failed_dependency: Some(dep), .. } = &record.state {
                    return Err(CoordError::FailedPrecondition(format!("job {job} failed because its dependency {dep} did: retry {dep}, and {job} follows")));
                }
                if !matches!(record.state, JobState::Failed { .. } | JobState::Cancelled) {
                    return Err(CoordError::FailedPrecondition(format!(
                        "job {job} is {}: only a failed or cancelled job can be retried",
                        record.state.kind().label()
                    )));
                }
                vec![job]
            }
            RetryTarget::Failed => members.iter().copied().filter(|j| matches!(self.jobs[j].state, JobState::Failed { failed_dependency: None, .. })).collect(),
        };
        // the roots and every dependent that ended because of them, in batch order
        let mut chosen: HashSet<JobId> = roots.iter().copied().collect();
        let mut stack = roots;
        while let Some(job) = stack.pop() {
            for &d in self.deps.dependents(job) {
                let ended_with_it =
                    matches!(self.jobs.get(&d).map(|j| &j.state), Some(JobState::Failed { failed_dependency: Some(_), .. } | JobState::Cancelled));
                if ended_with_it && chosen.insert(d) {
                    stack.push(d);
                }
            }
        }
        let work = chosen.iter().filter_map(|j| self.jobs.get(j)).fold(0u64, |sum, j| sum.saturating_add(j.work));
        admit(Load { jobs: chosen.len() as u64, work })?;
        let batch = self.batches.get_mut(&id).ok_or_else(|| CoordError::not_found("batch", id))?;
        if chosen.is_empty() {
            if batch.finished_ms.is_some() {
                // nothing to run: a batch loaded for this leaves memory again
                fx.finished_batches.push(id);
            }
            return Ok(0);
        }
        if batch.finished_ms.take().is_some() {
            // it runs again: unfinished, not cancelled, with a clean blocklist
            batch.cancel_requested = false;
            self.workers.forget_batch(id);
            fx.ops.push(StoreOp::ReopenBatch(id));
            tracing::info!(batch_id = %id, "finished batch runs again");
        }
        for job_id in members.iter().copied().filter(|j| chosen.contains(j)) {
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            let was = job.state.kind();
            job.retry(now)?;
            let state_of = |d: JobId| self.jobs.get(&d).map(|j| j.state.kind());
            if !self.jobs[&job_id].dependencies_met(state_of) {
                self.deps.add(job_id, &[], true);
            }
            self.transition(job_id, Was::Ended(was), now, fx);
        }
        fx.barrier = true;
        Ok(chosen.len() as u32)
    }

    /// An admin lets `worker` take `batch`'s jobs again: its failures there
    /// start over. Returns whether it was blocked.
    pub fn unblock_worker(&mut self, worker: WorkerId, batch: BatchId, fx: &mut Effects) -> Result<bool> {
        if self.workers.get(worker).is_none() {
            return Err(CoordError::not_found("worker", worker));
        }
        if !self.batches.contains_key(&batch) {
            return Err(CoordError::not_found("unfinished batch", batch));
        }
        let was_blocked = self.workers.blocked(worker, batch, self.config.worker_batch_failure_limit);
        self.workers.unblock(worker, batch);
        fx.ops.push(StoreOp::CountFailure { worker, batch, failures: 0 });
        fx.barrier = true;
        fx.wake = true;
        tracing::info!(worker_id = %worker, batch_id = %batch, was_blocked, "worker unblocked from the batch");
        Ok(was_blocked)
    }
}
