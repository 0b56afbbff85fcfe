//! `stylefarm fetch BATCH --out DIR`: every succeeded job's outputs, streamed
//! to `DIR/JOB-NAME/`; names from the network never leave that folder.

use std::collections::HashMap;

use anyhow::{Context, Result};
use stylefarm_proto as pb;

use crate::cli::{connect, Cli};
use crate::output::print_json;

pub async fn fetch(cli: &Cli, batch: &str, out: &std::path::Path) -> Result<()> {
    let mut client = connect(cli).await?;
    let response = client.get_batch(pb::GetBatchRequest { batch_id: batch.to_string(), include_jobs: true }).await?.into_inner();
    let mut fetched = Vec::new();
    for job in response.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32) {
        let dir = out.join(format!("{}-{}", job.id, sanitize(&job.name)));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut stream = client.download_outputs(pb::DownloadOutputsRequest { job_id: job.id.clone() }).await?.into_inner();
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        while let Some(chunk) = stream.message().await? {
            let name = sanitize_path(&chunk.name);
            let buffer = files.entry(name.clone()).or_default();
            buffer.extend_from_slice(&chunk.data);
            if chunk.last {
                let path = dir.join(&name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let data = files.remove(&name).unwrap_or_default();
                std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
                // a video batch's clip also lands at the top: out/NAME-stylised.mp4
                if name.ends_with(".mp4") && !name.contains('/') {
                    let top = out.join(&name);
                    std::fs::write(&top, &data).with_context(|| format!("writing {}", top.display()))?;
                    fetched.push(top);
                }
                fetched.push(path);
            }
        }
    }
    if cli.json {
        return print_json(&fetched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    }
    for path in &fetched {
        println!("{}", path.display());
    }
    let skipped = response.jobs.iter().filter(|j| j.state != pb::JobState::Succeeded as i32).count();
    eprintln!(
        "{} files from {} succeeded jobs{}",
        fetched.len(),
        response.jobs.len() - skipped,
        if skipped > 0 { format!("; {skipped} jobs have no outputs") } else { String::new() }
    );
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Keeps sub-folders (snapshots/) but never leaves the job's folder.
fn sanitize_path(name: &str) -> String {
    name.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..").map(sanitize).collect::<Vec<_>>().join("/")
}
