//! The deployments several Prism nodes share, as the registry sees them: where a node's
//! registry records each change of a deployment before its own catalog, and fetches the modules
//! other nodes stored. `None` in [`RegistryOptions`](super::RegistryOptions) on a single node;
//! the cluster's implementation (`cluster::node`) writes the shared catalog only while the node
//! holds the projector's lease.

use super::catalog::Deployment;
use crate::store::snapshot::Label;
use std::path::Path;

/// Why the shared catalog refused or failed a change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedError {
    /// This node does not hold the projector's lease (any longer): another node owns it.
    #[error("this node no longer owns projector {0:?}")]
    NotOwner(String),
    /// Another node changed the deployment first.
    #[error("projector {0:?} was changed by another node meanwhile")]
    Changed(String),
    /// The servers failed or did not answer.
    #[error("the shared catalog is unavailable: {0}")]
    Unavailable(String),
    /// What was fetched is not what was stored (a snapshot that fails its checks).
    #[error("a shared snapshot is damaged: {0}")]
    Damaged(String),
}

/// The deployments every node shares.
pub trait SharedDeployments: Send + Sync + std::fmt::Debug {
    /// Records `deployment` as `name`'s (a new projector when it has none).
    fn put(&self, name: &str, deployment: &Deployment) -> Result<(), SharedError>;
    /// Deletes `name`'s deployment.
    fn remove(&self, name: &str) -> Result<(), SharedError>;
    /// Stores a module component under its SHA-256 `hash`.
    fn store_module(&self, hash: &str, component: &[u8]) -> Result<(), SharedError>;
    /// The module component stored as `hash` (checked to hash to it), if any.
    fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, SharedError>;
    /// Whether this node may act as `name`'s owner now (it holds a lease it renewed within the
    /// TTL minus the margin): asked right before a dead-letter action commits.
    fn holds(&self, name: &str) -> bool;
    /// Every snapshot of `name`'s views stored, oldest first (see `cluster::snapshots`).
    fn snapshots(&self, name: &str) -> Result<Vec<Label>, SharedError>;
    /// Fetches the snapshot `label` and unpacks it into the view file `into` (not open).
    fn fetch_snapshot(&self, label: &Label, into: &Path) -> Result<(), SharedError>;
}
