//! Webhook bodies: JSON a receiver can act on without calling back (the
//! batch's summary as the API shows it; for a failure, the job and why).

use serde::Serialize;
use stylefarm_proto::names;

use crate::convert;
use crate::model::{BatchRecord, Counts, JobRecord, JobState, Millis};

#[derive(Serialize)]
struct Batch<'a> {
    id: String,
    name: &'a str,
    owner: &'a str,
    state: &'static str,
    priority: i32,
    labels: &'a std::collections::BTreeMap<String, String>,
    counts: &'a Counts,
    created_at_ms: Millis,
    started_at_ms: Option<Millis>,
    finished_at_ms: Option<Millis>,
}

#[derive(Serialize)]
struct Job<'a> {
    id: String,
    name: &'a str,
    index: u32,
    attempt: u32,
    reason: &'a str,
}

#[derive(Serialize)]
struct Body<'a> {
    event: &'static str,
    at_ms: Millis,
    batch: Batch<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<Job<'a>>,
}

fn batch(b: &BatchRecord) -> Batch<'_> {
    Batch {
        id: b.id.to_string(),
        name: &b.name,
        owner: &b.owner,
        state: names::batch_state(convert::batch_state(b.phase()) as i32).unwrap_or("unknown"),
        priority: b.priority,
        labels: &b.labels,
        counts: &b.counts,
        created_at_ms: b.created_ms,
        started_at_ms: b.started_ms,
        finished_at_ms: b.finished_ms,
    }
}

fn render(body: &Body<'_>) -> String {
    // plain data (strings, numbers, a string map) always serialises
    serde_json::to_string(body).unwrap_or_else(|e| unreachable!("a webhook body always serialises: {e}"))
}

/// `batch.finished`: the batch's final state and counts.
pub fn batch_finished(b: &BatchRecord, now: Millis) -> String {
    render(&Body { event: super::BATCH_FINISHED, at_ms: now, batch: batch(b), job: None })
}

/// `job.failed`: the job that failed for good, and the batch as it is then.
pub fn job_failed(b: &BatchRecord, j: &JobRecord, now: Millis) -> String {
    let reason = match &j.state {
        JobState::Failed { reason, .. } => reason.as_str(),
        _ => "",
    };
    let job = Job { id: j.id.to_string(), name: &j.name, index: j.index, attempt: j.attempt, reason };
    render(&Body { event: super::JOB_FAILED, at_ms: now, batch: batch(b), job: Some(job) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{fixtures, Notify, StateKind};

    #[test]
    fn bodies_carry_the_state_counts_and_the_failure() {
        let mut b = fixtures::batch(Notify::default());
        b.counts.total = 2;
        b.counts.add(StateKind::Succeeded);
        b.counts.add(StateKind::Failed);
        b.finished_ms = Some(9);
        let v: serde_json::Value = serde_json::from_str(&batch_finished(&b, 9)).unwrap();
        assert_eq!(v["event"], "batch.finished");
        assert_eq!(v["batch"]["state"], "failed");
        assert_eq!(v["batch"]["counts"]["succeeded"], 1);
        assert_eq!(v["batch"]["finished_at_ms"], 9);
        assert_eq!(v["batch"]["owner"], "alice");
        assert!(v.get("job").is_none());
        let mut j = fixtures::job(b.id, 1);
        j.state = JobState::Failed { worker: None, reason: "CUDA out of memory".into(), retryable: false, failed_dependency: None };
        let v: serde_json::Value = serde_json::from_str(&job_failed(&b, &j, 8)).unwrap();
        assert_eq!(v["event"], "job.failed");
        assert_eq!(v["job"]["reason"], "CUDA out of memory");
        assert_eq!(v["job"]["id"], j.id.to_string());
    }
}
