//! Dead letters: events skipped under the `skip` policy, listed, retried with the current code
//! (by the runner, between two batches) or discarded.

use super::Registry;
use crate::projector::control::{Control, Fence};
use crate::projector::error::{LifecycleError, RetryError, StorageError};
use crate::projector::shared::SharedError;
use crate::store::DeadLetter;

impl Registry {
    /// Lists the dead letters of a projector's serving generation after position `after`.
    pub fn dead_letters(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, LifecycleError> {
        Ok(self
            .handle(name)?
            .serving()
            .store
            .dead_letters(after, limit)?)
    }

    /// Applies the dead-lettered event at `position` again with the projector's current code
    /// (e.g. after deploying a fix). Blocking: the runner handles it between two batches. On
    /// success the event's writes commit and the dead letter is removed; on failure the error is
    /// returned and recorded on the dead letter.
    pub fn retry_dead_letter(&self, name: &str, position: u64) -> Result<(), RetryError> {
        let generation = self
            .get(name)
            .ok_or_else(|| RetryError::NoProjector(name.to_string()))?
            .serving();
        if generation.store.dead_letter(position)?.is_none() {
            return Err(RetryError::NoDeadLetter(position));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let fence = self.fence(name);
        if !fence() {
            return Err(RetryError::NotOwner);
        }
        generation
            .runner()
            .send(Control::Retry {
                position,
                fence,
                reply,
            })
            .map_err(|_| RetryError::NotRunning)?;
        // The runner answers between two batches; if it stops first, the request is dropped
        // with its mailbox and the answer never comes.
        futures::executor::block_on(answer).unwrap_or(Err(RetryError::NotRunning))?;
        self.count_dead_letter_action(name)?;
        Ok(())
    }

    /// Records that a dead-letter action changed `name`'s views (see
    /// [`Deployment::dead_letter_actions`](crate::projector::Deployment)).
    fn count_dead_letter_action(&self, name: &str) -> Result<(), StorageError> {
        let _changing = self.inner.changing.lock();
        match self.get(name) {
            Some(projector) => self.save(&projector, |d| d.dead_letter_actions += 1),
            None => Ok(()),
        }
    }

    /// Discards the dead letter at `position`; false when there was none.
    pub fn discard_dead_letter(&self, name: &str, position: u64) -> Result<bool, LifecycleError> {
        let generation = self.handle(name)?.serving();
        if !self.fence(name)() {
            return Err(StorageError::Shared(SharedError::NotOwner(name.to_string())).into());
        }
        let discarded = generation.store.discard_dead_letter(position)?;
        if discarded {
            self.count_dead_letter_action(name)?;
        }
        Ok(discarded)
    }

    /// Whether this node may still act as `name`'s owner: always on one node; in a cluster,
    /// while it holds the projector's lease (asked again right before a retry commits).
    fn fence(&self, name: &str) -> Fence {
        match &self.inner.shared {
            None => Box::new(|| true),
            Some(shared) => {
                let (shared, name) = (shared.clone(), name.to_string());
                Box::new(move || shared.holds(&name))
            }
        }
    }
}
