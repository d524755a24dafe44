//! The deployed projectors and their lifecycle: deploy (validate, compile, store, start),
//! hot reload (continue or blue/green rebuild), pause, resume, reset, delete.
//!
//! A projector has a *serving* generation — a module, a config and a view file — and, during a
//! rebuild, a *pending* one building a fresh view from position 0 in its own file while the
//! serving one keeps answering queries and following the log. When the pending generation
//! reaches the log's head it is promoted: the catalog records it as serving, queries switch to
//! it in one pointer swap, and the old generation is stopped and its file deleted.
//!
//! Layout in the data dir: `catalog.redb` (what is deployed), `modules/<sha256>.wasm` (module
//! components, content-addressed), `cache/<sha256>.cwasm` (compiled artifacts Prism produced),
//! and `projectors/<name>/gen-<id>.redb` (each generation's view and checkpoint).

use super::catalog::{Catalog, Deployment, GenerationRecord};
use super::runner::{Code, Command, Hook, Retry, RetryQueue, Runner, RunnerEvent, SwapSlot, fault};
use super::verify::{Verification, compare};
use super::{ErrorPolicy, State, Status};
use crate::engine::{
    CompileSource, Descriptor, Engine, Instance, InstanceError, Module, ModuleError,
};
use crate::log::EventLog;
use crate::store::{StoreError, ViewStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::watch;

/// Longest projector name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Why a deploy was refused. Nothing of a refused deploy is kept.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The projector name is not usable.
    #[error("invalid projector name {0:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'")]
    InvalidName(String),
    /// A redeploy by hash named a module Prism does not have.
    #[error("no stored module {0}")]
    UnknownModule(String),
    /// The module is not a valid projector.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The module failed to start (instantiation, `describe` or `init`).
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// Storing the module, the catalog entry or the view failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// Why a lifecycle action (pause, resume, reset, delete) failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No projector has that name.
    #[error("no projector named {0:?}")]
    NotFound(String),
    /// Restarting the module failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// Storage failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// Why a dead-letter retry did not apply.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No such projector or dead letter.
    #[error("{0}")]
    NotFound(String),
    /// The projector is not running (faulted or stopping): resume it first.
    #[error("the projector is not running; resume it first")]
    NotRunning,
    /// The event failed again; the dead letter stays, with this error.
    #[error("the event failed again: {0}")]
    Failed(String),
    /// Storage failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// Why the registry could not open.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The catalog could not be opened.
    #[error("cannot open the catalog in {path}: {source}")]
    Catalog {
        path: String,
        #[source]
        source: redb::Error,
    },
    /// A projector's view file could not be opened.
    #[error(transparent)]
    View(#[from] StoreError),
}

/// How a deploy applies to an existing projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployMode {
    /// A new projector, starting from the beginning of the log.
    Created,
    /// The new code takes over between two batches and continues from the current checkpoint
    /// on the existing view. The default when the view schema version is unchanged.
    Continue,
    /// A new generation rebuilds a fresh view from the start of the log in the background;
    /// queries switch to it when it has caught up. The default when the schema changed.
    Rebuild,
}

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
}

/// The result of a deploy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    pub name: String,
    pub module: String,
    pub schema_version: u32,
    pub mode: DeployMode,
    /// The generation the deploy runs in (a new one for a rebuild).
    pub generation: u64,
    /// Where the compiled code came from.
    pub compile: CompileSource,
    /// How long validation and compilation took, in milliseconds.
    pub compile_ms: f64,
}

/// One generation of a projector: its record, its view, and its runner.
pub struct Generation {
    /// What the catalog says of it (the module changes with a continue-mode reload).
    record: RwLock<GenerationRecord>,
    /// Its view and checkpoint.
    pub store: Arc<ViewStore>,
    /// What the module said about itself (`None` when it failed to start).
    pub descriptor: Mutex<Option<Descriptor>>,
    status: Arc<Mutex<Status>>,
    commands: watch::Sender<Command>,
    swap: SwapSlot,
    retries: RetryQueue,
    checkpoints: watch::Sender<u64>,
    /// Its recent view changes, for live subscribers.
    pub changes: Arc<super::ChangeFeed>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Generation {
    /// A watch of the generation's checkpoint: it changes after every commit.
    pub fn checkpoints(&self) -> watch::Receiver<u64> {
        self.checkpoints.subscribe()
    }

    /// What the catalog says of it.
    pub fn record(&self) -> GenerationRecord {
        self.record.read().expect("record lock").clone()
    }

    /// The generation's number.
    pub fn id(&self) -> u64 {
        self.record.read().expect("record lock").id
    }

    /// A copy of the generation's status.
    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
    }

    fn command(&self, command: Command) {
        self.commands.send_replace(command);
    }

    fn running(&self) -> bool {
        self.thread
            .lock()
            .expect("thread lock")
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Stops the runner and waits for it to make its view durable.
    fn stop(&self) {
        self.command(Command::Stop);
        if let Some(thread) = self.thread.lock().expect("thread lock").take() {
            let _ = thread.join();
        }
        self.changes.close();
    }
}

/// A deployed projector: its serving generation and, during a rebuild, a pending one.
pub struct ProjectorHandle {
    /// The deployment name.
    pub name: String,
    /// Tells this deployment from an earlier one of the same name (see the catalog).
    pub incarnation: u64,
    slots: RwLock<Slots>,
}

struct Slots {
    serving: Arc<Generation>,
    pending: Option<Arc<Generation>>,
    paused: bool,
    /// The last reload that failed, kept for the status.
    reload_error: Option<String>,
}

impl ProjectorHandle {
    /// The generation answering queries. A query holds it for its whole answer, so every answer
    /// comes from exactly one generation.
    pub fn serving(&self) -> Arc<Generation> {
        self.slots.read().expect("slots lock").serving.clone()
    }

    /// The generation rebuilding in the background, if any.
    pub fn pending(&self) -> Option<Arc<Generation>> {
        self.slots.read().expect("slots lock").pending.clone()
    }

    /// Whether the projector is paused.
    pub fn paused(&self) -> bool {
        self.slots.read().expect("slots lock").paused
    }

    /// The last reload that failed (the previous module kept serving).
    pub fn reload_error(&self) -> Option<String> {
        self.slots.read().expect("slots lock").reload_error.clone()
    }

    /// The projector's overall state: paused, rebuilding, or its serving generation's state.
    pub fn state(&self) -> State {
        let slots = self.slots.read().expect("slots lock");
        let serving = slots.serving.status().state;
        if slots.paused {
            State::Paused
        } else if slots.pending.is_some() && serving != State::Faulted {
            State::Rebuilding
        } else {
            serving
        }
    }
}

/// The deployed projectors.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    log: EventLog,
    data_dir: PathBuf,
    catalog: Catalog,
    projectors: RwLock<BTreeMap<String, Arc<ProjectorHandle>>>,
    /// Serializes changes to deployments (compiling happens before, in parallel).
    changing: Mutex<()>,
    metrics: super::ProjectorMetrics,
}

impl Registry {
    /// Opens the catalog in `data_dir` and starts every deployed projector from its checkpoint,
    /// resuming any rebuild in progress. A generation whose module fails to load is listed as
    /// faulted; the serving view still answers queries.
    pub fn open(data_dir: &Path, engine: Engine, log: EventLog) -> Result<Registry, RegistryError> {
        let catalog_error = |source| RegistryError::Catalog {
            path: data_dir.display().to_string(),
            source,
        };
        let catalog = Catalog::open(data_dir).map_err(catalog_error)?;
        let deployments = catalog.deployments().map_err(catalog_error)?;
        let registry = Registry {
            inner: Arc::new(Inner {
                engine,
                log,
                data_dir: data_dir.to_path_buf(),
                catalog,
                projectors: RwLock::new(BTreeMap::new()),
                changing: Mutex::new(()),
                metrics: super::ProjectorMetrics::default(),
            }),
        };
        for (name, deployment) in deployments {
            let command = if deployment.paused {
                Command::Pause
            } else {
                Command::Run
            };
            let serving = registry.resume_generation(&name, deployment.serving, command, false)?;
            let pending = deployment
                .pending
                .map(|record| registry.resume_generation(&name, record, command, true))
                .transpose()?;
            registry.insert(Arc::new(ProjectorHandle {
                name: name.clone(),
                incarnation: deployment.incarnation,
                slots: RwLock::new(Slots {
                    serving,
                    pending,
                    paused: deployment.paused,
                    reload_error: None,
                }),
            }));
        }
        Ok(registry)
    }

    /// The event log the projectors follow.
    pub fn log(&self) -> &EventLog {
        &self.inner.log
    }

    /// What the projectors' runners have accumulated.
    pub fn metrics(&self) -> &super::ProjectorMetrics {
        &self.inner.metrics
    }

    /// The lines the projector `name`'s modules wrote with `host.log`, after `after` (a `seq`),
    /// at most `limit` of the newest.
    pub fn module_log(
        &self,
        name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<crate::engine::LogLine>, LifecycleError> {
        self.handle(name)?;
        Ok(self.inner.engine.module_logs().of(name).lines(after, limit))
    }

    /// Every deployed projector, by name.
    pub fn list(&self) -> Vec<Arc<ProjectorHandle>> {
        self.inner
            .projectors
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// The projector deployed as `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ProjectorHandle>> {
        self.inner
            .projectors
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    /// The hashes of every stored module.
    pub fn modules(&self) -> std::io::Result<Vec<String>> {
        self.inner.catalog.modules()
    }

    /// Deploys `source` as the projector `name`. Blocking and CPU-heavy: call it off the async
    /// executor.
    ///
    /// `config` replaces the configuration (`None` keeps the current one). `mode` forces how
    /// an existing projector is replaced; by default, the same view schema version continues
    /// and a new one rebuilds (see [`DeployMode`]). A module that fails to validate, compile,
    /// instantiate or initialize is refused and nothing changes.
    pub fn deploy(
        &self,
        name: &str,
        source: ModuleSource,
        options: DeployOptions,
    ) -> Result<Deployed, DeployError> {
        let DeployOptions {
            config,
            mode,
            on_error,
        } = options;
        if !valid_name(name) {
            return Err(DeployError::InvalidName(name.to_string()));
        }
        let started = Instant::now();
        let (module, compile) = self.module(source)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1000.0;

        let _changing = self.inner.changing.lock().expect("deploy lock");
        let existing = self.get(name);
        let current = existing.as_ref().map(|p| p.serving().record());
        let config = config
            .or_else(|| current.as_ref().map(|r| r.config.clone()))
            .unwrap_or_default();
        let on_error = on_error
            .or_else(|| current.as_ref().map(|r| r.on_error))
            .unwrap_or_default();
        let instance = self.inner.engine.instantiate(&module, name, &config)?;
        let schema_version = instance.descriptor().schema_version;
        let storage = |e: &dyn std::fmt::Display| DeployError::Storage(e.to_string());

        let Some(projector) = existing else {
            let record = GenerationRecord {
                id: 1,
                module: module.hash.clone(),
                config,
                schema_version,
                on_error,
            };
            let store = self
                .open_store(name, record.id, true)
                .map_err(|e| storage(&e))?;
            let incarnation = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            let deployment = Deployment {
                serving: record.clone(),
                pending: None,
                paused: false,
                incarnation,
            };
            self.inner
                .catalog
                .put(name, &deployment)
                .map_err(|e| storage(&e))?;
            let serving = self.start(name, record, &module, instance, store, Command::Run, false);
            self.insert(Arc::new(ProjectorHandle {
                name: name.to_string(),
                incarnation,
                slots: RwLock::new(Slots {
                    serving,
                    pending: None,
                    paused: false,
                    reload_error: None,
                }),
            }));
            tracing::info!(projector = name, module = %module.hash, "deployed");
            return Ok(Deployed {
                name: name.to_string(),
                module: module.hash,
                schema_version,
                mode: DeployMode::Created,
                generation: 1,
                compile,
                compile_ms,
            });
        };

        let serving = projector.serving();
        let current = serving.record();
        let code = Code {
            module: module.clone(),
            config: config.clone(),
        };
        let mode = mode.unwrap_or(if current.schema_version == schema_version {
            DeployMode::Continue
        } else {
            DeployMode::Rebuild
        });
        // A newer deploy supersedes a rebuild in progress.
        self.cancel_pending(&projector);
        let command = if projector.paused() {
            Command::Pause
        } else {
            Command::Run
        };
        let generation = match mode {
            DeployMode::Created | DeployMode::Continue => {
                let record = GenerationRecord {
                    module: module.hash.clone(),
                    config,
                    schema_version,
                    on_error,
                    ..current
                };
                self.put_deployment(&projector, Some(record.clone()), None)
                    .map_err(|e| storage(&e))?;
                if serving.running() {
                    // Swap between two batches, on trial until the new code applies one.
                    *serving.descriptor.lock().expect("descriptor lock") =
                        Some(instance.descriptor().clone());
                    *serving.record.write().expect("record lock") = record.clone();
                    *serving.swap.lock().expect("swap lock") = Some((code, instance));
                    serving.commands.send_modify(|_| {});
                } else {
                    // Faulted or stopped: start the new code on the same view.
                    let started = self.start(
                        name,
                        record.clone(),
                        &module,
                        instance,
                        serving.store.clone(),
                        command,
                        false,
                    );
                    projector.slots.write().expect("slots lock").serving = started;
                    // Its change subscribers follow the new runner.
                    serving.changes.close();
                }
                record.id
            }
            DeployMode::Rebuild => {
                let record = GenerationRecord {
                    id: current.id + 1,
                    module: module.hash.clone(),
                    config,
                    schema_version,
                    on_error,
                };
                let store = self
                    .open_store(name, record.id, true)
                    .map_err(|e| storage(&e))?;
                self.put_deployment(&projector, None, Some(Some(record.clone())))
                    .map_err(|e| storage(&e))?;
                let pending = self.start(
                    name,
                    record.clone(),
                    &module,
                    instance,
                    store,
                    command,
                    true,
                );
                projector.slots.write().expect("slots lock").pending = Some(pending);
                record.id
            }
        };
        projector.slots.write().expect("slots lock").reload_error = None;
        tracing::info!(projector = name, module = %module.hash, ?mode, generation, "deployed");
        Ok(Deployed {
            name: name.to_string(),
            module: module.hash,
            schema_version,
            mode,
            generation,
            compile,
            compile_ms,
        })
    }

    /// Pauses a projector (every generation stops between two batches).
    pub fn pause(&self, name: &str) -> Result<(), LifecycleError> {
        self.set_paused(name, true)
    }

    /// Resumes a paused projector, and restarts any faulted generation from its checkpoint
    /// with a fresh instance (e.g. after the cause was fixed).
    pub fn resume(&self, name: &str) -> Result<(), LifecycleError> {
        self.set_paused(name, false)?;
        let _changing = self.inner.changing.lock().expect("deploy lock");
        let projector = self.handle(name)?;
        let serving = projector.serving();
        if !serving.running() {
            let restarted = self.restart(name, &serving, false)?;
            projector.slots.write().expect("slots lock").serving = restarted;
            serving.changes.close();
        }
        if let Some(pending) = projector.pending().filter(|p| !p.running()) {
            let restarted = self.restart(name, &pending, true)?;
            projector.slots.write().expect("slots lock").pending = Some(restarted);
        }
        Ok(())
    }

    /// Rebuilds a projector's view from scratch with its current module, blue/green.
    pub fn reset(&self, name: &str) -> Result<Deployed, LifecycleError> {
        let module = self.handle(name)?.serving().record().module;
        let options = DeployOptions {
            mode: Some(DeployMode::Rebuild),
            ..DeployOptions::default()
        };
        Ok(self.deploy(name, ModuleSource::Stored(module), options)?)
    }

    /// Stops a projector and deletes its views and its catalog entry.
    pub fn delete(&self, name: &str) -> Result<(), LifecycleError> {
        let _changing = self.inner.changing.lock().expect("deploy lock");
        let projector = self.handle(name)?;
        self.inner
            .catalog
            .remove(name)
            .map_err(|e| LifecycleError::Storage(e.to_string()))?;
        self.inner
            .projectors
            .write()
            .expect("registry lock")
            .remove(name);
        self.cancel_pending(&projector);
        projector.serving().stop();
        let dir = self.projector_dir(name);
        std::fs::remove_dir_all(&dir).map_err(|e| LifecycleError::Storage(e.to_string()))?;
        self.inner.engine.module_logs().remove(name);
        self.inner.metrics.remove(name);
        tracing::info!(projector = name, "deleted");
        Ok(())
    }

    /// Stops every projector, each making its view durable.
    pub fn shutdown(&self) {
        for projector in self.list() {
            if let Some(pending) = projector.pending() {
                pending.stop();
            }
            projector.serving().stop();
        }
    }

    fn handle(&self, name: &str) -> Result<Arc<ProjectorHandle>, LifecycleError> {
        self.get(name)
            .ok_or_else(|| LifecycleError::NotFound(name.to_string()))
    }

    fn module(&self, source: ModuleSource) -> Result<(Module, CompileSource), DeployError> {
        match source {
            ModuleSource::Upload(bytes) => {
                let upload = self.inner.engine.compile(&bytes)?;
                self.inner
                    .catalog
                    .store_module(&upload.module.hash, &upload.component)
                    .map_err(|e| DeployError::Storage(e.to_string()))?;
                Ok((upload.module, upload.source))
            }
            ModuleSource::Stored(hash) => {
                if !self.inner.catalog.has_module(&hash) {
                    return Err(DeployError::UnknownModule(hash));
                }
                Ok(self.load(&hash)?)
            }
        }
    }

    fn load(&self, hash: &str) -> Result<(Module, CompileSource), ModuleError> {
        self.inner
            .engine
            .load(hash, || self.inner.catalog.read_module(hash))
    }

    fn set_paused(&self, name: &str, paused: bool) -> Result<(), LifecycleError> {
        let _changing = self.inner.changing.lock().expect("deploy lock");
        let projector = self.handle(name)?;
        let mut deployment = self.deployment(&projector);
        deployment.paused = paused;
        self.inner
            .catalog
            .put(name, &deployment)
            .map_err(|e| LifecycleError::Storage(e.to_string()))?;
        let mut slots = projector.slots.write().expect("slots lock");
        slots.paused = paused;
        let command = if paused { Command::Pause } else { Command::Run };
        slots.serving.command(command);
        if let Some(pending) = &slots.pending {
            pending.command(command);
        }
        Ok(())
    }

    /// The catalog entry of a projector as it runs now.
    fn deployment(&self, projector: &ProjectorHandle) -> Deployment {
        let slots = projector.slots.read().expect("slots lock");
        Deployment {
            serving: slots.serving.record(),
            pending: slots.pending.as_ref().map(|p| p.record()),
            paused: slots.paused,
            incarnation: projector.incarnation,
        }
    }

    /// Records a projector's deployment with a new serving record and/or pending slot.
    fn put_deployment(
        &self,
        projector: &ProjectorHandle,
        serving: Option<GenerationRecord>,
        pending: Option<Option<GenerationRecord>>,
    ) -> Result<(), redb::Error> {
        let mut deployment = self.deployment(projector);
        if let Some(serving) = serving {
            deployment.serving = serving;
        }
        if let Some(pending) = pending {
            deployment.pending = pending;
        }
        self.inner.catalog.put(&projector.name, &deployment)
    }

    /// Stops and discards a rebuild in progress.
    fn cancel_pending(&self, projector: &ProjectorHandle) {
        let pending = projector.slots.write().expect("slots lock").pending.take();
        if let Some(pending) = pending {
            pending.stop();
            if let Err(e) = self.put_deployment(projector, None, Some(None)) {
                tracing::error!(projector = %projector.name, error = %e, "recording a cancelled rebuild failed");
            }
            self.remove_store(&projector.name, pending.id());
            tracing::info!(projector = %projector.name, generation = pending.id(), "rebuild cancelled");
        }
    }

    /// Makes a caught-up pending generation the serving one (run on its own thread).
    fn promote(&self, name: &str, id: u64) {
        let _changing = self.inner.changing.lock().expect("deploy lock");
        let Some(projector) = self.get(name) else {
            return;
        };
        let Some(pending) = projector.pending().filter(|p| p.id() == id) else {
            return;
        };
        let deployment = Deployment {
            serving: pending.record(),
            pending: None,
            paused: projector.paused(),
            incarnation: projector.incarnation,
        };
        if let Err(e) = self.inner.catalog.put(name, &deployment) {
            tracing::error!(projector = name, error = %e, "recording a promotion failed; the rebuild stays pending");
            return;
        }
        let old = {
            let mut slots = projector.slots.write().expect("slots lock");
            slots.pending = None;
            std::mem::replace(&mut slots.serving, pending)
        };
        old.stop();
        self.remove_store(name, old.id());
        tracing::info!(
            projector = name,
            generation = id,
            "rebuild caught up; now serving"
        );
    }

    /// Records a failed continue-mode reload: the catalog goes back to the previous module.
    fn reload_failed(&self, name: &str, module: &str, previous: &str, error: String) {
        let _changing = self.inner.changing.lock().expect("deploy lock");
        let Some(projector) = self.get(name) else {
            return;
        };
        let serving = projector.serving();
        let mut record = serving.record();
        if record.module != module {
            return;
        }
        record.module = previous.to_string();
        if let Err(e) = self.put_deployment(&projector, Some(record.clone()), None) {
            tracing::error!(projector = name, error = %e, "recording a failed reload failed");
        }
        *serving.record.write().expect("record lock") = record;
        projector.slots.write().expect("slots lock").reload_error =
            Some(format!("module {module} failed its first batch: {error}"));
    }

    /// Restarts a generation that is not running, with a fresh instance, from its checkpoint.
    fn restart(
        &self,
        name: &str,
        generation: &Generation,
        pending: bool,
    ) -> Result<Arc<Generation>, LifecycleError> {
        let record = generation.record();
        let (module, _) = self.load(&record.module).map_err(DeployError::from)?;
        let instance = self
            .inner
            .engine
            .instantiate(&module, name, &record.config)
            .map_err(DeployError::from)?;
        Ok(self.start(
            name,
            record,
            &module,
            instance,
            generation.store.clone(),
            Command::Run,
            pending,
        ))
    }

    /// Replays the projector's serving module from scratch into a scratch view, up to the
    /// checkpoint of a snapshot of the live view, and compares the two. Blocking and as costly
    /// as a rebuild: call it off the async executor.
    pub fn verify(&self, name: &str) -> Result<Verification, LifecycleError> {
        let generation = self.handle(name)?.serving();
        let record = generation.record();
        let storage = |e: &dyn std::fmt::Display| LifecycleError::Storage(e.to_string());
        let live = generation.store.snapshot().map_err(|e| storage(&e))?;
        let checkpoint = live.checkpoint();
        let (module, _) = self.load(&record.module).map_err(DeployError::from)?;
        let instance = self
            .inner
            .engine
            .instantiate(&module, name, &record.config)
            .map_err(DeployError::from)?;
        let scratch_dir = self.inner.data_dir.join("tmp");
        std::fs::create_dir_all(&scratch_dir).map_err(|e| storage(&e))?;
        let scratch_path = scratch_dir.join(format!(
            "verify-{name}-{}.redb",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let started = Instant::now();
        let outcome = (|| {
            let scratch = Arc::new(ViewStore::open(&scratch_path).map_err(|e| storage(&e))?);
            let status = super::replay_to(
                &self.inner.engine,
                &module,
                instance,
                &self.inner.log,
                scratch.clone(),
                Some(checkpoint),
            );
            if let Some(error) = status.error {
                return Err(LifecycleError::Storage(format!(
                    "the replay faulted: {error}"
                )));
            }
            let replay = scratch.snapshot().map_err(|e| storage(&e))?;
            compare(&live, &replay).map_err(|e| storage(&e))
        })();
        let _ = std::fs::remove_file(&scratch_path);
        let (live_view, replay_view, differences) = outcome?;
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

    /// Lists the dead letters of a projector's serving generation after position `after`.
    pub fn dead_letters(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::store::DeadLetter>, LifecycleError> {
        self.handle(name)?
            .serving()
            .store
            .dead_letters(after, limit)
            .map_err(|e| LifecycleError::Storage(e.to_string()))
    }

    /// Applies the dead-lettered event at `position` again with the projector's current code
    /// (e.g. after deploying a fix). Blocking: the runner handles it between two batches. On
    /// success the event's writes commit and the dead letter is removed; on failure the error is
    /// returned and recorded on the dead letter.
    pub fn retry_dead_letter(&self, name: &str, position: u64) -> Result<(), RetryError> {
        let generation = self
            .handle(name)
            .map_err(|_| RetryError::NotFound(format!("no projector named {name:?}")))?
            .serving();
        let known = generation
            .store
            .dead_letter(position)
            .map_err(|e| RetryError::Storage(e.to_string()))?
            .is_some();
        if !known {
            return Err(RetryError::NotFound(format!(
                "no dead letter at position {position}"
            )));
        }
        if !generation.running() {
            return Err(RetryError::NotRunning);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        match generation.retries.lock().expect("retry lock").as_mut() {
            Some(queue) => queue.push(Retry { position, reply }),
            // The runner has stopped taking retries.
            None => return Err(RetryError::NotRunning),
        }
        generation.commands.send_modify(|_| {});
        // The runner handles the request between two batches, or answers it as it stops.
        match futures::executor::block_on(answer) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if error.starts_with("the projector stopped") => {
                Err(RetryError::NotRunning)
            }
            Ok(Err(error)) => Err(RetryError::Failed(error)),
            Err(_) => Err(RetryError::NotRunning),
        }
    }

    /// Discards the dead letter at `position`; false when there was none.
    pub fn discard_dead_letter(&self, name: &str, position: u64) -> Result<bool, LifecycleError> {
        self.handle(name)?
            .serving()
            .store
            .discard_dead_letter(position)
            .map_err(|e| LifecycleError::Storage(e.to_string()))
    }

    /// Starts a generation found in the catalog; one that fails to load is listed faulted.
    fn resume_generation(
        &self,
        name: &str,
        record: GenerationRecord,
        command: Command,
        pending: bool,
    ) -> Result<Arc<Generation>, StoreError> {
        let store = self.open_store(name, record.id, false)?;
        let loaded = self
            .load(&record.module)
            .map_err(|e| e.to_string())
            .and_then(|(module, _)| {
                let instance = self
                    .inner
                    .engine
                    .instantiate(&module, name, &record.config)
                    .map_err(|e| e.to_string())?;
                Ok((module, instance))
            });
        Ok(match loaded {
            Ok((module, instance)) => {
                self.start(name, record, &module, instance, store, command, pending)
            }
            Err(message) => {
                tracing::error!(projector = name, generation = record.id, error = %message, "projector failed to load");
                let checkpoint = store.checkpoint()?;
                let mut status = Status::starting(&record.module, checkpoint);
                status.state = State::Faulted;
                status.error = Some(fault(message));
                Arc::new(Generation {
                    record: RwLock::new(record),
                    store,
                    descriptor: Mutex::new(None),
                    status: Arc::new(Mutex::new(status)),
                    commands: watch::channel(Command::Stop).0,
                    swap: Arc::default(),
                    retries: Arc::default(),
                    checkpoints: watch::channel(checkpoint).0,
                    changes: Arc::new(super::ChangeFeed::new(checkpoint)),
                    thread: Mutex::new(None),
                })
            }
        })
    }

    /// Starts a runner thread for a generation. A pending generation promotes itself when it
    /// first catches up.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        name: &str,
        record: GenerationRecord,
        module: &Module,
        instance: Instance,
        store: Arc<ViewStore>,
        command: Command,
        pending: bool,
    ) -> Arc<Generation> {
        let checkpoint = store.checkpoint().unwrap_or_default();
        let status = Arc::new(Mutex::new(Status::starting(&record.module, checkpoint)));
        let (commands, commands_rx) = watch::channel(command);
        let swap = SwapSlot::default();
        let retries: RetryQueue = Arc::new(Mutex::new(Some(Vec::new())));
        let (checkpoints, _) = watch::channel(checkpoint);
        let changes = Arc::new(super::ChangeFeed::new(checkpoint));
        let descriptor = Mutex::new(Some(instance.descriptor().clone()));
        let code = Code {
            module: module.clone(),
            config: record.config.clone(),
        };
        let runner = Runner {
            name: name.to_string(),
            engine: self.inner.engine.clone(),
            policy: record.on_error,
            stop_at: super::runner::StopAt::Never,
            log: self.inner.log.clone(),
            store: store.clone(),
            status: status.clone(),
            checkpoints: checkpoints.clone(),
            commands: commands_rx,
            swap: swap.clone(),
            retries: retries.clone(),
            hook: Some(self.hook(name, record.id, pending)),
            metrics: self.inner.metrics.runner(name),
            changes: Some(changes.clone()),
        };
        let thread = std::thread::Builder::new()
            .name(format!("prism-{name}-{}", record.id))
            .spawn(move || {
                runner.run(code, instance);
            })
            .expect("spawning a projector thread");
        Arc::new(Generation {
            record: RwLock::new(record),
            store,
            descriptor,
            status,
            commands,
            swap,
            retries,
            checkpoints,
            changes,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// What a runner's events do. Each is handled on a thread of its own, so a runner never
    /// waits on the registry's lock (which may be held by someone stopping that runner).
    fn hook(&self, name: &str, id: u64, pending: bool) -> Hook {
        let registry: Weak<Inner> = Arc::downgrade(&self.inner);
        let name = name.to_string();
        Arc::new(move |event: RunnerEvent| {
            let registry = registry.clone();
            let name = name.clone();
            let work = move || {
                let Some(inner) = registry.upgrade() else {
                    return;
                };
                let registry = Registry { inner };
                match event {
                    RunnerEvent::CaughtUp if pending => registry.promote(&name, id),
                    RunnerEvent::ReloadFailed {
                        module,
                        previous,
                        error,
                    } => registry.reload_failed(&name, &module, &previous, error),
                    RunnerEvent::ReloadSucceeded { module } => {
                        tracing::info!(projector = %name, %module, "reload complete: the new module applied its first batch");
                    }
                    RunnerEvent::CaughtUp => {}
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name("prism-lifecycle".into())
                .spawn(work)
            {
                tracing::error!(error = %e, "spawning a lifecycle thread failed");
            }
        })
    }

    fn projector_dir(&self, name: &str) -> PathBuf {
        self.inner.data_dir.join("projectors").join(name)
    }

    fn store_path(&self, name: &str, id: u64) -> PathBuf {
        self.projector_dir(name).join(format!("gen-{id}.redb"))
    }

    /// Opens a generation's view file; `fresh` first removes any leftover of that generation.
    fn open_store(&self, name: &str, id: u64, fresh: bool) -> Result<Arc<ViewStore>, StoreError> {
        let path = self.store_path(name, id);
        if fresh {
            self.remove_store(name, id);
        }
        Ok(Arc::new(ViewStore::open(&path)?))
    }

    fn remove_store(&self, name: &str, id: u64) {
        let path = self.store_path(name, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing a view file failed")
            }
        }
    }

    fn insert(&self, handle: Arc<ProjectorHandle>) {
        self.inner
            .projectors
            .write()
            .expect("registry lock")
            .insert(handle.name.clone(), handle);
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
