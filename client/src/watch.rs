//! `stylefarm watch`: a progress bar per job (the most recent ones when a batch
//! is large), with ETA and the current loss, from the WatchBatch stream.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stylefarm_core::retry::Backoff;
use stylefarm_proto as pb;

use crate::output::{batch_state_name, counts_text, job_state_name};

/// Bars shown at once; the rest are summed up in the header.
const MAX_BARS: usize = 12;

fn counts_line(batch: &pb::Batch) -> String {
    format!("batch {} [{}]: {}", batch.id, batch_state_name(batch.state), counts_text(batch))
}

struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    bars: BTreeMap<String, ProgressBar>,
    style: ProgressStyle,
    quiet: bool,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let multi = MultiProgress::with_draw_target(target);
        let header = multi.add(ProgressBar::new_spinner());
        header.enable_steady_tick(Duration::from_millis(250));
        let style = ProgressStyle::with_template("{prefix:<28} [{bar:30}] {pos:>5}/{len:<5} {msg} ETA {eta}").expect("valid template").progress_chars("=> ");
        Bars { multi, header, bars: BTreeMap::new(), style, quiet }
    }

    fn update(&mut self, job: &pb::Job) {
        let running = job.state == pb::JobState::Running as i32;
        if !self.bars.contains_key(&job.id) {
            if !running || self.bars.len() >= MAX_BARS {
                if job.state != pb::JobState::Queued as i32 && job.state != pb::JobState::Running as i32 && !self.quiet {
                    self.multi.suspend(|| eprintln!("{} {} {}{}", job.id, job.name, job_state_name(job.state), error_suffix(job)));
                }
                return;
            }
            let bar = self.multi.add(ProgressBar::new(1));
            bar.set_style(self.style.clone());
            bar.set_prefix(format!("{} {}", job.id, truncate(&job.name, 20)));
            self.bars.insert(job.id.clone(), bar);
        }
        let bar = &self.bars[&job.id];
        if let Some(p) = &job.progress {
            bar.set_length(p.total_iterations.max(1) as u64);
            bar.set_position(p.iteration as u64);
            let loss = p.latest.as_ref().map(|r| format!("loss {:.3e}", r.total)).unwrap_or_default();
            bar.set_message(format!("scale {}/{} {loss}", p.scale + 1, p.scales.max(1)));
        }
        if !running {
            bar.finish_with_message(format!("{}{}", job_state_name(job.state), error_suffix(job)));
            let bar = self.bars.remove(&job.id).expect("present");
            self.multi.remove(&bar);
            if !self.quiet {
                self.multi.suspend(|| eprintln!("{} {} {}{}", job.id, job.name, job_state_name(job.state), error_suffix(job)));
            }
        }
    }
}

fn error_suffix(job: &pb::Job) -> String {
    if job.error.is_empty() || job.state == pb::JobState::Succeeded as i32 {
        String::new()
    } else {
        format!(": {}", job.error)
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        text.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// How long a watcher keeps trying to reach a coordinator that went away
/// (a restart, a rolling update) before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// Whether a failed call or stream may succeed against a restarted coordinator.
fn transient(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
}

/// The header: the batch's counts, and a video batch's frames below them.
fn header(batch: &pb::Batch, frames: &str) -> String {
    if frames.is_empty() {
        counts_line(batch)
    } else {
        format!("{}\n{frames}", counts_line(batch))
    }
}

/// Follows the batch to its end; returns its final record. When the
/// coordinator goes away (a restart, SIGTERM), the watch reconnects with
/// backoff and carries on from the fresh snapshot the coordinator sends.
pub async fn watch(client: &mut stylefarm_proto::connect::Coordinator, batch_id: &str, quiet: bool) -> Result<pb::Batch> {
    let mut bars = Bars::new(quiet);
    let mut frames = crate::frames::Follow::default();
    let mut frame_line = String::new();
    let mut last: Option<pb::Batch> = None;
    let mut outage: Option<std::time::Instant> = None;
    let mut backoff = Backoff::default();
    'watch: loop {
        let request = pb::WatchBatchRequest { batch_id: batch_id.to_string() };
        let ended = match client.watch_batch(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            // on stderr even with --json (stdout stays the machine's)
                            if outage.take().is_some() {
                                bars.multi.suspend(|| eprintln!("reconnected to the coordinator"));
                            }
                            backoff.reset();
                            if let Some(batch) = &event.batch {
                                last = Some(batch.clone());
                            }
                            if let Some(job) = &event.job {
                                bars.update(job);
                                if let Some(strip) = frames.update(job) {
                                    frame_line = strip;
                                }
                            }
                            if let Some(batch) = &last {
                                bars.header.set_message(header(batch, &frame_line));
                            }
                            if event.kind == pb::EventKind::BatchFinished as i32 {
                                break 'watch;
                            }
                        }
                        // a stream that ends without the batch's end: the coordinator stopped
                        Ok(None) => break tonic::Status::unavailable("the watch stream ended"),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        if !transient(&ended) {
            return Err(ended.into());
        }
        let since = *outage.get_or_insert_with(|| {
            bars.multi.suspend(|| eprintln!("lost the coordinator ({}); reconnecting", ended.message()));
            std::time::Instant::now()
        });
        if since.elapsed() > RECONNECT_FOR {
            return Err(anyhow::Error::new(ended).context(format!("the coordinator has been unreachable for {} s", RECONNECT_FOR.as_secs())));
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
    bars.header.finish_and_clear();
    let batch = match last {
        Some(b) if b.finished_at_ms != 0 => b,
        _ => client.get_batch(pb::GetBatchRequest { batch_id: batch_id.to_string(), include_jobs: false }).await?.into_inner().batch.unwrap_or_default(),
    };
    if !quiet {
        eprintln!("{}", counts_line(&batch));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_are_retried() {
        assert!(transient(&tonic::Status::unavailable("down")));
        assert!(transient(&tonic::Status::unknown("transport error")));
        assert!(!transient(&tonic::Status::not_found("no batch")));
        assert!(!transient(&tonic::Status::permission_denied("no")));
        assert!(!transient(&tonic::Status::unauthenticated("no")));
    }
}
