//! The coordinator's core: the scheduler behind one lock, the durable store,
//! watch events, long-polling workers, object storage, and the clock.
//!
//! Every change goes through [`Farm::apply`]: the scheduler changes memory and
//! describes the change as store ops while the lock is held (so the store sees
//! changes in the order they happened); the caller then waits for the group
//! commit before it answers. A failed commit stops the coordinator (fail-stop):
//! memory may be ahead of disk, and a restart reloads the durable truth.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stylefarm_core::storage::Location;
use stylefarm_proto as pb;
use tokio::sync::{watch, Notify};

use crate::convert;
use crate::error::{CoordError, Result};
use crate::events::Hub;
use crate::ids::{BatchId, JobId};
use crate::model::{JobRecord, Millis};
use crate::scheduler::{Effects, Event, EventKind, Scheduler, SchedulerConfig};
use crate::store::Store;

pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

pub struct FarmConfig {
    pub scheduler: SchedulerConfig,
    pub heartbeat_interval_ms: Millis,
    pub max_upload_bytes: u64,
}

pub struct Farm {
    sched: Mutex<Scheduler>,
    store: Arc<dyn Store>,
    hub: Hub,
    work: Notify,
    pub blobs: Location,
    pub config: FarmConfig,
    /// Set when the coordinator must stop (a store failure).
    fatal: watch::Sender<Option<String>>,
}

impl Farm {
    pub fn open(store: Arc<dyn Store>, blobs: Location, config: FarmConfig) -> Result<Arc<Farm>> {
        let snapshot = store.load().map_err(|e| CoordError::Store(e.0))?;
        let (batches, jobs) = (snapshot.batches.len(), snapshot.jobs.len());
        let sched = Scheduler::restore(config.scheduler.clone(), snapshot, now_ms());
        tracing::info!(store = %store.describe(), objects = %blobs.url, batches, live_jobs = jobs, "state loaded");
        Ok(Arc::new(Farm { sched: Mutex::new(sched), store, hub: Hub::default(), work: Notify::new(), blobs, config, fatal: watch::channel(None).0 }))
    }

    /// Resolves with the reason once the coordinator has to stop.
    pub fn fatal_signal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Reads the scheduler without changing it.
    pub fn read<T>(&self, f: impl FnOnce(&Scheduler) -> T) -> T {
        f(&self.sched.lock().expect("scheduler lock"))
    }

    /// Changes the scheduler, makes the change durable, then publishes it.
    pub async fn apply<T>(&self, f: impl FnOnce(&mut Scheduler, &mut Effects, Millis) -> Result<T>) -> Result<T> {
        let (value, ticket, events, finished, wake) = {
            let mut sched = self.sched.lock().expect("scheduler lock");
            if self.fatal.borrow().is_some() {
                return Err(CoordError::ShuttingDown);
            }
            let mut fx = Effects::default();
            let value = f(&mut sched, &mut fx, now_ms())?;
            let ticket = self.store.commit(std::mem::take(&mut fx.ops));
            let events = self.render_events(&sched, &fx.events);
            (value, ticket, events, fx.finished_batches, fx.wake)
        };
        match ticket.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.fail_stop(e.0)),
            Err(_) => return Err(self.fail_stop("the store writer stopped".into())),
        }
        for (batch, event) in events {
            self.hub.publish(batch, event);
        }
        if wake {
            self.work.notify_waiters();
        }
        if !finished.is_empty() {
            let mut sched = self.sched.lock().expect("scheduler lock");
            for batch in finished {
                sched.evict_batch(batch);
            }
        }
        Ok(value)
    }

    fn fail_stop(&self, reason: String) -> CoordError {
        tracing::error!(reason = %reason, "state store failed: stopping the coordinator");
        self.fatal.send_replace(Some(reason.clone()));
        CoordError::Store(reason)
    }

    /// Watch events for batches somebody is watching (built under the lock, so
    /// each shows the state right after its change).
    fn render_events(&self, sched: &Scheduler, events: &[Event]) -> Vec<(BatchId, pb::WatchEvent)> {
        let now = now_ms();
        events
            .iter()
            .filter(|e| self.hub.is_watched(e.batch))
            .filter_map(|e| {
                let batch = sched.batch(e.batch)?;
                let job = e.job.and_then(|id| sched.job(id)).map(|j| convert::job(j, sched.progress(j.id)));
                Some((e.batch, pb::WatchEvent { kind: event_kind(e.kind) as i32, batch: Some(convert::batch(batch)), job, at_ms: now }))
            })
            .collect()
    }

    pub fn subscribe(&self, batch: BatchId) -> tokio::sync::broadcast::Receiver<pb::WatchEvent> {
        self.hub.subscribe(batch)
    }

    /// A batch and its jobs, from memory or (finished batches) from the store.
    pub async fn batch_with_jobs(self: &Arc<Self>, id: BatchId) -> Result<(pb::Batch, Vec<pb::Job>)> {
        let in_memory = self.read(|s| {
            let batch = s.batch(id).map(convert::batch);
            let jobs = s.batch_jobs(id).map(|js| js.into_iter().map(|j| convert::job(j, s.progress(j.id))).collect::<Vec<_>>());
            (batch, jobs)
        });
        let (batch, jobs) = match in_memory {
            (None, _) => return Err(CoordError::not_found("batch", id)),
            (Some(batch), Some(jobs)) => (batch, jobs),
            (Some(batch), None) => {
                let records = self.stored(move |store| store.batch_jobs(id)).await?;
                (batch, records.iter().map(|j| convert::job(j, None)).collect())
            }
        };
        Ok((batch, jobs))
    }

    /// A job from memory, or from the store when its batch is finished.
    pub async fn job(self: &Arc<Self>, id: JobId) -> Result<JobRecord> {
        if let Some(job) = self.read(|s| s.job(id).cloned()) {
            return Ok(job);
        }
        self.stored(move |store| store.job(id)).await?.ok_or_else(|| CoordError::not_found("job", id))
    }

    pub fn job_progress(&self, id: JobId) -> Option<pb::JobProgress> {
        self.read(|s| s.progress(id).cloned())
    }

    async fn stored<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&dyn Store) -> crate::store::StoreResult<T> + Send + 'static) -> Result<T> {
        let farm = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(farm.store.as_ref()))
            .await
            .map_err(|e| CoordError::Store(e.to_string()))?
            .map_err(|e| CoordError::Store(e.0))
    }

    pub async fn image_record(self: &Arc<Self>, sha256: String) -> Result<Option<crate::store::ImageRecord>> {
        self.stored(move |store| store.image(&sha256)).await
    }

    /// Resolves when new work may be leasable; create it (and `enable` it)
    /// before looking for work, so a wake-up in between is not lost.
    pub fn work_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.work.notified()
    }

    /// Expires leases and releases backed-off jobs, every `period`.
    pub fn spawn_ticker(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let farm = Arc::clone(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if farm.fatal.borrow().is_some() {
                    return;
                }
                if let Err(e) = farm.apply(|s, fx, now| Ok(s.tick(now, fx))).await {
                    tracing::error!(error = %e, "scheduler tick failed");
                }
            }
        })
    }
}

pub fn event_kind(kind: EventKind) -> pb::EventKind {
    match kind {
        EventKind::Queued => pb::EventKind::Queued,
        EventKind::Started => pb::EventKind::Started,
        EventKind::Progress => pb::EventKind::Progress,
        EventKind::Succeeded => pb::EventKind::Succeeded,
        EventKind::Failed => pb::EventKind::Failed,
        EventKind::Cancelled => pb::EventKind::Cancelled,
        EventKind::BatchFinished => pb::EventKind::BatchFinished,
    }
}
