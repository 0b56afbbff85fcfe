//! Operator actions that reach past the scheduler: deleting a batch (its
//! state, then its objects) and taking workers in and out of rotation.
//!
//! A delete that took running jobs back cannot stop their workers at once:
//! each learns at its next heartbeat that its lease is gone, and one that was
//! uploading may still write under the batch's prefix. So the prefix is swept
//! again a lease's length later ([`LateSweeps`], bounded; a coordinator
//! restart forgets it, and deleting again sweeps again).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use stylefarm_proto as pb;

use super::Farm;
use crate::clock::now_ms;
use crate::convert;
use crate::error::{CoordError, Result};
use crate::identity::Principal;
use crate::ids::{BatchId, WorkerId};
use crate::keys::batch_prefix;
use crate::model::{Millis, WorkerRecord};
use crate::scheduler::{DeleteMode, WorkerAction};

/// Most deleted batches waiting for their late sweep; beyond, the oldest is
/// dropped (logged): deleting it again sweeps again.
const MAX_LATE_SWEEPS: usize = 10_000;

/// Deleted batches to sweep again, with when.
#[derive(Default)]
pub struct LateSweeps(Mutex<VecDeque<(BatchId, Millis)>>);

impl LateSweeps {
    fn push(&self, batch: BatchId, due_ms: Millis) {
        let Ok(mut queue) = self.0.lock() else { return };
        if queue.len() >= MAX_LATE_SWEEPS {
            if let Some((dropped, _)) = queue.pop_front() {
                tracing::warn!(batch_id = %dropped, "too many late sweeps pending: this one is dropped (delete the batch again to sweep it)");
            }
        }
        queue.push_back((batch, due_ms));
    }

    /// The batches due by `now`, oldest first (due times only grow).
    fn take_due(&self, now: Millis) -> Vec<BatchId> {
        let Ok(mut queue) = self.0.lock() else { return Vec::new() };
        let mut due = Vec::new();
        while queue.front().is_some_and(|&(_, at)| at <= now) {
            if let Some((batch, _)) = queue.pop_front() {
                due.push(batch);
            }
        }
        due
    }
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deletion {
    pub cancelled: u32,
    pub jobs_removed: u32,
    pub objects_removed: u64,
}

impl Farm {
    /// Deletes a batch `caller` may see (see [`crate::scheduler::Scheduler::delete_batch`]),
    /// then every object under its prefix. Deleting a deleted batch sweeps the
    /// prefix again. Uploads live elsewhere (content-addressed, shared), so
    /// another batch's inputs are never touched.
    pub async fn delete_batch(self: &Arc<Self>, id: BatchId, mode: DeleteMode, caller: &Principal) -> Result<Deletion> {
        let record = self.owned_batch(id, caller).await?;
        let mut deletion = Deletion::default();
        if record.deleted_ms.is_none() {
            deletion.cancelled = self.apply(move |s, fx, now| s.delete_batch(id, mode, now, fx)).await?;
            deletion.jobs_removed = record.counts.total;
            if record.counts.running > 0 {
                self.late_sweeps.push(id, now_ms() + self.config.scheduler.lease_ttl_ms);
            }
            let gone = convert::batch(&record);
            self.hub.publish(id, pb::WatchEvent { kind: pb::EventKind::BatchDeleted as i32, batch: Some(gone), job: None, at_ms: now_ms() });
        }
        deletion.objects_removed = self.sweep(id).await?;
        tracing::info!(batch_id = %id, principal = %caller.name, mode = ?mode, cancelled = deletion.cancelled, jobs_removed = deletion.jobs_removed,
            objects_removed = deletion.objects_removed, "batch deleted");
        Ok(deletion)
    }

    async fn sweep(&self, id: BatchId) -> Result<u64> {
        self.blobs.delete_prefix(&batch_prefix(id)).await.map_err(|e| CoordError::Blob(e.to_string()))
    }

    /// Sweeps deleted batches whose late sweep is due (the ticker calls it).
    pub(super) async fn sweep_late(&self) {
        for id in self.late_sweeps.take_due(now_ms()) {
            match self.sweep(id).await {
                Ok(0) => {}
                Ok(objects) => tracing::info!(batch_id = %id, objects, "late outputs of a deleted batch removed"),
                Err(e) => tracing::warn!(batch_id = %id, error = %e, "late sweep of a deleted batch failed (delete it again to retry)"),
            }
        }
    }

    /// Disables, enables or drains a worker (admin; see
    /// [`crate::scheduler::Scheduler::control_worker`]): its record after and
    /// how many jobs were handed back.
    pub async fn control_worker(self: &Arc<Self>, worker: WorkerId, action: WorkerAction, caller: &Principal) -> Result<(WorkerRecord, Vec<String>, u32)> {
        let (record, running, handed_back) = self
            .apply(move |s, fx, now| {
                let (record, handed_back) = s.control_worker(worker, action, now, fx)?;
                let running = s.running_jobs_of(worker).iter().map(ToString::to_string).collect::<Vec<_>>();
                Ok((record, running, handed_back))
            })
            .await?;
        tracing::info!(worker_id = %worker, principal = %caller.name, action = ?action, handed_back, "worker controlled");
        Ok((record, running, handed_back))
    }

    /// Forgets a worker that is gone (admin).
    pub async fn forget_worker(self: &Arc<Self>, worker: WorkerId, caller: &Principal) -> Result<()> {
        let record = self.apply(move |s, fx, now| s.forget_worker(worker, now, fx)).await?;
        tracing::info!(worker_id = %worker, name = %record.name, principal = %caller.name, "worker forgotten by an admin");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_sweeps_come_due_in_order_and_stay_bounded() {
        let sweeps = LateSweeps::default();
        sweeps.push(BatchId(1), 100);
        sweeps.push(BatchId(2), 200);
        assert!(sweeps.take_due(99).is_empty());
        assert_eq!(sweeps.take_due(150), vec![BatchId(1)]);
        assert_eq!(sweeps.take_due(1_000), vec![BatchId(2)]);
        for i in 0..(MAX_LATE_SWEEPS as i64 + 5) {
            sweeps.push(BatchId(i), 10);
        }
        let due = sweeps.take_due(10);
        assert_eq!(due.len(), MAX_LATE_SWEEPS);
        assert_eq!(due[0], BatchId(5), "the oldest went first");
    }
}
