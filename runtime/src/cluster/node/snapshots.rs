//! Snapshots of the views this node owns: uploaded every `snapshot_interval` (each view that
//! changed since) and when a projector is handed over — before its runners stop, so its
//! queries are answered meanwhile and the next owner replays only what was applied after the
//! copy. Uploads are fenced like every act of an owner: only while this node holds the
//! projector's lease (checked before the copy and again before the upload). A late one would
//! still be a consistent copy of the deployment's view at its checkpoint; the fence keeps a
//! node that lost the projector from spending the servers' bandwidth on it.

use super::Cluster;
use crate::projector::{Registry, Restored};
use crate::store::snapshot::{Label, compress};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

/// How long a handover waits for its snapshot before it stops the projector without one (the
/// next owner then replays from the newest snapshot there is).
pub(super) const HANDOVER_SNAPSHOT_LIMIT: Duration = Duration::from_secs(30);

/// How often a node looks for the chunks of cut uploads.
const SWEEP_EVERY: Duration = Duration::from_secs(120);

/// What this node last uploaded or restored of each view (by projector and generation): the
/// deployment's incarnation, the view's checkpoint, the count of dead-letter actions then and
/// the code proven on the view (a reload changes it at the same checkpoint).
pub(super) type Latest = std::collections::HashMap<(String, u64), LatestView>;

/// See [`Latest`].
pub(super) type LatestView = (u64, u64, u64, Option<Vec<u8>>);

/// A snapshot uploaded, and what it cost.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub label: Label,
    /// Its packed size.
    pub bytes: u64,
    /// Milliseconds copying and packing the view.
    pub copy_ms: u64,
    /// Milliseconds uploading it.
    pub upload_ms: u64,
}

impl Cluster {
    /// Uploads a snapshot of each view of `name` (running here) that changed since this node
    /// last uploaded or restored it, then deletes the ones no longer kept: what it uploaded.
    pub async fn snapshot(&self, registry: &Registry, name: &str) -> Result<Vec<Uploaded>> {
        let _one_at_a_time = self.snapshotting.lock().await;
        let mut uploaded = Vec::new();
        for (generation, checkpoint, proven) in registry.view_states(name) {
            let Some(projector) = registry.get(name) else {
                break;
            };
            let now = (
                projector.incarnation,
                checkpoint,
                projector.deployment().dead_letter_actions,
                proven,
            );
            let key = (name.to_string(), generation);
            if checkpoint == 0 || self.latest.lock().get(&key) == Some(&now) {
                continue;
            }
            anyhow::ensure!(self.owns(name).is_some(), "this node no longer owns {name}");
            let started = Instant::now();
            let scratch = registry.scratch("snapshot-")?;
            let dir = scratch.path().to_path_buf();
            let (copying, copied) = (registry.clone(), name.to_string());
            let label = tokio::task::spawn_blocking(move || -> Result<Label> {
                let view = dir.join("view.redb");
                let label = copying.copy_view(&copied, generation, &view)?;
                compress(&view, &dir.join("view.zst")).context("packing a snapshot")?;
                std::fs::remove_file(&view)?;
                Ok(label)
            })
            .await??;
            let copy_ms = started.elapsed().as_millis() as u64;
            anyhow::ensure!(self.owns(name).is_some(), "this node no longer owns {name}");
            let bytes = self
                .snapshots
                .upload(
                    &label,
                    &scratch.path().join("view.zst"),
                    self.options.snapshot_upload_rate,
                )
                .await?;
            let upload_ms = started.elapsed().as_millis() as u64 - copy_ms;
            tracing::info!(
                projector = name,
                generation,
                checkpoint = label.checkpoint,
                entries = label.entries,
                bytes,
                copy_ms,
                upload_ms,
                "snapshot uploaded"
            );
            let uploaded_now = (
                label.incarnation,
                label.checkpoint,
                label.dead_letter_actions,
                label.proven.as_ref().map(|p| p.as_bytes().to_vec()),
            );
            self.latest.lock().insert(key, uploaded_now);
            uploaded.push(Uploaded {
                label,
                bytes,
                copy_ms,
                upload_ms,
            });
        }
        // Collected only by the owner: one that lost the lease mid-upload must not delete
        // what the new owner keeps.
        let owner = self.owns(name).is_some();
        if let (false, true, Some(projector)) = (uploaded.is_empty(), owner, registry.get(name)) {
            let kept: Vec<(u64, u64, Option<String>)> = registry
                .view_states(name)
                .into_iter()
                .map(|(generation, _, proven)| {
                    let proven = proven.map(|p| String::from_utf8_lossy(&p).into_owned());
                    (projector.incarnation, generation, proven)
                })
                .collect();
            let fence = || self.owns(name).is_some();
            self.snapshots
                .collect(name, &kept, self.options.snapshots_kept, fence)
                .await?;
        }
        Ok(uploaded)
    }

    /// One periodic round: snapshots the changed views of every projector this node owns.
    pub(super) async fn snapshot_all(&self, registry: &Registry) {
        for projector in registry.list() {
            if self.owns(&projector.name).is_none() {
                continue;
            }
            if let Err(e) = self.snapshot(registry, &projector.name).await {
                tracing::warn!(projector = %projector.name, error = %format!("{e:#}"), "snapshotting a projector's views");
            }
        }
    }

    /// Hands `name` over to the node it belongs to now: snapshots its views while they still
    /// serve (for [`HANDOVER_SNAPSHOT_LIMIT`] at most), then stops it. The caller releases
    /// the lease.
    pub(super) async fn hand_over(&self, registry: &Registry, name: &str) {
        let snapshot = tokio::time::timeout(HANDOVER_SNAPSHOT_LIMIT, self.snapshot(registry, name));
        match snapshot.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(projector = name, error = %format!("{e:#}"), "no snapshot at handover")
            }
            Err(_) => tracing::warn!(
                projector = name,
                "no snapshot at handover: it took too long"
            ),
        }
        self.unload(registry, name).await;
    }

    /// Sweeps the chunks of cut uploads out of the snapshots' store now and then, for good
    /// (every node does: a purge is the same done twice).
    pub(super) async fn sweep(self: std::sync::Arc<Self>) {
        let mut seen = crate::cluster::snapshots::Unnamed::new();
        let mut ticks = tokio::time::interval(SWEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let after = crate::cluster::snapshots::ORPHANED_AFTER;
            if let Err(e) = self.snapshots.sweep(&mut seen, after).await {
                tracing::warn!(error = %format!("{e:#}"), "sweeping cut snapshot uploads");
            }
        }
    }

    /// Records the views an adoption restored (for `GET /cluster`), and that they need no
    /// upload until they change.
    pub(super) fn restored(&self, registry: &Registry, name: &str, restored: Vec<Restored>) {
        let Some(projector) = registry.get(name) else {
            return;
        };
        let (incarnation, actions) = (
            projector.incarnation,
            projector.deployment().dead_letter_actions,
        );
        let states = registry.view_states(name);
        let mut latest = self.latest.lock();
        for view in &restored {
            let key = (name.to_string(), view.generation);
            let proven = states
                .iter()
                .find(|(generation, ..)| *generation == view.generation)
                .and_then(|(_, _, proven)| proven.clone());
            latest.insert(key, (incarnation, view.checkpoint, actions, proven));
        }
        self.restores.lock().insert(name.to_string(), restored);
    }

    /// The views this node restored from snapshots when it adopted its projectors, by name.
    pub fn restores(&self) -> std::collections::BTreeMap<String, Vec<Restored>> {
        self.restores
            .lock()
            .iter()
            .map(|(name, restored)| (name.clone(), restored.clone()))
            .collect()
    }
}
