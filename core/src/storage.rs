//! Object storage through `object_store` URLs: `file:///dir`, `s3://bucket/prefix`
//! (endpoint, region and credentials from the usual `AWS_*` variables, e.g.
//! `AWS_ENDPOINT=http://127.0.0.1:9000` and `AWS_ALLOW_HTTP=true` for MinIO),
//! `gs://`, `az://`, `memory://`. The coordinator and the workers share it.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use url::Url;

/// Objects above this size are written with a multipart upload.
pub const MULTIPART_THRESHOLD: usize = 8 << 20;
const PART_SIZE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object {url} not found")]
    NotFound { url: String },
    #[error("object {url} is {size} bytes; the limit is {limit}")]
    TooLarge { url: String, size: u64, limit: u64 },
    #[error("object storage ({url}): {source}")]
    Store { url: String, source: object_store::Error },
}

impl StorageError {
    /// Whether trying again later could succeed (a missing object or a bad URL will not).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Store { .. })
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A store plus the path prefix its URL names.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The URL of the prefix, without a trailing slash.
    pub url: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location").field("url", &self.url).finish()
    }
}

/// `object_store` options from the environment: `AWS_*`, `GOOGLE_*`, `AZURE_*`.
fn env_options() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

impl Location {
    /// Opens a store root (where objects are written): a `file://` directory is created.
    pub fn open_root(text: &str) -> Result<Location> {
        Location::open(text, true)
    }

    /// The store and path a URL names, creating nothing.
    pub fn parse(text: &str) -> Result<Location> {
        Location::open(text, false)
    }

    fn open(text: &str, create_dir: bool) -> Result<Location> {
        let bad = |reason: String| StorageError::BadUrl { url: text.to_string(), reason };
        let trimmed = text.trim_end_matches('/');
        let url = Url::parse(trimmed).map_err(|e| bad(e.to_string()))?;
        if !crate::policy::known_scheme(url.scheme()) {
            return Err(bad(format!("scheme `{}` is not one of {}", url.scheme(), crate::policy::STORE_SCHEMES.join(", "))));
        }
        if url.scheme() == "file" && create_dir {
            let dir = url.to_file_path().map_err(|_| bad("not an absolute file path".into()))?;
            std::fs::create_dir_all(&dir).map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
        }
        let (store, prefix) = object_store::parse_url_opts(&url, env_options()).map_err(|e| bad(e.to_string()))?;
        Ok(Location { store: Arc::from(store), prefix, url: trimmed.to_string() })
    }

    /// The path of `key` under this location's prefix.
    pub fn path(&self, key: &str) -> Path {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_string()).collect();
        parts.extend(key.split('/').filter(|s| !s.is_empty()).map(str::to_string));
        Path::from_iter(parts)
    }

    /// The full URL of `key`.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}", self.url, key.trim_start_matches('/'))
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key);
        put_path(&self.store, &path, data).await.map_err(|source| StorageError::Store { url: self.url_of(key), source })
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let url = self.url_of(key);
        get_path(&self.store, &self.path(key), &url).await
    }

    /// An object's size and its bytes as they arrive, re-cut into pieces of
    /// at most `piece` bytes (the last may be shorter): nothing is held whole.
    pub async fn get_stream(&self, key: &str, piece: usize) -> Result<(u64, futures_util::stream::BoxStream<'static, Result<Bytes>>)> {
        use futures_util::StreamExt;
        let url = self.url_of(key);
        let result = match self.store.get(&self.path(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(StorageError::NotFound { url }),
            Err(source) => return Err(StorageError::Store { url, source }),
        };
        let size = result.meta.size;
        let piece = piece.max(1);
        let inner = result.into_stream();
        // (the store's stream, what is buffered, whether it ended)
        let stream = futures_util::stream::unfold((inner, bytes::BytesMut::new(), false, url), move |(mut inner, mut buf, mut ended, url)| async move {
            while !ended && buf.len() < piece {
                match inner.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(source)) => return Some((Err(StorageError::Store { url: url.clone(), source }), (inner, bytes::BytesMut::new(), true, url))),
                    None => ended = true,
                }
            }
            if buf.is_empty() {
                return None;
            }
            let out = buf.split_to(buf.len().min(piece)).freeze();
            Some((Ok(out), (inner, buf, ended, url)))
        });
        Ok((size, stream.boxed()))
    }

    /// Deletes every object under `key_prefix` (whole path segments:
    /// `batches/b3` never touches `batches/b30/`); returns how many went.
    /// Objects already gone count as deleted; deleting nothing is not an error.
    pub async fn delete_prefix(&self, key_prefix: &str) -> Result<u64> {
        use futures_util::StreamExt;
        let prefix = self.path(key_prefix);
        if prefix.parts().count() <= self.prefix.parts().count() {
            return Err(StorageError::BadUrl { url: self.url_of(key_prefix), reason: "refusing to delete the whole store".into() });
        }
        let store_err = |source| StorageError::Store { url: self.url_of(key_prefix), source };
        let locations = self.store.list(Some(&prefix)).map(|meta| meta.map(|m| m.location)).boxed();
        let mut deleted = self.store.delete_stream(locations);
        let mut count = 0;
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) => count += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(store_err(source)),
            }
        }
        Ok(count)
    }

    /// Deletes the one object at `key`; false if it was not there.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StorageError::Store { url: self.url_of(key), source }),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StorageError::Store { url: self.url_of(key), source }),
        }
    }
}

/// Writes in one request, or as a multipart upload above [`MULTIPART_THRESHOLD`].
pub async fn put_path(store: &Arc<dyn ObjectStore>, path: &Path, data: Bytes) -> object_store::Result<()> {
    if data.len() <= MULTIPART_THRESHOLD {
        store.put(path, PutPayload::from_bytes(data)).await?;
        return Ok(());
    }
    let upload = store.put_multipart(path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    writer.write(&data);
    writer.finish().await?;
    Ok(())
}

async fn get_path(store: &Arc<dyn ObjectStore>, path: &Path, url: &str) -> Result<Bytes> {
    match store.get(path).await {
        Ok(result) => result.bytes().await.map_err(|source| StorageError::Store { url: url.to_string(), source }),
        Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound { url: url.to_string() }),
        Err(source) => Err(StorageError::Store { url: url.to_string(), source }),
    }
}

/// Reads a whole object named by its full URL.
pub async fn get_url(url: &str) -> Result<Bytes> {
    let location = Location::parse(url)?;
    get_path(&location.store, &location.prefix, url).await
}

/// Reads a whole object named by its full URL, refusing it (without reading
/// further) once it is larger than `max_bytes`.
pub async fn get_url_capped(url: &str, max_bytes: u64) -> Result<Bytes> {
    use futures_util::StreamExt;
    let location = Location::parse(url)?;
    let store_err = |source| StorageError::Store { url: url.to_string(), source };
    let result = match location.store.get(&location.prefix).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => return Err(StorageError::NotFound { url: url.to_string() }),
        Err(source) => return Err(store_err(source)),
    };
    let too_big = |size: u64| StorageError::TooLarge { url: url.to_string(), size, limit: max_bytes };
    if result.meta.size > max_bytes {
        return Err(too_big(result.meta.size));
    }
    let mut data = Vec::with_capacity(result.meta.size as usize);
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(store_err)?;
        if data.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(too_big(data.len() as u64 + chunk.len() as u64));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_keys_compose() {
        let dir = std::env::temp_dir().join(format!("sf-storage-{}", std::process::id()));
        let url = format!("file://{}/", dir.display());
        let loc = Location::open_root(&url).unwrap();
        assert_eq!(loc.url_of("/images/sha256/ab"), format!("file://{}/images/sha256/ab", dir.display()));
        let rt = tokio_test_runtime();
        rt.block_on(async {
            loc.put("a/b.txt", Bytes::from_static(b"hi")).await.unwrap();
            assert_eq!(get_url(&loc.url_of("a/b.txt")).await.unwrap(), Bytes::from_static(b"hi"));
            assert!(matches!(loc.get("a/missing").await, Err(StorageError::NotFound { .. })));
            assert!(loc.exists("a/b.txt").await.unwrap());
            let big = Bytes::from(vec![7u8; MULTIPART_THRESHOLD + 1234]);
            loc.put("big.bin", big.clone()).await.unwrap();
            assert_eq!(loc.get("big.bin").await.unwrap(), big);
        });
        let e = Location::parse("ftp://x/y").unwrap_err().to_string();
        assert!(e.contains("ftp"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn deleting_a_prefix_takes_whole_segments_and_nothing_else() {
        let dir = tempfile_dir("prefix");
        let loc = Location::open_root(&format!("file://{}/root", dir.display())).unwrap();
        let rt = tokio_test_runtime();
        rt.block_on(async {
            for key in ["batches/b3/jobs/j1/a.png", "batches/b3/jobs/j2/b.png", "batches/b30/jobs/j9/c.png", "images/sha256/ab"] {
                loc.put(key, Bytes::from_static(b"x")).await.unwrap();
            }
            assert_eq!(loc.delete_prefix("batches/b3/").await.unwrap(), 2);
            assert!(!loc.exists("batches/b3/jobs/j1/a.png").await.unwrap());
            assert!(loc.exists("batches/b30/jobs/j9/c.png").await.unwrap(), "b30 is another batch");
            assert!(loc.exists("images/sha256/ab").await.unwrap());
            assert_eq!(loc.delete_prefix("batches/b3").await.unwrap(), 0, "again: nothing left, no error");
            assert!(loc.delete_prefix("/").await.is_err(), "never the whole store");
            loc.put("images/sha256/ab", Bytes::from_static(b"x")).await.unwrap();
            assert!(loc.delete("images/sha256/ab").await.unwrap());
            assert!(!loc.exists("images/sha256/ab").await.unwrap());
            assert!(!loc.delete("images/sha256/ab").await.unwrap(), "gone already: false, no error");
        });
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir(what: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sf-storage-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_object_streams_in_pieces_of_at_most_the_size_asked() {
        use futures_util::StreamExt;
        tokio_test_runtime().block_on(async {
            let location = Location::open_root("memory:///").unwrap();
            let data: Vec<u8> = (0..(5 << 19) + 7).map(|i| (i % 251) as u8).collect();
            location.put("a/big.bin", Bytes::from(data.clone())).await.unwrap();
            let (size, stream) = location.get_stream("a/big.bin", 1 << 20).await.unwrap();
            assert_eq!(size, data.len() as u64);
            let pieces: Vec<Bytes> = stream.map(|p| p.unwrap()).collect().await;
            assert_eq!(pieces.iter().map(Bytes::len).collect::<Vec<_>>(), [1 << 20, 1 << 20, (1 << 19) + 7]);
            assert_eq!(pieces.concat(), data);
            location.put("a/empty", Bytes::new()).await.unwrap();
            let (size, stream) = location.get_stream("a/empty", 1 << 20).await.unwrap();
            assert_eq!((size, stream.count().await), (0, 0));
            assert!(matches!(location.get_stream("a/none", 1).await.map(|_| ()), Err(StorageError::NotFound { .. })));
        });
    }

    fn tokio_test_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }
}
