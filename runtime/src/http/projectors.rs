//! `/projectors`: deploy and redeploy modules, the lifecycle (pause, resume, reset, delete),
//! and status.

use super::{ApiError, AppState};
use crate::engine::ModuleError;
use crate::projector::{
    DeployError, DeployMode, DeployOptions, Generation, LifecycleError, ModuleSource,
    ProjectorHandle, RetryError,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
pub struct DeployParams {
    /// Deploy a stored module by hash instead of the body (a rollback).
    module: Option<String>,
    /// `config`, `mode` (`continue` or `rebuild`) and `on_error` (`stop` or `skip`).
    #[serde(flatten)]
    options: DeployOptions,
}

/// `PUT /projectors/{name}?config=&mode=&module=`: deploys the `.wasm` in the body, or the
/// stored module `module`.
pub async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<DeployParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(params) = params?;
    let body = body?;
    if params.options.mode == Some(DeployMode::Created) {
        return Err(ApiError::bad_request("mode must be continue or rebuild"));
    }
    let source = match (params.module, body.is_empty()) {
        (Some(hash), true) => ModuleSource::Stored(hash),
        (Some(_), false) => {
            return Err(ApiError::bad_request(
                "send either a module in the body or ?module=<hash>, not both",
            ));
        }
        (None, true) => {
            return Err(ApiError::bad_request(
                "the body must be a .wasm projector (or use ?module=<hash> to deploy a stored one)",
            ));
        }
        (None, false) => ModuleSource::Upload(body.to_vec()),
    };
    let registry = state.registry.clone();
    let deployed =
        tokio::task::spawn_blocking(move || registry.deploy(&name, source, params.options))
            .await
            .map_err(ApiError::internal)?
            .map_err(deploy_error)?;
    let status = match deployed.mode {
        DeployMode::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(json!(deployed))))
}

fn deploy_error(e: DeployError) -> ApiError {
    match e {
        DeployError::InvalidName(_) => ApiError::bad_request(e.to_string()),
        DeployError::UnknownModule(_) => ApiError::not_found(e.to_string()),
        DeployError::Module(ModuleError::NotWasm) => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())
        }
        DeployError::Module(ModuleError::Unavailable { .. }) | DeployError::Storage(_) => {
            ApiError::internal(e)
        }
        DeployError::Module(_) | DeployError::Instance(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
    }
}

fn lifecycle_error(e: LifecycleError) -> ApiError {
    match e {
        LifecycleError::NotFound(_) => ApiError::not_found(e.to_string()),
        LifecycleError::Deploy(e) => deploy_error(e),
        LifecycleError::Storage(_) => ApiError::internal(e),
    }
}

/// Runs a lifecycle action off the executor and answers with the projector's status.
async fn lifecycle(
    state: AppState,
    name: String,
    action: impl FnOnce(&crate::projector::Registry, &str) -> Result<(), LifecycleError>
    + Send
    + 'static,
) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.clone();
    let target = name.clone();
    tokio::task::spawn_blocking(move || action(&registry, &target))
        .await
        .map_err(ApiError::internal)?
        .map_err(lifecycle_error)?;
    match state.registry.get(&name) {
        Some(projector) => Ok(Json(info(&projector, state.log.head()))),
        None => Ok(Json(json!({ "name": name, "deleted": true }))),
    }
}

/// `POST /projectors/{name}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    lifecycle(state, name, |r, n| r.pause(n)).await
}

/// `POST /projectors/{name}/resume`: also restarts a faulted projector from its checkpoint.
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    lifecycle(state, name, |r, n| r.resume(n)).await
}

/// `POST /projectors/{name}/reset`: rebuilds the view from scratch, blue/green.
pub async fn reset(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    lifecycle(state, name, |r, n| r.reset(n).map(|_| ())).await
}

/// `DELETE /projectors/{name}`: stops the projector and deletes its views.
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    lifecycle(state, name, |r, n| r.delete(n)).await
}

/// `GET /projectors`: every projector with its status.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let head = state.log.head();
    let projectors: Vec<_> = state
        .registry
        .list()
        .iter()
        .map(|p| info(p, head))
        .collect();
    Json(json!({ "head": head, "projectors": projectors }))
}

/// `GET /projectors/{name}`: one projector's status.
pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let projector = state.projector(&name)?;
    Ok(Json(info(&projector, state.log.head())))
}

#[derive(Deserialize)]
pub struct DeadLetterParams {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /projectors/{name}/dead-letters?after=&limit=`: skipped events, in log order.
pub async fn dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let registry = state.registry.clone();
    let letters =
        tokio::task::spawn_blocking(move || registry.dead_letters(&name, params.after, limit))
            .await
            .map_err(ApiError::internal)?
            .map_err(lifecycle_error)?;
    Ok(Json(json!({ "dead_letters": letters })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /projectors/{name}/logs?after=&limit=`: the newest lines the projector wrote with
/// `host.log` (rate-limited, the last 1000 kept), oldest first; `after` is a line's `seq`.
pub async fn logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let lines = state
        .registry
        .module_log(&name, params.after, limit)
        .map_err(lifecycle_error)?;
    Ok(Json(json!({ "lines": lines })))
}

/// `DELETE /projectors/{name}/dead-letters/{position}`: discards a dead letter.
pub async fn discard_dead_letter(
    State(state): State<AppState>,
    Path((name, position)): Path<(String, u64)>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.clone();
    let found = tokio::task::spawn_blocking(move || registry.discard_dead_letter(&name, position))
        .await
        .map_err(ApiError::internal)?
        .map_err(lifecycle_error)?;
    if !found {
        return Err(ApiError::not_found(format!(
            "no dead letter at position {position}"
        )));
    }
    Ok(Json(json!({ "discarded": position })))
}

/// `POST /projectors/{name}/dead-letters/{position}/retry`: applies a dead-lettered event
/// again with the current code.
pub async fn retry_dead_letter(
    State(state): State<AppState>,
    Path((name, position)): Path<(String, u64)>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.clone();
    tokio::task::spawn_blocking(move || registry.retry_dead_letter(&name, position))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            RetryError::NotFound(_) => ApiError::not_found(e.to_string()),
            RetryError::NotRunning => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            RetryError::Failed(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            RetryError::Storage(_) => ApiError::internal(e),
        })?;
    Ok(Json(json!({ "retried": position, "applied": true })))
}

/// `POST /projectors/{name}/verify`: replays the projector from scratch and compares the
/// result with the live view at the same position.
pub async fn verify(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.clone();
    let report = tokio::task::spawn_blocking(move || registry.verify(&name))
        .await
        .map_err(ApiError::internal)?
        .map_err(lifecycle_error)?;
    Ok(Json(json!(report)))
}

/// `GET /ready`: 200 when every projector is healthy; 503 listing those faulted, or behind the
/// log with no progress for longer than the stall limit (paused ones do not count).
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let head = state.log.head();
    let mut unready = Vec::new();
    for projector in state.registry.list() {
        let status = projector.serving().status();
        let lag = head.saturating_sub(status.checkpoint);
        let idle = status.last_progress.elapsed();
        let verdict =
            crate::projector::readiness(projector.state(), lag, idle, state.limits.stall_after);
        if let Some(reason) = verdict {
            unready.push(json!({
                "name": projector.name,
                "reason": reason,
                "checkpoint": status.checkpoint,
                "lag": lag,
                "seconds_without_progress": idle.as_secs(),
                "error": status.error,
            }));
        }
    }
    let code = if unready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({ "ready": unready.is_empty(), "head": head, "unready": unready })),
    )
}

/// `GET /modules`: the hashes of every stored module (deployable with `?module=`).
pub async fn modules(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let modules = state.registry.modules().map_err(ApiError::internal)?;
    Ok(Json(json!({ "modules": modules })))
}

fn info(projector: &ProjectorHandle, head: u64) -> Value {
    let serving = projector.serving();
    let status = serving.status();
    let record = serving.record();
    let descriptor = serving.descriptor.lock().expect("descriptor lock").clone();
    json!({
        "name": projector.name,
        "state": projector.state(),
        "module": status.module,
        "schema_version": record.schema_version,
        "generation": record.id,
        "config": record.config,
        "code_name": descriptor.as_ref().map(|d| d.name.clone()),
        "subscription": descriptor.map(|d| d.subscription),
        "checkpoint": status.checkpoint,
        "head": head,
        "lag": head.saturating_sub(status.checkpoint),
        "events_per_sec": status.rate.per_second().round(),
        "events_applied": status.events_applied,
        "on_error": record.on_error,
        "dead_letters_this_run": status.dead_letters,
        "error": status.error,
        "reload_error": projector.reload_error(),
        "rebuild": projector.pending().map(|p| rebuild(&p, head)),
    })
}

/// A rebuild's progress: percent of the log, speed, and time left.
fn rebuild(pending: &Generation, head: u64) -> Value {
    let status = pending.status();
    let record = pending.record();
    let rate = status.rate.per_second();
    let left = head.saturating_sub(status.checkpoint);
    json!({
        "generation": record.id,
        "module": record.module,
        "schema_version": record.schema_version,
        "state": status.state,
        "checkpoint": status.checkpoint,
        "percent": if head == 0 { 100.0 } else { (status.checkpoint as f64 * 1000.0 / head as f64).round() / 10.0 },
        "events_per_sec": rate.round(),
        "eta_secs": (rate > 0.0).then(|| (left as f64 / rate * 10.0).round() / 10.0),
        "error": status.error,
    })
}
