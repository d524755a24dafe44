//! What Prism shows of its projectors: each one's status (`GET /projectors`) and whether they
//! let Prism be ready (`GET /ready`).

use super::{Generation, ProjectorHandle, Registry};
use crate::engine::Subscription;
use crate::projector::{ErrorPolicy, Fault, State, Unready, readiness};
use serde::Serialize;
use utoipa::ToSchema;

/// A projector's status.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Projector)]
pub struct ProjectorInfo {
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
    /// Position of the last event its view reflects.
    pub checkpoint: u64,
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
}

/// A rebuild's progress: percent of the log, speed, and time left.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildProgress {
    pub generation: u64,
    pub module: String,
    pub schema_version: u32,
    pub state: State,
    pub checkpoint: u64,
    /// Percent of the log applied (one decimal).
    pub percent: f64,
    pub events_per_sec: f64,
    /// Seconds left at the current speed (null when not moving).
    #[schema(required = true)]
    pub eta_secs: Option<f64>,
    #[schema(required = true)]
    pub error: Option<Fault>,
}

/// Whether Prism is ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// True when no projector is faulted or stalled.
    pub ready: bool,
    /// The log's head.
    pub head: u64,
    /// The projectors that make Prism not ready.
    pub unready: Vec<UnreadyProjector>,
}

/// A projector that makes Prism not ready.
#[derive(Debug, Serialize, ToSchema)]
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

impl ProjectorHandle {
    /// The projector's status, with the log's head at `head`.
    pub fn info(&self, head: u64) -> ProjectorInfo {
        let serving = self.serving();
        let status = serving.status();
        let record = status.record;
        ProjectorInfo {
            name: self.name.clone(),
            state: self.state(),
            module: record.module,
            schema_version: record.schema_version,
            generation: serving.id,
            config: record.config,
            code_name: status.descriptor.as_ref().map(|d| d.name.clone()),
            subscription: status.descriptor.map(|d| d.subscription),
            checkpoint: status.checkpoint,
            head,
            lag: head.saturating_sub(status.checkpoint),
            events_per_sec: status.rate.per_second().round(),
            events_applied: status.events_applied,
            on_error: record.on_error,
            dead_letters_this_run: status.dead_letters,
            error: status.error,
            reload_error: self.reload_error(),
            rebuild: self.pending().map(|p| rebuild(&p, head)),
        }
    }
}

/// A rebuild's progress.
fn rebuild(pending: &Generation, head: u64) -> RebuildProgress {
    let status = pending.status();
    let rate = status.rate.per_second();
    let left = head.saturating_sub(status.checkpoint);
    RebuildProgress {
        generation: pending.id,
        module: status.record.module,
        schema_version: status.record.schema_version,
        state: status.state,
        checkpoint: status.checkpoint,
        percent: if head == 0 {
            100.0
        } else {
            (status.checkpoint as f64 * 1000.0 / head as f64).round() / 10.0
        },
        events_per_sec: rate.round(),
        eta_secs: (rate > 0.0).then(|| (left as f64 / rate * 10.0).round() / 10.0),
        error: status.error,
    }
}

impl Registry {
    /// Every projector's status, in name order.
    pub fn infos(&self) -> Vec<ProjectorInfo> {
        let head = self.inner.log.head();
        self.list().iter().map(|p| p.info(head)).collect()
    }

    /// Whether every projector is healthy: none faulted, none behind the log without progress
    /// for longer than `stall_after` (paused ones do not count).
    pub fn readiness(&self, stall_after: std::time::Duration) -> Readiness {
        let head = self.inner.log.head();
        let mut unready = Vec::new();
        for projector in self.list() {
            let status = projector.serving().status();
            let lag = head.saturating_sub(status.checkpoint);
            let idle = status.last_progress.elapsed();
            if let Some(reason) = readiness(projector.state(), lag, idle, stall_after) {
                unready.push(UnreadyProjector {
                    name: projector.name.clone(),
                    reason,
                    checkpoint: status.checkpoint,
                    lag,
                    seconds_without_progress: idle.as_secs(),
                    error: status.error,
                });
            }
        }
        Readiness {
            ready: unready.is_empty(),
            head,
            unready,
        }
    }
}
