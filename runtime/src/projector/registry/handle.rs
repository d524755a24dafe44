//! A deployed projector: its catalog record and its generations.

use super::generation::{Generation, Role};
use crate::projector::State;
use crate::projector::catalog::Deployment;
use parking_lot::RwLock;
use std::sync::Arc;

/// A deployed projector: its serving generation and, during a rebuild, a pending one.
pub struct ProjectorHandle {
    /// The deployment name.
    pub name: String,
    /// Tells this deployment from an earlier one of the same name (see the catalog).
    pub incarnation: u64,
    slots: RwLock<Slots>,
}

struct Slots {
    /// What the catalog says of it (kept equal to the catalog's copy).
    deployment: Deployment,
    serving: Arc<Generation>,
    pending: Option<Arc<Generation>>,
    /// The last reload that failed, kept for the status.
    reload_error: Option<String>,
}

impl ProjectorHandle {
    pub(super) fn new(
        name: &str,
        deployment: Deployment,
        serving: Arc<Generation>,
        pending: Option<Arc<Generation>>,
    ) -> ProjectorHandle {
        ProjectorHandle {
            name: name.to_string(),
            incarnation: deployment.incarnation,
            slots: RwLock::new(Slots {
                deployment,
                serving,
                pending,
                reload_error: None,
            }),
        }
    }

    /// The generation answering queries. A query holds it for its whole answer, so every answer
    /// comes from exactly one generation.
    pub fn serving(&self) -> Arc<Generation> {
        self.slots.read().serving.clone()
    }

    /// The generation rebuilding in the background, if any.
    pub fn pending(&self) -> Option<Arc<Generation>> {
        self.slots.read().pending.clone()
    }

    /// The generation in `role`, if any.
    pub fn generation(&self, role: Role) -> Option<Arc<Generation>> {
        match role {
            Role::Serving => Some(self.serving()),
            Role::Pending => self.pending(),
        }
    }

    /// What the catalog says of the projector.
    pub fn deployment(&self) -> Deployment {
        self.slots.read().deployment.clone()
    }

    /// Whether the projector is paused.
    pub fn paused(&self) -> bool {
        self.slots.read().deployment.paused
    }

    /// The last reload that failed (the previous module kept serving).
    pub fn reload_error(&self) -> Option<String> {
        self.slots.read().reload_error.clone()
    }

    /// The projector's overall state: paused, rebuilding, or its serving generation's state.
    pub fn state(&self) -> State {
        let serving = self.serving().status().state;
        self.state_with(serving)
    }

    /// The overall state when the serving generation is in `serving` (one status snapshot
    /// serves a whole answer, so its state and its error never disagree).
    pub fn state_with(&self, serving: State) -> State {
        let slots = self.slots.read();
        if slots.deployment.paused {
            State::Paused
        } else if slots.pending.is_some() && serving != State::Faulted {
            State::Rebuilding
        } else {
            serving
        }
    }

    pub(super) fn set_deployment(&self, deployment: Deployment) {
        self.slots.write().deployment = deployment;
    }

    pub(super) fn set_reload_error(&self, error: Option<String>) {
        self.slots.write().reload_error = error;
    }

    /// Puts `generation` in `role`; returns the one it replaces.
    pub(super) fn replace(
        &self,
        role: Role,
        generation: Arc<Generation>,
    ) -> Option<Arc<Generation>> {
        let mut slots = self.slots.write();
        match role {
            Role::Serving => Some(std::mem::replace(&mut slots.serving, generation)),
            Role::Pending => slots.pending.replace(generation),
        }
    }

    /// Takes the pending generation out of its slot.
    pub(super) fn take_pending(&self) -> Option<Arc<Generation>> {
        self.slots.write().pending.take()
    }

    /// Makes the pending generation the serving one; returns the old serving one.
    pub(super) fn promote(&self) -> Option<Arc<Generation>> {
        let mut slots = self.slots.write();
        let pending = slots.pending.take()?;
        Some(std::mem::replace(&mut slots.serving, pending))
    }

    /// Stops every generation (each makes its view durable).
    pub(super) fn stop(&self) {
        if let Some(pending) = self.pending() {
            pending.stop();
        }
        self.serving().stop();
    }
}
