//! Property tests of the pure scheduler: random sequences of submit, lease,
//! heartbeat, complete, fail, hand-back, cancel, pause, retry, delete,
//! disable/drain workers, tick and restart (through a
//! real SQLite store), with [`Scheduler::check_invariants`] after every step,
//! every job ending at most once, and every job ending once the farm runs
//! the rest out.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::identity::Principal;
use crate::model::{AttemptStop, DeviceReadings, DeviceRecord, HeartbeatVerdict, ImageSource, JobOutputs, NewBatch, NewJob, WorkerProfile};
use crate::store::{Commits, Durability, Snapshot, SqliteStore, Store};

const GIB: u64 = 1 << 30;

struct World {
    sched: Scheduler,
    store: SqliteStore,
    now: Millis,
    workers: Vec<WorkerId>,
    /// What each worker holds: job → (attempt, secret).
    leases: HashMap<JobId, (WorkerId, u32, String)>,
    /// Final-state observations per job (must stay ≤ 1).
    finished: HashMap<JobId, u32>,
    submitted: Vec<JobId>,
    batch_ids: Vec<BatchId>,
}

/// The blocklist is off (a high limit): with it, two workers that both fail a
/// batch three times leave its jobs queued for ever (issue 24's to fix).
fn config() -> SchedulerConfig {
    SchedulerConfig {
        lease_ttl_ms: 2_000,
        unfit_grace_ms: 6_000,
        backoff: Backoff::new(Duration::from_millis(300), Duration::from_millis(2_000)),
        worker_batch_failure_limit: 1_000,
        ..SchedulerConfig::default()
    }
}

impl World {
    fn new(dir: &std::path::Path) -> World {
        let store = SqliteStore::open(&dir.join("state.sqlite"), Durability::ProcessCrash, Commits::Grouped).unwrap();
        let sched = Scheduler::restore(config(), store.load().unwrap(), 0);
        let mut w =
            World { sched, store, now: 0, workers: Vec::new(), leases: HashMap::new(), finished: HashMap::new(), submitted: Vec::new(), batch_ids: Vec::new() };
        for (name, memory, pool, vram) in [("small", 4 * GIB, "a", "4"), ("big", 16 * GIB, "b", "16")] {
            let devices = vec![DeviceRecord { name: "cuda:0".into(), memory_bytes: memory, description: String::new() }];
            let labels = [("pool".to_string(), pool.to_string()), ("vram".to_string(), vram.to_string())].into();
            let profile = WorkerProfile { name: name.into(), devices, version: "1".into(), labels };
            let id = w.apply(|s, fx, now| s.register_worker(None, &Principal::local(), profile, now, fx).unwrap().id);
            w.workers.push(id);
        }
        w
    }

    /// Runs one scheduler call, commits its ops (as the farm does), evicts
    /// finished batches, and checks the invariants.
    fn apply<T>(&mut self, f: impl FnOnce(&mut Scheduler, &mut Effects, Millis) -> T) -> T {
        let mut fx = Effects::default();
        let out = f(&mut self.sched, &mut fx, self.now);
        for o in &fx.observations {
            if let Observation::Finished { job, .. } = o {
                let n = self.finished.entry(*job).or_default();
                *n += 1;
                assert_eq!(*n, 1, "job {job} ended twice");
            }
        }
        self.store.commit(fx.ops).blocking_recv().unwrap().unwrap();
        for batch in fx.finished_batches {
            self.sched.evict_batch(batch);
        }
        if let Err(broken) = self.sched.check_invariants() {
            panic!("invariant broken at {} ms: {broken}", self.now);
        }
        out
    }

    fn restart(&mut self) {
        let availability = |s: &Scheduler| s.workers().map(|w| (w.id, w.availability)).collect::<Vec<_>>();
        let before = availability(&self.sched);
        let snapshot: Snapshot = self.store.load().unwrap();
        self.sched = Scheduler::restore(config(), snapshot, self.now);
        assert_eq!(availability(&self.sched), before, "disabled workers stay disabled across a restart");
        self.sched.check_invariants().unwrap_or_else(|broken| panic!("after a restart: {broken}"));
    }

    fn submit(&mut self, rng: &mut StdRng) {
        let n = rng.random_range(1..=5);
        let jobs = (0..n)
            .map(|i| NewJob {
                name: format!("j{i}"),
                content: ImageSource::Blob("a".repeat(64)),
                styles: vec![ImageSource::Blob("b".repeat(64))],
                params_json: "{}".into(),
                // now and then one only the big device fits, or none does
                estimate_bytes: [GIB, GIB, 2 * GIB, 8 * GIB, 64 * GIB][rng.random_range(0..5)],
                work: rng.random_range(0..1_000_000_000),
                time_limit_ms: rng.random_range(3_000..20_000),
                depends_on: if i > 0 && rng.random_bool(0.4) { vec![rng.random_range(0..i)] } else { Vec::new() },
                task: None,
                // now and then a job for the big worker's pool only
                requires: if rng.random_bool(0.1) { vec!["vram>=16".parse().unwrap()] } else { Vec::new() },
            })
            .collect();
        // now and then a batch for a pool: the small worker's, or one nobody is in
        let requires = match rng.random_range(0..10) {
            0 => vec!["pool=a".parse().unwrap()],
            1 => vec!["pool=none".parse().unwrap()],
            _ => Vec::new(),
        };
        let new = NewBatch {
            name: "b".into(),
            priority: rng.random_range(0..3),
            labels: BTreeMap::new(),
            max_attempts: 2,
            request_id: None,
            requires,
            notify: Default::default(),
            jobs,
        };
        let submitted = self.apply(|s, fx, now| s.submit(new, "local", now, fx, &mut || "0".repeat(32)));
        self.batch_ids.push(submitted.batch);
        self.submitted.extend(submitted.jobs);
    }

    fn lease(&mut self, rng: &mut StdRng) {
        let i = rng.random_range(0..self.workers.len());
        let (worker, memory) = (self.workers[i], if i == 0 { 4 * GIB } else { 16 * GIB });
        if let Some(grant) = self.apply(|s, fx, now| s.lease(worker, &Principal::local(), memory, now, fx).unwrap()) {
            self.leases.insert(grant.job.id, (worker, grant.attempt, grant.secret.expose().to_string()));
        }
    }

    /// A random held lease: its job, worker and claim.
    fn held(&self, rng: &mut StdRng) -> Option<(JobId, WorkerId, LeaseClaim)> {
        let mut held: Vec<_> = self.leases.iter().collect();
        held.sort_by_key(|(j, _)| **j);
        let (job, (worker, attempt, secret)) = held.get(rng.random_range(0..held.len().max(1)))?;
        Some((**job, *worker, LeaseClaim::new(*attempt, secret)))
    }

    fn end_attempt(&mut self, rng: &mut StdRng) {
        let Some((job, worker, claim)) = self.held(rng) else { return };
        self.leases.remove(&job);
        let how = rng.random_range(0..4);
        let _ = self.apply(|s, fx, now| match how {
            0 => s.complete(worker, &Principal::local(), job, &claim, JobOutputs { prefix: format!("{job}/"), ..JobOutputs::default() }, now, fx).map(|_| ()),
            _ => {
                let stop = if how == 3 { AttemptStop::HandedBack } else { AttemptStop::Failed { retryable: how != 1 } };
                let failure = AttemptFailure { reason: "boom".into(), stop, spans: Vec::new() };
                s.fail(worker, &Principal::local(), job, &claim, failure, now, fx).map(|_| ())
            }
        });
    }

    fn heartbeat(&mut self) {
        for worker in self.workers.clone() {
            let beats: Vec<Beat> = self.leases.iter().filter(|(_, (w, _, _))| *w == worker).map(|(j, (_, a, s))| (*j, LeaseClaim::new(*a, s), None)).collect();
            let verdicts = self.apply(|s, fx, now| s.heartbeat(worker, &Principal::local(), beats, DeviceReadings::default(), now, fx).unwrap());
            for (job, _, verdict) in verdicts {
                if verdict != HeartbeatVerdict::Continue {
                    self.leases.remove(&job);
                }
            }
        }
    }

    fn cancel(&mut self, rng: &mut StdRng) {
        let live: Vec<BatchId> = self.sched.live_batches().map(|b| b.id).collect();
        if let Some(&batch) = live.get(rng.random_range(0..live.len().max(1))) {
            self.apply(|s, fx, now| s.cancel_batch(batch, now, fx).unwrap());
        }
    }

    fn cancel_job(&mut self, rng: &mut StdRng) {
        let live: Vec<JobId> = self.submitted.iter().copied().filter(|j| self.sched.job(*j).is_some()).collect();
        if let Some(&job) = live.get(rng.random_range(0..live.len().max(1))) {
            self.apply(|s, fx, now| s.cancel_job(job, now, fx).unwrap());
        }
    }

    /// A live batch's priority changes; the store must agree after a restart.
    fn reprioritise(&mut self, rng: &mut StdRng) {
        let live: Vec<BatchId> = self.sched.live_batches().map(|b| b.id).collect();
        if let Some(&batch) = live.get(rng.random_range(0..live.len().max(1))) {
            let priority = rng.random_range(-2..5);
            self.apply(|s, fx, _| s.set_priority(batch, priority, fx).unwrap());
            let jobs = self.sched.batch_jobs(batch).unwrap_or_default();
            assert!(jobs.iter().all(|j| j.priority == priority), "every job of batch {batch} has its new priority");
        }
    }

    /// A live batch is paused (sometimes handing its running jobs back) or resumed.
    fn pause_or_resume(&mut self, rng: &mut StdRng) {
        let live: Vec<BatchId> = self.sched.live_batches().map(|b| b.id).collect();
        let Some(&batch) = live.get(rng.random_range(0..live.len().max(1))) else { return };
        match rng.random_range(0..3) {
            0 => self.apply(|s, fx, _| s.resume_batch(batch, fx).unwrap()),
            n => {
                let mode = if n == 1 { PauseMode::FinishRunning } else { PauseMode::HandBackNow };
                self.apply(|s, fx, now| s.pause_batch(batch, mode, now, fx).unwrap());
                // a taken-back lease is gone: its worker's calls are refused
                self.leases.retain(|job, _| self.sched.job(*job).is_none_or(|j| matches!(j.state, JobState::Running { .. })));
            }
        }
    }

    /// Every failed job of a random batch runs again (a finished batch is
    /// read back from the store, as the farm does); a retried job may end again.
    fn retry(&mut self, rng: &mut StdRng) {
        let Some(&batch) = self.batch_ids.get(rng.random_range(0..self.batch_ids.len().max(1))) else { return };
        let stored = match self.sched.batch(batch) {
            Some(_) => None,
            None => Some((self.store.batch(batch).unwrap().expect("a submitted batch is stored"), self.store.batch_jobs(batch).unwrap())),
        };
        self.apply(|s, fx, now| {
            if let Some((record, jobs)) = stored {
                s.load_finished_batch(record, jobs);
            }
            s.retry(batch, RetryTarget::Failed, now, fx).unwrap()
        });
        let sched = &self.sched;
        self.finished.retain(|job, _| sched.job(*job).is_none_or(|j| j.state.kind().is_terminal()));
    }

    /// A random batch is deleted (running jobs taken back first); its jobs
    /// leave the store, so they leave the checks too.
    fn delete(&mut self, rng: &mut StdRng) {
        let Some(&batch) = self.batch_ids.get(rng.random_range(0..self.batch_ids.len().max(1))) else { return };
        self.apply(|s, fx, now| s.delete_batch(batch, DeleteMode::CancelRunning, now, fx).unwrap());
        self.batch_ids.retain(|b| *b != batch);
        let gone: Vec<JobId> = self.submitted.iter().copied().filter(|j| self.store.job(*j).unwrap().is_none()).collect();
        assert!(self.sched.batch(batch).is_none(), "a deleted batch left memory");
        self.submitted.retain(|j| !gone.contains(j));
        self.leases.retain(|j, _| !gone.contains(j));
        assert_eq!(self.store.batches_before(BatchId(i64::MAX), 1_000, None).unwrap().iter().filter(|b| b.id == batch).count(), 0, "lists skip it");
    }

    /// A random worker is disabled, enabled or drained (its leases taken back).
    fn rotate(&mut self, rng: &mut StdRng) {
        let worker = self.workers[rng.random_range(0..self.workers.len())];
        let action = [WorkerAction::Disable, WorkerAction::Enable, WorkerAction::Drain][rng.random_range(0..3)];
        self.apply(|s, fx, now| s.control_worker(worker, action, now, fx).unwrap());
        if action == WorkerAction::Drain {
            self.leases.retain(|_, (w, _, _)| *w != worker);
        }
    }

    fn tick(&mut self, ms: Millis) {
        self.now += ms;
        self.apply(|s, fx, now| s.tick(now, fx));
    }
}

fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = World::new(dir.path());
    for _ in 0..250 {
        match rng.random_range(0..100) {
            0..=14 => w.submit(&mut rng),
            15..=44 => w.lease(&mut rng),
            45..=64 => w.end_attempt(&mut rng),
            65..=74 => w.heartbeat(),
            75..=76 => w.cancel(&mut rng),
            77..=78 => w.cancel_job(&mut rng),
            79..=81 => w.restart(),
            82..=84 => w.reprioritise(&mut rng),
            85..=87 => w.pause_or_resume(&mut rng),
            88..=89 => w.retry(&mut rng),
            90 => w.delete(&mut rng),
            91..=92 => w.rotate(&mut rng),
            _ => {
                let ms = rng.random_range(0..1_500);
                w.tick(ms)
            }
        }
    }
    // the farm runs the rest out: the workers heartbeat, lease and complete
    // until nothing is left (jobs no device fits fail after the grace)
    let paused: Vec<BatchId> = w.sched.live_batches().filter(|b| b.paused).map(|b| b.id).collect();
    for batch in paused {
        w.apply(|s, fx, _| s.resume_batch(batch, fx).unwrap());
    }
    for worker in w.workers.clone() {
        w.apply(|s, fx, now| s.control_worker(worker, WorkerAction::Enable, now, fx).unwrap());
    }
    for _ in 0..2_000 {
        if w.sched.live_batches().next().is_none() {
            break;
        }
        w.heartbeat();
        w.lease(&mut rng);
        w.lease(&mut rng);
        while let Some((job, worker, claim)) = w.held(&mut rng) {
            w.leases.remove(&job);
            let outputs = JobOutputs { prefix: format!("{job}/"), ..JobOutputs::default() };
            w.apply(|s, fx, now| s.complete(worker, &Principal::local(), job, &claim, outputs, now, fx).unwrap());
        }
        w.tick(500);
    }
    let live: Vec<_> = w.sched.live_batches().map(|b| (b.id, b.counts.clone())).collect();
    assert!(live.is_empty(), "seed {seed}: batches never ended: {live:?}");
    for batch in w.store.batches_before(BatchId(i64::MAX), 1_000, None).unwrap() {
        let jobs = w.store.batch_jobs(batch.id).unwrap();
        assert!(jobs.iter().all(|j| j.priority == batch.priority), "seed {seed}: batch {} and its jobs' stored priorities agree", batch.id);
    }
    for job in &w.submitted {
        let record = w.store.job(*job).unwrap().expect("every job is in the store");
        assert!(record.state.kind().is_terminal(), "seed {seed}: job {job} ended {:?}", record.state.kind());
        assert_eq!(w.finished.get(job).copied(), Some(1), "seed {seed}: job {job} ended once, and said so");
    }
}

#[test]
fn random_sequences_keep_every_invariant_and_end_every_job() {
    for seed in 0..40 {
        run(seed);
    }
}

#[test]
fn ids_of_deleted_jobs_and_forgotten_workers_are_never_given_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    let mut rng = StdRng::seed_from_u64(7);
    w.submit(&mut rng);
    let (batch, last_job) = (w.batch_ids[0], *w.submitted.last().unwrap());
    let worker = *w.workers.last().unwrap();
    w.apply(|s, fx, now| s.delete_batch(batch, DeleteMode::CancelRunning, now, fx).unwrap());
    // unseen for longer than a lease: it may be forgotten
    w.now += 10_000;
    w.apply(|s, fx, now| s.forget_worker(worker, now, fx).unwrap());
    w.restart();
    let new = w.apply(|s, fx, now| {
        let job = NewJob {
            name: "again".into(),
            content: ImageSource::Blob("a".repeat(64)),
            styles: Vec::new(),
            params_json: "{}".into(),
            estimate_bytes: 0,
            work: 0,
            time_limit_ms: 1_000,
            depends_on: Vec::new(),
            task: None,
            requires: Vec::new(),
        };
        s.submit(
            NewBatch {
                name: "b".into(),
                priority: 0,
                labels: BTreeMap::new(),
                max_attempts: 1,
                request_id: None,
                requires: Vec::new(),
                notify: Default::default(),
                jobs: vec![job],
            },
            "local",
            now,
            fx,
            &mut || "0".repeat(32),
        )
    });
    assert!(new.jobs[0] > last_job, "job {} reuses an id up to {last_job}", new.jobs[0]);
    let profile = WorkerProfile { name: "new".into(), devices: Vec::new(), version: "1".into(), labels: BTreeMap::new() };
    let registered = w.apply(|s, fx, now| s.register_worker(None, &Principal::local(), profile, now, fx).unwrap().id);
    assert!(registered > worker, "worker {registered} reuses the forgotten {worker}'s id");
}
