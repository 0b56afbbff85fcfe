//! Job inputs from object storage, cached on local disk by SHA-256 across jobs
//! (a style used by a whole batch is downloaded once per worker).

use std::path::PathBuf;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use stylefarm_core::retry::Backoff;
use stylefarm_core::storage::{get_url_capped, StorageError};

/// Why an input could not be had.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Missing object, bad URL, wrong hash: retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// Storage or network trouble that outlasted the retries.
    #[error("{0}")]
    Transient(String),
}

/// Inputs cached by SHA-256; every download is capped at `max_bytes` and a
/// hashed input is checked before it is kept.
pub struct InputCache {
    dir: PathBuf,
    retries: u32,
    max_bytes: u64,
    /// Counts downloaded bytes (`--metrics-listen`).
    downloaded: Option<metrics::Counter>,
}

impl InputCache {
    pub fn new(dir: PathBuf, max_bytes: u64, downloaded: Option<metrics::Counter>) -> InputCache {
        InputCache { dir, retries: 4, max_bytes, downloaded }
    }

    /// The bytes of `url`; `sha256` (if known) is checked and keys the cache.
    pub async fn fetch(&self, role: &str, url: &str, sha256: &str) -> Result<Bytes, InputError> {
        let cached = (!sha256.is_empty()).then(|| self.dir.join("sha256").join(sha256));
        if let Some(path) = &cached {
            if let Ok(data) = tokio::fs::read(path).await {
                if hex::encode(Sha256::digest(&data)) == sha256 {
                    return Ok(Bytes::from(data));
                }
                tracing::warn!(path = %path.display(), "cached input is corrupt; fetching again");
            }
        }
        let data = self.download(role, url).await?;
        if let Some(path) = cached {
            let actual = hex::encode(Sha256::digest(&data));
            if actual != sha256 {
                return Err(InputError::Permanent(format!("{role} image {url}: SHA-256 is {actual}, expected {sha256}")));
            }
            if let Err(e) = store_atomically(&path, &data).await {
                tracing::warn!(path = %path.display(), error = %e, "cannot cache an input");
            }
        }
        Ok(data)
    }

    async fn download(&self, role: &str, url: &str) -> Result<Bytes, InputError> {
        let mut backoff = Backoff::default();
        for attempt in 1..=self.retries {
            match get_url_capped(url, self.max_bytes).await {
                Ok(data) => {
                    if let Some(counter) = &self.downloaded {
                        counter.increment(data.len() as u64);
                    }
                    return Ok(data);
                }
                Err(e @ (StorageError::NotFound { .. } | StorageError::BadUrl { .. } | StorageError::TooLarge { .. })) => {
                    return Err(InputError::Permanent(format!("{role} image: {e}")));
                }
                Err(e) if attempt == self.retries => return Err(InputError::Transient(format!("{role} image: {e}"))),
                Err(e) => {
                    tracing::warn!(url, attempt, error = %e, "input download failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }
}

async fn store_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, path).await
}
