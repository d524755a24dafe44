//! `/projectors`: deploy and redeploy modules, the lifecycle (pause, resume, reset, delete),
//! and status.

use super::ErrorBody;
use super::{ApiError, AppState};
use crate::engine::{CompileSource, LogLine, ModuleError};
use crate::projector::{
    DeployError, DeployMode, DeployOptions, Deployed, Difference, ErrorPolicy, Fault, Generation,
    LifecycleError, ModuleSource, ProjectorHandle, RetryError, State as ProjectorState,
    Subscription, Unready, Verification, ViewDigest,
};
use crate::store::DeadLetter;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployParams {
    /// Deploy the stored module with this sha256 instead of the body (a rollback; see
    /// `GET /modules`). The body must then be empty.
    module: Option<String>,
    /// A new configuration string passed to the module's `init` (default: keep the current
    /// one; empty for a new projector).
    config: Option<String>,
    /// `continue` (the new code goes on from the checkpoint on the same view) or `rebuild` (a
    /// fresh view is rebuilt in the background). Default: `continue` when the view schema
    /// version is unchanged, `rebuild` when it changed.
    #[param(value_type = Option<ModeChoice>)]
    mode: Option<DeployMode>,
    /// What to do with an event the module fails on: `stop` (fault) or `skip` (dead-letter it
    /// and go on). Default: keep the current policy (`stop` for a new projector).
    on_error: Option<ErrorPolicy>,
}

/// The deploy modes a request may ask for.
#[derive(ToSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)] // Documents the `mode` parameter, parsed as a `DeployMode`.
pub(super) enum ModeChoice {
    Continue,
    Rebuild,
}

/// A deploy module upload: a WebAssembly component, or a core module with its component type.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Documents the body, read as bytes.
struct WasmModule(Vec<u8>);

/// How a deploy applied.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = DeployMode)]
pub enum DeployModeReply {
    /// A new projector, starting from the beginning of the log.
    Created,
    /// The new code took over from the current checkpoint on the same view.
    Continue,
    /// A new generation rebuilds a fresh view in the background; queries switch to it when it
    /// has caught up.
    Rebuild,
}

impl From<DeployMode> for DeployModeReply {
    fn from(mode: DeployMode) -> Self {
        match mode {
            DeployMode::Created => DeployModeReply::Created,
            DeployMode::Continue => DeployModeReply::Continue,
            DeployMode::Rebuild => DeployModeReply::Rebuild,
        }
    }
}

/// Where a module's compiled code came from.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = CompileSource)]
pub enum CompileSourceReply {
    /// Compiled now.
    Compiled,
    /// Already loaded in this process.
    Memory,
    /// Loaded from the on-disk cache of compiled artifacts.
    DiskCache,
}

impl From<CompileSource> for CompileSourceReply {
    fn from(source: CompileSource) -> Self {
        match source {
            CompileSource::Compiled => CompileSourceReply::Compiled,
            CompileSource::Memory => CompileSourceReply::Memory,
            CompileSource::DiskCache => CompileSourceReply::DiskCache,
        }
    }
}

/// The result of a deploy.
#[derive(Serialize, ToSchema)]
#[schema(as = Deployed)]
pub struct DeployReply {
    pub name: String,
    /// The module's sha256.
    pub module: String,
    /// The view schema version the module declares.
    pub schema_version: u32,
    pub mode: DeployModeReply,
    /// The generation the deploy runs in (a new one for a rebuild).
    pub generation: u64,
    pub compile: CompileSourceReply,
    /// How long validation and compilation took, in milliseconds.
    pub compile_ms: f64,
}

impl From<Deployed> for DeployReply {
    fn from(deployed: Deployed) -> Self {
        let Deployed {
            name,
            module,
            schema_version,
            mode,
            generation,
            compile,
            compile_ms,
        } = deployed;
        DeployReply {
            name,
            module,
            schema_version,
            mode: mode.into(),
            generation,
            compile: compile.into(),
            compile_ms,
        }
    }
}

/// `PUT /projectors/{name}?config=&mode=&module=`: deploys the `.wasm` in the body, or the
/// stored module `module`.
#[utoipa::path(
    put,
    path = "/projectors/{name}",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name."), DeployParams),
    request_body(content = Option<WasmModule>, content_type = "application/wasm",
        description = "The `.wasm` projector (a component, or a core module with its component \
            type); empty with `?module=`."),
    responses(
        (status = 201, description = "A new projector, catching up from the start of the log.",
            body = DeployReply),
        (status = 200, description = "Redeployed (`continue` or `rebuild`).", body = DeployReply),
        (status = 400, description = "A bad name or query, no module, or both a body and \
            `?module=`.", body = ErrorBody),
        (status = 404, description = "No stored module with that hash.", body = ErrorBody),
        (status = 413, description = "The module is larger than the upload limit.", body = ErrorBody),
        (status = 415, description = "The body is not WebAssembly.", body = ErrorBody),
        (status = 422, description = "Not a valid projector: it does not validate, compile, \
            link or instantiate.", body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<DeployParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DeployReply>), ApiError> {
    let Query(params) = params?;
    let body = body?;
    let options = DeployOptions {
        config: params.config,
        mode: params.mode,
        on_error: params.on_error,
    };
    if options.mode == Some(DeployMode::Created) {
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
    let deployed = tokio::task::spawn_blocking(move || registry.deploy(&name, source, options))
        .await
        .map_err(ApiError::internal)?
        .map_err(deploy_error)?;
    let status = match deployed.mode {
        DeployMode::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(deployed.into())))
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

/// The answer to a lifecycle action: the projector's status, or that it is gone.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum LifecycleReply {
    Projector(Box<ProjectorInfo>),
    Deleted(DeletedReply),
}

/// A deleted projector.
#[derive(Serialize, ToSchema)]
pub struct DeletedReply {
    pub name: String,
    /// Always true.
    pub deleted: bool,
}

/// Runs a lifecycle action off the executor and answers with the projector's status.
async fn lifecycle(
    state: AppState,
    name: String,
    action: impl FnOnce(&crate::projector::Registry, &str) -> Result<(), LifecycleError>
    + Send
    + 'static,
) -> Result<Json<LifecycleReply>, ApiError> {
    let registry = state.registry.clone();
    let target = name.clone();
    tokio::task::spawn_blocking(move || action(&registry, &target))
        .await
        .map_err(ApiError::internal)?
        .map_err(lifecycle_error)?;
    match state.registry.get(&name) {
        Some(projector) => Ok(Json(LifecycleReply::Projector(Box::new(info(
            &projector,
            state.log.head(),
        ))))),
        None => Ok(Json(LifecycleReply::Deleted(DeletedReply {
            name,
            deleted: true,
        }))),
    }
}

/// `POST /projectors/{name}/pause`.
#[utoipa::path(
    post,
    path = "/projectors/{name}/pause",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name.")),
    responses(
        (status = 200, description = "Paused: it applies nothing until resumed; its view keeps \
            serving.", body = LifecycleReply),
        (status = 404, description = "No such projector.", body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<LifecycleReply>, ApiError> {
    lifecycle(state, name, |r, n| r.pause(n)).await
}

/// `POST /projectors/{name}/resume`: also restarts a faulted projector from its checkpoint.
#[utoipa::path(
    post,
    path = "/projectors/{name}/resume",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name.")),
    responses(
        (status = 200, description = "Resumed (a faulted projector restarts from its checkpoint).",
            body = LifecycleReply),
        (status = 404, description = "No such projector.", body = ErrorBody),
        (status = 422, description = "The module could not be instantiated again.", body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<LifecycleReply>, ApiError> {
    lifecycle(state, name, |r, n| r.resume(n)).await
}

/// `POST /projectors/{name}/reset`: rebuilds the view from scratch, blue/green.
#[utoipa::path(
    post,
    path = "/projectors/{name}/reset",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name.")),
    responses(
        (status = 200, description = "A fresh view rebuilds in the background (see `rebuild`); \
            the current one serves until it has caught up.", body = LifecycleReply),
        (status = 404, description = "No such projector.", body = ErrorBody),
        (status = 422, description = "The module could not be instantiated.", body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn reset(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<LifecycleReply>, ApiError> {
    lifecycle(state, name, |r, n| r.reset(n).map(|_| ())).await
}

/// `DELETE /projectors/{name}`: stops the projector and deletes its views.
#[utoipa::path(
    delete,
    path = "/projectors/{name}",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name.")),
    responses(
        (status = 200, description = "Stopped and deleted with its views.", body = LifecycleReply),
        (status = 404, description = "No such projector.", body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<LifecycleReply>, ApiError> {
    lifecycle(state, name, |r, n| r.delete(n)).await
}

/// Every projector.
#[derive(Serialize, ToSchema)]
pub struct ProjectorList {
    /// The log's head: the position of its last event.
    pub head: u64,
    /// In name order.
    pub projectors: Vec<ProjectorInfo>,
}

/// `GET /projectors`: every projector with its status.
#[utoipa::path(
    get,
    path = "/projectors",
    operation_id = "list_projectors",
    tag = "projectors",
    responses((status = 200, description = "Every projector with its status.", body = ProjectorList)),
)]
pub async fn list(State(state): State<AppState>) -> Json<ProjectorList> {
    let head = state.log.head();
    let projectors: Vec<_> = state
        .registry
        .list()
        .iter()
        .map(|p| info(p, head))
        .collect();
    Json(ProjectorList { head, projectors })
}

/// `GET /projectors/{name}`: one projector's status.
#[utoipa::path(
    get,
    path = "/projectors/{name}",
    tag = "projectors",
    params(("name" = String, Path, description = "The projector's name.")),
    responses(
        (status = 200, description = "The projector's status, with its rebuild's progress.",
            body = ProjectorInfo),
        (status = 404, description = "No such projector.", body = ErrorBody),
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProjectorInfo>, ApiError> {
    let projector = state.projector(&name)?;
    Ok(Json(info(&projector, state.log.head())))
}

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
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<DeadLetters>, ApiError> {
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
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Json<LogLines>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let lines = state
        .registry
        .module_log(&name, params.after, limit)
        .map_err(lifecycle_error)?;
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
        (status = 400, description = "`position` is not a number (a plain-text answer).",
            content_type = "text/plain; charset=utf-8", body = String),
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
    let found = tokio::task::spawn_blocking(move || registry.discard_dead_letter(&name, position))
        .await
        .map_err(ApiError::internal)?
        .map_err(lifecycle_error)?;
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
        (status = 400, description = "`position` is not a number (a plain-text answer).",
            content_type = "text/plain; charset=utf-8", body = String),
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
    tokio::task::spawn_blocking(move || registry.retry_dead_letter(&name, position))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            RetryError::NotFound(_) => ApiError::not_found(e.to_string()),
            RetryError::NotRunning => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            RetryError::Failed(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            RetryError::Storage(_) => ApiError::internal(e),
        })?;
    Ok(Json(Retried {
        retried: position,
        applied: true,
    }))
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
        (status = 422, description = "The module could not be instantiated for the replay.",
            body = ErrorBody),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn verify(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VerifyReply>, ApiError> {
    let registry = state.registry.clone();
    let report = tokio::task::spawn_blocking(move || registry.verify(&name))
        .await
        .map_err(ApiError::internal)?
        .map_err(lifecycle_error)?;
    Ok(Json(report.into()))
}

/// Whether Prism is ready.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// True when no projector is faulted or stalled.
    pub ready: bool,
    /// The log's head.
    pub head: u64,
    /// The projectors that make Prism not ready.
    pub unready: Vec<UnreadyProjector>,
}

/// A projector that makes Prism not ready.
#[derive(Serialize, ToSchema)]
pub struct UnreadyProjector {
    pub name: String,
    pub reason: Unready,
    pub checkpoint: u64,
    /// Events between its checkpoint and the log's head.
    pub lag: u64,
    /// Since its checkpoint last moved.
    pub seconds_without_progress: u64,
    /// Why it is faulted.
    #[schema(required = true)]
    pub error: Option<Fault>,
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
    let head = state.log.head();
    let mut unready = Vec::new();
    for projector in state.registry.list() {
        let status = projector.serving().status();
        let lag = head.saturating_sub(status.checkpoint);
        let idle = status.last_progress.elapsed();
        let verdict =
            crate::projector::readiness(projector.state(), lag, idle, state.limits.stall_after);
        if let Some(reason) = verdict {
            unready.push(UnreadyProjector {
                name: projector.name.clone(),
                reason,
                checkpoint: status.checkpoint,
                lag,
                seconds_without_progress: idle.as_secs(),
                error: status.error,
            });
        }
    }
    let code = if unready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            ready: unready.is_empty(),
            head,
            unready,
        }),
    )
}

/// The stored modules.
#[derive(Serialize, ToSchema)]
pub struct Modules {
    /// Their sha256 hashes.
    pub modules: Vec<String>,
}

/// `GET /modules`: the hashes of every stored module (deployable with `?module=`).
#[utoipa::path(
    get,
    path = "/modules",
    tag = "projectors",
    responses(
        (status = 200, description = "The hashes of every stored module (deployable with \
            `PUT /projectors/{name}?module=`).", body = Modules),
        (status = 500, description = "Storage failed.", body = ErrorBody),
    ),
)]
pub async fn modules(State(state): State<AppState>) -> Result<Json<Modules>, ApiError> {
    let modules = state.registry.modules().map_err(ApiError::internal)?;
    Ok(Json(Modules { modules }))
}

/// A projector's status.
#[derive(Serialize, ToSchema)]
#[schema(as = Projector)]
pub struct ProjectorInfo {
    pub name: String,
    pub state: ProjectorState,
    /// The sha256 of the module running now.
    pub module: String,
    /// The view schema version of the serving generation.
    pub schema_version: u32,
    /// The serving generation.
    pub generation: u64,
    /// The configuration string passed to `init`.
    pub config: String,
    /// The name the module gives itself (null until it has described itself).
    #[schema(required = true)]
    pub code_name: Option<String>,
    /// The events it receives (null until it has described itself).
    #[schema(required = true)]
    pub subscription: Option<Subscription>,
    /// Position of the last event its view reflects.
    pub checkpoint: u64,
    /// The log's head.
    pub head: u64,
    /// Events between the checkpoint and the head.
    pub lag: u64,
    /// Recent speed through the log.
    pub events_per_sec: f64,
    /// Events delivered to the module since this run started.
    pub events_applied: u64,
    pub on_error: ErrorPolicy,
    /// Events skipped as dead letters since this run started.
    pub dead_letters_this_run: u64,
    /// Why it is faulted.
    #[schema(required = true)]
    pub error: Option<Fault>,
    /// Why the last hot reload failed, if it did.
    #[schema(required = true)]
    pub reload_error: Option<String>,
    /// A rebuild in progress (a new generation catching up in the background).
    #[schema(required = true)]
    pub rebuild: Option<RebuildProgress>,
}

/// A rebuild's progress: percent of the log, speed, and time left.
#[derive(Serialize, ToSchema)]
pub struct RebuildProgress {
    pub generation: u64,
    pub module: String,
    pub schema_version: u32,
    pub state: ProjectorState,
    pub checkpoint: u64,
    /// Percent of the log applied (one decimal).
    pub percent: f64,
    pub events_per_sec: f64,
    /// Seconds left at the current speed (null when not moving).
    #[schema(required = true)]
    pub eta_secs: Option<f64>,
    #[schema(required = true)]
    pub error: Option<Fault>,
}

fn info(projector: &ProjectorHandle, head: u64) -> ProjectorInfo {
    let serving = projector.serving();
    let status = serving.status();
    let record = serving.record();
    let descriptor = serving.descriptor.lock().expect("descriptor lock").clone();
    ProjectorInfo {
        name: projector.name.clone(),
        state: projector.state(),
        module: status.module,
        schema_version: record.schema_version,
        generation: record.id,
        config: record.config,
        code_name: descriptor.as_ref().map(|d| d.name.clone()),
        subscription: descriptor.map(|d| d.subscription),
        checkpoint: status.checkpoint,
        head,
        lag: head.saturating_sub(status.checkpoint),
        events_per_sec: status.rate.per_second().round(),
        events_applied: status.events_applied,
        on_error: record.on_error,
        dead_letters_this_run: status.dead_letters,
        error: status.error,
        reload_error: projector.reload_error(),
        rebuild: projector.pending().map(|p| rebuild(&p, head)),
    }
}

/// A rebuild's progress.
fn rebuild(pending: &Generation, head: u64) -> RebuildProgress {
    let status = pending.status();
    let record = pending.record();
    let rate = status.rate.per_second();
    let left = head.saturating_sub(status.checkpoint);
    RebuildProgress {
        generation: record.id,
        module: record.module,
        schema_version: record.schema_version,
        state: status.state,
        checkpoint: status.checkpoint,
        percent: if head == 0 {
            100.0
        } else {
            (status.checkpoint as f64 * 1000.0 / head as f64).round() / 10.0
        },
        events_per_sec: rate.round(),
        eta_secs: (rate > 0.0).then(|| (left as f64 / rate * 10.0).round() / 10.0),
        error: status.error,
    }
}
