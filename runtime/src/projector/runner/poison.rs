//! A runner's events that fail: the error policy applied to the first failing event of a batch
//! (`stop` faults, `skip` dead-letters it with the checkpoint that passes it), a dead letter
//! applied again on request, and the fault that names a failing event.

use super::{Runner, Running};
use crate::engine::{ApplyError, EventBatch};
use crate::projector::control::Fence;
use crate::projector::error::RetryError;
use crate::projector::{ErrorPolicy, Fault};
use crate::store::{BatchView, DeadLetter};

impl Runner {
    /// Applies the error policy to the event `error` names, the first of its batch: `stop`
    /// faults the runner, `skip` dead-letters the event in the checkpoint's transaction.
    /// Returns the new checkpoint, or the fault that stops the runner.
    pub(super) fn handle_poison(
        &mut self,
        running: &mut Running,
        error: ApplyError,
    ) -> Result<u64, Fault> {
        let position = error.position();
        let failure = self.describe_failure(error);
        let (checkpoint, letter) = match running.code.record.on_error {
            ErrorPolicy::Stop => (position - 1, None),
            ErrorPolicy::Skip => {
                let letter = DeadLetter {
                    position,
                    stream: failure.stream.clone().unwrap_or_default(),
                    event_type: failure.event_type.clone().unwrap_or_default(),
                    error: failure.message.clone(),
                    module: running.code.module.hash.clone(),
                };
                (position, Some(letter))
            }
        };
        // Durably, also when stopping: the fault is where a restart resumes. The held writes
        // (the events before this one) commit with it.
        self.commit_marking(running, checkpoint, letter.as_ref())?;
        match letter {
            None => Err(failure),
            Some(_) => {
                tracing::warn!(position, error = %failure, "skipped a failing event (dead letter)");
                self.metrics.dead_letters.inc();
                self.set(|s| s.dead_letters += 1);
                Ok(checkpoint)
            }
        }
    }

    /// Applies the dead-lettered event at `position` again with the current code, on the current
    /// view. On success its writes commit and the dead letter goes, in one transaction; on
    /// failure the dead letter records the new error and the instance is replaced.
    pub(super) fn retry(
        &mut self,
        running: &mut Running,
        position: u64,
        fence: &Fence,
    ) -> Result<(), RetryError> {
        let letter = self
            .store
            .dead_letter(position)?
            .ok_or(RetryError::NoDeadLetter(position))?;
        let mut batch = EventBatch::default();
        self.log
            .visit_from(position, 1, |p, event| {
                batch.push(p, event);
                false
            })
            .map_err(|e| RetryError::Internal(e.to_string()))?;
        let view = BatchView::new(self.store.snapshot()?);
        match running.instance.apply(&batch, view) {
            (view, Ok(())) => {
                if !fence() {
                    return Err(RetryError::NotOwner);
                }
                self.store.commit_retry(&view.into_overlay(), position)?;
                // Its writes belong to an earlier position than the feed's: subscribers re-read.
                if let Some(feed) = &self.changes {
                    feed.invalidate();
                }
                tracing::info!(position, "dead letter retried and applied");
                Ok(())
            }
            (_, Err(error)) => {
                running.instance = self
                    .instantiate(&running.code)
                    .map_err(|e| RetryError::Internal(e.to_string()))?;
                let failure = self.describe_failure(error).to_string();
                let letter = DeadLetter {
                    error: failure.clone(),
                    module: running.code.module.hash.clone(),
                    ..letter
                };
                self.store.put_dead_letter(&letter)?;
                Err(RetryError::Failed(failure))
            }
        }
    }

    /// A fault naming the failing event.
    pub(super) fn describe_failure(&self, error: ApplyError) -> Fault {
        let position = error.position();
        let event = self
            .log
            .read_from(position, 1)
            .ok()
            .and_then(|mut e| e.pop());
        Fault {
            message: error.to_string(),
            position: Some(position),
            stream: event.as_ref().map(|e| e.stream.clone()),
            event_type: event.map(|e| e.event_type),
        }
    }
}
