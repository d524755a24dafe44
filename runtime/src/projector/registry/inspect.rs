//! Looking into a projector: a from-scratch verification of its view, and the lines its
//! modules logged.

use super::Registry;
use crate::engine::OutputLine;
use crate::projector::Verification;
use crate::projector::error::LifecycleError;
use crate::projector::verify::compare;
use crate::store::ViewStore;
use std::sync::Arc;
use std::time::Instant;

impl Registry {
    /// Replays the projector's serving code (module, config and error policy) from scratch into
    /// a scratch view, up to the checkpoint of a snapshot of the live view, and compares the
    /// two. Blocking and as costly as a rebuild: call it off the async executor.
    pub fn verify(&self, name: &str) -> Result<Verification, LifecycleError> {
        let projector = self.handle(name)?;
        let generation = projector.serving();
        let mut record = projector.deployment().serving;
        record.id = generation.id;
        let live = generation.store.snapshot()?;
        let checkpoint = live.checkpoint();
        let (code, instance) = self.instantiate(name, &record)?;
        let scratch = self.inner.dir.scratch("verify-")?;
        let started = Instant::now();
        let replayed = Arc::new(ViewStore::open(&scratch.path().join("view.redb"))?);
        let status = crate::projector::replay(
            &self.inner.engine,
            &code.module,
            instance,
            &self.inner.log,
            replayed.clone(),
            crate::projector::Replay {
                end: Some(checkpoint),
                policy: record.on_error,
                cache: self.inner.cache.clone(),
            },
        );
        match status.error {
            // The module failed on an event: its verdict, not the server's.
            Some(fault) if fault.position.is_some() => return Err(LifecycleError::Replay(fault)),
            Some(fault) => return Err(LifecycleError::ReplayFailed(fault.message)),
            None => {}
        }
        let replay = replayed.snapshot()?;
        let (live_view, replay_view, differences) = compare(&live, &replay)?;
        Ok(Verification {
            projector: name.to_string(),
            module: record.module,
            generation: record.id,
            checkpoint,
            identical: differences.is_empty() && live_view == replay_view,
            live: live_view,
            replay: replay_view,
            differences,
            replay_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// The lines the projector `name`'s modules wrote with `host.log`, after `after` (a `seq`),
    /// at most `limit` of the newest.
    pub fn guest_output(
        &self,
        name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutputLine>, LifecycleError> {
        self.handle(name)?;
        Ok(self
            .inner
            .engine
            .guest_output()
            .of(name)
            .lines(after, limit))
    }
}
