//! Deploys and the lifecycle: deploy (validate, compile, store, start), hot reload (continue on
//! trial, or blue/green rebuild), pause, resume, reset, delete.

use super::generation::{LaunchError, Role, first_controls};
use super::{ProjectorHandle, Registry, valid_name};
use crate::engine::{Cancel, CompileSource, Instance, Module};
use crate::projector::catalog::{Deployment, GenerationRecord};
use crate::projector::control::{Code, Control, Swap};
use crate::projector::error::{DeployError, LifecycleError, RegistryError};
use crate::projector::{DeployMode, Deployed, ErrorPolicy};
use std::sync::Arc;
use std::time::Instant;

/// Where a deploy's module comes from.
pub enum ModuleSource {
    /// Uploaded bytes: a component, or a core module with its component type.
    Upload(Vec<u8>),
    /// A module Prism already stores, by hash (a rollback, or a reset).
    Stored(String),
}

/// How to deploy; every field defaults to keeping what the projector has (or the default for
/// a new one).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct DeployOptions {
    /// A new configuration string for `init`.
    pub config: Option<String>,
    /// Forces `continue` or `rebuild` instead of choosing from the view schema version.
    pub mode: Option<DeployMode>,
    /// What to do with an event the module fails on.
    pub on_error: Option<ErrorPolicy>,
    /// Set when the caller gives up (a request timeout): an upload's compile is abandoned.
    #[serde(skip)]
    pub cancel: Cancel,
}

/// A module, started, with everything its deployment record says.
struct Candidate {
    code: Code,
    instance: Instance,
}

impl Registry {
    /// Deploys `source` as the projector `name`. Blocking and CPU-heavy: call it off the async
    /// executor.
    ///
    /// `config` and `on_error` replace what the projector has (`None` keeps it). `mode` forces
    /// how an existing projector is replaced; by default, the same view schema version continues
    /// and a new one rebuilds (see [`DeployMode`]). A module that fails to validate, compile,
    /// instantiate or initialize is refused and nothing changes.
    pub fn deploy(
        &self,
        name: &str,
        source: ModuleSource,
        options: DeployOptions,
    ) -> Result<Deployed, DeployError> {
        if !valid_name(name) {
            return Err(DeployError::InvalidName(name.to_string()));
        }
        let started = Instant::now();
        let (module, compile, upload) = self.module(source, &options.cancel)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1000.0;

        let _changing = self.inner.changing.lock();
        // A stored module may have been collected since it was found.
        if upload.is_none() && !self.inner.catalog.has_module(&module.hash) {
            return Err(DeployError::UnknownModule(module.hash.clone()));
        }
        let existing = self.get(name);
        let latest = existing.as_ref().map(|p| p.deployment().latest().clone());
        let config = options
            .config
            .or_else(|| latest.as_ref().map(|r| r.config.clone()))
            .unwrap_or_default();
        let on_error = options
            .on_error
            .or_else(|| latest.as_ref().map(|r| r.on_error))
            .unwrap_or_default();
        let instance = self.inner.engine.instantiate(&module, name, &config)?;
        // Accepted: only now is the upload stored, and its compiled code kept (a stored
        // module's was kept when it was loaded).
        if let Some(component) = upload {
            if let Some(shared) = &self.inner.shared {
                shared
                    .store_module(&module.hash, &component)
                    .map_err(crate::projector::StorageError::from)?;
            }
            self.inner.catalog.store_module(&module.hash, &component)?;
            self.inner.engine.keep(&module);
        }
        let record = GenerationRecord {
            id: 1,
            module: module.hash.clone(),
            config,
            schema_version: instance.descriptor().schema_version,
            on_error,
        };
        let (hash, schema_version) = (record.module.clone(), record.schema_version);
        let candidate = Candidate {
            code: Code { module, record },
            instance,
        };
        let (mode, generation) = match (existing, latest) {
            (Some(projector), Some(latest)) => {
                let mode = options
                    .mode
                    .unwrap_or(if latest.schema_version == schema_version {
                        DeployMode::Continue
                    } else {
                        DeployMode::Rebuild
                    });
                let generation = match mode {
                    DeployMode::Rebuild => self.rebuild(&projector, candidate)?,
                    DeployMode::Created | DeployMode::Continue => {
                        self.continue_with(&projector, candidate)?
                    }
                };
                projector.set_reload_error(None);
                (mode, generation)
            }
            _ => (DeployMode::Created, self.create(name, candidate)?),
        };
        tracing::info!(projector = name, module = %hash, ?mode, generation, "deployed");
        self.collect_modules();
        Ok(Deployed {
            name: name.to_string(),
            module: hash,
            schema_version,
            mode,
            generation,
            compile,
            compile_ms,
        })
    }

    /// A new projector: its first generation, started, then recorded.
    fn create(&self, name: &str, candidate: Candidate) -> Result<u64, DeployError> {
        let Candidate { code, instance } = candidate;
        let store = self.open_view(name, 1, true)?;
        let deployment = Deployment {
            serving: code.record.clone(),
            trial: None,
            pending: None,
            paused: false,
            incarnation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            dead_letter_actions: 0,
        };
        let serving = match self.spawn(name, code, instance, store, Vec::new()) {
            Ok(serving) => serving,
            Err(e) => {
                self.remove_projector_dir(name);
                return Err(DeployError::Spawn(e));
            }
        };
        if let Err(e) = self.record(name, &deployment) {
            serving.stop();
            self.remove_projector_dir(name);
            return Err(e.into());
        }
        self.insert(Arc::new(ProjectorHandle::new(
            name, deployment, serving, None,
        )));
        Ok(1)
    }

    /// Continue mode: the new code takes over the serving generation between two batches, on
    /// trial (recorded as such in the catalog) until it has applied one — unless only the error
    /// policy changed, which needs no trial. A faulted or stopped generation has nothing healthy
    /// to fall back on: the new code starts on its view directly.
    fn continue_with(
        &self,
        projector: &ProjectorHandle,
        candidate: Candidate,
    ) -> Result<u64, DeployError> {
        let serving = projector.serving();
        let Candidate { mut code, instance } = candidate;
        code.record.id = serving.id;
        let record = code.record.clone();
        if !serving.runner().running() {
            self.start_over(projector, code, instance)?;
            self.cancel_pending(projector);
            return Ok(record.id);
        }
        let before = projector.deployment();
        let proven = &before.serving;
        let trial = proven.module != record.module || proven.config != record.config;
        self.save(projector, |d| {
            if trial {
                d.trial = Some(record.clone());
            } else {
                d.serving = record.clone();
                d.trial = None;
            }
        })?;
        let (taken, took) = tokio::sync::oneshot::channel();
        let swap = Swap {
            code,
            instance,
            trial,
            taken: Some(taken),
        };
        let sent = serving.runner().send(Control::Swap(Box::new(swap)));
        // The runner takes it between two batches; if it stops first (a fault in the meantime),
        // the new code starts on its view directly.
        if sent.is_err() || futures::executor::block_on(took).is_err() {
            self.save(projector, |d| *d = before)?;
            let (code, instance) = self.instantiate(&projector.name, &record)?;
            self.start_over(projector, code, instance)?;
        }
        // A newer deploy supersedes a rebuild in progress.
        self.cancel_pending(projector);
        Ok(record.id)
    }

    /// Replaces a stopped or faulted serving generation's runner with `code`, on the same view.
    fn start_over(
        &self,
        projector: &ProjectorHandle,
        code: Code,
        instance: Instance,
    ) -> Result<(), DeployError> {
        let old = projector.serving();
        old.stop_runner();
        let record = code.record.clone();
        let first = first_controls(projector.paused());
        let started = self
            .spawn(&projector.name, code, instance, old.store.clone(), first)
            .map_err(DeployError::Spawn)?;
        if let Err(e) = self.save(projector, |d| {
            d.serving = record.clone();
            d.trial = None;
        }) {
            started.stop();
            return Err(e.into());
        }
        // Its change subscribers follow the new runner once the old feed closes.
        projector.replace(Role::Serving, started);
        old.changes.close();
        Ok(())
    }

    /// Rebuild mode: a new generation rebuilds a fresh view in the background; it supersedes a
    /// rebuild in progress once it has started.
    fn rebuild(
        &self,
        projector: &ProjectorHandle,
        candidate: Candidate,
    ) -> Result<u64, DeployError> {
        let Candidate { mut code, instance } = candidate;
        let latest = projector.pending().map_or(0, |p| p.id);
        let id = projector.serving().id.max(latest) + 1;
        code.record.id = id;
        let record = code.record.clone();
        let name = &projector.name;
        let store = self.open_view(name, id, true)?;
        let first = first_controls(projector.paused());
        let pending = match self.spawn(name, code, instance, store, first) {
            Ok(pending) => pending,
            Err(e) => {
                self.remove_view(name, id);
                return Err(DeployError::Spawn(e));
            }
        };
        if let Err(e) = self.save(projector, |d| d.pending = Some(record)) {
            pending.stop();
            self.remove_view(name, id);
            return Err(e.into());
        }
        if let Some(old) = projector.replace(Role::Pending, pending) {
            old.stop();
            self.remove_view(name, old.id);
            tracing::info!(projector = %projector.name, generation = old.id, "rebuild superseded");
        }
        Ok(id)
    }

    /// Pauses a projector (every generation stops between two batches).
    pub fn pause(&self, name: &str) -> Result<(), LifecycleError> {
        self.set_paused(name, true)
    }

    /// Resumes a paused projector, and restarts any faulted generation from its checkpoint
    /// with a fresh instance (e.g. after the cause was fixed).
    pub fn resume(&self, name: &str) -> Result<(), LifecycleError> {
        {
            let _changing = self.inner.changing.lock();
            let projector = self.handle(name)?;
            self.restart(&projector, Role::Serving)?;
            self.restart(&projector, Role::Pending)?;
        }
        self.set_paused(name, false)
    }

    /// Rebuilds a projector's view from scratch with its latest code, blue/green.
    pub fn reset(&self, name: &str) -> Result<Deployed, LifecycleError> {
        let module = self.handle(name)?.deployment().latest().module.clone();
        let options = DeployOptions {
            mode: Some(DeployMode::Rebuild),
            ..DeployOptions::default()
        };
        Ok(self.deploy(name, ModuleSource::Stored(module), options)?)
    }

    /// Stops a projector and deletes its views and its catalog entry.
    pub fn delete(&self, name: &str) -> Result<(), LifecycleError> {
        let _changing = self.inner.changing.lock();
        let projector = self.handle(name)?;
        self.unrecord(name)?;
        self.inner.projectors.write().remove(name);
        projector.stop();
        std::fs::remove_dir_all(self.inner.dir.projector(name))?;
        self.collect_modules();
        self.inner.engine.guest_output().remove(name);
        self.inner.metrics.remove(name);
        tracing::info!(projector = name, "deleted");
        Ok(())
    }

    fn set_paused(&self, name: &str, paused: bool) -> Result<(), LifecycleError> {
        let _changing = self.inner.changing.lock();
        let projector = self.handle(name)?;
        self.save(&projector, |d| d.paused = paused)?;
        for role in [Role::Serving, Role::Pending] {
            if let Some(generation) = projector.generation(role) {
                let control = if paused { Control::Pause } else { Control::Run };
                let _ = generation.runner().send(control);
            }
        }
        Ok(())
    }

    /// Stops and discards a rebuild in progress.
    fn cancel_pending(&self, projector: &ProjectorHandle) {
        let Some(pending) = projector.take_pending() else {
            return;
        };
        pending.stop();
        if let Err(e) = self.save(projector, |d| d.pending = None) {
            tracing::error!(projector = %projector.name, error = %e, "recording a cancelled rebuild failed");
        }
        self.remove_view(&projector.name, pending.id);
        tracing::info!(projector = %projector.name, generation = pending.id, "rebuild cancelled");
    }

    /// Validates and compiles an upload (with its component bytes, to store once the module
    /// is accepted), or finds a stored module.
    fn module(
        &self,
        source: ModuleSource,
        cancel: &Cancel,
    ) -> Result<(Module, CompileSource, Option<Vec<u8>>), DeployError> {
        match source {
            ModuleSource::Upload(bytes) => {
                let upload = self.inner.engine.compile_cancellable(&bytes, cancel)?;
                Ok((upload.module, upload.source, Some(upload.component)))
            }
            ModuleSource::Stored(hash) => {
                if !self.has_module(&hash)? {
                    return Err(DeployError::UnknownModule(hash));
                }
                let (module, source) = self.load(&hash)?;
                Ok((module, source, None))
            }
        }
    }

    /// Starts a projector found in the catalog: its serving generation (with its trial, if
    /// one was under way) and its pending one. A generation whose code fails to load is listed
    /// faulted.
    pub(super) fn resume_deployment(
        &self,
        name: &str,
        mut deployment: Deployment,
    ) -> Result<ProjectorHandle, RegistryError> {
        let store = self.open_view(name, deployment.serving.id, false)?;
        // A trial that passed before Prism stopped (its first batch is committed with the
        // view's record of it) but whose news did not reach the catalog.
        let proven = store.proven_code()?;
        if let Some(trial) = &deployment.trial
            && proven.as_deref() == Some(trial.to_json().as_slice())
        {
            deployment.serving = trial.clone();
            deployment.trial = None;
            self.record(name, &deployment)
                .map_err(|e| RegistryError::Recording(name.to_string(), Box::new(e)))?;
            tracing::info!(projector = name, module = %deployment.serving.module, "the reload on trial had passed before the stop");
        }
        let (serving, trial_error) = match self.launch_serving(name, &deployment, store.clone()) {
            Ok(launched) => launched,
            Err(LaunchError::Spawn(e)) => return Err(RegistryError::Spawn(e)),
            Err(LaunchError::Code(e)) => {
                let message = crate::projector::error::chain(&e);
                tracing::error!(projector = name, error = %message, "projector failed to load");
                (self.failed(&deployment.serving, store, message)?, None)
            }
        };
        let pending = match &deployment.pending {
            None => None,
            Some(record) => {
                let store = self.open_view(name, record.id, false)?;
                let first = first_controls(deployment.paused);
                Some(match self.launch(name, record, store.clone(), first) {
                    Ok(pending) => pending,
                    Err(LaunchError::Spawn(e)) => return Err(RegistryError::Spawn(e)),
                    Err(LaunchError::Code(e)) => {
                        let message = crate::projector::error::chain(&e);
                        tracing::error!(projector = name, generation = record.id, error = %message, "rebuild failed to load");
                        self.failed(record, store, message)?
                    }
                })
            }
        };
        let handle = ProjectorHandle::new(name, deployment, serving, pending);
        if let Some(error) = trial_error {
            self.drop_trial(&handle, error);
        }
        Ok(handle)
    }

    pub(super) fn remove_projector_dir(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.inner.dir.projector(name));
    }
}
