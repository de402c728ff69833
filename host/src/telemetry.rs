//! Logs (tracing) and metrics (Prometheus text at `/metrics`).
//!
//! Metrics:
//! - `mercato_http_requests_total{method, route, status}`
//! - `mercato_http_request_duration_seconds{method, route}` (histogram)
//! - `mercato_component_call_duration_seconds{component, function}` (histogram)
//! - `mercato_component_faults_total{component, kind}` (traps, deadlines, memory caps)
//! - `mercato_plugin_runs_total{outcome}` (`ok` or the error kind), with
//!   `mercato_plugin_run_duration_seconds` and `mercato_plugin_run_instructions`

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::wasm::Fault;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Whether component calls get spans of their own: set when spans are
/// exported (an OTLP endpoint is configured) or by [`trace_component_calls`].
static COMPONENT_SPANS: AtomicBool = AtomicBool::new(false);

/// Give every component call a span (`component`, `function`, `version`,
/// `outcome`), as [`init`] does when it exports spans.
pub fn trace_component_calls(on: bool) {
    COMPONENT_SPANS.store(on, Ordering::Relaxed);
}

/// The span of one component call, a child of the request's; disabled (no
/// cost beyond a branch) unless spans are exported.
pub fn component_span(component: &'static str, function: &'static str, version: i64) -> tracing::Span {
    if !COMPONENT_SPANS.load(Ordering::Relaxed) {
        return tracing::Span::none();
    }
    tracing::info_span!("component_call", component, function, version, outcome = tracing::field::Empty)
}

/// Install the process-wide metrics recorder (once) and return its handle.
pub fn metrics() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .ok()
                .and_then(|b| b.install_recorder().ok())
        })
        .as_ref()
}

/// Flushes exported traces when dropped (or [`Telemetry::shutdown`]).
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported to an OTLP collector.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Export the spans still buffered, then stop the exporter.
    pub fn shutdown(mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("mercato: flushing traces failed: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// The OTLP endpoint from the standard OpenTelemetry variables, if any.
fn otlp_endpoint() -> Option<String> {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// Initialise logging and tracing: `RUST_LOG` filters (default `info`); JSON
/// lines on stderr when `json` is set; spans exported over OTLP/HTTP
/// (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is
/// set, off otherwise. Call it outside the async runtime: the exporter's
/// blocking HTTP client runs on its own thread.
pub fn init(json: bool) -> Telemetry {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let mut provider = None;
    let otel = match otlp_endpoint() {
        None => None,
        Some(endpoint) => match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => {
                let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder().with_service_name("mercato").build(),
                    )
                    .build();
                let tracer = p.tracer("mercato");
                provider = Some(p);
                trace_component_calls(true);
                eprintln!("mercato: exporting traces to {endpoint}");
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("mercato: cannot export traces to {endpoint}: {e}");
                None
            }
        },
    };
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    Telemetry { provider }
}

/// Record the duration of one component call. (Faults are counted once, by
/// whoever turns them into a response: see [`fault_seen`].)
pub fn component_call(component: &'static str, function: &'static str, started: Instant) {
    metrics::histogram!(
        "mercato_component_call_duration_seconds",
        "component" => component,
        "function" => function
    )
    .record(started.elapsed().as_secs_f64());
}

/// One committed-or-refused storage transaction of `component` (its round
/// trip, for "transactions per checkout").
pub fn transaction(component: &'static str, started: Instant) {
    metrics::histogram!("mercato_storage_transaction_seconds", "component" => component)
        .record(started.elapsed().as_secs_f64());
}

/// A host call that the request deadline cut short (the guest got `timeout`).
pub fn host_call_timed_out(component: &'static str, call: &'static str) {
    metrics::counter!("mercato_host_call_timeouts_total", "component" => component, "call" => call)
        .increment(1);
}

/// What one pass of checkout recovery did.
pub fn recovery(report: &crate::bindings::types::RecoveryReport) {
    metrics::counter!("mercato_checkouts_recovered_total", "outcome" => "finished")
        .increment(u64::from(report.finished));
    metrics::counter!("mercato_checkouts_recovered_total", "outcome" => "compensated")
        .increment(u64::from(report.compensated));
    metrics::gauge!("mercato_checkouts_deferred").set(f64::from(report.deferred));
    metrics::counter!("mercato_checkouts_pruned_total").increment(u64::from(report.pruned));
}

/// Count a fault and log it with its cause.
pub fn fault_seen(fault: &Fault) {
    let component = match fault {
        Fault::Deadline { component } | Fault::Memory { component } | Fault::Overloaded { component } => {
            *component
        }
        Fault::Trap { component, .. } => *component,
    };
    metrics::counter!("mercato_component_faults_total", "component" => component, "kind" => fault.kind())
        .increment(1);
    tracing::warn!(component, kind = fault.kind(), "component fault: {fault}");
}

/// Record one HTTP request.
/// One pricing plugin run: its outcome (`ok` or the error kind), time and fuel.
pub fn plugin_run(outcome: &'static str, started: Instant, fuel_used: u64) {
    metrics::counter!("mercato_plugin_runs_total", "outcome" => outcome).increment(1);
    metrics::histogram!("mercato_plugin_run_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("mercato_plugin_run_instructions").record(fuel_used as f64);
}

/// A shadow run of a candidate plugin, by outcome kind.
pub fn plugin_shadow_run(outcome: &'static str) {
    metrics::counter!("mercato_plugin_shadow_runs_total", "outcome" => outcome).increment(1);
}

/// A live pricing not repeated in the shadow (its queue was full).
pub fn plugin_shadow_dropped() {
    metrics::counter!("mercato_plugin_shadow_dropped_total").increment(1);
}

/// Recorded plugin runs dropped (the recorder's queue was full, or the
/// database refused them).
pub fn plugin_runs_dropped(runs: usize) {
    metrics::counter!("mercato_plugin_runs_dropped_total").increment(runs as u64);
}

/// A component version swapped in (`how`: deploy, rollback, sync, watch),
/// timed from the start of the work (compile included).
/// A canary of `component` ended: `promoted`, `rolled_back` or `replaced`.
pub fn canary_ended(component: &'static str, outcome: &'static str) {
    metrics::counter!("mercato_canaries_ended_total", "component" => component, "outcome" => outcome)
        .increment(1);
}

pub fn component_swap(component: &'static str, how: &'static str, started: Instant) {
    metrics::counter!("mercato_component_swaps_total", "component" => component, "how" => how).increment(1);
    metrics::histogram!("mercato_component_swap_seconds", "component" => component)
        .record(started.elapsed().as_secs_f64());
}

/// Events waiting in the outbox, as the relay last counted them.
pub fn events_outbox_depth(depth: i64) {
    metrics::gauge!("mercato_events_outbox_depth").set(depth as f64);
}

/// An event handed on by the relay, `latency_ms` after its commit.
pub fn event_published(kind: &str, latency_ms: i64) {
    // Label values from a closed set: the host writes only these types.
    const KINDS: [&str; 4] = ["order.paid", "order.fulfilled", "order.cancelled", "stock.low"];
    let kind = KINDS.iter().find(|k| **k == kind).copied().unwrap_or("other");
    metrics::counter!("mercato_events_published_total", "type" => kind).increment(1);
    metrics::histogram!("mercato_events_publish_latency_seconds").record(latency_ms.max(0) as f64 / 1000.0);
}

/// A webhook delivered: the attempt's time and the latency from commit.
pub fn webhook_delivered(started: Instant, latency_ms: i64) {
    metrics::counter!("mercato_webhook_attempts_total", "outcome" => "delivered").increment(1);
    metrics::histogram!("mercato_webhook_attempt_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("mercato_webhook_delivery_latency_seconds").record(latency_ms.max(0) as f64 / 1000.0);
}

/// A webhook attempt that failed (`gave_up`: past the retry horizon).
pub fn webhook_failed(gave_up: bool) {
    let outcome = if gave_up { "gave_up" } else { "retry" };
    metrics::counter!("mercato_webhook_attempts_total", "outcome" => outcome).increment(1);
}

/// A relay round that failed (the sink or the database); its events wait.
pub fn events_relay_failed() {
    metrics::counter!("mercato_events_relay_failures_total").increment(1);
}

/// Events the relay deleted from the outbox past their retention.
pub fn events_pruned(events: u64) {
    metrics::counter!("mercato_events_pruned_total").increment(events);
}

/// A request answered 429 (`limit`: `writes` or `auth`).
pub fn rate_limited(limit: &'static str) {
    metrics::counter!("mercato_http_rate_limited_total", "limit" => limit).increment(1);
}

/// A request answered 503 at once because too many were in flight.
pub fn request_shed() {
    metrics::counter!("mercato_http_requests_shed_total").increment(1);
}

pub fn http_request(method: &str, route: &str, status: u16, started: Instant) {
    // Label values from a closed set (SPEC §6.10): a client's made-up method
    // is `other` (routes are templates or `unmatched` already).
    const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    let method = METHODS.iter().find(|m| **m == method).copied().unwrap_or("other");
    let (method, route) = (method.to_string(), route.to_string());
    metrics::counter!(
        "mercato_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("mercato_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
}
