//! Running projectors: each follows the log from its checkpoint, calls into its Wasm module a
//! batch at a time, and commits the view writes with the new checkpoint.
//!
//! - [`runner`]: one projector's loop, on its own thread (off the async executor).
//! - [`Registry`]: the deployed projectors; deploys, redeploys and restarts them.
//! - [`catalog`]: what is deployed, persisted in `catalog.redb`, and the module files.

pub mod catalog;
mod registry;
mod runner;

pub use registry::{DeployError, DeployMode, Deployed, ProjectorHandle, Registry, RegistryError};

use crate::engine::Instance;
use crate::log::EventLog;
use crate::store::ViewStore;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// Which events a projector receives. Prism filters before calling into Wasm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subscription {
    /// Event types wanted; empty means all.
    pub event_types: Vec<String>,
    /// Stream name prefixes wanted; empty means all.
    pub stream_prefixes: Vec<String>,
}

impl Subscription {
    /// Whether an event of `event_type` in `stream` is delivered.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
            && (self.stream_prefixes.is_empty()
                || self
                    .stream_prefixes
                    .iter()
                    .any(|p| stream.starts_with(p.as_str())))
    }
}

/// Where a projector is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Instantiating its module.
    Starting,
    /// Applying events, behind the log's head.
    CatchingUp,
    /// Caught up with the log's head, waiting for appends.
    Live,
    /// Stopped by an error; see [`Status::error`]. Its view keeps serving.
    Faulted,
    /// Stopped (Prism is shutting down, or the projector is being replaced).
    Stopped,
}

/// What went wrong with a faulted projector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// The error or trap message.
    pub message: String,
    /// The event that failed, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

/// A projector's live status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub state: State,
    /// Position of the last event the view reflects.
    pub checkpoint: u64,
    /// Events delivered to the module since this run started.
    pub events_applied: u64,
    /// Why the projector is faulted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Fault>,
}

/// Runs `instance` over `log` into `store` on the calling thread, from the store's checkpoint
/// up to the log's head, exactly as a deployed projector would; returns the final status
/// (`live` when it caught up, `faulted` otherwise). For replays, local runs and benchmarks.
pub fn catch_up(name: &str, instance: Instance, log: &EventLog, store: Arc<ViewStore>) -> Status {
    let runner = runner::Runner {
        name: name.to_string(),
        until_head: true,
        module_hash: String::new(),
        log: log.clone(),
        store,
        status: Arc::new(Mutex::new(Status {
            state: State::Starting,
            checkpoint: 0,
            events_applied: 0,
            error: None,
        })),
        stop: tokio::sync::watch::channel(false).1,
    };
    runner.run(instance)
}
