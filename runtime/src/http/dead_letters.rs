//! `/projectors/{name}/dead-letters` and `/projectors/{name}/logs`: the events a projector
//! skipped, retried or discarded, and the lines its modules logged.

use super::ErrorBody;
use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::engine::LogLine;
use crate::store::DeadLetter;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Only dead letters after this log position (the last one of the previous page).
    #[serde(default)]
    #[param(required = false)]
    after: u64,
    /// Most dead letters to return: 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// An event the projector failed on and skipped (error policy `skip`).
#[derive(Serialize, ToSchema)]
#[schema(as = DeadLetter)]
pub struct DeadLetterReply {
    /// The event's position in the log.
    pub position: u64,
    pub stream: String,
    pub event_type: String,
    /// The error or trap message.
    pub error: String,
    /// The module that failed on it.
    pub module: String,
}

impl From<DeadLetter> for DeadLetterReply {
    fn from(letter: DeadLetter) -> Self {
        let DeadLetter {
            position,
            stream,
            event_type,
            error,
            module,
        } = letter;
        DeadLetterReply {
            position,
            stream,
            event_type,
            error,
            module,
        }
    }
}

/// A page of dead letters.
#[derive(Serialize, ToSchema)]
pub struct DeadLetters {
    /// In log order.
    pub dead_letters: Vec<DeadLetterReply>,
}

/// `GET /projectors/{name}/dead-letters?after=&limit=`: skipped events, in log order.
#[utoipa::path(
    get,
    path = "/projectors/{name}/dead-letters",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name."), DeadLetterParams),
    responses(
        (status = 200, description = "Events skipped under `on_error=skip`, in log order.",
            body = DeadLetters),
        (status = 400, description = "A bad `after` or `limit`.", body = ErrorBody),
        (status = 404, description = "No such projector.", body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<DeadLetterParams>,
) -> Result<Json<DeadLetters>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let registry = state.registry.clone();
    let letters =
        super::blocking(move || registry.dead_letters(&name, params.after, limit)).await??;
    Ok(Json(DeadLetters {
        dead_letters: letters.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Only lines after this `seq` (the last one of the previous page).
    after: Option<u64>,
    /// Most lines to return: 1 to 1000 (default 100); the newest ones.
    limit: Option<usize>,
}

/// One line a projector wrote with `host.log`.
#[derive(Serialize, ToSchema)]
#[schema(as = LogLine)]
pub struct LogLineReply {
    /// Increases by one per line kept, per projector (for `?after=`).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The module (sha256) that wrote it.
    pub module: String,
    pub message: String,
}

impl From<LogLine> for LogLineReply {
    fn from(line: LogLine) -> Self {
        let LogLine {
            seq,
            at_ms,
            level,
            module,
            message,
        } = line;
        LogLineReply {
            seq,
            at_ms,
            level: level.to_string(),
            module,
            message,
        }
    }
}

/// A projector's log lines.
#[derive(Serialize, ToSchema)]
pub struct LogLines {
    /// Oldest first.
    pub lines: Vec<LogLineReply>,
}

/// `GET /projectors/{name}/logs?after=&limit=`: the newest lines the projector wrote with
/// `host.log` (rate-limited, the last 1000 kept), oldest first; `after` is a line's `seq`.
#[utoipa::path(
    get,
    path = "/projectors/{name}/logs",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name."), LogParams),
    responses(
        (status = 200, description = "The newest lines it logged (the last 1000 are kept), \
            oldest first.", body = LogLines),
        (status = 400, description = "A bad or unknown query parameter.", body = ErrorBody),
        (status = 404, description = "No such projector.", body = ErrorBody),
    ),
)]
pub async fn logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<LogParams>,
) -> Result<Json<LogLines>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let lines = state.registry.module_log(&name, params.after, limit)?;
    Ok(Json(LogLines {
        lines: lines.into_iter().map(Into::into).collect(),
    }))
}

/// A discarded dead letter.
#[derive(Serialize, ToSchema)]
pub struct Discarded {
    /// Its position.
    pub discarded: u64,
}

/// `DELETE /projectors/{name}/dead-letters/{position}`: discards a dead letter.
#[utoipa::path(
    delete,
    path = "/projectors/{name}/dead-letters/{position}",
    tag = "projectors",
    params(
        ("name" = String, Path, description = "The projector's name."),
        ("position" = u64, Path, description = "The dead letter's log position."),
    ),
    responses(
        (status = 200, description = "Discarded.", body = Discarded),
        (status = 400, description = "`position` is not a number.", body = ErrorBody),
        (status = 404, description = "No such projector, or no dead letter at that position.",
            body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn discard_dead_letter(
    State(state): State<AppState>,
    Path((name, position)): Path<(String, u64)>,
) -> Result<Json<Discarded>, ApiError> {
    let registry = state.registry.clone();
    let found = super::blocking(move || registry.discard_dead_letter(&name, position)).await??;
    if !found {
        return Err(ApiError::not_found(format!(
            "no dead letter at position {position}"
        )));
    }
    Ok(Json(Discarded {
        discarded: position,
    }))
}

/// A dead letter applied again.
#[derive(Serialize, ToSchema)]
pub struct Retried {
    /// Its position.
    pub retried: u64,
    /// Always true: it applied, and is no longer a dead letter.
    pub applied: bool,
}

/// `POST /projectors/{name}/dead-letters/{position}/retry`: applies a dead-lettered event
/// again with the current code.
#[utoipa::path(
    post,
    path = "/projectors/{name}/dead-letters/{position}/retry",
    tag = "projectors",
    params(
        ("name" = String, Path, description = "The projector's name."),
        ("position" = u64, Path, description = "The dead letter's log position."),
    ),
    responses(
        (status = 200, description = "Applied with the current code and committed.", body = Retried),
        (status = 400, description = "`position` is not a number.", body = ErrorBody),
        (status = 404, description = "No such projector or dead letter.", body = ErrorBody),
        (status = 409, description = "The projector is not running.", body = ErrorBody),
        (status = 422, description = "The module failed on the event again.", body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn retry_dead_letter(
    State(state): State<AppState>,
    Path((name, position)): Path<(String, u64)>,
) -> Result<Json<Retried>, ApiError> {
    let registry = state.registry.clone();
    super::blocking(move || registry.retry_dead_letter(&name, position)).await??;
    Ok(Json(Retried {
        retried: position,
        applied: true,
    }))
}
