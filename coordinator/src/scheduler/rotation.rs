//! Which workers take work, as an admin decides: disable (no new leases,
//! kept across restarts), enable, drain (disable and take its running jobs
//! back now, their attempts not counted), forget one that is gone.

use super::{Effects, Scheduler};
use crate::error::Result;
use crate::ids::WorkerId;
use crate::model::{Availability, Millis, WorkerRecord};
use crate::store::StoreOp;

/// What an admin does to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerAction {
    Disable,
    Enable,
    /// Disable, and hand its running jobs back to the queue now.
    Drain,
}

impl Scheduler {
    /// Applies `action` to `worker`: its record after, and how many running
    /// jobs were handed back.
    pub fn control_worker(&mut self, worker: WorkerId, action: WorkerAction, now: Millis, fx: &mut Effects) -> Result<(WorkerRecord, u32)> {
        let availability = match action {
            WorkerAction::Enable => Availability::Enabled,
            WorkerAction::Disable | WorkerAction::Drain => Availability::Disabled,
        };
        let before = self.workers.get(worker).map(|w| w.availability);
        self.workers.set_availability(worker, availability)?;
        if before != Some(availability) {
            fx.ops.push(StoreOp::SetAvailability { worker, availability });
        }
        let mut handed_back = 0;
        if action == WorkerAction::Drain {
            for job in self.workers.running_jobs(worker) {
                if self.hand_back(job, "an admin drained the worker", now, fx) {
                    handed_back += 1;
                }
            }
        }
        if availability == Availability::Enabled {
            fx.wake = true;
        }
        fx.barrier = true;
        let record = self.workers.get(worker).cloned().ok_or_else(|| crate::error::CoordError::not_found("worker", worker))?;
        Ok((record, handed_back))
    }

    /// Forgets a worker that is gone (unseen for a lease's length and running
    /// nothing): its record and its blocklist entries leave memory and the
    /// store. If it comes back it registers as a new worker.
    pub fn forget_worker(&mut self, worker: WorkerId, now: Millis, fx: &mut Effects) -> Result<WorkerRecord> {
        let record = self.workers.forget(worker, now - self.config.lease_ttl_ms)?;
        self.dirty_counters.remove(&worker);
        fx.ops.push(StoreOp::DeleteWorker(worker));
        fx.barrier = true;
        Ok(record)
    }
}
