//! `stylefarm status ID` (a batch with its jobs, or one job) and `stylefarm list`.

use anyhow::Result;
use stylefarm_proto as pb;

use crate::cli::{connect, Cli};
use crate::output::{batch_state_name, counts_text, job_state_name, print_json, BatchJson, FrameJson, JobJson};
use crate::{frames, tiles};
use stylefarm_client::ClientError;

pub async fn status(cli: &Cli, id: &str) -> Result<()> {
    let mut client = connect(cli).await?;
    if id.starts_with('j') {
        let job = client.get_job(pb::GetJobRequest { job_id: id.to_string() }).await?.into_inner();
        if cli.json {
            return print_json(&JobJson::of(&job));
        }
        println!("{} {} [{}] attempt {}/{} worker {}", job.id, job.name, job_state_name(job.state), job.attempt, job.max_attempts, job.worker_id);
        if !job.error.is_empty() {
            println!("  error: {}", job.error);
        }
        if !job.waiting_reason.is_empty() {
            println!("  waiting: {}", job.waiting_reason);
        }
        if let Some(r) = &job.result {
            println!("  final loss {:.4e} after {} iterations, {:.1} s on {}", r.final_loss, r.iterations, r.engine_ms / 1e3, r.device);
            for o in &r.outputs {
                println!("  {} ({} bytes)", o.key, o.size_bytes);
            }
        }
        return Ok(());
    }
    let response = client.get_batch(pb::GetBatchRequest { batch_id: id.to_string(), include_jobs: true }).await?.into_inner();
    let batch = response.batch.unwrap_or_default();
    if cli.json {
        let frames: Vec<FrameJson> = stylefarm_proto::frames::frame_board(&response.jobs)
            .iter()
            .map(|c| FrameJson { frame: c.frame + 1, state: c.state.as_str(), job: &response.jobs[c.job].id })
            .collect();
        let jobs: Vec<JobJson> = response.jobs.iter().map(JobJson::of).collect();
        return print_json(&serde_json::json!({"batch": BatchJson::of(&batch), "jobs": jobs, "frames": frames, "tiles": tiles::json(&response.jobs)}));
    }
    println!("batch {} {:?} [{}] priority {}: {}", batch.id, batch.name, batch_state_name(batch.state), batch.priority, counts_text(&batch));
    if !batch.requires.is_empty() {
        println!("  requires workers with {}", batch.requires.join(", "));
    }
    if !batch.notify.is_empty() {
        println!("  notifies {} on {}", batch.notify.join(", "), crate::output::notify_on_name(batch.notify_on));
    }
    for job in &response.jobs {
        let detail = match (&job.progress, &job.result) {
            (_, Some(r)) => format!("loss {:.3e}", r.final_loss),
            (Some(p), None) => format!("{}/{} loss {:.3e}", p.iteration, p.total_iterations, p.latest.as_ref().map(|r| r.total).unwrap_or(f64::NAN)),
            _ => String::new(),
        };
        let error = match (job.error.is_empty(), job.waiting_reason.is_empty()) {
            (false, _) => format!(" ({})", job.error),
            (true, false) => format!(" (waiting: {})", job.waiting_reason),
            _ => String::new(),
        };
        println!("  {:<8} {:<36} {:<10} attempt {} {}{}", job.id, job.name, job_state_name(job.state), job.attempt, detail, error);
    }
    if let Some(frames) = frames::view(&response.jobs) {
        println!("{frames}");
    }
    if let Some(tiles) = tiles::view(&response.jobs) {
        println!("{tiles}");
    }
    Ok(())
}

fn parse_state(text: &str) -> Result<i32> {
    let state =
        pb::names::parse_batch_state(text).ok_or_else(|| ClientError::Input(format!("--state `{text}` is not one of {}", pb::names::batch_state_names())))?;
    Ok(state as i32)
}

pub async fn list(cli: &Cli, states: &[String], limit: u32) -> Result<()> {
    let states = states.iter().map(|s| parse_state(s)).collect::<Result<Vec<_>>>()?;
    let mut client = connect(cli).await?;
    let mut batches = Vec::new();
    let mut token = String::new();
    while batches.len() < limit as usize {
        let page = client
            .list_batches(pb::ListBatchesRequest { page_size: (limit as usize - batches.len()).min(1000) as u32, page_token: token, states: states.clone() })
            .await?
            .into_inner();
        batches.extend(page.batches);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if cli.json {
        return print_json(&batches.iter().map(BatchJson::of).collect::<Vec<_>>());
    }
    for b in &batches {
        let c = b.counts.unwrap_or_default();
        println!("{:<8} {:<10} {:>6} jobs {:>6} done {:>4} failed  {}", b.id, batch_state_name(b.state), c.total, c.succeeded, c.failed, b.name);
    }
    Ok(())
}
