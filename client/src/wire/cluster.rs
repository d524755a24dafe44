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
