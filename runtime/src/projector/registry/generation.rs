//! One generation of a projector — a view file and the runner applying to it — and how the
//! registry starts, restarts and stops them.

use super::Registry;
use crate::projector::catalog::{Deployment, GenerationRecord};
use crate::projector::control::{Code, Control, RunnerHandle, Swap};
use crate::projector::error::DeployError;
use crate::projector::runner::{Runner, StopAt};
use crate::projector::{ChangeFeed, Fault, State, Status};
use crate::store::{StoreError, ViewStore};
use std::sync::Arc;
use tokio::sync::watch;

/// What a new runner finds in its mailbox first: a pause, when the projector is paused.
pub(super) fn first_controls(paused: bool) -> Vec<Control> {
    if paused {
        vec![Control::Pause]
    } else {
        Vec::new()
    }
}

/// Which slot of a projector a generation fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Its view answers queries.
    Serving,
    /// It rebuilds a fresh view in the background, to be promoted when it catches up.
    Pending,
}

/// One generation of a projector: its view, its runner and its change feed.
pub struct Generation {
    /// The generation's number (its record's `id`).
    pub id: u64,
    /// Its view and checkpoint.
    pub store: Arc<ViewStore>,
    /// Its recent view changes, for live subscribers.
    pub changes: Arc<ChangeFeed>,
    /// Which runner applies to it (unique in the process; 0: none).
    pub(super) run: u64,
    runner: RunnerHandle,
}

impl Generation {
    /// A copy of the generation's status.
    pub fn status(&self) -> Status {
        self.runner.status()
    }

    /// A watch of the generation's status: it changes after every commit.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.runner.watch()
    }

    /// Its runner.
    pub(super) fn runner(&self) -> &RunnerHandle {
        &self.runner
    }

    /// Stops the runner, waits for it to make its view durable, and ends its change feed.
    pub(super) fn stop(&self) {
        self.runner.stop();
        self.changes.close();
    }

    /// Stops the runner but keeps the change feed open: a replacement is about to take the
    /// generation's slot, and the feed's subscribers, told when it closes, move over to it.
    pub(super) fn stop_runner(&self) {
        self.runner.stop();
    }
}

/// Why a generation could not start.
pub(super) enum LaunchError {
    /// Its module could not be loaded or started.
    Code(DeployError),
    /// No thread could be started.
    Spawn(std::io::Error),
}

impl From<LaunchError> for DeployError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Code(e) => e,
            LaunchError::Spawn(e) => DeployError::Spawn(e),
        }
    }
}

impl Registry {
    /// Opens generation `id`'s view of `name`; `fresh` first removes any leftover of it.
    pub(super) fn open_view(
        &self,
        name: &str,
        id: u64,
        fresh: bool,
    ) -> Result<Arc<ViewStore>, StoreError> {
        if fresh {
            self.remove_view(name, id);
        }
        Ok(Arc::new(ViewStore::open(&self.inner.dir.view(name, id))?))
    }

    /// Starts a runner thread for `code` (already instantiated) on `store`, with `first` in its
    /// mailbox before it applies anything.
    pub(super) fn spawn(
        &self,
        name: &str,
        code: Code,
        instance: crate::engine::Instance,
        store: Arc<ViewStore>,
        first: Vec<Control>,
    ) -> Result<Arc<Generation>, std::io::Error> {
        let id = code.record.id;
        let checkpoint = store.checkpoint().unwrap_or_default();
        let (status, status_rx) = watch::channel(Status::starting(code.record.clone(), checkpoint));
        let (mailbox, inbox) = tokio::sync::mpsc::unbounded_channel();
        for control in first {
            let _ = mailbox.send(control);
        }
        let changes = Arc::new(ChangeFeed::new(checkpoint));
        let run = self
            .inner
            .runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let runner = Runner {
            name: name.to_string(),
            engine: self.inner.engine.clone(),
            stop_at: StopAt::Never,
            log: self.inner.log.clone(),
            store: store.clone(),
            status,
            mailbox: inbox,
            reports: Some((self.inner.reports.clone(), run)),
            durable_every: self.inner.view_sync_interval,
            cache: self.inner.cache.clone(),
            metrics: self.inner.metrics.runner(name),
            changes: Some(changes.clone()),
        };
        let thread = self
            .inner
            .spawner
            .spawn(format!("prism-{name}-{id}"), move || {
                runner.run(code, instance);
            })?;
        Ok(Arc::new(Generation {
            id,
            store,
            changes,
            run,
            runner: RunnerHandle::new(mailbox, status_rx, thread),
        }))
    }

    /// Loads `record`'s module, instantiates it and starts a runner on `store`, with `first`
    /// in its mailbox.
    pub(super) fn launch(
        &self,
        name: &str,
        record: &GenerationRecord,
        store: Arc<ViewStore>,
        first: Vec<Control>,
    ) -> Result<Arc<Generation>, LaunchError> {
        let (code, instance) = self.instantiate(name, record).map_err(LaunchError::Code)?;
        self.spawn(name, code, instance, store, first)
            .map_err(LaunchError::Spawn)
    }

    /// The code of `record`, with a fresh instance of it.
    pub(super) fn instantiate(
        &self,
        name: &str,
        record: &GenerationRecord,
    ) -> Result<(Code, crate::engine::Instance), DeployError> {
        let (module, _) = self.load(&record.module)?;
        let instance = self
            .inner
            .engine
            .instantiate(&module, name, &record.config)?;
        let code = Code {
            module,
            record: record.clone(),
        };
        Ok((code, instance))
    }

    /// Starts the serving generation of `deployment` on `store`, with the code on trial (if
    /// any) back on trial before the first batch. Returns the generation and, when the trial
    /// could not be resumed, why.
    pub(super) fn launch_serving(
        &self,
        name: &str,
        deployment: &Deployment,
        store: Arc<ViewStore>,
    ) -> Result<(Arc<Generation>, Option<String>), LaunchError> {
        let mut first = first_controls(deployment.paused);
        let mut trial_error = None;
        if let Some(trial) = &deployment.trial {
            match self.instantiate(name, trial) {
                Ok((code, instance)) => first.push(Control::Swap(Box::new(Swap {
                    code,
                    instance,
                    trial: true,
                    taken: None,
                }))),
                Err(e) => trial_error = Some(crate::projector::error::chain(&e)),
            }
        }
        let generation = self.launch(name, &deployment.serving, store, first)?;
        Ok((generation, trial_error))
    }

    /// A generation that could not start: its view serves, its status says why.
    pub(super) fn failed(
        &self,
        record: &GenerationRecord,
        store: Arc<ViewStore>,
        message: String,
    ) -> Result<Arc<Generation>, StoreError> {
        let checkpoint = store.checkpoint()?;
        let mut status = Status::starting(record.clone(), checkpoint);
        status.state = State::Faulted;
        status.error = Some(Fault::message(message));
        Ok(Arc::new(Generation {
            id: record.id,
            store,
            changes: Arc::new(ChangeFeed::new(checkpoint)),
            run: 0,
            runner: RunnerHandle::idle(status),
        }))
    }

    /// Restarts `projector`'s generation in `role` (stopped or faulted) from its checkpoint
    /// with a fresh instance; does nothing when it is running.
    pub(super) fn restart(
        &self,
        projector: &super::ProjectorHandle,
        role: Role,
    ) -> Result<(), DeployError> {
        let Some(old) = projector.generation(role) else {
            return Ok(());
        };
        if old.runner().running() {
            return Ok(());
        }
        old.stop_runner();
        // A view whose write failed (a full disk) is opened again first.
        if let Err(e) = old.store.reopen_if_failed() {
            tracing::warn!(projector = %projector.name, error = %e, "reopening a failed view file failed");
        }
        let deployment = projector.deployment();
        let name = &projector.name;
        let restarted = match role {
            Role::Serving => {
                let (generation, trial_error) =
                    self.launch_serving(name, &deployment, old.store.clone())?;
                if let Some(error) = trial_error {
                    self.drop_trial(projector, error);
                }
                generation
            }
            Role::Pending => {
                let Some(record) = &deployment.pending else {
                    return Ok(());
                };
                let first = first_controls(deployment.paused);
                self.launch(name, record, old.store.clone(), first)?
            }
        };
        projector.replace(role, restarted);
        old.changes.close();
        Ok(())
    }

    /// Forgets a trial that cannot run, saying why in the status.
    pub(super) fn drop_trial(&self, projector: &super::ProjectorHandle, error: String) {
        let Some(trial) = projector.deployment().trial else {
            return;
        };
        tracing::warn!(projector = %projector.name, module = %trial.module, %error, "the reload on trial cannot run; keeping the previous module");
        if let Err(e) = self.save(projector, |d| d.trial = None) {
            tracing::error!(projector = %projector.name, error = %e, "recording a dropped trial failed");
        }
        projector.set_reload_error(Some(format!("module {} cannot run: {error}", trial.module)));
    }
}
