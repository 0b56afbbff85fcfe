//! A job's attempts from the worker's side: lease, heartbeat, complete, fail;
//! each ended attempt is kept in the job's history.

use stylefarm_core::labels::Labels;

use super::transition::Was;
use super::{AttemptEnd, AttemptFailure, Beat, DependencyOutput, Effects, Event, EventKind, Grant, Observation, Rules, Scheduler};
use crate::error::{CoordError, Result};
use crate::identity::Principal;
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::DeviceReadings;
use crate::model::{AfterFailure, AttemptRecord, AttemptStop, HeartbeatVerdict, JobOutputs, JobRecord, JobState, Millis, SpanRecord};
use crate::secrets::LeaseClaim;
use crate::store::StoreOp;

impl Scheduler {
    /// The next job for an idle device of `worker` (memory 0 = do not match).
    pub fn lease(&mut self, worker: WorkerId, caller: &Principal, device_memory: u64, now: Millis, fx: &mut Effects) -> Result<Option<Grant>> {
        self.workers.act_as(worker, &caller.name, caller.is_admin(), now)?;
        self.release_delayed(now, fx);
        if !self.workers.takes_work(worker) {
            // an admin disabled it: it stays registered and keeps what it runs
            return Ok(None);
        }
        let no_labels = Labels::new();
        let labels = self.workers.get(worker).map_or(&no_labels, |w| &w.labels);
        let rules = Rules {
            jobs: &self.jobs,
            batches: &self.batches,
            running_by_owner: &self.running_by_owner,
            workers: &self.workers,
            worker,
            labels,
            limit: self.config.worker_batch_failure_limit,
            memory: device_memory,
        };
        let Some((_, _, job_id)) = self.queue.pick(&rules) else {
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
        self.transition(job_id, Was::Queued, now, fx);
        let job = self.jobs.get(&job_id).cloned().ok_or_else(|| CoordError::Internal(format!("leased job {job_id} left memory")))?;
        let inputs = self.dependency_outputs(&job);
        Ok(Some(Grant { job, attempt, secret, queue_wait_ms, inputs }))
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
        readings: DeviceReadings,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Vec<(JobId, u32, HeartbeatVerdict)>> {
        let record = self.workers.act_as(worker, &caller.name, caller.is_admin(), now)?;
        let named = readings.memory.iter().map(|m| ("memory", &m.device)).enumerate().chain(readings.busy.iter().map(|b| ("busy", &b.device)).enumerate());
        for (i, (field, device)) in named {
            if !record.devices.iter().any(|d| d.name == *device) {
                return Err(CoordError::invalid(format!("{field}[{i}].device"), format!("`{device}` is not one of this worker's registered devices")));
            }
        }
        record.readings = readings;
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
        self.transition(job_id, Was::Running(worker), now, fx);
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
        let AttemptFailure { reason, stop, spans } = failure;
        let (handed_back, batch) = (stop == AttemptStop::HandedBack, job.batch);
        let after = job.fail(worker, claim, reason.clone(), stop, now, backoff)?;
        let end = match after {
            _ if handed_back => AttemptEnd::HandedBack,
            AfterFailure::Cancelled => AttemptEnd::Cancelled,
            AfterFailure::Requeued { .. } | AfterFailure::Failed => AttemptEnd::Failed,
        };
        let ended = Ended { job: job_id, attempt: claim.attempt, worker: Some(worker), leased_ms, end };
        attempt_ended(fx, ended, reason, spans, now);
        // a hand-back is nobody's failure; a cancel is not the worker's
        let counted = !handed_back && after != AfterFailure::Cancelled;
        if counted && matches!(after, AfterFailure::Requeued { .. }) {
            fx.observations.push(Observation::Retried);
        }
        if counted {
            self.count_failure(worker, batch, fx);
        }
        self.transition(job_id, Was::Running(worker), now, fx);
        Ok(after)
    }

    pub(super) fn count_failure(&mut self, worker: WorkerId, batch: BatchId, fx: &mut Effects) {
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
}

fn stale_or_missing(job: JobId, attempt: u32) -> CoordError {
    CoordError::StaleAttempt { job: job.to_string(), attempt, reason: "the job is finished or unknown".into() }
}

/// Which attempt ended, how, and since when it ran.
pub(super) struct Ended {
    pub(super) job: JobId,
    pub(super) attempt: u32,
    pub(super) worker: Option<WorkerId>,
    pub(super) leased_ms: Option<Millis>,
    pub(super) end: AttemptEnd,
}

/// An attempt ended: the metrics and traces hear of it, and the store keeps it
/// in the job's history.
pub(super) fn attempt_ended(fx: &mut Effects, e: Ended, reason: String, spans: Vec<SpanRecord>, now: Millis) {
    let leased_ms = e.leased_ms.unwrap_or(now);
    fx.observations.push(Observation::AttemptEnded { job: e.job, attempt: e.attempt, end: e.end, run_ms: now - leased_ms });
    let record = AttemptRecord { job: e.job, attempt: e.attempt, worker: e.worker, leased_ms, ended_ms: now, outcome: e.end, reason, spans };
    fx.ops.push(StoreOp::InsertAttempt(Box::new(record)));
}
