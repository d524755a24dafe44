//! Why an operation on projectors failed: one enum per operation, each variant keeping its
//! cause as its `source`.

use super::{Fault, MAX_NAME_LEN};
use crate::engine::{InstanceError, ModuleError};
use crate::store::StoreError;

/// Storage under the control plane failed: the catalog, a file in the data dir, or a view.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Reading or writing the catalog failed.
    #[error("the catalog failed")]
    Catalog(#[from] redb::Error),
    /// A file in the data dir could not be read or written.
    #[error("a file in the data dir failed")]
    Files(#[from] std::io::Error),
    /// A view file failed.
    #[error("a view file failed")]
    View(#[from] StoreError),
    /// The deployments the cluster's nodes share refused or failed the change.
    #[error(transparent)]
    Shared(#[from] super::shared::SharedError),
}

/// Why a deploy was refused. Nothing of a refused deploy is kept.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The projector name is not usable.
    #[error("invalid projector name {0:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'")]
    InvalidName(String),
    /// A redeploy by hash named a module Prism does not have.
    #[error("no stored module {0}")]
    UnknownModule(String),
    /// The module is not a valid projector.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The module failed to start (instantiation, `describe` or `init`).
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// Storing the module, the catalog entry or the view failed.
    #[error("storing the deployment failed")]
    Storage(#[from] StorageError),
    /// No thread could be started for the projector's runner (the machine is out of threads
    /// or memory); nothing changed, and the same deploy may succeed later.
    #[error("cannot start a projector thread now")]
    Spawn(#[source] std::io::Error),
}

impl From<redb::Error> for DeployError {
    fn from(e: redb::Error) -> Self {
        DeployError::Storage(e.into())
    }
}

impl From<std::io::Error> for DeployError {
    fn from(e: std::io::Error) -> Self {
        DeployError::Storage(e.into())
    }
}

impl From<StoreError> for DeployError {
    fn from(e: StoreError) -> Self {
        DeployError::Storage(e.into())
    }
}

/// Why a lifecycle action (pause, resume, reset, delete, verify, listing) failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No projector has that name.
    #[error("no projector named {0:?}")]
    NotFound(String),
    /// Restarting or redeploying the module failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// Storage failed.
    #[error("storage failed")]
    Storage(#[from] StorageError),
    /// A verification's replay faulted (the module fails on the log where the live view did
    /// not: a limit lowered since, or code that is not deterministic).
    #[error("the replay faulted: {0}")]
    Replay(Fault),
    /// A verification's replay stopped on a failure of Prism's (reading the log or writing the
    /// scratch view), not of the module.
    #[error("the replay failed inside Prism: {0}")]
    ReplayFailed(String),
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        LifecycleError::Storage(e.into())
    }
}

impl From<redb::Error> for LifecycleError {
    fn from(e: redb::Error) -> Self {
        LifecycleError::Storage(e.into())
    }
}

impl From<std::io::Error> for LifecycleError {
    fn from(e: std::io::Error) -> Self {
        LifecycleError::Storage(e.into())
    }
}

/// Why a dead-letter retry did not apply.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No projector has that name.
    #[error("no projector named {0:?}")]
    NoProjector(String),
    /// The projector has no dead letter at that position.
    #[error("no dead letter at position {0}")]
    NoDeadLetter(u64),
    /// The projector is not running (faulted or stopping): resume it first.
    #[error("the projector is not running; resume it first")]
    NotRunning,
    /// This node no longer owns the projector (its lease lapsed): nothing was committed.
    #[error("this node no longer owns the projector; ask again")]
    NotOwner,
    /// The event failed again; the dead letter stays, with this error.
    #[error("the event failed again: {0}")]
    Failed(String),
    /// Storage failed.
    #[error("storage failed")]
    Storage(#[from] StorageError),
    /// The log could not be read or the module not restarted.
    #[error("the retry failed inside Prism: {0}")]
    Internal(String),
}

impl From<StoreError> for RetryError {
    fn from(e: StoreError) -> Self {
        RetryError::Storage(e.into())
    }
}

/// Why the registry could not open.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The catalog could not be opened.
    #[error(
        "cannot open the catalog {path} (it records which projectors run which code): restore it \
         from a backup, or move it aside and deploy the projectors again (their views are rebuilt \
         from the log)"
    )]
    Catalog {
        path: String,
        #[source]
        source: redb::Error,
    },
    /// A projector's view file could not be opened.
    #[error(transparent)]
    View(#[from] StoreError),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Spawn(#[source] std::io::Error),
    /// A projector's deployment could not be recorded (or, in a cluster, fetched).
    #[error("recording the deployment of projector {0:?} failed")]
    Recording(String, #[source] Box<StorageError>),
}

/// `error` and each of its sources, joined with ": " (for logs).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // `#[error(transparent)]` and wrappers that repeat their cause add nothing.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
