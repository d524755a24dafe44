//! `/projectors`: deploy a module, list projectors and their status.

use super::{ApiError, AppState};
use crate::engine::ModuleError;
use crate::projector::{DeployError, ProjectorHandle};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
pub struct DeployParams {
    #[serde(default)]
    config: String,
}

/// `PUT /projectors/{name}?config=`: deploys the `.wasm` in the body.
pub async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<DeployParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(params) = params?;
    let body = body?;
    let registry = state.registry.clone();
    let deployed =
        tokio::task::spawn_blocking(move || registry.deploy(&name, &body, &params.config))
            .await
            .map_err(ApiError::internal)?;
    match deployed {
        Ok(deployed) => {
            let status = match deployed.mode {
                crate::projector::DeployMode::Created => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            Ok((status, Json(json!(deployed))))
        }
        Err(e @ DeployError::InvalidName(_)) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ DeployError::Module(ModuleError::NotWasm)) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            e.to_string(),
        )),
        Err(e @ (DeployError::Module(_) | DeployError::Instance(_))) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
        Err(e @ DeployError::Storage(_)) => Err(ApiError::internal(e)),
    }
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

fn info(projector: &ProjectorHandle, head: u64) -> Value {
    let status = projector.status();
    let descriptor = projector.descriptor.as_ref();
    json!({
        "name": projector.name,
        "module": projector.deployment.module,
        "schema_version": projector.deployment.schema_version,
        "code_name": descriptor.map(|d| d.name.clone()),
        "subscription": descriptor.map(|d| d.subscription.clone()),
        "state": status.state,
        "checkpoint": status.checkpoint,
        "head": head,
        "lag": head.saturating_sub(status.checkpoint),
        "events_applied": status.events_applied,
        "error": status.error,
    })
}
