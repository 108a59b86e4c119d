//! Prometheus metrics: the process's recorder, the middleware that counts and times every
//! request, and `GET /metrics` in the Prometheus text format.
//!
//! The recorder is global to the process (the `metrics` facade has one), installed once by the
//! first router built; a process that starts several servers (the tests) shares it, and a
//! recorder someone else installed first is left in place (this module then renders only what
//! reaches its own). Each serving server runs its upkeep every few seconds, without which the
//! histograms' memory would grow without bound.
//!
//! What is exported:
//! - `kiln_http_requests_total` and `kiln_http_request_duration_seconds` (histogram), labelled
//!   by `method`, `route` (the route's template, such as `/api/v1/runs/{id}`, or `unmatched`)
//!   and `status`: labels stay bounded, never an id;
//! - `kiln_runs{status}`, `kiln_jobs{status}` and `kiln_queue_depth` (jobs queued for a
//!   slot), read from the store at each scrape;
//! - `kiln_job_duration_seconds{status}` (histogram), recorded by the engine as jobs end.
//!
//! `/metrics` is open unless [`ServerConfig::metrics_open`](crate::ServerConfig) is false;
//! then `auth.rs` asks for a token like any other route.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_core::ids::{JobStatus, RunStatus};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::state::AppState;

/// The route label of a request no route matched (so that probing for paths cannot grow the
/// label set).
const UNMATCHED: &str = "unmatched";

/// How often the recorder's upkeep runs.
const UPKEEP: Duration = Duration::from_secs(5);

/// Buckets of request durations, in seconds.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of job durations, in seconds: a second to a few hours.
const JOB_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub(crate) fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full("kiln_http_request_duration_seconds".to_owned()),
                HTTP_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("kiln_job_duration_seconds".to_owned()),
                    JOB_BUCKETS,
                )
            })
            // Only empty bucket lists are refused, and these are constants.
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder was installed first: /metrics shows only kiln's own"
            );
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!("kiln_http_requests_total", "HTTP requests answered");
    metrics::describe_histogram!(
        "kiln_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer's headers"
    );
    metrics::describe_gauge!("kiln_runs", "Runs in the store, by status");
    metrics::describe_gauge!("kiln_jobs", "Jobs in the store, by status");
    metrics::describe_gauge!("kiln_queue_depth", "Jobs queued, waiting for a slot");
    metrics::describe_histogram!(
        "kiln_job_duration_seconds",
        metrics::Unit::Seconds,
        "How long jobs ran, by the status they ended with"
    );
}

/// Runs the recorder's upkeep every few seconds until the returned task is aborted.
pub(crate) fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    let handle = handle();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// A method as a label: the standard ones by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The middleware: counts and times every request by method, route template and status.
/// Layered on the router, it runs after routing, so the matched route is known.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("kiln_http_requests_total", &labels).increment(1);
    metrics::histogram!("kiln_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    res
}

/// The metrics in Prometheus's text format (version 0.0.4). Open unless the server is
/// configured otherwise.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format: request counts and durations by route template, runs and jobs by status, queue depth, job durations", body = String, content_type = "text/plain"),
        (status = 401, description = "`UNAUTHORIZED`: the server asks for a token here (`metrics_open` is false)", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = state.store().status_counts().await?;
    for (status, n) in &counts.runs {
        metrics::gauge!("kiln_runs", "status" => RunStatus::as_str(*status)).set(*n as f64);
    }
    for (status, n) in &counts.jobs {
        metrics::gauge!("kiln_jobs", "status" => JobStatus::as_str(*status)).set(*n as f64);
    }
    metrics::gauge!("kiln_queue_depth").set(counts.jobs_in(JobStatus::Queued) as f64);
    let mut res = handle().render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_bounded_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "other"
        );
    }
}
