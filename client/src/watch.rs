//! `stylefarm watch`: a progress bar per job (the most recent ones when a batch
//! is large), with ETA and the current loss, from the library's watch stream.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stylefarm_client::{Client, Watched};
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

/// The header: the batch's counts, and a video batch's frames below them.
fn header(batch: &pb::Batch, frames: &str) -> String {
    if frames.is_empty() {
        counts_line(batch)
    } else {
        format!("{}\n{frames}", counts_line(batch))
    }
}

/// Follows the batch to its end with bars (the library's reconnecting watch,
/// [`Client::follow`]); returns its final record.
pub async fn watch(client: &mut Client, batch_id: &str, quiet: bool) -> Result<pb::Batch> {
    let mut bars = Bars::new(quiet);
    let mut frames = crate::frames::Follow::default();
    let mut frame_line = String::new();
    let batch = client
        .follow(batch_id, |item| match item {
            // on stderr even with --json (stdout stays the machine's)
            Watched::Lost(status) => bars.multi.suspend(|| eprintln!("lost the coordinator ({}); reconnecting", status.message())),
            Watched::Reconnected => bars.multi.suspend(|| eprintln!("reconnected to the coordinator")),
            Watched::Event(event) => {
                if let Some(job) = &event.job {
                    bars.update(job);
                    if let Some(strip) = frames.update(job) {
                        frame_line = strip;
                    }
                }
                if let Some(batch) = &event.batch {
                    bars.header.set_message(header(batch, &frame_line));
                }
            }
        })
        .await?;
    bars.header.finish_and_clear();
    if !quiet {
        eprintln!("{}", counts_line(&batch));
    }
    Ok(batch)
}
