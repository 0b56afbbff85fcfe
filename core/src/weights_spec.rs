//! Which VGG-16 weights a job asks for, and the normalisations the engine knows.

use std::path::PathBuf;

/// Which weights a job asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsSpec {
    /// The Keras/caffe ImageNet VGG-16 from the cache, fetched when missing.
    Default,
    /// A local torchvision-layout safetensors file.
    Path(PathBuf),
    /// A torchvision-layout safetensors file at an http(s) URL, cached by URL.
    Url { url: String, sha256: Option<String> },
}

impl WeightsSpec {
    /// `default`, a path, or an `http(s)://` URL (optionally `URL#sha256=HEX`).
    pub fn parse(text: &str) -> WeightsSpec {
        if text.is_empty() || text == "default" {
            return WeightsSpec::Default;
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            let (url, sha256) = match text.split_once("#sha256=") {
                Some((url, sha)) => (url.to_string(), Some(sha.to_ascii_lowercase())),
                None => (text.to_string(), None),
            };
            return WeightsSpec::Url { url, sha256 };
        }
        WeightsSpec::Path(PathBuf::from(text))
    }
}

/// Names accepted for the `normalization` override.
pub const NORMALIZATIONS: [&str; 2] = ["caffe", "torchvision"];
