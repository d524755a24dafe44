//! What Prism says of its projectors: their states, faults and progress (`GET /projectors`)
//! and its readiness (`GET /ready`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a projector (or one of its generations) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Instantiating its module.
    Starting,
    /// Applying events, behind the log's head.
    CatchingUp,
    /// Caught up with the log's head, waiting for appends.
    Live,
    /// Paused by an operator; applies nothing until resumed.
    Paused,
    /// A new generation is rebuilding the view in the background; the current one serves.
    Rebuilding,
    /// Stopped by an error (see the status's `error`). Its view keeps serving.
    Faulted,
    /// Stopped (Prism is shutting down, or the generation was replaced).
    Stopped,
}

/// What went wrong with a faulted projector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Fault {
    /// The error or trap message.
    pub message: String,
    /// The event that failed, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

impl Fault {
    /// A fault with only a message.
    pub fn message(message: impl Into<String>) -> Fault {
        Fault {
            message: message.into(),
            position: None,
            stream: None,
            event_type: None,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let (Some(position), Some(stream), Some(event_type)) =
            (self.position, &self.stream, &self.event_type)
        {
            write!(f, " (event {position}, {event_type} in {stream})")?;
        }
        Ok(())
    }
}

/// What a projector does with an event its module fails on (a guest error, a trap, a sandbox
/// limit hit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Fault the projector, its checkpoint just before the event (the default).
    #[default]
    Stop,
    /// Record the event as a dead letter and go on.
    Skip,
}

/// Which events a projector receives. Prism filters before calling into Wasm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

/// A projector's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Projector {
    pub name: String,
    pub state: State,
    /// The sha256 of the module running now.
    pub module: String,
    /// The view schema version of the code running now.
    pub schema_version: u32,
    /// The serving generation.
    pub generation: u64,
    /// The configuration string passed to `init`.
    pub config: String,
    /// The name the module gives itself (null until it has described itself).
    #[schema(required = true)]
    pub code_name: Option<String>,
    /// The events it receives (null until it has described itself).
    #[schema(required = true)]
    pub subscription: Option<Subscription>,
    /// Position of the last event its committed view reflects: what queries see, and what
    /// `Prism-Checkpoint` says.
    pub checkpoint: u64,
    /// Position of the last event the projector applied. Past the checkpoint while it
    /// catches up: its writes wait in the catch-up cache and commit together.
    #[serde(default)]
    pub applied: u64,
    /// The log's head.
    pub head: u64,
    /// Events between the checkpoint and the head.
    pub lag: u64,
    /// Recent speed through the log.
    pub events_per_sec: f64,
    /// Events delivered to the module since this run started.
    pub events_applied: u64,
    pub on_error: ErrorPolicy,
    /// Events skipped as dead letters since this run started.
    pub dead_letters_this_run: u64,
    /// Why it is faulted.
    #[schema(required = true)]
    pub error: Option<Fault>,
    /// Why the last hot reload failed, if it did.
    #[schema(required = true)]
    pub reload_error: Option<String>,
    /// A rebuild in progress (a new generation catching up in the background).
    #[schema(required = true)]
    pub rebuild: Option<RebuildProgress>,
    /// In a cluster, the node that owns the projector (in `GET /projectors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A rebuild's progress: percent of the log, speed, and time left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebuildProgress {
    pub generation: u64,
    pub module: String,
    pub schema_version: u32,
    pub state: State,
    /// Position of the last event its committed view reflects.
    pub checkpoint: u64,
    /// Position of the last event it applied (see [`Projector::applied`]).
    #[serde(default)]
    pub applied: u64,
    /// Percent of the log applied (one decimal).
    pub percent: f64,
    pub events_per_sec: f64,
    /// Seconds left at the current speed (null when not moving).
    #[schema(required = true)]
    pub eta_secs: Option<f64>,
    #[schema(required = true)]
    pub error: Option<Fault>,
}

/// Every projector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectorList {
    /// The log's head: the position of its last event.
    pub head: u64,
    /// In name order.
    pub projectors: Vec<Projector>,
}

/// Why a projector makes Prism not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Unready {
    /// It stopped on an error.
    Faulted,
    /// It is behind the log and has not moved for longer than the stall limit.
    Stalled,
}

/// Whether Prism is ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// True when the log can write and no projector is faulted or stalled.
    pub ready: bool,
    /// The log's head.
    pub head: u64,
    /// Why the log cannot write, while it cannot (a full disk, an I/O error); it recovers by
    /// itself once a write succeeds again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_error: Option<String>,
    /// The projectors that make Prism not ready.
    pub unready: Vec<UnreadyProjector>,
}

/// `GET /ready`'s answer: the details for a reader, only `ready` for anyone else (when a read
/// token is set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ReadinessAnswer {
    Full(Readiness),
    Status(ReadyOnly),
}

/// Readiness without details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadyOnly {
    /// True when no projector is faulted or stalled.
    pub ready: bool,
}

/// A projector that makes Prism not ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnreadyProjector {
    pub name: String,
    pub reason: Unready,
    pub checkpoint: u64,
    /// Events between its checkpoint and the log's head.
    pub lag: u64,
    /// Since its checkpoint last moved.
    pub seconds_without_progress: u64,
    /// Why it is faulted.
    #[schema(required = true)]
    pub error: Option<Fault>,
}

/// `GET /health`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}
