//! A batch's record: its jobs' counts by state and the phase they add up to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stylefarm_core::labels::Requirement;

use super::{Millis, StateKind};
use crate::ids::BatchId;

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
        debug_assert!(*slot > 0, "a job left {from:?} but the batch counts none there");
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
    Paused,
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
    /// When the first job started.
    pub started_ms: Option<Millis>,
    /// The principal that submitted it.
    pub owner: String,
    /// An operator paused it: none of its jobs is leased until it is resumed.
    pub paused: bool,
    /// When it was deleted (its row stays as a tombstone; its jobs are gone).
    pub deleted_ms: Option<Millis>,
    /// Worker labels every job of it needs (worker pools).
    pub requires: Vec<Requirement>,
    /// Webhooks told when it ends.
    pub notify: Notify,
    /// Pixels × iterations of its queued and running jobs (in memory only:
    /// worked out again from the jobs when they are loaded).
    pub unfinished_work: u64,
}

/// What a webhook is sent for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// The batch ended (succeeded, failed or cancelled).
    #[default]
    BatchEnd,
    /// The batch ended, and each job that failed for good.
    Failures,
}

impl std::str::FromStr for NotifyOn {
    type Err = String;
    fn from_str(s: &str) -> Result<NotifyOn, String> {
        match s {
            "batch_end" | "batch-end" | "end" => Ok(NotifyOn::BatchEnd),
            "failures" => Ok(NotifyOn::Failures),
            other => Err(format!("`{other}` is not one of batch_end, failures")),
        }
    }
}

/// The webhook URLs a batch's submitter asked to be told about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub urls: Vec<String>,
    #[serde(default)]
    pub on: NotifyOn,
}

/// What a principal has queued and running, or asks to add (quotas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub jobs: u64,
    /// Pixels × iterations.
    pub work: u64,
}

impl Load {
    pub fn plus(self, other: Load) -> Load {
        Load { jobs: self.jobs.saturating_add(other.jobs), work: self.work.saturating_add(other.work) }
    }
}

impl BatchRecord {
    pub fn phase(&self) -> BatchPhase {
        let c = &self.counts;
        if !c.finished() {
            return match (self.paused, self.started) {
                (true, _) => BatchPhase::Paused,
                (false, true) => BatchPhase::Running,
                (false, false) => BatchPhase::Queued,
            };
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
