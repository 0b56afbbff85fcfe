//! Which running attempts must end now: leases that ran out (no heartbeat for a
//! TTL) and attempts past the job's time limit. Found by scanning the running
//! jobs (one per busy device) on every tick, so nothing is kept per lease that
//! outlives it: memory follows the number of running jobs, not the rate.

use std::collections::HashMap;

use crate::ids::JobId;
use crate::model::{JobRecord, JobState, Millis};

/// Why a running attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// No heartbeat within the lease TTL.
    Expired,
    /// Alive, but past the job's time limit.
    OverTime,
}

/// The running jobs among `running` whose attempt must end at `now`.
pub fn due(jobs: &HashMap<JobId, JobRecord>, running: impl Iterator<Item = JobId>, now: Millis) -> Vec<(JobId, Due)> {
    running
        .filter_map(|id| {
            let job = jobs.get(&id)?;
            match &job.state {
                JobState::Running { lease_expires_ms, .. } if *lease_expires_ms <= now => Some((id, Due::Expired)),
                JobState::Running { .. } if job.over_time(now) => Some((id, Due::OverTime)),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BatchId, WorkerId};
    use crate::model::ImageSource;

    fn running(id: i64, lease_expires_ms: Millis, leased_ms: Millis) -> JobRecord {
        JobRecord {
            id: JobId(id),
            batch: BatchId(1),
            index: 0,
            name: String::new(),
            priority: 0,
            content: ImageSource::Blob(String::new()),
            styles: Vec::new(),
            params_json: String::new(),
            estimate_bytes: 0,
            work: 0,
            max_attempts: 1,
            attempt: 1,
            handed_back: 0,
            forgiven: 0,
            time_limit_ms: 1_000,
            state: JobState::Running { worker: WorkerId(1), lease_expires_ms, cancel_requested: false, lease_secret: Default::default(), leased_ms },
            last_failure: None,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            trace_id: String::new(),
            depends_on: Vec::new(),
            task: None,
            requires: Vec::new(),
        }
    }

    #[test]
    fn expired_leases_and_overrun_attempts_are_due() {
        let jobs: HashMap<JobId, JobRecord> = [running(1, 100, 0), running(2, 5_000, 0), running(3, 5_000, 4_500)].into_iter().map(|j| (j.id, j)).collect();
        let ids = || [JobId(1), JobId(2), JobId(3), JobId(9)].into_iter();
        assert_eq!(due(&jobs, ids(), 99), vec![]);
        assert_eq!(due(&jobs, ids(), 100), vec![(JobId(1), Due::Expired)]);
        let mut at_1001 = due(&jobs, ids(), 1_001);
        at_1001.sort_by_key(|(id, _)| *id);
        assert_eq!(at_1001, vec![(JobId(1), Due::Expired), (JobId(2), Due::OverTime)]);
    }
}
