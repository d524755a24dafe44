//! View snapshots every node shares, in the Object Store `PRISM_SNAPSHOTS`: a projector's owner
//! uploads a packed copy of each of its views ([`crate::store::snapshot`]) now and then and when
//! it hands the projector over; a new owner restores the newest one that fits the deployment
//! and replays only the log after its checkpoint.
//!
//! Objects are named `<projector>/<incarnation>/<generation>/<checkpoint>` (the checkpoint
//! zero-padded, so names sort by it) and carry their [`Label`] as metadata, so choosing one
//! needs no download. The Object Store checks each object's SHA-256 as it is read, and zstd
//! its frames' checksums as it is unpacked: a damaged snapshot is refused, never restored.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, object_store};
use futures::{StreamExt, TryStreamExt};
use std::path::Path;

pub use crate::store::snapshot::Label;

/// The snapshots' object store.
pub const SNAPSHOTS: &str = "PRISM_SNAPSHOTS";

/// The metadata key holding an object's label.
const LABEL: &str = "prism-label";

/// Objects are written in chunks of this size (one acknowledged publish each).
const CHUNK: usize = 512 << 10;

/// The label an object carries, when it is a snapshot's and names it rightly.
fn label_of(info: &object_store::ObjectInfo) -> Option<Label> {
    let label: Label = serde_json::from_str(info.metadata.get(LABEL)?).ok()?;
    (label.object_name() == info.name).then_some(label)
}

/// `file` read as chunks of [`CHUNK`] bytes, at most `rate` bytes a second (0: unbounded), so
/// that snapshots do not take the servers' whole bandwidth from the log; held to a rate, the
/// chunks are smaller (a quarter second's worth), for an even pace.
fn throttled(
    file: tokio::fs::File,
    rate: u64,
) -> tokio_util::io::StreamReader<
    impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    bytes::Bytes,
> {
    let started = tokio::time::Instant::now();
    let size = match rate {
        0 => CHUNK,
        rate => (rate as usize / 4).clamp(4 << 10, CHUNK),
    };
    let chunks = tokio_util::io::ReaderStream::with_capacity(file, size);
    let mut sent = 0u64;
    let paced = chunks.then(move |chunk| {
        let due = match (&chunk, rate) {
            (Ok(bytes), 1..) => {
                sent += bytes.len() as u64;
                Some(started + std::time::Duration::from_secs_f64(sent as f64 / rate as f64))
            }
            _ => None,
        };
        async move {
            if let Some(due) = due {
                tokio::time::sleep_until(due).await;
            }
            chunk
        }
    });
    tokio_util::io::StreamReader::new(Box::pin(paced))
}

/// The shared snapshots.
#[derive(Clone)]
pub struct Snapshots {
    store: object_store::ObjectStore,
}

impl Snapshots {
    /// Opens the snapshots' object store, creating it (replicated `replicas` times) when
    /// missing.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Snapshots> {
        let store = super::object_store(js, SNAPSHOTS, replicas)
            .await
            .context("opening the snapshots' object store")?;
        Ok(Snapshots { store })
    }

    /// Uploads the packed copy at `packed` under `label`, at most `rate` bytes a second (0:
    /// unbounded): its size in bytes. An upload cut short (a node killed) leaves no object:
    /// the label is written after the last chunk.
    pub async fn upload(&self, label: &Label, packed: &Path, rate: u64) -> Result<u64> {
        let name = label.object_name();
        let file = tokio::fs::File::open(packed)
            .await
            .with_context(|| format!("opening {}", packed.display()))?;
        let mut file = throttled(file, rate);
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            chunk_size: Some(CHUNK),
            metadata: [(LABEL.to_string(), serde_json::to_string(label)?)].into(),
            ..Default::default()
        };
        let info = self
            .store
            .put(meta, &mut file)
            .await
            .with_context(|| format!("uploading the snapshot {name}"))?;
        Ok(info.size as u64)
    }

    /// Every snapshot of `projector`, oldest checkpoint first.
    pub async fn list(&self, projector: &str) -> Result<Vec<Label>> {
        let prefix = format!("{projector}/");
        let infos: Vec<object_store::ObjectInfo> = self
            .store
            .list()
            .await
            .context("listing the snapshots")?
            .try_collect()
            .await
            .context("listing the snapshots")?;
        let mut labels: Vec<Label> = infos
            .iter()
            .filter(|info| !info.deleted && info.name.starts_with(&prefix))
            .filter_map(label_of)
            .filter(|label| label.projector == projector)
            .collect();
        labels.sort_by_key(|l| (l.incarnation, l.generation, l.checkpoint));
        Ok(labels)
    }

    /// Downloads the snapshot `label` into the file `to` (checked against its SHA-256 as it
    /// is read).
    pub async fn download(&self, label: &Label, to: &Path) -> Result<u64> {
        let name = label.object_name();
        let mut object = self
            .store
            .get(&name)
            .await
            .with_context(|| format!("fetching the snapshot {name}"))?;
        let mut file = tokio::fs::File::create(to)
            .await
            .with_context(|| format!("creating {}", to.display()))?;
        let size = tokio::io::copy(&mut object, &mut file)
            .await
            .with_context(|| format!("downloading the snapshot {name}"))?;
        file.sync_all().await?;
        Ok(size)
    }

    /// Deletes the snapshots of `projector` but the newest `keep` of each generation in
    /// `kept` (`(incarnation, generation)` pairs), and those of later generations or
    /// deployments than one in `kept` (made by a newer owner): the others are of generations
    /// replaced or of an earlier deployment of the name. Answers how many it deleted. With
    /// `kept` empty (the projector deleted), deletes them all.
    pub async fn collect(
        &self,
        projector: &str,
        kept: &[(u64, u64)],
        keep: usize,
    ) -> Result<usize> {
        let labels = self.list(projector).await?;
        let mut deleted = 0;
        for label in &labels {
            let of = (label.incarnation, label.generation);
            let newer = labels
                .iter()
                .filter(|l| (l.incarnation, l.generation) == of && l.checkpoint > label.checkpoint)
                .count();
            // Of a later deployment or generation than those kept (a stale caller's view):
            // never deleted.
            let later = !kept.is_empty() && kept.iter().all(|k| *k < of);
            if (!kept.contains(&of) && !later) || (kept.contains(&of) && newer >= keep.max(1)) {
                self.delete(label).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes one snapshot.
    pub async fn delete(&self, label: &Label) -> Result<()> {
        let name = label.object_name();
        self.store
            .delete(&name)
            .await
            .with_context(|| format!("deleting the snapshot {name}"))
    }
}
