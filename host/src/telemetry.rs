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
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::runtime::Fault;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

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

/// Initialise logging: `RUST_LOG` filters (default `info`); JSON lines when
/// `json` is set.
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
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

/// A component version swapped in (`how`: deploy, rollback, sync, watch),
/// timed from the start of the work (compile included).
pub fn component_swap(component: &'static str, how: &'static str, started: Instant) {
    metrics::counter!("mercato_component_swaps_total", "component" => component, "how" => how).increment(1);
    metrics::histogram!("mercato_component_swap_seconds", "component" => component)
        .record(started.elapsed().as_secs_f64());
}

pub fn http_request(method: &str, route: &str, status: u16, started: Instant) {
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
