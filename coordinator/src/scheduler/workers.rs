//! The worker registry: who is registered (and by which principal), what each
//! runs, how often each failed each batch (the per-batch blocklist), and
//! forgetting workers long gone so restarts do not pile up records.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use stylefarm_core::labels::{self, Requirement};

use crate::error::{CoordError, Result};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{Availability, Millis, WorkerProfile, WorkerRecord};
use crate::secrets::Secret;

pub struct Registration {
    pub id: WorkerId,
    /// Set for a new worker only: it must keep it to register again as `id`.
    pub secret: Option<Secret>,
    pub record: WorkerRecord,
}

#[derive(Default)]
pub struct WorkerRegistry {
    workers: BTreeMap<WorkerId, WorkerRecord>,
    running: HashMap<WorkerId, BTreeSet<JobId>>,
    /// Failures per batch and worker; a batch's entries go when it finishes.
    failures: HashMap<BatchId, HashMap<WorkerId, u32>>,
    next: i64,
}

impl WorkerRegistry {
    pub fn new(next: i64) -> WorkerRegistry {
        WorkerRegistry { next, ..WorkerRegistry::default() }
    }

    pub fn restore(&mut self, record: WorkerRecord) {
        self.workers.insert(record.id, record);
    }

    pub fn restore_failures(&mut self, worker: WorkerId, batch: BatchId, failures: u32) {
        self.failures.entry(batch).or_default().insert(worker, failures);
    }

    pub fn get(&self, id: WorkerId) -> Option<&WorkerRecord> {
        self.workers.get(&id)
    }

    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut WorkerRecord> {
        self.workers.get_mut(&id)
    }

    pub fn all(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// A new worker, or the same one again: re-registering as `existing` needs
    /// its secret and, with authentication on, the principal that registered it.
    pub fn register(&mut self, existing: Option<(WorkerId, &str)>, owner: &str, profile: WorkerProfile, now: Millis) -> Result<Registration> {
        let WorkerProfile { name, devices, version, labels } = profile;
        if let Some((id, secret)) = existing {
            if let Some(record) = self.workers.get_mut(&id) {
                if !record.secret.verify(secret) {
                    return Err(CoordError::PermissionDenied(format!("worker {id} is registered; re-registering as it needs its worker_secret")));
                }
                if record.owner != owner {
                    return Err(CoordError::PermissionDenied(format!("worker {id} belongs to another principal")));
                }
                record.name = name;
                record.devices = devices;
                record.version = version;
                record.labels = labels;
                record.last_seen_ms = now;
                return Ok(Registration { id, secret: None, record: record.clone() });
            }
            // forgotten (or never known): it registers as a new worker
        }
        let id = WorkerId(self.next);
        self.next += 1;
        let secret = Secret::generate();
        let record = WorkerRecord {
            id,
            name,
            devices,
            version,
            registered_ms: now,
            last_seen_ms: now,
            succeeded: 0,
            failed: 0,
            owner: owner.to_string(),
            secret: secret.hash(),
            readings: Default::default(),
            availability: Availability::Enabled,
            labels,
        };
        self.workers.insert(id, record.clone());
        Ok(Registration { id, secret: Some(secret), record })
    }

    /// The worker `caller` acts as: it must exist and be the caller's (or the
    /// caller an admin). Marks it seen.
    pub fn act_as(&mut self, worker: WorkerId, caller: &str, admin: bool, now: Millis) -> Result<&mut WorkerRecord> {
        let record = self.workers.get_mut(&worker).ok_or_else(|| CoordError::not_found("worker", worker))?;
        if !admin && record.owner != caller {
            return Err(CoordError::PermissionDenied(format!("worker {worker} belongs to another principal")));
        }
        record.last_seen_ms = now;
        Ok(record)
    }

    pub fn start(&mut self, worker: WorkerId, job: JobId) {
        self.running.entry(worker).or_default().insert(job);
    }

    pub fn stop(&mut self, worker: WorkerId, job: JobId) {
        if let Some(set) = self.running.get_mut(&worker) {
            set.remove(&job);
            if set.is_empty() {
                self.running.remove(&worker);
            }
        }
    }

    pub fn running_jobs(&self, worker: WorkerId) -> Vec<JobId> {
        self.running.get(&worker).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// Every (worker, job) of the running sets (for the invariant check).
    pub fn running_pairs(&self) -> impl Iterator<Item = (WorkerId, JobId)> + '_ {
        self.running.iter().flat_map(|(w, jobs)| jobs.iter().map(move |j| (*w, *j)))
    }

    pub fn all_running(&self) -> impl Iterator<Item = JobId> + '_ {
        self.running.values().flatten().copied()
    }

    /// Counts a failed attempt; returns the worker's failures of this batch.
    pub fn count_failure(&mut self, worker: WorkerId, batch: BatchId) -> u32 {
        let n = self.failures.entry(batch).or_default().entry(worker).or_default();
        *n += 1;
        *n
    }

    pub fn failures(&self, worker: WorkerId, batch: BatchId) -> u32 {
        self.failures.get(&batch).and_then(|m| m.get(&worker)).copied().unwrap_or(0)
    }

    /// The per-batch block rule: `worker` failed `batch` `limit` times or more.
    pub fn blocked(&self, worker: WorkerId, batch: BatchId, limit: u32) -> bool {
        self.failures(worker, batch) >= limit
    }

    /// Whether any worker is blocked from `batch`.
    pub fn has_blocks(&self, batch: BatchId, limit: u32) -> bool {
        self.failures.get(&batch).is_some_and(|m| m.values().any(|&n| n >= limit))
    }

    /// Whether some worker seen since `since` whose labels meet `requires` has
    /// a device of `bytes` or more, and every such worker is blocked from `batch`.
    pub fn all_fitting_blocked(&self, since: Millis, bytes: u64, requires: &[Requirement], batch: BatchId, limit: u32) -> bool {
        let mut fitting = self
            .workers
            .values()
            .filter(|w| w.last_seen_ms >= since && labels::satisfied(requires, &w.labels) && w.devices.iter().any(|d| d.memory_bytes >= bytes))
            .peekable();
        fitting.peek().is_some() && fitting.all(|w| self.blocked(w.id, batch, limit))
    }

    /// An admin lifts `worker`'s block from `batch`: its failures there start over.
    pub fn unblock(&mut self, worker: WorkerId, batch: BatchId) -> bool {
        self.failures.get_mut(&batch).and_then(|m| m.remove(&worker)).is_some()
    }

    pub fn forget_batch(&mut self, batch: BatchId) {
        self.failures.remove(&batch);
    }

    /// Largest device memory among workers seen since `since` whose labels
    /// meet `requires` (None: no such worker).
    pub fn largest_device(&self, since: Millis, requires: &[Requirement]) -> Option<u64> {
        self.workers
            .values()
            .filter(|w| w.last_seen_ms >= since && labels::satisfied(requires, &w.labels))
            .flat_map(|w| w.devices.iter().map(|d| d.memory_bytes))
            .max()
    }

    /// An admin's choice: whether `worker` takes new jobs. Returns its record after.
    pub fn set_availability(&mut self, worker: WorkerId, availability: Availability) -> Result<&WorkerRecord> {
        let record = self.workers.get_mut(&worker).ok_or_else(|| CoordError::not_found("worker", worker))?;
        record.availability = availability;
        Ok(record)
    }

    /// Whether `worker` may lease (known and enabled).
    pub fn takes_work(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.availability.takes_work())
    }

    /// An admin forgets `worker`: refused while it was seen since `connected_since`
    /// or runs a job (a live worker is disabled or drained, not forgotten).
    pub fn forget(&mut self, worker: WorkerId, connected_since: Millis) -> Result<WorkerRecord> {
        let record = self.workers.get(&worker).ok_or_else(|| CoordError::not_found("worker", worker))?;
        if let Some(jobs) = self.running.get(&worker) {
            return Err(CoordError::FailedPrecondition(format!(
                "worker {worker} runs {} job(s): drain it first (its leases end at once), then forget it once it is gone",
                jobs.len()
            )));
        }
        if record.last_seen_ms >= connected_since {
            return Err(CoordError::FailedPrecondition(format!(
                "worker {worker} is connected (seen {} ms ago): stop it, or disable it instead",
                connected_since.max(record.last_seen_ms) - connected_since
            )));
        }
        for failures in self.failures.values_mut() {
            failures.remove(&worker);
        }
        self.workers.remove(&worker).ok_or_else(|| CoordError::not_found("worker", worker))
    }

    /// Drops workers unseen since `before` that run nothing; returns their ids.
    pub fn forget_idle(&mut self, before: Millis) -> Vec<WorkerId> {
        let gone: Vec<WorkerId> = self.workers.values().filter(|w| w.last_seen_ms < before && !self.running.contains_key(&w.id)).map(|w| w.id).collect();
        for id in &gone {
            self.workers.remove(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceRecord;

    fn profile(name: String) -> WorkerProfile {
        WorkerProfile { name, devices: cpu(), version: "1".into(), labels: Default::default() }
    }

    fn cpu() -> Vec<DeviceRecord> {
        vec![DeviceRecord { name: "cpu".into(), memory_bytes: 8 << 30, description: String::new() }]
    }

    #[test]
    fn ids_are_kept_only_with_the_secret_and_by_the_same_principal() {
        let mut r = WorkerRegistry::new(1);
        let first = r.register(None, "gpu-07", profile("a".into()), 0).unwrap();
        let secret = first.secret.expect("a new worker gets a secret");
        let again = r.register(Some((first.id, secret.expose())), "gpu-07", profile("a2".into()), 5).unwrap();
        assert_eq!((again.id, again.secret.is_none(), again.record.name.as_str()), (first.id, true, "a2"));
        let e = r.register(Some((first.id, "guess")), "gpu-07", profile("x".into()), 6).err().unwrap();
        assert!(matches!(e, CoordError::PermissionDenied(_)), "{e}");
        let e = r.register(Some((first.id, secret.expose())), "mallory", profile("x".into()), 6).err().unwrap();
        assert!(matches!(e, CoordError::PermissionDenied(_)), "{e}");
        assert!(r.act_as(first.id, "mallory", false, 7).is_err());
        assert!(r.act_as(first.id, "root", true, 7).is_ok(), "an admin may");
        assert_eq!(r.len(), 1, "failed takeovers add nothing");
    }

    #[test]
    fn failures_per_batch_are_forgotten_with_the_batch_and_idle_workers_go() {
        let mut r = WorkerRegistry::new(1);
        let w = r.register(None, "local", profile("a".into()), 0).unwrap().id;
        let busy = r.register(None, "local", profile("b".into()), 0).unwrap().id;
        assert_eq!(r.count_failure(w, BatchId(1)), 1);
        assert_eq!(r.count_failure(w, BatchId(1)), 2);
        r.forget_batch(BatchId(1));
        assert_eq!(r.failures(w, BatchId(1)), 0);
        assert_eq!(r.largest_device(0, &[]), Some(8 << 30));
        assert_eq!(r.largest_device(1, &[]), None, "nobody seen since");
        r.start(busy, JobId(3));
        assert_eq!(r.forget_idle(10), vec![w], "a worker running a job is kept");
        r.stop(busy, JobId(3));
        assert_eq!(r.forget_idle(10), vec![busy]);
        assert!(r.is_empty());
    }

    #[test]
    fn disabled_workers_take_no_work_and_only_gone_idle_ones_are_forgotten() {
        let mut r = WorkerRegistry::new(1);
        let w = r.register(None, "local", profile("a".into()), 100).unwrap().id;
        assert!(r.takes_work(w));
        assert_eq!(r.set_availability(w, Availability::Disabled).unwrap().availability, Availability::Disabled);
        assert!(!r.takes_work(w));
        r.set_availability(w, Availability::Enabled).unwrap();
        assert!(r.takes_work(w) && !r.takes_work(WorkerId(99)), "an unknown worker takes nothing");
        assert!(matches!(r.set_availability(WorkerId(99), Availability::Disabled), Err(CoordError::NotFound { .. })));
        let e = r.forget(w, 50).unwrap_err();
        assert!(e.to_string().contains("is connected"), "{e}");
        r.start(w, JobId(1));
        let e = r.forget(w, 200).unwrap_err();
        assert!(e.to_string().contains("runs 1 job"), "{e}");
        r.stop(w, JobId(1));
        r.count_failure(w, BatchId(4));
        assert_eq!(r.forget(w, 200).unwrap().id, w);
        assert!(r.is_empty() && r.failures(w, BatchId(4)) == 0, "its blocklist entries go with it");
        assert!(matches!(r.forget(w, 200), Err(CoordError::NotFound { .. })));
    }
}
