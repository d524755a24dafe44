//! How a node adopts a projector it has come to own: it takes the shared deployment over (the
//! catalog's revision is the fencing token), notes the log's head its queries must wait for,
//! and starts it from the newest views there are (its own, or snapshots).

use super::Cluster;
use crate::cluster::CatalogError;
use crate::cluster::catalog::Stored;
use crate::projector::{Deployment, Registry};
use std::collections::{BTreeMap, HashMap};

impl Cluster {
    /// Makes ready the code of the projectors that come to this node — rendezvous hashing
    /// gives them to it while another node still holds their lease (a handover under way, or
    /// this node just joined) — or would come to it if their owner died (it is next in their
    /// ranking), so that adopting them need not compile it. Once per module.
    pub(super) fn warm_incoming(
        &self,
        registry: &Registry,
        deployments: &BTreeMap<String, Stored>,
    ) {
        for (name, stored) in deployments {
            let (first, next) = self.ranked(name);
            let me = Some(&self.options.node_id);
            let mine = first.as_ref() == me || next.as_ref() == me;
            if !mine || self.owns(name).is_some() || registry.get(name).is_some() {
                continue;
            }
            let Ok(deployment) = serde_json::from_slice::<Deployment>(&stored.record) else {
                continue;
            };
            let module = deployment.latest().module.clone();
            if self.warmed.lock().insert(name.clone(), module.clone()) == Some(module) {
                continue;
            }
            let (registry, name) = (registry.clone(), name.clone());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = registry.warm(&deployment) {
                    tracing::debug!(projector = %name, error = %e, "readying a projector's code ahead of its handover");
                }
            });
        }
    }

    /// Takes over the shared deployment of `name`, whose lease this node holds: reads it
    /// afresh and writes it again at the revision read. The revision is the catalog's fencing
    /// token: a change the previous owner checked against its lease and sent late is refused
    /// by its compare-and-set (and one that landed first is what this read finds, or the
    /// rewrite is refused and the next tick reads again). The record, at its new revision;
    /// `None` when there is none, or it changed meanwhile.
    pub async fn take_over(&self, name: &str) -> anyhow::Result<Option<Stored>> {
        if self.owns(name).is_none() {
            return Ok(None);
        }
        let Some(stored) = self.catalog.get(name).await? else {
            return Ok(None);
        };
        let record = stored.record.clone();
        match self
            .catalog
            .put(name, record.clone(), Some(stored.revision))
            .await
        {
            Ok(revision) => {
                self.revisions.lock().insert(name.to_string(), revision);
                Ok(Some(Stored { record, revision }))
            }
            Err(CatalogError::Changed { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn adopt(&self, registry: &Registry, name: &str) {
        let tenure = self.tenure(name);
        let stored = match self.take_over(name).await {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                tracing::debug!(projector = %name, "changed while adopting it; read again at the next tick");
                return;
            }
            Err(e) => {
                tracing::warn!(projector = %name, error = %e, "taking over the shared deployment; again at the next tick");
                return;
            }
        };
        let deployment: Deployment = match serde_json::from_slice(&stored.record) {
            Ok(deployment) => deployment,
            Err(e) => {
                tracing::error!(projector = %name, error = %e, "an unreadable shared deployment");
                return;
            }
        };
        // Its queries wait until it has applied everything appended before it took over: the
        // previous owner can have served no later view. The head asked of the stream's leader,
        // not this node's last news of it.
        let log = self.log.clone();
        let head = match tokio::task::spawn_blocking(move || log.current_head()).await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => {
                tracing::warn!(projector = %name, error = %e, "reading the log's head; adopted at the next tick");
                return;
            }
            Err(e) => {
                tracing::error!(projector = %name, error = %e, "reading the log's head panicked");
                return;
            }
        };
        {
            // Under the lock a lease taken again marks: that mark is never overwritten.
            let mut catching_up = self.catching_up.lock();
            if self.tenure(name) != tenure {
                return;
            }
            catching_up.insert(name.to_string(), head);
        }
        let (adopting, adopted) = (registry.clone(), name.to_string());
        let result =
            tokio::task::spawn_blocking(move || adopting.adopt(&adopted, deployment)).await;
        // The lease given up while it loaded (a node joined, say), or given up and taken
        // again (the deployment read and the head may be older than what another owner served
        // meanwhile): stopped at once; adopted afresh if this node owns it.
        if self.owns(name).is_none() || self.tenure(name) != tenure {
            self.unload(registry, name).await;
            return;
        }
        match result {
            Ok(Ok(Some(restored))) => self.restored(registry, name, restored),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                let error = crate::projector::error::chain(&e);
                tracing::error!(projector = %name, %error, "adopting a projector failed; retried at the next tick");
            }
            Err(e) => {
                tracing::error!(projector = %name, error = %e, "adopting a projector panicked")
            }
        }
    }
}

/// The adoptions under way, one at most per projector.
#[derive(Default)]
pub(super) struct Adoptions {
    pub(super) tasks: tokio::task::JoinSet<()>,
    /// The projector each task adopts.
    pub(super) names: HashMap<tokio::task::Id, String>,
}

impl Adoptions {
    /// Forgets the adoptions that ended (each handles its own errors; one that panicked is
    /// tried again at the next tick).
    pub(super) fn reap(&mut self) {
        while let Some(ended) = self.tasks.try_join_next_with_id() {
            let id = match ended {
                Ok((id, ())) => id,
                Err(e) => {
                    tracing::error!(error = %e, "an adoption panicked");
                    e.id()
                }
            };
            self.names.remove(&id);
        }
    }
}
