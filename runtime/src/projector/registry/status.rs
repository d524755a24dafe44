//! What Prism shows of its projectors: each one's status (`GET /projectors`) and whether they
//! let Prism be ready (`GET /ready`).

use super::{Generation, ProjectorHandle, Registry};
use crate::projector::{Projector, Readiness, RebuildProgress, UnreadyProjector, readiness};

impl ProjectorHandle {
    /// The projector's status, with the log's head at `head`.
    pub fn info(&self, head: u64) -> Projector {
        let serving = self.serving();
        let status = serving.status();
        let record = status.record;
        Projector {
            name: self.name.clone(),
            state: self.state_with(status.state),
            module: record.module,
            schema_version: record.schema_version,
            generation: serving.id,
            config: record.config,
            code_name: status.descriptor.as_ref().map(|d| d.name.clone()),
            subscription: status.descriptor.map(|d| d.subscription),
            checkpoint: status.checkpoint,
            applied: status.applied,
            head,
            lag: head.saturating_sub(status.checkpoint),
            events_per_sec: status.rate.per_second().round(),
            events_applied: status.events_applied,
            on_error: record.on_error,
            dead_letters_this_run: status.dead_letters,
            error: status.error,
            reload_error: self.reload_error(),
            rebuild: self.pending().map(|p| rebuild(&p, head)),
            owner: None,
        }
    }
}

/// A rebuild's progress.
fn rebuild(pending: &Generation, head: u64) -> RebuildProgress {
    let status = pending.status();
    let rate = status.rate.per_second();
    let left = head.saturating_sub(status.applied);
    RebuildProgress {
        generation: pending.id,
        module: status.record.module,
        schema_version: status.record.schema_version,
        state: status.state,
        checkpoint: status.checkpoint,
        applied: status.applied,
        percent: if head == 0 {
            100.0
        } else {
            (status.applied as f64 * 1000.0 / head as f64).round() / 10.0
        },
        events_per_sec: rate.round(),
        eta_secs: (rate > 0.0).then(|| (left as f64 / rate * 10.0).round() / 10.0),
        error: status.error,
    }
}

impl Registry {
    /// Every projector's status, in name order.
    pub fn infos(&self) -> Vec<Projector> {
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
            let state = projector.state_with(status.state);
            if let Some(reason) = readiness(state, lag, idle, stall_after) {
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
        let log_error = self.inner.log.trouble();
        Readiness {
            ready: unready.is_empty() && log_error.is_none(),
            head,
            log_error,
            unready,
        }
    }
}
