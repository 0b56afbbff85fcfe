//! Retention (`--retain-finished DURATION`, default: keep for ever): batches
//! that finished longer ago than that are deleted in the background, rows and
//! objects, exactly as `DeleteBatch` deletes them (each logged and on the
//! watch stream). What is due is read from the store (`finished_ms`), so the
//! work survives restarts; it goes in bounded steps, so a farm that kept a
//! year of batches catches up without starving the scheduler. Uploads, shared
//! between batches, go once no batch uses them and they were last uploaded
//! longer ago than the retention.

use std::sync::Arc;
use std::time::Duration;

use stylefarm_core::tasks::Stopping;

use super::Farm;
use crate::clock::now_ms;
use crate::error::Result;
use crate::identity::{Principal, Role};
use crate::keys::image_key;
use crate::model::Millis;
use crate::scheduler::DeleteMode;

/// Most batches one step deletes.
pub const STEP: usize = 32;

/// What one uploads step found due and removed.
struct Retired {
    due: usize,
    removed: u64,
}

/// The name retention's deletes are logged under.
pub const PRINCIPAL: &str = "retention";

/// How often retention looks for due batches: a quarter of the retention,
/// between 250 ms and a minute.
pub fn period(retain_ms: Millis) -> Duration {
    Duration::from_millis((retain_ms / 4).clamp(250, 60_000) as u64)
}

impl Farm {
    /// Deletes up to [`STEP`] batches that finished before `now - retain_ms`,
    /// the oldest first. A batch that fails to delete is logged and left for
    /// the next step. Returns how many were due (a full step means more are).
    pub async fn retention_step(self: &Arc<Self>, retain_ms: Millis) -> Result<usize> {
        let cutoff = now_ms().saturating_sub(retain_ms);
        let due = self.stored(move |store| store.finished_before(cutoff, STEP)).await?;
        let system = Principal { name: PRINCIPAL.into(), role: Role::Admin };
        let (mut batches, mut objects) = (0u64, 0u64);
        for &id in &due {
            match self.delete_batch(id, DeleteMode::IfIdle, &system).await {
                Ok(done) => {
                    batches += 1;
                    objects += done.objects_removed;
                }
                Err(e) => tracing::warn!(batch_id = %id, error = %e, "retention could not delete a finished batch (tried again next step)"),
            }
        }
        let uploads = self.retire_uploads(cutoff).await?;
        if let Some(metrics) = &self.config.metrics {
            metrics.retention_batches.increment(batches);
            metrics.retention_objects.increment(objects);
            metrics.retention_uploads.increment(uploads.removed);
        }
        Ok(due.len().max(uploads.due))
    }

    /// Removes up to [`STEP`] uploads no batch uses, last uploaded before
    /// `cutoff`: forgotten under the scheduler's lock (see
    /// `scheduler::uploads`), committed, then their bytes deleted.
    async fn retire_uploads(self: &Arc<Self>, cutoff: Millis) -> Result<Retired> {
        let unused = self.stored(move |store| store.unused_uploads(cutoff, STEP)).await?;
        let due = unused.len();
        if due == 0 {
            return Ok(Retired { due, removed: 0 });
        }
        let forgotten = self.apply(move |s, fx, _| Ok(s.forget_uploads(unused, fx))).await?;
        let mut removed = 0;
        for sha in forgotten {
            match self.blobs.delete(&image_key(&sha)).await {
                Ok(_) => {
                    removed += 1;
                    tracing::info!(sha256 = %sha, "retention removed an upload no batch uses");
                }
                // its rows are gone: the bytes stay behind, unreachable, until removed by hand
                Err(e) => tracing::warn!(sha256 = %sha, error = %e, "retention could not delete an upload's bytes"),
            }
        }
        Ok(Retired { due, removed })
    }

    /// Runs retention until `stopping`: a step at start (a coordinator that
    /// was down catches up at once), then every [`period`], and at once again
    /// while steps come back full.
    pub fn retention(self: &Arc<Self>, retain_ms: Millis, stopping: Stopping) -> impl std::future::Future<Output = ()> + Send + 'static {
        let farm = Arc::clone(self);
        async move {
            let stop = stopping.wait();
            tokio::pin!(stop);
            let mut pause = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut stop => return,
                }
                pause = match farm.retention_step(retain_ms).await {
                    // a full step: more are due; a short breath lets other work in
                    Ok(due) if due == STEP => Duration::from_millis(50),
                    Ok(_) => period(retain_ms),
                    Err(e) => {
                        tracing::warn!(error = %e, "retention step failed");
                        period(retain_ms)
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_follows_the_retention_within_bounds() {
        assert_eq!(period(100), Duration::from_millis(250));
        assert_eq!(period(4_000), Duration::from_secs(1));
        assert_eq!(period(30 * 86_400_000), Duration::from_secs(60));
    }
}
