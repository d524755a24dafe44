//! `POST /events`: one atomic append over several streams.

use super::extract::Query;
use super::streams::{append_error, decode_append, idempotency_key, new_event, record_append};
use super::{ApiError, AppState};
use crate::log::{ExpectedVersion, StreamAppend};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use prism_client::wire::{AppendAllParams, AppendedAll, ErrorBody, StreamEvent, VersionConflict};

/// `POST /events`: appends a JSON array of events, each naming its stream, atomically.
#[utoipa::path(
    post,
    path = "/events",
    tag = "streams",
    params(AppendAllParams, ("Idempotency-Key" = Option<String>, Header, description = "Makes \
        the append safe to retry, as for `POST /streams/{stream}/events`.")),
    request_body(content = Vec<StreamEvent>, content_type = "application/json",
        description = "The events, on any streams, appended atomically at consecutive positions \
            in array order (at most 10000, 16 MiB). An event's `expected_version` is checked \
            against its stream after the array's earlier events."),
    responses(
        (status = 201, description = "Appended, durably; or, with `Idempotent-Replayed: true`, \
            appended before by the same append, whose result this is.", body = AppendedAll),
        (status = 400, description = "The body is not a JSON array of events, a metadata is not \
            an object, or a name is empty or too long.", body = ErrorBody),
        (status = 409, description = "A stream is not at an event's `expected_version`; nothing \
            was appended.", body = VersionConflict),
        (status = 412, description = "The log's last position is not `expected_head`; nothing \
            was appended.", body = ErrorBody),
        (status = 422, description = "The `Idempotency-Key`, or some of the events' ids, were \
            used by a different append within the idempotency window; nothing was appended.",
            body = ErrorBody),
        (status = 413, description = "The body or the number of events is over the limit.",
            body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`.",
            body = ErrorBody),
        (status = 503, description = "Too many appends are waiting for the log, the log cannot \
            write now, or Prism is stopping; nothing was appended. `Retry-After` says when to \
            try again.", body = ErrorBody),
        (status = 500, description = "The log failed.", body = ErrorBody),
    ),
)]
pub async fn append_all(
    State(state): State<AppState>,
    Query(params): Query<AppendAllParams>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<
    (
        StatusCode,
        [(&'static str, &'static str); 1],
        Json<AppendedAll>,
    ),
    ApiError,
> {
    let events: Vec<StreamEvent> = decode_append(
        &state,
        &headers,
        body,
        r#"{"stream", "type", "data", "metadata"?, "id"?, "expected_version"?}"#,
    )?;
    let count = events.len() as u64;
    let parts = parts(events)?;
    let key = idempotency_key(&headers)?;
    let started = std::time::Instant::now();
    let appended = state
        .log
        .append_all_after(key, parts, params.expected_head)
        .await
        .map_err(append_error)?;
    Ok((
        StatusCode::CREATED,
        record_append(&state, &appended, count, started),
        Json(AppendedAll {
            first_position: appended.first_position,
            last_position: appended.last_position,
        }),
    ))
}

/// The array as the log's parts: a run of events on one stream is one part, and an event with
/// an expected version starts a part of its own.
fn parts(events: Vec<StreamEvent>) -> Result<Vec<StreamAppend>, ApiError> {
    let mut parts: Vec<StreamAppend> = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        let event = new_event(i, e.event_type, &e.data, e.metadata.as_deref(), e.id)?;
        match parts.last_mut() {
            Some(part) if part.stream == e.stream && e.expected_version.is_none() => {
                part.events.push(event)
            }
            _ => parts.push(StreamAppend {
                stream: e.stream,
                expected: e
                    .expected_version
                    .map_or(ExpectedVersion::Any, ExpectedVersion::Exact),
                events: vec![event],
            }),
        }
    }
    Ok(parts)
}
