//! Logs and OpenTelemetry traces for every stylefarm process. `tracing` stays
//! the API; spans leave the process over OTLP/gRPC only when the standard
//! variables say where (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]` and the batch
//! processor's `OTEL_BSP_*` are honoured). Without them no OpenTelemetry
//! layer is installed and [`enabled`] is false, so callers skip the spans
//! they make only for traces.
//!
//! Context travels as W3C `traceparent` in gRPC metadata ([`inject`],
//! [`extract`]) and in a lease ([`context_from_traceparent`]).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfig, BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::subscriber::Interest;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static INSTALLED: AtomicBool = AtomicBool::new(false);
static EXPORTING: AtomicBool = AtomicBool::new(true);

/// Whether spans are exported (OTLP configured, the subscriber installed, and
/// export not paused with [`set_exporting`]).
pub fn enabled() -> bool {
    INSTALLED.load(Ordering::Relaxed) && EXPORTING.load(Ordering::Relaxed)
}

/// Pauses (false) or resumes span export in this process: spans started while
/// paused are not recorded at all. For benchmarks that compare export on and
/// off in one run; components read [`enabled`] when they start.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("invalid log filter `{filter}`: {reason}")]
    Filter { filter: String, reason: String },
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global subscriber is already installed")]
    AlreadyInstalled,
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the environment asks for OTLP export.
pub fn otlp_configured() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[must_use = "spans still buffered are lost unless the guard lives to the end of main"]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Flushes buffered spans on a blocking thread (the exporter needs the
    /// runtime's I/O meanwhile); call it at the end of an async `main`.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = provider.force_flush() {
                    eprintln!("OpenTelemetry: flushing spans failed: {e}");
                }
                let _ = provider.shutdown();
            })
            .await;
        }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.force_flush() {
                eprintln!("OpenTelemetry: flushing spans failed: {e}");
            }
            let _ = provider.shutdown();
        }
    }
}

/// The batch span processor's queue unless `OTEL_BSP_MAX_QUEUE_SIZE` says
/// otherwise. The SDK's 2,048 drops spans at the first burst: cancelling
/// 10,000 queued jobs ends 10,000 `job` spans at once (when job spans were
/// made at submit, the coordinator bench lost 11,482 of 20,000 that way). A
/// full queue holds a few tens of MiB.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 65_536;
/// Spans per OTLP export request unless `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` says
/// otherwise (the SDK's 512 means four times as many requests; 2,048 spans
/// are well under gRPC's 4 MiB message limit).
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 2_048;

/// The batch processor's settings: the `OTEL_BSP_*` variables (read by the
/// SDK's builder), with stylefarm's defaults where the queue and batch sizes
/// are not set. `var` reads a variable (the environment, or a test's map).
fn batch_config(var: impl Fn(&str) -> Option<String>) -> BatchConfig {
    let mut builder = BatchConfigBuilder::default();
    if var("OTEL_BSP_MAX_QUEUE_SIZE").is_none_or(|v| v.trim().is_empty()) {
        builder = builder.with_max_queue_size(DEFAULT_MAX_QUEUE_SIZE);
    }
    if var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none_or(|v| v.trim().is_empty()) {
        builder = builder.with_max_export_batch_size(DEFAULT_MAX_EXPORT_BATCH_SIZE);
    }
    builder.build()
}

/// Spans at info and above go out (whatever the log filter prints), unless
/// export is paused ([`set_exporting`]). The pause is asked on every span: a
/// `filter_fn` would cache its first answer per callsite, so a span first
/// made while paused (the bench's runs without traces come first) would
/// never be exported after.
fn exporting_filter<S>(
) -> DynFilterFn<S, impl Fn(&tracing::Metadata<'_>, &tracing_subscriber::layer::Context<'_, S>) -> bool, impl Fn(&'static tracing::Metadata<'static>) -> Interest>
{
    let info_or_above = |meta: &tracing::Metadata<'_>| *meta.level() <= tracing::Level::INFO;
    DynFilterFn::new(move |meta, _| EXPORTING.load(Ordering::Relaxed) && info_or_above(meta)).with_callsite_filter(move |meta| {
        if info_or_above(meta) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    })
}

/// Installs the process's subscriber: logs to stderr (text or JSON lines)
/// filtered by `filter`, and, when OTLP is configured, spans exported as
/// service `default_service` (unless OTEL_SERVICE_NAME says otherwise).
/// Needs a Tokio runtime when OTLP is configured (the exporter's gRPC client).
pub fn init(default_service: &'static str, filter: &str, json: bool) -> Result<TracingGuard, TracingError> {
    let env_filter = || EnvFilter::try_new(filter).map_err(|e| TracingError::Filter { filter: filter.to_string(), reason: e.to_string() });
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(env_filter()?).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(env_filter()?).boxed()
    };
    if !otlp_configured() {
        tracing_subscriber::registry().with(fmt).try_init().map_err(|_| TracingError::AlreadyInstalled)?;
        return Ok(TracingGuard { provider: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(|e| TracingError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(default_service);
    }
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch_config(|name| std::env::var(name).ok())).build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource.build()).build();
    let tracer = provider.tracer(default_service);
    let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(exporting_filter());
    tracing_subscriber::registry().with(fmt).with(otel).try_init().map_err(|_| TracingError::AlreadyInstalled)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    INSTALLED.store(true, Ordering::Relaxed);
    Ok(TracingGuard { provider: Some(provider) })
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Puts `span`'s context into gRPC metadata as `traceparent` (nothing when
/// traces are off or the span is not recorded).
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

/// The remote context in request headers (`traceparent`), if any.
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// A W3C `traceparent` (`00-TRACE-SPAN-FLAGS`) as a remote parent context;
/// an empty context if it does not parse.
pub fn context_from_traceparent(traceparent: &str) -> Context {
    match parse_traceparent(traceparent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

/// The span context a `traceparent` names.
pub fn parse_traceparent(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

/// `traceparent` of a span context.
pub fn traceparent(sc: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

/// Makes `span` a child of `parent` (when traces are on and the context is valid).
pub fn set_parent(span: &tracing::Span, parent: Context) {
    if enabled() && parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The span context of `span` as exported (invalid when traces are off).
pub fn span_context(span: &tracing::Span) -> SpanContext {
    if !enabled() {
        return SpanContext::empty_context();
    }
    span.context().span().span_context().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_not_remembered_per_callsite() {
        use tracing_subscriber::layer::Filter;
        let filter = exporting_filter::<tracing_subscriber::Registry>();
        let info = tracing::subscriber::with_default(tracing_subscriber::registry(), || tracing::info_span!("probe").metadata()).unwrap();
        let debug = tracing::subscriber::with_default(tracing_subscriber::registry(), || tracing::debug_span!("probe").metadata()).unwrap();
        set_exporting(false);
        let paused = filter.callsite_enabled(info);
        set_exporting(true);
        assert!(paused.is_sometimes(), "an info span first seen while paused must be asked again later");
        assert!(filter.callsite_enabled(debug).is_never(), "debug spans are never exported");
    }

    #[test]
    fn the_batch_queue_holds_a_large_submit_unless_the_variables_say_otherwise() {
        let ours = format!("{:?}", batch_config(|_| None));
        assert!(ours.contains("max_queue_size: 65536") && ours.contains("max_export_batch_size: 2048"), "{ours}");
        // a variable the operator set is the SDK's to read: ours does not override it
        let set = |name: &str| (name == "OTEL_BSP_MAX_QUEUE_SIZE" || name == "OTEL_BSP_MAX_EXPORT_BATCH_SIZE").then(|| "100".to_string());
        let theirs = format!("{:?}", batch_config(set));
        assert!(!theirs.contains("max_queue_size: 65536") && !theirs.contains("max_export_batch_size: 2048"), "{theirs}");
    }

    #[test]
    fn traceparents_parse_and_print_back() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(&sc), tp);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        assert!(!context_from_traceparent("garbage").span().span_context().is_valid());
    }

    #[test]
    fn the_traceparent_header_is_extracted() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let cx = extract(&headers);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!extract(&http::HeaderMap::new()).span().span_context().is_valid());
    }

    #[test]
    fn otlp_is_configured_only_by_an_endpoint() {
        // the test process has none of these set unless someone exports them
        if !env_set("OTEL_EXPORTER_OTLP_ENDPOINT") && !env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            assert!(!otlp_configured());
        }
    }
}
