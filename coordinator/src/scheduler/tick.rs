//! Time passing: expired leases, attempts over their time limit, backoffs
//! that end, the fit check, the windows that forget, and a finished batch
//! leaving memory.

use std::collections::{HashMap, HashSet};

use stylefarm_core::labels::Requirement;

use super::attempts::{attempt_ended, Ended};
use super::leases::{self, Due};
use super::transition::Was;
use super::{AttemptEnd, Effects, Event, EventKind, Observation, Scheduler, FIT_CHECK_EVERY_MS, SIZES_LOG_EVERY_MS};
use crate::ids::{BatchId, JobId};
use crate::model::{AfterFailure, JobState, Millis};

impl Scheduler {
    /// Expires overdue leases, ends attempts past their time limit, releases
    /// jobs whose backoff is over, checks that queued jobs fit some device, and
    /// forgets what the windows say to.
    pub fn tick(&mut self, now: Millis, fx: &mut Effects) {
        let backoff = self.config.backoff;
        for (job_id, due) in leases::due(&self.jobs, self.workers.all_running(), now) {
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            let Some(worker) = job.running_worker() else { continue };
            let (attempt, batch, leased_ms) = (job.attempt, job.batch, job.state.leased_ms());
            let after = match due {
                Due::Expired => job.expire(now, backoff),
                Due::OverTime => job.time_out(now, backoff),
            };
            let Some(after) = after else { continue };
            let end = match (due, after) {
                (_, AfterFailure::Cancelled) => AttemptEnd::Cancelled,
                (Due::Expired, _) => AttemptEnd::Expired,
                (Due::OverTime, _) => AttemptEnd::TimedOut,
            };
            let reason = match end {
                AttemptEnd::Expired => "the lease expired: the worker stopped sending heartbeats".to_string(),
                AttemptEnd::TimedOut => format!("the attempt exceeded its time limit of {} s", job.time_limit_ms / 1000),
                _ => "cancelled".to_string(),
            };
            attempt_ended(fx, Ended { job: job_id, attempt, worker: Some(worker), leased_ms, end }, reason, Vec::new(), now);
            if matches!(after, AfterFailure::Requeued { .. }) {
                fx.observations.push(Observation::Retried);
            }
            // neither counts toward the blocklist: a worker that dies or loses
            // the network is not failing the batch's jobs (a render error is)
            match due {
                Due::Expired => {
                    tracing::warn!(job_id = %job_id, batch_id = %batch, worker_id = %worker, attempt, outcome = ?after, "lease expired");
                }
                Due::OverTime => {
                    tracing::warn!(job_id = %job_id, batch_id = %batch, worker_id = %worker, attempt, outcome = ?after, "attempt exceeded its time limit")
                }
            }
            self.transition(job_id, Was::Running(worker), now, fx);
        }
        self.release_delayed(now, fx);
        if now - self.last_fit_check >= FIT_CHECK_EVERY_MS {
            if now / SIZES_LOG_EVERY_MS != self.last_fit_check / SIZES_LOG_EVERY_MS {
                tracing::debug!(target: "stylefarm_coordinator::sizes", sizes = %self.sizes(), "in-memory indexes");
            }
            self.last_fit_check = now;
            self.check_fit(now, fx);
            self.flush_counters(fx);
            self.request_ids.expire(now);
            for id in self.workers.forget_idle(now - self.config.forget_workers_after_ms) {
                tracing::info!(worker_id = %id, "worker unseen for too long: forgotten (kept in the store)");
            }
        }
    }

    /// Marks queued jobs that no connected worker may run, saying why: no
    /// device fits them, or every worker whose device fits is blocklisted from
    /// their batch. Fails those that waited longer than the grace period, and
    /// clears the mark when a worker that may run them shows up.
    fn check_fit(&mut self, now: Millis, fx: &mut Effects) {
        let since = now - self.config.lease_ttl_ms;
        let largest = self.workers.largest_device(since, &[]);
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let limit = self.config.worker_batch_failure_limit;
        let mut stuck: Vec<(JobId, BatchId, String)> = Vec::new();
        // the largest device per requirement set, each worked out once per check
        // (a pooled batch's jobs share one set; asking the registry per job would be
        // jobs × workers label checks)
        let mut largest_for: HashMap<&[Requirement], Option<u64>> = HashMap::new();
        if let Some(largest) = largest {
            for (batch, entries) in self.queue.batches() {
                let fit = self.batch_fit.get(&batch).copied().unwrap_or_default();
                let too_big = fit.max_estimate > largest;
                let blocks = self.workers.has_blocks(batch, limit) && !self.batches.get(&batch).is_some_and(|b| b.paused);
                let pooled = fit.pooled;
                if !too_big && !blocks && !pooled {
                    continue;
                }
                for id in entries {
                    let Some(job) = self.jobs.get(id).filter(|j| matches!(j.state, JobState::Queued { .. })) else { continue };
                    // the largest device among the workers this job may go to (its pool)
                    let pool_largest = if job.requires.is_empty() {
                        Some(largest)
                    } else {
                        *largest_for.entry(job.requires.as_slice()).or_insert_with(|| self.workers.largest_device(since, &job.requires))
                    };
                    let Some(largest) = pool_largest else {
                        let wanted: Vec<String> = job.requires.iter().map(ToString::to_string).collect();
                        let reason = format!(
                            "no connected worker has the labels it requires ({}): start a worker with matching --label flags, or resubmit without them",
                            wanted.join(", ")
                        );
                        stuck.push((job.id, batch, reason));
                        continue;
                    };
                    if job.estimate_bytes > largest {
                        let among = if job.requires.is_empty() { "" } else { " among the workers with its labels" };
                        let reason = format!(
                            "no connected worker has a device that fits it: it needs about {:.1} GiB, the largest device{among} has {:.1} GiB",
                            gib(job.estimate_bytes),
                            gib(largest)
                        );
                        stuck.push((job.id, batch, reason));
                    } else if blocks && self.workers.all_fitting_blocked(since, job.estimate_bytes, &job.requires, batch, limit) {
                        let reason = format!(
                            "every connected worker that fits it is blocklisted from batch {batch} after {limit} failed attempts of its jobs; \
                             an admin can unblock one (`stylefarm unblock WORKER --batch {batch}`), or another worker may connect"
                        );
                        stuck.push((job.id, batch, reason));
                    }
                }
            }
        }
        let unfit_ids: HashSet<JobId> = stuck.iter().map(|(id, _, _)| *id).collect();
        let cleared: Vec<JobId> = self.waiting.keys().filter(|id| !unfit_ids.contains(id)).copied().collect();
        for id in cleared {
            self.waiting.remove(&id);
            if let Some(job) = self.jobs.get(&id).filter(|j| matches!(j.state, JobState::Queued { .. })) {
                fx.events.push(Event { kind: EventKind::Waiting, batch: job.batch, job: Some(id) });
            }
        }
        for (id, batch, reason) in stuck {
            let since = match self.waiting.get(&id) {
                Some((_, since)) => *since,
                None => {
                    fx.events.push(Event { kind: EventKind::Waiting, batch, job: Some(id) });
                    now
                }
            };
            self.waiting.insert(id, (reason.clone(), since));
            if now - since >= self.config.unfit_grace_ms {
                let Some(job) = self.jobs.get_mut(&id) else { continue };
                if job.fail_queued(format!("{reason} (waited {} s)", (now - since) / 1000), now) {
                    self.waiting.remove(&id);
                    self.transition(id, Was::Queued, now, fx);
                }
            }
        }
    }

    pub(super) fn release_delayed(&mut self, now: Millis, fx: &mut Effects) {
        for job_id in self.queue.due(now) {
            let Some(job) = self.jobs.get(&job_id) else { continue };
            if !matches!(job.state, JobState::Queued { .. }) {
                continue;
            }
            self.queue.push_front(job.priority, job.batch, job_id);
            fx.wake = true;
        }
    }

    /// Drops a finished batch from memory (call once its end is committed).
    pub fn evict_batch(&mut self, id: BatchId) {
        if self.batches.get(&id).is_some_and(|b| b.finished_ms.is_some()) {
            self.batches.remove(&id);
            self.batch_fit.remove(&id);
            self.workers.forget_batch(id);
            for job in self.members.remove(&id).unwrap_or_default() {
                self.jobs.remove(&job);
                self.progress.remove(&job);
                self.waiting.remove(&job);
                self.deps.forget(job);
            }
        }
    }
}
