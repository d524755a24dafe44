//! `POST /projectors/{name}/verify` and `GET /ready`: checking a projector's view against a
//! replay, and whether every projector is healthy.

use super::extract::Path;
use super::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use prism_client::wire::{ErrorBody, ReadinessAnswer, ReadyOnly, ReplayFaulted, Verification};

/// `POST /projectors/{name}/verify`: replays the projector from scratch and compares the
/// result with the live view at the same position.
#[utoipa::path(
    post,
    path = "/projectors/{name}/verify",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name.")),
    responses(
        (status = 200, description = "The replay compared with the live view.", body = Verification),
        (status = 404, description = "No such projector.", body = ErrorBody),
        (status = 422, description = "The module could not be instantiated for the replay, or the \
            replay faulted where the live view did not (`fault` names the event).",
            body = ReplayFaulted),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn verify(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Verification>, ApiError> {
    let registry = state.registry.clone();
    let report = super::blocking(move || registry.verify(&name)).await??;
    Ok(Json(report))
}

/// `GET /ready`: 200 when every projector is healthy; 503 listing those faulted, or behind the
/// log with no progress for longer than the stall limit (paused ones do not count). Without
/// the read token (when one is set) the answer says only `{"ready": false}` (or true).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Every projector is healthy (the details only with the \
            read token, when one is set).", body = ReadinessAnswer),
        (status = 503, description = "Some projector is faulted, or behind the log without \
            progress for longer than the stall limit (paused ones do not count).",
            body = ReadinessAnswer),
    ),
)]
pub async fn ready(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let readiness = state.registry.readiness(state.limits.stall_after);
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Open to probes, but what it names (projectors, their errors) is for readers only.
    let answer = if state.tokens.grants(super::auth::Role::Read, &headers) {
        ReadinessAnswer::Full(readiness)
    } else {
        ReadinessAnswer::Status(ReadyOnly {
            ready: readiness.ready,
        })
    };
    (code, Json(answer)).into_response()
}
