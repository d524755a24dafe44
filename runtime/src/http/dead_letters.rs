//! `/projectors/{name}/dead-letters` and `/projectors/{name}/logs`: the events a projector
//! skipped, retried or discarded, and the lines its modules logged.

use super::extract::{Path, Query};
use super::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use prism_client::wire::{
    DeadLetter, DeadLetterParams, DeadLetters, Discarded, ErrorBody, LogLine, LogLines, LogParams,
    Retried,
};

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
        dead_letters: letters.into_iter().map(wire_letter).collect(),
    }))
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
    let lines = state.registry.guest_output(&name, params.after, limit)?;
    Ok(Json(LogLines {
        lines: lines.into_iter().map(wire_line).collect(),
    }))
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

/// A stored dead letter as the API shows it.
fn wire_letter(letter: crate::store::DeadLetter) -> DeadLetter {
    let crate::store::DeadLetter {
        position,
        stream,
        event_type,
        error,
        module,
    } = letter;
    DeadLetter {
        position,
        stream,
        event_type,
        error,
        module,
    }
}

/// A kept guest output line as the API shows it.
fn wire_line(line: crate::engine::OutputLine) -> LogLine {
    let crate::engine::OutputLine {
        seq,
        at_ms,
        level,
        module,
        message,
    } = line;
    LogLine {
        seq,
        at_ms,
        level: level.to_string(),
        module,
        message,
    }
}
