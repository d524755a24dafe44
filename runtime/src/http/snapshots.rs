//! `POST /projectors/{name}/snapshot`: the owner of a projector, in a cluster, uploads a snapshot
//! of each of its views that changed since the last one, now (before a planned move, or to
//! bound the log a failover would replay). Forwarded to the owner like every projector route.

use super::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use prism_client::wire::{ErrorBody, Snapshot, Snapshots};

/// `POST /projectors/{name}/snapshot`.
#[utoipa::path(
    post,
    path = "/projectors/{name}/snapshot",
    tag = "operations",
    params(("name" = String, Path, description = "The projector's name.")),
    responses(
        (status = 200, description = "The snapshots uploaded now (none for a view unchanged \
            since its last one).", body = Snapshots),
        (status = 404, description = "No such projector, or this Prism runs alone.", body = ErrorBody),
        (status = 421, description = "This node no longer owns the projector.", body = ErrorBody),
        (status = 503, description = "The cluster's servers did not take it; `Retry-After` says \
            when to try again.", body = ErrorBody),
    ),
)]
pub async fn snapshot(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Snapshots>, ApiError> {
    let Some(routes) = &state.cluster else {
        return Err(ApiError::not_found(
            "snapshots are a cluster's: this Prism runs alone (its views are in its data dir)",
        ));
    };
    if state.registry.get(&name).is_none() {
        return Err(ApiError::not_found(format!("no projector named {name:?}")));
    }
    let cluster = &routes.cluster;
    if cluster.owns(&name).is_none() {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this node no longer owns projector {name:?}"),
        ));
    }
    let uploaded = cluster
        .snapshot(&state.registry, &name)
        .await
        .map_err(|e| ApiError::unavailable(format!("{e:#}"), 1))?;
    Ok(Json(Snapshots {
        uploaded: uploaded
            .into_iter()
            .map(|u| Snapshot {
                object: u.label.object_name(),
                projector: u.label.projector,
                incarnation: u.label.incarnation,
                generation: u.label.generation,
                checkpoint: u.label.checkpoint,
                entries: u.label.entries,
                bytes: u.bytes,
                copy_ms: u.copy_ms,
                upload_ms: u.upload_ms,
            })
            .collect(),
    }))
}
