//! `/projectors/{name}/view`: read a projector's view, by key or by ordered prefix scan.
//!
//! Every answer carries `Prism-Module` (the module hash), `Prism-Generation` and
//! `Prism-Checkpoint` (the position the answer reflects) headers. An answer is read from one
//! snapshot of one generation's view, so it never mixes generations.

use super::{ApiError, AppState};
use crate::projector::Generation;
use crate::store::ViewSnapshot;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Most entries one scan returns.
pub const MAX_SCAN: usize = 1000;

const MODULE: HeaderName = HeaderName::from_static("prism-module");
const GENERATION: HeaderName = HeaderName::from_static("prism-generation");
const CHECKPOINT: HeaderName = HeaderName::from_static("prism-checkpoint");

/// `GET /projectors/{name}/view/{key}`: the value under `key` (keys may contain `/`).
pub async fn get(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    consistency: Result<Query<Consistency>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(consistency) = consistency?;
    if key.len() > super::MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "a view key is at most {} bytes",
            super::MAX_KEY_LEN
        )));
    }
    let generation = state.projector(&name)?.serving();
    consistency.wait(&generation).await?;
    let (snapshot, value) =
        blocking(generation.clone(), move |snapshot| snapshot.get(&key)).await?;
    let Some(value) = value else {
        return Err(ApiError::not_found("no such key in the view"));
    };
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let mut headers = provenance(&generation, &snapshot);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok((headers, value).into_response())
}

#[derive(Deserialize)]
pub struct ScanParams {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
    // Not `#[serde(flatten)]`ed from `Consistency`: flattening loses the query string's numbers.
    min_position: Option<u64>,
    timeout_ms: Option<u64>,
}

/// Read-your-writes: `?min_position=P` (the position an append returned) makes a query wait
/// until the view reflects P, for at most `timeout_ms` (default 5000, at most 30000).
#[derive(Deserialize, Default)]
pub struct Consistency {
    min_position: Option<u64>,
    timeout_ms: Option<u64>,
}

/// Longest a query may wait for `min_position`.
pub const MAX_WAIT_MS: u64 = 30_000;

impl Consistency {
    /// Waits until `generation` has passed `min_position`; 504 with the current checkpoint when
    /// it does not within the timeout.
    async fn wait(&self, generation: &Generation) -> Result<(), ApiError> {
        let Some(position) = self.min_position else {
            return Ok(());
        };
        let timeout_ms = self.timeout_ms.unwrap_or(5_000);
        if timeout_ms > MAX_WAIT_MS {
            return Err(ApiError::bad_request(format!(
                "timeout_ms is at most {MAX_WAIT_MS}"
            )));
        }
        let mut checkpoints = generation.checkpoints();
        let reached = tokio::time::timeout(
            std::time::Duration::from_millis(timeout_ms),
            checkpoints.wait_for(|c| *c >= position),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        if reached {
            Ok(())
        } else {
            let checkpoint = *checkpoints.borrow();
            Err(ApiError::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the view has not reached position {position} within {timeout_ms} ms (it is at {checkpoint})"
                    ),
                )
                .with("checkpoint", checkpoint)
                .with("min_position", position))
        }
    }
}

/// `GET /projectors/{name}/view?prefix=&after=&limit=`: entries in key order; `next` is the
/// `after` of the following page, or null at the end.
pub async fn scan(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ScanParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_SCAN {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_SCAN}"
        )));
    }
    let generation = state.projector(&name)?.serving();
    let consistency = Consistency {
        min_position: params.min_position,
        timeout_ms: params.timeout_ms,
    };
    consistency.wait(&generation).await?;
    let (snapshot, entries) = blocking(generation.clone(), move |snapshot| {
        // One extra entry tells whether another page follows.
        snapshot.scan(&params.prefix, params.after.as_deref(), limit + 1)
    })
    .await?;
    let more = entries.len() > limit;
    let items: Vec<Value> = entries
        .iter()
        .take(limit)
        .map(|(key, value)| entry_json(key, value))
        .collect();
    let next = more.then(|| entries[limit - 1].0.clone());
    let body = Json(json!({ "items": items, "next": next }));
    Ok((provenance(&generation, &snapshot), body).into_response())
}

/// `{"key", "value"}` for a JSON value, `{"key", "value_base64"}` for any other bytes.
pub(super) fn entry_json(key: &str, value: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(value) {
        Ok(value) => json!({ "key": key, "value": value }),
        Err(_) => json!({
            "key": key,
            "value_base64": base64::engine::general_purpose::STANDARD.encode(value),
        }),
    }
}

/// Runs a read on a fresh snapshot of a generation's view, off the async executor.
async fn blocking<T: Send + 'static>(
    generation: Arc<Generation>,
    read: impl FnOnce(&ViewSnapshot) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<(ViewSnapshot, T), ApiError> {
    tokio::task::spawn_blocking(move || {
        let snapshot = generation.store.snapshot()?;
        let value = read(&snapshot)?;
        Ok((snapshot, value))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e: crate::store::StoreError| ApiError::internal(e))
}

fn provenance(generation: &Generation, snapshot: &ViewSnapshot) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(module) = HeaderValue::from_str(&generation.status().module) {
        headers.insert(MODULE, module);
    }
    headers.insert(GENERATION, HeaderValue::from(generation.id()));
    headers.insert(CHECKPOINT, HeaderValue::from(snapshot.checkpoint()));
    headers
}
