//! Prism's HTTP API (axum). [`router`] builds it over an [`AppState`].
//!
//! | method & path | what |
//! |---|---|
//! | `POST /streams/{stream}/events?expected_version=` | append a JSON array of events |
//! | `GET /streams/{stream}?from=&limit=` | read a stream |
//! | `PUT /projectors/{name}?config=` | deploy a `.wasm` projector (body) |
//! | `GET /projectors` | list projectors with status |
//! | `GET /projectors/{name}` | one projector's status |
//! | `GET /projectors/{name}/view/{key}` | a view value |
//! | `GET /projectors/{name}/view?prefix=&after=&limit=` | ordered scan |
//! | `GET /health` | liveness |
//!
//! Errors are JSON `{ "error": "..." }` with 400 (bad request), 404 (unknown stream, projector
//! or key), 409 (version conflict), 413 (body too large), 415 (not Wasm) or 422 (not a valid
//! projector).

mod error;
mod projectors;
mod streams;
mod views;

pub use error::ApiError;

use crate::log::EventLog;
use crate::projector::{ProjectorHandle, Registry};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;

/// Largest append request body.
pub const MAX_APPEND_BODY: usize = 16 << 20;
/// Largest module upload.
pub const MAX_MODULE_BODY: usize = 64 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub log: EventLog,
    pub registry: Registry,
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
        .route(
            "/streams/{stream}/events",
            post(streams::append).layer(DefaultBodyLimit::max(MAX_APPEND_BODY)),
        )
        .route("/streams/{stream}", get(streams::read))
        .route("/projectors", get(projectors::list))
        .route(
            "/projectors/{name}",
            get(projectors::show)
                .put(projectors::deploy)
                .layer(DefaultBodyLimit::max(MAX_MODULE_BODY)),
        )
        .route("/projectors/{name}/view", get(views::scan))
        .route("/projectors/{name}/view/{*key}", get(views::get))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}
