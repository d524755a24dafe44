//! `/projectors`: deploy and redeploy modules, the lifecycle (pause, resume, reset, delete),
//! status, and the stored modules.

use super::ErrorBody;
use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::engine::CompileSource;
use crate::projector::{
    DeployMode, DeployOptions, Deployed, ErrorPolicy, LifecycleError, ModuleSource, ProjectorInfo,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
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
        (status = 503, description = "No projector thread could be started now; nothing \
            changed. `Retry-After` says when to try again.", body = ErrorBody),
    ),
)]
pub async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<DeployParams>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DeployReply>), ApiError> {
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
    let deployed = super::blocking(move || registry.deploy(&name, source, options)).await??;
    let status = match deployed.mode {
        DeployMode::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(deployed.into())))
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
    super::blocking(move || action(&registry, &target)).await??;
    match state.registry.get(&name) {
        Some(projector) => Ok(Json(LifecycleReply::Projector(Box::new(
            projector.info(state.log.head()),
        )))),
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
        (status = 503, description = "No projector thread could be started now; nothing \
            changed. `Retry-After` says when to try again.", body = ErrorBody),
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
        (status = 503, description = "No projector thread could be started now; nothing \
            changed. `Retry-After` says when to try again.", body = ErrorBody),
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
    Json(ProjectorList {
        head,
        projectors: state.registry.infos(),
    })
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
    Ok(Json(projector.info(state.log.head())))
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
    let modules = state.registry.modules()?;
    Ok(Json(Modules { modules }))
}
