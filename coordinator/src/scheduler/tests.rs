//! The scheduler's own rules, without gRPC or a store.

use super::*;
use crate::error::CoordError;
use crate::identity::{Principal, Role};
use crate::model::{
    AfterFailure, AttemptStop, Availability, DeviceReadings, DeviceRecord, HeartbeatVerdict, ImageSource, JobOutputs, NewBatch, NewJob, StateKind, Submitted,
    WorkerProfile,
};
use crate::store::{Snapshot, StoreOp};

fn config() -> SchedulerConfig {
    SchedulerConfig { lease_ttl_ms: 1_000, unfit_grace_ms: 5_000, ..SchedulerConfig::default() }
}

fn job(estimate_bytes: u64) -> NewJob {
    NewJob {
        name: "j".into(),
        content: ImageSource::Blob("a".repeat(64)),
        styles: vec![ImageSource::Blob("b".repeat(64))],
        params_json: "{}".into(),
        estimate_bytes,
        work: 1_000_000,
        time_limit_ms: 10_000,
        depends_on: Vec::new(),
        task: None,
        requires: Vec::new(),
    }
}

fn batch(jobs: Vec<NewJob>) -> NewBatch {
    NewBatch {
        name: "b".into(),
        priority: 0,
        labels: BTreeMap::new(),
        max_attempts: 2,
        request_id: None,
        requires: Vec::new(),
        notify: Default::default(),
        jobs,
    }
}

fn profile(name: String, devices: Vec<DeviceRecord>) -> WorkerProfile {
    WorkerProfile { name, devices, version: "1".into(), labels: Default::default() }
}

fn gpu(memory: u64) -> Vec<DeviceRecord> {
    vec![DeviceRecord { name: "cuda:0".into(), memory_bytes: memory, description: String::new() }]
}

fn local() -> Principal {
    Principal::local()
}

fn setup() -> (Scheduler, WorkerId) {
    let mut s = Scheduler::restore(config(), Snapshot { next_batch: 1, next_job: 1, next_worker: 1, ..Snapshot::default() }, 0);
    let w = s.register_worker(None, &local(), profile("w".into(), gpu(4 << 30)), 0, &mut Effects::default()).unwrap().id;
    (s, w)
}

fn trace() -> impl FnMut() -> String {
    || "0".repeat(32)
}

#[test]
fn a_job_no_device_fits_says_why_then_fails_after_the_grace() {
    let (mut s, w) = setup();
    let submitted = s.submit(batch(vec![job(1 << 30), job(64 << 30)]), "local", 0, &mut Effects::default(), &mut trace());
    let (small, big) = (submitted.jobs[0], submitted.jobs[1]);
    let mut fx = Effects::default();
    // the worker keeps heartbeating (seen), the big job waits with a reason
    s.tick(1_000, &mut fx);
    let reason = s.waiting_reason(big).expect("the big job says why it waits");
    assert!(reason.contains("64.0 GiB") && reason.contains("4.0 GiB"), "{reason}");
    assert!(fx.events.iter().any(|e| e.kind == EventKind::Waiting && e.job == Some(big)));
    assert_eq!(s.waiting_reason(small), None);
    let grant = s.lease(w, &local(), 4 << 30, 1_500, &mut Effects::default()).unwrap().unwrap();
    assert_eq!(grant.job.id, small, "the small one runs");
    s.heartbeat(w, &local(), vec![(small, LeaseClaim::new(1, grant.secret.expose()), None)], DeviceReadings::default(), 5_900, &mut Effects::default())
        .unwrap();
    s.tick(6_000, &mut Effects::default());
    let JobState::Failed { reason, retryable, .. } = &s.job(big).unwrap().state else { panic!("{:?}", s.job(big).unwrap().state) };
    assert!(reason.contains("no connected worker") && reason.contains("waited 5 s") && !retryable, "{reason}");
}

#[test]
fn handed_back_jobs_requeue_at_once_without_blocking_the_worker() {
    let (mut s, w) = setup();
    s.submit(batch(vec![job(1)]), "local", 0, &mut Effects::default(), &mut trace());
    for n in 0..5 {
        let grant = s.lease(w, &local(), 0, n * 10, &mut Effects::default()).unwrap().expect("leasable again at once");
        let failure = AttemptFailure { reason: "draining".into(), stop: AttemptStop::HandedBack, spans: Vec::new() };
        let after =
            s.fail(w, &local(), grant.job.id, &LeaseClaim::new(grant.attempt, grant.secret.expose()), failure, n * 10 + 1, &mut Effects::default()).unwrap();
        assert!(matches!(after, AfterFailure::Requeued { .. }));
    }
    assert!(!s.is_blocked(w, BatchId(1)));
    assert_eq!(s.worker(w).unwrap().failed, 0);
}

#[test]
fn attempts_past_their_time_limit_end_and_finished_batches_leave_memory() {
    let (mut s, w) = setup();
    let b = s.submit(batch(vec![job(1)]), "local", 0, &mut Effects::default(), &mut trace()).batch;
    let grant = s.lease(w, &local(), 0, 0, &mut Effects::default()).unwrap().unwrap();
    // heartbeats keep the lease alive, but not past the time limit
    for t in (500..=10_000).step_by(500) {
        s.heartbeat(w, &local(), vec![(grant.job.id, LeaseClaim::new(1, grant.secret.expose()), None)], DeviceReadings::default(), t, &mut Effects::default())
            .unwrap();
        s.tick(t, &mut Effects::default());
    }
    assert!(matches!(s.job(grant.job.id).unwrap().state, JobState::Running { .. }));
    let mut fx = Effects::default();
    s.tick(10_001, &mut fx);
    assert_eq!(fx.finished_batches, vec![b]);
    s.evict_batch(b);
    assert!(s.batch(b).is_none() && s.job(grant.job.id).is_none());
    assert!(s.sizes().starts_with("batches=0 jobs=0 progress=0 waiting=0"), "{}", s.sizes());
}

#[test]
fn a_worker_acts_only_for_its_principal() {
    let (mut s, _) = setup();
    let alice = Principal { name: "gpu-a".into(), role: Role::Worker };
    let bob = Principal { name: "gpu-b".into(), role: Role::Worker };
    let w = s.register_worker(None, &alice, profile("a".into(), gpu(1 << 30)), 0, &mut Effects::default()).unwrap().id;
    let e = s.lease(w, &bob, 0, 1, &mut Effects::default()).unwrap_err();
    assert!(matches!(e, CoordError::PermissionDenied(_)), "{e}");
    assert!(s.lease(w, &alice, 0, 1, &mut Effects::default()).unwrap().is_none());
}

#[test]
fn demand_counts_what_a_worker_could_do_and_leaves_out_unfit_jobs() {
    let (mut s, w) = setup();
    assert_eq!(s.demand().workable(), 0, "nothing to do: scale to zero");
    s.submit(batch(vec![job(1 << 30), job(1 << 30), job(64 << 30)]), "local", 0, &mut Effects::default(), &mut trace());
    s.tick(1_000, &mut Effects::default());
    assert_eq!(s.demand(), Demand { queued: 3, running: 0, unfit: 1, blocked: 0, paused: 0 });
    assert_eq!(s.demand().workable(), 2, "the 64 GiB job fits no device: more of the same workers would not help");
    let grant = s.lease(w, &local(), 4 << 30, 1_100, &mut Effects::default()).unwrap().unwrap();
    assert_eq!(s.demand(), Demand { queued: 2, running: 1, unfit: 1, blocked: 0, paused: 0 });
    s.complete(w, &local(), grant.job.id, &LeaseClaim::new(grant.attempt, grant.secret.expose()), JobOutputs::default(), 1_200, &mut Effects::default())
        .unwrap();
    assert_eq!(s.demand().workable(), 1);
}

/// A → B → C, and C also waits on A (a video chain: frames and their flows).
fn chain() -> NewBatch {
    let mut jobs = vec![job(1), job(1), job(1)];
    jobs[1].depends_on = vec![0];
    jobs[2].depends_on = vec![0, 1];
    for (j, name) in jobs.iter_mut().zip(["a", "b", "c"]) {
        j.name = name.into();
    }
    batch(jobs)
}

fn finish(s: &mut Scheduler, w: WorkerId, grant: &Grant, now: Millis) -> Effects {
    let mut fx = Effects::default();
    let outputs = JobOutputs { prefix: format!("file:///out/{}/", grant.job.name), ..JobOutputs::default() };
    s.complete(w, &local(), grant.job.id, &LeaseClaim::new(grant.attempt, grant.secret.expose()), outputs, now, &mut fx).unwrap();
    fx
}

#[test]
fn a_job_is_leased_only_after_its_dependencies_succeed_and_gets_their_outputs() {
    let (mut s, w) = setup();
    let ids = s.submit(chain(), "local", 0, &mut Effects::default(), &mut trace()).jobs;
    assert_eq!(s.demand().blocked, 2);
    let a = s.lease(w, &local(), 0, 1, &mut Effects::default()).unwrap().expect("a has no dependencies");
    assert_eq!(a.job.id, ids[0]);
    assert!(s.lease(w, &local(), 0, 2, &mut Effects::default()).unwrap().is_none(), "b and c wait for a");
    let fx = finish(&mut s, w, &a, 3);
    assert!(fx.wake, "b became leasable: long-polling workers are woken");
    let b = s.lease(w, &local(), 0, 4, &mut Effects::default()).unwrap().expect("b is released");
    assert_eq!(b.job.id, ids[1]);
    assert_eq!(b.inputs, vec![DependencyOutput { job: ids[0], name: "a".into(), prefix: "file:///out/a/".into() }]);
    assert!(s.lease(w, &local(), 0, 5, &mut Effects::default()).unwrap().is_none(), "c still waits for b");
    finish(&mut s, w, &b, 6);
    let c = s.lease(w, &local(), 0, 7, &mut Effects::default()).unwrap().expect("c is released");
    assert_eq!(c.inputs.iter().map(|i| i.prefix.as_str()).collect::<Vec<_>>(), ["file:///out/a/", "file:///out/b/"]);
    assert_eq!(s.demand().blocked, 0);
}

#[test]
fn a_failed_dependency_fails_its_dependents_naming_it() {
    let (mut s, w) = setup();
    let submitted = s.submit(chain(), "local", 0, &mut Effects::default(), &mut trace());
    let a = s.lease(w, &local(), 0, 1, &mut Effects::default()).unwrap().unwrap();
    let failure = AttemptFailure { reason: "corrupt frame".into(), stop: AttemptStop::Failed { retryable: false }, spans: Vec::new() };
    let mut fx = Effects::default();
    s.fail(w, &local(), a.job.id, &LeaseClaim::new(a.attempt, a.secret.expose()), failure, 2, &mut fx).unwrap();
    for (id, expect) in submitted.jobs[1..].iter().zip(["dependency j1 (a) failed: corrupt frame", "dependency j1 (a) failed: corrupt frame"]) {
        let JobState::Failed { reason, .. } = &s.job(*id).unwrap().state else { panic!("{:?}", s.job(*id).unwrap().state) };
        assert_eq!(reason, expect);
    }
    assert_eq!(fx.finished_batches, vec![submitted.batch], "nothing is left to run: the batch ends");
    assert_eq!(s.batch(submitted.batch).unwrap().counts.failed, 3);
    assert_eq!(s.demand().blocked, 0);
}

#[test]
fn cancelling_reaches_jobs_waiting_on_a_running_one() {
    let (mut s, w) = setup();
    let submitted = s.submit(chain(), "local", 0, &mut Effects::default(), &mut trace());
    let a = s.lease(w, &local(), 0, 1, &mut Effects::default()).unwrap().unwrap();
    assert_eq!(s.cancel_batch(submitted.batch, 2, &mut Effects::default()).unwrap(), (2, 1));
    assert!(submitted.jobs[1..].iter().all(|id| s.job(*id).unwrap().state == JobState::Cancelled));
    // the running one stops at its next heartbeat
    let verdicts = s
        .heartbeat(w, &local(), vec![(a.job.id, LeaseClaim::new(a.attempt, a.secret.expose()), None)], DeviceReadings::default(), 3, &mut Effects::default())
        .unwrap();
    assert_eq!(verdicts[0].2, HeartbeatVerdict::Cancel);
}

#[test]
fn dependencies_survive_a_restart() {
    let (mut s, w) = setup();
    let submitted = s.submit(chain(), "local", 0, &mut Effects::default(), &mut trace());
    let a = s.lease(w, &local(), 0, 1, &mut Effects::default()).unwrap().unwrap();
    finish(&mut s, w, &a, 2);
    let snapshot = Snapshot {
        batches: vec![s.batch(submitted.batch).unwrap().clone()],
        jobs: s.batch_jobs(submitted.batch).unwrap().into_iter().cloned().collect(),
        next_batch: 2,
        next_job: 4,
        next_worker: 2,
        ..Snapshot::default()
    };
    let mut restored = Scheduler::restore(config(), snapshot, 10);
    assert_eq!(restored.demand().blocked, 1, "c still waits for b");
    let w = restored.register_worker(None, &local(), profile("w".into(), gpu(4 << 30)), 10, &mut Effects::default()).unwrap().id;
    let b = restored.lease(w, &local(), 0, 11, &mut Effects::default()).unwrap().expect("b's dependency succeeded before the restart");
    assert_eq!(b.job.id, submitted.jobs[1]);
    assert_eq!(b.inputs[0].prefix, "file:///out/a/");
    assert!(restored.lease(w, &local(), 0, 12, &mut Effects::default()).unwrap().is_none());
    finish(&mut restored, w, &b, 13);
    assert_eq!(restored.lease(w, &local(), 0, 14, &mut Effects::default()).unwrap().expect("c").job.id, submitted.jobs[2]);
}

#[test]
fn a_worker_lost_mid_chain_resumes_it_from_the_last_committed_frame() {
    let (mut s, w) = setup();
    let ids = s.submit(chain(), "local", 0, &mut Effects::default(), &mut trace()).jobs;
    let a = s.lease(w, &local(), 0, 1, &mut Effects::default()).unwrap().unwrap();
    finish(&mut s, w, &a, 2);
    let b = s.lease(w, &local(), 0, 3, &mut Effects::default()).unwrap().unwrap();
    assert_eq!(b.job.id, ids[1]);
    // the worker dies: b's lease runs out, a stays committed
    s.tick(3 + 1_001, &mut Effects::default());
    assert!(matches!(s.job(ids[1]).unwrap().state, JobState::Queued { .. }));
    assert!(matches!(s.job(ids[0]).unwrap().state, JobState::Succeeded { .. }), "the committed frame is not run again");
    let other = s.register_worker(None, &local(), profile("w2".into(), gpu(4 << 30)), 5_000, &mut Effects::default()).unwrap().id;
    let retry = s.lease(other, &local(), 0, 10_000, &mut Effects::default()).unwrap().expect("b again, after its backoff");
    assert_eq!((retry.job.id, retry.attempt), (ids[1], 2));
    assert_eq!(retry.inputs[0].prefix, "file:///out/a/", "from the same committed output");
    finish(&mut s, other, &retry, 10_001);
    assert_eq!(s.lease(other, &local(), 0, 10_002, &mut Effects::default()).unwrap().expect("c").job.id, ids[2]);
}

#[test]
fn a_failure_at_the_head_of_a_long_chain_ends_it_in_one_pass() {
    let (mut s, w) = setup();
    // a 20,000-frame chain: each job waits on the one before
    let jobs: Vec<NewJob> = (0..20_000u32).map(|i| NewJob { depends_on: if i == 0 { vec![] } else { vec![i - 1] }, ..job(1) }).collect();
    let submitted = s.submit(batch(jobs), "local", 0, &mut Effects::default(), &mut trace());
    let head = s.lease(w, &local(), 0, 1, &mut Effects::default()).unwrap().unwrap();
    let failure = AttemptFailure { reason: "bad frame".into(), stop: AttemptStop::Failed { retryable: false }, spans: Vec::new() };
    let mut fx = Effects::default();
    s.fail(w, &local(), head.job.id, &LeaseClaim::new(head.attempt, head.secret.expose()), failure, 2, &mut fx).unwrap();
    assert_eq!(s.batch(submitted.batch).unwrap().counts.failed, 20_000);
    assert_eq!(fx.finished_batches, vec![submitted.batch]);
    let JobState::Failed { reason, .. } = &s.job(*submitted.jobs.last().unwrap()).unwrap().state else { panic!() };
    assert_eq!(reason, "dependency j1 (j) failed: bad frame", "the last link names the head, not its predecessor");
}

#[test]
fn retrying_a_failed_dependency_runs_it_and_its_dependents_again_in_order() {
    let (mut s, w) = setup();
    let submitted = s.submit(chain(), "local", 0, &mut Effects::default(), &mut trace());
    let a = s.lease(w, &local(), 0, 1, &mut Effects::default()).unwrap().unwrap();
    let failure = AttemptFailure { reason: "corrupt frame".into(), stop: AttemptStop::Failed { retryable: false }, spans: Vec::new() };
    let mut fx = Effects::default();
    s.fail(w, &local(), a.job.id, &LeaseClaim::new(a.attempt, a.secret.expose()), failure, 2, &mut fx).unwrap();
    assert_eq!(fx.finished_batches, vec![submitted.batch]);
    // a dependent is retried through its root, not alone
    let e = s.retry(submitted.batch, RetryTarget::Job(submitted.jobs[2]), 3, &mut Effects::default()).unwrap_err();
    assert!(e.to_string().contains("retry j1"), "{e}");
    // every failed job: the root queued, its dependents waiting for it; the batch runs again
    let mut fx = Effects::default();
    assert_eq!(s.retry(submitted.batch, RetryTarget::Failed, 3, &mut fx).unwrap(), 3);
    s.check_invariants().unwrap();
    assert!(fx.ops.iter().any(|op| matches!(op, StoreOp::ReopenBatch(b) if *b == submitted.batch)), "the batch is unfinished again, durably");
    let batch = s.batch(submitted.batch).unwrap();
    assert_eq!((batch.finished_ms, batch.counts.queued, batch.counts.failed), (None, 3, 0));
    assert_eq!(s.demand().blocked, 2);
    let again = s.lease(w, &local(), 0, 4, &mut Effects::default()).unwrap().expect("the root runs again");
    assert_eq!((again.job.id, again.attempt), (a.job.id, 2), "a new attempt number: fencing only grows");
    assert!(s.lease(w, &local(), 0, 5, &mut Effects::default()).unwrap().is_none(), "its dependents wait for it");
    finish(&mut s, w, &again, 6);
    let b = s.lease(w, &local(), 0, 7, &mut Effects::default()).unwrap().unwrap();
    assert_eq!(b.job.id, submitted.jobs[1]);
    finish(&mut s, w, &b, 8);
    let c = s.lease(w, &local(), 0, 9, &mut Effects::default()).unwrap().unwrap();
    let fx = finish(&mut s, w, &c, 10);
    assert_eq!(fx.finished_batches, vec![submitted.batch], "and the batch ends again");
    assert_eq!(s.batch(submitted.batch).unwrap().counts.succeeded, 3);
    // nothing left to retry; a succeeded job cannot be
    assert_eq!(s.retry(submitted.batch, RetryTarget::Failed, 11, &mut Effects::default()).unwrap(), 0);
    let e = s.retry(submitted.batch, RetryTarget::Job(c.job.id), 11, &mut Effects::default()).unwrap_err();
    assert!(e.to_string().contains("succeeded"), "{e}");
}

#[test]
fn a_retried_job_has_its_whole_attempt_budget_again() {
    let (mut s, w) = setup();
    let submitted = s.submit(batch(vec![job(1)]), "local", 0, &mut Effects::default(), &mut trace());
    let mut now = 0;
    let fail = |s: &mut Scheduler, now: Millis| {
        let g = s.lease(w, &local(), 0, now, &mut Effects::default()).unwrap().expect("leasable");
        let failure = AttemptFailure { reason: "flaky".into(), stop: AttemptStop::Failed { retryable: true }, spans: Vec::new() };
        s.fail(w, &local(), g.job.id, &LeaseClaim::new(g.attempt, g.secret.expose()), failure, now, &mut Effects::default()).unwrap()
    };
    // max_attempts = 2: requeued once, then failed
    assert!(matches!(fail(&mut s, now), AfterFailure::Requeued { .. }));
    now += 1_000_000;
    s.tick(now, &mut Effects::default());
    assert_eq!(fail(&mut s, now), AfterFailure::Failed);
    s.retry(submitted.batch, RetryTarget::Job(submitted.jobs[0]), now, &mut Effects::default()).unwrap();
    assert!(matches!(fail(&mut s, now), AfterFailure::Requeued { .. }), "two attempts again after the retry");
    assert_eq!(s.job(submitted.jobs[0]).unwrap().attempt, 3);
}

/// Two 4 GiB workers, each blocked from an 8-job batch after three failed
/// attempts; returns them and the batch.
fn both_blocked() -> (Scheduler, WorkerId, WorkerId, Submitted) {
    let (mut s, w1) = setup();
    let w2 = s.register_worker(None, &local(), profile("w2".into(), gpu(4 << 30)), 0, &mut Effects::default()).unwrap().id;
    let submitted = s.submit(batch((0..8).map(|_| job(1)).collect()), "local", 0, &mut Effects::default(), &mut trace());
    for (i, w) in [w1, w2, w1, w2, w1, w2].into_iter().enumerate() {
        let now = 10 + i as Millis;
        let g = s.lease(w, &local(), 0, now, &mut Effects::default()).unwrap().expect("a job");
        let failure = AttemptFailure { reason: "render error".into(), stop: AttemptStop::Failed { retryable: true }, spans: Vec::new() };
        s.fail(w, &local(), g.job.id, &LeaseClaim::new(g.attempt, g.secret.expose()), failure, now, &mut Effects::default()).unwrap();
    }
    (s, w1, w2, submitted)
}

/// Both workers ask for work at `now` (so they count as connected), then time passes.
fn idle_tick(s: &mut Scheduler, workers: &[WorkerId], now: Millis) -> Effects {
    for w in workers {
        assert!(s.lease(*w, &local(), 0, now, &mut Effects::default()).unwrap().is_none(), "blocked workers get nothing");
    }
    let mut fx = Effects::default();
    s.tick(now, &mut fx);
    s.check_invariants().unwrap();
    fx
}

#[test]
fn a_batch_every_worker_is_blocked_from_says_why_and_ends_instead_of_hanging() {
    let (mut s, w1, w2, submitted) = both_blocked();
    idle_tick(&mut s, &[w1, w2], 1_030);
    let stuck: Vec<JobId> = submitted.jobs.iter().copied().filter(|j| s.waiting_reason(*j).is_some()).collect();
    assert_eq!(stuck.len(), 2, "the two never-tried jobs wait, and say why");
    let reason = s.waiting_reason(stuck[0]).unwrap();
    assert!(reason.contains("blocklisted from batch") && reason.contains("stylefarm unblock"), "{reason}");
    // after the grace period every job has ended: the batch does not hang
    let mut ended = false;
    for now in (2_000..40_000).step_by(1_000) {
        if !idle_tick(&mut s, &[w1, w2], now).finished_batches.is_empty() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the batch ended");
    let counts = s.batch(submitted.batch).unwrap().counts.clone();
    assert_eq!(counts.failed, 8, "{counts:?}");
    let JobState::Failed { reason, .. } = &s.job(stuck[0]).unwrap().state else { panic!() };
    assert!(reason.contains("blocklisted") && reason.contains("waited"), "{reason}");
}

#[test]
fn an_admin_unblocks_a_worker_and_expired_leases_do_not_block() {
    let (mut s, w1, w2, submitted) = both_blocked();
    idle_tick(&mut s, &[w1, w2], 1_030);
    let mut fx = Effects::default();
    assert!(s.unblock_worker(w1, submitted.batch, &mut fx).unwrap());
    assert!(fx.ops.iter().any(|op| matches!(op, StoreOp::CountFailure { worker, failures: 0, .. } if *worker == w1)), "durably");
    assert!(matches!(s.unblock_worker(WorkerId(99), submitted.batch, &mut fx), Err(CoordError::NotFound { .. })));
    let g = s.lease(w1, &local(), 0, 1_100, &mut Effects::default()).unwrap().expect("w1 takes the batch's jobs again");
    let beat = vec![(g.job.id, LeaseClaim::new(g.attempt, g.secret.expose()), None)];
    s.heartbeat(w1, &local(), beat, DeviceReadings::default(), 2_100, &mut Effects::default()).unwrap();
    idle_tick(&mut s, &[w2], 2_100);
    assert!(submitted.jobs.iter().all(|j| s.waiting_reason(*j).is_none()), "a worker may run them: nothing waits for that reason");
    // w1 dies three times: expired leases are not the job's fault, it stays eligible
    let mut now = 2_100;
    let mut held = g;
    for _ in 0..3 {
        now += 5_000;
        s.tick(now, &mut Effects::default());
        assert!(s.job(held.job.id).is_some_and(|j| !matches!(j.state, JobState::Running { .. })), "the lease expired");
        now += 130_000;
        s.tick(now, &mut Effects::default());
        match s.lease(w1, &local(), 0, now, &mut Effects::default()).unwrap() {
            Some(next) => held = next,
            None => break,
        }
    }
    assert!(!s.workers.blocked(w1, submitted.batch, s.config.worker_batch_failure_limit), "three expiries do not block it");
}

#[test]
fn deleting_a_batch_with_running_jobs_is_refused_unless_forced_and_then_spends_no_attempt() {
    let (mut s, w) = setup();
    let b = s.submit(batch(vec![job(1), job(1), job(1)]), "local", 0, &mut Effects::default(), &mut trace());
    let grant = s.lease(w, &local(), 0, 10, &mut Effects::default()).unwrap().unwrap();
    let e = s.delete_batch(b.batch, DeleteMode::IfIdle, 20, &mut Effects::default()).unwrap_err();
    assert!(matches!(e, CoordError::FailedPrecondition(_)) && e.to_string().contains("1 running job") && e.to_string().contains("--force"), "{e}");
    assert_eq!(s.batch(b.batch).unwrap().counts.running, 1, "a refused delete changes nothing");
    let mut fx = Effects::default();
    assert_eq!(s.delete_batch(b.batch, DeleteMode::CancelRunning, 30, &mut fx).unwrap(), 3, "all three are cancelled");
    assert!(fx.finished_batches.contains(&b.batch), "it ended, so it leaves memory once committed");
    assert!(matches!(fx.ops.last(), Some(StoreOp::DeleteBatch { id, deleted_ms: 30 }) if *id == b.batch), "{:?}", fx.ops.last());
    let handed_back = fx.ops.iter().any(|op| matches!(op, StoreOp::InsertAttempt(a) if a.job == grant.job.id && a.outcome == AttemptEnd::HandedBack));
    assert!(handed_back, "the running attempt is recorded as handed back, not failed");
    assert_eq!(s.worker(w).unwrap().failed, 0);
    assert!(s.running_jobs_of(w).is_empty());
    // its worker's next heartbeat learns the lease is gone
    let verdicts = s.heartbeat(
        w,
        &local(),
        vec![(grant.job.id, LeaseClaim::new(grant.attempt, grant.secret.expose()), None)],
        DeviceReadings::default(),
        40,
        &mut Effects::default(),
    );
    assert!(verdicts.iter().flatten().all(|(_, _, v)| *v != HeartbeatVerdict::Continue), "{verdicts:?}");
    s.evict_batch(b.batch);
    // a finished batch (only in the store) is deleted there
    let mut fx = Effects::default();
    assert_eq!(s.delete_batch(b.batch, DeleteMode::IfIdle, 50, &mut fx).unwrap(), 0);
    assert!(matches!(fx.ops.as_slice(), [StoreOp::DeleteBatch { .. }]), "{:?}", fx.ops);
}

#[test]
fn a_disabled_worker_leases_nothing_and_a_drained_one_hands_its_jobs_to_another() {
    let (mut s, w) = setup();
    let other = s.register_worker(None, &local(), profile("w2".into(), gpu(4 << 30)), 0, &mut Effects::default()).unwrap().id;
    let b = s.submit(batch(vec![job(1), job(1)]), "local", 0, &mut Effects::default(), &mut trace());
    let first = s.lease(w, &local(), 0, 10, &mut Effects::default()).unwrap().unwrap();
    let mut fx = Effects::default();
    let (record, handed_back) = s.control_worker(w, WorkerAction::Disable, 20, &mut fx).unwrap();
    assert_eq!((record.availability, handed_back), (Availability::Disabled, 0));
    assert!(matches!(fx.ops.as_slice(), [StoreOp::SetAvailability { availability: Availability::Disabled, .. }]), "{:?}", fx.ops);
    assert!(s.lease(w, &local(), 0, 30, &mut Effects::default()).unwrap().is_none(), "disabled: no new lease though a job is queued");
    assert_eq!(s.running_jobs_of(w), vec![first.job.id], "what it runs goes on");
    let (_, handed_back) = s.control_worker(w, WorkerAction::Drain, 40, &mut Effects::default()).unwrap();
    assert_eq!(handed_back, 1);
    assert!(s.running_jobs_of(w).is_empty());
    assert_eq!(s.job(first.job.id).unwrap().state.kind(), StateKind::Queued);
    let a = s.lease(other, &local(), 0, 50, &mut Effects::default()).unwrap().unwrap();
    let c = s.lease(other, &local(), 0, 51, &mut Effects::default()).unwrap().unwrap();
    assert_eq!(a.job.id, first.job.id, "the handed-back job goes first");
    assert_eq!(a.attempt, first.attempt + 1, "a fresh fencing token");
    assert_eq!(s.job(first.job.id).unwrap().handed_back, 1, "the drained attempt is not counted against max_attempts");
    assert!(c.job.batch == b.batch && s.worker(w).unwrap().failed == 0);
    let mut fx = Effects::default();
    s.control_worker(w, WorkerAction::Enable, 60, &mut fx).unwrap();
    assert!(fx.wake, "an enabled worker may take queued work at once");
    assert!(matches!(s.control_worker(WorkerId(99), WorkerAction::Disable, 60, &mut Effects::default()), Err(CoordError::NotFound { .. })));
    // forgetting: refused while it is connected; fine once it is gone
    assert!(s.forget_worker(w, 500, &mut Effects::default()).is_err(), "seen 440 ms ago, within a lease");
    let mut fx = Effects::default();
    assert_eq!(s.forget_worker(w, 5_000, &mut fx).unwrap().id, w);
    assert!(matches!(fx.ops.as_slice(), [StoreOp::DeleteWorker(id)] if *id == w));
    assert!(s.worker(w).is_none());
}

fn labelled(name: &str, memory: u64, labels: &[(&str, &str)]) -> WorkerProfile {
    WorkerProfile { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..profile(name.into(), gpu(memory)) }
}

fn requires(texts: &[&str]) -> Vec<stylefarm_core::labels::Requirement> {
    texts.iter().map(|t| t.parse().unwrap()).collect()
}

#[test]
fn pools_route_jobs_to_matching_workers_with_fair_share_inside_and_say_when_nobody_matches() {
    let mut s = Scheduler::restore(config(), Snapshot { next_batch: 1, next_job: 1, next_worker: 1, ..Snapshot::default() }, 0);
    let mut reg = |p| s.register_worker(None, &local(), p, 0, &mut Effects::default()).unwrap().id;
    let studio = reg(labelled("studio", 4 << 30, &[("pool", "studio-b"), ("vram", "80")]));
    let render = reg(labelled("render", 4 << 30, &[("pool", "render"), ("vram", "24")]));
    let plain = reg(profile("plain".into(), gpu(4 << 30)));
    // two studio batches (fair share between them), one for any worker with vram >= 48, one nobody matches
    let a = s.submit(NewBatch { requires: requires(&["pool=studio-b"]), ..batch(vec![job(1), job(1)]) }, "local", 0, &mut Effects::default(), &mut trace());
    let b = s.submit(NewBatch { requires: requires(&["pool=studio-b"]), ..batch(vec![job(1), job(1)]) }, "local", 0, &mut Effects::default(), &mut trace());
    let big = s.submit(batch(vec![NewJob { requires: requires(&["vram>=48"]), ..job(1) }]), "local", 0, &mut Effects::default(), &mut trace());
    let lost = s.submit(NewBatch { requires: requires(&["pool=gone"]), ..batch(vec![job(1)]) }, "local", 0, &mut Effects::default(), &mut trace());
    assert_eq!(s.job(big.jobs[0]).unwrap().requires, requires(&["vram>=48"]), "a job carries its own requirements");
    assert_eq!(s.job(a.jobs[0]).unwrap().requires, requires(&["pool=studio-b"]), "and its batch's");
    // the other pools' workers get nothing of the studio's
    assert!(s.lease(render, &local(), 0, 10, &mut Effects::default()).unwrap().is_none());
    assert!(s.lease(plain, &local(), 0, 10, &mut Effects::default()).unwrap().is_none());
    // the studio worker takes them, alternating batches (fair share within the pool), then the vram job
    let mut batches = Vec::new();
    for now in 11..16 {
        batches.push(s.lease(studio, &local(), 0, now, &mut Effects::default()).unwrap().expect("studio work").job.batch);
    }
    assert_eq!(batches[..2].iter().collect::<HashSet<_>>(), [a.batch, b.batch].iter().collect::<HashSet<_>>(), "one of each first: {batches:?}");
    assert!(batches.contains(&big.batch) && !batches.contains(&lost.batch), "{batches:?}");
    assert!(s.lease(studio, &local(), 0, 16, &mut Effects::default()).unwrap().is_none());
    // the job nobody matches says so, then fails after the grace period
    for w in [studio, render, plain] {
        assert!(s.lease(w, &local(), 0, 1_010, &mut Effects::default()).unwrap().is_none(), "connected, nothing for it");
    }
    s.tick(1_020, &mut Effects::default());
    let reason = s.waiting_reason(lost.jobs[0]).expect("it says why it waits");
    assert!(reason.contains("pool=gone") && reason.contains("--label"), "{reason}");
    for w in [studio, render, plain] {
        s.lease(w, &local(), 0, 7_000, &mut Effects::default()).unwrap();
    }
    s.tick(7_030, &mut Effects::default());
    let JobState::Failed { reason, .. } = &s.job(lost.jobs[0]).unwrap().state else { panic!("{:?}", s.job(lost.jobs[0])) };
    assert!(reason.contains("pool=gone") && reason.contains("waited"), "{reason}");
    s.check_invariants().unwrap();
}

#[test]
fn fair_share_is_between_principals_before_batches() {
    let (mut s, w) = setup();
    // alice splits her work into two batches, bob submits one: she gets no more for it
    let a1 = s.submit(batch(vec![job(1), job(1), job(1)]), "alice", 0, &mut Effects::default(), &mut trace());
    let a2 = s.submit(batch(vec![job(1), job(1), job(1)]), "alice", 1, &mut Effects::default(), &mut trace());
    let b = s.submit(batch(vec![job(1), job(1), job(1)]), "bob", 2, &mut Effects::default(), &mut trace());
    let owner = |batch| if batch == b.batch { "bob" } else { "alice" };
    let mut leased = Vec::new();
    for now in 10..14 {
        let grant = s.lease(w, &local(), 0, now, &mut Effects::default()).unwrap().expect("work");
        leased.push(grant.job.batch);
        s.check_invariants().unwrap();
    }
    assert_eq!(leased.iter().map(|b| owner(*b)).collect::<Vec<_>>(), ["alice", "bob", "alice", "bob"], "{leased:?}");
    assert!(leased.contains(&a1.batch) && leased.contains(&a2.batch), "within alice's share, her batches take turns: {leased:?}");
}
