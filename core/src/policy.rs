//! The one policy for what a job may point a worker at, shared by the
//! coordinator (checked at submit) and the storage layer (which schemes it
//! opens): the URL schemes the farm knows, which of them a user may name, and
//! the caps on what a worker downloads.
//!
//! A user's input is an upload (kept in the coordinator's store) or an object
//! inside the coordinator's store URL; anything else (`file://` elsewhere,
//! `http(s)://`, another bucket) is refused unless the operator allowlisted a
//! prefix. Weights come from what the operator configured, never from a URL a
//! user typed.

use url::Url;

pub use crate::schemes::{known_scheme, STORE_SCHEMES};

/// Largest input image a worker downloads unless configured otherwise (bytes).
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 64 << 20;

/// Which input URLs a user may submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPolicy {
    /// The store's own prefix and the operator's allowlist, as normalised URLs ending in `/`.
    store: String,
    allowlist: Vec<String>,
}

impl InputPolicy {
    /// `store_url` is the coordinator's store; `extra` the operator's allowlist.
    pub fn new(store_url: &str, extra: &[String]) -> Result<InputPolicy, String> {
        let allowlist = extra.iter().map(|prefix| normalise_prefix(prefix)).collect::<Result<Vec<_>, _>>()?;
        Ok(InputPolicy { store: normalise_prefix(store_url)?, allowlist })
    }

    /// Checks a user-supplied input URL; the error says why and what is allowed.
    pub fn check(&self, text: &str) -> Result<(), String> {
        self.classify(text).map(|_| ())
    }

    /// Where an allowed input URL points: an object of the coordinator's
    /// store (whose key the coordinator checks against the caller: their own
    /// upload or batch), or an operator-allowlisted prefix. The refusal never
    /// names the store's URL (only the operator's published allowlist).
    pub fn classify(&self, text: &str) -> Result<InputPlace, String> {
        let url = Url::parse(text).map_err(|e| format!("`{text}`: {e}"))?;
        if !known_scheme(url.scheme()) {
            return Err(format!("scheme `{}` is not one the farm reads ({})", url.scheme(), STORE_SCHEMES.join(", ")));
        }
        if url.path().split('/').any(|s| s == ".." || s == "." || s.contains("%2e%2e") || s.contains("%2E%2E")) {
            return Err(format!("`{text}` contains a `..` or `.` path segment"));
        }
        if url.username() != "" || url.password().is_some() {
            return Err(format!("`{text}` carries credentials; the farm uses its own"));
        }
        let normal = url.as_str();
        if self.allowlist.iter().any(|prefix| normal.starts_with(prefix.as_str())) {
            return Ok(InputPlace::Allowlisted);
        }
        if let Some(key) = normal.strip_prefix(self.store.as_str()) {
            return Ok(InputPlace::Store { key: key.to_string() });
        }
        Err(refusal(text, &self.allowlist))
    }

    /// The refusal for an input a caller may not read: the same words for a URL
    /// outside the store and for another's object inside it (no oracle).
    pub fn refuse(&self, text: &str) -> String {
        refusal(text, &self.allowlist)
    }
}

/// Where an allowed input points ([`InputPolicy::classify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputPlace {
    /// Inside the coordinator's store, at this key (`batches/b7/jobs/j3/attempt-1/output.png`).
    Store { key: String },
    /// Under a prefix the operator allowlisted.
    Allowlisted,
}

fn refusal(text: &str, allowlist: &[String]) -> String {
    let also = if allowlist.is_empty() { String::new() } else { format!(", or a URL under {}", allowlist.join(" or ")) };
    format!("`{text}` is not an input you may use: upload the file, or name an output of one of your own batches{also}")
}

/// A prefix as a parsed, normalised URL that ends in `/` (so `s3://b/in`
/// does not allow `s3://b/input-secret`).
fn normalise_prefix(text: &str) -> Result<String, String> {
    let url = Url::parse(text).map_err(|e| format!("allowlisted prefix `{text}`: {e}"))?;
    if !known_scheme(url.scheme()) {
        return Err(format!("allowlisted prefix `{text}`: unknown scheme `{}`", url.scheme()));
    }
    let mut s = url.as_str().to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_store_and_allowlisted_prefixes_pass() {
        let p = InputPolicy::new("file:///data/objects", &["s3://photos/in".into()]).unwrap();
        assert!(p.check("file:///data/objects/images/a.png").is_ok());
        assert!(p.check("s3://photos/in/cat.jpg").is_ok());
        for bad in [
            "file:///etc/passwd",
            "file:///data/objects-other/x.png",
            "file:///data/objects/../../etc/passwd",
            "https://example.com/a.png",
            "http://169.254.169.254/latest/meta-data",
            "s3://photos/input-secret/a.png",
            "s3://other-bucket/in/a.png",
            "ftp://x/y.png",
            "not a url",
        ] {
            let e = p.check(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        let e = p.check("https://example.com/a.png").unwrap_err();
        assert!(e.contains("upload the file") && e.contains("s3://photos/in/"), "{e}");
        assert!(!e.contains("file:///data/objects"), "the store's URL is not shown: {e}");
        assert_eq!(
            p.classify("file:///data/objects/batches/b7/jobs/j1/attempt-1/output.png"),
            Ok(InputPlace::Store { key: "batches/b7/jobs/j1/attempt-1/output.png".into() })
        );
        assert_eq!(p.classify("s3://photos/in/cat.jpg"), Ok(InputPlace::Allowlisted));
        assert_eq!(p.refuse("file:///data/objects/x.png"), p.check("file:///etc/x.png").unwrap_err().replace("/etc/", "/data/objects/"));
        assert!(InputPolicy::new("ftp://x", &[]).is_err());
    }
}
