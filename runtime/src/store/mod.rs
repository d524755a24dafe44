//! A projector generation's own redb file (`projectors/<name>/gen-<n>.redb`): its view table
//! and its checkpoint.
//!
//! The checkpoint is the position of the last event the view reflects. A batch's view writes
//! and its new checkpoint commit in **one** write transaction ([`ViewStore::commit`]), so a crash
//! can never leave them apart: after a restart the projector continues exactly after the
//! checkpoint, and no event is applied twice or skipped.
//!
//! Durability: a view is derivable from the log, so most commits are not `fsync`ed
//! (`Durability::None`): a crash rolls the file back to its last durable commit — an older
//! view with its matching, older checkpoint — and the projector re-applies the events after it.
//! The runner makes a durable commit every `view_sync_interval` (default [`DURABLE_INTERVAL`]),
//! when it stops, and before a rebuilt generation is promoted, which
//! bounds the replay after a crash without paying an `fsync` per batch.

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod batch;
mod cache;
pub mod snapshot;
pub use batch::BatchView;
use batch::{bound, scan_start};
pub use cache::{CACHE_BYTES, CACHE_INTERVAL, CacheBudget, Write, WriteBack};

/// The view: key → value (JSON bytes when the projector used the SDK's typed helpers).
const VIEW: TableDefinition<&str, &[u8]> = TableDefinition::new("view");

/// Bookkeeping: `checkpoint` → position.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Events skipped under the `skip` error policy, by position.
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");

const CHECKPOINT: &str = "checkpoint";

/// The code that wrote the view: `proven` → what the registry recorded when that code proved
/// itself on this view (an opaque value, committed with the batch that proved it).
const CODE: TableDefinition<&str, &[u8]> = TableDefinition::new("code");

const PROVEN: &str = "proven";

/// An event the projector failed on and skipped (error policy `skip`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// The event's position in the log.
    pub position: u64,
    /// Its stream.
    pub stream: String,
    /// Its type.
    pub event_type: String,
    /// The error or trap message.
    pub error: String,
    /// The module that failed on it.
    pub module: String,
}

/// Longest view key, in bytes: a projector writing a longer one traps.
pub const MAX_KEY_LEN: usize = 1024;

/// How often a running projector makes a durable commit. An `fsync` stalls the runner for a few
/// milliseconds, so it is rare; a crash replays at most this much of the log (at replay speed,
/// a fraction of that time).
pub const DURABLE_INTERVAL: Duration = Duration::from_secs(30);

/// Why a view store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or is damaged.
    #[error(
        "cannot open the view file {path}: {source}. A view can be rebuilt from the log: \
         `prism repair --data-dir <dir>` moves damaged view files aside, and the next start rebuilds them"
    )]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    /// redb failed to read or write.
    #[error("view storage failed: {0}")]
    Storage(#[from] redb::Error),
    /// The view file is closed: a failed write (a full disk) made redb refuse it, and opening
    /// it again has not worked yet (resuming the projector tries again).
    #[error("the view file is unavailable: {0}")]
    Unavailable(String),
}

/// redb's per-operation errors convert through `redb::Error`, so `?` works on each of them.
macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Uncommitted writes of one batch: key → new value, or `None` for a deletion.
pub type Overlay = BTreeMap<String, Option<Vec<u8>>>;

/// One projector's view and checkpoint.
pub struct ViewStore {
    path: std::path::PathBuf,
    /// Replaced by [`ViewStore::reopen`]: redb refuses every operation on a database whose
    /// write failed (a full disk) until it is opened again.
    db: parking_lot::RwLock<Option<Arc<Database>>>,
}

impl ViewStore {
    /// Opens (or creates) the view file at `path`.
    pub fn open(path: &Path) -> Result<ViewStore, StoreError> {
        let fail = |source: redb::Error| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.into()))?;
        }
        let db = open_database(path, VIEW_CACHE_BYTES).map_err(fail)?;
        let txn = db.begin_write().map_err(|e| fail(e.into()))?;
        txn.open_table(VIEW).map_err(|e| fail(e.into()))?;
        txn.open_table(META).map_err(|e| fail(e.into()))?;
        txn.open_table(DEAD_LETTERS).map_err(|e| fail(e.into()))?;
        txn.commit().map_err(|e| fail(e.into()))?;
        Ok(ViewStore {
            path: path.to_path_buf(),
            db: parking_lot::RwLock::new(Some(Arc::new(db))),
        })
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db.read().clone().ok_or_else(|| {
            StoreError::Unavailable(format!(
                "{} could not be opened again after a failed write",
                self.path.display()
            ))
        })
    }

    /// Opens the file again, when a failed write (a full disk, an I/O error) made redb refuse
    /// it; a no-op otherwise. Done before a faulted projector's runner starts again.
    pub fn reopen_if_failed(&self) -> Result<(), StoreError> {
        let failed = match self.db.read().clone() {
            None => true,
            Some(db) => match db.begin_write() {
                Ok(txn) => {
                    txn.abort()?;
                    false
                }
                Err(redb::TransactionError::Storage(
                    redb::StorageError::PreviousIo | redb::StorageError::Io(_),
                )) => true,
                Err(e) => return Err(e.into()),
            },
        };
        if !failed {
            return Ok(());
        }
        let mut slot = self.db.write();
        // The failed database must be closed before the file can be opened again; until that
        // works the slot stays empty and every operation says the view is unavailable.
        drop(slot.take());
        let db = open_database(&self.path, VIEW_CACHE_BYTES)?;
        *slot = Some(Arc::new(db));
        tracing::info!(path = %self.path.display(), "reopened a view file after a failed write");
        Ok(())
    }

    /// The position of the last event the view reflects (0: none yet).
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(CHECKPOINT)?.map_or(0, |v| v.value()))
    }

    /// A consistent snapshot of the committed view and its checkpoint.
    pub fn snapshot(&self) -> Result<ViewSnapshot, StoreError> {
        let txn = self.db()?.begin_read()?;
        let view = txn.open_table(VIEW)?;
        let meta = txn.open_table(META)?;
        let checkpoint = meta.get(CHECKPOINT)?.map_or(0, |v| v.value());
        Ok(ViewSnapshot { view, checkpoint })
    }

    /// Writes a batch's overlay and its new checkpoint in one transaction; `durable` asks for
    /// an `fsync`ed commit (see the module docs).
    pub fn commit(
        &self,
        overlay: &Overlay,
        checkpoint: u64,
        durable: bool,
        dead_letter: Option<&DeadLetter>,
    ) -> Result<(), StoreError> {
        self.write(
            overlay_writes(overlay),
            checkpoint,
            durable,
            dead_letter,
            None,
        )
    }

    /// Like [`commit`](Self::commit) for writes in key order (a flush of the catch-up cache),
    /// recording `proven` code as [`commit_proving`](Self::commit_proving) does when given.
    pub fn commit_sorted(
        &self,
        writes: &[Write],
        checkpoint: u64,
        durable: bool,
        dead_letter: Option<&DeadLetter>,
        proven: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let writes = writes.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        self.write(writes, checkpoint, durable, dead_letter, proven)
    }

    /// Like [`commit`](Self::commit) for the first batch new code applied: `code` (what the
    /// caller knows that code by) is recorded as proven on this view in the same transaction,
    /// so the view and the record of which code wrote it never disagree after a crash.
    pub fn commit_proving(
        &self,
        overlay: &Overlay,
        checkpoint: u64,
        durable: bool,
        code: &[u8],
    ) -> Result<(), StoreError> {
        self.write(
            overlay_writes(overlay),
            checkpoint,
            durable,
            None,
            Some(code),
        )
    }

    /// What [`commit_proving`](Self::commit_proving) recorded last.
    pub fn proven_code(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let code = match txn.open_table(CODE) {
            Ok(code) => code,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(code.get(PROVEN)?.map(|v| v.value().to_vec()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(checkpoint, durable))]
    fn write<'a>(
        &self,
        writes: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
        checkpoint: u64,
        durable: bool,
        dead_letter: Option<&DeadLetter>,
        proven: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db()?.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)
                .expect("no persistent savepoints are used");
        }
        {
            write_all(&txn, writes)?;
            let mut meta = txn.open_table(META)?;
            meta.insert(CHECKPOINT, checkpoint)?;
            if let Some(letter) = dead_letter {
                write_dead_letter(&txn, letter)?;
            }
            if let Some(code) = proven {
                txn.open_table(CODE)?.insert(PROVEN, code)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes the overlay of a successful dead-letter retry and removes that dead letter, in one
    /// durable transaction; the checkpoint does not move.
    pub fn commit_retry(&self, overlay: &Overlay, position: u64) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write()?;
        {
            write_all(&txn, overlay_writes(overlay))?;
            let mut letters = txn.open_table(DEAD_LETTERS)?;
            letters.remove(position)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records (or replaces) one dead letter, durably.
    pub fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write()?;
        write_dead_letter(&txn, letter)?;
        txn.commit()?;
        Ok(())
    }

    /// The dead letter at `position`.
    pub fn dead_letter(&self, position: u64) -> Result<Option<DeadLetter>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let letters = txn.open_table(DEAD_LETTERS)?;
        Ok(letters
            .get(position)?
            .and_then(|bytes| serde_json::from_slice(bytes.value()).ok()))
    }

    /// Up to `limit` dead letters after position `after`, in log order.
    pub fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let letters = txn.open_table(DEAD_LETTERS)?;
        let mut out = Vec::new();
        for row in letters
            .range((Bound::Excluded(after), Bound::Unbounded))?
            .take(limit)
        {
            let (_, bytes) = row?;
            if let Ok(letter) = serde_json::from_slice(bytes.value()) {
                out.push(letter);
            }
        }
        Ok(out)
    }

    /// Removes the dead letter at `position`; false when there was none.
    pub fn discard_dead_letter(&self, position: u64) -> Result<bool, StoreError> {
        let txn = self.db()?.begin_write()?;
        let removed = txn.open_table(DEAD_LETTERS)?.remove(position)?.is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// Makes every earlier commit durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write()?;
        txn.commit()?;
        Ok(())
    }
}

/// An overlay's writes, in key order.
fn overlay_writes(overlay: &Overlay) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
    overlay.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
}

/// Writes `writes` (a value, or `None` for a deletion) into the view table of `txn`.
fn write_all<'a>(
    txn: &redb::WriteTransaction,
    writes: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<(), StoreError> {
    let mut view = txn.open_table(VIEW)?;
    for (key, value) in writes {
        match value {
            Some(value) => view.insert(key, value),
            None => view.remove(key).map(|_| None),
        }?;
    }
    Ok(())
}

/// Records a dead letter in `txn`.
fn write_dead_letter(txn: &redb::WriteTransaction, letter: &DeadLetter) -> Result<(), StoreError> {
    let mut letters = txn.open_table(DEAD_LETTERS)?;
    let bytes = serde_json::to_vec(letter).expect("a dead letter serializes");
    letters.insert(letter.position, bytes.as_slice())?;
    Ok(())
}

/// How long opening waits for a file another `Database` in this process is still closing
/// (a Prism stopping while another starts on the same data dir, as in a restart in tests).
const ALREADY_OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// redb's page cache for the event log. redb's default is 1 GiB for every file it opens: with a
/// log and a dozen views, resident memory without a useful bound. Pages beyond it are read
/// again from the OS's page cache.
pub const LOG_CACHE_BYTES: usize = 256 << 20;

/// redb's page cache for each view file (see [`LOG_CACHE_BYTES`]).
pub const VIEW_CACHE_BYTES: usize = 64 << 20;

/// redb's page cache for the catalog.
pub const CATALOG_CACHE_BYTES: usize = 16 << 20;

/// Opens (or creates) a redb file with a page cache of `cache_bytes`, checking every page; a
/// damaged file is an error, never a panic. A file that is open elsewhere is waited for a
/// moment, then reported.
pub fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, redb::Error> {
    let deadline = std::time::Instant::now() + ALREADY_OPEN_WAIT;
    loop {
        match open_once(path, cache_bytes) {
            Err(redb::Error::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

fn open_once(path: &Path, cache_bytes: usize) -> Result<Database, redb::Error> {
    // Every page's checksum is verified on open: a file damaged at rest (a flipped byte in a
    // data page) is refused as corrupted instead of trusted, or panicking at read time.
    let open = || {
        Database::builder()
            .set_check_integrity_on_open(true)
            .set_cache_size(cache_bytes)
            .create(path)
    };
    match std::panic::catch_unwind(open) {
        Ok(opened) => opened.map_err(redb::Error::from),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(redb::Error::Corrupted(format!(
                "the file cannot be read ({what})"
            )))
        }
    }
}

/// A read-only, consistent view of a committed view and its checkpoint.
pub struct ViewSnapshot {
    view: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    checkpoint: u64,
}

/// One entry of a scan.
pub type Entry = (String, Vec<u8>);

impl ViewSnapshot {
    /// Walks every entry in key order.
    pub fn for_each(&self, mut f: impl FnMut(&str, &[u8])) -> Result<(), StoreError> {
        for row in self.view.iter()? {
            let (key, value) = row?;
            f(key.value(), value.value());
        }
        Ok(())
    }

    /// The position of the last event this snapshot reflects.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.view.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order, after `after`.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = scan_start(prefix, after);
        let mut out = Vec::new();
        for row in self.view.range::<&str>((bound(&start), Bound::Unbounded))? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = row?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push((key.value().to_string(), value.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ViewStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ViewStore::open(&dir.path().join("view.redb")).unwrap();
        (dir, store)
    }

    fn overlay(entries: &[(&str, Option<&str>)]) -> Overlay {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn view_writes_and_checkpoint_commit_together() {
        let (_dir, store) = store();
        assert_eq!(store.checkpoint().unwrap(), 0);
        store
            .commit(
                &overlay(&[("a", Some("1")), ("b", Some("2"))]),
                7,
                false,
                None,
            )
            .unwrap();
        store
            .commit(&overlay(&[("a", None)]), 9, true, None)
            .unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.checkpoint(), 9);
        assert_eq!(snap.get("a").unwrap(), None);
        assert_eq!(snap.get("b").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn scans_are_ordered_prefixed_and_paged() {
        let (_dir, store) = store();
        let entries: Vec<_> = ["a/1", "a/2", "a/3", "b/1", "a"]
            .iter()
            .map(|k| (*k, Some("v")))
            .collect();
        store.commit(&overlay(&entries), 1, false, None).unwrap();
        let snap = store.snapshot().unwrap();
        let keys = |v: Vec<Entry>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(snap.scan("a/", None, 10).unwrap()),
            ["a/1", "a/2", "a/3"]
        );
        assert_eq!(keys(snap.scan("a/", None, 2).unwrap()), ["a/1", "a/2"]);
        assert_eq!(keys(snap.scan("a/", Some("a/2"), 10).unwrap()), ["a/3"]);
        assert_eq!(keys(snap.scan("", Some("a/3"), 10).unwrap()), ["b/1"]);
        assert_eq!(
            keys(snap.scan("c", None, 10).unwrap()),
            Vec::<String>::new()
        );
    }

    fn keys_of(entries: Vec<Entry>) -> Vec<String> {
        entries.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn a_batch_reads_its_own_writes_and_scans_merge_them() {
        let (_dir, store) = store();
        store
            .commit(
                &overlay(&[("k/1", Some("old")), ("k/2", Some("x")), ("k/4", Some("y"))]),
                1,
                false,
                None,
            )
            .unwrap();
        let mut batch = BatchView::new(store.snapshot().unwrap());
        batch.put("k/1".into(), b"new".to_vec());
        batch.delete("k/2".into());
        batch.put("k/3".into(), b"z".to_vec());
        assert_eq!(batch.get("k/1").unwrap(), Some(b"new".to_vec()));
        assert_eq!(batch.get("k/2").unwrap(), None);
        let scanned = batch.scan("k/", None, 10, usize::MAX).unwrap().unwrap();
        let keys: Vec<_> = scanned.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["k/1", "k/3", "k/4"]);
        assert_eq!(scanned[0].1, b"new");
        assert_eq!(
            batch
                .scan("k/", None, 2, usize::MAX)
                .unwrap()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            keys_of(
                batch
                    .scan("k/", Some("k/1"), 10, usize::MAX)
                    .unwrap()
                    .unwrap()
            ),
            ["k/3", "k/4"]
        );
        // Past the byte cap: refused, not cut.
        assert_eq!(batch.scan("k/", None, 10, 4).unwrap(), None);
        // Nothing is visible outside the batch until it commits.
        assert_eq!(
            store.snapshot().unwrap().get("k/1").unwrap(),
            Some(b"old".to_vec())
        );
    }
}
