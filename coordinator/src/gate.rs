//! The gate every call to the `Coordinator` and `WorkerApi` services passes
//! before a byte of its message is read: nothing big is buffered before the
//! caller is known, no principal holds more of the server than its share, and
//! nobody holds a call open by sending slowly.
//!
//! - **Caller first.** The token in the headers is checked here; a call
//!   without a valid one is answered UNAUTHENTICATED (or PERMISSION_DENIED)
//!   from its headers, and its body is never read: HTTP/2 drops what was
//!   sent. The principal goes on to the handler in the request's extensions.
//! - **Calls at once per principal** (`concurrent_calls` quota, client API):
//!   one over is RESOURCE_EXHAUSTED at once, naming the quota. A call counts
//!   until its response ends, so open watch streams and downloads count.
//! - **Bytes in flight per principal** (`request_mib_in_flight` quota, client
//!   API): what a principal's open calls have sent, counted as it arrives and
//!   until each call's response ends; the frame that goes over it ends its
//!   call with RESOURCE_EXHAUSTED, so one user's large or half-sent messages
//!   hold at most that much of the coordinator's memory.
//!   The WorkerApi is not counted per principal (a pool of workers may share
//!   one token); HTTP/2's stream limit bounds each connection.
//! - **Stalled senders.** Once the server waits for more of a request, the
//!   sender has `stall_timeout` to send it; then the call ends with
//!   DEADLINE_EXCEEDED and what it had sent is dropped.
//!
//! Health, reflection and the KEDA scaler pass ungated: they take no token
//! and carry small messages (the default 4 MiB limit).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;

use crate::auth::{Api, Authenticated, Authenticator};
use crate::error::CoordError;
use crate::quota::Quotas;

/// Principals whose calls are counted at most; idle ones are forgotten first.
const MAX_PRINCIPALS: usize = 10_000;

/// Which gated service a path belongs to.
fn service_of(path: &str) -> Option<Api> {
    if path.starts_with("/stylefarm.v1.Coordinator/") {
        Some(Api::Client)
    } else if path.starts_with("/stylefarm.v1.WorkerApi/") {
        Some(Api::Worker)
    } else {
        None
    }
}

/// What the gate needs from the farm: who calls, and each one's share.
pub struct Gate {
    auth: Arc<Authenticator>,
    quotas: Quotas,
    stall_timeout: Duration,
    /// What each principal holds open on the client API.
    shares: Mutex<HashMap<String, Share>>,
}

/// One principal's open calls and the request bytes they hold.
struct Share {
    limit: u32,
    calls: Arc<Semaphore>,
    bytes: Arc<AtomicU64>,
}

impl Share {
    fn idle(&self) -> bool {
        self.calls.available_permits() == self.limit as usize && self.bytes.load(Ordering::Relaxed) == 0
    }
}

/// What an admitted client call holds until its request and response are
/// both done: a call permit and its request bytes on the principal's count.
#[derive(Debug)]
struct Held {
    _permit: Option<OwnedSemaphorePermit>,
    charge: Option<Charge>,
}

/// A call's request bytes on its principal's in-flight count.
#[derive(Debug)]
struct Charge {
    who: String,
    total: Arc<AtomicU64>,
    mine: AtomicU64,
    limit: u64,
}

impl Charge {
    /// Counts `n` more bytes; over the principal's limit, the call ends.
    fn add(&self, n: u64) -> Result<(), CoordError> {
        self.mine.fetch_add(n, Ordering::Relaxed);
        let total = self.total.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.limit {
            let mib = |b: u64| b.div_ceil(1 << 20);
            return Err(CoordError::QuotaExceeded {
                quota: "request_mib_in_flight",
                limit: mib(self.limit).to_string(),
                detail: format!("`{}` has {} MiB of requests in flight", self.who, mib(total)),
            });
        }
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Gate {
    pub fn new(auth: Arc<Authenticator>, quotas: Quotas, stall_timeout: Duration) -> Arc<Gate> {
        Arc::new(Gate { auth, quotas, stall_timeout, shares: Mutex::new(HashMap::new()) })
    }

    /// Checks the caller of a call to `api` from its headers; on the client
    /// API also takes one of its principal's call permits and counts its
    /// request bytes toward the principal's.
    fn admit(&self, headers: &http::HeaderMap, api: Api) -> Result<(Authenticated, Arc<Held>), CoordError> {
        let principal = self.auth.authenticate_headers(headers, api)?;
        let held = match api {
            Api::Client => {
                let quota = self.quotas.of(&principal);
                self.hold(&principal.name, quota.concurrent_calls, quota.request_mib_in_flight)?
            }
            Api::Worker | Api::Admin => Held { _permit: None, charge: None },
        };
        Ok((Authenticated::new(principal), Arc::new(held)))
    }

    /// One of `who`'s `calls` permits and a charge on its `mib` of request
    /// bytes in flight (neither where the quota is no limit).
    fn hold(&self, who: &str, calls: u32, mib: u64) -> Result<Held, CoordError> {
        if calls == u32::MAX && mib == u64::MAX {
            return Ok(Held { _permit: None, charge: None });
        }
        let (semaphore, bytes) = {
            let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
            if !shares.contains_key(who) && shares.len() >= MAX_PRINCIPALS {
                shares.retain(|_, share| !share.idle());
                if shares.len() >= MAX_PRINCIPALS {
                    return Err(CoordError::Unavailable(format!("{MAX_PRINCIPALS} principals have calls open; try again")));
                }
            }
            let permits = || Arc::new(Semaphore::new((calls as usize).min(Semaphore::MAX_PERMITS)));
            let share = shares.entry(who.to_string()).or_insert_with(|| Share { limit: calls, calls: permits(), bytes: Arc::default() });
            if share.limit != calls {
                // the limit changed (a new config): a fresh count of calls from here
                share.limit = calls;
                share.calls = permits();
            }
            (Arc::clone(&share.calls), Arc::clone(&share.bytes))
        };
        let permit = match calls {
            u32::MAX => None,
            _ => Some(semaphore.try_acquire_owned().map_err(|_| CoordError::QuotaExceeded {
                quota: "concurrent_calls",
                limit: calls.to_string(),
                detail: format!("`{who}` has {calls} calls open (watch streams and downloads count until they end)"),
            })?),
        };
        let charge = (mib != u64::MAX).then(|| Charge { who: who.to_string(), total: bytes, mine: AtomicU64::new(0), limit: mib.saturating_mul(1 << 20) });
        Ok(Held { _permit: permit, charge })
    }

    /// Principals with a count kept (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shares.lock().unwrap().len()
    }
}

/// The tower layer that puts a [`Gate`] in front of the services.
#[derive(Clone)]
pub struct GateLayer {
    gate: Arc<Gate>,
}

impl GateLayer {
    pub fn new(gate: Arc<Gate>) -> GateLayer {
        GateLayer { gate }
    }
}

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Gated<S> {
        Gated { inner, gate: Arc::clone(&self.gate) }
    }
}

#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> tower_service::Service<http::Request<Body>> for Gated<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(api) = service_of(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let (authenticated, held) = match self.gate.admit(request.headers(), api) {
            Ok(admitted) => admitted,
            Err(e) => {
                tracing::debug!(error = %e, path = request.uri().path(), "call refused at the gate");
                // the body is dropped unread: HTTP/2 resets the stream
                return Box::pin(std::future::ready(Ok(Status::from(e).into_http::<Body>())));
            }
        };
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(authenticated);
        let body = Body::new(Watched::new(body, self.gate.stall_timeout, Arc::clone(&held)));
        let future = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let response = future.await?;
            // the permit and the bytes are held until the response's last frame
            Ok(response.map(|body| Body::new(Holding { body, _held: held })))
        })
    }
}

/// A request body that ends with DEADLINE_EXCEEDED when its sender keeps
/// the server waiting longer than `limit` for the next frame (the clock runs
/// only while the server waits for the sender, not while it is busy itself),
/// and with RESOURCE_EXHAUSTED when its principal's bytes in flight go over
/// their quota.
struct Watched {
    body: Body,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
    held: Arc<Held>,
}

impl Watched {
    fn new(body: Body, limit: Duration, held: Arc<Held>) -> Watched {
        Watched { body, limit, sleep: Box::pin(tokio::time::sleep(limit)), waiting: false, held }
    }
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        let this = self.get_mut();
        if !this.waiting {
            this.waiting = true;
            let deadline = tokio::time::Instant::now() + this.limit;
            this.sleep.as_mut().reset(deadline);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.waiting = false;
            if let (Some(Ok(data)), Some(charge)) = (frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)), &this.held.charge) {
                if let Err(over) = charge.add(data.map_or(0, |d| d.len() as u64)) {
                    tracing::debug!(principal = %charge.who, "request bytes in flight over quota: call ended");
                    return Poll::Ready(Some(Err(Status::from(over))));
                }
            }
            return Poll::Ready(frame);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(stall_timeout_s = this.limit.as_secs_f64(), "a sender stalled: call ended");
                Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "the request stalled: nothing arrived for {} (the coordinator's stall_timeout)",
                    stylefarm_core::duration::HumanDuration(this.limit)
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that holds its call's permit and bytes until it ends.
struct Holding {
    body: Body,
    _held: Arc<Held>,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMode, Role, TokenStore, WorkerCerts};
    use http_body::Body as _;

    fn gate(dir: &std::path::Path, quotas: Quotas) -> (Arc<Gate>, String, String) {
        let store = TokenStore::open(dir).unwrap();
        let ann = store.create("ann", Role::Submit).unwrap();
        let gpu = store.create("gpu", Role::Worker).unwrap();
        let auth = Arc::new(Authenticator::new(TokenStore::open(dir).unwrap(), AuthMode::Auto, WorkerCerts::NotRequired));
        (Gate::new(auth, quotas, Duration::from_secs(1)), ann, gpu)
    }

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_two_services_are_gated() {
        assert_eq!(service_of("/stylefarm.v1.Coordinator/SubmitBatch"), Some(Api::Client));
        assert_eq!(service_of("/stylefarm.v1.WorkerApi/Lease"), Some(Api::Worker));
        assert_eq!(service_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(service_of("/stylefarm.v1.CoordinatorX/SubmitBatch"), None, "an unknown service is answered UNIMPLEMENTED by the router");
    }

    #[test]
    fn callers_are_known_from_headers_and_held_to_their_calls_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut quotas = Quotas::default();
        quotas.submit.concurrent_calls = 2;
        let (gate, ann, gpu) = gate(dir.path(), quotas);
        let e = gate.admit(&headers(None), Api::Client).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        assert_eq!(gate.admit(&headers(Some("sf1_00_00")), Api::Client).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(gate.admit(&headers(Some(&ann)), Api::Worker).unwrap_err().code(), tonic::Code::PermissionDenied);
        let first = gate.admit(&headers(Some(&ann)), Api::Client).unwrap();
        let second = gate.admit(&headers(Some(&ann)), Api::Client).unwrap();
        let e = gate.admit(&headers(Some(&ann)), Api::Client).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.to_string().contains("quota `concurrent_calls` (2)") && e.to_string().contains("`ann` has 2 calls open"), "{e}");
        drop(first);
        let third = gate.admit(&headers(Some(&ann)), Api::Client).expect("a call that ended frees its permit");
        // workers are not counted per principal (a pool shares one token)
        let workers: Vec<_> = (0..10).map(|_| gate.admit(&headers(Some(&gpu)), Api::Worker).unwrap()).collect();
        assert!(workers.iter().all(|(_, held)| held._permit.is_none() && held.charge.is_none()));
        drop((second, third));
    }

    #[test]
    fn the_count_of_principals_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, _, _) = gate(dir.path(), Quotas::default());
        let held: Vec<_> = (0..5).map(|i| gate.hold(&format!("p{i}"), 4, 1).unwrap()).collect();
        for i in 5..MAX_PRINCIPALS + 10 {
            drop(gate.hold(&format!("p{i}"), 4, 1).unwrap());
        }
        assert!(gate.tracked() <= MAX_PRINCIPALS, "{}", gate.tracked());
        drop(held);
    }

    #[test]
    fn a_principals_request_bytes_in_flight_are_bounded_and_freed_when_calls_end() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, _, _) = gate(dir.path(), Quotas::default());
        let (first, second) = (gate.hold("ann", 8, 1).unwrap(), gate.hold("ann", 8, 1).unwrap());
        let (a, b) = (first.charge.as_ref().unwrap(), second.charge.as_ref().unwrap());
        a.add(600 << 10).unwrap();
        let e = b.add(600 << 10).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.to_string().contains("quota `request_mib_in_flight` (1)") && e.to_string().contains("`ann` has 2 MiB"), "{e}");
        let other = gate.hold("bob", 8, 1).unwrap();
        other.charge.as_ref().unwrap().add(1 << 20).expect("bob has his own count");
        drop((first, second));
        let third = gate.hold("ann", 8, 1).unwrap();
        third.charge.as_ref().unwrap().add(1 << 20).expect("ended calls gave their bytes back");
    }

    #[tokio::test]
    async fn a_stalled_sender_ends_its_call_and_a_slow_server_does_not() {
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<bytes::Bytes>, Status>>(4);
        let body = Body::new(http_body_util::StreamBody::new(rx));
        let limit = Duration::from_millis(300);
        let held = Arc::new(Held { _permit: None, charge: None });
        let mut limited = std::pin::pin!(Watched::new(body, limit, held));
        tx.try_send(Ok(Frame::data(bytes::Bytes::from_static(b"abc")))).unwrap();
        // the server was busy for twice the limit before it read on: that is not the sender's stall
        tokio::time::sleep(limit * 2).await;
        let frame = futures::future::poll_fn(|cx| limited.as_mut().poll_frame(cx)).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        let started = std::time::Instant::now();
        let e = futures::future::poll_fn(|cx| limited.as_mut().poll_frame(cx)).await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert!(e.message().contains("stalled"), "{}", e.message());
        assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
        // the sender was alive all along: the body was pending, not ended
        drop(tx);
    }
}
