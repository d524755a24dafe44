//! `POST` and `DELETE /cluster/nodes/{node}/drain`: drains a node of a cluster (rendezvous
//! hashing gives it no projector, so their owners hand them over to the others, with their
//! snapshots), or undoes it. The drain is kept until undone, across the node's restarts; the
//! node stays up and answers through forwarding. `prism cluster drain NODE` waits until the
//! node owns nothing.

use super::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use prism_client::wire::{Drain, ErrorBody};

/// `POST /cluster/nodes/{node}/drain`.
#[utoipa::path(
    post,
    path = "/cluster/nodes/{node}/drain",
    tag = "operations",
    params(("node" = String, Path, description = "The node's id.")),
    responses(
        (status = 200, description = "Drained: its projectors move to the other nodes.", body = Drain),
        (status = 400, description = "Not a node id.", body = ErrorBody),
        (status = 404, description = "This Prism runs alone.", body = ErrorBody),
        (status = 503, description = "The cluster's servers did not take it.", body = ErrorBody),
    ),
)]
pub async fn drain(
    State(state): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<Drain>, ApiError> {
    set(state, node, true).await
}

/// `DELETE /cluster/nodes/{node}/drain`.
#[utoipa::path(
    delete,
    path = "/cluster/nodes/{node}/drain",
    tag = "operations",
    params(("node" = String, Path, description = "The node's id.")),
    responses(
        (status = 200, description = "Undrained: it takes its share of projectors again.", body = Drain),
        (status = 400, description = "Not a node id.", body = ErrorBody),
        (status = 404, description = "This Prism runs alone.", body = ErrorBody),
        (status = 503, description = "The cluster's servers did not take it.", body = ErrorBody),
    ),
)]
pub async fn undrain(
    State(state): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<Drain>, ApiError> {
    set(state, node, false).await
}

async fn set(state: AppState, node: String, drained: bool) -> Result<Json<Drain>, ApiError> {
    let Some(routes) = &state.cluster else {
        return Err(ApiError::not_found(
            "this Prism runs alone (start it with --node-id to join a cluster)",
        ));
    };
    if !crate::config::valid_node_id(&node) {
        return Err(ApiError::bad_request(format!(
            "node id {node:?}: use 1 to 64 letters, digits, '-' or '_'"
        )));
    }
    let drains = routes.cluster.drains();
    let done = match drained {
        true => drains.drain(&node).await,
        false => drains.undrain(&node).await,
    };
    done.map_err(|e| ApiError::unavailable(format!("{e:#}"), 1))?;
    Ok(Json(Drain { node, drained }))
}
