//! `POST /projectors/{name}/verify` and `GET /ready`: checking a projector's view against a
//! replay, and whether every projector is healthy.

use super::ErrorBody;
use super::extract::Path;
use super::{ApiError, AppState};
use crate::projector::{Difference, Fault, Readiness, Verification, ViewDigest};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

/// 422 of a verification whose replay faulted.
#[derive(Serialize, ToSchema)]
pub struct ReplayFaulted {
    pub error: String,
    /// Where and why the replay faulted.
    pub fault: Fault,
}

/// The outcome of a verification: a from-scratch replay compared with the live view.
#[derive(Serialize, ToSchema)]
#[schema(as = Verification)]
pub struct VerifyReply {
    pub projector: String,
    pub module: String,
    pub generation: u64,
    /// The position both views reflect.
    pub checkpoint: u64,
    /// Whether the live view equals the replay.
    pub identical: bool,
    pub live: ViewDigestReply,
    pub replay: ViewDigestReply,
    /// The first few keys whose values differ.
    pub differences: Vec<DifferenceReply>,
    /// How long the replay took, in milliseconds.
    pub replay_ms: f64,
}

/// A view's size and content digest (sha256 over its entries in key order).
#[derive(Serialize, ToSchema)]
#[schema(as = ViewDigest)]
pub struct ViewDigestReply {
    pub entries: u64,
    pub sha256: String,
}

/// One key on which the two views disagree (`null` where a side lacks the key).
#[derive(Serialize, ToSchema)]
#[schema(as = Difference)]
pub struct DifferenceReply {
    pub key: String,
    #[schema(required = true)]
    pub live: Option<String>,
    #[schema(required = true)]
    pub replay: Option<String>,
}

impl From<ViewDigest> for ViewDigestReply {
    fn from(digest: ViewDigest) -> Self {
        let ViewDigest { entries, sha256 } = digest;
        ViewDigestReply { entries, sha256 }
    }
}

impl From<Verification> for VerifyReply {
    fn from(report: Verification) -> Self {
        let Verification {
            projector,
            module,
            generation,
            checkpoint,
            identical,
            live,
            replay,
            differences,
            replay_ms,
        } = report;
        VerifyReply {
            projector,
            module,
            generation,
            checkpoint,
            identical,
            live: live.into(),
            replay: replay.into(),
            differences: differences
                .into_iter()
                .map(|Difference { key, live, replay }| DifferenceReply { key, live, replay })
                .collect(),
            replay_ms,
        }
    }
}

/// `POST /projectors/{name}/verify`: replays the projector from scratch and compares the
/// result with the live view at the same position.
#[utoipa::path(
    post,
    path = "/projectors/{name}/verify",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name.")),
    responses(
        (status = 200, description = "The replay compared with the live view.", body = VerifyReply),
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
) -> Result<Json<VerifyReply>, ApiError> {
    let registry = state.registry.clone();
    let report = super::blocking(move || registry.verify(&name)).await??;
    Ok(Json(report.into()))
}

/// `GET /ready`: 200 when every projector is healthy; 503 listing those faulted, or behind the
/// log with no progress for longer than the stall limit (paused ones do not count).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Every projector is healthy.", body = Readiness),
        (status = 503, description = "Some projector is faulted, or behind the log without \
            progress for longer than the stall limit (paused ones do not count).", body = Readiness),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let readiness = state.registry.readiness(state.limits.stall_after);
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness))
}
