//! Traces: the client, the coordinator and a worker, as processes, export
//! spans over OTLP/gRPC to a collector this test serves (opentelemetry-proto's
//! generated service); one trace id covers a job from the client's submit to
//! the worker's upload and the completion, with correct parent links and the
//! engine's attributes.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use stylefarm_coordinator_tests::farm::NOWHERE;
use stylefarm_coordinator_tests::{sample, workspace_bin};

/// A received span and the service that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn trace(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn attr(&self, key: &str) -> Option<Value> {
        self.span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()?.value)
    }
    fn int(&self, key: &str) -> i64 {
        match self.attr(key) {
            Some(Value::IntValue(v)) => v,
            Some(Value::StringValue(s)) => s.parse().unwrap_or(-1),
            other => panic!("{key} of {} is {other:?}", self.span.name),
        }
    }
    fn float(&self, key: &str) -> f64 {
        match self.attr(key) {
            Some(Value::DoubleValue(v)) => v,
            Some(Value::IntValue(v)) => v as f64,
            other => panic!("{key} of {} is {other:?}", self.span.name),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.clone()?.value? {
                    Value::StringValue(s) => Some(s),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received { service: service.clone(), span });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A binary of this workspace with OTLP export pointed at `endpoint`.
fn traced(bin: &str, endpoint: &str) -> Command {
    let mut command = Command::new(workspace_bin(bin, bin));
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED")
        .env("STYLEFARM_LOG", "warn");
    command
}

fn stop(child: &mut Child) {
    // SIGTERM: the processes flush their spans as they exit
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("did not stop within 60 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_job_from_the_clients_submit_through_coordinator_and_worker() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut coordinator = traced("stylefarm-coordinator", &endpoint)
        .args(["--listen", "127.0.0.1:0", "--allow-input-prefix", NOWHERE, "--data-dir"])
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(coordinator.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = format!("http://{}", line.trim().strip_prefix("listening on ").unwrap());
    let mut worker = traced("stylefarm-worker", &endpoint)
        .args(["--coordinator", &url, "--devices", "cpu", "--name", "traced", "--drain-timeout-s", "30", "--work-dir"])
        .arg(dir.path().join("work"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let submitted = tokio::task::spawn_blocking({
        let (url, endpoint) = (url.clone(), endpoint.clone());
        move || {
            traced("stylefarm", &endpoint)
                .args(["--coordinator", &url, "submit", "--name", "traced", "--size", "48", "--iterations", "6", "--wait", "--content"])
                .arg(sample("chelsea.png"))
                .arg("--style")
                .arg(sample("retina.jpg"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    stop(&mut worker);
    stop(&mut coordinator);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.abort();

    let spans = collector.spans.lock().unwrap().clone();
    let named = |service: &str, name: &str| -> Vec<Received> { spans.iter().filter(|s| s.service == service && s.span.name == name).cloned().collect() };
    let one = |service: &str, name: &str| -> Received {
        let found = named(service, name);
        assert_eq!(
            found.len(),
            1,
            "one {service} {name} span, got {}: {:?}",
            found.len(),
            spans.iter().map(|s| (&s.service, &s.span.name)).collect::<Vec<_>>()
        );
        found.into_iter().next().unwrap()
    };
    let submit = one("stylefarm-client", "submit");
    let trace = submit.trace();
    let in_trace: Vec<&Received> = spans.iter().filter(|s| s.trace() == trace).collect();
    let by_id: HashMap<String, &Received> = in_trace.iter().map(|s| (s.id(), *s)).collect();
    // the coordinator's SubmitBatch continues the client's submit
    print_tree(&in_trace, &submit, 0);
    let submit_call = one("stylefarm-coordinator", "stylefarm.v1.Coordinator/SubmitBatch");
    assert_eq!((submit_call.trace(), submit_call.parent()), (trace.clone(), submit.id()));
    let job = one("stylefarm-coordinator", "job");
    assert_eq!(job.trace(), trace, "the job's trace is the submit's");
    let mut ancestor = by_id.get(&job.parent()).copied();
    while let Some(a) = ancestor {
        if a.id() == submit_call.id() {
            break;
        }
        ancestor = by_id.get(&a.parent()).copied();
    }
    assert!(ancestor.is_some(), "the job span descends from the SubmitBatch call");
    let attempt = one("stylefarm-coordinator", "attempt");
    assert_eq!(attempt.parent(), job.id());
    assert_eq!(attempt.int("job.attempt"), 1);
    // the job span runs from the submit to the job's end; the attempt says how
    // long it waited, which is the gap between their starts
    let waited_ns = attempt.span.start_time_unix_nano - job.span.start_time_unix_nano;
    let wait_ms = attempt.int("queue.wait_ms");
    assert!((wait_ms - (waited_ns / 1_000_000) as i64).abs() <= 50, "queue.wait_ms {wait_ms} vs a {waited_ns} ns gap");
    assert!(job.span.end_time_unix_nano >= attempt.span.end_time_unix_nano, "the job span ends with the job");
    assert!(matches!(job.attr("outcome"), Some(Value::StringValue(ref o)) if o == "succeeded"), "{:?}", job.span.attributes);
    assert!(matches!(attempt.attr("outcome"), Some(Value::StringValue(ref o)) if o == "succeeded"), "{:?}", attempt.span.attributes);
    // the worker's job continues the attempt; its stages hang under it
    let worker_job = one("stylefarm-worker", "job");
    assert_eq!((worker_job.trace(), worker_job.parent()), (trace.clone(), attempt.id()));
    for stage in ["fetch_inputs", "render", "encode", "upload"] {
        let s = one("stylefarm-worker", stage);
        assert_eq!((s.trace(), s.parent()), (trace.clone(), worker_job.id()), "{stage}");
    }
    let render = one("stylefarm-worker", "render");
    let optimise = one("stylefarm-worker", "optimise");
    assert_eq!(optimise.parent(), render.id());
    assert_eq!((optimise.int("size"), optimise.int("iterations")), (48, 6));
    assert!(optimise.int("evaluations") >= 6, "{:?}", optimise.span.attributes);
    assert!(optimise.float("final_loss") > 0.0);
    // and the completion the worker reported is in the job's trace too
    let complete = one("stylefarm-coordinator", "stylefarm.v1.WorkerApi/CompleteJob");
    assert_eq!((complete.trace(), complete.parent()), (trace, worker_job.id()));
    assert!(attempt.span.end_time_unix_nano >= worker_job.span.end_time_unix_nano.min(complete.span.start_time_unix_nano));
}

/// The trace as an indented tree (service, span, duration): the test's output.
fn print_tree(spans: &[&Received], node: &Received, depth: usize) {
    let ms = node.span.end_time_unix_nano.saturating_sub(node.span.start_time_unix_nano) as f64 / 1e6;
    eprintln!("{:indent$}{} {} {:.1} ms", "", node.service, node.span.name, ms, indent = depth * 2);
    let mut children: Vec<&&Received> = spans.iter().filter(|s| s.parent() == node.id()).collect();
    children.sort_by_key(|s| s.span.start_time_unix_nano);
    for child in children {
        print_tree(spans, child, depth + 1);
    }
}
