//! Resuming from the store's snapshot after a (re)start.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::deps::Dependencies;
use super::queue::ReadyQueue;
use super::requests::{RequestIds, RequestKey};
use super::workers::WorkerRegistry;
use super::{Scheduler, SchedulerConfig};
use crate::model::{Counts, JobState, Millis};
use crate::store::Snapshot;

impl Scheduler {
    /// Resumes from the store's snapshot (unfinished batches only). Running
    /// jobs keep their lease for one more TTL from `now`, so their workers can
    /// reconnect and carry on.
    pub fn restore(config: SchedulerConfig, snapshot: Snapshot, now: Millis) -> Scheduler {
        let mut s = Scheduler {
            request_ids: RequestIds::new(config.request_id_window_ms),
            config,
            batches: BTreeMap::new(),
            batch_fit: HashMap::new(),
            jobs: HashMap::new(),
            members: HashMap::new(),
            queue: ReadyQueue::default(),
            running_by_owner: HashMap::new(),
            workers: WorkerRegistry::new(snapshot.next_worker),
            dirty_counters: HashSet::new(),
            progress: HashMap::new(),
            deps: Dependencies::default(),
            waiting: HashMap::new(),
            last_fit_check: now,
            images: snapshot.images.into_iter().collect(),
            image_refs: snapshot.image_refs.into_iter().fold(HashMap::new(), |mut refs: HashMap<String, HashSet<String>>, (owner, sha)| {
                refs.entry(sha).or_default().insert(owner);
                refs
            }),
            next_batch: snapshot.next_batch,
            next_job: snapshot.next_job,
        };
        for mut batch in snapshot.batches {
            if batch.finished_ms.is_some() {
                continue;
            }
            batch.counts = Counts::default();
            batch.unfinished_work = 0;
            if let Some(request_id) = &batch.request_id {
                s.request_ids.insert(RequestKey::new(&batch.owner, request_id), batch.id, batch.created_ms);
            }
            s.batches.insert(batch.id, batch);
        }
        for worker in snapshot.workers {
            s.workers.restore(worker);
        }
        for (worker, batch, failures) in snapshot.failures {
            if s.batches.contains_key(&batch) {
                s.workers.restore_failures(worker, batch, failures);
            }
        }
        let mut waiting_on_deps = Vec::new();
        for mut job in snapshot.jobs {
            let Some(batch) = s.batches.get_mut(&job.batch) else { continue };
            batch.counts.total += 1;
            batch.counts.add(job.state.kind());
            if job.state.kind().is_unfinished() {
                batch.unfinished_work = batch.unfinished_work.saturating_add(job.work);
            }
            s.batch_fit.entry(job.batch).or_default().add(&job);
            s.deps.add(job.id, &job.depends_on, false);
            match &mut job.state {
                JobState::Queued { .. } if !job.depends_on.is_empty() => waiting_on_deps.push(job.id),
                JobState::Queued { not_before_ms } if *not_before_ms > now => s.queue.delay(*not_before_ms, job.id),
                JobState::Queued { .. } => s.queue.push_back(job.priority, job.batch, job.id),
                JobState::Running { worker, lease_expires_ms, .. } => {
                    *lease_expires_ms = now + s.config.lease_ttl_ms;
                    s.workers.start(*worker, job.id);
                }
                _ => {}
            }
            s.members.entry(job.batch).or_default().push(job.id);
            s.jobs.insert(job.id, job);
        }
        for members in s.members.values_mut() {
            members.sort_by_key(|id| s.jobs[id].index);
        }
        for batch in s.batches.values().filter(|b| b.counts.running > 0) {
            *s.running_by_owner.entry(batch.owner.clone()).or_default() += batch.counts.running;
        }
        // a job whose dependencies all succeeded goes in the queue (it may be
        // a retry, backing off); the others wait
        for id in waiting_on_deps {
            let job = &s.jobs[&id];
            if job.dependencies_met(|d| s.jobs.get(&d).map(|j| j.state.kind())) {
                match job.state {
                    JobState::Queued { not_before_ms } if not_before_ms > now => s.queue.delay(not_before_ms, id),
                    _ => s.queue.push_back(job.priority, job.batch, id),
                }
            } else {
                s.deps.add(id, &[], true);
            }
        }
        s
    }
}
