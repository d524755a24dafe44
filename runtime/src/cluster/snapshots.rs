//! View snapshots every node shares, in the Object Store `PRISM_SNAPSHOTS`: a projector's owner
//! uploads a packed copy of each of its views ([`crate::store::snapshot`]) now and then and when
//! it hands the projector over; a new owner restores the newest one that fits the deployment
//! and replays only the log after its checkpoint.
//!
//! Objects are named `<projector>/<incarnation>/<generation>/<checkpoint>` (the checkpoint
//! zero-padded, so names sort by it) and carry their [`Label`] as metadata, so choosing one
//! needs no download. The Object Store checks each object's SHA-256 as it is read, and zstd
//! its frames' checksums as it is unpacked: a damaged snapshot is refused, never restored.
//!
//! Nothing accumulates: a deleted snapshot's tombstone (the Object Store keeps one per name,
//! and every name is new) is purged with it, and the chunks of uploads cut short (a node
//! killed mid-upload) are swept once they have stopped growing for [`ORPHANED_AFTER`].

use anyhow::{Context, Result};
use async_nats::jetstream::{self, object_store};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

pub use crate::store::snapshot::Label;

/// The snapshots' object store.
pub const SNAPSHOTS: &str = "PRISM_SNAPSHOTS";

/// The metadata key holding an object's label.
const LABEL: &str = "prism-label";

/// Objects are written in chunks of this size (one acknowledged publish each).
const CHUNK: usize = 512 << 10;

/// How long the chunks of an upload no object names must have stopped growing before they are
/// taken for the remains of a cut upload and purged. An upload under way adds a chunk every
/// second at most (4 KiB chunks at 4 KiB/s, the slowest cap; one a publish's time limit at
/// worst). A node stopped longer mid-upload and then continued names an object whose chunks
/// are gone: a download refuses it as damaged (see [`Damaged`]).
pub const ORPHANED_AFTER: Duration = Duration::from_secs(600);

/// How long listing the snapshots may take (a listing whose last entry is purged before it is
/// delivered would otherwise wait for the next write to the store).
const LIST_LIMIT: Duration = Duration::from_secs(10);

/// A snapshot that cannot be restored however often it is fetched: chunks missing, or its
/// bytes not those its SHA-256 says. Passed over for an older one.
#[derive(Debug)]
pub struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// What a sweep saw of the uploads no object names: by nuid, their chunk count and since when
/// it has not changed.
pub type Unnamed = HashMap<String, (usize, Instant)>;

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
    /// The stream under the store (its chunks and metadata, by subject).
    stream: jetstream::stream::Stream,
}

impl Snapshots {
    /// Opens the snapshots' object store, creating it (replicated `replicas` times) when
    /// missing.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Snapshots> {
        let store = super::object_store(js, SNAPSHOTS, replicas)
            .await
            .context("opening the snapshots' object store")?;
        let stream = js
            .get_stream(format!("OBJ_{SNAPSHOTS}"))
            .await
            .context("opening the snapshots' object store")?;
        Ok(Snapshots { store, stream })
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

    /// Every object in the store (for [`LIST_LIMIT`] at most).
    async fn objects(&self) -> Result<Vec<object_store::ObjectInfo>> {
        let listing = async {
            let listed = self.store.list().await?;
            listed.try_collect().await.map_err(anyhow::Error::from)
        };
        tokio::time::timeout(LIST_LIMIT, listing)
            .await
            .map_err(|_| anyhow::anyhow!("the servers took over {LIST_LIMIT:?}"))?
            .context("listing the snapshots")
    }

    /// Every snapshot of `projector`, oldest checkpoint first.
    pub async fn list(&self, projector: &str) -> Result<Vec<Label>> {
        let prefix = format!("{projector}/");
        let infos = self.objects().await?;
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
    /// is read): its size. A snapshot whose chunks are not all there, or whose bytes fail
    /// their SHA-256, is refused with [`Damaged`] in the error's chain; a download slower than
    /// 256 KiB/s (after 30 s) is cut, the servers taken for unavailable.
    pub async fn download(&self, label: &Label, to: &Path) -> Result<u64> {
        let name = label.object_name();
        // Its info read; its chunks only once it is read from.
        let mut object = self
            .store
            .get(&name)
            .await
            .with_context(|| format!("fetching the snapshot {name}"))?;
        let info = &object.info;
        let stored: usize = self
            .chunks(&info.nuid)
            .await
            .with_context(|| format!("fetching the snapshot {name}"))?
            .iter()
            .map(|(_, count)| count)
            .sum();
        if stored != info.chunks {
            let why = format!("{stored} of its {} chunks are stored", info.chunks);
            return Err(Damaged(why)).with_context(|| format!("fetching the snapshot {name}"));
        }
        let limit = Duration::from_secs(30) + Duration::from_secs(info.size as u64 / (256 << 10));
        let fetching = async {
            let mut file = tokio::fs::File::create(to)
                .await
                .with_context(|| format!("creating {}", to.display()))?;
            let size = match tokio::io::copy(&mut object, &mut file).await {
                Ok(size) => size,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(Damaged(e.to_string()).into());
                }
                Err(e) => return Err(e.into()),
            };
            file.sync_all().await?;
            anyhow::Ok(size)
        };
        tokio::time::timeout(limit, fetching)
            .await
            .map_err(|_| anyhow::anyhow!("the download took over {limit:?}"))?
            .with_context(|| format!("downloading the snapshot {name}"))
    }

    /// Deletes the snapshots of `projector` but the newest `keep` of each view in `kept`
    /// (`(incarnation, generation, the code proven on it)`: the views its owner runs), and
    /// those of a later deployment of the name than any in `kept` (made by a newer owner): the
    /// others are of generations replaced, of a rebuild cancelled (a later one may reuse its
    /// number, with other code), of code a reload replaced, or of an earlier deployment. With
    /// `kept` empty (the projector deleted), deletes them all. `fence` is asked before each
    /// deletion: the collector still owns the projector. Answers how many it deleted.
    pub async fn collect(
        &self,
        projector: &str,
        kept: &[(u64, u64, Option<String>)],
        keep: usize,
        fence: impl Fn() -> bool,
    ) -> Result<usize> {
        let labels = self.list(projector).await?;
        let latest_incarnation = kept.iter().map(|(incarnation, ..)| *incarnation).max();
        let mut deleted = 0;
        for label in &labels {
            let view = (label.incarnation, label.generation);
            let doomed = match kept.iter().find(|(i, g, _)| (*i, *g) == view) {
                Some((.., proven)) => {
                    let newer = labels
                        .iter()
                        .filter(|l| (l.incarnation, l.generation) == view)
                        .filter(|l| l.proven == *proven && l.checkpoint > label.checkpoint)
                        .count();
                    label.proven != *proven || newer >= keep.max(1)
                }
                None => latest_incarnation.is_none_or(|latest| label.incarnation <= latest),
            };
            if doomed {
                anyhow::ensure!(fence(), "no longer the owner of {projector}");
                self.delete(label).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes one snapshot: its chunks, then the tombstone the store leaves in its place.
    pub async fn delete(&self, label: &Label) -> Result<()> {
        let name = label.object_name();
        self.store
            .delete(&name)
            .await
            .with_context(|| format!("deleting the snapshot {name}"))?;
        let meta = base64::engine::general_purpose::URL_SAFE.encode(&name);
        self.stream
            .purge()
            .filter(format!("$O.{SNAPSHOTS}.M.{meta}"))
            .await
            .with_context(|| format!("purging the tombstone of the snapshot {name}"))?;
        Ok(())
    }

    /// The chunk subjects of the uploads `nuid` matches (a nuid, or `>` for all), with the
    /// number of chunks stored under each.
    async fn chunks(&self, nuid: &str) -> Result<Vec<(String, usize)>> {
        let subjects = self
            .stream
            .info_with_subjects(format!("$O.{SNAPSHOTS}.C.{nuid}"))
            .await?;
        Ok(subjects.try_collect().await?)
    }

    /// The uploads no object names, by nuid, with their chunk counts: cut ones, and those
    /// under way.
    pub async fn unnamed(&self) -> Result<HashMap<String, usize>> {
        let named: BTreeSet<String> = self
            .objects()
            .await?
            .into_iter()
            .map(|info| info.nuid)
            .collect();
        let chunks = self
            .chunks(">")
            .await
            .context("listing the snapshots' chunks")?;
        Ok(chunks
            .into_iter()
            .filter_map(|(subject, count)| {
                let nuid = subject.rsplit('.').next()?.to_string();
                (!named.contains(&nuid)).then_some((nuid, count))
            })
            .collect())
    }

    /// Purges the chunks of uploads that no object names and that have not grown since
    /// `seen` first saw them at their count, `after` ago or more: the remains of cut uploads.
    /// `seen` carries what each sweep saw to the next. Answers how many it purged.
    pub async fn sweep(&self, seen: &mut Unnamed, after: Duration) -> Result<usize> {
        let now = self.unnamed().await?;
        seen.retain(|nuid, (count, _)| now.get(nuid) == Some(count));
        let mut purged = 0;
        for (nuid, count) in now {
            let since = seen
                .entry(nuid.clone())
                .or_insert((count, Instant::now()))
                .1;
            if since.elapsed() < after {
                continue;
            }
            self.stream
                .purge()
                .filter(format!("$O.{SNAPSHOTS}.C.{nuid}"))
                .await
                .with_context(|| format!("purging the chunks of a cut upload ({nuid})"))?;
            tracing::info!(
                nuid,
                chunks = count,
                "purged the chunks of a cut snapshot upload"
            );
            seen.remove(&nuid);
            purged += 1;
        }
        Ok(purged)
    }
}
