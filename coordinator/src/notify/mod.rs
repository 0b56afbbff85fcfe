//! Webhooks: who is told when a batch ends (and, if asked, when each of its
//! jobs fails for good), where they may be sent, and with what key.
//!
//! - The operator allows URL prefixes (`--webhook-allow`), each with its own
//!   signing key; a batch's `notify` URLs and the coordinator-wide
//!   `--webhook` URLs must fall under one. Nothing else is ever POSTed to.
//! - A notification is an [`OutboxEntry`] committed with the change that
//!   caused it (see `farm::webhooks`), delivered at least once, retried with
//!   backoff, and given up after [`Webhooks::give_up_after_ms`].
//! - Each try is signed over its time and the body ([`sign`]).

pub mod payload;
pub mod sign;

use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use crate::model::{BatchRecord, JobRecord, Millis, NotifyOn};
use crate::secrets::SigningKey;
use crate::store::OutboxEntry;

/// Most `notify` URLs one batch may name.
pub const MAX_NOTIFY: usize = 4;
/// Longest webhook URL taken.
pub const MAX_URL_BYTES: usize = 2048;

/// The event names, in the body and the `stylefarm-event` header.
pub const BATCH_FINISHED: &str = "batch.finished";
pub const JOB_FAILED: &str = "job.failed";

/// `[webhooks]` in the config file; flags and `STYLEFARM_WEBHOOK_*` add to it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Allowed URL prefixes, each with its signing key.
    pub allow: Vec<AllowEntry>,
    /// The key of allowed prefixes that name none of their own.
    pub secret_file: Option<PathBuf>,
    /// Told about every batch.
    pub urls: Vec<String>,
    /// What the coordinator-wide `urls` are told about.
    pub on: NotifyOn,
    /// A delivery still failing this long after its event is given up
    /// (default 24h).
    pub give_up_after: Option<stylefarm_core::duration::HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub prefix: String,
    pub secret_file: Option<PathBuf>,
}

/// An allowed prefix: same scheme, host and port, and a path under its path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefix {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
    text: String,
}

impl Prefix {
    fn parse(text: &str) -> Result<Prefix, String> {
        let url = parse_url(text)?;
        Ok(Prefix {
            scheme: url.scheme().to_string(),
            host: url.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: url.port_or_known_default(),
            path: url.path().to_string(),
            text: text.to_string(),
        })
    }

    fn covers(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && url.port_or_known_default() == self.port
            && (url.path() == self.path || url.path().starts_with(&self.path) && (self.path.ends_with('/') || url.path()[self.path.len()..].starts_with('/')))
    }
}

/// An http(s) URL with a host and no user name or password in it.
fn parse_url(text: &str) -> Result<Url, String> {
    if text.len() > MAX_URL_BYTES {
        return Err(format!("{} bytes; the limit is {MAX_URL_BYTES}", text.len()));
    }
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}`: only http and https webhooks are sent"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{text}` carries credentials; webhooks are authenticated by their signature"));
    }
    Ok(url)
}

#[derive(Debug, Clone)]
struct Target {
    prefix: Prefix,
    key: SigningKey,
}

/// The webhook policy in effect: allowed prefixes with their keys, the
/// coordinator-wide URLs, and how long deliveries are tried.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    targets: Vec<Target>,
    everywhere: Vec<String>,
    on: NotifyOn,
    pub give_up_after_ms: Millis,
}

/// What a delivery gets for its URL.
pub enum Lookup<'a> {
    Allowed(&'a SigningKey),
    /// The allowlist changed since it was queued.
    NotAllowed,
}

impl Webhooks {
    pub const DEFAULT_GIVE_UP_MS: Millis = 24 * 3_600_000;

    /// Reads every key and checks every URL now, so a coordinator that
    /// starts can sign everything it was told to send.
    pub fn from_config(config: &WebhookConfig) -> Result<Webhooks, String> {
        let mut targets = Vec::with_capacity(config.allow.len());
        for (i, entry) in config.allow.iter().enumerate() {
            let prefix = Prefix::parse(&entry.prefix).map_err(|e| format!("allow[{i}]: {e}"))?;
            let file = entry
                .secret_file
                .as_ref()
                .or(config.secret_file.as_ref())
                .ok_or_else(|| format!("allow[{i}] (`{}`) has no signing key: give it a secret_file, or --webhook-secret-file for all", entry.prefix))?;
            let key = SigningKey::from_file(file).map_err(|e| format!("allow[{i}]: {e}"))?;
            targets.push(Target { prefix, key });
        }
        let give_up_after_ms = config.give_up_after.map_or(Self::DEFAULT_GIVE_UP_MS, |d| d.as_millis_i64());
        if give_up_after_ms <= 0 {
            return Err("give_up_after must be longer than 0".into());
        }
        let mut hooks = Webhooks { targets, everywhere: Vec::new(), on: config.on, give_up_after_ms };
        for (i, url) in config.urls.iter().enumerate() {
            hooks.check(url).map_err(|e| format!("urls[{i}]: {e}"))?;
        }
        hooks.everywhere = config.urls.clone();
        Ok(hooks)
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Whether a batch may name `url` (the reason names the allowlist if not).
    pub fn check(&self, url: &str) -> Result<(), String> {
        let parsed = parse_url(url)?;
        if self.targets.is_empty() {
            return Err("this coordinator sends no webhooks (the operator allows none: --webhook-allow)".into());
        }
        if self.targets.iter().any(|t| t.prefix.covers(&parsed)) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.targets.iter().map(|t| t.prefix.text.as_str()).collect();
        Err(format!("`{url}` is under no allowed webhook prefix ({})", allowed.join(", ")))
    }

    /// The key `url` is signed with, if it is still allowed.
    pub fn lookup(&self, url: &str) -> Lookup<'_> {
        let Ok(parsed) = Url::parse(url) else { return Lookup::NotAllowed };
        match self.targets.iter().find(|t| t.prefix.covers(&parsed)) {
            Some(t) => Lookup::Allowed(&t.key),
            None => Lookup::NotAllowed,
        }
    }

    /// Whether anything may be owed for `batch` (cheap: asked on every change).
    pub fn wants(&self, batch: &BatchRecord) -> bool {
        !self.everywhere.is_empty() || !batch.notify.urls.is_empty()
    }

    /// The deliveries owed because `batch` finished.
    pub fn batch_finished(&self, batch: &BatchRecord, now: Millis) -> Vec<OutboxEntry> {
        let body = payload::batch_finished(batch, now);
        self.entries(batch, BATCH_FINISHED, body, |_| true, now)
    }

    /// The deliveries owed because `job` of `batch` failed for good (to the
    /// URLs that asked for failures).
    pub fn job_failed(&self, batch: &BatchRecord, job: &JobRecord, now: Millis) -> Vec<OutboxEntry> {
        let wants_failures = |on: NotifyOn| on == NotifyOn::Failures;
        if !wants_failures(self.on) && !wants_failures(batch.notify.on) {
            return Vec::new();
        }
        let body = payload::job_failed(batch, job, now);
        let everywhere_on = self.on;
        let batch_on = batch.notify.on;
        self.entries(batch, JOB_FAILED, body, move |from_batch| wants_failures(if from_batch { batch_on } else { everywhere_on }), now)
    }

    /// One entry per distinct URL (a batch's own first) that `wanted` (given
    /// whether the URL came from the batch) lets through.
    fn entries(&self, batch: &BatchRecord, event: &str, body: String, wanted: impl Fn(bool) -> bool, now: Millis) -> Vec<OutboxEntry> {
        let own = batch.notify.urls.iter().map(|u| (u, true));
        let everywhere = self.everywhere.iter().map(|u| (u, false));
        let mut out: Vec<OutboxEntry> = Vec::new();
        for (url, from_batch) in own.chain(everywhere) {
            if wanted(from_batch) && !out.iter().any(|e| &e.target == url) {
                out.push(OutboxEntry { target: url.clone(), event: event.to_string(), batch: batch.id, body: body.clone(), created_ms: now });
            }
        }
        out
    }
}

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Retried,
    GivenUp,
}

impl Delivery {
    pub const ALL: [Delivery; 3] = [Delivery::Delivered, Delivery::Retried, Delivery::GivenUp];

    pub fn label(self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Retried => "retried",
            Delivery::GivenUp => "given_up",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(prefixes: &[&str], urls: &[&str], on: NotifyOn) -> Webhooks {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "a-key-of-at-least-16-bytes\n").unwrap();
        let config = WebhookConfig {
            allow: prefixes.iter().map(|p| AllowEntry { prefix: p.to_string(), secret_file: None }).collect(),
            secret_file: Some(key),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            on,
            give_up_after: None,
        };
        Webhooks::from_config(&config).unwrap()
    }

    #[test]
    fn only_urls_under_an_allowed_prefix_pass() {
        let h = hooks(&["https://hooks.example/farm/", "http://127.0.0.1:9000/in"], &[], NotifyOn::BatchEnd);
        for ok in ["https://hooks.example/farm/a", "https://HOOKS.example:443/farm/b?x=1", "http://127.0.0.1:9000/in", "http://127.0.0.1:9000/in/x"] {
            assert_eq!(h.check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://hooks.example/farmer",
            "https://hooks.example/other",
            "http://hooks.example/farm/a",
            "https://hooks.example:8443/farm/a",
            "https://hooks.example.evil/farm/a",
            "http://127.0.0.1:9000/inside",
            "http://127.0.0.1:9001/in",
            "https://user:pw@hooks.example/farm/a",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(h.check(bad).is_err(), "{bad} passed");
        }
        assert!(h.check("https://hooks.example/other").unwrap_err().contains("https://hooks.example/farm/"), "the reason names the allowlist");
        assert!(Webhooks::default().check("https://hooks.example/farm/a").unwrap_err().contains("--webhook-allow"));
    }

    #[test]
    fn a_prefix_without_a_key_or_a_short_key_is_refused_at_start() {
        let config = WebhookConfig { allow: vec![AllowEntry { prefix: "https://h.example/".into(), secret_file: None }], ..Default::default() };
        assert!(Webhooks::from_config(&config).unwrap_err().contains("no signing key"));
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short").unwrap();
        let config = WebhookConfig { allow: vec![AllowEntry { prefix: "https://h.example/".into(), secret_file: Some(short) }], ..Default::default() };
        assert!(Webhooks::from_config(&config).unwrap_err().contains("at least 16"));
        let config = WebhookConfig { urls: vec!["https://h.example/x".into()], ..Default::default() };
        assert!(Webhooks::from_config(&config).unwrap_err().starts_with("urls[0]"));
    }

    fn batch(urls: &[&str], on: NotifyOn) -> BatchRecord {
        crate::model::fixtures::batch(crate::model::Notify { urls: urls.iter().map(|u| u.to_string()).collect(), on })
    }

    #[test]
    fn each_url_is_told_once_and_failures_only_where_asked() {
        let h = hooks(&["https://h.example/"], &["https://h.example/all"], NotifyOn::BatchEnd);
        let b = batch(&["https://h.example/mine", "https://h.example/all"], NotifyOn::Failures);
        let ended: Vec<String> = h.batch_finished(&b, 5).into_iter().map(|e| e.target).collect();
        assert_eq!(ended, ["https://h.example/mine", "https://h.example/all"]);
        let job = crate::model::fixtures::job(b.id, 1);
        let failed: Vec<String> = h.job_failed(&b, &job, 5).into_iter().map(|e| e.target).collect();
        assert_eq!(failed, ["https://h.example/mine", "https://h.example/all"], "the batch asked for failures on both its URLs");
        let quiet = batch(&[], NotifyOn::BatchEnd);
        assert!(h.job_failed(&quiet, &job, 5).is_empty());
        assert!(!Webhooks::default().wants(&quiet));
        assert!(h.wants(&quiet), "coordinator-wide URLs hear of every batch");
    }
}
