//! The web dashboard (`--http-listen`): Batches, Batch, Job and Workers pages
//! rendered on the server, live through server-sent events from the same
//! event hub as WatchBatch, outputs and loss traces from the object store.
//!
//! Access uses the gRPC API's tokens and roles: `Authorization: Bearer` or the
//! HttpOnly cookie `/login` sets. A coordinator without tokens (loopback,
//! zero-config) is open, as its gRPC port is. Submitters see their own
//! batches; the Workers page is for admins. Every control (`actions.rs`) is a POST
//! with the `x-stylefarm-action` header (a cross-site form cannot send it) on top of
//! the SameSite=Strict cookie.

mod actions;
mod live;
mod mosaic;
mod pages;
pub mod tls;
mod view;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::{Stream, StreamExt};
use stylefarm_core::outputs::OutputKind;
use stylefarm_proto as pb;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};

use crate::auth::Api;
use crate::clock::now_ms;
use crate::convert;
use crate::error::CoordError;
use crate::farm::Farm;
use crate::identity::Principal;
use crate::ids::{BatchId, JobId};
use crate::model::{BatchPhase, JobState};
use pages::WorkerRow;
use view::{EventView, JobView, Row};

pub use live::LiveTraces;

/// The cookie `/login` sets.
const COOKIE: &str = "stylefarm_token";
/// Largest trace file the dashboard reads (a 10,000-iteration trace is ~2 MB).
const MAX_TRACE_BYTES: usize = 32 << 20;
/// Batches on the Batches page.
const PAGE_BATCHES: usize = 200;

const JS: &str = include_str!("../../assets/dashboard.js");
const CSS: &str = include_str!("../../assets/dashboard.css");

pub struct Web {
    farm: Arc<Farm>,
    live: Arc<LiveTraces>,
    /// Served over HTTPS: the sign-in cookie is `Secure`.
    https: bool,
    /// Host names the dashboard answers to while it is open (see [`host_allowed`]).
    hosts: Vec<String>,
}

/// The dashboard's routes; call inside the runtime (it starts the trace collector).
pub fn router(farm: Arc<Farm>, https: bool, hosts: Vec<String>) -> Router {
    let live = LiveTraces::spawn(&farm);
    let web = Arc::new(Web { farm, live, https, hosts });
    Router::new()
        .route("/", get(batches_page))
        .route("/batches/{id}", get(batch_page))
        .route("/jobs/{id}", get(job_page))
        .route("/workers", get(workers_page))
        .route("/fragments/batch-row/{id}", get(batch_row))
        .route("/fragments/workers", get(worker_rows))
        .route("/fragments/frames/{id}", get(frames_fragment))
        .route("/fragments/tiles/{id}", get(tiles_fragment))
        .route("/api/events", get(farm_events))
        .route("/api/batches/{id}/events", get(batch_events))
        .route("/api/batches/{id}/{action}", post(actions::batch_action))
        .route("/api/workers/{id}/{action}", post(actions::worker_action))
        .route("/api/jobs/{id}", get(job_json))
        .route("/api/jobs/{id}/trace", get(trace))
        .route("/files/{id}/{*name}", get(file))
        .route("/login", get(login_form).post(login))
        .route("/logout", get(logout))
        .route("/assets/dashboard.js", get(|| async { asset(JS, "text/javascript; charset=utf-8") }))
        .route("/assets/dashboard.css", get(|| async { asset(CSS, "text/css; charset=utf-8") }))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&web), check_host))
        .with_state(web)
}

/// DNS rebinding: a page on another site whose name comes to resolve to this
/// address would be same-origin with an open dashboard (no tokens, so no
/// cookie to lack). While no token is needed, only an IP literal, `localhost`
/// or a name in `http_hosts` is answered; with tokens, the cookie (set for
/// this host only) is the guard.
async fn check_host(State(web): State<Arc<Web>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| request.uri().host()).unwrap_or("");
    let open = !web.farm.auth.enforced().unwrap_or(true);
    if open && !host_allowed(host, &web.hosts) {
        tracing::warn!(host, "dashboard request for a host it does not serve refused (DNS rebinding?)");
        let message = format!("this dashboard does not answer to the host `{host}`: use its address, localhost, or add the name to http_hosts");
        return (StatusCode::MISDIRECTED_REQUEST, message).into_response();
    }
    next.run(request).await
}

/// Whether `host` (a Host header, with or without its port) is an IP
/// literal, `localhost` (or a name under it), or one of `names`.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit())).map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || name.ends_with(".localhost") || names.iter().any(|n| n.eq_ignore_ascii_case(&name))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// A refusal: pages answer in HTML (sign-in for a missing token), the API in JSON.
struct Failure {
    error: CoordError,
    /// The page to come back to after signing in; None for API calls.
    page: Option<String>,
}

impl Failure {
    fn api(error: CoordError) -> Failure {
        Failure { error, page: None }
    }
}

impl From<CoordError> for Failure {
    fn from(error: CoordError) -> Failure {
        Failure::api(error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self.page {
            Some(next) if status == StatusCode::UNAUTHORIZED => Redirect::to(&format!("/login?next={}", urlencode(&next))).into_response(),
            Some(_) => (status, Html(format!(r#"<!doctype html><title>{status}</title><link rel="stylesheet" href="/assets/dashboard.css"><main><h1>{status}</h1><p class="error">{}</p><p><a href="/">Batches</a></p></main>"#, pages::esc(&self.error.to_string())))).into_response(),
            None => (status, axum::Json(serde_json::json!({ "error": self.error.to_string() }))).into_response(),
        }
    }
}

fn urlencode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')).map(str::to_string))
}

/// Who is calling: the bearer header, else the cookie.
fn caller(web: &Web, headers: &HeaderMap, api: Api) -> Result<Principal, CoordError> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let credential = bearer.or_else(|| cookie_token(headers));
    web.farm.auth.authenticate_token(credential.as_deref(), api, "sign in at /login with a token, or send `Authorization: Bearer TOKEN`")
}

/// The caller of a page (a missing token leads to the sign-in page).
fn page_caller(web: &Web, headers: &HeaderMap, api: Api, path: &str) -> Result<Principal, Failure> {
    caller(web, headers, api).map_err(|error| Failure { error, page: Some(path.to_string()) })
}

fn on_page(path: &str) -> impl FnOnce(CoordError) -> Failure + '_ {
    move |error| Failure { error, page: Some(path.to_string()) }
}

fn phase(name: &str) -> Option<BatchPhase> {
    pb::names::parse_batch_state(name).and_then(|s| convert::batch_phase(s as i32))
}

async fn batches_page(State(web): State<Arc<Web>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Result<Html<String>, Failure> {
    let who = page_caller(&web, &headers, Api::Client, "/")?;
    let filter = q.get("state").map(String::as_str).filter(|s| pages::filters().any(|f| f == *s)).unwrap_or("all");
    let phases = phase(filter).into_iter().collect();
    let batches = web.farm.list_batches(&who, None, PAGE_BATCHES, phases).await.map_err(on_page("/"))?;
    Ok(Html(pages::layout("Batches", "batches", "/api/events", &who, &pages::batches(&batches, filter))))
}

async fn batch_page(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Html<String>, Failure> {
    let path = format!("/batches/{id}");
    let who = page_caller(&web, &headers, Api::Client, &path)?;
    let batch = BatchId::parse(&id, "batch id").map_err(on_page(&path))?;
    let (record, jobs) = web.farm.batch_with_jobs(batch, &who).await.map_err(on_page(&path))?;
    let body = pages::batch(&record, &jobs, &mosaic::tiles(&record.id, &jobs));
    Ok(Html(pages::layout(&format!("Batch {}", record.id), "batch", &format!("/api/batches/{}/events", record.id), &who, &body)))
}

async fn frames_fragment(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Html<String>, Failure> {
    let who = caller(&web, &headers, Api::Client)?;
    let batch = BatchId::parse(&id, "batch id")?;
    let (record, jobs) = web.farm.batch_with_jobs(batch, &who).await?;
    Ok(Html(pages::frames(&record.id, &jobs)))
}

async fn tiles_fragment(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Html<String>, Failure> {
    let who = caller(&web, &headers, Api::Client)?;
    let batch = BatchId::parse(&id, "batch id")?;
    let (record, jobs) = web.farm.batch_with_jobs(batch, &who).await?;
    Ok(Html(mosaic::tiles(&record.id, &jobs)))
}

async fn job_page(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Html<String>, Failure> {
    let path = format!("/jobs/{id}");
    let who = page_caller(&web, &headers, Api::Client, &path)?;
    let job = JobId::parse(&id, "job id").map_err(on_page(&path))?;
    let (record, message) = web.farm.job(job, &who).await.map_err(on_page(&path))?;
    let attempts: Vec<pb::Attempt> = web.farm.attempts(job).await.map_err(on_page(&path))?.iter().map(convert::attempt).collect();
    let body = pages::job(&message, &attempts, record.state.leased_ms(), now_ms());
    Ok(Html(pages::layout(&format!("Job {}", message.id), "job", &format!("/api/batches/{}/events", message.batch_id), &who, &body)))
}

fn worker_table(web: &Web) -> Result<Vec<WorkerRow>, CoordError> {
    let heartbeat = web.farm.config.heartbeat_interval_ms;
    let now = now_ms();
    web.farm.read(|s| {
        let mut rows: Vec<WorkerRow> = s
            .workers()
            .map(|w| {
                let running = s.running_jobs_of(w.id);
                let jobs = running.iter().map(|j| (j.to_string(), s.progress(*j).cloned())).collect();
                WorkerRow { worker: convert::worker(w, running.iter().map(ToString::to_string).collect(), now, heartbeat), jobs }
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.worker.last_seen_at_ms));
        rows
    })
}

async fn workers_page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Result<Html<String>, Failure> {
    let who = page_caller(&web, &headers, Api::Admin, "/workers")?;
    let rows = worker_table(&web).map_err(on_page("/workers"))?;
    Ok(Html(pages::layout("Workers", "workers", "/api/events", &who, &pages::workers(&rows))))
}

async fn worker_rows(State(web): State<Arc<Web>>, headers: HeaderMap) -> Result<Html<String>, Failure> {
    caller(&web, &headers, Api::Admin)?;
    Ok(Html(pages::worker_rows(&worker_table(&web)?)))
}

async fn batch_row(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Html<String>, Failure> {
    let who = caller(&web, &headers, Api::Client)?;
    let record = web.farm.batch_record(BatchId::parse(&id, "batch id")?, &who).await?;
    Ok(Html(pages::batch_row(&convert::batch(&record))))
}

async fn job_json(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, Failure> {
    let who = caller(&web, &headers, Api::Client)?;
    let (_, message) = web.farm.job(JobId::parse(&id, "job id")?, &who).await?;
    Ok(axum::Json(JobView::of(&message)).into_response())
}

/// A job the caller may see, and its committed outputs (none unless it succeeded).
async fn outputs_of(web: &Web, headers: &HeaderMap, id: &str) -> Result<(pb::Job, crate::model::JobOutputs), CoordError> {
    let who = caller(web, headers, Api::Client)?;
    let (record, message) = web.farm.job(JobId::parse(id, "job id")?, &who).await?;
    match record.state {
        JobState::Succeeded { outputs, .. } => Ok((message, outputs)),
        _ => Ok((message, Default::default())),
    }
}

#[derive(serde::Serialize)]
struct TraceView {
    job: String,
    state: &'static str,
    /// store (the finished trace), live (rows seen so far) or none
    source: &'static str,
    rows: Vec<Row>,
}

fn parse_trace(text: &str) -> Vec<Row> {
    let number = |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|v| {
            [
                number(&v, "iteration"),
                number(&v, "total"),
                number(&v, "content"),
                number(&v, "style"),
                number(&v, "tv"),
                number(&v, "scale"),
                number(&v, "elapsed_ms"),
            ]
        })
        .collect()
}

async fn trace(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, Failure> {
    let (job, outputs) = outputs_of(&web, &headers, &id).await?;
    let state_name = view::state_name(job.state);
    let view = match outputs.files.iter().find(|f| f.kind == OutputKind::Trace) {
        Some(file) => {
            if file.size_bytes as usize > MAX_TRACE_BYTES {
                return Err(
                    CoordError::FailedPrecondition(format!("the trace is {} bytes; the dashboard reads at most {MAX_TRACE_BYTES}", file.size_bytes)).into()
                );
            }
            let data = web.farm.blobs.get(&file.key).await.map_err(|e| CoordError::Blob(e.to_string()))?;
            TraceView { job: id, state: state_name, source: "store", rows: parse_trace(&String::from_utf8_lossy(&data)) }
        }
        None if job.state == pb::JobState::Running as i32 => TraceView { rows: web.live.rows(&id), job: id, state: state_name, source: "live" },
        None => TraceView { job: id, state: state_name, source: "none", rows: Vec::new() },
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(view)).into_response())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "png" => "image/png",
        "gif" => "image/gif",
        "jpg" | "jpeg" => "image/jpeg",
        "json" => "application/json",
        "jsonl" => "application/x-ndjson",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

async fn file(State(web): State<Arc<Web>>, headers: HeaderMap, Path((id, name)): Path<(String, String)>) -> Result<Response, Failure> {
    let (_, outputs) = outputs_of(&web, &headers, &id).await?;
    // only a committed output, by its exact name: nothing else in the store is reachable
    let Some(file) = outputs.files.iter().find(|f| f.key.strip_prefix(&outputs.prefix) == Some(name.as_str())) else {
        return Err(CoordError::not_found("output", format!("{id}/{name}")).into());
    };
    // streamed from the store in pieces, never read whole
    let (size, pieces) = web.farm.blobs.get_stream(&file.key, 1 << 20).await.map_err(|e| CoordError::Blob(e.to_string()))?;
    let counter = web.farm.metrics().map(|m| m.downloaded_bytes.clone());
    let body = axum::body::Body::from_stream(pieces.map(move |piece| {
        if let (Ok(data), Some(counter)) = (&piece, &counter) {
            counter.increment(data.len() as u64);
        }
        piece.map_err(std::io::Error::other)
    }));
    let length = size.to_string();
    let headers = [(header::CONTENT_TYPE, content_type(&name)), (header::CACHE_CONTROL, "private, max-age=3600"), (header::CONTENT_LENGTH, length.as_str())];
    Ok((headers, body).into_response())
}

fn sse_event(event: &pb::WatchEvent) -> Event {
    let view = EventView::of(event);
    Event::default().event(view.kind).json_data(&view).unwrap_or_else(|_| Event::default().event("resync").data("{}"))
}

type Events = Sse<axum::response::sse::KeepAliveStream<std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>>>;

/// One batch's jobs as they are, then every change until it finishes.
async fn batch_events(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Events, Failure> {
    let who = caller(&web, &headers, Api::Client)?;
    let rx = crate::follow::follow_batch(&web.farm, BatchId::parse(&id, "batch id")?, who).await?;
    let stream = ReceiverStream::new(rx).map(|item| {
        Ok(match item {
            Ok(event) => sse_event(&event),
            Err(_) => Event::default().event("bye").data("{}"),
        })
    });
    Ok(Sse::new(stream.boxed()).keep_alive(KeepAlive::default()))
}

/// Every batch's changes the caller may see, from now on.
async fn farm_events(State(web): State<Arc<Web>>, headers: HeaderMap) -> Result<Events, Failure> {
    let who = caller(&web, &headers, Api::Client)?;
    let mut stopping = web.farm.stopping();
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let hello = futures::stream::once(async { Ok(Event::default().event("hello").data("{}")) });
    let events = BroadcastStream::new(web.farm.subscribe_all())
        .filter_map(move |item| {
            let event = match item {
                Ok(event) if event.batch.as_ref().is_some_and(|b| who.owns(&b.owner)) => Some(Ok(sse_event(&event))),
                Ok(_) => None,
                // fell behind: the page reloads its tables
                Err(_) => Some(Ok(Event::default().event("resync").data("{}"))),
            };
            std::future::ready(event)
        })
        .take_until(Box::pin(stop));
    Ok(Sse::new(hello.chain(events).boxed()).keep_alive(KeepAlive::default()))
}

async fn login_form(Query(q): Query<HashMap<String, String>>) -> Html<String> {
    Html(pages::login(&safe_next(q.get("next").map(String::as_str)), None))
}

/// Only paths on this site (no `//host` or `scheme:`; no whitespace or
/// control characters, which browsers drop: `/\t/evil` is `//evil` to them).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.chars().any(|c| c.is_control() || c.is_whitespace()) => n.to_string(),
        _ => "/".into(),
    }
}

/// Login CSRF: a form on another site must not sign this browser in (as the
/// attacker, whose batches the victim would then fill). Browsers say where a
/// POST comes from; one from elsewhere is refused.
fn cross_site(headers: &HeaderMap) -> bool {
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|site| site == "cross-site" || site == "same-site") {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    origin == "null" || !origin_host.eq_ignore_ascii_case(host)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(web): State<Arc<Web>>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref());
    if cross_site(&headers) {
        tracing::warn!(origin = ?headers.get(header::ORIGIN), "dashboard sign-in from another site refused");
        return (StatusCode::FORBIDDEN, Html(pages::login(&next, Some("sign in from this dashboard's own page")))).into_response();
    }
    let token = form.token.trim();
    match web.farm.auth.authenticate_token(Some(token), Api::Client, "a token is required") {
        Ok(who) => {
            tracing::info!(principal = %who.name, role = %who.role, "dashboard sign-in");
            let secure = if web.https { "; Secure" } else { "" };
            let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000{secure}");
            ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "dashboard sign-in refused");
            (StatusCode::UNAUTHORIZED, Html(pages::login(&next, Some(&e.to_string())))).into_response()
        }
    }
}

async fn logout() -> Response {
    ([(header::SET_COOKIE, format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))], Redirect::to("/login")).into_response()
}

/// Serves the dashboard on `listener` (HTTPS with `tls`) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    farm: Arc<Farm>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    hosts: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), https = tls.is_some(), "serving the dashboard");
    match tls {
        Some(acceptor) => axum::serve(tls::TlsListener::new(listener, acceptor)?, router(farm, true, hosts)).with_graceful_shutdown(shutdown).await,
        None => axum::serve(listener, router(farm, false, hosts)).with_graceful_shutdown(shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_next_paths_and_traces_parse_safely() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; stylefarm_token=sf1_ab_cd; b=2"));
        assert_eq!(cookie_token(&headers).as_deref(), Some("sf1_ab_cd"));
        assert_eq!(safe_next(Some("/batches/b1")), "/batches/b1");
        for evil in ["//evil.example/", "https://evil.example/", "/\\evil", "javascript:alert(1)", "/\t/evil.example/", "/\n/evil.example", " //evil.example"] {
            assert_eq!(safe_next(Some(evil)), "/", "{evil}");
        }
        assert_eq!(urlencode("/jobs/j1?x=<y>"), "/jobs/j1%3Fx%3D%3Cy%3E");
        let rows = parse_trace(
            "{\"scale\":0,\"iteration\":1,\"total\":5.0,\"content\":1,\"style\":4,\"tv\":0,\"elapsed_ms\":3}\nnot json\n{\"iteration\":2,\"total\":4}\n",
        );
        assert_eq!(rows.len(), 2, "an unreadable line is skipped");
        assert_eq!(rows[0][..5], [1.0, 5.0, 1.0, 4.0, 0.0]);
        assert!(rows[1][2].is_nan(), "a missing column is NaN (drawn as a gap)");
    }

    #[test]
    fn an_open_dashboard_answers_only_to_its_addresses_and_named_hosts() {
        let names = vec!["farm.studio.example".to_string()];
        for ok in
            ["127.0.0.1:8080", "10.1.2.3", "[::1]:8080", "localhost:8080", "LOCALHOST", "app.localhost", "farm.studio.example:443", "farm.studio.example."]
        {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for rebinding in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example", "", "[evil]:80"] {
            assert!(!host_allowed(rebinding, &names), "{rebinding}");
        }
    }

    #[test]
    fn a_sign_in_from_another_site_is_cross_site() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:8080")])), "no Origin: a non-browser client");
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:8080"), ("origin", "https://evil.example")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")])));
    }
}
