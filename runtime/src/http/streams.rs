//! `/streams`: append events, read a stream back.

use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::log::{AppendError, ExpectedVersion, NewEvent, ReadError, RecordedEvent};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use prism_client::wire::{
    AppendParams, Appended, ErrorBody, Event, ListParams, NewEvent as EventIn, ReadParams,
    StreamList, StreamPage, StreamVersion, VersionConflict,
};
use serde_json::Value;

/// Most events one read returns.
pub const MAX_READ: usize = 1000;

/// `POST /streams/{stream}/events`: appends a JSON array of events atomically.
#[utoipa::path(
    post,
    path = "/streams/{stream}/events",
    tag = "streams",
    params(("stream" = String, Path, description = "The stream's name."), AppendParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the append safe to \
            retry (1 to 256 bytes): within the idempotency window (`idempotency_window_secs`, \
            24 h by default) the same append under the same key appends nothing and answers the \
            first one's result, with `Idempotent-Replayed: true`; a different append under it \
            is refused (422).")),
    request_body(content = Vec<EventIn>, content_type = "application/json",
        description = "The events, appended atomically in this order (at most 10000, 16 MiB)."),
    responses(
        (status = 201, description = "Appended, durably; or, with `Idempotent-Replayed: true`, \
            appended before by the same append (same `Idempotency-Key`, or the same event ids), \
            whose result this is.", body = Appended),
        (status = 400, description = "The body is not a JSON array of events, a metadata is not \
            an object, or a name is empty or too long.", body = ErrorBody),
        (status = 409, description = "The stream is not at `expected_version`; nothing was appended.",
            body = VersionConflict),
        (status = 422, description = "The `Idempotency-Key`, or some of the events' ids, were \
            used by a different append within the idempotency window; nothing was appended.",
            body = ErrorBody),
        (status = 413, description = "The body or the number of events is over the limit.",
            body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`.",
            body = ErrorBody),
        (status = 503, description = "Too many appends are waiting for the log, the log cannot \
            write now (a full disk: `/ready` says why), or Prism is stopping; nothing was appended. `Retry-After` says when to try again.",
            body = ErrorBody),
        (status = 500, description = "The log failed.", body = ErrorBody),
    ),
)]
pub async fn append(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(params): Query<AppendParams>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<
    (
        StatusCode,
        [(&'static str, &'static str); 1],
        Json<Appended>,
    ),
    ApiError,
> {
    let events: Vec<EventIn> = decode_append(
        &state,
        &headers,
        body,
        r#"{"type", "data", "metadata"?, "id"?}"#,
    )?;
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| new_event(i, e.event_type, &e.data, e.metadata.as_deref(), e.id))
        .collect::<Result<Vec<_>, _>>()?;
    let expected = params
        .expected_version
        .map_or(ExpectedVersion::Any, ExpectedVersion::Exact);
    let key = idempotency_key(&headers)?;
    let (started, count) = (std::time::Instant::now(), events.len() as u64);
    match state.log.append_once(key, &stream, expected, events).await {
        Ok(appended) => Ok((
            StatusCode::CREATED,
            record_append(&state, &appended, count, started),
            Json(Appended {
                stream,
                first_position: appended.first_position,
                last_position: appended.last_position,
                stream_version: appended.stream_version,
            }),
        )),
        Err(e) => Err(append_error(e)),
    }
}

/// An append's body: sent as JSON, an array of `T` (`shape` names its fields for the error),
/// within the limit on events per append.
pub(super) fn decode_append<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<Vec<T>, ApiError> {
    let body = body?;
    require_json(headers)?;
    let events: Vec<T> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON array of {shape} events: {e}"
        ))
    })?;
    let most = state.limits.max_append_events;
    if events.len() > most {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} events in one append; the limit is {most}", events.len()),
        ));
    }
    Ok(events)
}

/// Counts an append in the metrics (a retry answered from memory appended nothing); the
/// answer's `Idempotent-Replayed` header.
pub(super) fn record_append(
    state: &AppState,
    appended: &crate::log::Appended,
    count: u64,
    started: std::time::Instant,
) -> [(&'static str, &'static str); 1] {
    if !appended.replayed {
        state
            .metrics
            .appended(count, started.elapsed().as_secs_f64());
    }
    let replayed = if appended.replayed { "true" } else { "false" };
    [("idempotent-replayed", replayed)]
}

/// Refuses a body not sent as JSON (415).
pub(super) fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if !super::boundary::content_type_is(headers, &["application/json"]) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an append's body must be sent as Content-Type: application/json",
        ));
    }
    Ok(())
}

/// The `Idempotency-Key` header, if any.
pub(super) fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        Some(key) => Ok(Some(
            key.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                .to_string(),
        )),
        None => Ok(None),
    }
}

/// The `i`th event of an append, its metadata checked to be an object.
pub(super) fn new_event(
    i: usize,
    event_type: String,
    data: &serde_json::value::RawValue,
    metadata: Option<&serde_json::value::RawValue>,
    id: Option<String>,
) -> Result<NewEvent, ApiError> {
    let metadata = match metadata {
        Some(m) if !m.get().starts_with('{') => {
            return Err(ApiError::bad_request(format!(
                "event {i}: metadata must be a JSON object"
            )));
        }
        m => m.map(|m| m.get().as_bytes().to_vec()),
    };
    Ok(NewEvent {
        event_type,
        data: data.get().as_bytes().to_vec(),
        metadata,
        id,
    })
}

/// What a refused append answers.
pub(super) fn append_error(e: AppendError) -> ApiError {
    match e {
        AppendError::VersionConflict {
            stream,
            expected,
            actual,
        } => ApiError::detailed(
            StatusCode::CONFLICT,
            &VersionConflict {
                error: format!(
                    "stream {stream:?} is at version {actual}, not the expected {expected}; nothing was appended"
                ),
                expected_version: expected,
                actual_version: actual,
            },
        ),
        e @ AppendError::HeadMoved { .. } => {
            ApiError::new(StatusCode::PRECONDITION_FAILED, e.to_string())
        }
        AppendError::Invalid(message) => ApiError::bad_request(message),
        AppendError::Duplicate(message) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message),
        e @ (AppendError::Busy
        | AppendError::Closed
        | AppendError::Unavailable(_)
        | AppendError::Unknown(_)) => ApiError::unavailable(e.to_string(), 1),
        e => ApiError::internal(&e),
    }
}

/// `GET /streams/{stream}?from=&limit=`: the stream's events from version `from` (default 1).
#[utoipa::path(
    get,
    path = "/streams/{stream}",
    tag = "streams",
    params(("stream" = String, Path, description = "The stream's name."), ReadParams),
    responses(
        (status = 200, description = "Events in stream order.", body = StreamPage),
        (status = 400, description = "A bad `from` or `limit`.", body = ErrorBody),
        (status = 404, description = "No such stream.", body = ErrorBody),
        (status = 500, description = "The log failed.", body = ErrorBody),
        (status = 503, description = "The log cannot be read now (on JetStream: its servers did not answer); try again after `Retry-After`.", body = ErrorBody),
    ),
)]
pub async fn read(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<Json<StreamPage>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_READ {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_READ}"
        )));
    }
    let from = params.from.unwrap_or(1).max(1);
    let log = state.log.clone();
    let (version, events) = super::blocking(move || {
        Ok::<_, ReadError>((
            log.stream_version(&stream)?,
            log.read_stream(&stream, from, limit)?,
        ))
    })
    .await??;
    if version == 0 {
        return Err(ApiError::not_found("no such stream"));
    }
    let next = events
        .last()
        .filter(|e| e.stream_version < version)
        .map(|e| e.stream_version + 1);
    Ok(Json(StreamPage {
        version,
        events: events.iter().map(Event::from).collect(),
        next,
    }))
}

impl From<&RecordedEvent> for Event {
    fn from(e: &RecordedEvent) -> Self {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.timestamp_ms);
        Event {
            position: e.position,
            stream: e.stream.clone(),
            stream_version: e.stream_version,
            event_type: e.event_type.clone(),
            timestamp: humantime::format_rfc3339_millis(time).to_string(),
            data: serde_json::from_slice::<Value>(&e.data).unwrap_or(Value::Null),
            metadata: serde_json::from_slice::<Value>(&e.metadata).unwrap_or(Value::Null),
        }
    }
}

/// `GET /streams?after=&limit=`: stream names in order with their versions; `next` is the
/// `after` of the following page, or null at the end.
#[utoipa::path(
    get,
    path = "/streams",
    operation_id = "list_streams",
    tag = "streams",
    params(ListParams),
    responses(
        (status = 200, description = "Stream names in order with their versions.", body = StreamList),
        (status = 400, description = "A bad `limit`.", body = ErrorBody),
        (status = 500, description = "The log failed.", body = ErrorBody),
        (status = 503, description = "The log cannot be read now (on JetStream: its servers did not answer, or this node's stream index is catching up with the log); try again after `Retry-After`.", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<StreamList>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_READ {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_READ}"
        )));
    }
    let log = state.log.clone();
    // One extra stream tells whether another page follows.
    let mut streams =
        super::blocking(move || log.streams(params.after.as_deref(), limit + 1)).await??;
    let next = (streams.len() > limit).then(|| {
        streams.truncate(limit);
        streams[limit - 1].0.clone()
    });
    let streams = streams
        .into_iter()
        .map(|(stream, version)| StreamVersion { stream, version })
        .collect();
    Ok(Json(StreamList { streams, next }))
}
