//! The API of a node in a cluster: any node answers any request. A request about a projector
//! (`/projectors/{name}` and everything under it) is answered here when this node owns the
//! projector, and otherwise forwarded to its owner ([`crate::cluster::forward`]); `GET
//! /projectors` gathers every node's projectors; `GET /cluster` says who owns what.
//!
//! - The owner answers a forwarded request only under the lease revision the sender saw; a
//!   node that no longer holds it answers 421, and the sender asks again who owns the
//!   projector and retries, for up to [`FORWARD_WITHIN`]. A forwarded request is never
//!   forwarded again (the loop guard), and must carry the cluster token (401 otherwise).
//! - A read its owner does not answer within a lease TTL (the node stopped, or cut off) is
//!   asked again of whoever owns the projector by then.
//! - While no node can answer (the lease is free or lapsed, its holder gone, a new owner still
//!   catching up with the log), the answer is 503 with `Retry-After`: never a wrong view.
//! - A deploy of a projector no node has goes to the node rendezvous hashing picks, which
//!   takes its lease at once.

use super::{ApiError, AppState};
use crate::cluster::forward::{CLUSTER_TOKEN, FORWARDED_BY, LEASE_REVISION};
use crate::cluster::node::Owner;
use crate::cluster::{Cluster, Forwarder};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use prism_client::wire::{ClusterNode, ClusterStatus, ProjectorList, ProjectorOwner, RestoredView};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node that answered a request about a projector as its owner.
pub const OWNER: HeaderName = HeaderName::from_static("prism-owner");
/// The revision of the lease it answered under.
pub const LEASE: HeaderName = HeaderName::from_static("prism-owner-lease");

/// How long a request keeps looking for a projector's owner (421s, a node gone) before it is
/// answered 503.
pub const FORWARD_WITHIN: Duration = Duration::from_secs(5);

/// What the HTTP layer needs of the cluster.
pub struct ClusterRoutes {
    pub cluster: Arc<Cluster>,
    pub forwarder: Forwarder,
}

/// The projector a path is about (`/projectors/{name}[/...]`), when the name is one a
/// projector can have (any other is answered here: 400 or 404, as on one node).
fn projector_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/projectors/")?;
    let name = rest.split('/').next()?;
    let usable = (1..=crate::projector::MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    usable.then_some(name)
}

/// Whether `path` reads a projector's view (answered only once a new owner caught up).
fn reads_view(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/').skip(2);
    matches!(parts.next(), Some("view" | "changes"))
}

fn moving(name: &str) -> Response {
    ApiError::unavailable(
        format!("projector {name:?} is moving between nodes; try again shortly"),
        1,
    )
    .into_response()
}

/// 421: the sender asks again who owns the projector.
fn not_owner(cluster: &Cluster, name: &str) -> Response {
    let node = &cluster.options().node_id;
    let why = match cluster.owns(name) {
        Some(held) => format!("owns projector {name:?} under lease {held}, not that one"),
        None => format!("holds no valid lease on projector {name:?}"),
    };
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        format!("node {node} {why}"),
    )
    .into_response()
}

/// Marks the requests that came over the peer listener (TLS between nodes).
#[derive(Debug, Clone, Copy)]
pub struct PeerListener;

/// Routes `request` (its token already checked) to where it is answered.
pub(super) async fn route(state: &AppState, request: Request, next: Next) -> Response {
    let Some(routes) = &state.cluster else {
        return next.run(request).await;
    };
    let forwarded = request.headers().contains_key(FORWARDED_BY);
    if forwarded && !token_ok(routes, &request) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a forwarded request needs this cluster's token",
        )
        .into_response();
    }
    let path = request.uri().path().to_string();
    let Some(name) = projector_of(&path).map(str::to_string) else {
        if path == "/projectors" && request.method() == Method::GET && !forwarded {
            return gather(routes, next, request).await;
        }
        return next.run(request).await;
    };
    let cluster = &routes.cluster;
    // Forwarded requests come over the peer listener when the nodes talk TLS.
    if forwarded
        && cluster.options().tls.is_some()
        && request.extensions().get::<PeerListener>().is_none()
    {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this cluster's nodes forward requests to each other over their TLS peer listener",
        )
        .into_response();
    }
    if forwarded {
        let revision = request
            .headers()
            .get(LEASE_REVISION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let deploy = request.method() == Method::PUT;
        let owned = match (cluster.owns(&name), revision) {
            (Some(held), Some(seen)) => held == seen || (deploy && seen == 0),
            // A deploy creating the projector, sent here by rendezvous: take its lease.
            (None, Some(0)) if deploy => matches!(cluster.claim(&name).await, Ok(Some(_))),
            _ => false,
        };
        if !owned {
            return not_owner(cluster, &name);
        }
        return local(state, cluster, &name, &path, request, next).await;
    }
    if cluster.owns(&name).is_some() {
        return local(state, cluster, &name, &path, request, next).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, state.limits.max_module_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than any route accepts, or was cut off",
            )
            .into_response();
        }
    };
    let deploying = parts.method == Method::PUT;
    // A read the owner does not answer within a lease TTL (a node stopped, or cut off) is
    // asked again of whoever owns the projector by then; other requests wait for their answer
    // (a deploy may compile for a while; sent twice it could apply twice).
    let ttl = cluster.options().lease_ttl;
    let reads = matches!(parts.method, Method::GET | Method::HEAD);
    let patience = reads.then_some(ttl);
    let deadline = Instant::now() + FORWARD_WITHIN + if reads { ttl } else { Duration::ZERO };
    loop {
        let owner = match cluster.owner(&name, deploying).await {
            Ok(owner) => owner,
            Err(e) => {
                tracing::warn!(projector = %name, error = %e, "finding a projector's owner");
                Owner::Moving
            }
        };
        match owner {
            Owner::Here(_) | Owner::Nobody => {
                let request = Request::from_parts(parts, axum::body::Body::from(body));
                return local(state, cluster, &name, &path, request, next).await;
            }
            Owner::Node { id, url, revision } => {
                let sent = forward(routes, &url, revision, &parts, body.clone());
                let answered = match patience {
                    Some(patience) => tokio::time::timeout(patience, sent)
                        .await
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {patience:?}"))),
                    None => sent.await,
                };
                match answered {
                    Ok(response) if response.status() != StatusCode::MISDIRECTED_REQUEST => {
                        return response;
                    }
                    Ok(_) => tracing::debug!(projector = %name, node = %id, "the owner moved"),
                    // A request that changes things may have been applied before the connection
                    // broke: sent again only when it never reached the node.
                    Err(e) if !reads && !never_sent(&e) => {
                        tracing::warn!(projector = %name, node = %id, error = %e, "forwarding failed after sending");
                        return ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "node {id}, which owns projector {name:?}, did not answer; the \
                                 request may or may not have been applied"
                            ),
                        )
                        .into_response();
                    }
                    // Retried: the node may be gone (its lease not yet expired).
                    Err(e) => {
                        tracing::debug!(projector = %name, node = %id, error = %e, "forwarding failed")
                    }
                }
            }
            Owner::Moving => {}
        }
        if Instant::now() >= deadline {
            tracing::info!(projector = %name, "no node answered for the projector in time; answered 503");
            return moving(&name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a failed forward never reached its node (it could not connect).
fn never_sent(e: &anyhow::Error) -> bool {
    e.downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(|e| e.is_connect())
}

async fn forward(
    routes: &ClusterRoutes,
    url: &str,
    revision: u64,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> anyhow::Result<Response> {
    routes
        .forwarder
        .send(
            url,
            revision,
            &parts.method,
            &parts.uri,
            &parts.headers,
            body,
        )
        .await
}

/// Answers here, as the owner: a view read waits (503) while the projector, adopted from
/// another node, catches up with the log. The answer names this node and the lease it
/// answered under ([`OWNER`], [`LEASE`]), when it holds one.
async fn local(
    state: &AppState,
    cluster: &Cluster,
    name: &str,
    path: &str,
    request: Request,
    next: Next,
) -> Response {
    let lease = cluster.owns(name);
    // Its lease taken, its code still loading here.
    if lease.is_some() && state.registry.get(name).is_none() && cluster.deployed(name) {
        let starting = ApiError::unavailable(
            format!("projector {name:?} is starting on this node, its new owner"),
            1,
        );
        return owned_by(cluster, lease, starting.into_response());
    }
    if reads_view(path) && cluster.catching_up(name, &state.registry) {
        use prism_client::wire::State;
        let status = state.registry.get(name).map(|p| p.serving().status());
        let why = match status.as_ref().map(|s| s.state) {
            // Its view would be older than the one its previous owner served: not served.
            Some(State::Paused) => "is paused before it caught up with the log: resume it",
            Some(State::Faulted) => {
                "faulted before it caught up with the log (see its status): fix it and resume it"
            }
            _ => "is catching up with the log",
        };
        let waiting = ApiError::unavailable(
            format!("projector {name:?} moved to this node and {why}"),
            1,
        );
        return owned_by(cluster, lease, waiting.into_response());
    }
    let forwarded = request.headers().contains_key(FORWARDED_BY);
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    let response = next.run(request).await;
    let lapsed = lease.is_some() && cluster.owns(name) != lease;
    // A read answered while the lease lapsed (the node stalled, or stopped, in between) is not
    // an owner's answer any more: another node may own the projector by now. And a refusal
    // (no such projector, not running) because the projector left this node meanwhile is
    // not the owner's either. The sender asks the new owner. (A change was fenced where it
    // committed: its answer stands.)
    let refused = matches!(
        response.status(),
        StatusCode::NOT_FOUND | StatusCode::CONFLICT
    );
    let left = lapsed || (state.registry.get(name).is_none() && cluster.deployed(name));
    if lease.is_some() && ((reads && lapsed) || (refused && left)) {
        return match forwarded {
            true => not_owner(cluster, name),
            false => moving(name),
        };
    }
    owned_by(cluster, lease, response)
}

/// `response` named as this node's, the owner's under `lease` (when it holds one).
fn owned_by(cluster: &Cluster, lease: Option<u64>, mut response: Response) -> Response {
    if let Some(revision) = lease
        && let Ok(node) = HeaderValue::from_str(&cluster.options().node_id)
    {
        response.headers_mut().insert(OWNER, node);
        response
            .headers_mut()
            .insert(LEASE, HeaderValue::from(revision));
    }
    response
}

fn token_ok(routes: &ClusterRoutes, request: &Request) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let presented = request
        .headers()
        .get(CLUSTER_TOKEN)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    Sha256::digest(presented)
        .ct_eq(&Sha256::digest(routes.cluster.options().token.as_bytes()))
        .into()
}

/// `GET /projectors` on a cluster: this node's projectors and every live node's.
async fn gather(routes: &ClusterRoutes, next: Next, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let mine = next
        .run(Request::from_parts(
            parts.clone(),
            axum::body::Body::empty(),
        ))
        .await;
    if !mine.status().is_success() {
        return mine;
    }
    let Ok(body) = axum::body::to_bytes(mine.into_body(), usize::MAX).await else {
        return ApiError::unavailable("reading this node's projectors failed", 1).into_response();
    };
    let Ok(mut list) = serde_json::from_slice::<ProjectorList>(&body) else {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, super::error::INTERNAL)
            .into_response();
    };
    let me = routes.cluster.options().node_id.clone();
    for projector in &mut list.projectors {
        projector.owner = Some(me.clone());
    }
    let peers = routes
        .cluster
        .live()
        .into_iter()
        .filter(|(id, _)| *id != me);
    let asked = peers.map(|(id, node)| {
        let parts = &parts;
        async move {
            // A stopped node accepts the connection and never answers: the list goes on without
            // it after a lease TTL.
            let asked = routes.forwarder.send(
                &node.url,
                0,
                &parts.method,
                &parts.uri,
                &parts.headers,
                Bytes::new(),
            );
            let answer = tokio::time::timeout(routes.cluster.options().lease_ttl, asked)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within a lease TTL")));
            let answer = match answer {
                Ok(answer) if answer.status().is_success() => answer,
                Ok(answer) => anyhow::bail!("node {id} answered {}", answer.status()),
                Err(e) => return Err(e.context(format!("asking node {id}"))),
            };
            let body = axum::body::to_bytes(answer.into_body(), usize::MAX).await?;
            let mut theirs = serde_json::from_slice::<ProjectorList>(&body)?;
            for projector in &mut theirs.projectors {
                projector.owner = Some(id.clone());
            }
            Ok(theirs)
        }
    });
    for answer in futures::future::join_all(asked).await {
        match answer {
            Ok(theirs) => list.projectors.extend(theirs.projectors),
            Err(e) => {
                tracing::warn!(error = %e, "a node's projectors are missing from the list");
            }
        }
    }
    list.projectors.sort_by(|a, b| a.name.cmp(&b.name));
    list.projectors.dedup_by(|a, b| a.name == b.name);
    Json(list).into_response()
}

/// `GET /cluster`: the live nodes, each projector's owner and lease, the log's head.
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "operations",
    responses(
        (status = 200, description = "The cluster as this node sees it.", body = ClusterStatus),
        (status = 404, description = "This Prism runs alone.", body = prism_client::wire::ErrorBody),
        (status = 503, description = "The cluster's servers did not answer.", body = prism_client::wire::ErrorBody),
    ),
)]
pub(super) async fn status(State(state): State<AppState>) -> Result<Json<ClusterStatus>, ApiError> {
    let Some(routes) = &state.cluster else {
        return Err(ApiError::not_found(
            "this Prism runs alone (start it with --node-id to join a cluster)",
        ));
    };
    let cluster = &routes.cluster;
    let unavailable = |e: anyhow::Error| ApiError::unavailable(format!("{e:#}"), 1);
    let deployments = cluster.catalog().deployments().await.map_err(unavailable)?;
    let leases = cluster.leases().all().await.map_err(unavailable)?;
    let projectors = deployments
        .keys()
        .map(|name| {
            let lease = leases.get(name);
            ProjectorOwner {
                name: name.clone(),
                owner: lease.map(|l| l.holder.clone()),
                lease_revision: lease.map(|l| l.revision),
                lease_age_ms: lease.map(|l| l.age.as_millis() as u64),
            }
        })
        .collect();
    Ok(Json(ClusterStatus {
        node: cluster.options().node_id.clone(),
        nodes: cluster
            .live()
            .into_iter()
            .map(|(id, node)| ClusterNode { id, url: node.url })
            .collect(),
        projectors,
        head: state.log.head(),
        log_error: state.log.trouble(),
        restored: cluster
            .restores()
            .into_iter()
            .flat_map(|(projector, views)| {
                views.into_iter().map(move |v| RestoredView {
                    projector: projector.clone(),
                    generation: v.generation,
                    checkpoint: v.checkpoint,
                    local: v.local,
                    took_ms: v.took_ms,
                })
            })
            .collect(),
        drained: cluster.drains().drained().into_iter().collect(),
    }))
}
