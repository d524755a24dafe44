//! Running projectors: each follows the log from its checkpoint, calls into its Wasm module a
//! batch at a time, and commits the view writes with the new checkpoint.
//!
//! - [`runner`]: one projector's loop, on its own thread (off the async executor).
//! - [`Registry`]: the deployed projectors; deploys, redeploys and restarts them.
//! - [`catalog`]: what is deployed, persisted in `catalog.redb`, and the module files.

pub mod catalog;
mod changes;
mod metrics;
mod registry;
mod runner;
mod verify;

pub use changes::{ChangeBatch, ChangeFeed, Since};
pub use metrics::{ProjectorLabels, ProjectorMetrics, RunnerMetrics};
pub use registry::{
    DeployError, DeployMode, DeployOptions, Deployed, Generation, LifecycleError, ModuleSource,
    ProjectorHandle, Registry, RegistryError, RetryError,
};
pub use verify::{Difference, Verification, ViewDigest};

use crate::engine::{Engine, Instance, Module};
use crate::log::EventLog;
use crate::store::ViewStore;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// Which events a projector receives. Prism filters before calling into Wasm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// Where a projector (or one of its generations) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// Stopped by an error; see [`Status::error`]. Its view keeps serving.
    Faulted,
    /// Stopped (Prism is shutting down, or the generation was replaced).
    Stopped,
}

/// What went wrong with a faulted projector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// A generation's live status, kept by its runner.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    /// The module running now.
    pub module: String,
    /// Position of the last event the view reflects.
    pub checkpoint: u64,
    /// Events delivered to the module since this run started.
    pub events_applied: u64,
    /// Events skipped as dead letters since this run started.
    pub dead_letters: u64,
    /// Recent progress through the log.
    pub rate: RateMeter,
    /// When the checkpoint last moved (or the run started).
    pub last_progress: std::time::Instant,
    /// Why the generation is faulted.
    pub error: Option<Fault>,
}

impl Status {
    /// A status for a generation about to start.
    pub fn starting(module: &str, checkpoint: u64) -> Status {
        Status {
            state: State::Starting,
            module: module.to_string(),
            checkpoint,
            events_applied: 0,
            dead_letters: 0,
            last_progress: std::time::Instant::now(),
            rate: RateMeter::default(),
            error: None,
        }
    }
}

/// Why a projector makes Prism not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Unready {
    /// It stopped on an error.
    Faulted,
    /// It is behind the log and has not moved for longer than the stall limit.
    Stalled,
}

/// Whether a projector in `state`, `lag` events behind, whose checkpoint last moved `idle` ago,
/// makes Prism not ready. A paused projector does not: an operator paused it.
pub fn readiness(
    state: State,
    lag: u64,
    idle: std::time::Duration,
    stall_after: std::time::Duration,
) -> Option<Unready> {
    match state {
        State::Faulted => Some(Unready::Faulted),
        State::Paused | State::Stopped => None,
        _ if lag > 0 && idle > stall_after => Some(Unready::Stalled),
        _ => None,
    }
}

/// What a projector does with an event its module fails on (a guest error, a trap, a sandbox
/// limit hit).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Fault the projector, its checkpoint just before the event (the default).
    #[default]
    Stop,
    /// Record the event as a dead letter and go on.
    Skip,
}

/// Log positions passed per second over the last few seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateMeter {
    samples: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl RateMeter {
    /// How far back the rate looks.
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(5);
    /// At most one sample per this interval, so the meter stays small.
    const RESOLUTION: std::time::Duration = std::time::Duration::from_millis(100);

    /// Records that the checkpoint reached `position` now.
    pub fn record(&mut self, position: u64) {
        let now = std::time::Instant::now();
        if let Some((last, _)) = self.samples.back()
            && now.duration_since(*last) < Self::RESOLUTION
            && self.samples.len() > 1
        {
            self.samples.pop_back();
        }
        self.samples.push_back((now, position));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Positions per second over the window (0 when idle).
    pub fn per_second(&self) -> f64 {
        let now = std::time::Instant::now();
        let recent: Vec<_> = self
            .samples
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= Self::WINDOW)
            .collect();
        match (recent.first(), recent.last()) {
            (Some((t0, p0)), Some((_, p1))) if p1 > p0 => {
                let seconds = now.duration_since(*t0).as_secs_f64().max(0.001);
                (p1 - p0) as f64 / seconds
            }
            _ => 0.0,
        }
    }
}

/// Runs `instance` of `module` over `log` into `store` on the calling thread, from the store's
/// checkpoint up to the log's head, exactly as a deployed projector would (with the `stop`
/// error policy); returns the final status (`live` when it caught up, `faulted` otherwise). For
/// replays, local runs and benchmarks.
pub fn catch_up(
    engine: &Engine,
    module: &Module,
    instance: Instance,
    log: &EventLog,
    store: Arc<ViewStore>,
) -> Status {
    replay_to(engine, module, instance, log, store, None)
}

/// Like [`catch_up`], but stops at position `end` when given.
pub fn replay_to(
    engine: &Engine,
    module: &Module,
    instance: Instance,
    log: &EventLog,
    store: Arc<ViewStore>,
    end: Option<u64>,
) -> Status {
    let checkpoint = store.checkpoint().unwrap_or_default();
    let name = instance.descriptor().name.clone();
    let runner = runner::Runner {
        name,
        engine: engine.clone(),
        policy: ErrorPolicy::Stop,
        stop_at: end.map_or(runner::StopAt::Head, runner::StopAt::Position),
        log: log.clone(),
        status: Arc::new(Mutex::new(Status::starting(instance.module(), checkpoint))),
        checkpoints: tokio::sync::watch::channel(checkpoint).0,
        store,
        commands: tokio::sync::watch::channel(runner::Command::Run).1,
        swap: Arc::default(),
        retries: Arc::new(Mutex::new(Some(Vec::new()))),
        hook: None,
        metrics: RunnerMetrics::default(),
        changes: None,
    };
    let code = runner::Code {
        module: module.clone(),
        config: String::new(),
    };
    runner.run(code, instance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_projector_behind_and_not_moving_is_stalled() {
        let limit = Duration::from_secs(30);
        let (long, short) = (Duration::from_secs(31), Duration::from_secs(1));
        assert_eq!(
            readiness(State::CatchingUp, 10, long, limit),
            Some(Unready::Stalled)
        );
        assert_eq!(
            readiness(State::Rebuilding, 10, long, limit),
            Some(Unready::Stalled)
        );
        assert_eq!(readiness(State::CatchingUp, 10, short, limit), None);
        // Caught up and idle is healthy, however long.
        assert_eq!(readiness(State::Live, 0, long, limit), None);
        // Paused on purpose is not a stall; a fault always counts.
        assert_eq!(readiness(State::Paused, 10, long, limit), None);
        assert_eq!(
            readiness(State::Faulted, 0, short, limit),
            Some(Unready::Faulted)
        );
    }
}
