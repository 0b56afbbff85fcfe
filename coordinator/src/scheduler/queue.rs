//! The queue of leasable jobs: priority (highest first) → batch → FIFO, plus
//! requeued jobs waiting out their backoff. It holds ids only; whether an id is
//! still queued is the job record's business (entries of jobs that left another
//! way are dropped lazily).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crate::ids::{BatchId, JobId};
use crate::model::Millis;

#[derive(Default)]
pub struct ReadyQueue {
    ready: BTreeMap<Reverse<i32>, BTreeMap<BatchId, VecDeque<JobId>>>,
    delayed: BinaryHeap<Reverse<(Millis, JobId)>>,
}

/// What `pick` needs to know about a queued job and its batch.
pub trait PickRules {
    /// The job is still queued and fits the device.
    fn eligible(&self, job: JobId) -> bool;
    /// The job is no longer queued (its entry can go).
    fn gone(&self, job: JobId) -> bool;
    /// The worker may not take this batch's jobs (it is blocklisted from the
    /// batch, or the batch is paused).
    fn blocked(&self, batch: BatchId) -> bool;
    /// Fair share, fewest first: jobs running now of the batch's owner, then of the batch.
    fn share(&self, batch: BatchId) -> (u32, u32);
}

impl ReadyQueue {
    pub fn push_back(&mut self, priority: i32, batch: BatchId, job: JobId) {
        self.ready.entry(Reverse(priority)).or_default().entry(batch).or_default().push_back(job);
    }

    /// A retried job is older than anything behind it: it goes first.
    pub fn push_front(&mut self, priority: i32, batch: BatchId, job: JobId) {
        self.ready.entry(Reverse(priority)).or_default().entry(batch).or_default().push_front(job);
    }

    pub fn delay(&mut self, until: Millis, job: JobId) {
        self.delayed.push(Reverse((until, job)));
    }

    /// Jobs whose backoff is over, earliest first.
    pub fn due(&mut self, now: Millis) -> Vec<JobId> {
        let mut out = Vec::new();
        while let Some(Reverse((due, job))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            out.push(job);
        }
        out
    }

    /// Highest priority first; within it the batch whose owner has the fewest
    /// running jobs, then the batch with the fewest (the older on a tie), FIFO
    /// within the batch.
    pub fn pick(&mut self, rules: &impl PickRules) -> Option<(i32, BatchId, JobId)> {
        for (priority, batches) in self.ready.iter_mut() {
            let mut best: Option<((u32, u32), BatchId, JobId)> = None;
            for (batch, queue) in batches.iter_mut() {
                if rules.blocked(*batch) {
                    continue;
                }
                let running = rules.share(*batch);
                if best.is_some_and(|(r, _, _)| r <= running) {
                    continue;
                }
                while queue.front().is_some_and(|j| rules.gone(*j)) {
                    queue.pop_front();
                }
                if let Some(job) = queue.iter().copied().find(|j| rules.eligible(*j)) {
                    best = Some((running, *batch, job));
                }
            }
            if let Some((_, batch, job)) = best {
                return Some((priority.0, batch, job));
            }
        }
        None
    }

    pub fn remove(&mut self, priority: i32, batch: BatchId, job: JobId) {
        let Some(batches) = self.ready.get_mut(&Reverse(priority)) else { return };
        if let Some(queue) = batches.get_mut(&batch) {
            if queue.front() == Some(&job) {
                queue.pop_front();
            } else if let Some(pos) = queue.iter().position(|&j| j == job) {
                queue.remove(pos);
            }
            if queue.is_empty() {
                batches.remove(&batch);
            }
        }
        if batches.is_empty() {
            self.ready.remove(&Reverse(priority));
        }
    }

    pub fn remove_batch(&mut self, priority: i32, batch: BatchId) {
        if let Some(batches) = self.ready.get_mut(&Reverse(priority)) {
            batches.remove(&batch);
            if batches.is_empty() {
                self.ready.remove(&Reverse(priority));
            }
        }
    }

    /// Drops every entry of `job`, ready or backing off (stale ones that a
    /// cancel or failure left behind): a job that is queued again after it
    /// ended must have exactly one.
    pub fn purge(&mut self, priority: i32, batch: BatchId, job: JobId) {
        if let Some(batches) = self.ready.get_mut(&Reverse(priority)) {
            if let Some(queue) = batches.get_mut(&batch) {
                queue.retain(|j| *j != job);
                if queue.is_empty() {
                    batches.remove(&batch);
                }
            }
            if batches.is_empty() {
                self.ready.remove(&Reverse(priority));
            }
        }
        if self.delayed.iter().any(|Reverse((_, j))| *j == job) {
            self.delayed.retain(|Reverse((_, j))| *j != job);
        }
    }

    /// The batch's ready entries move, in order, from priority `from` to `to`
    /// (behind any already there).
    pub fn move_batch(&mut self, from: i32, to: i32, batch: BatchId) {
        let Some(batches) = self.ready.get_mut(&Reverse(from)) else { return };
        let Some(jobs) = batches.remove(&batch) else { return };
        if batches.is_empty() {
            self.ready.remove(&Reverse(from));
        }
        self.ready.entry(Reverse(to)).or_default().entry(batch).or_default().extend(jobs);
    }

    /// Every ready entry with the priority it is queued at (for the invariant check).
    pub fn ready_entries(&self) -> impl Iterator<Item = (i32, JobId)> + '_ {
        self.ready.iter().flat_map(|(p, b)| b.values().flatten().map(move |j| (p.0, *j)))
    }

    /// Every entry, ready or backing off, stale ones included (for the
    /// invariant check).
    pub fn entries(&self) -> impl Iterator<Item = JobId> + '_ {
        self.ready.values().flat_map(|b| b.values().flatten().copied()).chain(self.delayed.iter().map(|Reverse((_, job))| *job))
    }

    /// Every batch with queued entries, and its entries (for the fit check).
    pub fn batches(&self) -> impl Iterator<Item = (BatchId, &VecDeque<JobId>)> {
        self.ready.values().flat_map(|b| b.iter().map(|(id, q)| (*id, q)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    struct Rules {
        gone: HashSet<JobId>,
        too_big: HashSet<JobId>,
        blocked: HashSet<BatchId>,
        running: HashMap<BatchId, u32>,
    }

    impl PickRules for Rules {
        fn eligible(&self, job: JobId) -> bool {
            !self.gone.contains(&job) && !self.too_big.contains(&job)
        }
        fn gone(&self, job: JobId) -> bool {
            self.gone.contains(&job)
        }
        fn blocked(&self, batch: BatchId) -> bool {
            self.blocked.contains(&batch)
        }
        fn share(&self, batch: BatchId) -> (u32, u32) {
            (0, self.running.get(&batch).copied().unwrap_or(0))
        }
    }

    #[test]
    fn priority_then_fair_share_then_fifo_with_fit_and_blocks() {
        let mut q = ReadyQueue::default();
        let (b1, b2, b3) = (BatchId(1), BatchId(2), BatchId(3));
        for j in 1..=3 {
            q.push_back(0, b1, JobId(j));
            q.push_back(0, b2, JobId(10 + j));
        }
        q.push_back(5, b3, JobId(21));
        let mut rules = Rules { gone: HashSet::new(), too_big: HashSet::new(), blocked: HashSet::new(), running: HashMap::new() };
        assert_eq!(q.pick(&rules), Some((5, b3, JobId(21))), "priority first");
        q.remove(5, b3, JobId(21));
        assert_eq!(q.pick(&rules), Some((0, b1, JobId(1))), "older batch on a tie");
        rules.running.insert(b1, 1);
        assert_eq!(q.pick(&rules), Some((0, b2, JobId(11))), "fewest running next");
        rules.blocked.insert(b2);
        rules.gone.insert(JobId(1));
        rules.too_big.insert(JobId(2));
        assert_eq!(q.pick(&rules), Some((0, b1, JobId(3))), "gone entries dropped, unfit skipped, blocked batch passed over");
        q.delay(100, JobId(9));
        q.delay(50, JobId(8));
        assert!(q.due(49).is_empty());
        assert_eq!(q.due(100), vec![JobId(8), JobId(9)]);
        q.remove_batch(0, b1);
        q.remove_batch(0, b2);
        assert_eq!(q.pick(&rules), None);
    }

    #[test]
    fn a_batch_moves_between_priorities_in_order() {
        let mut q = ReadyQueue::default();
        let (b1, b2) = (BatchId(1), BatchId(2));
        q.push_back(0, b1, JobId(1));
        q.push_back(0, b1, JobId(2));
        q.push_back(5, b2, JobId(3));
        let rules = Rules { gone: HashSet::new(), too_big: HashSet::new(), blocked: HashSet::new(), running: HashMap::new() };
        assert_eq!(q.pick(&rules), Some((5, b2, JobId(3))));
        q.move_batch(0, 10, b1);
        assert_eq!(q.pick(&rules), Some((10, b1, JobId(1))), "the moved batch now goes first");
        assert_eq!(q.ready_entries().collect::<Vec<_>>(), vec![(10, JobId(1)), (10, JobId(2)), (5, JobId(3))], "order kept, old level gone");
        q.move_batch(0, 3, b1);
        assert_eq!(q.ready_entries().count(), 3, "moving from a level the batch is not at changes nothing");
    }
}
