//! Prism's HTTP API (axum). [`router`] builds it over an [`AppState`].
//!
//! | method & path | what |
//! |---|---|
//! | `POST /streams/{stream}/events?expected_version=` | append a JSON array of events |
//! | `POST /events` | append a JSON array of events on several streams, atomically |
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
//! | `GET /cluster` | a cluster's nodes and which owns each projector (404 on a single node) |
//! | `POST /projectors/{name}/snapshot` | a cluster: the owner uploads its views' snapshots now |
//! | `POST`, `DELETE /cluster/nodes/{node}/drain` | a cluster: drain a node (its projectors move), or undo it |
//! | `GET /openapi.json` | this API's OpenAPI 3.1 description (no token needed) |
//! | `GET /` | the dashboard page (assets under `/dashboard/`) |
//!
//! Errors are JSON `{ "error": "..." }` with 400 (bad request, including path and query
//! parameters that do not parse), 401 (missing or wrong bearer token, see [`auth`]), 404
//! (unknown stream, projector, key or route), 405 (method), 408 (timeout), 409 (version
//! conflict), 413 (body or batch too large), 415 (not Wasm), 422 (not a valid projector), 500
//! (an internal failure: its cause is logged, never sent; the answer's `x-request-id` finds it
//! in the log) or 503 with `Retry-After`. Every answer carries an `x-request-id` (the client's,
//! or a new UUID), and every log line written while handling it carries it too. Handlers use
//! [`extract`]'s `Path` and `Query`, whose rejections are JSON errors like the rest, and turn
//! domain errors into [`ApiError`]s with `?` (one `From` per error type in [`error`]).
//!
//! `GET /openapi.json` describes every route above, generated from the code ([`openapi()`],
//! utoipa): each handler carries a `#[utoipa::path]` with its parameters, request body and
//! responses, and [`api`] registers every route with utoipa-axum's `routes!`, which takes the
//! path and methods from that attribute, so a route cannot be served without being described.
//! Response schemas are the `ToSchema` structs the handlers serialize. Each operation's bearer
//! requirement (and 401) comes from [`auth`]'s roles, and every operation can answer 408.
//! `tests/openapi.rs` checks that the description lists exactly the served routes and that
//! real answers validate against it.

mod auth;
pub mod boundary;
mod changes;
mod cluster;
mod connections;
mod dashboard;
mod dead_letters;
mod drain;
mod error;
mod events;
pub mod extract;
mod inspect;
mod metrics;
mod openapi;
mod projectors;
mod snapshots;
mod streams;
mod views;

pub use auth::Tokens;
pub use boundary::AllowedHosts;
pub use cluster::{ClusterRoutes, PeerListener};
pub use connections::BoundedListener;
pub use error::ApiError;
pub use metrics::Metrics;
pub use openapi::openapi;
pub use prism_client::wire::ErrorBody;

use crate::log::EventLog;
use crate::projector::{ProjectorHandle, Registry};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use projectors as p;
use std::sync::Arc;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// Largest append request body.
pub const MAX_APPEND_BODY: usize = 16 << 20;
/// Largest module upload by default.
pub const MAX_MODULE_BODY: usize = 64 << 20;
/// Most events in one append.
pub const MAX_APPEND_EVENTS: usize = 10_000;
/// Longest view key a query may name, in bytes.
pub const MAX_KEY_LEN: usize = crate::store::MAX_KEY_LEN;

/// What every handler shares: one `Arc`, so that the middleware and each `State` extractor
/// clone a pointer, not the log, registry, tokens and metrics one by one (a request used to
/// clone the whole state five times: a quarter of the server's time under load).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub log: EventLog,
    pub registry: Registry,
    pub limits: RequestLimits,
    pub tokens: Tokens,
    pub metrics: Metrics,
    /// `Host` and `Origin` names accepted beyond IP addresses and localhost.
    pub allowed_hosts: AllowedHosts,
    /// Becomes `true` when Prism starts shutting down: long-lived answers (change streams) end.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Places for open change streams (`limits.max_subscribers` of them).
    pub subscribers: Arc<tokio::sync::Semaphore>,
    /// The cluster this node is part of (`None`: Prism runs alone).
    pub cluster: Option<ClusterRoutes>,
}

/// Request limits: the config file's `[limits]` table (durations in whole seconds there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestLimits {
    /// Largest module upload, in bytes.
    pub max_module_bytes: usize,
    /// Most events in one append.
    pub max_append_events: usize,
    /// How long a request may take before it is answered 408.
    #[serde(rename = "request_timeout_secs", with = "secs")]
    pub request_timeout: std::time::Duration,
    /// How long a projector may be behind without progress before `/ready` reports it.
    #[serde(rename = "stall_after_secs", with = "secs")]
    pub stall_after: std::time::Duration,
    /// Most connections open at once; more are answered 503 with `Retry-After` and closed.
    pub max_connections: usize,
    /// A connection that sends and receives nothing this long is closed.
    #[serde(rename = "idle_timeout_secs", with = "secs")]
    pub idle_timeout: std::time::Duration,
    /// Most change streams (`GET /projectors/{name}/changes`) open at once; more are answered
    /// 503 with `Retry-After`.
    pub max_subscribers: usize,
}

/// A duration as whole seconds.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_module_bytes: MAX_MODULE_BODY,
            max_append_events: MAX_APPEND_EVENTS,
            request_timeout: std::time::Duration::from_secs(60),
            stall_after: std::time::Duration::from_secs(30),
            max_connections: 1024,
            idle_timeout: std::time::Duration::from_secs(60),
            max_subscribers: 256,
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

/// Runs blocking `work` off the async executor, in the request's span (so its log lines carry
/// the request id).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    Ok(tokio::task::spawn_blocking(move || span.in_scope(work)).await?)
}

/// Every route, each registered with its description (`routes!` reads the path and methods
/// from the handler's `#[utoipa::path]`): a route cannot be served without being in
/// `/openapi.json`. Register routes nowhere else.
pub(crate) fn api(limits: RequestLimits) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::asset))
        .routes(routes!(streams::list))
        .routes(routes!(streams::append).layer(DefaultBodyLimit::max(MAX_APPEND_BODY)))
        .routes(routes!(events::append_all).layer(DefaultBodyLimit::max(MAX_APPEND_BODY)))
        .routes(routes!(streams::read))
        .routes(routes!(p::list))
        .routes(
            routes!(p::show, p::deploy, p::delete)
                .layer(DefaultBodyLimit::max(limits.max_module_bytes)),
        )
        .routes(routes!(p::pause))
        .routes(routes!(p::resume))
        .routes(routes!(p::reset))
        .routes(routes!(inspect::verify))
        .routes(routes!(dead_letters::dead_letters))
        .routes(routes!(dead_letters::logs))
        .routes(routes!(changes::changes))
        .routes(routes!(dead_letters::discard_dead_letter))
        .routes(routes!(dead_letters::retry_dead_letter))
        .routes(routes!(p::modules))
        .routes(routes!(views::scan))
        .routes(routes!(views::get))
        .routes(routes!(inspect::ready))
        .routes(routes!(metrics::scrape))
        .routes(routes!(health))
        .routes(routes!(cluster::status))
        .routes(routes!(snapshots::snapshot))
        .routes(routes!(drain::drain, drain::undrain))
        .routes(routes!(openapi::spec))
}

/// `GET /health`: liveness.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "Prism is up.", body = prism_client::wire::Health)),
)]
async fn health() -> axum::Json<prism_client::wire::Health> {
    axum::Json(prism_client::wire::Health {
        status: "ok".into(),
    })
}

/// The API's routes over `state`.
pub fn router(state: AppState) -> Router {
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::TraceLayer;
    let (routes, _) = api(state.limits).split_for_parts();
    routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        // Outermost last: a request gets its id, then its span, and its answer the id back,
        // a panic included.
        .layer(CatchPanicLayer::custom(panicked))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// What every request passes before its handler, in this order: it is counted (whatever its
/// answer), then refused 403 from outside the browser boundary ([`boundary`]), then given its
/// time limit (408), within which it needs its route's token (401, [`auth`]). One middleware,
/// not four layers: each layer boxed the request's future and cloned the routes below it.
async fn gate(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let counted = metrics::Counted::new(&request);
    let response = match boundary::refusal(&state.allowed_hosts, &request) {
        Some(refusal) => refusal,
        None => auth::within_time(&state, auth::authorized(&state, request, next)).await,
    };
    counted.answered(&state.metrics, &response);
    response
}

/// The span of one request: its method, path and id.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
}

/// The answer to a handler that panicked: a JSON 500 (the panic is logged in the request's
/// span; the other requests go on).
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    tracing::error!(panic = what, "a request handler panicked");
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        error::INTERNAL,
    )
    .into_response()
}
