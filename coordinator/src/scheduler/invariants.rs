//! What must hold between the scheduler's indexes after every call. Checked
//! by the unit and property tests after each step, and by the farm after each
//! change in debug builds while the state is small (the check walks it all).

use std::collections::HashMap;

use super::Scheduler;
use crate::ids::JobId;
use crate::model::{Counts, JobState};

/// Debug builds check the invariants after every change while at most this
/// many jobs are in memory (the check walks them all).
#[cfg(debug_assertions)]
const DEBUG_CHECK_MAX_JOBS: usize = 2_000;

impl Scheduler {
    /// Panics (debug builds) naming the broken invariant, while the state is small.
    #[cfg(debug_assertions)]
    pub fn debug_check_invariants(&self) {
        if self.jobs.len() <= DEBUG_CHECK_MAX_JOBS {
            if let Err(broken) = self.check_invariants() {
                panic!("scheduler invariant broken: {broken}");
            }
        }
    }

    /// Every invariant, or the first one broken, in words:
    /// - each in-memory batch's counts equal a tally of its jobs' states;
    /// - every job in memory belongs to its batch's members, and back;
    /// - every queued job whose dependencies are met sits in exactly one queue
    ///   (ready or backing off), and one still blocked on them in none; a
    ///   ready entry sits at its job's priority;
    /// - every running job is in exactly its worker's running set, and every
    ///   entry of a running set is a job running on that worker;
    /// - only queued jobs wait for a device;
    /// - the running jobs kept per principal equal their batches' tally.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_owner: HashMap<&str, u32> = HashMap::new();
        for batch in self.batches.values().filter(|b| b.counts.running > 0) {
            *by_owner.entry(batch.owner.as_str()).or_default() += batch.counts.running;
        }
        let kept: HashMap<&str, u32> = self.running_by_owner.iter().map(|(o, n)| (o.as_str(), *n)).collect();
        if by_owner != kept {
            return Err(format!("running jobs per principal {kept:?} are not the batches' tally {by_owner:?}"));
        }
        for (id, batch) in &self.batches {
            let members = self.members.get(id).map(Vec::as_slice).unwrap_or_default();
            let mut tally = Counts { total: members.len() as u32, ..Counts::default() };
            let mut work = 0u64;
            for job in members {
                let record = self.jobs.get(job).ok_or_else(|| format!("batch {id}: member {job} is not in memory"))?;
                if record.batch != *id {
                    return Err(format!("job {job} is a member of batch {id} but names batch {}", record.batch));
                }
                tally.add(record.state.kind());
                if record.state.kind().is_unfinished() {
                    work = work.saturating_add(record.work);
                }
            }
            if batch.counts != tally {
                return Err(format!("batch {id}: counts {:?}, but its jobs tally {tally:?}", batch.counts));
            }
            if batch.unfinished_work != work {
                return Err(format!("batch {id}: unfinished work {}, but its queued and running jobs hold {work}", batch.unfinished_work));
            }
        }
        let entries: HashMap<JobId, usize> = self.queue.entries().fold(HashMap::new(), |mut m, j| {
            *m.entry(j).or_default() += 1;
            m
        });
        for (priority, job) in self.queue.ready_entries() {
            if let Some(record) = self.jobs.get(&job).filter(|j| matches!(j.state, JobState::Queued { .. })) {
                if record.priority != priority {
                    return Err(format!("queued job {job} of priority {} sits in the queue at priority {priority}", record.priority));
                }
            }
        }
        let mut running: HashMap<JobId, usize> = HashMap::new();
        for (worker, job) in self.workers.running_pairs() {
            *running.entry(job).or_default() += 1;
            match self.jobs.get(&job).map(|j| &j.state) {
                Some(JobState::Running { worker: w, .. }) if *w == worker => {}
                other => return Err(format!("worker {worker}'s running set holds job {job}, which is {other:?}")),
            }
        }
        for (id, job) in &self.jobs {
            if !self.members.get(&job.batch).is_some_and(|m| m.contains(id)) {
                return Err(format!("job {id} is in memory but not among batch {}'s members", job.batch));
            }
            let queued = entries.get(id).copied().unwrap_or(0);
            let running_sets = running.get(id).copied().unwrap_or(0);
            let blocked = self.deps.is_blocked(*id);
            match &job.state {
                JobState::Queued { .. } if blocked && queued != 0 => {
                    return Err(format!("job {id} waits on its dependencies but has {queued} queue entries"));
                }
                JobState::Queued { .. } if !blocked && queued != 1 => {
                    return Err(format!("queued job {id} has {queued} queue entries, not 1"));
                }
                JobState::Running { .. } if running_sets != 1 => {
                    return Err(format!("running job {id} is in {running_sets} running sets, not 1"));
                }
                _ => {}
            }
            if self.waiting.contains_key(id) && !matches!(job.state, JobState::Queued { .. }) {
                return Err(format!("job {id} is marked as waiting for a device but is {:?}", job.state.kind()));
            }
        }
        Ok(())
    }
}
