//! The lower-case names clients and the dashboard show for states (None for
//! UNSPECIFIED or a value this build does not know: each caller picks its mark).

use crate::v1::{BatchState, JobState};

pub fn job_state(state: i32) -> Option<&'static str> {
    match JobState::try_from(state).ok()? {
        JobState::Queued => Some("queued"),
        JobState::Running => Some("running"),
        JobState::Succeeded => Some("succeeded"),
        JobState::Failed => Some("failed"),
        JobState::Cancelled => Some("cancelled"),
        JobState::Unspecified => None,
    }
}

pub fn batch_state(state: i32) -> Option<&'static str> {
    match BatchState::try_from(state).ok()? {
        BatchState::Queued => Some("queued"),
        BatchState::Running => Some("running"),
        BatchState::Succeeded => Some("succeeded"),
        BatchState::Failed => Some("failed"),
        BatchState::Cancelled => Some("cancelled"),
        BatchState::Unspecified => None,
    }
}
