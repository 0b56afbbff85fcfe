//! Coordinator configuration: defaults → `--config FILE` (TOML) → `STYLEFARM_*`
//! environment → command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use stylefarm_core::duration::HumanDuration;

use crate::auth::AuthMode;
use crate::model::Backoff;
use crate::scheduler::SchedulerConfig;
use crate::store::{Commits, Durability};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    /// Holds `state.sqlite` and, unless `store` says otherwise, `objects/`.
    pub data_dir: PathBuf,
    /// Object store URL (file://, s3://, gs://, az://, memory://); default `file://{data_dir}/objects`.
    pub store: Option<String>,
    pub lease_ttl_ms: i64,
    pub heartbeat_interval_ms: i64,
    pub max_attempts: u32,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// Failures of one batch's jobs after which a worker gets no more of them.
    pub worker_batch_failure_limit: u32,
    pub max_upload_bytes: u64,
    /// What a commit survives: `process_crash` (default) or `power_loss`
    /// (an fsync every commit group).
    pub durability: Durability,
    /// How often leases are checked for expiry.
    pub tick_ms: u64,
    /// `grouped`: the changes of concurrent requests in one transaction;
    /// `per_request`: one transaction each (the benchmark's reference).
    pub commits: Commits,
    /// `auto`: a token is required as soon as the data dir holds any;
    /// `required`: always.
    pub auth: AuthMode,
    /// Serve on a non-loopback address without TLS and authentication.
    pub insecure: bool,
    /// A folder of token files (`ROLE.NAME`, e.g. a mounted Kubernetes
    /// Secret) imported at start; unreadable, the coordinator does not start.
    pub tokens_from: Option<PathBuf>,
    /// PEM certificate chain and key: serve TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA: WorkerApi callers must present a client certificate it signed (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// URL prefixes users may name as inputs besides the store's own.
    pub allowed_input_prefixes: Vec<String>,
    /// Weights URLs (torchvision-layout safetensors) jobs may name besides `default`.
    pub allowed_weights: Vec<String>,
    /// Most jobs in one batch.
    pub max_jobs_per_batch: usize,
    /// Most frames one video batch may have.
    pub max_video_frames: u32,
    /// Device memory one tile of a print may need; 0 = the largest device
    /// among the connected workers that may take the job. A job whose finest
    /// scale needs more is split into tiles (`crate::tiling`).
    pub tile_memory_bytes: u64,
    /// How long a queued job may wait while no connected device fits it.
    pub unfit_grace_ms: i64,
    /// How long submit request ids are remembered in memory (the store keeps them).
    pub request_id_window_ms: i64,
    /// Workers unseen this long leave memory.
    pub forget_workers_after_ms: i64,
    /// Serve KEDA's external scaler (queue depth, no token needed) on the gRPC port.
    pub scaler: bool,
    /// Serve Prometheus metrics over HTTP at `/metrics` here (no token: they
    /// hold counts and timings, never names, ids or secrets).
    pub metrics_listen: Option<SocketAddr>,
    /// Worker pools (each a label set, `pool=studio-b,vram=24`) whose demand
    /// `stylefarm_pool_demand` reports even while none of their workers is
    /// known (a pool scaled to zero); known workers' label sets are added.
    pub metrics_pools: Vec<String>,
    /// Serve the web dashboard here (same tokens and roles as the gRPC API).
    pub http_listen: Option<SocketAddr>,
    /// Host names the dashboard answers to while no token is needed, besides
    /// IP addresses and `localhost` (DNS rebinding; with tokens any host is served).
    pub http_hosts: Vec<String>,
    /// Delete finished batches (rows and objects) this long after they
    /// finished, e.g. `30d`; None keeps them for ever.
    pub retain_finished: Option<HumanDuration>,
    /// How long a caller may keep the server waiting for the next piece of
    /// its request before the call ends (slow senders; `crate::gate`).
    pub stall_timeout: HumanDuration,
    /// Quotas per role (`[quotas.submit]`, `[quotas.admin]`; see `crate::quota`).
    pub quotas: crate::quota::Quotas,
    /// Where batch-end webhooks may go, with their keys (`[webhooks]`; see `crate::notify`).
    pub webhooks: crate::notify::WebhookConfig,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        let scheduler = SchedulerConfig::default();
        CoordinatorConfig {
            listen: "127.0.0.1:50051".parse().expect("valid address"),
            data_dir: PathBuf::from("stylefarm-data"),
            store: None,
            lease_ttl_ms: scheduler.lease_ttl_ms,
            heartbeat_interval_ms: 5_000,
            max_attempts: scheduler.default_max_attempts,
            backoff_base_ms: scheduler.backoff.first().as_millis() as i64,
            backoff_max_ms: scheduler.backoff.max().as_millis() as i64,
            worker_batch_failure_limit: scheduler.worker_batch_failure_limit,
            max_upload_bytes: 64 << 20,
            durability: Durability::ProcessCrash,
            tick_ms: 200,
            commits: Commits::Grouped,
            auth: AuthMode::Auto,
            insecure: false,
            tokens_from: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            allowed_input_prefixes: Vec::new(),
            allowed_weights: Vec::new(),
            max_jobs_per_batch: crate::validate::MAX_JOBS_PER_BATCH,
            max_video_frames: stylefarm_core::video::MAX_FRAMES,
            tile_memory_bytes: 0,
            unfit_grace_ms: scheduler.unfit_grace_ms,
            request_id_window_ms: scheduler.request_id_window_ms,
            forget_workers_after_ms: scheduler.forget_workers_after_ms,
            scaler: true,
            metrics_listen: None,
            metrics_pools: Vec::new(),
            http_listen: None,
            http_hosts: Vec::new(),
            retain_finished: None,
            stall_timeout: HumanDuration(Duration::from_secs(30)),
            quotas: crate::quota::Quotas::default(),
            webhooks: crate::notify::WebhookConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {reason}")]
    File { path: String, reason: String },
    #[error("invalid {name}: `{value}`: {reason}")]
    Env { name: String, value: String, reason: String },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn env<T: std::str::FromStr>(name: &str, target: &mut T) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Ok(value) = std::env::var(name) {
        *target = value.parse().map_err(|e: T::Err| ConfigError::Env { name: name.into(), value, reason: e.to_string() })?;
    }
    Ok(())
}

impl CoordinatorConfig {
    pub fn from_file(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let file = |reason: String| ConfigError::File { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file(e.to_string()))
    }

    /// Applies `STYLEFARM_*` variables.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        env("STYLEFARM_LISTEN", &mut self.listen)?;
        env("STYLEFARM_DATA_DIR", &mut self.data_dir)?;
        if let Ok(store) = std::env::var("STYLEFARM_STORE") {
            self.store = Some(store);
        }
        env("STYLEFARM_LEASE_TTL_MS", &mut self.lease_ttl_ms)?;
        env("STYLEFARM_HEARTBEAT_INTERVAL_MS", &mut self.heartbeat_interval_ms)?;
        env("STYLEFARM_MAX_ATTEMPTS", &mut self.max_attempts)?;
        env("STYLEFARM_BACKOFF_BASE_MS", &mut self.backoff_base_ms)?;
        env("STYLEFARM_MAX_UPLOAD_BYTES", &mut self.max_upload_bytes)?;
        env("STYLEFARM_MAX_JOBS_PER_BATCH", &mut self.max_jobs_per_batch)?;
        env("STYLEFARM_MAX_VIDEO_FRAMES", &mut self.max_video_frames)?;
        env("STYLEFARM_TILE_MEMORY_BYTES", &mut self.tile_memory_bytes)?;
        env("STYLEFARM_UNFIT_GRACE_MS", &mut self.unfit_grace_ms)?;
        env("STYLEFARM_SCALER", &mut self.scaler)?;
        env("STYLEFARM_STALL_TIMEOUT", &mut self.stall_timeout)?;
        if let Ok(v) = std::env::var("STYLEFARM_RETAIN_FINISHED") {
            let retain = v.parse().map_err(|reason| ConfigError::Env { name: "STYLEFARM_RETAIN_FINISHED".into(), value: v.clone(), reason })?;
            self.retain_finished = Some(retain);
        }
        for (name, target) in [("STYLEFARM_METRICS_LISTEN", &mut self.metrics_listen), ("STYLEFARM_HTTP_LISTEN", &mut self.http_listen)] {
            if let Ok(v) = std::env::var(name) {
                let addr = v.parse().map_err(|e: std::net::AddrParseError| ConfigError::Env { name: name.into(), value: v.clone(), reason: e.to_string() })?;
                *target = Some(addr);
            }
        }
        if let Ok(v) = std::env::var("STYLEFARM_METRICS_POOLS") {
            // label sets hold commas: pools are separated by `;`
            self.metrics_pools = v.split(';').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect();
        }
        env("STYLEFARM_AUTH", &mut self.auth)?;
        for (name, target) in [
            ("STYLEFARM_TLS_CERT", &mut self.tls_cert),
            ("STYLEFARM_TLS_KEY", &mut self.tls_key),
            ("STYLEFARM_TLS_CLIENT_CA", &mut self.tls_client_ca),
            ("STYLEFARM_TOKENS_FROM", &mut self.tokens_from),
        ] {
            if let Ok(v) = std::env::var(name) {
                *target = Some(PathBuf::from(v));
            }
        }
        if let Ok(v) = std::env::var("STYLEFARM_ALLOWED_INPUT_PREFIXES") {
            self.allowed_input_prefixes = v.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect();
        }
        self.apply_webhook_env()
    }

    /// `STYLEFARM_WEBHOOK_ALLOW` and `STYLEFARM_WEBHOOK` (comma lists, added
    /// to the file's), `STYLEFARM_WEBHOOK_SECRET_FILE`, `STYLEFARM_WEBHOOK_ON`,
    /// `STYLEFARM_WEBHOOK_GIVE_UP_AFTER`.
    fn apply_webhook_env(&mut self) -> Result<(), ConfigError> {
        let hooks = &mut self.webhooks;
        let list = |v: String| v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect::<Vec<_>>();
        if let Ok(v) = std::env::var("STYLEFARM_WEBHOOK_ALLOW") {
            hooks.allow.extend(list(v).into_iter().map(|prefix| crate::notify::AllowEntry { prefix, secret_file: None }));
        }
        if let Ok(v) = std::env::var("STYLEFARM_WEBHOOK") {
            hooks.urls.extend(list(v));
        }
        if let Ok(v) = std::env::var("STYLEFARM_WEBHOOK_SECRET_FILE") {
            hooks.secret_file = Some(PathBuf::from(v));
        }
        env("STYLEFARM_WEBHOOK_ON", &mut hooks.on)?;
        if let Ok(v) = std::env::var("STYLEFARM_WEBHOOK_GIVE_UP_AFTER") {
            let d = v.parse().map_err(|reason| ConfigError::Env { name: "STYLEFARM_WEBHOOK_GIVE_UP_AFTER".into(), value: v.clone(), reason })?;
            hooks.give_up_after = Some(d);
        }
        Ok(())
    }

    /// [`CoordinatorConfig::metrics_pools`], parsed.
    pub fn pools(&self) -> Result<Vec<stylefarm_core::labels::Labels>, String> {
        if self.metrics_pools.len() > crate::metrics::MAX_POOL_SERIES {
            return Err(format!("{} pools; the limit is {}", self.metrics_pools.len(), crate::metrics::MAX_POOL_SERIES));
        }
        self.metrics_pools.iter().map(|p| stylefarm_core::labels::parse_labels(p).map_err(|e| format!("`{p}`: {e}"))).collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if !(100..=3_600_000).contains(&self.lease_ttl_ms) {
            return invalid("lease_ttl_ms", format!("{} is outside 100..=3600000", self.lease_ttl_ms));
        }
        if self.heartbeat_interval_ms < 10 || self.heartbeat_interval_ms * 2 > self.lease_ttl_ms {
            return invalid(
                "heartbeat_interval_ms",
                format!("{} must be >= 10 and at most half of lease_ttl_ms ({})", self.heartbeat_interval_ms, self.lease_ttl_ms),
            );
        }
        if !(1..=crate::validate::MAX_ATTEMPTS).contains(&self.max_attempts) {
            return invalid("max_attempts", format!("{} is outside 1..={}", self.max_attempts, crate::validate::MAX_ATTEMPTS));
        }
        if self.backoff_base_ms < 0 || self.backoff_max_ms < self.backoff_base_ms {
            return invalid("backoff_base_ms", "must be >= 0 and <= backoff_max_ms".into());
        }
        if self.retain_finished.is_some_and(|d| d.0.is_zero()) {
            return invalid("retain_finished", "must be longer than 0 (leave it out to keep batches for ever)".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.stall_timeout.0) {
            return invalid("stall_timeout", format!("{} is outside 1s..=1h", self.stall_timeout));
        }
        if self.tick_ms == 0 {
            return invalid("tick_ms", "must be > 0".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert", "--tls-cert and --tls-key go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return invalid("tls_client_ca", "mutual TLS needs --tls-cert and --tls-key".into());
        }
        if !(1..=stylefarm_core::video::MAX_FRAMES).contains(&self.max_video_frames) {
            return invalid("max_video_frames", format!("{} is outside 1..={}", self.max_video_frames, stylefarm_core::video::MAX_FRAMES));
        }
        self.quotas.validate().map_err(|reason| ConfigError::Invalid { field: "quotas", reason })?;
        self.pools().map_err(|reason| ConfigError::Invalid { field: "metrics_pools", reason })?;
        if !(1..=1_000_000).contains(&self.max_jobs_per_batch) {
            return invalid("max_jobs_per_batch", format!("{} is outside 1..=1000000", self.max_jobs_per_batch));
        }
        for (field, value) in [
            ("unfit_grace_ms", self.unfit_grace_ms),
            ("request_id_window_ms", self.request_id_window_ms),
            ("forget_workers_after_ms", self.forget_workers_after_ms),
        ] {
            if value < 0 {
                return invalid(field, format!("{value} must be >= 0"));
            }
        }
        Ok(())
    }

    pub fn scheduler(&self) -> SchedulerConfig {
        SchedulerConfig {
            lease_ttl_ms: self.lease_ttl_ms,
            default_max_attempts: self.max_attempts,
            backoff: Backoff::new(Duration::from_millis(self.backoff_base_ms.max(0) as u64), Duration::from_millis(self.backoff_max_ms.max(0) as u64)),
            worker_batch_failure_limit: self.worker_batch_failure_limit,
            unfit_grace_ms: self.unfit_grace_ms,
            request_id_window_ms: self.request_id_window_ms,
            forget_workers_after_ms: self.forget_workers_after_ms,
        }
    }

    /// What a submit may contain, for a coordinator whose store is `store_url`.
    pub fn submit_rules(&self, store_url: &str) -> Result<crate::validate::SubmitRules, ConfigError> {
        let inputs = stylefarm_core::policy::InputPolicy::new(store_url, &self.allowed_input_prefixes)
            .map_err(|reason| ConfigError::Invalid { field: "allowed_input_prefixes", reason })?;
        Ok(crate::validate::SubmitRules {
            max_jobs: self.max_jobs_per_batch,
            inputs,
            weights: self.allowed_weights.clone(),
            max_video_frames: self.max_video_frames,
            tile_memory_bytes: self.tile_memory_bytes,
            webhooks: std::sync::Arc::new(
                crate::notify::Webhooks::from_config(&self.webhooks).map_err(|reason| ConfigError::Invalid { field: "webhooks", reason })?,
            ),
        })
    }

    /// The object store URL in effect.
    pub fn store_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = &self.store {
            return Ok(url.clone());
        }
        std::fs::create_dir_all(&self.data_dir).map_err(|e| ConfigError::Invalid { field: "data_dir", reason: e.to_string() })?;
        let dir = std::fs::canonicalize(&self.data_dir).map_err(|e| ConfigError::Invalid { field: "data_dir", reason: e.to_string() })?;
        Ok(format!("file://{}", dir.join("objects").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_metrics_pool_is_refused_naming_the_field() {
        let good = CoordinatorConfig { metrics_pools: vec!["pool=studio-b,vram=24".into()], ..CoordinatorConfig::default() };
        assert!(good.validate().is_ok());
        assert_eq!(good.pools().unwrap()[0].get("vram").map(String::as_str), Some("24"));
        let bad = CoordinatorConfig { metrics_pools: vec!["pool".into()], ..CoordinatorConfig::default() };
        match bad.validate() {
            Err(ConfigError::Invalid { field: "metrics_pools", reason }) => assert!(reason.contains("`pool`"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let many = CoordinatorConfig { metrics_pools: vec!["pool=a".into(); 65], ..CoordinatorConfig::default() };
        assert!(matches!(many.validate(), Err(ConfigError::Invalid { field: "metrics_pools", .. })));
    }
}
