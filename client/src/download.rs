//! Fetching a batch's outputs: every succeeded job's files streamed to
//! `OUT/JOBID-NAME/`, written as the chunks arrive; names from the network
//! never leave that folder. A video's clip also lands at `OUT/NAME.mp4`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use stylefarm_proto as pb;
use stylefarm_proto::connect::Coordinator;
use tokio::io::AsyncWriteExt;

use crate::error::{ClientError, Result};

/// What a fetch wrote.
#[derive(Debug, Default)]
pub struct Fetched {
    pub files: Vec<PathBuf>,
    /// Succeeded jobs whose outputs were fetched.
    pub jobs: usize,
    /// Jobs with no outputs (not succeeded).
    pub skipped: usize,
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Write { path: path.to_path_buf(), source }
}

pub async fn fetch(client: &mut Coordinator, batch_id: &str, out: &Path) -> Result<Fetched> {
    let response = client.get_batch(pb::GetBatchRequest { batch_id: batch_id.to_string(), include_jobs: true }).await?.into_inner();
    let mut fetched = Fetched::default();
    for job in &response.jobs {
        if job.state != pb::JobState::Succeeded as i32 {
            fetched.skipped += 1;
            continue;
        }
        fetched.jobs += 1;
        let dir = out.join(format!("{}-{}", job.id, sanitize(&job.name)));
        tokio::fs::create_dir_all(&dir).await.map_err(write_error(&dir))?;
        let mut stream = client.download_outputs(pb::DownloadOutputsRequest { job_id: job.id.clone() }).await?.into_inner();
        let mut open: HashMap<String, tokio::fs::File> = HashMap::new();
        while let Some(chunk) = stream.message().await? {
            let name = sanitize_path(&chunk.name);
            if name.is_empty() {
                continue;
            }
            let path = dir.join(&name);
            if !open.contains_key(&name) {
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(write_error(parent))?;
                }
                let file = tokio::fs::File::create(&path).await.map_err(write_error(&path))?;
                open.insert(name.clone(), file);
            }
            let file = open.get_mut(&name).expect("opened above");
            file.write_all(&chunk.data).await.map_err(write_error(&path))?;
            if chunk.last {
                let mut file = open.remove(&name).expect("opened above");
                file.flush().await.map_err(write_error(&path))?;
                // a video batch's clip also lands at the top: out/NAME-stylised.mp4
                if name.ends_with(".mp4") && !name.contains('/') {
                    let top = out.join(&name);
                    tokio::fs::copy(&path, &top).await.map_err(write_error(&top))?;
                    fetched.files.push(top);
                }
                fetched.files.push(path);
            }
        }
    }
    Ok(fetched)
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Keeps sub-folders (snapshots/) but never leaves the job's folder.
fn sanitize_path(name: &str) -> String {
    name.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..").map(sanitize).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_network_stay_inside_the_job_folder() {
        assert_eq!(sanitize_path("../../etc/passwd"), "etc/passwd");
        assert_eq!(sanitize_path("snapshots/./it-0010.png"), "snapshots/it-0010.png");
        assert_eq!(sanitize_path("/abs/x y.png"), "abs/x_y.png");
        assert_eq!(sanitize("chelsea-x-retina ☃"), "chelsea-x-retina__");
    }
}
