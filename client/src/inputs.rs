//! Local images go up once: hashed here, asked about with StatImages, and only
//! the missing ones are streamed (content-addressed by SHA-256).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use stylefarm_proto as pb;

use crate::exit::Failure;

const CHUNK: usize = 1 << 20;

/// Where an input comes from: a local file, or an object-store URL used as is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    File(PathBuf),
    Url(String),
}

impl Input {
    pub fn parse(text: &str) -> Input {
        let is_url = ["s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "file://", "memory://", "https://"]
            .iter()
            .any(|scheme| text.starts_with(scheme));
        if is_url {
            Input::Url(text.to_string())
        } else {
            Input::File(PathBuf::from(text))
        }
    }
}

/// Uploads every distinct local file that the coordinator lacks; returns the
/// reference of each input. `is_video` says which are clips (probed by the
/// coordinator instead of decoded as images).
pub async fn resolve_inputs(
    client: &mut stylefarm_proto::connect::Coordinator,
    inputs: &[Input],
    is_video: &dyn Fn(&Input) -> bool,
    quiet: bool,
) -> Result<BTreeMap<Input, pb::ImageRef>> {
    let mut refs = BTreeMap::new();
    let mut local: BTreeMap<String, (PathBuf, Bytes, bool)> = BTreeMap::new();
    for input in inputs {
        if refs.contains_key(input) {
            continue;
        }
        match input {
            Input::Url(url) => {
                refs.insert(input.clone(), pb::ImageRef { source: Some(pb::image_ref::Source::Url(url.clone())) });
            }
            Input::File(path) => {
                let data = read(path)?;
                let sha = hex::encode(Sha256::digest(&data));
                refs.insert(input.clone(), pb::ImageRef { source: Some(pb::image_ref::Source::Sha256(sha.clone())) });
                local.entry(sha).or_insert((path.clone(), data, is_video(input)));
            }
        }
    }
    if local.is_empty() {
        return Ok(refs);
    }
    let missing = client.stat_images(pb::StatImagesRequest { sha256: local.keys().cloned().collect() }).await?.into_inner().missing;
    for sha in &missing {
        let (path, data, video) = &local[sha];
        let response = upload(client, path, data.clone(), sha, *video).await?;
        if !quiet {
            eprintln!("uploaded {} ({}x{} {}, {} bytes)", path.display(), response.width, response.height, response.format, response.size_bytes);
        }
    }
    if !quiet && missing.len() < local.len() {
        eprintln!("{} image(s) already on the coordinator", local.len() - missing.len());
    }
    Ok(refs)
}

fn read(path: &Path) -> Result<Bytes> {
    let data = std::fs::read(path).map_err(|e| Failure::Input(format!("cannot read {}: {e}", path.display())))?;
    Ok(Bytes::from(data))
}

async fn upload(client: &mut stylefarm_proto::connect::Coordinator, path: &Path, data: Bytes, sha: &str, video: bool) -> Result<pb::UploadImageResponse> {
    let header = pb::UploadHeader {
        filename: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        size_bytes: data.len() as u64,
        sha256: sha.to_string(),
        video,
    };
    let mut messages = vec![pb::UploadImageRequest { part: Some(pb::upload_image_request::Part::Header(header)) }];
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + CHUNK).min(data.len());
        messages.push(pb::UploadImageRequest { part: Some(pb::upload_image_request::Part::Chunk(data.slice(offset..end))) });
        offset = end;
    }
    let response = client.upload_image(tokio_stream::iter(messages)).await.with_context(|| format!("uploading {}", path.display()))?;
    Ok(response.into_inner())
}
