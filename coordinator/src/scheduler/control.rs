//! What users and operators do to work already submitted: cancel (and, as it
//! grows, retry, pause, priority). Every state change goes through
//! [`Scheduler::transition`].

use super::transition::Was;
use super::{Effects, Scheduler};
use crate::error::{CoordError, Result};
use crate::ids::BatchId;
use crate::model::{CancelOutcome, Millis};
use crate::store::{JobUpdate, StoreOp};

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
}
