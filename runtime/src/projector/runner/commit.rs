//! How a runner commits: a batch's writes at once, or what the catch-up cache holds, always with
//! the checkpoint they bring the view to, in one transaction; then the status and the change
//! feed learn of it.

use super::{Runner, Running};
use crate::projector::Fault;
use crate::store::{DeadLetter, Overlay, Write};
use std::time::Instant;

/// What a commit wrote, for the change feed.
enum Written {
    Overlay(Overlay),
    Sorted(Vec<Write>),
}

impl Runner {
    /// Commits a successful batch's `overlay` at `last`, with whatever the cache holds (the
    /// batch's writes win); the first batch of new code records it as proven on the view.
    pub(super) fn commit(
        &self,
        running: &mut Running,
        overlay: Overlay,
        last: u64,
    ) -> Result<(), Fault> {
        let durable = running.last_durable.elapsed() >= self.durable_every;
        let cache = running.cache.as_mut().expect("the cache is back");
        if !cache.is_empty() {
            cache.absorb(overlay, last);
            return self.flush(running, last, durable, None, true);
        }
        let started = Instant::now();
        let committed = if running.unrecorded {
            let record = running.code.record.to_json();
            self.store.commit_proving(&overlay, last, durable, &record)
        } else {
            self.store.commit(&overlay, last, durable, None)
        };
        committed.map_err(|e| Fault::message(e.to_string()))?;
        running.unrecorded = false;
        self.committed(running, last, durable, started, Written::Overlay(overlay));
        Ok(())
    }

    /// Records the running code as proven on the view at the checkpoint it has (durably, with
    /// nothing else), when the view holds no held writes; otherwise the next commit does.
    pub(super) fn record_proven(&self, running: &mut Running) {
        let cache = running.cache.as_ref().expect("the cache is back");
        if !cache.is_empty() {
            return;
        }
        let record = running.code.record.to_json();
        let recorded = self.store.checkpoint().and_then(|checkpoint| {
            self.store
                .commit_proving(&Default::default(), checkpoint, true, &record)
        });
        match recorded {
            Ok(()) => running.unrecorded = false,
            Err(e) => tracing::warn!(error = %e, "recording new code on the view"),
        }
    }

    /// Commits what the cache holds, at the position it brings the view to (nothing when it
    /// holds nothing).
    pub(super) fn commit_held(&self, running: &mut Running) -> Result<(), Fault> {
        let cache = running.cache.as_ref().expect("the cache is back");
        if cache.is_empty() {
            return Ok(());
        }
        let position = cache.position();
        let durable = running.last_durable.elapsed() >= self.durable_every;
        self.flush(running, position, durable, None, false)
    }

    /// Moves the checkpoint to `checkpoint` durably, past a poison event (with its dead letter
    /// under `skip`), committing what the cache holds with it.
    pub(super) fn commit_marking(
        &self,
        running: &mut Running,
        checkpoint: u64,
        letter: Option<&DeadLetter>,
    ) -> Result<(), Fault> {
        let cache = running.cache.as_ref().expect("the cache is back");
        if !cache.is_empty() {
            return self.flush(running, checkpoint, true, letter, false);
        }
        let started = Instant::now();
        self.store
            .commit(&Overlay::new(), checkpoint, true, letter)
            .map_err(|e| Fault::message(e.to_string()))?;
        self.committed(
            running,
            checkpoint,
            true,
            started,
            Written::Overlay(Overlay::new()),
        );
        Ok(())
    }

    /// Commits every held write, sorted, at `position`; on failure they stay held.
    fn flush(
        &self,
        running: &mut Running,
        position: u64,
        durable: bool,
        letter: Option<&DeadLetter>,
        may_prove: bool,
    ) -> Result<(), Fault> {
        let started = Instant::now();
        let proving = (may_prove && running.unrecorded).then(|| running.code.record.to_json());
        let cache = running.cache.as_mut().expect("the cache is back");
        let held_at = cache.position();
        let writes = cache.drain_sorted();
        let keys = writes.len();
        if let Err(e) =
            self.store
                .commit_sorted(&writes, position, durable, letter, proving.as_deref())
        {
            cache.absorb(writes, held_at);
            return Err(Fault::message(e.to_string()));
        }
        if proving.is_some() {
            running.unrecorded = false;
        }
        tracing::debug!(
            position,
            keys,
            seconds = started.elapsed().as_secs_f64(),
            "committed the held writes"
        );
        self.committed(running, position, durable, started, Written::Sorted(writes));
        Ok(())
    }

    /// After a commit at `position`: the metrics, the change feed and the status.
    fn committed(
        &self,
        running: &mut Running,
        position: u64,
        durable: bool,
        started: Instant,
        written: Written,
    ) {
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        if durable {
            running.last_durable = Instant::now();
        }
        if let Some(feed) = &self.changes {
            match written {
                Written::Overlay(overlay) => feed.publish(position, overlay),
                Written::Sorted(writes) => feed.publish_sorted(position, writes),
            }
        }
        self.set(|s| {
            s.checkpoint = position;
            // A checkpoint moved past a poison event passes what was applied.
            s.applied = s.applied.max(position);
        });
    }
}
