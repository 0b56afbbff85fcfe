//! `cancel` (a batch, or one job), `priority`, `pause`, `resume`, `retry` and
//! `delete`: changes to work already submitted.

use anyhow::Result;
use stylefarm_proto as pb;

use crate::cli::{connect, Cli};
use crate::output::{batch_state_name, job_state_name, print_json, BatchJson, CancelledJobJson, CancelledJson, PausedJson, RetriedJson};

pub async fn cancel(cli: &Cli, batch: Option<&str>, job: Option<&str>) -> Result<()> {
    let mut client = connect(cli).await?;
    if let Some(job) = job {
        let r = client.cancel_job(pb::CancelJobRequest { job_id: job.into() }).await?.into_inner();
        let outcome = cancel_outcome_name(r.outcome);
        if cli.json {
            return print_json(&CancelledJobJson { job_id: job.into(), outcome, state: job_state_name(r.state) });
        }
        match pb::CancelOutcome::try_from(r.outcome) {
            Ok(pb::CancelOutcome::Signalled) => println!("job {job} is running: told to stop at its next heartbeat"),
            Ok(pb::CancelOutcome::AlreadyFinished) => println!("job {job} had already ended ({})", job_state_name(r.state)),
            _ => println!("job {job} cancelled"),
        }
        return Ok(());
    }
    let batch = batch.unwrap_or_default();
    let r = client.cancel_batch(pb::CancelBatchRequest { batch_id: batch.into() }).await?.into_inner();
    if cli.json {
        return print_json(&CancelledJson { cancelled_queued: r.cancelled_queued, signalled_running: r.signalled_running });
    }
    println!("cancelled {} queued jobs; {} running jobs told to stop", r.cancelled_queued, r.signalled_running);
    Ok(())
}

pub async fn priority(cli: &Cli, batch: &str, priority: i32) -> Result<()> {
    let mut client = connect(cli).await?;
    let b = client.set_batch_priority(pb::SetBatchPriorityRequest { batch_id: batch.into(), priority }).await?.into_inner();
    if cli.json {
        return print_json(&BatchJson::of(&b));
    }
    println!("batch {} [{}] now has priority {}", b.id, batch_state_name(b.state), b.priority);
    Ok(())
}

pub async fn pause(cli: &Cli, batch: &str, mode: pb::PauseMode) -> Result<()> {
    let mut client = connect(cli).await?;
    let r = client.pause_batch(pb::PauseBatchRequest { batch_id: batch.into(), mode: mode as i32 }).await?.into_inner();
    let b = r.batch.unwrap_or_default();
    if cli.json {
        return print_json(&PausedJson { batch: BatchJson::of(&b), handed_back: r.handed_back });
    }
    match mode {
        pb::PauseMode::HandBackNow => println!("batch {} paused; {} running jobs handed back (no attempt spent)", b.id, r.handed_back),
        _ => println!("batch {} paused; {} running jobs finish", b.id, b.counts.unwrap_or_default().running),
    }
    Ok(())
}

pub async fn retry(cli: &Cli, batch: &str, job: Option<&str>) -> Result<()> {
    let mut client = connect(cli).await?;
    let r = client.retry(pb::RetryRequest { batch_id: batch.into(), job_id: job.unwrap_or_default().into() }).await?.into_inner();
    let b = r.batch.unwrap_or_default();
    if cli.json {
        return print_json(&RetriedJson { batch: BatchJson::of(&b), requeued: r.requeued });
    }
    println!("batch {} [{}]: {} jobs queued again", b.id, batch_state_name(b.state), r.requeued);
    Ok(())
}

pub async fn unblock(cli: &Cli, worker: &str, batch: &str) -> Result<()> {
    let mut client = connect(cli).await?;
    let r = client.unblock_worker(pb::UnblockWorkerRequest { worker_id: worker.into(), batch_id: batch.into() }).await?.into_inner();
    if cli.json {
        return print_json(&serde_json::json!({ "worker_id": worker, "batch_id": batch, "was_blocked": r.was_blocked }));
    }
    match r.was_blocked {
        true => println!("worker {worker} may take batch {batch}'s jobs again"),
        false => println!("worker {worker} was not blocked from batch {batch}; its failures there start over"),
    }
    Ok(())
}

pub async fn resume(cli: &Cli, batch: &str) -> Result<()> {
    let mut client = connect(cli).await?;
    let b = client.resume_batch(pb::ResumeBatchRequest { batch_id: batch.into() }).await?.into_inner();
    if cli.json {
        return print_json(&BatchJson::of(&b));
    }
    println!("batch {} resumed [{}]", b.id, batch_state_name(b.state));
    Ok(())
}

pub async fn delete(cli: &Cli, batch: &str, mode: pb::DeleteMode) -> Result<()> {
    let mut client = connect(cli).await?;
    let r = client.delete_batch(pb::DeleteBatchRequest { batch_id: batch.into(), mode: mode as i32 }).await?.into_inner();
    if cli.json {
        return print_json(&serde_json::json!({
            "batch_id": batch, "cancelled": r.cancelled, "jobs_removed": r.jobs_removed, "objects_removed": r.objects_removed,
        }));
    }
    println!("batch {batch} deleted: {} jobs removed ({} cancelled first), {} objects removed", r.jobs_removed, r.cancelled, r.objects_removed);
    Ok(())
}

fn cancel_outcome_name(outcome: i32) -> &'static str {
    match pb::CancelOutcome::try_from(outcome) {
        Ok(pb::CancelOutcome::Cancelled) => "cancelled",
        Ok(pb::CancelOutcome::Signalled) => "signalled",
        Ok(pb::CancelOutcome::AlreadyFinished) => "already_finished",
        _ => "unknown",
    }
}
