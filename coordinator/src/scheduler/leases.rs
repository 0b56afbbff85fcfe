//! When running attempts' leases must be looked at again: a heap of expiries
//! (heartbeats move a lease's deadline; a popped entry is checked against the
//! job's current one and pushed back if it moved). Entries of attempts that
//! ended another way are dropped when they come due, so the heap holds at most
//! one lease TTL's worth of attempts.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::ids::JobId;
use crate::model::Millis;

#[derive(Default)]
pub struct LeaseClock {
    expiries: BinaryHeap<Reverse<(Millis, JobId, u32)>>,
}

impl LeaseClock {
    /// Looks at `job`'s `attempt` again at `expires`.
    pub fn watch(&mut self, job: JobId, attempt: u32, expires: Millis) {
        self.expiries.push(Reverse((expires, job, attempt)));
    }

    /// Entries due by `now`, earliest first: (job, attempt).
    pub fn due(&mut self, now: Millis) -> Vec<(JobId, u32)> {
        let mut out = Vec::new();
        while let Some(Reverse((at, job, attempt))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            out.push((job, attempt));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.expiries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.expiries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_come_due_in_order() {
        let mut c = LeaseClock::default();
        c.watch(JobId(1), 1, 100);
        c.watch(JobId(2), 1, 50);
        assert!(c.due(49).is_empty());
        assert_eq!(c.due(100), vec![(JobId(2), 1), (JobId(1), 1)]);
        c.watch(JobId(1), 1, 300);
        assert_eq!(c.len(), 1);
        assert_eq!(c.due(1000), vec![(JobId(1), 1)]);
        assert!(c.is_empty());
    }
}
