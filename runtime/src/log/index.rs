//! The stream index: each stream's version and the positions of its events, derived from the
//! log and kept off the durable append.
//!
//! Inserting a new stream's version and first position into two B-trees of a million random
//! names was most of an import's time (`benches/REPORT.md`): the append's transaction copied a
//! leaf per insert. So the log's writer commits only the events (in chunks) and hands each
//! appended event's `(stream, version, position)` to [`StreamIndex::add`], before it
//! acknowledges the append; the indexer thread writes them, sorted and many appends at once,
//! into a file of its own (`<log>-index.redb`, so that its transactions never wait for the
//! writer's nor the writer's for its), and drops them from memory once committed.
//!
//! Every read merges the two: what is in memory, then the file. Both are read under the lock
//! that the indexer takes to drop entries, after their commit, so a reader sees an entry in
//! one or the other, never in neither. The indexer's commits are `fsync`ed every second, when
//! idle and at close; one that was not, rolled back by the reopening that follows a failed
//! write, is indexed again from the log before any reader can look (`recover`). The file's `indexed` position says how far it
//! goes; after a crash (or a close whose index writes failed) it may end before the log's
//! head, and opening indexes the rest from the log's chunks before any append. A file that is
//! missing or ahead of the log (a log restored from a backup) is rebuilt from the log, which
//! is how a log written before the index moved here gets its index.

use super::read::walk_chunks;
use super::schema::{CHUNKS, STREAM_INDEX, STREAMS};
use super::shared::Shared;
use parking_lot::{Condvar, Mutex, MutexGuard};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The last position the file indexes.
const INDEXED: &str = "indexed";

/// Most appended events waiting in memory to be indexed; past it the writer waits for the
/// indexer (a bound on memory: an entry costs its stream name and some 40 bytes).
const MAX_PENDING: usize = 1 << 20;

/// Events indexed in one transaction when rebuilding from the log.
const REBUILD_STEP: usize = 200_000;

/// How often the indexer makes its commits durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The index file's page cache.
const INDEX_CACHE_BYTES: usize = 64 << 20;

/// The index's file next to the log's: `log.redb` → `log-index.redb`.
pub(super) fn path_of(log: &Path) -> PathBuf {
    let stem = log
        .file_stem()
        .map_or_else(|| "log".to_string(), |s| s.to_string_lossy().into_owned());
    log.with_file_name(format!("{stem}-index.redb"))
}

/// Appended events not yet in the file, by stream: `(version, position)` ascending.
#[derive(Default)]
struct Pending {
    /// Names shared with the indexer's copy of what it writes (a count, not a copy, per
    /// entry under the lock).
    streams: FxHashMap<Arc<str>, Vec<(u64, u64)>>,
    events: usize,
    /// The log is closing: the writer no longer waits for room.
    closing: bool,
    /// The writer has stopped: the indexer writes what is left and stops.
    finished: bool,
}

pub(super) struct StreamIndex {
    /// Its file, reopened after a failed write (redb refuses a database whose write failed
    /// until then), as the log's own.
    file: Shared,
    pending: Mutex<Pending>,
    /// Signalled when entries arrive (the indexer waits for them), leave (a writer waiting for
    /// room), or the log closes.
    changed: Condvar,
}

/// A consistent view of the index: the file as of a read transaction and what was in memory
/// when it began (see the module docs).
pub(super) struct IndexRead<'a> {
    pending: MutexGuard<'a, Pending>,
    txn: redb::ReadTransaction,
}

impl StreamIndex {
    /// Opens (or creates, or rebuilds) the index of the log in `log`, whose last position is
    /// `head`, and brings it up to `head`.
    pub(super) fn open(path: &Path, log: &Database, head: u64) -> Result<StreamIndex, redb::Error> {
        let db = crate::store::open_database(path, INDEX_CACHE_BYTES)?;
        let mut indexed = {
            let txn = db.begin_write()?;
            let indexed = {
                let meta = txn.open_table(META)?;
                txn.open_table(STREAMS)?;
                txn.open_table(STREAM_INDEX)?;
                meta.get(INDEXED)?.map_or(0, |v| v.value())
            };
            txn.commit()?;
            indexed
        };
        // An index of another log (a log replaced by a different one, as long or longer) is
        // told by its last entry: the log's event at `indexed` must be indexed at its place.
        let other_log = indexed > 0
            && indexed <= head
            && !read_entries(log, indexed, 1)?
                .iter()
                .find(|e| e.2 == indexed)
                .is_some_and(|(stream, version, _)| {
                    db.begin_read()
                        .ok()
                        .and_then(|txn| txn.open_table(STREAM_INDEX).ok())
                        .and_then(|t| t.get((stream.as_str(), *version)).ok().flatten())
                        .is_some_and(|p| p.value() == indexed)
                });
        if indexed > head || other_log {
            tracing::warn!(
                indexed,
                head,
                "the stream index is not this log's: rebuilding it"
            );
            let txn = db.begin_write()?;
            txn.delete_table(STREAMS)?;
            txn.delete_table(STREAM_INDEX)?;
            txn.open_table(META)?.insert(INDEXED, 0)?;
            txn.open_table(STREAMS)?;
            txn.open_table(STREAM_INDEX)?;
            txn.commit()?;
            indexed = 0;
        }
        if indexed < head {
            let started = Instant::now();
            let from = indexed;
            while indexed < head {
                let mut entries = read_entries(log, indexed + 1, REBUILD_STEP)?;
                entries.retain(|e| e.2 <= head);
                let last = entries.last().map_or(indexed, |e| e.2);
                if last <= indexed {
                    return Err(redb::Error::Corrupted(format!(
                        "the log's head is {head} but no event follows position {indexed}"
                    )));
                }
                write_entries(&db, entries, last, true)?;
                indexed = last;
            }
            tracing::info!(from, to = indexed, took = ?started.elapsed(), "indexed the log's streams");
        }
        Ok(StreamIndex {
            file: Shared::new(path.to_path_buf(), db, INDEX_CACHE_BYTES),
            pending: Mutex::new(Pending::default()),
            changed: Condvar::new(),
        })
    }

    /// Takes the entries of appended (committed) events; waits while too many wait already.
    pub(super) fn add(&self, entries: impl IntoIterator<Item = (String, u64, u64)>) {
        let mut pending = self.pending.lock();
        while pending.events >= MAX_PENDING && !pending.closing {
            self.changed.wait(&mut pending);
        }
        for (stream, version, position) in entries {
            match pending.streams.get_mut(stream.as_str()) {
                Some(at) => at.push((version, position)),
                None => {
                    pending
                        .streams
                        .insert(stream.into(), vec![(version, position)]);
                }
            }
            pending.events += 1;
        }
        self.changed.notify_all();
    }

    /// Takes the entries of events `from..=to` from the log itself: appends whose commit was
    /// reported failed but reached the file (found when the writer reopens it).
    pub(super) fn add_from_log(
        &self,
        log: &Database,
        from: u64,
        to: u64,
    ) -> Result<(), redb::Error> {
        // Read whole first: a failure adds nothing (the writer then tries again from `from`).
        let mut entries = read_entries(log, from, (to + 1 - from) as usize)?;
        entries.retain(|e| e.2 <= to);
        self.add(entries);
        Ok(())
    }

    /// A consistent view for reads (and for the writer's version checks).
    pub(super) fn read(&self) -> Result<IndexRead<'_>, redb::Error> {
        let pending = self.pending.lock();
        let txn = self.db()?.begin_read()?;
        Ok(IndexRead { pending, txn })
    }

    /// The log is closing: the writer's last appends no longer wait for room (the indexer
    /// may be failing; what it does not write, the next open indexes from the log).
    pub(super) fn close(&self) {
        self.pending.lock().closing = true;
        self.changed.notify_all();
    }

    /// The writer has stopped: the indexer writes what is left (trying a few times at most)
    /// and stops.
    pub(super) fn finish(&self) {
        let mut pending = self.pending.lock();
        pending.closing = true;
        pending.finished = true;
        self.changed.notify_all();
    }

    /// The indexer: waits for entries, writes them sorted in one transaction, then drops them
    /// from memory; until finished. Its commits are made durable every [`SYNC_EVERY`], when
    /// it has nothing else to do, and at the end: a commit that is not durable is rolled back by the reopening
    /// that follows a failed write, and [`recover`](Self::recover) then takes its entries
    /// from the log `log` again before anyone reads.
    pub(super) fn run(&self, log: &Shared) {
        let mut failures = 0;
        let mut last_sync = Instant::now();
        // The last position written, and whether a durable commit holds it.
        let (mut written, mut synced) = (0, true);
        loop {
            let (entries, finished) = {
                let mut pending = self.pending.lock();
                // Idle with a commit not yet durable: made durable now (below), then waits.
                while pending.events == 0 && !pending.finished && synced {
                    self.changed.wait(&mut pending);
                }
                let entries: Vec<(Arc<str>, u64, u64)> = pending
                    .streams
                    .iter()
                    .flat_map(|(stream, at)| at.iter().map(|&(v, p)| (stream.clone(), v, p)))
                    .collect();
                (entries, pending.finished)
            };
            if entries.is_empty() && synced && finished {
                return;
            }
            let last = entries.iter().map(|e| e.2).max().unwrap_or(written);
            let durable = finished || entries.is_empty() || last_sync.elapsed() >= SYNC_EVERY;
            let result = self
                .db()
                .and_then(|db| write_entries(&db, entries, last, durable));
            if let Err(e) = result {
                // The entries stay in memory (reads still see them); the appends wait once
                // too many do. Tried again in a second, on the file opened again (redb refuses
                // a database whose write failed until then). Once the log is closed, a few
                // tries at most: the next open indexes the rest from the log.
                failures += 1;
                tracing::error!(error = %e, "writing the stream index failed; trying again in a second");
                if finished && failures >= 3 {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
                match self.recover(log, written) {
                    Ok(()) => synced = true,
                    Err(e) => tracing::error!(error = %e, "reopening the stream index failed"),
                }
                continue;
            }
            failures = 0;
            written = last;
            synced = durable;
            if durable {
                last_sync = Instant::now();
            }
            let mut pending = self.pending.lock();
            let mut dropped = 0;
            pending.streams.retain(|_, at| {
                let keep = at.partition_point(|&(_, p)| p <= last);
                dropped += keep;
                at.drain(..keep);
                !at.is_empty()
            });
            pending.events -= dropped;
            self.changed.notify_all();
        }
    }

    /// Opens the file again after a failed write and puts back in memory, from the log, the
    /// entries through `written` that the reopening lost (commits that were not durable),
    /// all under the lock readers take: none of them sees the file without those entries.
    fn recover(&self, log: &Shared, written: u64) -> Result<(), redb::Error> {
        let mut pending = self.pending.lock();
        self.file.reopen()?;
        let indexed = {
            let txn = self.db()?.begin_read()?;
            let meta = txn.open_table(META)?;
            meta.get(INDEXED)?.map_or(0, |v| v.value())
        };
        if indexed >= written {
            return Ok(());
        }
        let log = log
            .get()
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        let mut lost = read_entries(&log, indexed + 1, (written - indexed) as usize)?;
        lost.retain(|e| e.2 <= written);
        tracing::warn!(
            from = indexed + 1,
            to = written,
            "the stream index lost commits to a failed write: indexing them again from the log"
        );
        pending.events += lost.len();
        for (stream, version, position) in lost {
            let at = pending.streams.entry(stream.into()).or_default();
            // Older than what memory holds for the stream: before it, in order.
            let i = at.partition_point(|&(v, _)| v < version);
            at.insert(i, (version, position));
        }
        Ok(())
    }
}

impl StreamIndex {
    /// The open file, unless it could not be opened again after a failed write.
    fn db(&self) -> Result<Arc<Database>, redb::Error> {
        self.file
            .get()
            .map_err(|e| redb::Error::Corrupted(format!("the stream index: {e}")))
    }
}

impl IndexRead<'_> {
    /// The stream's version (0 when it does not exist).
    pub(super) fn version(&self, stream: &str) -> Result<u64, redb::Error> {
        if let Some(&(version, _)) = self.pending.streams.get(stream).and_then(|at| at.last()) {
            return Ok(version);
        }
        Ok(self
            .txn
            .open_table(STREAMS)?
            .get(stream)?
            .map_or(0, |v| v.value()))
    }

    /// The positions of up to `max` events of `stream` from version `from` on, ascending.
    pub(super) fn positions(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<u64>, redb::Error> {
        let from = from.max(1);
        let index = self.txn.open_table(STREAM_INDEX)?;
        let mut out = Vec::new();
        let mut next = from;
        for row in index.range((stream, from)..=(stream, u64::MAX))?.take(max) {
            let (key, position) = row?;
            next = key.value().1 + 1;
            out.push(position.value());
        }
        // In memory: the versions the file does not have yet (an entry may be in both while
        // the indexer drops it).
        if let Some(at) = self.pending.streams.get(stream) {
            let start = at.partition_point(|&(v, _)| v < next);
            out.extend(at[start..].iter().map(|&(_, p)| p).take(max - out.len()));
        }
        Ok(out)
    }

    /// Up to `max` stream names after `after`, in name order, with their versions.
    pub(super) fn streams(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, u64)>, redb::Error> {
        use std::ops::Bound;
        let table = self.txn.open_table(STREAMS)?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut filed = Vec::new();
        for row in table.range::<&str>((start, Bound::Unbounded))?.take(max) {
            let (name, version) = row?;
            filed.push((name.value().to_string(), version.value()));
        }
        // The `max` first names held in memory after `after`: picked, not sorted whole (an
        // import holds up to a million names, and the writer waits on this lock).
        let mut held: Vec<(&str, u64)> = self
            .pending
            .streams
            .iter()
            .filter(|(name, _)| after.is_none_or(|a| &***name > a))
            .filter_map(|(name, at)| Some((&**name, at.last()?.0)))
            .collect();
        if held.len() > max && max > 0 {
            held.select_nth_unstable(max - 1);
            held.truncate(max);
        }
        held.sort_unstable();
        let held = held.into_iter().map(|(name, v)| (name.to_string(), v));
        // Merged by name; a stream in both has its newer version in memory.
        let mut out: Vec<(String, u64)> =
            itertools::Itertools::merge_join_by(filed.into_iter(), held, |a, b| a.0.cmp(&b.0))
                .map(|pair| match pair {
                    itertools::EitherOrBoth::Left(s) | itertools::EitherOrBoth::Right(s) => s,
                    itertools::EitherOrBoth::Both(_, newer) => newer,
                })
                .take(max)
                .collect();
        out.truncate(max);
        Ok(out)
    }
}

/// Up to `max` entries `(stream, version, position)` of the log from `from` on.
fn read_entries(
    log: &Database,
    from: u64,
    max: usize,
) -> Result<Vec<(String, u64, u64)>, redb::Error> {
    let txn = log.begin_read()?;
    let chunks = txn.open_table(CHUNKS)?;
    let mut out = Vec::new();
    let mut damaged = None;
    if max > 0 {
        walk_chunks(&chunks, from, u64::MAX, |position, event| {
            let Some(parts) = event.parts() else {
                damaged = Some(position);
                return false;
            };
            out.push((parts.stream.to_string(), parts.stream_version, position));
            out.len() < max
        })
        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    }
    match damaged {
        Some(position) => Err(redb::Error::Corrupted(format!(
            "the event at {position} is not UTF-8"
        ))),
        None => Ok(out),
    }
}

/// Writes `entries` (sorted here) and `indexed = last` in one transaction, `fsync`ed when
/// `durable`.
fn write_entries<S: AsRef<str> + Ord>(
    db: &Database,
    mut entries: Vec<(S, u64, u64)>,
    last: u64,
    durable: bool,
) -> Result<(), redb::Error> {
    entries.sort_unstable();
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(redb::Durability::None)
            .expect("no persistent savepoints are used");
    }
    {
        let mut index = txn.open_table(STREAM_INDEX)?;
        let mut streams = txn.open_table(STREAMS)?;
        for (i, (stream, version, position)) in entries.iter().enumerate() {
            let stream = stream.as_ref();
            index.insert((stream, *version), *position)?;
            // A stream's last entry holds its version.
            if entries
                .get(i + 1)
                .is_none_or(|next| next.0.as_ref() != stream)
            {
                streams.insert(stream, *version)?;
            }
        }
        txn.open_table(META)?.insert(INDEXED, last)?;
    }
    txn.commit()?;
    Ok(())
}

/// The indexer thread, stopped and drained when the log closes.
pub(super) struct Indexer {
    pub(super) index: Arc<StreamIndex>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.index.finish();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
