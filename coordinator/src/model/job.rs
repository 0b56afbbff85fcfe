//! A job's record and its life as a state machine with pure transitions (see
//! the diagram in [`crate::model`]).

use serde::{Deserialize, Serialize};
use stylefarm_core::outputs::OutputKind;

use super::Millis;
use crate::error::{CoordError, Result};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::secrets::{LeaseClaim, Secret, SecretHash};

/// Where an input image lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// Uploaded through the coordinator, stored at `images/sha256/{hex}`.
    Blob(String),
    /// An object-store URL given by the client.
    Url(String),
}

/// The committed attempt's outputs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobOutputs {
    pub prefix: String,
    pub files: Vec<OutputRecord>,
    #[serde(deserialize_with = "lenient_f64")]
    pub final_loss: f64,
    pub iterations: u32,
    #[serde(deserialize_with = "lenient_f64")]
    pub engine_ms: f64,
    pub device: String,
    /// The worker's steps, for the job's timeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<SpanRecord>,
}

/// One step of an attempt on its worker, timed from the attempt's start there.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SpanRecord {
    pub name: String,
    pub offset_ms: f64,
    pub duration_ms: f64,
    pub depth: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// An attempt that ended, kept for the job's history (the dashboard's attempts
/// table and timeline); the running attempt lives in [`JobState::Running`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub job: JobId,
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub leased_ms: Millis,
    pub ended_ms: Millis,
    /// succeeded, failed, handed_back, expired, timed_out, cancelled
    pub outcome: String,
    pub reason: String,
    pub spans: Vec<SpanRecord>,
}

/// A float that JSON stored as `null` (serde_json writes NaN and infinities
/// that way) reads back as NaN instead of failing the whole row.
fn lenient_f64<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub key: String,
    pub size_bytes: u64,
    pub kind: OutputKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Queued {
        not_before_ms: Millis,
    },
    Running {
        worker: WorkerId,
        lease_expires_ms: Millis,
        cancel_requested: bool,
        /// The lease's secret, hashed (rows from before secrets match nothing).
        #[serde(default)]
        lease_secret: SecretHash,
        /// When this attempt was leased (its time limit counts from here).
        #[serde(default)]
        leased_ms: Millis,
    },
    Succeeded {
        worker: WorkerId,
        outputs: JobOutputs,
    },
    Failed {
        worker: Option<WorkerId>,
        reason: String,
        retryable: bool,
        /// Failed because a job it depends on failed: the first of its chain
        /// that did (the reason is that job's, with its name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failed_dependency: Option<JobId>,
    },
    Cancelled,
}

impl JobState {
    /// When the running attempt was leased.
    pub fn leased_ms(&self) -> Option<Millis> {
        match self {
            JobState::Running { leased_ms, .. } => Some(*leased_ms),
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, JobState::Succeeded { .. } | JobState::Failed { .. } | JobState::Cancelled)
    }

    pub fn kind(&self) -> StateKind {
        match self {
            JobState::Queued { .. } => StateKind::Queued,
            JobState::Running { .. } => StateKind::Running,
            JobState::Succeeded { .. } => StateKind::Succeeded,
            JobState::Failed { .. } => StateKind::Failed,
            JobState::Cancelled => StateKind::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl StateKind {
    /// The states a job ends in.
    pub const FINAL: [StateKind; 3] = [StateKind::Succeeded, StateKind::Failed, StateKind::Cancelled];

    pub fn is_terminal(self) -> bool {
        matches!(self, StateKind::Succeeded | StateKind::Failed | StateKind::Cancelled)
    }

    /// The state's name in metrics labels and span attributes.
    pub fn label(self) -> &'static str {
        match self {
            StateKind::Queued => "queued",
            StateKind::Running => "running",
            StateKind::Succeeded => "succeeded",
            StateKind::Failed => "failed",
            StateKind::Cancelled => "cancelled",
        }
    }
}

/// The last failed attempt, kept for the user even when a retry succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub reason: String,
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub batch: BatchId,
    pub index: u32,
    pub name: String,
    pub priority: i32,
    pub content: ImageSource,
    pub styles: Vec<ImageSource>,
    /// The resolved, validated RenderParams.
    pub params_json: String,
    pub estimate_bytes: u64,
    pub max_attempts: u32,
    /// Leases handed out so far; the running attempt's number (the fencing token).
    pub attempt: u32,
    /// Attempts a draining worker handed back; they do not count against `max_attempts`.
    pub handed_back: u32,
    /// Longest an attempt may run.
    pub time_limit_ms: u64,
    pub state: JobState,
    pub last_failure: Option<Failure>,
    pub created_ms: Millis,
    pub started_ms: Option<Millis>,
    pub finished_ms: Option<Millis>,
    /// W3C trace id (32 hex digits) shared by the coordinator's and workers' spans.
    pub trace_id: String,
    /// Jobs of the same batch that must succeed before this one is leased
    /// (always earlier in the batch, so there are no cycles); the lease hands
    /// the worker their committed outputs.
    pub depends_on: Vec<JobId>,
    /// What the worker does, as JSON (a video step); `None`: render the content
    /// with the styles.
    pub task: Option<String>,
}

/// What a failed or expired attempt leads to.
/// How an attempt that did not succeed stopped, as its worker reports it
/// (`FailJobRequest.stop` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptStop {
    /// The task failed; a retryable failure runs again while attempts are left.
    Failed { retryable: bool },
    /// Stopped because a heartbeat said CANCEL.
    Cancelled,
    /// Handed back unfinished by a draining worker: requeued at once, not counted.
    HandedBack,
}

/// How a running attempt ends when it does not succeed (after the lease check).
enum Ending {
    Failed { reason: String, retryable: bool },
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    Requeued { not_before_ms: Millis },
    Failed,
    Cancelled,
}

/// What a heartbeat tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatVerdict {
    Continue,
    Cancel,
    LeaseLost,
}

/// What cancelling a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    CancelledNow,
    Signalled,
    AlreadyFinished,
}

/// Retry delays: `base · 2^(attempt−1)`, capped.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base_ms: Millis,
    pub max_ms: Millis,
}

impl Backoff {
    pub fn delay_ms(&self, attempt: u32) -> Millis {
        let exponent = attempt.saturating_sub(1).min(30);
        self.base_ms.saturating_mul(1 << exponent).min(self.max_ms)
    }
}

impl JobRecord {
    pub fn running_worker(&self) -> Option<WorkerId> {
        match &self.state {
            JobState::Running { worker, .. } => Some(*worker),
            _ => None,
        }
    }

    /// Queued → Running as attempt `attempt + 1`, with a fresh lease secret.
    pub fn lease(&mut self, worker: WorkerId, now: Millis, ttl_ms: Millis) -> Result<(u32, Secret)> {
        match self.state {
            JobState::Queued { not_before_ms } if not_before_ms <= now => {}
            JobState::Queued { not_before_ms } => return Err(CoordError::FailedPrecondition(format!("job {} is backing off until {not_before_ms}", self.id))),
            _ => return Err(CoordError::FailedPrecondition(format!("job {} is not queued", self.id))),
        }
        self.attempt += 1;
        self.started_ms.get_or_insert(now);
        let secret = Secret::generate();
        self.state = JobState::Running { worker, lease_expires_ms: now + ttl_ms, cancel_requested: false, lease_secret: secret.hash(), leased_ms: now };
        Ok((self.attempt, secret))
    }

    /// The fencing check: `claim` by `worker` must be the job's running attempt
    /// with its lease secret.
    pub fn check_lease(&self, worker: WorkerId, claim: &LeaseClaim) -> Result<()> {
        let attempt = claim.attempt;
        let stale = |reason: String| CoordError::StaleAttempt { job: self.id.to_string(), attempt, reason };
        if attempt != self.attempt {
            return Err(stale(format!("the current attempt is {}", self.attempt)));
        }
        match &self.state {
            JobState::Running { worker: holder, lease_secret, .. } if *holder == worker => {
                if lease_secret.verify(&claim.secret) {
                    Ok(())
                } else {
                    Err(CoordError::PermissionDenied(format!("wrong lease secret for job {} attempt {attempt}", self.id)))
                }
            }
            JobState::Running { worker: holder, .. } => Err(stale(format!("attempt {attempt} is held by {holder}, not {worker}"))),
            other => Err(stale(format!("the job is {:?} now", other.kind()))),
        }
    }

    /// Whether the running attempt has outlived the job's time limit.
    pub fn over_time(&self, now: Millis) -> bool {
        match &self.state {
            JobState::Running { leased_ms, .. } => now.saturating_sub(*leased_ms) > self.time_limit_ms as Millis,
            _ => false,
        }
    }

    /// Ends a running attempt that outlived its time limit: the job fails (a
    /// render that slow will not be faster elsewhere), or is cancelled if asked.
    pub fn time_out(&mut self, now: Millis, backoff: Backoff) -> Option<AfterFailure> {
        if !self.over_time(now) {
            return None;
        }
        let JobState::Running { worker, .. } = self.state.clone() else { return None };
        let reason = format!("attempt {} exceeded the job's time limit of {} s on {worker}", self.attempt, self.time_limit_ms / 1000);
        Some(self.end_attempt(Some(worker), Ending::Failed { reason, retryable: false }, now, backoff))
    }

    /// A draining worker gives the job back unfinished: queued again at once,
    /// the attempt not counted (its number stays used: fencing only grows).
    pub fn hand_back(&mut self, worker: WorkerId, claim: &LeaseClaim, now: Millis) -> Result<AfterFailure> {
        self.check_lease(worker, claim)?;
        if matches!(self.state, JobState::Running { cancel_requested: true, .. }) {
            self.state = JobState::Cancelled;
            self.finished_ms = Some(now);
            return Ok(AfterFailure::Cancelled);
        }
        self.handed_back += 1;
        self.state = JobState::Queued { not_before_ms: now };
        Ok(AfterFailure::Requeued { not_before_ms: now })
    }

    /// Attempts that count against `max_attempts`.
    pub fn attempts_used(&self) -> u32 {
        self.attempt.saturating_sub(self.handed_back)
    }

    /// Extends the lease of the running attempt.
    pub fn heartbeat(&mut self, worker: WorkerId, claim: &LeaseClaim, now: Millis, ttl_ms: Millis) -> HeartbeatVerdict {
        if self.check_lease(worker, claim).is_err() {
            return HeartbeatVerdict::LeaseLost;
        }
        let JobState::Running { lease_expires_ms, cancel_requested, .. } = &mut self.state else {
            return HeartbeatVerdict::LeaseLost;
        };
        *lease_expires_ms = now + ttl_ms;
        if *cancel_requested {
            HeartbeatVerdict::Cancel
        } else {
            HeartbeatVerdict::Continue
        }
    }

    /// Running → Succeeded with this attempt's outputs.
    pub fn complete(&mut self, worker: WorkerId, claim: &LeaseClaim, outputs: JobOutputs, now: Millis) -> Result<()> {
        self.check_lease(worker, claim)?;
        self.state = JobState::Succeeded { worker, outputs };
        self.finished_ms = Some(now);
        Ok(())
    }

    /// The running attempt failed (or stopped because it was cancelled).
    pub fn fail(&mut self, worker: WorkerId, claim: &LeaseClaim, reason: String, stop: AttemptStop, now: Millis, backoff: Backoff) -> Result<AfterFailure> {
        let ending = match stop {
            AttemptStop::HandedBack => return self.hand_back(worker, claim, now),
            AttemptStop::Cancelled => Ending::Cancelled,
            AttemptStop::Failed { retryable } => Ending::Failed { reason, retryable },
        };
        self.check_lease(worker, claim)?;
        Ok(self.end_attempt(Some(worker), ending, now, backoff))
    }

    /// The running attempt's lease ran out (the worker died or lost the network).
    pub fn expire(&mut self, now: Millis, backoff: Backoff) -> Option<AfterFailure> {
        let JobState::Running { worker, lease_expires_ms, cancel_requested, .. } = self.state.clone() else {
            return None;
        };
        if lease_expires_ms > now {
            return None;
        }
        let reason = format!("lease of attempt {} expired: worker {worker} stopped heartbeating", self.attempt);
        let ending = if cancel_requested { Ending::Cancelled } else { Ending::Failed { reason, retryable: true } };
        Some(self.end_attempt(Some(worker), ending, now, backoff))
    }

    fn end_attempt(&mut self, worker: Option<WorkerId>, ending: Ending, now: Millis, backoff: Backoff) -> AfterFailure {
        let cancel_requested = matches!(self.state, JobState::Running { cancel_requested: true, .. });
        let (reason, retryable) = match ending {
            Ending::Failed { reason, retryable } if !cancel_requested => (reason, retryable),
            _ => {
                self.state = JobState::Cancelled;
                self.finished_ms = Some(now);
                return AfterFailure::Cancelled;
            }
        };
        self.last_failure = Some(Failure { attempt: self.attempt, worker, reason: reason.clone(), retryable });
        if retryable && self.attempts_used() < self.max_attempts {
            let not_before_ms = now + backoff.delay_ms(self.attempts_used());
            self.state = JobState::Queued { not_before_ms };
            return AfterFailure::Requeued { not_before_ms };
        }
        let reason = if retryable { format!("gave up after {} attempts; last: {reason}", self.attempts_used()) } else { reason };
        self.state = JobState::Failed { worker, reason, retryable, failed_dependency: None };
        self.finished_ms = Some(now);
        AfterFailure::Failed
    }

    /// Whether every dependency has succeeded (`state_of` answers for jobs of
    /// the same batch).
    pub fn dependencies_met(&self, state_of: impl Fn(JobId) -> Option<StateKind>) -> bool {
        self.depends_on.iter().all(|d| state_of(*d) == Some(StateKind::Succeeded))
    }

    /// A dependency ended without succeeding: a queued job cannot run any more.
    /// It fails with a reason naming the dependency, or is cancelled with it.
    pub fn dependency_ended(&mut self, dependency: &JobRecord, now: Millis) -> bool {
        if !matches!(self.state, JobState::Queued { .. }) {
            return false;
        }
        self.state = match &dependency.state {
            JobState::Cancelled => JobState::Cancelled,
            // a chain names the job that failed first, not every link after it
            JobState::Failed { reason, failed_dependency: Some(first), .. } => {
                JobState::Failed { worker: None, reason: reason.clone(), retryable: false, failed_dependency: Some(*first) }
            }
            JobState::Failed { reason, failed_dependency: None, .. } => JobState::Failed {
                worker: None,
                reason: format!("dependency {} ({}) failed: {reason}", dependency.id, dependency.name),
                retryable: false,
                failed_dependency: Some(dependency.id),
            },
            _ => return false,
        };
        self.finished_ms = Some(now);
        true
    }

    /// A queued job that cannot run (no device fits it) fails with `reason`.
    pub fn fail_queued(&mut self, reason: String, now: Millis) -> bool {
        if !matches!(self.state, JobState::Queued { .. }) {
            return false;
        }
        self.state = JobState::Failed { worker: None, reason, retryable: false, failed_dependency: None };
        self.finished_ms = Some(now);
        true
    }

    /// Queued jobs cancel at once; running ones are flagged for their next heartbeat.
    pub fn cancel(&mut self, now: Millis) -> CancelOutcome {
        match &mut self.state {
            JobState::Queued { .. } => {
                self.state = JobState::Cancelled;
                self.finished_ms = Some(now);
                CancelOutcome::CancelledNow
            }
            JobState::Running { cancel_requested, .. } => {
                *cancel_requested = true;
                CancelOutcome::Signalled
            }
            _ => CancelOutcome::AlreadyFinished,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff { base_ms: 1000, max_ms: 60_000 };
    const W1: WorkerId = WorkerId(1);
    const W2: WorkerId = WorkerId(2);

    fn job(max_attempts: u32) -> JobRecord {
        JobRecord {
            id: JobId(1),
            batch: BatchId(1),
            index: 0,
            name: "j".into(),
            priority: 0,
            content: ImageSource::Blob("aa".into()),
            styles: vec![ImageSource::Url("file:///s.png".into())],
            params_json: "{}".into(),
            estimate_bytes: 1,
            max_attempts,
            attempt: 0,
            handed_back: 0,
            time_limit_ms: 1_000_000,
            state: JobState::Queued { not_before_ms: 0 },
            last_failure: None,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            trace_id: "0".repeat(32),
            depends_on: Vec::new(),
            task: None,
        }
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
        assert_eq!(
            j.fail(W1, &claim(2, &s), "CUDA out of memory".into(), AttemptStop::Failed { retryable: true }, 2010, BACKOFF).unwrap(),
            AfterFailure::Failed
        );
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
    fn a_nan_loss_stored_as_null_reads_back() {
        let outputs = JobOutputs { final_loss: f64::NAN, engine_ms: f64::INFINITY, ..Default::default() };
        let json = serde_json::to_string(&outputs).unwrap();
        assert!(json.contains("null"), "{json}");
        let back: JobOutputs = serde_json::from_str(&json).unwrap();
        assert!(back.final_loss.is_nan() && back.engine_ms.is_nan());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!((BACKOFF.delay_ms(1), BACKOFF.delay_ms(2), BACKOFF.delay_ms(3)), (1000, 2000, 4000));
        assert_eq!(BACKOFF.delay_ms(40), 60_000);
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
        dependency.state =
            JobState::Failed { worker: Some(W1), reason: "dependency hell in the user's code".into(), retryable: false, failed_dependency: None };
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
}
