//! The coordinator's core: the scheduler behind one lock, the durable store,
//! watch events, long-polling workers, object storage, who may call, and the
//! clock.
//!
//! Every change goes through [`Farm::apply`]: the scheduler changes memory and
//! describes the change as store ops while the lock is held (so the store sees
//! changes in the order they happened); the caller then waits for the group
//! commit before it answers. Reads that answer from memory wait for a barrier
//! ([`Farm::read_committed`]), so nothing is shown before it is durable. A
//! failed commit stops the coordinator (fail-stop): memory may be ahead of
//! disk, and a restart reloads the durable truth. A broken invariant (a panic
//! while the scheduler was locked) turns the health service to NOT_SERVING.

mod operate;
mod retention;
mod webhooks;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use stylefarm_core::storage::Location;
use stylefarm_core::tasks::Stopping;
use stylefarm_proto as pb;
use tokio::sync::{watch, Notify};

use crate::auth::Authenticator;
use crate::clock::now_ms;
use crate::convert;
use crate::error::{CoordError, Result};
use crate::events::{Hub, Watch};
use crate::identity::Principal;
use crate::ids::{BatchId, JobId};
use crate::metrics::CoordMetrics;
use crate::model::{BatchPhase, BatchRecord, CancelOutcome, JobRecord, Load, Millis, StateKind};
use crate::scheduler::{Effects, Event, EventKind, PauseMode, RetryTarget, Scheduler, SchedulerConfig};
use crate::store::{Store, StoreError};
use crate::traces::JobTracer;
use crate::validate::SubmitRules;

pub struct FarmConfig {
    pub scheduler: SchedulerConfig,
    pub heartbeat_interval_ms: Millis,
    pub max_upload_bytes: u64,
    pub submit: SubmitRules,
    /// What each role may hold of the farm.
    pub quotas: crate::quota::Quotas,
    /// Prometheus metrics (`--metrics-listen`); None records nothing.
    pub metrics: Option<Arc<CoordMetrics>>,
    /// Job spans (OTLP export on); None records nothing.
    pub tracer: Option<Arc<JobTracer>>,
}

pub struct Farm {
    sched: Mutex<Scheduler>,
    store: Arc<dyn Store>,
    hub: Hub,
    work: Notify,
    pub blobs: Location,
    pub config: FarmConfig,
    pub auth: Arc<Authenticator>,
    /// Set when the coordinator must stop (a store failure).
    fatal: watch::Sender<Option<String>>,
    /// Set when an internal invariant broke: health says NOT_SERVING.
    broken: watch::Sender<Option<String>>,
    /// Set when the server stops: watch streams end and long polls return, so
    /// the graceful stop does not wait on them.
    stopping: watch::Sender<bool>,
    /// Deleted batches whose prefix is swept again once the workers whose
    /// leases the delete took back have stopped (see [`operate`]).
    late_sweeps: operate::LateSweeps,
    /// Woken when webhook deliveries were committed.
    outbox_wake: Notify,
}

/// `/metrics`: the point-in-time gauges read from the scheduler at each
/// scrape, then every series. The farm owns it, so metrics know nothing of
/// the farm.
pub struct MetricsEndpoint {
    farm: Arc<Farm>,
    metrics: Arc<CoordMetrics>,
}

impl MetricsEndpoint {
    pub fn new(farm: Arc<Farm>, metrics: Arc<CoordMetrics>) -> MetricsEndpoint {
        MetricsEndpoint { farm, metrics }
    }
}

impl stylefarm_core::telemetry::Scrape for MetricsEndpoint {
    fn scrape(&self) -> String {
        if let Err(e) = self.farm.read(|s| self.metrics.refresh(s)) {
            tracing::warn!(error = %e, "metrics: the scheduler could not be read");
        }
        self.metrics.render()
    }
}

impl Farm {
    /// A submitted input's bytes: an upload from the store, or an allowed URL
    /// (read up to the upload limit; a URL that cannot be read is INVALID_ARGUMENT naming `field`).
    pub async fn read_input(&self, source: &crate::model::ImageSource, field: &str) -> Result<bytes::Bytes> {
        match source {
            crate::model::ImageSource::Blob(sha) => self.blobs.get(&crate::keys::image_key(sha)).await.map_err(|e| CoordError::Blob(e.to_string())),
            crate::model::ImageSource::Url(url) => stylefarm_core::storage::get_url_capped(url, self.config.max_upload_bytes)
                .await
                .map_err(|e| CoordError::invalid(field, format!("cannot be read: {e}"))),
        }
    }

    pub fn open(store: Arc<dyn Store>, blobs: Location, config: FarmConfig, auth: Authenticator) -> Result<Arc<Farm>> {
        let snapshot = store.load()?;
        let (batches, jobs) = (snapshot.batches.len(), snapshot.jobs.len());
        let sched = Scheduler::restore(config.scheduler.clone(), snapshot, now_ms());
        tracing::info!(store = %store.describe(), objects = %blobs.url, batches, live_jobs = jobs, "state loaded");
        let farm = Arc::new(Farm {
            sched: Mutex::new(sched),
            store,
            hub: Hub::default(),
            work: Notify::new(),
            blobs,
            config,
            auth: Arc::new(auth),
            fatal: watch::channel(None).0,
            broken: watch::channel(None).0,
            stopping: watch::channel(false).0,
            late_sweeps: operate::LateSweeps::default(),
            outbox_wake: Notify::new(),
        });
        Ok(farm)
    }

    pub fn metrics(&self) -> Option<&CoordMetrics> {
        self.config.metrics.as_deref()
    }

    pub fn tracer(&self) -> Option<&JobTracer> {
        self.config.tracer.as_deref()
    }

    /// Resolves with the reason once the coordinator has to stop.
    pub fn fatal_signal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Says why the coordinator is broken (health: NOT_SERVING), once it is.
    pub fn broken_signal(&self) -> watch::Receiver<Option<String>> {
        self.broken.subscribe()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Scheduler>> {
        self.sched.lock().map_err(|_| {
            let reason = "a request panicked while it held the scheduler; its state may be inconsistent".to_string();
            if self.broken.borrow().is_none() {
                tracing::error!(reason = %reason, "internal invariant broken: reporting NOT_SERVING");
                self.broken.send_replace(Some(reason.clone()));
            }
            CoordError::Internal(reason)
        })
    }

    /// Reads the scheduler without changing it (may show changes not yet durable:
    /// for checks, not answers).
    pub fn read<T>(&self, f: impl FnOnce(&Scheduler) -> T) -> Result<T> {
        Ok(f(&*self.lock()?))
    }

    /// Reads the scheduler, answering once everything the read saw is durable.
    pub async fn read_committed<T>(&self, f: impl FnOnce(&Scheduler) -> T) -> Result<T> {
        let (value, ticket) = {
            let sched = self.lock()?;
            (f(&sched), self.store.commit(Vec::new()))
        };
        self.wait(ticket).await?;
        Ok(value)
    }

    async fn wait(&self, ticket: crate::store::CommitTicket) -> Result<()> {
        match ticket.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.fail_stop(e)),
            Err(_) => Err(self.fail_stop(StoreError::WriterStopped)),
        }
    }

    /// Changes the scheduler, makes the change durable, then publishes it.
    pub async fn apply<T>(&self, f: impl FnOnce(&mut Scheduler, &mut Effects, Millis) -> Result<T>) -> Result<T> {
        let (value, ticket, events, finished, wake, observations, owed) = {
            let mut sched = self.lock()?;
            if self.fatal.borrow().is_some() {
                return Err(CoordError::ShuttingDown);
            }
            let mut fx = Effects::default();
            let now = now_ms();
            let value = f(&mut sched, &mut fx, now);
            // debug builds check every change (while the state is small enough to walk)
            #[cfg(debug_assertions)]
            sched.debug_check_invariants();
            let value = value?;
            let owed = self.owe_webhooks(&sched, &mut fx, now);
            let ticket = (!fx.ops.is_empty() || fx.barrier).then(|| self.store.commit(std::mem::take(&mut fx.ops)));
            let events = self.render_events(&sched, &fx.events);
            (value, ticket, events, fx.finished_batches, fx.wake, fx.observations, owed)
        };
        if let Some(ticket) = ticket {
            self.wait(ticket).await?;
        }
        if owed {
            self.outbox_wake.notify_one();
        }
        if !observations.is_empty() {
            if let Some(metrics) = self.metrics() {
                metrics.observe(&observations);
            }
            if let Some(tracer) = self.tracer() {
                tracer.observe(&observations);
            }
        }
        for (batch, event) in events {
            self.hub.publish(batch, event);
        }
        if wake {
            self.work.notify_waiters();
        }
        if !finished.is_empty() {
            let mut sched = self.lock()?;
            for batch in finished {
                sched.evict_batch(batch);
            }
        }
        Ok(value)
    }

    fn fail_stop(&self, error: StoreError) -> CoordError {
        tracing::error!(error = %error, "state store failed: stopping the coordinator");
        self.fatal.send_replace(Some(error.to_string()));
        CoordError::Store(error)
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
                let job = e.job.and_then(|id| sched.job(id)).map(|j| job_message(sched, j));
                Some((e.batch, pb::WatchEvent { kind: event_kind(e.kind) as i32, batch: Some(convert::batch(batch)), job, at_ms: now }))
            })
            .collect()
    }

    /// Subscribes to a batch's events (check that it exists and is the caller's first).
    pub fn subscribe(&self, batch: BatchId) -> Watch {
        self.hub.subscribe(batch)
    }

    /// Cancels a batch `caller` may see: queued jobs at once, running ones at
    /// their next heartbeat.
    pub async fn cancel_batch(self: &Arc<Self>, id: BatchId, caller: &Principal) -> Result<(u32, u32)> {
        self.batch_record(id, caller).await?;
        self.apply(move |s, fx, now| s.cancel_batch(id, now, fx)).await
    }

    /// Cancels one job `caller` may see (see [`Scheduler::cancel_job`]): how,
    /// and its state after. A job of a finished batch has ended already.
    pub async fn cancel_job(self: &Arc<Self>, id: JobId, caller: &Principal) -> Result<(CancelOutcome, StateKind)> {
        self.job(id, caller).await?;
        let outcome = self
            .apply(move |s, fx, now| match s.job(id) {
                None => Ok(CancelOutcome::AlreadyFinished),
                Some(_) => s.cancel_job(id, now, fx),
            })
            .await?;
        let (record, _) = self.job(id, caller).await?;
        tracing::info!(job_id = %id, principal = %caller.name, outcome = ?outcome, "job cancel requested");
        Ok((outcome, record.state.kind()))
    }

    /// Pauses an unfinished batch `caller` may see (see [`Scheduler::pause_batch`]):
    /// the batch after, and how many running jobs were handed back.
    pub async fn pause_batch(self: &Arc<Self>, id: BatchId, mode: PauseMode, caller: &Principal) -> Result<(BatchRecord, u32)> {
        let handed_back = self.unfinished(id, caller, "pause", move |s, fx, now| s.pause_batch(id, mode, now, fx)).await?;
        tracing::info!(batch_id = %id, principal = %caller.name, mode = ?mode, handed_back, "batch paused");
        Ok((self.batch_record(id, caller).await?, handed_back))
    }

    /// Resumes a paused batch `caller` may see.
    pub async fn resume_batch(self: &Arc<Self>, id: BatchId, caller: &Principal) -> Result<BatchRecord> {
        self.unfinished(id, caller, "resume", move |s, fx, _| s.resume_batch(id, fx)).await?;
        tracing::info!(batch_id = %id, principal = %caller.name, "batch resumed");
        self.batch_record(id, caller).await
    }

    /// Retries jobs of a batch `caller` may see (see [`Scheduler::retry`]); a
    /// finished batch is read back from the store and runs again. Returns the
    /// batch after and how many jobs were requeued.
    pub async fn retry(self: &Arc<Self>, id: BatchId, target: RetryTarget, caller: &Principal) -> Result<(BatchRecord, u32)> {
        // a batch that finishes between the read and the change is read again, once
        for _ in 0..2 {
            let record = self.batch_record(id, caller).await?;
            let quota = self.config.quotas.of(caller);
            let stored = match record.finished_ms {
                Some(_) => Some((record, self.stored(move |store| store.batch_jobs(id)).await?)),
                None => None,
            };
            let requeued = self
                .apply(move |s, fx, now| {
                    let loaded = s.batch(id).is_none();
                    if loaded {
                        let Some((batch, jobs)) = stored else { return Ok(None) };
                        s.load_finished_batch(batch, jobs);
                    }
                    // the jobs run again: they count toward the owner's unfinished jobs
                    let unfinished = s.batch(id).map_or(Load::default(), |b| s.unfinished_of(&b.owner));
                    let retried = s.retry_admitted(id, target, |adding| quota.check_unfinished(unfinished, adding), now, fx);
                    if retried.is_err() && loaded {
                        // refused: the batch leaves memory as it came
                        s.evict_batch(id);
                    }
                    retried.map(Some)
                })
                .await?;
            if let Some(requeued) = requeued {
                tracing::info!(batch_id = %id, principal = %caller.name, target = ?target, requeued, "jobs retried");
                return Ok((self.batch_record(id, caller).await?, requeued));
            }
        }
        Err(CoordError::Unavailable(format!("batch {id} kept changing while it was being retried; try again")))
    }

    /// Runs an operator's change `f` on an unfinished batch `caller` may see;
    /// a finished one is FAILED_PRECONDITION naming `action`.
    async fn unfinished<T>(
        self: &Arc<Self>,
        id: BatchId,
        caller: &Principal,
        action: &'static str,
        f: impl FnOnce(&mut Scheduler, &mut Effects, Millis) -> Result<T>,
    ) -> Result<T> {
        let finished = move || CoordError::FailedPrecondition(format!("batch {id} has finished: there is nothing left to {action}"));
        if self.batch_record(id, caller).await?.finished_ms.is_some() {
            return Err(finished());
        }
        self.apply(move |s, fx, now| match s.batch(id) {
            None => Err(finished()),
            Some(_) => f(s, fx, now),
        })
        .await
    }

    /// Gives an unfinished batch `caller` may see a new priority (see
    /// [`Scheduler::set_priority`]); `priority` is already validated.
    pub async fn set_priority(self: &Arc<Self>, id: BatchId, priority: i32, caller: &Principal) -> Result<BatchRecord> {
        self.config.quotas.of(caller).check_priority(priority)?;
        let old = self.unfinished(id, caller, "prioritise", move |s, fx, _| s.set_priority(id, priority, fx)).await?;
        tracing::info!(batch_id = %id, principal = %caller.name, from = old, to = priority, "batch priority changed");
        self.batch_record(id, caller).await
    }

    /// Every batch's events (the dashboard's farm-wide stream).
    pub fn subscribe_all(&self) -> tokio::sync::broadcast::Receiver<Arc<pb::WatchEvent>> {
        self.hub.subscribe_all()
    }

    /// A batch `caller` may see: from memory (unfinished) or the store.
    /// Another principal's batch is NOT_FOUND, like a missing one.
    pub async fn batch_record(self: &Arc<Self>, id: BatchId, caller: &Principal) -> Result<BatchRecord> {
        let record = self.owned_batch(id, caller).await?;
        if record.deleted_ms.is_some() {
            return Err(CoordError::not_found("batch", id));
        }
        Ok(record)
    }

    /// A batch `caller` may see, deleted ones (tombstones) included.
    async fn owned_batch(self: &Arc<Self>, id: BatchId, caller: &Principal) -> Result<BatchRecord> {
        let record = match self.read_committed(|s| s.batch(id).cloned()).await? {
            Some(record) => record,
            None => self.stored(move |store| store.batch(id)).await?.ok_or_else(|| CoordError::not_found("batch", id))?,
        };
        if !caller.owns(&record.owner) {
            return Err(CoordError::not_found("batch", id));
        }
        Ok(record)
    }

    /// A batch and its jobs, from memory or (finished batches) from the store.
    pub async fn batch_with_jobs(self: &Arc<Self>, id: BatchId, caller: &Principal) -> Result<(pb::Batch, Vec<pb::Job>)> {
        let in_memory = self
            .read_committed(|s| {
                let batch = s.batch(id).cloned();
                let jobs = s.batch_jobs(id).map(|js| js.into_iter().map(|j| job_message(s, j)).collect::<Vec<_>>());
                (batch, jobs)
            })
            .await?;
        let (record, jobs) = match in_memory {
            (Some(batch), Some(jobs)) => (batch, Some(jobs)),
            (Some(batch), None) => (batch, None),
            (None, _) => (self.stored(move |store| store.batch(id)).await?.ok_or_else(|| CoordError::not_found("batch", id))?, None),
        };
        if !caller.owns(&record.owner) || record.deleted_ms.is_some() {
            return Err(CoordError::not_found("batch", id));
        }
        let jobs = match jobs {
            Some(jobs) => jobs,
            None => self.stored(move |store| store.batch_jobs(id)).await?.iter().map(|j| convert::job(j, None, None)).collect(),
        };
        Ok((convert::batch(&record), jobs))
    }

    /// Batches `caller` may see, newest first, below `before`, in `phases` (all if empty).
    pub async fn list_batches(self: &Arc<Self>, caller: &Principal, before: Option<BatchId>, limit: usize, phases: Vec<BatchPhase>) -> Result<Vec<pb::Batch>> {
        const CHUNK: usize = 500;
        const MAX_SCANNED: usize = 100_000;
        let owner = (!caller.is_admin()).then(|| caller.name.clone());
        let mut cursor = before.unwrap_or(BatchId(i64::MAX));
        let mut out = Vec::with_capacity(limit);
        let mut scanned = 0;
        while out.len() < limit && scanned < MAX_SCANNED {
            let owner = owner.clone();
            let rows = self.stored(move |store| store.batches_before(cursor, CHUNK, owner.as_deref())).await?;
            let Some(last) = rows.last() else { break };
            cursor = last.id;
            scanned += rows.len();
            let exhausted = rows.len() < CHUNK;
            // unfinished batches' counts live in memory
            let live = self.read_committed(|s| rows.into_iter().map(|r| s.batch(r.id).cloned().unwrap_or(r)).collect::<Vec<_>>()).await?;
            let room = limit - out.len();
            out.extend(live.into_iter().filter(|b| phases.is_empty() || phases.contains(&b.phase())).take(room).map(|b| convert::batch(&b)));
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    /// A job `caller` may see, from memory or the store.
    pub async fn job(self: &Arc<Self>, id: JobId, caller: &Principal) -> Result<(JobRecord, pb::Job)> {
        let in_memory = self.read_committed(|s| s.job(id).map(|j| (j.clone(), job_message(s, j), s.batch(j.batch).map(|b| b.owner.clone())))).await?;
        let (record, message, owner) = match in_memory {
            Some((record, message, Some(owner))) => (record, message, owner),
            _ => {
                let record = self.stored(move |store| store.job(id)).await?.ok_or_else(|| CoordError::not_found("job", id))?;
                let batch = record.batch;
                let owner = self.stored(move |store| store.batch(batch)).await?.map(|b| b.owner).unwrap_or_default();
                let message = convert::job(&record, None, None);
                (record, message, owner)
            }
        };
        if !caller.owns(&owner) {
            return Err(CoordError::not_found("job", id));
        }
        Ok((record, message))
    }

    /// A job's ended attempts, oldest first (call after [`Farm::job`] checked the caller).
    pub async fn attempts(self: &Arc<Self>, id: JobId) -> Result<Vec<crate::model::AttemptRecord>> {
        self.stored(move |store| store.attempts(id)).await
    }

    async fn stored<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&dyn Store) -> crate::store::StoreResult<T> + Send + 'static) -> Result<T> {
        let farm = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(farm.store.as_ref())).await.map_err(|e| StoreError::Task(Arc::new(e)))?.map_err(CoordError::Store)
    }

    /// The batch an old request id made (beyond the in-memory window).
    pub async fn stored_request(self: &Arc<Self>, owner: String, request_id: String) -> Result<Option<BatchId>> {
        self.stored(move |store| store.batch_for_request(&owner, &request_id)).await
    }

    pub async fn image_record(self: &Arc<Self>, sha256: String) -> Result<Option<crate::store::ImageRecord>> {
        self.stored(move |store| store.image(&sha256)).await
    }

    /// Resolves when new work may be leasable; create it (and `enable` it)
    /// before looking for work, so a wake-up in between is not lost.
    pub fn work_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.work.notified()
    }

    /// The server is stopping: ends every watch stream and long poll now.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
        self.work.notify_waiters();
    }

    /// Resolves once the server is stopping.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Expires leases and releases backed-off jobs, every `period`.
    /// Ticks the scheduler every `period` until `stopping` (or a fatal error).
    pub fn ticker(self: &Arc<Self>, period: Duration, stopping: Stopping) -> impl std::future::Future<Output = ()> + Send + 'static {
        let farm = Arc::clone(self);
        async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stop = stopping.wait();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = &mut stop => return,
                }
                if farm.fatal.borrow().is_some() {
                    return;
                }
                if let Err(e) = farm
                    .apply(|s, fx, now| {
                        s.tick(now, fx);
                        Ok(())
                    })
                    .await
                {
                    tracing::error!(error = %e, "scheduler tick failed");
                }
                farm.sweep_late().await;
            }
        }
    }
}

/// A job as the wire shows it, with its live progress and waiting reason.
pub fn job_message(s: &Scheduler, j: &JobRecord) -> pb::Job {
    convert::job(j, s.progress(j.id), s.waiting_reason(j.id))
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
        EventKind::Waiting => pb::EventKind::Waiting,
        EventKind::BatchChanged => pb::EventKind::BatchChanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMode, TokenStore, WorkerCerts};
    use crate::store::SqliteStore;
    use crate::store::{Commits, Durability};
    use crate::validate::SubmitRules;

    #[test]
    fn a_panic_under_the_scheduler_lock_reports_broken_instead_of_serving_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("state.sqlite"), Durability::ProcessCrash, Commits::Grouped).unwrap());
        let blobs = Location::open_root(&format!("file://{}/objects", dir.path().display())).unwrap();
        let config = FarmConfig {
            scheduler: SchedulerConfig::default(),
            heartbeat_interval_ms: 1_000,
            max_upload_bytes: 1 << 20,
            submit: SubmitRules::for_store(&blobs.url),
            quotas: Default::default(),
            metrics: None,
            tracer: None,
        };
        let farm =
            Farm::open(store, blobs, config, Authenticator::new(TokenStore::open(dir.path()).unwrap(), AuthMode::Auto, WorkerCerts::NotRequired)).unwrap();
        let broken = farm.broken_signal();
        assert!(farm.read(|s| s.sizes()).is_ok());
        let victim = Arc::clone(&farm);
        let panicked = std::thread::spawn(move || victim.read(|_| panic!("an invariant broke"))).join();
        assert!(panicked.is_err());
        assert!(matches!(farm.read(|_| ()), Err(CoordError::Internal(_))), "every later call says so");
        assert!(broken.borrow().is_some(), "and health turns NOT_SERVING");
    }
}
