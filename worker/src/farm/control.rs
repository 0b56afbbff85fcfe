//! The worker's own small gRPC server (`--health-listen`): the standard health
//! service (SERVING while it works, NOT_SERVING once it drains), for Docker's
//! HEALTHCHECK and Kubernetes' gRPC probes; and `WorkerControl.Drain`, which a
//! Kubernetes preStop hook (`stylefarm-worker drain`) uses to start the drain
//! and wait for it. Drain is refused to callers outside this machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stylefarm_core::tasks::Tasks;
use stylefarm_proto as pb;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// What the control server needs from the running worker.
pub struct Control {
    /// Notified when Drain is called.
    pub drain: Notify,
    /// Jobs running now.
    pub running: Box<dyn Fn() -> usize + Send + Sync>,
}

struct ControlService {
    control: Arc<Control>,
}

#[tonic::async_trait]
impl pb::worker_control_server::WorkerControl for ControlService {
    async fn drain(&self, request: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        match request.remote_addr() {
            Some(peer) if peer.ip().is_loopback() => {}
            peer => {
                tracing::warn!(peer = ?peer, "Drain refused: only callers on this machine may drain it");
                return Err(Status::permission_denied("Drain is only answered on the worker's own machine (loopback)"));
            }
        }
        let running = (self.control.running)() as u32;
        tracing::info!(running, "Drain requested over gRPC");
        self.control.drain.notify_one();
        Ok(Response::new(pb::DrainResponse { running_jobs: running }))
    }
}

/// Serves health and control on `listener` as one of `tasks` (until they
/// stop, at the process's end); returns the health reporter (the caller flips
/// it to NOT_SERVING when it drains).
pub async fn serve(listener: tokio::net::TcpListener, control: Arc<Control>, tasks: &mut Tasks) -> Result<tonic_health::server::HealthReporter> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    reporter.set_serving::<pb::worker_control_server::WorkerControlServer<ControlService>>().await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router =
        tonic::transport::Server::builder().add_service(health).add_service(pb::worker_control_server::WorkerControlServer::new(ControlService { control }));
    let stopping = tasks.stopping();
    tasks.spawn("health", async move {
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopping.wait()).await {
            tracing::error!(error = %e, "the health server stopped");
        }
    });
    Ok(reporter)
}

/// Binds `addr` for [`serve`], naming the flag when it cannot.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--health-listen {addr}: cannot listen"))
}

/// `stylefarm-worker drain`: asks the worker at `addr` to drain, then waits
/// until it has exited (its health port closes) or `timeout` passes.
pub async fn drain_and_wait(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let url = format!("http://{addr}");
    let probe = stylefarm_proto::connect::ConnectOptions { url: url.clone(), ..Default::default() };
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await.with_context(|| format!("no worker health server at {addr}"))?;
    let r = pb::worker_control_client::WorkerControlClient::new(channel).drain(pb::DrainRequest {}).await.context("Drain")?.into_inner();
    eprintln!("draining: {} job(s) running", r.running_jobs);
    let started = Instant::now();
    loop {
        // alive while its health server answers at all (it says NOT_SERVING while it drains);
        // a fresh connection each time: the old one may linger after the process exits
        let alive = probe.health_status(Duration::from_secs(1)).await.is_ok();
        if !alive {
            eprintln!("drained: the worker has exited after {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("the worker is still running {} s after Drain", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// This machine's address on its default route (no packet is sent).
    fn non_loopback_ip() -> Option<std::net::IpAddr> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect("10.255.255.255:9").ok()?;
        Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
    }

    #[tokio::test]
    async fn health_serves_and_drain_from_loopback_notifies_the_worker() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let control = Arc::new(Control { drain: Notify::new(), running: Box::new(|| 2) });
        let mut tasks = Tasks::new();
        let reporter = serve(listener, Arc::clone(&control), &mut tasks).await.unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

        let notified = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (control, notified) = (Arc::clone(&control), Arc::clone(&notified));
            tokio::spawn(async move {
                control.drain.notified().await;
                notified.store(true, Ordering::SeqCst);
            })
        };
        let r = pb::worker_control_client::WorkerControlClient::new(channel).drain(pb::DrainRequest {}).await.unwrap().into_inner();
        assert_eq!(r.running_jobs, 2);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(notified.load(Ordering::SeqCst));

        // from another address of this machine (not loopback): refused
        if let Some(ip) = non_loopback_ip() {
            let listener = bind(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let control = Arc::new(Control { drain: Notify::new(), running: Box::new(|| 0) });
            let _other = serve(listener, control, &mut tasks).await.unwrap();
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{ip}:{port}")).unwrap().connect().await.unwrap();
            let refused = pb::worker_control_client::WorkerControlClient::new(channel).drain(pb::DrainRequest {}).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        } else {
            eprintln!("no non-loopback IPv4 address on this machine: the refusal of remote callers is not exercised");
        }

        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
    }
}
