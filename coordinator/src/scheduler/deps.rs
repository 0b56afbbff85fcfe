//! Job dependencies: which in-memory jobs wait on which, and which queued jobs
//! are blocked (kept out of the ready queue) until every dependency succeeds.
//! Bounded by the jobs in memory: a batch's entries leave with it.

use std::collections::{HashMap, HashSet};

use crate::ids::JobId;

#[derive(Debug, Default)]
pub struct Dependencies {
    /// Job → the jobs that depend on it.
    dependents: HashMap<JobId, Vec<JobId>>,
    /// Queued jobs with a dependency that has not succeeded yet.
    blocked: HashSet<JobId>,
}

impl Dependencies {
    /// Records the edges of `job` (waiting on `depends_on`); `blocked` says whether it must wait.
    pub fn add(&mut self, job: JobId, depends_on: &[JobId], blocked: bool) {
        for dep in depends_on {
            self.dependents.entry(*dep).or_default().push(job);
        }
        if blocked {
            self.blocked.insert(job);
        }
    }

    pub fn dependents(&self, job: JobId) -> &[JobId] {
        self.dependents.get(&job).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_blocked(&self, job: JobId) -> bool {
        self.blocked.contains(&job)
    }

    /// Lets `job` into the queue; false if it was not blocked.
    pub fn unblock(&mut self, job: JobId) -> bool {
        self.blocked.remove(&job)
    }

    pub fn blocked_count(&self) -> usize {
        self.blocked.len()
    }

    /// Forgets a job (its batch left memory, or it finished).
    pub fn forget(&mut self, job: JobId) {
        self.dependents.remove(&job);
        self.blocked.remove(&job);
    }

    pub fn len(&self) -> usize {
        self.dependents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_point_from_a_job_to_its_dependents() {
        let mut deps = Dependencies::default();
        deps.add(JobId(3), &[JobId(1), JobId(2)], true);
        assert_eq!(deps.dependents(JobId(1)), &[JobId(3)]);
        assert!(deps.is_blocked(JobId(3)));
        assert_eq!(deps.blocked_count(), 1);
        assert!(deps.unblock(JobId(3)));
        assert!(!deps.unblock(JobId(3)));
        deps.forget(JobId(1));
        assert!(deps.dependents(JobId(1)).is_empty());
    }
}
