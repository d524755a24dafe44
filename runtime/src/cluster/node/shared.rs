//! The node as the registry's [`SharedDeployments`]: a change of a deployment is written to the
//! shared catalog at the revision this node last saw, and only while it holds the projector's
//! lease; modules and snapshots come from the shared stores.

use super::Cluster;
use crate::cluster::CatalogError;
use crate::projector::Deployment;
use crate::projector::shared::{SharedDeployments, SharedError};
use crate::store::snapshot::Label;
use std::path::Path;

fn shared_error(name: &str, e: CatalogError) -> SharedError {
    match e {
        CatalogError::Changed { .. } => SharedError::Changed(name.to_string()),
        e => SharedError::Unavailable(crate::projector::error::chain(&e)),
    }
}

impl SharedDeployments for Cluster {
    fn put(&self, name: &str, deployment: &Deployment) -> Result<(), SharedError> {
        if self.owns(name).is_none() {
            return Err(SharedError::NotOwner(name.to_string()));
        }
        let revision = self.revisions.lock().get(name).copied();
        let record = serde_json::to_vec(deployment).expect("a deployment serializes");
        let record = bytes::Bytes::from(record);
        let written = self
            .block_on(self.catalog.put(name, record.clone(), revision))
            .map_err(|e| shared_error(name, e))?;
        self.revisions.lock().insert(name.to_string(), written);
        let stored = crate::cluster::catalog::Stored {
            record,
            revision: written,
        };
        self.known.lock().insert(name.to_string(), stored);
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), SharedError> {
        if self.owns(name).is_none() {
            return Err(SharedError::NotOwner(name.to_string()));
        }
        let Some(revision) = self.revisions.lock().get(name).copied() else {
            return Err(SharedError::Changed(name.to_string()));
        };
        self.block_on(self.catalog.remove(name, revision))
            .map_err(|e| shared_error(name, e))?;
        self.revisions.lock().remove(name);
        self.known.lock().remove(name);
        // Its snapshots go with it (a name deployed again starts a new incarnation, whose
        // uploads would collect any left behind).
        if let Err(e) = self.block_on(self.snapshots.collect(name, &[], 1, || true)) {
            tracing::warn!(projector = name, error = %e, "deleting a deleted projector's snapshots");
        }
        Ok(())
    }

    fn store_module(&self, hash: &str, component: &[u8]) -> Result<(), SharedError> {
        let stored = self
            .block_on(self.catalog.put_module(component))
            .map_err(|e| SharedError::Unavailable(format!("{e:#}")))?;
        if stored != hash {
            return Err(SharedError::Unavailable(format!(
                "the module {hash} was stored as {stored}"
            )));
        }
        Ok(())
    }

    fn holds(&self, name: &str) -> bool {
        self.owns(name).is_some()
    }

    fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, SharedError> {
        self.block_on(self.catalog.module(hash))
            .map_err(|e| shared_error(hash, e))
    }

    fn snapshots(&self, name: &str) -> Result<Vec<Label>, SharedError> {
        self.block_on(self.snapshots.list(name))
            .map_err(|e| SharedError::Unavailable(format!("{e:#}")))
    }

    fn fetch_snapshot(&self, label: &Label, into: &Path) -> Result<(), SharedError> {
        let packed = into.with_extension("zst");
        let fetched = self
            .block_on(self.snapshots.download(label, &packed))
            .map_err(
                |e| match e.downcast_ref::<crate::cluster::snapshots::Damaged>() {
                    Some(_) => SharedError::Damaged(format!("{e:#}")),
                    None => SharedError::Unavailable(format!("{e:#}")),
                },
            )
            .and_then(|_| {
                crate::store::snapshot::decompress(&packed, into).map_err(|e| {
                    SharedError::Damaged(format!(
                        "unpacking the snapshot {}: {e}",
                        label.object_name()
                    ))
                })
            });
        let _ = std::fs::remove_file(&packed);
        fetched
    }
}
