//! How clients and workers reach the coordinator, in one place: the URL
//! (`http://` or `https://`), TLS (a CA to trust, and for workers under mutual
//! TLS a client certificate), and the API token sent with every call as
//! `authorization: Bearer TOKEN`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::coordinator_client::CoordinatorClient;
use crate::worker_api_client::WorkerApiClient;

/// Largest message either side sends (a 100,000-job submit is ~20 MB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid coordinator URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("reading {what} {path}: {reason}")]
    File { what: &'static str, path: String, reason: String },
    #[error("the token in {0} is not valid metadata (one line of printable ASCII)")]
    Token(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{url}: {reason}")]
    Unhealthy { url: String, reason: String },
}

/// Where the coordinator is and how to prove who we are.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub url: String,
    /// An API token (`sf1_…`); none for an open coordinator on loopback.
    pub token: Option<String>,
    /// PEM CA that signed the coordinator's certificate (else the system roots).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key (workers under mutual TLS).
    pub tls_identity: Option<(PathBuf, PathBuf)>,
}

/// The token from `--token-file` if given, else `STYLEFARM_TOKEN`, else none.
/// Where a process on this machine reaches a server listening on `listen`:
/// a wildcard address (0.0.0.0, ::) is reached on the loopback of its family.
pub fn local_dial_addr(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port())
}

pub fn read_token(token_file: Option<&Path>) -> Result<Option<String>, ConnectError> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|e| ConnectError::File {
            what: "the token file",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(std::env::var("STYLEFARM_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| ConnectError::File { what, path: path.display().to_string(), reason: e.to_string() })
}

/// Adds the token to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type AuthChannel = InterceptedService<Channel, Auth>;
pub type Coordinator = CoordinatorClient<AuthChannel>;
pub type Worker = WorkerApiClient<AuthChannel>;

impl ConnectOptions {
    /// The endpoint with TLS set up (for `https://` URLs, or when a CA or
    /// identity is given).
    pub fn endpoint(&self) -> Result<Endpoint, ConnectError> {
        let url_err = |reason: String| ConnectError::Url { url: self.url.clone(), reason };
        let mut endpoint = Endpoint::from_shared(self.url.clone()).map_err(|e| url_err(e.to_string()))?;
        endpoint = endpoint.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true).http2_keep_alive_interval(Duration::from_secs(20));
        let https = self.url.starts_with("https://");
        if https || self.tls_ca.is_some() || self.tls_identity.is_some() {
            if !https {
                return Err(url_err("TLS options need an https:// URL".into()));
            }
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "the CA certificate")?));
            }
            if let Some((cert, key)) = &self.tls_identity {
                tls = tls.identity(Identity::from_pem(read(cert, "the client certificate")?, read(key, "the client key")?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| ConnectError::Tls(e.to_string()))?;
        }
        Ok(endpoint)
    }

    fn auth(&self) -> Result<Auth, ConnectError> {
        match &self.token {
            None => Ok(Auth(None)),
            Some(token) => {
                let value = format!("Bearer {token}").parse::<MetadataValue<Ascii>>().map_err(|_| ConnectError::Token("the token".into()))?;
                Ok(Auth(Some(value)))
            }
        }
    }

    /// A channel with the token attached to every call.
    pub fn wrap(&self, channel: Channel) -> Result<AuthChannel, ConnectError> {
        Ok(InterceptedService::new(channel, self.auth()?))
    }

    pub fn coordinator(&self, channel: Channel) -> Result<Coordinator, ConnectError> {
        Ok(CoordinatorClient::new(self.wrap(channel)?).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub fn worker(&self, channel: Channel) -> Result<Worker, ConnectError> {
        Ok(WorkerApiClient::new(self.wrap(channel)?).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// What the server's standard gRPC health service (service "") answers
    /// within `timeout`; the error says why it could not be asked.
    pub async fn health_status(&self, timeout: Duration) -> Result<tonic_health::pb::health_check_response::ServingStatus, ConnectError> {
        let unhealthy = |reason: String| ConnectError::Unhealthy { url: self.url.clone(), reason };
        let ask = async {
            let channel = self.endpoint()?.connect().await.map_err(|e| unhealthy(format!("cannot connect: {e}")))?;
            let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
            let answer = tonic_health::pb::health_client::HealthClient::new(channel).check(request).await.map_err(|s| unhealthy(s.message().to_string()))?;
            Ok(answer.into_inner().status())
        };
        tokio::time::timeout(timeout, ask).await.map_err(|_| unhealthy(format!("no answer within {} s", timeout.as_secs_f64())))?
    }

    /// Ok when the server says SERVING within `timeout`; the error says what
    /// it said or why it could not be asked. Container HEALTHCHECKs run this
    /// (`… health`).
    pub async fn check_health(&self, timeout: Duration) -> Result<(), ConnectError> {
        match self.health_status(timeout).await? {
            tonic_health::pb::health_check_response::ServingStatus::Serving => Ok(()),
            other => Err(ConnectError::Unhealthy { url: self.url.clone(), reason: format!("answers {}", other.as_str_name()) }),
        }
    }
}

#[cfg(test)]
mod local_dial_tests {
    use super::local_dial_addr;

    #[test]
    fn wildcards_are_reached_on_loopback_and_others_as_they_are() {
        let cases = [("0.0.0.0:50052", "127.0.0.1:50052"), ("[::]:7", "[::1]:7"), ("10.1.2.3:9", "10.1.2.3:9"), ("127.0.0.1:1", "127.0.0.1:1")];
        for (listen, dial) in cases {
            assert_eq!(local_dial_addr(listen.parse().unwrap()).to_string(), dial.parse::<std::net::SocketAddr>().unwrap().to_string());
        }
    }
}
