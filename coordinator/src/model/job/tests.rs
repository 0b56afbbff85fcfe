//! The job state machine's rules, transition by transition.

use std::time::Duration;

use super::*;

const BACKOFF: Backoff = Backoff::new(Duration::from_millis(1000), Duration::from_millis(60_000));
const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);

fn job(max_attempts: u32) -> JobRecord {
    crate::model::fixtures::job(BatchId(1), max_attempts)
}

fn claim(attempt: u32, secret: &Secret) -> LeaseClaim {
    LeaseClaim::new(attempt, secret.expose())
}

#[test]
fn stale_attempts_are_fenced_off() {
    let mut j = job(3);
    let (attempt, s1) = j.lease(W1, 0, 100).unwrap();
    assert_eq!(attempt, 1);
    assert_eq!(j.expire(50, BACKOFF), None, "not expired yet");
    assert_eq!(j.expire(100, BACKOFF), Some(AfterFailure::Requeued { not_before_ms: 1100 }));
    assert!(j.lease(W2, 1000, 100).is_err(), "backing off");
    let (attempt, s2) = j.lease(W2, 1100, 100).unwrap();
    assert_eq!(attempt, 2);
    // the first worker comes back: every call of its attempt is rejected
    assert_eq!(j.heartbeat(W1, &claim(1, &s1), 1150, 100), HeartbeatVerdict::LeaseLost);
    let err = j.complete(W1, &claim(1, &s1), JobOutputs::default(), 1150).unwrap_err();
    assert!(matches!(err, CoordError::StaleAttempt { attempt: 1, .. }), "{err}");
    assert!(j.fail(W1, &claim(1, &s1), "x".into(), AttemptStop::Failed { retryable: true }, 1150, BACKOFF).is_err());
    // the same attempt number from another worker is rejected too
    assert!(j.complete(W1, &claim(2, &s2), JobOutputs::default(), 1150).is_err());
    // and the right worker and attempt with a wrong secret
    let err = j.complete(W2, &claim(2, &s1), JobOutputs::default(), 1150).unwrap_err();
    assert!(matches!(err, CoordError::PermissionDenied(_)), "{err}");
    assert_eq!(j.heartbeat(W2, &LeaseClaim::new(2, ""), 1150, 100), HeartbeatVerdict::LeaseLost);
    let outputs = JobOutputs { prefix: "attempt-2/".into(), ..Default::default() };
    j.complete(W2, &claim(2, &s2), outputs, 1160).unwrap();
    assert!(matches!(&j.state, JobState::Succeeded { outputs, .. } if outputs.prefix == "attempt-2/"));
    assert_eq!(j.last_failure.as_ref().unwrap().attempt, 1);
}

#[test]
fn attempts_run_out_with_the_last_reason() {
    let mut j = job(2);
    let (_, s) = j.lease(W1, 0, 100).unwrap();
    let after = j.fail(W1, &claim(1, &s), "CUDA out of memory".into(), AttemptStop::Failed { retryable: true }, 10, BACKOFF).unwrap();
    assert_eq!(after, AfterFailure::Requeued { not_before_ms: 1010 });
    let (_, s) = j.lease(W1, 2000, 100).unwrap();
    assert_eq!(j.fail(W1, &claim(2, &s), "CUDA out of memory".into(), AttemptStop::Failed { retryable: true }, 2010, BACKOFF).unwrap(), AfterFailure::Failed);
    let JobState::Failed { reason, .. } = &j.state else { panic!("{:?}", j.state) };
    assert!(reason.contains("after 2 attempts") && reason.contains("out of memory"), "{reason}");
}

#[test]
fn bad_input_fails_at_once_and_cancel_wins() {
    let mut j = job(5);
    let (_, s) = j.lease(W1, 0, 100).unwrap();
    assert_eq!(j.fail(W1, &claim(1, &s), "corrupt image".into(), AttemptStop::Failed { retryable: false }, 1, BACKOFF).unwrap(), AfterFailure::Failed);
    let mut j = job(5);
    assert_eq!(j.cancel(0), CancelOutcome::CancelledNow);
    assert!(j.lease(W1, 0, 100).is_err());
    let mut j = job(5);
    let (_, s) = j.lease(W1, 0, 100).unwrap();
    assert_eq!(j.cancel(1), CancelOutcome::Signalled);
    assert_eq!(j.heartbeat(W1, &claim(1, &s), 2, 100), HeartbeatVerdict::Cancel);
    assert_eq!(j.expire(200, BACKOFF), Some(AfterFailure::Cancelled), "a cancelled job is not retried");
}

#[test]
fn handed_back_attempts_do_not_count_and_time_limits_end_attempts() {
    let mut j = job(1);
    for n in 1..=3 {
        let (attempt, s) = j.lease(W1, n * 10, 100).unwrap();
        assert_eq!(attempt, n as u32, "fencing numbers keep growing");
        assert_eq!(j.hand_back(W1, &claim(attempt, &s), n * 10 + 1).unwrap(), AfterFailure::Requeued { not_before_ms: n * 10 + 1 });
    }
    assert_eq!((j.attempt, j.handed_back, j.attempts_used()), (3, 3, 0));
    let (attempt, s) = j.lease(W2, 100, 100).unwrap();
    assert!(!j.over_time(100 + 1_000_000));
    assert!(j.over_time(100 + 1_000_001));
    assert_eq!(j.time_out(100 + 1_000_001, BACKOFF), Some(AfterFailure::Failed), "max_attempts 1: the one counted attempt is used");
    let JobState::Failed { reason, retryable, .. } = &j.state else { panic!("{:?}", j.state) };
    assert!(reason.contains("time limit of 1000 s") && !retryable, "{reason}");
    assert!(j.complete(W2, &claim(attempt, &s), JobOutputs::default(), 2_000_000).is_err());
}

#[test]
fn the_coordinator_takes_back_a_running_job_and_a_cancelled_one_ends_cancelled() {
    let mut j = job(1);
    assert_eq!(j.take_back(5), None, "not running");
    j.lease(W1, 10, 100).unwrap();
    assert_eq!(j.take_back(20), Some((W1, 10, AttemptEnd::HandedBack)));
    assert_eq!((j.state.kind(), j.attempts_used()), (StateKind::Queued, 0), "queued again, the attempt not counted");
    let (attempt, s) = j.lease(W1, 30, 100).unwrap();
    assert_eq!(j.cancel(40), CancelOutcome::Signalled);
    // a delete or pause --now of a job already being cancelled ends it, never requeues it
    assert_eq!(j.take_back(50), Some((W1, 30, AttemptEnd::Cancelled)));
    assert_eq!((j.state.kind(), j.finished_ms), (StateKind::Cancelled, Some(50)));
    assert!(j.complete(W1, &claim(attempt, &s), JobOutputs::default(), 60).is_err(), "the worker's lease is gone");
}

#[test]
fn a_nan_loss_stored_as_null_reads_back() {
    let outputs = JobOutputs { final_loss: f64::NAN, engine_ms: f64::INFINITY, ..Default::default() };
    let json = serde_json::to_string(&outputs).unwrap();
    assert!(json.contains("null"), "{json}");
    let back: JobOutputs = serde_json::from_str(&json).unwrap();
    assert!(back.final_loss.is_nan() && back.engine_ms.is_nan());
}

#[test]
fn backoff_doubles_and_caps() {
    let ms = |n| BACKOFF.delay_after(n).as_millis();
    assert_eq!((ms(1), ms(2), ms(3)), (1000, 2000, 4000));
    assert_eq!(ms(40), 60_000);
}

#[test]
fn a_job_waits_for_its_dependencies_and_fails_or_cancels_with_them() {
    let mut frame = job(3);
    frame.depends_on = vec![JobId(7), JobId(8)];
    let states = |ok: bool| move |id: JobId| Some(if id == JobId(8) && !ok { StateKind::Running } else { StateKind::Succeeded });
    assert!(!frame.dependencies_met(states(false)));
    assert!(frame.dependencies_met(states(true)));
    assert!(!frame.dependencies_met(|_| None), "an unknown dependency is not met");

    let mut dependency = job(3);
    dependency.id = JobId(8);
    dependency.name = "flow-000005".into();
    // a dependency still running or succeeded changes nothing
    assert!(!frame.dependency_ended(&dependency, 10));
    dependency.state = JobState::Failed { worker: Some(W1), reason: "out of memory".into(), retryable: false, failed_dependency: None };
    assert!(frame.dependency_ended(&dependency, 10));
    let JobState::Failed { reason, retryable, failed_dependency, .. } = &frame.state else { panic!("{:?}", frame.state) };
    assert_eq!(reason, "dependency j8 (flow-000005) failed: out of memory");
    assert!(!retryable);
    assert_eq!(*failed_dependency, Some(JobId(8)), "the failure says which job caused it, as data");
    // the next link names the first failure, not its own dependency
    let mut next = job(3);
    assert!(next.dependency_ended(&frame, 10));
    assert!(matches!(&next.state, JobState::Failed { reason: r, failed_dependency: Some(JobId(8)), .. } if r == reason));
    // a job whose own reason happens to start with "dependency " is no dependency failure
    let mut user = job(4);
    dependency.state = JobState::Failed { worker: Some(W1), reason: "dependency hell in the user's code".into(), retryable: false, failed_dependency: None };
    assert!(user.dependency_ended(&dependency, 10));
    assert!(matches!(&user.state, JobState::Failed { reason, .. } if reason.starts_with("dependency j8 (flow-000005) failed: dependency hell")));
    assert_eq!(frame.finished_ms, Some(10));
    // only a queued job is touched
    assert!(!frame.dependency_ended(&dependency, 11));

    let mut other = job(3);
    dependency.state = JobState::Cancelled;
    assert!(other.dependency_ended(&dependency, 12));
    assert_eq!(other.state, JobState::Cancelled);
}
