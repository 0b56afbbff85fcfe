//! `stylefarm-coordinator init`: what a deployment needs to start closed,
//! made once at install time. In `OUT`:
//!
//! ```text
//! ca/ca.crt, ca/ca.key              a CA of its own (unless the operator brings certificates)
//! coordinator/tls/server.crt, .key  the coordinator's certificate, for the names given
//! coordinator/tokens/ROLE.NAME      the tokens it imports at start (--tokens-from)
//! worker/token, worker/ca.crt       what every worker needs (or in --worker-out)
//! admin/token, admin/ca.crt         what the operator's CLI needs
//! ```
//!
//! It is idempotent: a file already there is kept (a token's text exists only
//! in these files, so it is never made twice), so running it on every start
//! (compose, an init container) makes everything once.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::secrets::ApiToken;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// What `init` makes.
#[derive(Debug, Clone)]
pub struct Init {
    pub out: PathBuf,
    /// Where the workers' files go, if not `OUT/worker` (a volume of their own).
    pub worker_out: Option<PathBuf>,
    /// DNS names and IP addresses the coordinator is reached by (besides localhost).
    pub hosts: Vec<String>,
    /// Names of the tokens it makes.
    pub admin_name: String,
    pub worker_name: String,
}

/// One file `init` made or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub path: PathBuf,
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("making certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io { path: path.display().to_string(), source }
}

/// Writes `text` to `path` unless it exists; secrets are readable only by their owner.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<Made, InitError> {
    if path.exists() {
        return Ok(Made { path: path.to_path_buf(), created: false });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    Ok(Made { path: path.to_path_buf(), created: true })
}

impl Init {
    /// The folder of `user`'s token and CA certificate.
    fn user_dir(&self, user: &str) -> PathBuf {
        match (user, &self.worker_out) {
            ("worker", Some(dir)) => dir.clone(),
            _ => self.out.join(user),
        }
    }

    /// Makes what is missing; returns every file, made or kept.
    pub fn run(&self) -> Result<Vec<Made>, InitError> {
        for (field, name) in [("admin_name", &self.admin_name), ("worker_name", &self.worker_name)] {
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_@".contains(&b)) {
                return Err(InitError::Invalid { field, reason: format!("`{name}`: 1..=64 characters of a-z A-Z 0-9 - _ @") });
            }
        }
        let mut made = Vec::new();
        made.extend(self.certificates()?);
        // the token's text goes to the coordinator's import folder and to its user, once
        for (role, name, user) in [("admin", &self.admin_name, "admin"), ("worker", &self.worker_name, "worker")] {
            let imported = self.out.join("coordinator/tokens").join(format!("{role}.{name}"));
            let given = self.user_dir(user).join("token");
            let text = match std::fs::read_to_string(&imported) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => ApiToken::generate().expose(),
                Err(e) => return Err(io(&imported)(e)),
            };
            made.push(write_new(&imported, &text, true)?);
            made.push(write_new(&given, &text, true)?);
        }
        Ok(made)
    }

    /// A CA and the coordinator's certificate, unless there is one; the CA
    /// certificate is copied beside each user's token.
    fn certificates(&self) -> Result<Vec<Made>, InitError> {
        let (ca_crt, ca_key) = (self.out.join("ca/ca.crt"), self.out.join("ca/ca.key"));
        let (server_crt, server_key) = (self.out.join("coordinator/tls/server.crt"), self.out.join("coordinator/tls/server.key"));
        let mut made = Vec::new();
        if !server_crt.exists() {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
            for host in self.hosts.iter().filter(|h| !h.is_empty()) {
                // each name once (`dedup` drops only neighbours: `--hosts coordinator,localhost`)
                if !names.contains(host) {
                    names.push(host.clone());
                }
            }
            let ca_key_pair = match std::fs::read_to_string(&ca_key) {
                Ok(pem) => KeyPair::from_pem(&pem)?,
                Err(_) => KeyPair::generate()?,
            };
            let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            ca_params.distinguished_name.push(DnType::CommonName, "stylefarm CA");
            let ca = CertifiedIssuer::self_signed(ca_params, ca_key_pair)?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, "stylefarm-coordinator");
            let cert = params.signed_by(&key, &ca)?;
            made.push(write_new(&ca_key, &ca.key().serialize_pem(), true)?);
            // a CA made now replaces none: its certificate is written with the server's
            if !ca_crt.exists() {
                made.push(write_new(&ca_crt, &ca.pem(), false)?);
            }
            made.push(write_new(&server_key, &key.serialize_pem(), true)?);
            made.push(write_new(&server_crt, &cert.pem(), false)?);
        }
        let ca_text = std::fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
        for user in ["worker", "admin"] {
            made.push(write_new(&self.user_dir(user).join("ca.crt"), &ca_text, false)?);
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(out: &Path) -> Init {
        Init {
            out: out.to_path_buf(),
            worker_out: None,
            hosts: vec!["stylefarm-coordinator".into(), "10.0.0.7".into()],
            admin_name: "ops".into(),
            worker_name: "workers".into(),
        }
    }

    #[test]
    fn makes_everything_once_and_keeps_it_after() {
        let dir = tempfile::tempdir().unwrap();
        let first = init(dir.path()).run().unwrap();
        assert!(first.iter().all(|m| m.created), "{first:?}");
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        let worker = read("worker/token");
        assert_eq!(worker, read("coordinator/tokens/worker.workers"), "the worker and the coordinator hold the same token");
        assert_eq!(read("admin/token"), read("coordinator/tokens/admin.ops"));
        assert_ne!(worker, read("admin/token"));
        assert_eq!(read("worker/ca.crt"), read("ca/ca.crt"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("coordinator/tls/server.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "keys are the owner's only: {mode:o}");
        }
        // the store accepts the tokens it made
        let store = crate::auth::TokenStore::open(&dir.path().join("data")).unwrap();
        let imported = store.import_dir(&dir.path().join("coordinator/tokens")).unwrap();
        assert_eq!(imported.len(), 2);
        let again = init(dir.path()).run().unwrap();
        assert!(again.iter().all(|m| !m.created), "a second run keeps every file: {again:?}");
        assert_eq!(read("worker/token"), worker);
        // a worker token lost from its folder is written again from the coordinator's copy
        std::fs::remove_file(dir.path().join("worker/token")).unwrap();
        init(dir.path()).run().unwrap();
        assert_eq!(read("worker/token"), worker);
    }

    #[tokio::test]
    async fn the_certificate_serves_tls_to_a_client_that_trusts_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).run().unwrap();
        let read = |p: &str| std::fs::read(dir.path().join(p)).unwrap();
        let identity = tonic::transport::Identity::from_pem(read("coordinator/tls/server.crt"), read("coordinator/tls/server.key"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (health, service) = tonic_health::server::health_reporter();
        health.set_service_status("", tonic_health::ServingStatus::Serving).await;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        for host in ["localhost", "127.0.0.1"] {
            let ca = dir.path().join("worker/ca.crt");
            let options = stylefarm_proto::connect::ConnectOptions { url: format!("https://{host}:{}", addr.port()), tls_ca: Some(ca), ..Default::default() };
            options.check_health(std::time::Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        server.abort();
    }

    #[test]
    fn the_workers_files_may_go_to_a_folder_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let workers = dir.path().join("for-workers");
        Init { worker_out: Some(workers.clone()), ..init(dir.path()) }.run().unwrap();
        let names: Vec<_> = std::fs::read_dir(&workers)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(names, ["ca.crt", "token"], "only what a worker needs");
        assert!(!dir.path().join("worker").exists());
        assert_eq!(
            std::fs::read_to_string(workers.join("token")).unwrap(),
            std::fs::read_to_string(dir.path().join("coordinator/tokens/worker.workers")).unwrap()
        );
    }

    #[test]
    fn a_bad_name_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let e = Init { worker_name: "a b".into(), ..init(dir.path()) }.run().unwrap_err();
        assert!(e.to_string().contains("worker_name"), "{e}");
    }
}
