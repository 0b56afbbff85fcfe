//! The scheduler's own rules, without gRPC or a store.

use super::*;
use crate::auth::{Principal, Role};

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
        time_limit_ms: 10_000,
    }
}

fn batch(jobs: Vec<NewJob>) -> NewBatch {
    NewBatch { name: "b".into(), priority: 0, labels: BTreeMap::new(), max_attempts: 2, request_id: None, jobs }
}

fn gpu(memory: u64) -> Vec<DeviceRecord> {
    vec![DeviceRecord { name: "cuda:0".into(), memory_bytes: memory, description: String::new() }]
}

fn local() -> Principal {
    Principal::local()
}

fn setup() -> (Scheduler, WorkerId) {
    let mut s = Scheduler::restore(config(), Snapshot { next_batch: 1, next_job: 1, next_worker: 1, ..Snapshot::default() }, 0);
    let w = s.register_worker(None, &local(), "w".into(), gpu(4 << 30), "1".into(), 0, &mut Effects::default()).unwrap().id;
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
    s.heartbeat(w, &local(), vec![(small, LeaseClaim::new(1, grant.secret.expose()), None)], 5_900, &mut Effects::default()).unwrap();
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
        let failure = AttemptFailure { reason: "draining".into(), spans: Vec::new(), retryable: true, cancelled: false, handed_back: true };
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
        s.heartbeat(w, &local(), vec![(grant.job.id, LeaseClaim::new(1, grant.secret.expose()), None)], t, &mut Effects::default()).unwrap();
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
    let w = s.register_worker(None, &alice, "a".into(), gpu(1 << 30), "1".into(), 0, &mut Effects::default()).unwrap().id;
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
    assert_eq!(s.demand(), Demand { queued: 3, running: 0, unfit: 1 });
    assert_eq!(s.demand().workable(), 2, "the 64 GiB job fits no device: more of the same workers would not help");
    let grant = s.lease(w, &local(), 4 << 30, 1_100, &mut Effects::default()).unwrap().unwrap();
    assert_eq!(s.demand(), Demand { queued: 2, running: 1, unfit: 1 });
    s.complete(w, &local(), grant.job.id, &LeaseClaim::new(grant.attempt, grant.secret.expose()), JobOutputs::default(), 1_200, &mut Effects::default())
        .unwrap();
    assert_eq!(s.demand().workable(), 1);
}
