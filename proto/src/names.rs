//! The one table of the names clients, the dashboard and the CLI show for job
//! and batch states, read both ways: name → state for filters (`--state`,
//! `?state=`), state → name for output (None for UNSPECIFIED or a value this
//! build does not know: each caller picks its mark).

use crate::v1::{BatchState, JobState};

/// Every job state with its name, in the order of its life.
pub const JOB_STATES: [(JobState, &str); 5] = [
    (JobState::Queued, "queued"),
    (JobState::Running, "running"),
    (JobState::Succeeded, "succeeded"),
    (JobState::Failed, "failed"),
    (JobState::Cancelled, "cancelled"),
];

/// Every batch state with its name (the same names as a job's).
pub const BATCH_STATES: [(BatchState, &str); 6] = [
    (BatchState::Queued, "queued"),
    (BatchState::Running, "running"),
    (BatchState::Paused, "paused"),
    (BatchState::Succeeded, "succeeded"),
    (BatchState::Failed, "failed"),
    (BatchState::Cancelled, "cancelled"),
];

pub fn job_state(state: i32) -> Option<&'static str> {
    JOB_STATES.iter().find(|(s, _)| *s as i32 == state).map(|(_, name)| *name)
}

pub fn batch_state(state: i32) -> Option<&'static str> {
    BATCH_STATES.iter().find(|(s, _)| *s as i32 == state).map(|(_, name)| *name)
}

/// The batch state a name stands for.
pub fn parse_batch_state(name: &str) -> Option<BatchState> {
    BATCH_STATES.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
}

/// The batch states' names, for messages: `queued, running, …, cancelled`.
pub fn batch_state_names() -> String {
    BATCH_STATES.map(|(_, n)| n).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_one_name_both_ways() {
        for (state, name) in BATCH_STATES {
            assert_eq!(batch_state(state as i32), Some(name));
            assert_eq!(parse_batch_state(name), Some(state));
        }
        for (state, name) in JOB_STATES {
            assert_eq!(job_state(state as i32), Some(name));
        }
        assert_eq!(job_state(JobState::Unspecified as i32), None);
        assert_eq!(batch_state(99), None);
        assert_eq!(parse_batch_state("done"), None);
        assert_eq!(batch_state_names(), "queued, running, paused, succeeded, failed, cancelled");
    }
}
