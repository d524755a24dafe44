//! In a cluster, a node runs only the projectors it owns: it adopts one when it takes its
//! lease ([`Registry::adopt`]: the shared catalog's record, the modules fetched, then started as
//! at a restart) and unloads one when another node takes it over ([`Registry::unload`]: the
//! runners stopped, the files kept). Views this node kept from an earlier ownership are used
//! again only when its catalog records the very deployment the shared catalog holds; otherwise
//! they are removed. Either way the newest snapshot that fits the deployment is restored when it
//! is past what the node keeps ([`snapshots`](super::snapshots)); with none, the projector
//! rebuilds from the start of the log.

use super::Registry;
use super::snapshots::Restored;
use crate::projector::catalog::Deployment;
use crate::projector::error::{RegistryError, StorageError};
use crate::projector::shared::SharedError;
use std::sync::Arc;

impl Registry {
    /// Whether module `hash` is stored on this node; in a cluster, one missing here is
    /// fetched from the shared modules (and stored) first.
    pub(super) fn has_module(&self, hash: &str) -> Result<bool, StorageError> {
        if self.inner.catalog.has_module(hash) {
            return Ok(true);
        }
        let Some(shared) = &self.inner.shared else {
            return Ok(false);
        };
        match shared.module(hash)? {
            None => Ok(false),
            Some(component) => {
                self.inner.catalog.store_module(hash, &component)?;
                Ok(true)
            }
        }
    }

    /// Starts projector `name` as `deployment` (the shared catalog's record) on this node,
    /// which has just come to own it, its views restored from the newest snapshots that fit
    /// when they are past what this node keeps. Answers the views restored (`None`: it runs
    /// here already). Blocking: call it off the async executor.
    pub fn adopt(
        &self,
        name: &str,
        deployment: Deployment,
    ) -> Result<Option<Vec<Restored>>, RegistryError> {
        if self.get(name).is_some() {
            return Ok(None);
        }
        let recording = |e: StorageError| RegistryError::Recording(name.to_string(), Box::new(e));
        let records = [
            Some(&deployment.serving),
            deployment.trial.as_ref(),
            deployment.pending.as_ref(),
        ];
        for record in records.into_iter().flatten() {
            if !self.has_module(&record.module).map_err(recording)? {
                return Err(recording(StorageError::Shared(SharedError::Unavailable(
                    format!("the module {} is not stored", record.module),
                ))));
            }
        }
        // Snapshots are fetched without the registry's lock: the adoptions after a node's
        // death restore side by side, and the node's other changes do not wait for them.
        let kept = self.keeps(name, &deployment).map_err(recording)?;
        let fetched = self
            .fetch_views(name, &deployment, kept)
            .map_err(recording)?;
        let _changing = self.inner.changing.lock();
        if self.get(name).is_some() {
            return Ok(None);
        }
        // Its files changed meanwhile (forgotten): what was fetched against them is dropped.
        let kept_now = self.keeps(name, &deployment).map_err(recording)?;
        let fetched = if kept_now == kept {
            fetched
        } else {
            Vec::new()
        };
        if !kept_now {
            self.remove_projector_dir(name);
            self.inner
                .catalog
                .put(name, &deployment)
                .map_err(|e| recording(e.into()))?;
        }
        let restored = self.place_views(name, fetched).map_err(recording)?;
        let handle = self.resume_deployment(name, deployment)?;
        self.insert(Arc::new(handle));
        tracing::info!(
            projector = name,
            views_kept = kept_now,
            ?restored,
            "adopted"
        );
        Ok(Some(restored))
    }

    /// Whether this node's catalog records `deployment` as `name`'s: its views, if any, are of
    /// that very deployment.
    fn keeps(&self, name: &str, deployment: &Deployment) -> Result<bool, StorageError> {
        Ok(self
            .inner
            .catalog
            .deployments()?
            .into_iter()
            .any(|(recorded, local)| recorded == name && local == *deployment))
    }

    /// Stops projector `name` on this node (another node owns it now), keeping its record and
    /// files. Answers whether it ran here.
    pub fn unload(&self, name: &str) -> bool {
        let _changing = self.inner.changing.lock();
        let Some(projector) = self.inner.projectors.write().remove(name) else {
            return false;
        };
        projector.stop();
        self.inner.metrics.remove(name);
        tracing::info!(projector = name, "unloaded: another node owns it");
        true
    }

    /// Deletes what this node keeps of projector `name`, which does not run here: its record
    /// and its view files (it was deleted, or changed, by the node owning it).
    pub fn forget(&self, name: &str) -> Result<(), StorageError> {
        let _changing = self.inner.changing.lock();
        if self.get(name).is_some() {
            return Ok(());
        }
        self.inner.catalog.remove(name)?;
        self.remove_projector_dir(name);
        self.collect_modules();
        Ok(())
    }

    /// The projectors this node's catalog records (running here or not).
    pub fn recorded(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .inner
            .catalog
            .deployments()?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }
}
