//! The loss rows of running jobs, gathered from the event hub so a page opened
//! mid-render draws the curve so far (finished jobs' traces come from the
//! store). Bounded: at most [`MAX_JOBS`] jobs of at most [`MAX_ROWS`] rows
//! (older rows thinned to every other one when a job fills up).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use stylefarm_proto as pb;
use tokio::sync::broadcast::error::RecvError;

use super::view::{row, Row};
use crate::farm::Farm;

pub const MAX_JOBS: usize = 2048;
pub const MAX_ROWS: usize = 1000;

#[derive(Default)]
pub struct LiveTraces {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Vec<Row>>,
    /// Oldest first, for eviction.
    order: VecDeque<String>,
}

impl LiveTraces {
    /// Follows the farm's events until the coordinator stops.
    pub fn spawn(farm: &Arc<Farm>) -> Arc<LiveTraces> {
        let live = Arc::new(LiveTraces::default());
        let mut events = farm.subscribe_all();
        let mut stopping = farm.stopping();
        let collector = Arc::clone(&live);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) => collector.record(&event),
                        Err(RecvError::Lagged(missed)) => tracing::debug!(missed, "the dashboard's trace collector fell behind"),
                        Err(RecvError::Closed) => return,
                    },
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        live
    }

    pub fn record(&self, event: &pb::WatchEvent) {
        let Some(job) = &event.job else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let running = job.state == pb::JobState::Running as i32;
        let kind = pb::EventKind::try_from(event.kind).unwrap_or(pb::EventKind::Unspecified);
        if !running || kind == pb::EventKind::Started {
            // a finished job's trace is in the store; a new attempt starts afresh
            inner.jobs.remove(&job.id);
            return;
        }
        let Some(progress) = &job.progress else { return };
        if progress.rows.is_empty() {
            return;
        }
        if !inner.jobs.contains_key(&job.id) {
            if inner.order.len() >= MAX_JOBS {
                while let Some(old) = inner.order.pop_front() {
                    if inner.jobs.remove(&old).is_some() {
                        break;
                    }
                }
            }
            inner.order.push_back(job.id.clone());
            inner.jobs.insert(job.id.clone(), Vec::new());
        }
        let rows = inner.jobs.get_mut(&job.id).expect("inserted above");
        for r in &progress.rows {
            if rows.len() >= MAX_ROWS {
                let mut i = 0;
                rows.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
            }
            rows.push(row(r));
        }
        // ids of removed jobs stay in `order` until they come up; keep it bounded too
        if inner.order.len() > 2 * MAX_JOBS {
            let Inner { jobs, order } = &mut *inner;
            order.retain(|id| jobs.contains_key(id));
        }
    }

    /// The rows seen so far of a running job.
    pub fn rows(&self, job: &str) -> Vec<Row> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).jobs.get(job).cloned().unwrap_or_default()
    }

    pub fn jobs(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).jobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(job: &str, state: pb::JobState, kind: pb::EventKind, iterations: std::ops::Range<u32>) -> pb::WatchEvent {
        let rows = iterations.map(|i| pb::LossRow { iteration: i, total: 100.0 / (i + 1) as f64, ..Default::default() }).collect();
        pb::WatchEvent {
            kind: kind as i32,
            job: Some(pb::Job { id: job.into(), state: state as i32, progress: Some(pb::JobProgress { rows, ..Default::default() }), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn rows_gather_while_running_and_go_when_the_job_ends() {
        let live = LiveTraces::default();
        live.record(&progress("j1", pb::JobState::Running, pb::EventKind::Progress, 0..5));
        live.record(&progress("j1", pb::JobState::Running, pb::EventKind::Progress, 5..8));
        let rows = live.rows("j1");
        assert_eq!(rows.len(), 8);
        assert_eq!(rows[7][0], 7.0, "iteration first");
        live.record(&progress("j1", pb::JobState::Running, pb::EventKind::Started, 0..0));
        assert!(live.rows("j1").is_empty(), "a new attempt starts a new curve");
        live.record(&progress("j1", pb::JobState::Running, pb::EventKind::Progress, 0..3));
        live.record(&progress("j1", pb::JobState::Succeeded, pb::EventKind::Succeeded, 0..0));
        assert!(live.rows("j1").is_empty());
        assert_eq!(live.jobs(), 0);
    }

    #[test]
    fn memory_is_bounded_in_rows_and_jobs() {
        let live = LiveTraces::default();
        for chunk in 0..30 {
            live.record(&progress("j1", pb::JobState::Running, pb::EventKind::Progress, chunk * 100..(chunk + 1) * 100));
        }
        let rows = live.rows("j1");
        assert!(rows.len() <= MAX_ROWS && rows.len() > MAX_ROWS / 4, "{}", rows.len());
        assert_eq!(rows.last().unwrap()[0], 2999.0, "the newest row is kept");
        for j in 0..MAX_JOBS + 10 {
            live.record(&progress(&format!("j{}", j + 2), pb::JobState::Running, pb::EventKind::Progress, 0..1));
        }
        assert_eq!(live.jobs(), MAX_JOBS);
        assert!(live.rows("j1").is_empty(), "the oldest job was dropped");
    }
}
