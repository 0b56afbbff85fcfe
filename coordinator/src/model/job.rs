//! A job's record and its life as a state machine with pure transitions (see
//! the diagram in [`crate::model`]).

use serde::{Deserialize, Serialize};
use stylefarm_core::labels::Requirement;
use stylefarm_core::outputs::OutputKind;
pub use stylefarm_core::retry::Backoff;

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

/// How an attempt ended: its record's outcome, and the `outcome` label of the
/// run-time histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptEnd {
    Succeeded,
    Failed,
    HandedBack,
    Expired,
    TimedOut,
    Cancelled,
}

impl AttemptEnd {
    pub const ALL: [AttemptEnd; 6] =
        [AttemptEnd::Succeeded, AttemptEnd::Failed, AttemptEnd::HandedBack, AttemptEnd::Expired, AttemptEnd::TimedOut, AttemptEnd::Cancelled];

    pub fn label(self) -> &'static str {
        match self {
            AttemptEnd::Succeeded => "succeeded",
            AttemptEnd::Failed => "failed",
            AttemptEnd::HandedBack => "handed_back",
            AttemptEnd::Expired => "expired",
            AttemptEnd::TimedOut => "timed_out",
            AttemptEnd::Cancelled => "cancelled",
        }
    }
    /// The outcome a label names (the store's `attempts.outcome` column).
    pub fn from_label(label: &str) -> Option<AttemptEnd> {
        AttemptEnd::ALL.into_iter().find(|end| end.label() == label)
    }
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
    pub outcome: AttemptEnd,
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

    /// Queued or running: what counts toward a principal's quotas.
    pub fn is_unfinished(self) -> bool {
        !self.is_terminal()
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
    /// Pixels × iterations it renders (0: not a render, or stored by a build before quotas counted it).
    pub work: u64,
    pub max_attempts: u32,
    /// Leases handed out so far; the running attempt's number (the fencing token).
    pub attempt: u32,
    /// Attempts a draining worker handed back; they do not count against `max_attempts`.
    pub handed_back: u32,
    /// Attempts spent before the job's last retry: a retried job has its
    /// whole budget again (its attempt number, the fencing token, only grows).
    pub forgiven: u32,
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
    /// Worker labels it needs: its batch's requirements and its own.
    pub requires: Vec<Requirement>,
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
        Ok(self.give_back(now))
    }

    /// The running attempt ends unfinished and uncounted: queued again at
    /// once, or cancelled if a cancel was asked for (both hand-backs).
    fn give_back(&mut self, now: Millis) -> AfterFailure {
        if matches!(self.state, JobState::Running { cancel_requested: true, .. }) {
            self.state = JobState::Cancelled;
            self.finished_ms = Some(now);
            return AfterFailure::Cancelled;
        }
        self.handed_back += 1;
        self.state = JobState::Queued { not_before_ms: now };
        AfterFailure::Requeued { not_before_ms: now }
    }

    /// The coordinator takes the running attempt back (its batch was paused
    /// with running jobs handed back, or deleted): queued again at once, the
    /// attempt not counted, like a drain's hand-back, or cancelled now if a
    /// cancel was already asked for (as a drain's hand-back of it would be);
    /// the worker learns at its next heartbeat that the lease is gone.
    /// Returns the worker, when it leased and how the attempt ended; None if
    /// the job is not running.
    pub fn take_back(&mut self, now: Millis) -> Option<(WorkerId, Millis, AttemptEnd)> {
        let JobState::Running { worker, leased_ms, .. } = self.state else { return None };
        let end = match self.give_back(now) {
            AfterFailure::Cancelled => AttemptEnd::Cancelled,
            AfterFailure::Requeued { .. } | AfterFailure::Failed => AttemptEnd::HandedBack,
        };
        Some((worker, leased_ms, end))
    }

    /// Attempts that count against `max_attempts`.
    pub fn attempts_used(&self) -> u32 {
        self.attempt.saturating_sub(self.handed_back).saturating_sub(self.forgiven)
    }

    /// A failed or cancelled job runs again: queued now with a fresh attempt
    /// budget; its ended attempts stay in its history. Any other state refuses.
    pub fn retry(&mut self, now: Millis) -> Result<()> {
        match &self.state {
            JobState::Failed { .. } | JobState::Cancelled => {}
            other => {
                return Err(CoordError::FailedPrecondition(format!(
                    "job {} is {}: only a failed or cancelled job can be retried",
                    self.id,
                    other.kind().label()
                )))
            }
        }
        self.forgiven += self.attempts_used();
        self.state = JobState::Queued { not_before_ms: now };
        self.finished_ms = None;
        Ok(())
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
            let delay_ms = Millis::try_from(backoff.delay_after(self.attempts_used()).as_millis()).unwrap_or(Millis::MAX);
            let not_before_ms = now.saturating_add(delay_ms);
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
mod tests;
