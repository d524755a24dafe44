//! `/streams`: append events, read a stream back.

use super::{ApiError, AppState};
use crate::log::{AppendError, ExpectedVersion, NewEvent, ReadError, RecordedEvent};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// Most events one read returns.
pub const MAX_READ: usize = 1000;

#[derive(Deserialize)]
struct EventIn {
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
pub struct AppendParams {
    expected_version: Option<u64>,
}

/// `POST /streams/{stream}/events`: appends a JSON array of events atomically.
pub async fn append(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    params: Result<Query<AppendParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(params) = params?;
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
            Json(json!({
                "stream": stream,
                "first_position": appended.first_position,
                "last_position": appended.last_position,
                "stream_version": appended.stream_version,
            })),
        ))
        }
        Err(AppendError::VersionConflict {
            stream,
            expected,
            actual,
        }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("stream {stream:?} is at version {actual}, not the expected {expected}; nothing was appended"),
        )
        .with("expected_version", expected)
        .with("actual_version", actual)),
        Err(AppendError::Invalid(message)) => Err(ApiError::bad_request(message)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[derive(Deserialize)]
pub struct ReadParams {
    from: Option<u64>,
    limit: Option<usize>,
}

/// `GET /streams/{stream}?from=&limit=`: the stream's events from version `from` (default 1).
pub async fn read(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_READ {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_READ}"
        )));
    }
    let from = params.from.unwrap_or(1).max(1);
    let log = state.log.clone();
    let (version, events) = tokio::task::spawn_blocking(move || {
        Ok::<_, ReadError>((
            log.stream_version(&stream)?,
            log.read_stream(&stream, from, limit)?,
        ))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    if version == 0 {
        return Err(ApiError::not_found("no such stream"));
    }
    let next = events
        .last()
        .filter(|e| e.stream_version < version)
        .map(|e| e.stream_version + 1);
    Ok(Json(json!({
        "version": version,
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// An event as the API shows it.
pub fn event_json(e: &RecordedEvent) -> Value {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.timestamp_ms);
    json!({
        "position": e.position,
        "stream": e.stream,
        "stream_version": e.stream_version,
        "type": e.event_type,
        "timestamp": humantime::format_rfc3339_millis(time).to_string(),
        "data": serde_json::from_slice::<Value>(&e.data).unwrap_or(Value::Null),
        "metadata": serde_json::from_slice::<Value>(&e.metadata).unwrap_or(Value::Null),
    })
}

#[derive(Deserialize)]
pub struct ListParams {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /streams?after=&limit=`: stream names in order with their versions; `next` is the
/// `after` of the following page, or null at the end.
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_READ {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_READ}"
        )));
    }
    let log = state.log.clone();
    // One extra stream tells whether another page follows.
    let mut streams =
        tokio::task::spawn_blocking(move || log.streams(params.after.as_deref(), limit + 1))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    let next = (streams.len() > limit).then(|| {
        streams.truncate(limit);
        streams[limit - 1].0.clone()
    });
    let streams: Vec<Value> = streams
        .into_iter()
        .map(|(stream, version)| json!({ "stream": stream, "version": version }))
        .collect();
    Ok(Json(json!({ "streams": streams, "next": next })))
}
