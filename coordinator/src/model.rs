//! Records the coordinator keeps, and a job's life as a state machine with pure
//! transitions (no I/O, no clock: `now` is passed in), so every rule is tested
//! directly.
//!
//! ```text
//!                 lease                    complete (current attempt)
//!   ┌────────┐ ───────────▶ ┌─────────┐ ──────────────────────────▶ ┌───────────┐
//!   │ Queued │              │ Running │                             │ Succeeded │
//!   └────────┘ ◀─────────── └─────────┘ ──┐                         └───────────┘
//!     │   ▲  lease expired / retryable    │ non-retryable failure,
//!     │   │  failure, attempts left       │ or attempts exhausted   ┌────────┐
//!     │   │  (not before now + backoff)   └───────────────────────▶ │ Failed │
//!     │                                                             └────────┘
//!     │ cancel                 cancel: flagged; the worker stops    ┌───────────┐
//!     └──────────────────────▶ at its next heartbeat, or the lease ▶│ Cancelled │
//!                              expires                              └───────────┘
//! ```
//!
//! Fencing: every lease is attempt `n`; heartbeats, completions and failures
//! carry it, and any `n` other than the job's current running attempt is
//! rejected. Only the committed attempt's outputs become the job's result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{CoordError, Result};
use crate::ids::{BatchId, JobId, WorkerId};

pub type Millis = i64;

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
    pub final_loss: f64,
    pub iterations: u32,
    pub engine_ms: f64,
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub key: String,
    pub size_bytes: u64,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Queued { not_before_ms: Millis },
    Running { worker: WorkerId, lease_expires_ms: Millis, cancel_requested: bool },
    Succeeded { worker: WorkerId, outputs: JobOutputs },
    Failed { worker: Option<WorkerId>, reason: String, retryable: bool },
    Cancelled,
}

impl JobState {
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
    /// Leases handed out so far; the running attempt's number.
    pub attempt: u32,
    pub state: JobState,
    pub last_failure: Option<Failure>,
    pub created_ms: Millis,
    pub started_ms: Option<Millis>,
    pub finished_ms: Option<Millis>,
    /// W3C trace id (32 hex digits) shared by the coordinator's and workers' spans.
    pub trace_id: String,
}

/// What a failed or expired attempt leads to.
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

    /// Queued → Running as attempt `attempt + 1`.
    pub fn lease(&mut self, worker: WorkerId, now: Millis, ttl_ms: Millis) -> Result<u32> {
        match self.state {
            JobState::Queued { not_before_ms } if not_before_ms <= now => {}
            JobState::Queued { not_before_ms } => {
                return Err(CoordError::FailedPrecondition(format!("job {} is backing off until {not_before_ms}", self.id)))
            }
            _ => return Err(CoordError::FailedPrecondition(format!("job {} is not queued", self.id))),
        }
        self.attempt += 1;
        self.started_ms.get_or_insert(now);
        self.state = JobState::Running { worker, lease_expires_ms: now + ttl_ms, cancel_requested: false };
        Ok(self.attempt)
    }

    /// The fencing check: `attempt` by `worker` must be the job's running attempt.
    pub fn check_lease(&self, worker: WorkerId, attempt: u32) -> Result<()> {
        let stale = |reason: String| CoordError::StaleAttempt { job: self.id.to_string(), attempt, reason };
        if attempt != self.attempt {
            return Err(stale(format!("the current attempt is {}", self.attempt)));
        }
        match &self.state {
            JobState::Running { worker: holder, .. } if *holder == worker => Ok(()),
            JobState::Running { worker: holder, .. } => Err(stale(format!("attempt {attempt} is held by {holder}, not {worker}"))),
            other => Err(stale(format!("the job is {:?} now", other.kind()))),
        }
    }

    /// Extends the lease of the running attempt.
    pub fn heartbeat(&mut self, worker: WorkerId, attempt: u32, now: Millis, ttl_ms: Millis) -> HeartbeatVerdict {
        if self.check_lease(worker, attempt).is_err() {
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
    pub fn complete(&mut self, worker: WorkerId, attempt: u32, outputs: JobOutputs, now: Millis) -> Result<()> {
        self.check_lease(worker, attempt)?;
        self.state = JobState::Succeeded { worker, outputs };
        self.finished_ms = Some(now);
        Ok(())
    }

    /// The running attempt failed (or stopped because it was cancelled).
    pub fn fail(
        &mut self,
        worker: WorkerId,
        attempt: u32,
        failure: (String, bool),
        cancelled: bool,
        now: Millis,
        backoff: Backoff,
    ) -> Result<AfterFailure> {
        self.check_lease(worker, attempt)?;
        let (reason, retryable) = failure;
        Ok(self.end_attempt(Some(worker), reason, retryable, cancelled, now, backoff))
    }

    /// The running attempt's lease ran out (the worker died or lost the network).
    pub fn expire(&mut self, now: Millis, backoff: Backoff) -> Option<AfterFailure> {
        let JobState::Running { worker, lease_expires_ms, cancel_requested } = self.state.clone() else {
            return None;
        };
        if lease_expires_ms > now {
            return None;
        }
        let reason = format!("lease of attempt {} expired: worker {worker} stopped heartbeating", self.attempt);
        Some(self.end_attempt(Some(worker), reason, true, cancel_requested, now, backoff))
    }

    fn end_attempt(
        &mut self,
        worker: Option<WorkerId>,
        reason: String,
        retryable: bool,
        cancelled: bool,
        now: Millis,
        backoff: Backoff,
    ) -> AfterFailure {
        let cancel_requested = matches!(self.state, JobState::Running { cancel_requested: true, .. });
        if cancelled || cancel_requested {
            self.state = JobState::Cancelled;
            self.finished_ms = Some(now);
            return AfterFailure::Cancelled;
        }
        self.last_failure = Some(Failure { attempt: self.attempt, worker, reason: reason.clone(), retryable });
        if retryable && self.attempt < self.max_attempts {
            let not_before_ms = now + backoff.delay_ms(self.attempt);
            self.state = JobState::Queued { not_before_ms };
            return AfterFailure::Requeued { not_before_ms };
        }
        let reason = if retryable {
            format!("gave up after {} attempts; last: {reason}", self.attempt)
        } else {
            reason
        };
        self.state = JobState::Failed { worker, reason, retryable };
        self.finished_ms = Some(now);
        AfterFailure::Failed
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u32,
    pub queued: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
}

impl Counts {
    fn slot(&mut self, kind: StateKind) -> &mut u32 {
        match kind {
            StateKind::Queued => &mut self.queued,
            StateKind::Running => &mut self.running,
            StateKind::Succeeded => &mut self.succeeded,
            StateKind::Failed => &mut self.failed,
            StateKind::Cancelled => &mut self.cancelled,
        }
    }

    pub fn add(&mut self, kind: StateKind) {
        *self.slot(kind) += 1;
    }

    pub fn moved(&mut self, from: StateKind, to: StateKind) {
        if from == to {
            return;
        }
        let slot = self.slot(from);
        *slot = slot.saturating_sub(1);
        *self.slot(to) += 1;
    }

    pub fn finished(&self) -> bool {
        self.queued == 0 && self.running == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPhase {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    pub id: BatchId,
    pub name: String,
    pub priority: i32,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub request_id: Option<String>,
    pub created_ms: Millis,
    pub finished_ms: Option<Millis>,
    pub cancel_requested: bool,
    pub counts: Counts,
    /// Whether any job has ever started.
    pub started: bool,
}

impl BatchRecord {
    pub fn phase(&self) -> BatchPhase {
        let c = &self.counts;
        if !c.finished() {
            return if self.started { BatchPhase::Running } else { BatchPhase::Queued };
        }
        if self.cancel_requested && c.cancelled > 0 {
            BatchPhase::Cancelled
        } else if c.failed > 0 || c.cancelled > 0 {
            BatchPhase::Failed
        } else {
            BatchPhase::Succeeded
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub name: String,
    pub memory_bytes: u64,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub name: String,
    pub devices: Vec<DeviceRecord>,
    pub version: String,
    pub registered_ms: Millis,
    pub last_seen_ms: Millis,
    pub succeeded: u64,
    pub failed: u64,
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
            state: JobState::Queued { not_before_ms: 0 },
            last_failure: None,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            trace_id: "0".repeat(32),
        }
    }

    #[test]
    fn stale_attempts_are_fenced_off() {
        let mut j = job(3);
        assert_eq!(j.lease(W1, 0, 100).unwrap(), 1);
        assert_eq!(j.expire(50, BACKOFF), None, "not expired yet");
        assert_eq!(j.expire(100, BACKOFF), Some(AfterFailure::Requeued { not_before_ms: 1100 }));
        assert!(j.lease(W2, 1000, 100).is_err(), "backing off");
        assert_eq!(j.lease(W2, 1100, 100).unwrap(), 2);
        // the first worker comes back: every call of its attempt is rejected
        assert_eq!(j.heartbeat(W1, 1, 1150, 100), HeartbeatVerdict::LeaseLost);
        let err = j.complete(W1, 1, JobOutputs::default(), 1150).unwrap_err();
        assert!(matches!(err, CoordError::StaleAttempt { attempt: 1, .. }), "{err}");
        assert!(j.fail(W1, 1, ("x".into(), true), false, 1150, BACKOFF).is_err());
        // the same attempt number from another worker is rejected too
        assert!(j.complete(W1, 2, JobOutputs::default(), 1150).is_err());
        let outputs = JobOutputs { prefix: "attempt-2/".into(), ..Default::default() };
        j.complete(W2, 2, outputs, 1160).unwrap();
        assert!(matches!(&j.state, JobState::Succeeded { outputs, .. } if outputs.prefix == "attempt-2/"));
        assert_eq!(j.last_failure.as_ref().unwrap().attempt, 1);
    }

    #[test]
    fn attempts_run_out_with_the_last_reason() {
        let mut j = job(2);
        j.lease(W1, 0, 100).unwrap();
        let after = j.fail(W1, 1, ("CUDA out of memory".into(), true), false, 10, BACKOFF).unwrap();
        assert_eq!(after, AfterFailure::Requeued { not_before_ms: 1010 });
        j.lease(W1, 2000, 100).unwrap();
        assert_eq!(j.fail(W1, 2, ("CUDA out of memory".into(), true), false, 2010, BACKOFF).unwrap(), AfterFailure::Failed);
        let JobState::Failed { reason, .. } = &j.state else { panic!("{:?}", j.state) };
        assert!(reason.contains("after 2 attempts") && reason.contains("out of memory"), "{reason}");
    }

    #[test]
    fn bad_input_fails_at_once_and_cancel_wins() {
        let mut j = job(5);
        j.lease(W1, 0, 100).unwrap();
        assert_eq!(j.fail(W1, 1, ("corrupt image".into(), false), false, 1, BACKOFF).unwrap(), AfterFailure::Failed);
        let mut j = job(5);
        assert_eq!(j.cancel(0), CancelOutcome::CancelledNow);
        assert!(j.lease(W1, 0, 100).is_err());
        let mut j = job(5);
        j.lease(W1, 0, 100).unwrap();
        assert_eq!(j.cancel(1), CancelOutcome::Signalled);
        assert_eq!(j.heartbeat(W1, 1, 2, 100), HeartbeatVerdict::Cancel);
        assert_eq!(j.expire(200, BACKOFF), Some(AfterFailure::Cancelled), "a cancelled job is not retried");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!((BACKOFF.delay_ms(1), BACKOFF.delay_ms(2), BACKOFF.delay_ms(3)), (1000, 2000, 4000));
        assert_eq!(BACKOFF.delay_ms(40), 60_000);
    }
}
