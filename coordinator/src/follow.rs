//! Following a batch: its jobs as they are now, then every change until it
//! finishes. One loop for both WatchBatch (gRPC) and the dashboard's event
//! stream (server-sent events).

use std::sync::Arc;

use stylefarm_proto as pb;
use tokio::sync::{broadcast, mpsc};

use crate::clock::now_ms;
use crate::error::{CoordError, Result};
use crate::farm::Farm;
use crate::identity::Principal;
use crate::ids::BatchId;

/// Events a follower may have unread before the loop waits for it.
const BUFFER: usize = 256;

/// Starts following `id` for `caller` (NOT_FOUND before anything is allocated
/// if it is unknown or someone else's). The receiver ends after
/// BATCH_FINISHED, or with UNAVAILABLE when the coordinator stops.
pub async fn follow_batch(farm: &Arc<Farm>, id: BatchId, caller: Principal) -> Result<mpsc::Receiver<Result<pb::WatchEvent>>> {
    farm.batch_record(id, &caller).await?;
    // subscribe before the snapshot, so nothing falls between them
    let mut watch = farm.subscribe(id);
    let (batch, jobs) = farm.batch_with_jobs(id, &caller).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let farm = Arc::clone(farm);
    tokio::spawn(async move {
        if send_snapshot(&tx, batch, jobs).await.is_err() {
            return;
        }
        let mut stopping = farm.stopping();
        loop {
            let received = tokio::select! {
                received = watch.events.recv() => Some(received),
                _ = stopping.wait_for(|s| *s) => None,
            };
            let Some(received) = received else {
                let _ = tx.send(Err(CoordError::ShuttingDown)).await;
                return;
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(batch_id = %id, missed, "follower lagged; sending a fresh snapshot");
                    let Ok((batch, jobs)) = farm.batch_with_jobs(id, &caller).await else { return };
                    if send_snapshot(&tx, batch, jobs).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let finished = event.kind == pb::EventKind::BatchFinished as i32;
            if tx.send(Ok(event)).await.is_err() || finished {
                return;
            }
        }
    });
    Ok(rx)
}

/// Every job as a SNAPSHOT event (and BATCH_FINISHED after them if it is
/// finished: then Err, the follow is over).
async fn send_snapshot(tx: &mpsc::Sender<Result<pb::WatchEvent>>, batch: pb::Batch, jobs: Vec<pb::Job>) -> std::result::Result<(), ()> {
    let now = now_ms();
    let finished = batch.finished_at_ms != 0;
    for job in jobs {
        let event = pb::WatchEvent { kind: pb::EventKind::Snapshot as i32, batch: Some(batch.clone()), job: Some(job), at_ms: now };
        tx.send(Ok(event)).await.map_err(|_| ())?;
    }
    if finished {
        let event = pb::WatchEvent { kind: pb::EventKind::BatchFinished as i32, batch: Some(batch), job: None, at_ms: now };
        tx.send(Ok(event)).await.map_err(|_| ())?;
        return Err(());
    }
    Ok(())
}
