//! What a node of a cluster says of it (`GET /cluster`): the live nodes, which node owns each
//! projector under which lease, and the log.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A cluster as one of its nodes sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// The id of the node that answered.
    pub node: String,
    /// The live nodes, by id.
    pub nodes: Vec<ClusterNode>,
    /// Every deployed projector, by name, with its owner.
    pub projectors: Vec<ProjectorOwner>,
    /// The log's head as the answering node sees it.
    pub head: u64,
    /// Why the answering node cannot reach the log now (its connection lost), if it cannot.
    #[schema(required = true)]
    pub log_error: Option<String>,
    /// The views the answering node restored from snapshots when it adopted the projectors it
    /// owns (the log after each one's checkpoint was replayed, not the whole log).
    #[serde(default)]
    pub restored: Vec<RestoredView>,
    /// The nodes an operator drained (`prism cluster drain`): they own no projector.
    #[serde(default)]
    pub drained: Vec<String>,
}

/// A view a node restored from a snapshot when it came to own its projector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestoredView {
    pub projector: String,
    /// The view's generation.
    pub generation: u64,
    /// The snapshot's checkpoint: the node replayed the log after it.
    pub checkpoint: u64,
    /// The checkpoint of the view the node kept from an earlier ownership (0: none).
    pub local: u64,
    /// Milliseconds fetching, unpacking and checking the snapshot.
    pub took_ms: u64,
}

/// A live node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterNode {
    pub id: String,
    /// Where the other nodes reach it.
    pub url: String,
}

/// Which node owns a projector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectorOwner {
    pub name: String,
    /// The node holding its lease (none while it moves between nodes).
    pub owner: Option<String>,
    /// The lease's revision (forwarded requests carry it).
    pub lease_revision: Option<u64>,
    /// Milliseconds since the lease was last written (renewed or taken).
    pub lease_age_ms: Option<u64>,
}

/// What `POST /projectors/{name}/snapshot` uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshots {
    /// The snapshots uploaded now: one per view that changed since its last one.
    pub uploaded: Vec<Snapshot>,
}

/// One snapshot of a view, in the cluster's object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// Its name in the object store `PRISM_SNAPSHOTS`.
    pub object: String,
    pub projector: String,
    /// The deployment's incarnation.
    pub incarnation: u64,
    /// The view's generation.
    pub generation: u64,
    /// The position of the last event the copied view reflects.
    pub checkpoint: u64,
    /// Entries in the view.
    pub entries: u64,
    /// Its packed size, in bytes.
    pub bytes: u64,
    /// Milliseconds copying the view (one read transaction) and packing it.
    pub copy_ms: u64,
    /// Milliseconds uploading it.
    pub upload_ms: u64,
}

/// A node drained or undrained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Drain {
    pub node: String,
    /// Whether it is drained now.
    pub drained: bool,
}
