//! `/streams`: append events, read a stream back.

use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::log::{AppendError, ExpectedVersion, NewEvent, ReadError, RecordedEvent};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

/// Most events one read returns.
pub const MAX_READ: usize = 1000;

/// An event to append.
#[derive(Deserialize, ToSchema)]
#[schema(as = NewEvent)]
pub struct EventIn {
    /// The event's type, e.g. `OrderPlaced`.
    #[serde(rename = "type")]
    event_type: String,
    /// The event's data: any JSON.
    #[schema(value_type = Value)]
    data: Box<RawValue>,
    /// The event's metadata: a JSON object (`{}` when left out).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppendParams {
    /// Append only if the stream holds exactly this many events (0: only if it does not exist
    /// yet); otherwise 409 and nothing is appended.
    expected_version: Option<u64>,
}

/// The answer to an append: its events hold the consecutive positions
/// `first_position..=last_position`.
#[derive(Serialize, ToSchema)]
pub struct AppendReply {
    pub stream: String,
    /// Global position of the request's first event.
    pub first_position: u64,
    /// Global position of its last event (pass it as `min_position` to read your write).
    pub last_position: u64,
    /// The stream's version after the append (its number of events).
    pub stream_version: u64,
}

/// `POST /streams/{stream}/events`: appends a JSON array of events atomically.
#[utoipa::path(
    post,
    path = "/streams/{stream}/events",
    tag = "streams",
    params(("stream" = String, Path, description = "The stream's name."), AppendParams),
    request_body(content = Vec<EventIn>, content_type = "application/json",
        description = "The events, appended atomically in this order (at most 10000, 16 MiB)."),
    responses(
        (status = 201, description = "Appended, durably.", body = AppendReply),
        (status = 400, description = "The body is not a JSON array of events, a metadata is not \
            an object, or a name is empty or too long.", body = super::ErrorBody),
        (status = 409, description = "The stream is not at `expected_version`; nothing was appended.",
            body = super::openapi::VersionConflict),
        (status = 413, description = "The body or the number of events is over the limit.",
            body = super::ErrorBody),
        (status = 500, description = "The log failed.", body = super::ErrorBody),
    ),
)]
pub async fn append(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(params): Query<AppendParams>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<AppendReply>), ApiError> {
    let body = body?;
    let events: Vec<EventIn> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON array of {{\"type\", \"data\", \"metadata\"?}} events: {e}"
        ))
    })?;
    let most = state.limits.max_append_events;
    if events.len() > most {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} events in one append; the limit is {most}", events.len()),
        ));
    }
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let metadata = match e.metadata {
                Some(m) if !m.get().starts_with('{') => {
                    return Err(ApiError::bad_request(format!(
                        "event {i}: metadata must be a JSON object"
                    )));
                }
                m => m.map(|m| m.get().as_bytes().to_vec()),
            };
            Ok(NewEvent {
                event_type: e.event_type,
                data: e.data.get().as_bytes().to_vec(),
                metadata,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let expected = params
        .expected_version
        .map_or(ExpectedVersion::Any, ExpectedVersion::Exact);
    let (started, count) = (std::time::Instant::now(), events.len() as u64);
    match state.log.append(&stream, expected, events).await {
        Ok(appended) => {
            state
                .metrics
                .appended(count, started.elapsed().as_secs_f64());
            Ok((
                StatusCode::CREATED,
                Json(AppendReply {
                    stream,
                    first_position: appended.first_position,
                    last_position: appended.last_position,
                    stream_version: appended.stream_version,
                }),
            ))
        }
        Err(AppendError::VersionConflict {
            stream,
            expected,
            actual,
        }) => Err(ApiError::detailed(
            StatusCode::CONFLICT,
            &super::openapi::VersionConflict {
                error: format!(
                    "stream {stream:?} is at version {actual}, not the expected {expected}; nothing was appended"
                ),
                expected_version: expected,
                actual_version: actual,
            },
        )),
        Err(AppendError::Invalid(message)) => Err(ApiError::bad_request(message)),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// The stream version to start at (default 1, the first event).
    from: Option<u64>,
    /// Most events to return: 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// A page of a stream.
#[derive(Serialize, ToSchema)]
pub struct StreamPage {
    /// The stream's version (its number of events).
    pub version: u64,
    pub events: Vec<EventOut>,
    /// The `from` of the next page, or null at the end.
    #[schema(required = true)]
    pub next: Option<u64>,
}

/// An event as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
pub struct EventOut {
    /// Global position in the log.
    pub position: u64,
    pub stream: String,
    /// Its version within the stream.
    pub stream_version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the log stored it (RFC 3339, milliseconds).
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The data as appended.
    pub data: Value,
    /// The metadata as appended (`{}` when none was given).
    pub metadata: Value,
}

/// `GET /streams/{stream}?from=&limit=`: the stream's events from version `from` (default 1).
#[utoipa::path(
    get,
    path = "/streams/{stream}",
    tag = "streams",
    params(("stream" = String, Path, description = "The stream's name."), ReadParams),
    responses(
        (status = 200, description = "Events in stream order.", body = StreamPage),
        (status = 400, description = "A bad `from` or `limit`.", body = super::ErrorBody),
        (status = 404, description = "No such stream.", body = super::ErrorBody),
        (status = 500, description = "The log failed.", body = super::ErrorBody),
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
        events: events.iter().map(EventOut::from).collect(),
        next,
    }))
}

impl From<&RecordedEvent> for EventOut {
    fn from(e: &RecordedEvent) -> Self {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.timestamp_ms);
        EventOut {
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// List the streams named after this one (the `next` of the previous page).
    after: Option<String>,
    /// Most streams to return: 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// A page of stream names.
#[derive(Serialize, ToSchema)]
pub struct StreamList {
    /// In name order.
    pub streams: Vec<StreamVersion>,
    /// The `after` of the next page, or null at the end.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// A stream and its version.
#[derive(Serialize, ToSchema)]
pub struct StreamVersion {
    pub stream: String,
    /// Its number of events.
    pub version: u64,
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
        (status = 400, description = "A bad `limit`.", body = super::ErrorBody),
        (status = 500, description = "The log failed.", body = super::ErrorBody),
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
