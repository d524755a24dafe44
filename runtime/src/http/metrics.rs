//! `GET /metrics` in the Prometheus text format (prometheus-client).
//!
//! Counters and histograms that accumulate (HTTP requests, appends) live in [`Metrics`]; the
//! projectors' and the log's current state (checkpoint, lag, state, events applied, dead
//! letters, head) is read at scrape time, so it can never drift from the status API.

use super::AppState;
use crate::projector::ProjectorLabels;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    projector: String,
    state: String,
}

/// What accumulates between scrapes. Cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    appended_events: Counter,
    append_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            appended_events: Counter::default(),
            // 50 µs .. ~0.8 s.
            append_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 15)),
        }
    }
}

impl Metrics {
    /// Records an acknowledged append of `events` events that took `seconds`.
    pub fn appended(&self, events: u64, seconds: f64) {
        self.appended_events.inc_by(events);
        self.append_seconds.observe(seconds);
    }
}

/// A request being counted by method, matched route and status ([`Counted::answered`]).
pub struct Counted {
    method: &'static str,
    route: String,
}

impl Counted {
    /// Takes `request`'s labels before it is handled.
    pub fn new(request: &Request) -> Counted {
        // Known methods by name; any other is one label, not a new series each.
        let method = match *request.method() {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| p.as_str())
            .to_string();
        Counted { method, route }
    }

    /// Counts the request with its answer's status.
    pub fn answered(self, metrics: &Metrics, response: &Response) {
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method: self.method,
                route: self.route,
                status: response.status().as_u16(),
            })
            .inc();
    }
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus metrics in the OpenMetrics text format: HTTP \
            requests, appends, the log head, and per projector its checkpoint, lag, state, \
            generation, events applied, dead letters, apply and commit times.",
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 500, description = "The metrics could not be encoded.", body = super::ErrorBody),
    ),
)]
pub async fn scrape(State(state): State<AppState>) -> Response {
    let mut registry = Registry::with_prefix("prism");
    let metrics = &state.metrics;
    registry.register(
        "http_requests",
        "HTTP requests by method, route and status",
        metrics.requests.clone(),
    );
    registry.register(
        "log_appended_events",
        "Events appended (acknowledged, durable)",
        metrics.appended_events.clone(),
    );
    registry.register(
        "log_append_seconds",
        "Time from an append request to its durable acknowledgement",
        metrics.append_seconds.clone(),
    );
    let head = state.log.head();
    let head_gauge = Gauge::<u64, AtomicU64>::default();
    head_gauge.set(head);
    registry.register(
        "log_head",
        "Position of the last event in the log",
        head_gauge,
    );

    let checkpoint = Family::<ProjectorLabels, Gauge<u64, AtomicU64>>::default();
    let lag = Family::<ProjectorLabels, Gauge<u64, AtomicU64>>::default();
    let applied = Family::<ProjectorLabels, Gauge<u64, AtomicU64>>::default();
    let dead_letters = Family::<ProjectorLabels, Gauge<u64, AtomicU64>>::default();
    let generation = Family::<ProjectorLabels, Gauge<u64, AtomicU64>>::default();
    let states = Family::<StateLabels, Gauge>::default();
    for projector in state.registry.list() {
        let serving = projector.serving();
        let status = serving.status();
        let labels = ProjectorLabels {
            projector: projector.name.clone(),
        };
        checkpoint.get_or_create(&labels).set(status.checkpoint);
        lag.get_or_create(&labels)
            .set(head.saturating_sub(status.checkpoint));
        applied.get_or_create(&labels).set(status.events_applied);
        dead_letters.get_or_create(&labels).set(status.dead_letters);
        generation.get_or_create(&labels).set(serving.id);
        let state_name = serde_json::to_value(projector.state_with(status.state))
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        states
            .get_or_create(&StateLabels {
                projector: projector.name.clone(),
                state: state_name,
            })
            .set(1);
    }
    let runners = state.registry.metrics();
    registry.register(
        "projector_apply_seconds",
        "Time in the module's apply, per batch (rebuilds included)",
        runners.apply_seconds.clone(),
    );
    registry.register(
        "projector_commit_seconds",
        "Time committing view writes and a checkpoint: one batch's when live, all the writes \
         the catch-up cache held when catching up (its count is the number of commits)",
        runners.commit_seconds.clone(),
    );
    registry.register(
        "projector_batches",
        "Batches applied (committed at once when live, through the catch-up cache when behind)",
        runners.batches.clone(),
    );
    registry.register(
        "projector_faults",
        "Times a projector's runner faulted",
        runners.faults.clone(),
    );
    registry.register(
        "projector_skipped_events",
        "Events skipped as dead letters under on_error=skip since Prism started",
        runners.dead_letters.clone(),
    );
    registry.register(
        "projector_checkpoint",
        "Last position a projector's view reflects",
        checkpoint,
    );
    registry.register(
        "projector_lag",
        "Events between a projector's checkpoint and the log head",
        lag,
    );
    registry.register(
        "projector_events_applied",
        "Events delivered to a projector's module since it last started",
        applied,
    );
    registry.register(
        "projector_dead_letters",
        "Events a projector skipped as dead letters since it last started",
        dead_letters,
    );
    registry.register(
        "projector_generation",
        "The serving generation of a projector",
        generation,
    );
    registry.register(
        "projector_state",
        "A projector's state (1 for the current one)",
        states,
    );

    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        return super::ApiError::internal(&e).into_response();
    }
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
