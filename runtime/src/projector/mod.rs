//! Running projectors: each follows the log from its checkpoint, calls into its Wasm module a
//! batch at a time, and commits the view writes with the new checkpoint.
//!
//! - [`runner`]: one generation's loop, on its own thread (off the async executor). It owns its
//!   instance, view and checkpoint; the registry talks to it through [`control`] only (one
//!   mailbox of [`Control`] messages in; one status watch and [`RunnerEvent`]s out).
//! - [`Registry`]: the deployed projectors: lifecycle, generations, dead letters, verification
//!   and status, one module each under `registry/`.
//! - [`catalog`]: what is deployed, persisted in `catalog.redb`, and the module files.
//! - [`error`]: why an operation failed, one enum per operation.
//! - [`shared`]: the deployments several nodes share, when Prism runs as a cluster.

pub mod catalog;
mod changes;
pub mod control;
pub mod error;
mod metrics;
mod registry;
mod runner;
pub mod shared;
mod verify;

pub use catalog::{Deployment, GenerationRecord};
pub use changes::{ChangeBatch, ChangeFeed, Since};
pub use control::{Control, RunnerEvent, Spawner};
pub use error::{DeployError, LifecycleError, RegistryError, RetryError, StorageError};
pub use metrics::{ProjectorLabels, ProjectorMetrics, RunnerMetrics};
/// What the API says of projectors: the same types the wire carries.
pub use prism_client::wire::{
    DeployMode, Deployed, Difference, ErrorPolicy, Fault, Projector, Readiness, RebuildProgress,
    State, Unready, UnreadyProjector, Verification, ViewDigest,
};
pub use registry::{
    DeployOptions, Generation, ModuleSource, ProjectorHandle, Registry, RegistryOptions, Restored,
    Role,
};

use crate::engine::{Descriptor, Engine, Instance, Module};
use crate::log::EventLog;
use crate::store::ViewStore;
use std::sync::Arc;

/// Longest projector name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A generation's live status, published by its runner.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    /// The code running now: module, config, schema version and error policy (a continue-mode
    /// reload on trial shows here; a failed one goes back).
    pub record: GenerationRecord,
    /// What the running module said about itself (`None` when it failed to start).
    pub descriptor: Option<Descriptor>,
    /// Position of the last event the committed view reflects (what queries see).
    pub checkpoint: u64,
    /// Position of the last event the runner applied: past the checkpoint while the catch-up
    /// cache holds writes.
    pub applied: u64,
    /// Events delivered to the module since this run started.
    pub events_applied: u64,
    /// Events skipped as dead letters since this run started.
    pub dead_letters: u64,
    /// Recent progress through the log.
    pub rate: RateMeter,
    /// When the runner last applied a batch (or the run started): stall detection follows
    /// applied progress, so a long flush interval never reads as a stall.
    pub last_progress: std::time::Instant,
    /// Why the generation is faulted.
    pub error: Option<Fault>,
}

impl Status {
    /// A status for a generation about to start `record` at `checkpoint`.
    pub fn starting(record: GenerationRecord, checkpoint: u64) -> Status {
        Status {
            state: State::Starting,
            record,
            descriptor: None,
            checkpoint,
            applied: checkpoint,
            events_applied: 0,
            dead_letters: 0,
            last_progress: std::time::Instant::now(),
            rate: RateMeter::default(),
            error: None,
        }
    }

    /// The hash of the module running now.
    pub fn module(&self) -> &str {
        &self.record.module
    }
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
    replay(engine, module, instance, log, store, Replay::default())
}

/// How [`replay`] runs.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Where to stop (`None`: at the log's head).
    pub end: Option<u64>,
    /// What a failing event does.
    pub policy: ErrorPolicy,
    /// The catch-up cache's budget.
    pub cache: Arc<crate::store::CacheBudget>,
}

impl Default for Replay {
    fn default() -> Self {
        Replay {
            end: None,
            policy: ErrorPolicy::Stop,
            cache: Arc::new(crate::store::CacheBudget::default()),
        }
    }
}

/// Like [`catch_up`], as `how` says.
pub fn replay(
    engine: &Engine,
    module: &Module,
    instance: Instance,
    log: &EventLog,
    store: Arc<ViewStore>,
    how: Replay,
) -> Status {
    let Replay { end, policy, cache } = how;
    let checkpoint = store.checkpoint().unwrap_or_default();
    let record = GenerationRecord {
        id: 0,
        module: module.hash.clone(),
        config: instance.config().to_string(),
        schema_version: instance.descriptor().schema_version,
        on_error: policy,
    };
    let (status, _) = tokio::sync::watch::channel(Status::starting(record.clone(), checkpoint));
    // Nobody else holds the mailbox: the runner stops where `stop_at` says.
    let (_control, mailbox) = tokio::sync::mpsc::unbounded_channel();
    let runner = runner::Runner {
        name: instance.descriptor().name.clone(),
        engine: engine.clone(),
        stop_at: end.map_or(runner::StopAt::Head, runner::StopAt::Position),
        log: log.clone(),
        store,
        status,
        mailbox,
        reports: None,
        durable_every: crate::store::DURABLE_INTERVAL,
        metrics: RunnerMetrics::default(),
        changes: None,
        cache,
    };
    let code = control::Code {
        module: module.clone(),
        record,
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
