//! Snapshots of a projector's views, in a cluster: copies of the views running here, taken
//! while they serve (the node uploads them), and at adoption the newest snapshot that fits the
//! deployment restored in place of an older local view, so the new owner replays only the log
//! after its checkpoint.
//!
//! A snapshot fits generation `g` of a deployment when it copies `g` of the same incarnation,
//! counts the deployment's dead-letter actions (one taken before a retry or a discard misses
//! its change) and was written by the code the deployment runs on `g`. The last rule matters
//! after a continue-mode reload: a snapshot from before it would have the tail replayed by the
//! new code, though the old code applied those events on the previous owner.

use super::Registry;
use crate::projector::catalog::{Deployment, GenerationRecord};
use crate::projector::error::{LifecycleError, StorageError};
use crate::projector::shared::SharedError;
use crate::store::ViewStore;
use crate::store::snapshot::Label;
use std::path::Path;

/// A view restored from a snapshot at adoption.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    /// The generation.
    pub generation: u64,
    /// The snapshot's checkpoint: the log after it is replayed.
    pub checkpoint: u64,
    /// The checkpoint of the view this node kept (0: none, or not of this deployment).
    pub local: u64,
    /// Milliseconds fetching, unpacking and checking it.
    pub took_ms: u64,
}

impl Registry {
    /// Makes the code of `deployment` ready on this node before it comes to own the projector
    /// (a handover on its way): its modules fetched from the shared store and compiled into
    /// the local cache, so that adopting it loads them at once. Blocking.
    pub fn warm(&self, deployment: &Deployment) -> Result<(), LifecycleError> {
        let records = [
            Some(&deployment.serving),
            deployment.trial.as_ref(),
            deployment.pending.as_ref(),
        ];
        for record in records.into_iter().flatten() {
            if self.has_module(&record.module)? {
                self.load(&record.module)
                    .map_err(|e| LifecycleError::Deploy(e.into()))?;
            }
        }
        Ok(())
    }

    /// A fresh scratch directory in the data dir (removed when dropped).
    pub fn scratch(&self, prefix: &str) -> std::io::Result<tempfile::TempDir> {
        self.inner.dir.scratch(prefix)
    }

    /// The generations of `name` running here (the serving one, then a pending rebuild), the
    /// checkpoints their views have committed and the record of the code proven on each (what
    /// a snapshot of it would carry).
    pub fn view_states(&self, name: &str) -> Vec<(u64, u64, Option<Vec<u8>>)> {
        let Some(handle) = self.get(name) else {
            return Vec::new();
        };
        [Some(handle.serving()), handle.pending()]
            .into_iter()
            .flatten()
            .map(|g| {
                let proven = g.store.proven_code().ok().flatten();
                (g.id, g.store.checkpoint().unwrap_or(0), proven)
            })
            .collect()
    }

    /// Copies the view of generation `generation` of `name`, running here, into the new redb
    /// file `into` (one read transaction; the runner goes on meanwhile): the snapshot's label.
    /// Blocking.
    pub fn copy_view(
        &self,
        name: &str,
        generation: u64,
        into: &Path,
    ) -> Result<Label, LifecycleError> {
        let handle = self.handle(name)?;
        // Read before the copy's transaction: an action counted here has committed its change
        // to the view already (the view commits first, the count follows).
        let deployment = handle.deployment();
        let view = [Some(handle.serving()), handle.pending()]
            .into_iter()
            .flatten()
            .find(|g| g.id == generation)
            .ok_or_else(|| LifecycleError::NotFound(format!("{name} generation {generation}")))?;
        let copied = view
            .store
            .copy_to(into)
            .map_err(|e| LifecycleError::Storage(e.into()))?;
        Ok(Label {
            projector: name.to_string(),
            incarnation: deployment.incarnation,
            generation,
            checkpoint: copied.checkpoint,
            dead_letter_actions: deployment.dead_letter_actions,
            proven: copied
                .proven
                .map(|p| String::from_utf8_lossy(&p).into_owned()),
            entries: copied.entries,
        })
    }

    /// Fetches, for each generation of `deployment`, the newest stored snapshot that fits it
    /// and is past the view this node keeps (`kept`: its local views are of this very
    /// deployment), unpacked and checked in scratch space; [`Registry::place_views`] puts them
    /// in place. A snapshot that fails its checks is passed over for the next older one; the
    /// servers not answering is an error (the adoption is tried again, not turned into a
    /// rebuild from position 1). Blocking; needs no lock: it touches no file of the projector.
    pub(super) fn fetch_views(
        &self,
        name: &str,
        deployment: &Deployment,
        kept: bool,
    ) -> Result<Vec<Fetched>, StorageError> {
        let Some(shared) = &self.inner.shared else {
            return Ok(Vec::new());
        };
        let labels = shared.snapshots(name)?;
        let mut fetched = Vec::new();
        let records = [Some(&deployment.serving), deployment.pending.as_ref()];
        for record in records.into_iter().flatten() {
            let path = self.inner.dir.view(name, record.id);
            let local = match kept && path.exists() {
                true => ViewStore::open(&path)
                    .and_then(|v| v.checkpoint())
                    .unwrap_or(0),
                false => 0,
            };
            let mut candidates: Vec<&Label> = labels
                .iter()
                .filter(|l| fits(l, deployment, record) && l.checkpoint > local)
                .collect();
            candidates.sort_by_key(|l| std::cmp::Reverse(l.checkpoint));
            for label in candidates {
                let started = std::time::Instant::now();
                let scratch = self.inner.dir.scratch("restore-")?;
                let file = scratch.path().join("view.redb");
                let readable = match shared.fetch_snapshot(label, &file) {
                    Ok(()) => check(&file, label),
                    Err(SharedError::Damaged(why)) => Err(why),
                    Err(e) => return Err(e.into()),
                };
                if let Err(why) = readable {
                    tracing::warn!(projector = name, snapshot = %label.object_name(), %why, "a snapshot passed over");
                    continue;
                }
                fetched.push(Fetched {
                    restored: Restored {
                        generation: record.id,
                        checkpoint: label.checkpoint,
                        local,
                        took_ms: started.elapsed().as_millis() as u64,
                    },
                    file,
                    _scratch: scratch,
                });
                break;
            }
        }
        Ok(fetched)
    }

    /// Puts the views [`Registry::fetch_views`] fetched in place of `name`'s (under the
    /// registry's lock, before its views are opened): the views restored.
    pub(super) fn place_views(
        &self,
        name: &str,
        fetched: Vec<Fetched>,
    ) -> Result<Vec<Restored>, StorageError> {
        let mut restored = Vec::new();
        for view in fetched {
            let path = self.inner.dir.view(name, view.restored.generation);
            std::fs::create_dir_all(self.inner.dir.projector(name))?;
            std::fs::rename(&view.file, &path)?;
            tracing::info!(projector = name, restored = ?view.restored, "view restored from a snapshot");
            restored.push(view.restored);
        }
        Ok(restored)
    }
}

/// A snapshot fetched, unpacked and checked, waiting in scratch space to be put in place.
pub(super) struct Fetched {
    restored: Restored,
    file: std::path::PathBuf,
    _scratch: tempfile::TempDir,
}

/// Whether the snapshot `label` may stand for the view of generation `record` of `deployment`
/// (see the module's docs).
fn fits(label: &Label, deployment: &Deployment, record: &GenerationRecord) -> bool {
    let Some(proven) = &label.proven else {
        return false;
    };
    let written_by = |r: &GenerationRecord| proven.as_bytes() == r.to_json().as_slice();
    // A reload on trial that passed on the previous owner (its catalog write lost): restored,
    // then promoted as at a restart.
    let trial_passed =
        record.id == deployment.serving.id && deployment.trial.as_ref().is_some_and(written_by);
    label.incarnation == deployment.incarnation
        && label.generation == record.id
        && label.dead_letter_actions == deployment.dead_letter_actions
        && label.checkpoint > 0
        && (written_by(record) || trial_passed)
}

/// Opens a fetched view file (every page checked: one that fails is passed over, not left in
/// place to fail the projector's start at every try) and confirms it holds what its label says.
fn check(path: &Path, label: &Label) -> Result<(), String> {
    let view = ViewStore::open(path).map_err(|e| e.to_string())?;
    let checkpoint = view.checkpoint().map_err(|e| e.to_string())?;
    let proven = view.proven_code().map_err(|e| e.to_string())?;
    let proven = proven.map(|p| String::from_utf8_lossy(&p).into_owned());
    if checkpoint != label.checkpoint || proven != label.proven {
        return Err(format!(
            "it holds checkpoint {checkpoint}, not the {} its label says",
            label.checkpoint
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fits;
    use crate::projector::ErrorPolicy;
    use crate::projector::catalog::{Deployment, GenerationRecord};
    use crate::store::snapshot::Label;

    fn record(id: u64, module: &str, on_error: ErrorPolicy) -> GenerationRecord {
        GenerationRecord {
            id,
            module: module.into(),
            config: String::new(),
            schema_version: 1,
            on_error,
        }
    }

    /// Deployment 7 serving module `a` on generation 1, two dead-letter actions taken.
    fn deployment() -> Deployment {
        Deployment {
            serving: record(1, "a", ErrorPolicy::Stop),
            trial: None,
            pending: None,
            paused: false,
            incarnation: 7,
            dead_letter_actions: 2,
        }
    }

    fn label(generation: u64, checkpoint: u64, proven: Option<&GenerationRecord>) -> Label {
        Label {
            projector: "orders".into(),
            incarnation: 7,
            generation,
            checkpoint,
            dead_letter_actions: 2,
            proven: proven.map(|r| String::from_utf8(r.to_json()).unwrap()),
            entries: 1,
        }
    }

    #[test]
    fn a_snapshot_fits_only_the_deployment_and_code_that_wrote_it() {
        let d = deployment();
        let a = record(1, "a", ErrorPolicy::Stop);
        let good = label(1, 100, Some(&a));
        assert!(fits(&good, &d, &d.serving));
        // Another deployment of the name, another generation, fewer dead-letter actions (a
        // retry's change missing), nothing applied, no record of the code: no.
        let other = |change: fn(&mut Label)| {
            let mut l = good.clone();
            change(&mut l);
            l
        };
        assert!(!fits(&other(|l| l.incarnation = 6), &d, &d.serving));
        assert!(!fits(&other(|l| l.incarnation = 8), &d, &d.serving));
        assert!(!fits(&other(|l| l.generation = 2), &d, &d.serving));
        assert!(!fits(&other(|l| l.dead_letter_actions = 1), &d, &d.serving));
        assert!(!fits(&other(|l| l.dead_letter_actions = 3), &d, &d.serving));
        assert!(!fits(&other(|l| l.checkpoint = 0), &d, &d.serving));
        assert!(!fits(&other(|l| l.proven = None), &d, &d.serving));

        // A continue-mode reload to `b` was proven: a snapshot still recording `a` would have
        // its tail replayed by `b`, though `a` applied it. So would one whose only difference
        // is the error policy.
        let b = record(1, "b", ErrorPolicy::Stop);
        let reloaded = Deployment {
            serving: b.clone(),
            ..deployment()
        };
        assert!(!fits(&good, &reloaded, &reloaded.serving));
        assert!(fits(&label(1, 100, Some(&b)), &reloaded, &reloaded.serving));
        let skipping = Deployment {
            serving: record(1, "a", ErrorPolicy::Skip),
            ..deployment()
        };
        assert!(!fits(&good, &skipping, &skipping.serving));

        // `b` on trial: the serving code's snapshot fits, and so does one recording `b` (its
        // trial passed on the previous owner, whose catalog write was lost).
        let on_trial = Deployment {
            trial: Some(b.clone()),
            ..deployment()
        };
        assert!(fits(&good, &on_trial, &on_trial.serving));
        assert!(fits(&label(1, 100, Some(&b)), &on_trial, &on_trial.serving));
        let c = record(1, "c", ErrorPolicy::Stop);
        assert!(!fits(
            &label(1, 100, Some(&c)),
            &on_trial,
            &on_trial.serving
        ));

        // A rebuild pending on generation 2: its own snapshots fit it, not the serving one's,
        // and a trial on the serving generation says nothing of generation 2.
        let two = record(2, "b", ErrorPolicy::Stop);
        let rebuilding = Deployment {
            pending: Some(two.clone()),
            trial: Some(record(1, "c", ErrorPolicy::Stop)),
            ..deployment()
        };
        let pending = rebuilding.pending.as_ref().unwrap();
        assert!(fits(&label(2, 50, Some(&two)), &rebuilding, pending));
        assert!(!fits(&label(2, 50, Some(&a)), &rebuilding, pending));
        assert!(!fits(&good, &rebuilding, pending));
        let trial = rebuilding.trial.as_ref();
        assert!(!fits(&label(2, 50, trial), &rebuilding, pending));
    }
}
