//! Inputs: local images go up once (hashed here, asked about with StatImages,
//! and only the missing ones streamed, content-addressed by SHA-256); store
//! URLs are used as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use stylefarm_proto as pb;
use stylefarm_proto::connect::Coordinator;

use crate::error::{ClientError, Result};

const CHUNK: usize = 1 << 20;

/// Where an input comes from: a local file, or an object-store URL used as is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    File(PathBuf),
    Url(String),
}

impl Input {
    /// A URL of a scheme the farm's storage knows (core's policy), else a local path.
    pub fn parse(text: &str) -> Input {
        if stylefarm_core::schemes::is_store_url(text) {
            Input::Url(text.to_string())
        } else {
            Input::File(PathBuf::from(text))
        }
    }
}

/// What resolving a submit's inputs did.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Each input's reference for the request.
    pub refs: BTreeMap<Input, pb::ImageRef>,
    /// The local files sent now, with what the coordinator made of each.
    pub uploaded: Vec<(PathBuf, pb::UploadImageResponse)>,
    /// Distinct local files the coordinator already had.
    pub already_present: usize,
}

/// Uploads every distinct local file that the coordinator lacks; returns the
/// reference of each input. `is_video` says which are clips (probed by the
/// coordinator instead of decoded as images).
pub async fn resolve(client: &mut Coordinator, inputs: &[Input], is_video: &dyn Fn(&Input) -> bool) -> Result<Resolved> {
    let mut resolved = Resolved::default();
    let mut local: BTreeMap<String, (PathBuf, Bytes, bool)> = BTreeMap::new();
    for input in inputs {
        if resolved.refs.contains_key(input) {
            continue;
        }
        match input {
            Input::Url(url) => {
                resolved.refs.insert(input.clone(), pb::ImageRef { source: Some(pb::image_ref::Source::Url(url.clone())) });
            }
            Input::File(path) => {
                let data = read(path)?;
                let sha = hex::encode(Sha256::digest(&data));
                resolved.refs.insert(input.clone(), pb::ImageRef { source: Some(pb::image_ref::Source::Sha256(sha.clone())) });
                local.entry(sha).or_insert((path.clone(), data, is_video(input)));
            }
        }
    }
    if local.is_empty() {
        return Ok(resolved);
    }
    let missing = client.stat_images(pb::StatImagesRequest { sha256: local.keys().cloned().collect() }).await?.into_inner().missing;
    for sha in &missing {
        let (path, data, video) = &local[sha];
        let response = upload(client, path, data.clone(), sha, *video).await?;
        resolved.uploaded.push((path.clone(), response));
    }
    resolved.already_present = local.len() - missing.len();
    Ok(resolved)
}

fn read(path: &Path) -> Result<Bytes> {
    let data = std::fs::read(path).map_err(|e| ClientError::Input(format!("cannot read {}: {e}", path.display())))?;
    Ok(Bytes::from(data))
}

async fn upload(client: &mut Coordinator, path: &Path, data: Bytes, sha: &str, video: bool) -> Result<pb::UploadImageResponse> {
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
    let response = client.upload_image(tokio_stream::iter(messages)).await.map_err(|status| {
        let message = format!("uploading {}: {}", path.display(), status.message());
        ClientError::Status(tonic::Status::new(status.code(), message))
    })?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_the_schemes_the_store_knows_and_the_rest_are_paths() {
        assert_eq!(Input::parse("s3://bucket/a.png"), Input::Url("s3://bucket/a.png".into()));
        assert_eq!(Input::parse("http://host/a.png"), Input::Url("http://host/a.png".into()));
        assert_eq!(Input::parse("photos/a.png"), Input::File(PathBuf::from("photos/a.png")));
        assert_eq!(Input::parse("ftp://host/a.png"), Input::File(PathBuf::from("ftp://host/a.png")));
    }
}
