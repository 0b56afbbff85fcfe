//! The one path by which a job moves between states. The model's pure
//! transitions (`JobRecord::lease`, `fail`, `cancel`, ...) change the record;
//! [`Scheduler::transition`] then makes every index follow: the batch's
//! counts, the ready queue or the backoff heap, the worker's running set, the
//! unfit and progress maps, the dependency graph, the store op, the watch event
//! and the metrics observation, then the job's dependents and the batch's end.
//! Nothing else moves a job.

use super::{Effects, Event, EventKind, Observation, Scheduler};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{JobState, Millis, StateKind};
use crate::store::{JobUpdate, StoreOp};

/// Where a job was before the change its record has just made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Was {
    Queued,
    Running(WorkerId),
    /// A final state (succeeded, failed, cancelled): the job is being retried.
    Ended(StateKind),
}

impl Was {
    fn kind(self) -> StateKind {
        match self {
            Was::Queued => StateKind::Queued,
            Was::Running(_) => StateKind::Running,
            Was::Ended(kind) => kind,
        }
    }
}

impl Scheduler {
    /// Every index follows the job's record, which has just left `was`:
    /// see the module doc. Its dependents follow a failure, a cancel or a
    /// success, and its batch ends once nothing in it is queued or running.
    pub(super) fn transition(&mut self, job_id: JobId, was: Was, now: Millis, fx: &mut Effects) {
        let Some((to, batch_id)) = self.settle(job_id, was, now, fx) else { return };
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

    /// The job's own indexes after it left `was` (not its dependents', not the
    /// batch's end): returns its new state and batch.
    fn settle(&mut self, job_id: JobId, was: Was, now: Millis, fx: &mut Effects) -> Option<(StateKind, BatchId)> {
        let job = self.jobs.get(&job_id)?;
        let (from, to) = (was.kind(), job.state.kind());
        debug_assert_ne!(from, to, "job {job_id}: a transition must change the state");
        let batch_id = job.batch;
        match was {
            Was::Running(worker) => self.workers.stop(worker, job_id),
            // a leased job leaves the queue now; other ways out of it (cancel,
            // unfit, a dependency's failure) drop the entry lazily
            Was::Queued if to == StateKind::Running => self.queue.remove(job.priority, batch_id, job_id),
            // entries an ended job left behind (dropped lazily) must not double up
            Was::Ended(_) => self.queue.purge(job.priority, batch_id, job_id),
            Was::Queued => {}
        }
        match job.state {
            // a retried job whose dependencies are being retried too waits for them
            JobState::Queued { .. } if self.deps.is_blocked(job_id) => {}
            JobState::Queued { not_before_ms } if not_before_ms <= now => {
                self.queue.push_front(job.priority, batch_id, job_id);
                fx.wake = true;
            }
            JobState::Queued { not_before_ms } => self.queue.delay(not_before_ms, job_id),
            JobState::Running { worker, .. } => {
                self.workers.start(worker, job_id);
                self.waiting.remove(&job_id);
            }
            _ => {}
        }
        let work = job.work;
        if let Some(batch) = self.batches.get_mut(&batch_id) {
            batch.counts.moved(from, to);
            match (from.is_unfinished(), to.is_unfinished()) {
                (true, false) => batch.unfinished_work = batch.unfinished_work.saturating_sub(work),
                (false, true) => batch.unfinished_work = batch.unfinished_work.saturating_add(work),
                _ => {}
            }
            // fair share between principals follows the same moves
            if to == StateKind::Running {
                *self.running_by_owner.entry(batch.owner.clone()).or_default() += 1;
            } else if from == StateKind::Running {
                if let Some(n) = self.running_by_owner.get_mut(&batch.owner) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.running_by_owner.remove(&batch.owner);
                    }
                }
            }
            if to == StateKind::Running && !batch.started {
                batch.started = true;
                batch.started_ms = Some(now);
                fx.ops.push(StoreOp::StartBatch { id: batch_id, started_ms: now });
            }
        }
        fx.ops.push(StoreOp::UpdateJob(JobUpdate::of(job)));
        if to.is_terminal() {
            self.progress.remove(&job_id);
            self.waiting.remove(&job_id);
            self.deps.unblock(job_id);
            fx.observations.push(Observation::Finished { job: job_id, state: to });
        }
        fx.events.push(Event { kind: EventKind::of(to), batch: batch_id, job: Some(job_id) });
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
                    self.settle(dependent, Was::Queued, now, fx);
                    ended.push(dependent);
                }
            }
        }
    }
}
