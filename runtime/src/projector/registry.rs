//! The deployed projectors: deploy (validate, compile, store, start), list, find, and stop.
//!
//! Layout in the data dir: `catalog.redb` (what is deployed), `modules/<sha256>.wasm` (module
//! components, content-addressed) and `projectors/<name>/view.redb` (each projector's view and
//! checkpoint, apart from every other projector's).

use super::catalog::{Catalog, Deployment};
use super::runner::{Runner, fault};
use super::{State, Status};
use crate::engine::{Descriptor, Engine, Instance, InstanceError, Module, ModuleError};
use crate::log::EventLog;
use crate::store::{StoreError, ViewStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::watch;

/// Longest projector name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Why a deploy was refused. Nothing of a refused deploy is kept.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The projector name is not usable.
    #[error("invalid projector name {0:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'")]
    InvalidName(String),
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

/// How a deploy went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployMode {
    /// A new projector, starting from the beginning of the log.
    Created,
    /// Same view schema: the new code continues from the existing checkpoint.
    Continue,
    /// New view schema: the view was dropped and is rebuilt from the beginning of the log.
    Rebuild,
}

/// The result of a deploy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    pub name: String,
    pub module: String,
    pub schema_version: u32,
    pub mode: DeployMode,
}

/// A deployed projector: its deployment, its view, its status and its runner thread.
pub struct ProjectorHandle {
    /// The deployment name.
    pub name: String,
    /// What is deployed.
    pub deployment: Deployment,
    /// What the module said about itself (`None` when it failed to start).
    pub descriptor: Option<Descriptor>,
    /// The projector's view and checkpoint.
    pub store: Arc<ViewStore>,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ProjectorHandle {
    /// A copy of the projector's current status.
    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
    }

    /// Stops the runner and waits for it to make its view durable.
    fn stop(&self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.lock().expect("thread lock").take() {
            let _ = thread.join();
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
    /// Serializes deploys (compiling happens before, in parallel).
    deploying: Mutex<()>,
}

impl Registry {
    /// Opens the catalog in `data_dir` and starts every deployed projector from its checkpoint.
    /// A projector whose module fails to load is listed as faulted; its view still serves.
    pub fn open(data_dir: &Path, engine: Engine, log: EventLog) -> Result<Registry, RegistryError> {
        let catalog = Catalog::open(data_dir).map_err(|source| RegistryError::Catalog {
            path: data_dir.display().to_string(),
            source,
        })?;
        let deployments = catalog
            .deployments()
            .map_err(|source| RegistryError::Catalog {
                path: data_dir.display().to_string(),
                source,
            })?;
        let registry = Registry {
            inner: Arc::new(Inner {
                engine,
                log,
                data_dir: data_dir.to_path_buf(),
                catalog,
                projectors: RwLock::new(BTreeMap::new()),
                deploying: Mutex::new(()),
            }),
        };
        for (name, deployment) in deployments {
            let store = Arc::new(ViewStore::open(&registry.view_path(&name))?);
            let started = registry.load(&name, &deployment);
            let handle = match started {
                Ok((module, instance)) => {
                    registry.start(&name, deployment, &module, instance, store)
                }
                Err(message) => {
                    tracing::error!(projector = %name, error = %message, "projector failed to load");
                    registry.faulted(&name, deployment, store, message)?
                }
            };
            registry.insert(handle);
        }
        Ok(registry)
    }

    /// The event log the projectors follow.
    pub fn log(&self) -> &EventLog {
        &self.inner.log
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

    /// Validates, compiles, stores and starts `wasm` as the projector `name`, replacing any
    /// projector of that name. Blocking and CPU-heavy: call it off the async executor.
    ///
    /// A module with the same view schema version as the one it replaces continues from its
    /// checkpoint; a different version drops the view and rebuilds it from the start of the log.
    pub fn deploy(&self, name: &str, wasm: &[u8], config: &str) -> Result<Deployed, DeployError> {
        if !valid_name(name) {
            return Err(DeployError::InvalidName(name.to_string()));
        }
        let module = self.inner.engine.compile(wasm)?;
        let instance = self.inner.engine.instantiate(&module, name, config)?;
        let schema_version = instance.descriptor().schema_version;
        let storage = |e: &dyn std::fmt::Display| DeployError::Storage(e.to_string());
        self.inner
            .catalog
            .store_module(&module.hash, &module.component)
            .map_err(|e| storage(&e))?;

        let _deploying = self.inner.deploying.lock().expect("deploy lock");
        let previous = self.get(name);
        let mode = match &previous {
            None => DeployMode::Created,
            Some(p) if p.deployment.schema_version == schema_version => DeployMode::Continue,
            Some(_) => DeployMode::Rebuild,
        };
        if let Some(previous) = &previous {
            previous.stop();
        }
        let store = match (&previous, mode) {
            (Some(previous), DeployMode::Continue) => previous.store.clone(),
            _ => {
                let path = self.view_path(name);
                if mode == DeployMode::Rebuild {
                    std::fs::remove_file(&path).map_err(|e| storage(&e))?;
                }
                Arc::new(ViewStore::open(&path).map_err(|e| storage(&e))?)
            }
        };
        let deployment = Deployment {
            module: module.hash.clone(),
            config: config.to_string(),
            schema_version,
        };
        self.inner
            .catalog
            .put(name, &deployment)
            .map_err(|e| storage(&e))?;
        tracing::info!(projector = name, module = %module.hash, ?mode, "deployed");
        self.insert(self.start(name, deployment, &module, instance, store));
        Ok(Deployed {
            name: name.to_string(),
            module: module.hash,
            schema_version,
            mode,
        })
    }

    /// Stops every projector, each making its view durable.
    pub fn shutdown(&self) {
        for handle in self.list() {
            handle.stop();
        }
    }

    fn view_path(&self, name: &str) -> PathBuf {
        self.inner
            .data_dir
            .join("projectors")
            .join(name)
            .join("view.redb")
    }

    fn insert(&self, handle: Arc<ProjectorHandle>) {
        self.inner
            .projectors
            .write()
            .expect("registry lock")
            .insert(handle.name.clone(), handle);
    }

    /// Loads and starts a deployed module.
    fn load(&self, name: &str, deployment: &Deployment) -> Result<(Module, Instance), String> {
        let bytes = self
            .inner
            .catalog
            .read_module(&deployment.module)
            .map_err(|e| format!("cannot read module {}: {e}", deployment.module))?;
        let module = self
            .inner
            .engine
            .compile(&bytes)
            .map_err(|e| e.to_string())?;
        let instance = self
            .inner
            .engine
            .instantiate(&module, name, &deployment.config)
            .map_err(|e| e.to_string())?;
        Ok((module, instance))
    }

    fn start(
        &self,
        name: &str,
        deployment: Deployment,
        module: &Module,
        instance: Instance,
        store: Arc<ViewStore>,
    ) -> Arc<ProjectorHandle> {
        let status = Arc::new(Mutex::new(Status {
            state: State::Starting,
            checkpoint: 0,
            events_applied: 0,
            error: None,
        }));
        let (stop, stop_rx) = watch::channel(false);
        let descriptor = Some(instance.descriptor().clone());
        let runner = Runner {
            name: name.to_string(),
            until_head: false,
            module_hash: module.hash.clone(),
            log: self.inner.log.clone(),
            store: store.clone(),
            status: status.clone(),
            stop: stop_rx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("prism-{name}"))
            .spawn(move || {
                runner.run(instance);
            })
            .expect("spawning a projector thread");
        Arc::new(ProjectorHandle {
            name: name.to_string(),
            deployment,
            descriptor,
            store,
            status,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A projector that could not start: listed as faulted, its view still readable.
    fn faulted(
        &self,
        name: &str,
        deployment: Deployment,
        store: Arc<ViewStore>,
        message: String,
    ) -> Result<Arc<ProjectorHandle>, StoreError> {
        let checkpoint = store.checkpoint()?;
        Ok(Arc::new(ProjectorHandle {
            name: name.to_string(),
            deployment,
            descriptor: None,
            store,
            status: Arc::new(Mutex::new(Status {
                state: State::Faulted,
                checkpoint,
                events_applied: 0,
                error: Some(fault(message)),
            })),
            stop: watch::channel(true).0,
            thread: Mutex::new(None),
        }))
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
