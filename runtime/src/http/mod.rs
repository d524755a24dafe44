//! Prism's HTTP API (axum). [`router`] builds it over an [`AppState`].
//!
//! | method & path | what |
//! |---|---|
//! | `POST /streams/{stream}/events?expected_version=` | append a JSON array of events |
//! | `GET /streams/{stream}?from=&limit=` | read a stream |
//! | `GET /streams?after=&limit=` | stream names with their versions |
//! | `PUT /projectors/{name}?config=&mode=&module=` | deploy a `.wasm` projector (body), or a stored module by hash |
//! | `POST /projectors/{name}/pause`, `/resume`, `/reset` | lifecycle |
//! | `DELETE /projectors/{name}` | stop and delete a projector and its views |
//! | `GET /projectors` | list projectors with status |
//! | `GET /projectors/{name}` | one projector's status (with rebuild progress) |
//! | `GET /projectors/{name}/dead-letters` | events skipped under `on_error=skip` |
//! | `GET /projectors/{name}/logs?after=&limit=` | the last lines the projector logged |
//! | `GET /projectors/{name}/changes?prefix=` | view changes as Server-Sent Events (`Last-Event-ID` resumes) |
//! | `DELETE /projectors/{name}/dead-letters/{position}` | discard a dead letter |
//! | `POST /projectors/{name}/dead-letters/{position}/retry` | apply it again with the current code |
//! | `POST /projectors/{name}/verify` | replay from scratch and compare with the live view |
//! | `GET /modules` | stored module hashes |
//! | `GET /projectors/{name}/view/{key}` | a view value |
//! | `GET /projectors/{name}/view?prefix=&after=&limit=` | ordered scan |
//! | `GET /health` | liveness |
//! | `GET /ready` | readiness: 503 while a projector is faulted or stalled |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /` | the dashboard page (assets under `/dashboard/`) |
//!
//! Errors are JSON `{ "error": "..." }` with 400 (bad request), 401 (missing or wrong bearer
//! token, see [`auth`]), 404 (unknown stream, projector or key), 408 (timeout), 409 (version
//! conflict), 413 (body or batch too large), 415 (not Wasm) or 422 (not a valid projector).

mod auth;
mod changes;
mod dashboard;
mod error;
mod metrics;
mod projectors;
mod streams;
mod views;

pub use auth::Tokens;
pub use error::ApiError;
pub use metrics::Metrics;

use crate::log::EventLog;
use crate::projector::{ProjectorHandle, Registry};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use projectors as p;
use std::sync::Arc;

/// Largest append request body.
pub const MAX_APPEND_BODY: usize = 16 << 20;
/// Largest module upload by default.
pub const MAX_MODULE_BODY: usize = 64 << 20;
/// Most events in one append.
pub const MAX_APPEND_EVENTS: usize = 10_000;
/// Longest view key a query may name, in bytes.
pub const MAX_KEY_LEN: usize = crate::store::MAX_KEY_LEN;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub log: EventLog,
    pub registry: Registry,
    pub limits: Limits,
    pub tokens: Tokens,
    pub metrics: Metrics,
    /// Becomes `true` when Prism starts shutting down: long-lived answers (change streams) end.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest module upload, in bytes.
    pub max_module_bytes: usize,
    /// Most events in one append.
    pub max_append_events: usize,
    /// How long a request may take before it is answered 408.
    pub request_timeout: std::time::Duration,
    /// How long a projector may be behind without progress before `/ready` reports it.
    pub stall_after: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_module_bytes: MAX_MODULE_BODY,
            max_append_events: MAX_APPEND_EVENTS,
            request_timeout: std::time::Duration::from_secs(60),
            stall_after: std::time::Duration::from_secs(30),
        }
    }
}

impl AppState {
    fn projector(&self, name: &str) -> Result<Arc<ProjectorHandle>, ApiError> {
        self.registry
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no projector named {name:?}")))
    }
}

/// The API's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/{file}", get(dashboard::asset))
        .route("/streams", get(streams::list))
        .route(
            "/streams/{stream}/events",
            post(streams::append).layer(DefaultBodyLimit::max(MAX_APPEND_BODY)),
        )
        .route("/streams/{stream}", get(streams::read))
        .route("/projectors", get(p::list))
        .route(
            "/projectors/{name}",
            get(p::show)
                .put(p::deploy)
                .delete(p::delete)
                .layer(DefaultBodyLimit::max(state.limits.max_module_bytes)),
        )
        .route("/projectors/{name}/pause", post(p::pause))
        .route("/projectors/{name}/resume", post(p::resume))
        .route("/projectors/{name}/reset", post(p::reset))
        .route("/projectors/{name}/verify", post(p::verify))
        .route("/projectors/{name}/dead-letters", get(p::dead_letters))
        .route("/projectors/{name}/logs", get(p::logs))
        .route("/projectors/{name}/changes", get(changes::changes))
        .route(
            "/projectors/{name}/dead-letters/{position}",
            axum::routing::delete(p::discard_dead_letter),
        )
        .route(
            "/projectors/{name}/dead-letters/{position}/retry",
            post(p::retry_dead_letter),
        )
        .route("/modules", get(p::modules))
        .route("/projectors/{name}/view", get(views::scan))
        .route("/projectors/{name}/view/{*key}", get(views::get))
        .route("/ready", get(p::ready))
        .route("/metrics", get(metrics::scrape))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}
