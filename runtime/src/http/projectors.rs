//! `/projectors`: deploy and redeploy modules, the lifecycle (pause, resume, reset, delete),
//! status, and the stored modules.

use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::engine::Cancel;
use crate::projector::{DeployMode, DeployOptions, LifecycleError, ModuleSource};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use prism_client::wire::{
    DeletedReply, DeployParams, Deployed, ErrorBody, LifecycleReply, Modules, Projector,
    ProjectorList,
};
use utoipa::ToSchema;

/// A deploy module upload: a WebAssembly component, or a core module with its component type.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Documents the body, read as bytes.
struct WasmModule(Vec<u8>);

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
            body = Deployed),
        (status = 200, description = "Redeployed (`continue` or `rebuild`).", body = Deployed),
        (status = 400, description = "A bad name or query, no module, or both a body and \
            `?module=`.", body = ErrorBody),
        (status = 404, description = "No stored module with that hash.", body = ErrorBody),
        (status = 413, description = "The module is larger than the upload limit.", body = ErrorBody),
        (status = 415, description = "The body is not WebAssembly, or not sent as \
            `application/wasm` or `application/octet-stream`.", body = ErrorBody),
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
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    let body = body?;
    let wasm_types = ["application/wasm", "application/octet-stream"];
    if !body.is_empty() && !super::boundary::content_type_is(&headers, &wasm_types) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a module upload must be sent as Content-Type: application/wasm (or \
             application/octet-stream)",
        ));
    }
    let cancel = Cancel::default();
    let options = DeployOptions {
        config: params.config,
        mode: params.mode.map(DeployMode::from),
        on_error: params.on_error,
        cancel: cancel.clone(),
    };
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
    // Dropped with this future when the request times out: the compile is then abandoned.
    let abandon = cancel.on_drop();
    let deployed = super::blocking(move || registry.deploy(&name, source, options)).await;
    abandon.disarm();
    let deployed = deployed??;
    let status = match deployed.mode {
        DeployMode::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(deployed)))
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
            body = Projector),
        (status = 404, description = "No such projector.", body = ErrorBody),
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Projector>, ApiError> {
    let projector = state.projector(&name)?;
    Ok(Json(projector.info(state.log.head())))
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
