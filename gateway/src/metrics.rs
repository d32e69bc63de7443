//! Prometheus metrics: the runtime's, read from its segment ([`runtime_text`], also printed by
//! `shm-runtime metrics NAME`), and the gateway's own HTTP metrics (kept with the `metrics`
//! crate). Names follow Prometheus' conventions: one `shm_runtime_` prefix, seconds, `_total`
//! counters; histogram buckets grow by 2 from 1 us to about a minute, so microsecond figures
//! resolve.
//!
//! # Examples
//!
//! ```
//! use shm_runtime::{status, ModelConfig, Server, ServerConfig};
//!
//! let name = format!("doc-gw-metrics-{}", std::process::id());
//! let _server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
//! let text = shm_runtime_gateway::metrics::runtime_text(&name, Some(&status(&name)?));
//! assert!(text.contains(&format!("shm_runtime_up{{service=\"{name}\"}} 1")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use shm_runtime::ServiceStatus;

/// The histogram buckets, in seconds: 1 us, 2 us, 4 us, ... 67 s.
///
/// # Examples
///
/// ```
/// let b = shm_runtime_gateway::metrics::buckets();
/// assert_eq!((b[0], b.len()), (1e-6, 27));
/// ```
pub fn buckets() -> Vec<f64> {
    (0..27).map(|i| 1e-6 * f64::from(1u32 << i)).collect()
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's metrics recorder (once; later calls do nothing). Without it the
/// gateway's own metrics are not kept. [`Gateway::serve`](crate::Gateway::serve) calls it; call it
/// yourself when you serve [`Gateway::router`](crate::Gateway::router) another way.
///
/// # Examples
///
/// ```
/// shm_runtime_gateway::metrics::install();
/// shm_runtime_gateway::metrics::install(); // the second call does nothing
/// ```
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&buckets())
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder is installed: the gateway's HTTP metrics are not kept"
            );
        }
        handle
    });
}

/// Counts one HTTP request of `route` answered with `status` after `elapsed`.
pub(crate) fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("shm_runtime_gateway_http_requests_total", &labels).increment(1);
    metrics::histogram!(
        "shm_runtime_gateway_http_request_duration_seconds",
        "route" => route.to_owned()
    )
    .record(elapsed.as_secs_f64());
}

/// Sets the gauges read at scrape time.
pub(crate) fn set_gateway_gauges(queued: usize) {
    metrics::gauge!("shm_runtime_gateway_queue_depth").set(queued as f64);
}

/// The gateway's own metrics, in Prometheus' text format (empty before [`install`]).
pub(crate) fn gateway_text() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Writes one metric family's header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value, escaped as the text format wants.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The runtime's metrics for service `service` in Prometheus' text format; `status` is `None`
/// when the service could not be read (then only `shm_runtime_up 0`).
///
/// # Examples
///
/// ```
/// let text = shm_runtime_gateway::metrics::runtime_text("gone", None);
/// assert!(text.ends_with("shm_runtime_up{service=\"gone\"} 0\n"));
/// ```
pub fn runtime_text(service: &str, status: Option<&ServiceStatus>) -> String {
    let mut o = String::new();
    let svc = esc(service);
    family(
        &mut o,
        "shm_runtime_up",
        "gauge",
        "1 when the service's server is alive.",
    );
    let up = status.is_some_and(|s| s.server_alive);
    let _ = writeln!(o, "shm_runtime_up{{service=\"{svc}\"}} {}", u8::from(up));
    let Some(s) = status else { return o };

    family(
        &mut o,
        "shm_runtime_requests_total",
        "counter",
        "Requests the server accepted.",
    );
    let _ = writeln!(
        o,
        "shm_runtime_requests_total{{service=\"{svc}\"}} {}",
        s.requests
    );
    family(
        &mut o,
        "shm_runtime_responses_total",
        "counter",
        "Final answers, by outcome (ok or the error's name).",
    );
    let _ = writeln!(
        o,
        "shm_runtime_responses_total{{service=\"{svc}\",outcome=\"ok\"}} {}",
        s.ok
    );
    for (name, n) in &s.errors {
        let _ = writeln!(
            o,
            "shm_runtime_responses_total{{service=\"{svc}\",outcome=\"{}\"}} {n}",
            esc(name)
        );
    }
    for (metric, help, v) in [
        (
            "shm_runtime_clients_reaped_total",
            "Dead clients whose slot and chunks were reclaimed.",
            s.clients_reaped,
        ),
        (
            "shm_runtime_clients_ejected_total",
            "Clients disconnected for corrupting their rings.",
            s.clients_ejected,
        ),
        (
            "shm_runtime_chunks_reclaimed_total",
            "Pool chunks taken back from dead owners.",
            s.chunks_reclaimed,
        ),
    ] {
        family(&mut o, metric, "counter", help);
        let _ = writeln!(o, "{metric}{{service=\"{svc}\"}} {v}");
    }
    family(&mut o, "shm_runtime_clients", "gauge", "Clients connected.");
    let _ = writeln!(
        o,
        "shm_runtime_clients{{service=\"{svc}\"}} {}",
        s.clients.len()
    );
    family(
        &mut o,
        "shm_runtime_client_slots",
        "gauge",
        "Client slots the service has.",
    );
    let _ = writeln!(
        o,
        "shm_runtime_client_slots{{service=\"{svc}\"}} {}",
        s.max_clients
    );

    type LaneField = fn(&shm_runtime::LaneStatus) -> u64;
    let lane_metrics: [(&str, &str, &str, LaneField); 6] = [
        (
            "shm_runtime_model_queued",
            "gauge",
            "Requests queued for the model.",
            |l| l.queued,
        ),
        (
            "shm_runtime_model_running",
            "gauge",
            "Requests the model is running.",
            |l| l.running,
        ),
        (
            "shm_runtime_model_requests_total",
            "counter",
            "Requests the model's lane accepted.",
            |l| l.accepted,
        ),
        (
            "shm_runtime_model_completed_total",
            "counter",
            "Requests the model's lane finished.",
            |l| l.completed,
        ),
        (
            "shm_runtime_model_batched_requests_total",
            "counter",
            "Requests run in batches of more than one.",
            |l| l.batched,
        ),
        (
            "shm_runtime_model_panics_total",
            "counter",
            "Backend panics contained.",
            |l| l.panics,
        ),
    ];
    for (metric, kind, help, field) in lane_metrics {
        family(&mut o, metric, kind, help);
        for l in &s.lanes {
            let model = esc(l.model.as_deref().unwrap_or(""));
            let _ = writeln!(
                o,
                "{metric}{{service=\"{svc}\",model=\"{model}\"}} {}",
                field(l)
            );
        }
    }
    family(
        &mut o,
        "shm_runtime_model_ready",
        "gauge",
        "1 when the model is warmed up and serving.",
    );
    for l in &s.lanes {
        let model = esc(l.model.as_deref().unwrap_or(""));
        let ready = l.model_state == shm_runtime::ModelState::Ready;
        let _ = writeln!(
            o,
            "shm_runtime_model_ready{{service=\"{svc}\",model=\"{model}\"}} {}",
            u8::from(ready)
        );
    }

    lane_histograms(&mut o, &svc, &s.lanes);

    type PoolField = fn(&shm_runtime::PoolClassStatus) -> u64;
    let pool_metrics: [(&str, &str, PoolField); 3] = [
        (
            "shm_runtime_pool_chunks",
            "Chunks of the size class.",
            |p| p.count.into(),
        ),
        (
            "shm_runtime_pool_chunks_free",
            "Free chunks of the size class.",
            |p| p.free.into(),
        ),
        (
            "shm_runtime_pool_chunks_high_water",
            "Most chunks of the size class ever in use at once.",
            |p| p.high_water.into(),
        ),
    ];
    for (metric, help, field) in pool_metrics {
        family(&mut o, metric, "gauge", help);
        for p in &s.pool {
            let _ = writeln!(
                o,
                "{metric}{{service=\"{svc}\",chunk_bytes=\"{}\"}} {}",
                p.chunk_size,
                field(p)
            );
        }
    }
    o
}

/// The lanes' latency histograms and generation counters.
fn lane_histograms(o: &mut String, svc: &str, lanes: &[shm_runtime::LaneStatus]) {
    use shm_runtime::metrics::{bucket_bound_seconds, HistogramSnapshot, LaneMetricsSnapshot};
    type Pick = fn(&LaneMetricsSnapshot) -> &HistogramSnapshot;
    let histograms: [(&str, &str, Pick); 5] = [
        (
            "shm_runtime_request_queue_seconds",
            "Time requests waited in the model's queue.",
            |m| &m.queue,
        ),
        (
            "shm_runtime_request_run_seconds",
            "Time from a request's start to its final answer.",
            |m| &m.run,
        ),
        (
            "shm_runtime_request_duration_seconds",
            "Time from a request's acceptance to its final answer.",
            |m| &m.end_to_end,
        ),
        (
            "shm_runtime_time_to_first_token_seconds",
            "Generations: time from the start to the first token.",
            |m| &m.time_to_first_token,
        ),
        (
            "shm_runtime_inter_token_latency_seconds",
            "Generations: mean time between tokens after the first.",
            |m| &m.inter_token,
        ),
    ];
    for (metric, help, pick) in histograms {
        family(o, metric, "histogram", help);
        for l in lanes {
            let model = esc(l.model.as_deref().unwrap_or(""));
            let h = pick(&l.metrics);
            let mut cumulative = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                cumulative += n;
                let bound = bucket_bound_seconds(i);
                let le = if bound.is_infinite() {
                    "+Inf".to_owned()
                } else {
                    bound.to_string()
                };
                let _ = writeln!(o, "{metric}_bucket{{service=\"{svc}\",model=\"{model}\",le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(
                o,
                "{metric}_sum{{service=\"{svc}\",model=\"{model}\"}} {}",
                h.sum_ns as f64 * 1e-9
            );
            let _ = writeln!(
                o,
                "{metric}_count{{service=\"{svc}\",model=\"{model}\"}} {}",
                h.count
            );
        }
    }
    type Count = fn(&LaneMetricsSnapshot) -> u64;
    let counters: [(&str, &str, Count); 2] = [
        (
            "shm_runtime_prompt_tokens_total",
            "Prompt tokens of the generations.",
            |m| m.prompt_tokens,
        ),
        (
            "shm_runtime_generation_tokens_total",
            "Tokens generated.",
            |m| m.generated_tokens,
        ),
    ];
    for (metric, help, count) in counters {
        family(o, metric, "counter", help);
        for l in lanes {
            let model = esc(l.model.as_deref().unwrap_or(""));
            let _ = writeln!(
                o,
                "{metric}{{service=\"{svc}\",model=\"{model}\"}} {}",
                count(&l.metrics)
            );
        }
    }
    family(
        o,
        "shm_runtime_generations_total",
        "counter",
        "Generations finished, by finish reason.",
    );
    for l in lanes {
        let model = esc(l.model.as_deref().unwrap_or(""));
        for (reason, n) in &l.metrics.finish {
            let _ = writeln!(o, "shm_runtime_generations_total{{service=\"{svc}\",model=\"{model}\",finish_reason=\"{reason}\"}} {n}");
        }
    }
}
