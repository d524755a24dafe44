//! The deployed projectors and their lifecycle.
//!
//! A projector has a *serving* generation — a module, a config and a view file — and, during a
//! rebuild, a *pending* one building a fresh view from position 0 in its own file while the
//! serving one keeps answering queries and following the log. When the pending generation
//! reaches the log's head it is promoted: its view is made durable, the catalog records it as
//! serving, queries switch to it in one pointer swap, and the old generation is stopped and its
//! file deleted.
//!
//! The parts, each in its own module:
//! - [`adoption`]: in a cluster, starting the projectors this node comes to own and stopping
//!   the ones it no longer owns;
//! - [`lifecycle`]: deploy (validate, compile, store, start), hot reload, pause, resume, reset,
//!   delete;
//! - [`generation`]: one generation and its runner: spawn, restart, stop;
//! - [`handle`]: a deployed projector: its catalog record and its generations;
//! - [`dead_letters`]: listing, retrying and discarding dead letters;
//! - [`inspect`]: verification and module logs;
//! - [`status`]: what `GET /projectors` and `GET /ready` show.
//!
//! Changes to deployments are serialized by one lock; runners never take it. What runners
//! report (a trial passed or failed, a rebuild caught up) arrives on one channel and is handled,
//! in order, by the registry's own thread.

mod adoption;
mod dead_letters;
mod generation;
mod handle;
mod inspect;
mod lifecycle;
mod snapshots;
mod status;

pub use generation::{Generation, Role};
pub use handle::ProjectorHandle;
pub use lifecycle::{DeployOptions, ModuleSource};
pub use snapshots::Restored;

use super::catalog::{Catalog, Deployment};
use super::control::{Report, Reports, RunnerEvent, Spawner};
use super::error::{LifecycleError, RegistryError, StorageError};
use super::shared::SharedDeployments;
use crate::data_dir::DataDir;
use crate::engine::{CompileSource, Engine, Module, ModuleError};
use crate::log::EventLog;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

/// How the registry runs its projectors.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Starts runner threads.
    pub spawner: Spawner,
    /// How often a runner makes its view durable (an `fsync`): a crash replays at most about
    /// this much of the log per projector. Default [`DURABLE_INTERVAL`](crate::store::DURABLE_INTERVAL).
    pub view_sync_interval: std::time::Duration,
    /// Modules kept per projector for rollback; stored modules no projector needs are deleted.
    pub keep_modules: usize,
    /// The catch-up cache's budget, shared by every runner (and verification) of the process.
    pub cache: Arc<crate::store::CacheBudget>,
    /// The deployments the nodes of a cluster share (`None`: a single node). With them, every
    /// change is recorded there before this node's catalog, and no projector starts at open:
    /// each starts when this node comes to own it ([`Registry::adopt`]).
    pub shared: Option<Arc<dyn SharedDeployments>>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            spawner: Spawner::default(),
            view_sync_interval: crate::store::DURABLE_INTERVAL,
            keep_modules: crate::projector::catalog::KEEP_MODULES,
            cache: Arc::new(crate::store::CacheBudget::default()),
            shared: None,
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
    dir: DataDir,
    catalog: Catalog,
    projectors: RwLock<BTreeMap<String, Arc<ProjectorHandle>>>,
    /// Serializes changes to deployments (compiling happens before, in parallel).
    changing: Mutex<()>,
    metrics: super::ProjectorMetrics,
    spawner: Spawner,
    /// How often a runner makes its view durable (see [`RegistryOptions`]).
    view_sync_interval: std::time::Duration,
    /// The catch-up cache's budget (see [`RegistryOptions`]).
    cache: Arc<crate::store::CacheBudget>,
    /// The cluster's shared deployments (see [`RegistryOptions`]).
    shared: Option<Arc<dyn SharedDeployments>>,
    reports: Reports,
    /// The registry's thread, handling reports; joined at shutdown.
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The next runner's id (see [`Report::run`]).
    runs: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// Opens the catalog in `dir` and starts every deployed projector from its checkpoint,
    /// resuming any rebuild or reload trial in progress. A generation whose module fails to load
    /// is listed as faulted; the serving view still answers queries.
    pub fn open(
        dir: &DataDir,
        engine: Engine,
        log: EventLog,
        options: RegistryOptions,
    ) -> Result<Registry, RegistryError> {
        let catalog_error = |source| RegistryError::Catalog {
            path: dir.catalog().display().to_string(),
            source,
        };
        let catalog = Catalog::open(dir, options.keep_modules).map_err(catalog_error)?;
        let deployments = catalog.deployments().map_err(catalog_error)?;
        let (reports, inbox) = tokio::sync::mpsc::unbounded_channel();
        let registry = Registry {
            inner: Arc::new(Inner {
                engine,
                log,
                dir: dir.clone(),
                catalog,
                projectors: RwLock::new(BTreeMap::new()),
                changing: Mutex::new(()),
                metrics: super::ProjectorMetrics::default(),
                spawner: options.spawner,
                view_sync_interval: options.view_sync_interval,
                cache: options.cache,
                shared: options.shared.clone(),
                reports,
                supervisor: Mutex::new(None),
                runs: std::sync::atomic::AtomicU64::new(1),
            }),
        };
        // In a cluster, each projector starts when this node comes to own it.
        let deployments = if options.shared.is_some() {
            Vec::new()
        } else {
            deployments
        };
        for (name, deployment) in deployments {
            let handle = registry.resume_deployment(&name, deployment)?;
            registry.insert(Arc::new(handle));
        }
        // Reports sent while the projectors were starting wait in the channel until every
        // projector is known.
        let weak = Arc::downgrade(&registry.inner);
        let supervisor = std::thread::Builder::new()
            .name("prism-registry".into())
            .spawn(move || supervise(weak, inbox))
            .map_err(RegistryError::Spawn)?;
        *registry.inner.supervisor.lock() = Some(supervisor);
        registry.collect_modules();
        Ok(registry)
    }

    /// Deletes stored modules no projector needs (see [`Catalog::collect`]); a failure only
    /// leaves them for the next time. Call it under the `changing` lock, or before serving.
    fn collect_modules(&self) {
        match self.inner.catalog.collect() {
            Ok(deleted) => deleted
                .iter()
                .for_each(|hash| self.inner.engine.forget(hash)),
            Err(e) => tracing::warn!(error = %e, "collecting unused modules failed"),
        }
    }

    /// The event log the projectors follow.
    pub fn log(&self) -> &EventLog {
        &self.inner.log
    }

    /// What the projectors' runners have accumulated.
    pub fn metrics(&self) -> &super::ProjectorMetrics {
        &self.inner.metrics
    }

    /// Every deployed projector, by name.
    pub fn list(&self) -> Vec<Arc<ProjectorHandle>> {
        self.inner.projectors.read().values().cloned().collect()
    }

    /// The projector deployed as `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ProjectorHandle>> {
        self.inner.projectors.read().get(name).cloned()
    }

    /// The hashes of every stored module.
    pub fn modules(&self) -> Result<Vec<String>, StorageError> {
        Ok(self.inner.catalog.modules()?)
    }

    /// Stops every projector, each making its view durable, then handles what their runners
    /// reported before they stopped (a passed trial, a finished rebuild) and stops the
    /// registry's thread.
    pub fn shutdown(&self) {
        {
            let _changing = self.inner.changing.lock();
            for projector in self.list() {
                projector.stop();
            }
        }
        let _ = self.inner.reports.send(Report::Shutdown);
        if let Some(supervisor) = self.inner.supervisor.lock().take() {
            let _ = supervisor.join();
        }
    }

    fn handle(&self, name: &str) -> Result<Arc<ProjectorHandle>, LifecycleError> {
        self.get(name)
            .ok_or_else(|| LifecycleError::NotFound(name.to_string()))
    }

    fn insert(&self, handle: Arc<ProjectorHandle>) {
        self.inner
            .projectors
            .write()
            .insert(handle.name.clone(), handle);
    }

    /// The stored module with `hash`, compiled or from a cache (its compiled code kept).
    fn load(&self, hash: &str) -> Result<(Module, CompileSource), ModuleError> {
        let loaded = self
            .inner
            .engine
            .load(hash, || self.inner.catalog.read_module(hash))?;
        self.inner.engine.keep(&loaded.0);
        Ok(loaded)
    }

    /// Records `projector`'s deployment as `change` leaves it: the catalogs first, then
    /// memory.
    fn save(
        &self,
        projector: &ProjectorHandle,
        change: impl FnOnce(&mut Deployment),
    ) -> Result<(), StorageError> {
        let mut deployment = projector.deployment();
        change(&mut deployment);
        self.record(&projector.name, &deployment)?;
        projector.set_deployment(deployment);
        Ok(())
    }

    /// Records `deployment` as `name`'s: in the cluster's shared catalog first (which refuses
    /// it when this node is not the owner), then in this node's.
    fn record(&self, name: &str, deployment: &Deployment) -> Result<(), StorageError> {
        if let Some(shared) = &self.inner.shared {
            shared.put(name, deployment)?;
        }
        self.inner.catalog.put(name, deployment)?;
        Ok(())
    }

    /// Deletes `name`'s deployment: from the cluster's shared catalog first, then from this
    /// node's.
    fn unrecord(&self, name: &str) -> Result<(), StorageError> {
        if let Some(shared) = &self.inner.shared {
            shared.remove(name)?;
        }
        self.inner.catalog.remove(name)?;
        Ok(())
    }

    /// Handles one runner report (on the registry's thread, under the deploy lock). A report
    /// from a runner no longer in its slot is stale and ignored.
    fn on_report(&self, report: Report) {
        let Report::Runner {
            projector,
            run,
            event,
        } = report
        else {
            return;
        };
        let _changing = self.inner.changing.lock();
        let Some(projector) = self.get(&projector) else {
            return;
        };
        let from_serving = projector.serving().run == run;
        match event {
            RunnerEvent::CaughtUp => {
                if projector.pending().is_some_and(|p| p.run == run) {
                    self.promote(&projector);
                }
            }
            // The runner now runs `record` as proven: the catalog follows it (a newer trial may
            // be under way on top of it).
            RunnerEvent::Proven { record } if from_serving => {
                let saved = self.save(&projector, |d| {
                    if d.trial.as_ref() == Some(&record) {
                        d.trial = None;
                    }
                    d.serving = record;
                });
                if let Err(e) = saved {
                    tracing::error!(projector = %projector.name, error = %e, "recording proven code failed");
                }
            }
            RunnerEvent::TrialFailed { record, error } if from_serving => {
                if projector.deployment().trial.as_ref() != Some(&record) {
                    return;
                }
                if let Err(e) = self.save(&projector, |d| d.trial = None) {
                    tracing::error!(projector = %projector.name, error = %e, "recording a failed trial failed");
                }
                projector.set_reload_error(Some(format!(
                    "module {} failed its first batch: {error}",
                    record.module
                )));
            }
            RunnerEvent::Proven { .. } | RunnerEvent::TrialFailed { .. } => {}
        }
    }

    /// Makes the caught-up pending generation the serving one: its view durable first, then
    /// the catalog, then the switch; the old generation's file goes last.
    fn promote(&self, projector: &ProjectorHandle) {
        let Some(pending) = projector.pending() else {
            return;
        };
        if let Err(e) = pending.store.flush() {
            tracing::error!(projector = %projector.name, error = %e, "making a rebuilt view durable failed; the rebuild stays pending");
            return;
        }
        let saved = self.save(projector, |d| {
            if let Some(record) = d.pending.take() {
                d.serving = record;
                d.trial = None;
            }
        });
        if let Err(e) = saved {
            tracing::error!(projector = %projector.name, error = %e, "recording a promotion failed; the rebuild stays pending");
            return;
        }
        let Some(old) = projector.promote() else {
            return;
        };
        old.stop();
        self.remove_view(&projector.name, old.id);
        tracing::info!(
            projector = %projector.name,
            generation = pending.id,
            "rebuild caught up; now serving"
        );
    }

    fn remove_view(&self, name: &str, id: u64) {
        let path = self.inner.dir.view(name, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing a view file failed")
            }
        }
    }
}

/// The registry's thread: handles runner reports in order until the registry shuts down or
/// is gone. A report whose handling panics is logged and the thread goes on.
fn supervise(registry: Weak<Inner>, mut inbox: tokio::sync::mpsc::UnboundedReceiver<Report>) {
    while let Some(report) = inbox.blocking_recv() {
        if matches!(report, Report::Shutdown) {
            return;
        }
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let registry = Registry { inner };
        let handled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| registry.on_report(report)));
        if handled.is_err() {
            tracing::error!("handling a runner report panicked; the registry goes on");
        }
    }
}

/// Whether `name` is a usable projector name.
fn valid_name(name: &str) -> bool {
    (1..=super::MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
