//! `/projectors/{name}/view`: read a projector's view, by key or by ordered prefix scan.
//!
//! Every answer carries `Prism-Module` (the module hash), `Prism-Generation` and
//! `Prism-Checkpoint` (the position the answer reflects) headers. An answer is read from one
//! snapshot of one generation's view, so it never mixes generations.

use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::projector::Generation;
use crate::store::ViewSnapshot;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use prism_client::wire::{Consistency, Entry, MAX_WAIT_MS, ScanPage, ScanParams};
use serde_json::Value;
use std::sync::Arc;
use utoipa::ToSchema;

/// Most entries one scan returns.
pub const MAX_SCAN: usize = 1000;

const MODULE: HeaderName = HeaderName::from_static("prism-module");
const GENERATION: HeaderName = HeaderName::from_static("prism-generation");
const CHECKPOINT: HeaderName = HeaderName::from_static("prism-checkpoint");

/// `GET /projectors/{name}/view/{key}`: the value under `key` (keys may contain `/`).
#[utoipa::path(
    get,
    path = "/projectors/{name}/view/{*key}",
    tag = "views",
    params(
        ("name" = String, Path, description = "The projector's name."),
        ("key" = String, Path, description = "The view key; it may contain `/` (at most 1024 bytes)."),
        Consistency,
    ),
    responses(
        (status = 200, description = "The value: JSON as the projector wrote it, or other bytes.",
            headers(
                ("Prism-Module" = String, description = "The sha256 of the module that wrote the view."),
                ("Prism-Generation" = u64, description = "The view's generation."),
                ("Prism-Checkpoint" = u64, description = "The log position the answer reflects."),
            ),
            content((Value = "application/json"), (ViewBytes = "application/octet-stream"))),
        (status = 400, description = "The key is too long, or a bad `timeout_ms`.", body = super::ErrorBody),
        (status = 404, description = "No such projector, or no such key in its view.", body = super::ErrorBody),
        (status = 500, description = "The view store failed.", body = super::ErrorBody),
        (status = 504, description = "The view did not reach `min_position` within `timeout_ms`.",
            body = prism_client::wire::NotReached),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    Query(consistency): Query<Consistency>,
) -> Result<Response, ApiError> {
    if key.len() > super::MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "a view key is at most {} bytes",
            super::MAX_KEY_LEN
        )));
    }
    let generation = state.projector(&name)?.serving();
    wait(&consistency, &generation).await?;
    // Read on the async worker, not through `spawn_blocking`: a point read is a few B-tree
    // pages, nearly always in redb's cache (microseconds), and the hand-off to a blocking
    // thread and back cost more than the read — two thread wake-ups per request, half the
    // server's time under load. Scans, which may read a thousand entries, still go off it.
    let snapshot = generation.store.snapshot()?;
    let value = snapshot.get(&key)?;
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

/// A view value that is not JSON: its bytes as the projector wrote them.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Documents the bytes `get` answers.
struct ViewBytes(Vec<u8>);

/// Waits until `generation` has passed `consistency.min_position`; 504 with the current
/// checkpoint when it does not within the timeout.
async fn wait(consistency: &Consistency, generation: &Generation) -> Result<(), ApiError> {
    let Some(position) = consistency.min_position else {
        return Ok(());
    };
    let timeout_ms = consistency.timeout_ms.unwrap_or(5_000);
    if timeout_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "timeout_ms is at most {MAX_WAIT_MS}"
        )));
    }
    let mut status = generation.watch();
    let reached = tokio::time::timeout(
        std::time::Duration::from_millis(timeout_ms),
        status.wait_for(|s| s.checkpoint >= position),
    )
    .await
    .is_ok_and(|waited| waited.is_ok());
    if reached {
        Ok(())
    } else {
        let checkpoint = status.borrow().checkpoint;
        Err(ApiError::detailed(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            &prism_client::wire::NotReached {
                error: format!(
                    "the view has not reached position {position} within {timeout_ms} ms (it is at {checkpoint})"
                ),
                checkpoint,
                min_position: position,
            },
        ))
    }
}

/// `GET /projectors/{name}/view?prefix=&after=&limit=`: entries in key order; `next` is the
/// `after` of the following page, or null at the end.
#[utoipa::path(
    get,
    path = "/projectors/{name}/view",
    tag = "views",
    params(("name" = String, Path, description = "The projector's name."), ScanParams),
    responses(
        (status = 200, description = "Entries in key order, from one snapshot.", body = ScanPage,
            headers(
                ("Prism-Module" = String, description = "The sha256 of the module that wrote the view."),
                ("Prism-Generation" = u64, description = "The view's generation."),
                ("Prism-Checkpoint" = u64, description = "The log position the answer reflects."),
            )),
        (status = 400, description = "A bad `limit` or `timeout_ms`.", body = super::ErrorBody),
        (status = 404, description = "No such projector.", body = super::ErrorBody),
        (status = 500, description = "The view store failed.", body = super::ErrorBody),
        (status = 504, description = "The view did not reach `min_position` within `timeout_ms`.",
            body = prism_client::wire::NotReached),
    ),
)]
pub async fn scan(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<ScanParams>,
) -> Result<Response, ApiError> {
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
    wait(&consistency, &generation).await?;
    let (snapshot, entries) = blocking(generation.clone(), move |snapshot| {
        // One extra entry tells whether another page follows.
        snapshot.scan(&params.prefix, params.after.as_deref(), limit + 1)
    })
    .await?;
    let more = entries.len() > limit;
    let items = entries
        .iter()
        .take(limit)
        .map(|(key, value)| entry(key, value))
        .collect();
    let next = more.then(|| entries[limit - 1].0.clone());
    let body = Json(ScanPage { items, next });
    Ok((provenance(&generation, &snapshot), body).into_response())
}

/// `{"key", "value"}` for a JSON value, `{"key", "value_base64"}` for any other bytes.
pub(super) fn entry(key: &str, value: &[u8]) -> Entry {
    let key = key.to_string();
    match serde_json::from_slice::<Value>(value) {
        Ok(value) => Entry::Json { key, value },
        Err(_) => Entry::Bytes {
            key,
            value_base64: base64::engine::general_purpose::STANDARD.encode(value),
        },
    }
}

/// [`entry`] as JSON.
pub(super) fn entry_json(key: &str, value: &[u8]) -> Value {
    serde_json::to_value(entry(key, value)).unwrap_or(Value::Null)
}

/// Runs a read on a fresh snapshot of a generation's view, off the async executor.
async fn blocking<T: Send + 'static>(
    generation: Arc<Generation>,
    read: impl FnOnce(&ViewSnapshot) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<(ViewSnapshot, T), ApiError> {
    super::blocking(move || {
        let snapshot = generation.store.snapshot()?;
        let value = read(&snapshot)?;
        Ok::<_, crate::store::StoreError>((snapshot, value))
    })
    .await?
    .map_err(ApiError::from)
}

fn provenance(generation: &Generation, snapshot: &ViewSnapshot) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(module) = HeaderValue::from_str(generation.status().module()) {
        headers.insert(MODULE, module);
    }
    headers.insert(GENERATION, HeaderValue::from(generation.id));
    headers.insert(CHECKPOINT, HeaderValue::from(snapshot.checkpoint()));
    headers
}
