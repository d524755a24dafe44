//! The node-local stream index: each stream's version and the position of each of its events,
//! derived from the JetStream log and kept in a redb file of the node's own
//! (`<data dir>/jetstream-index.redb`; in memory for a log opened without a data dir).
//!
//! The servers know a stream's messages only through their per-subject index: reading a stream
//! from version `v` walked its subject from sequence 1, and listing streams fetched every
//! subject of the log per page. The index answers both from the node: a stream read starts at
//! the position of its first wanted version, a listing is a range of a B-tree.
//!
//! It follows the log as a projector does ([`follow`]): batch direct gets from the position
//! after the last it indexed, written one batch per transaction with that position, so the
//! file is always a prefix of the log. Its commits are made durable once a second: a crash
//! may take it back to an earlier prefix, indexed again from the log. A file written for
//! another log (the events stream was created again) or ahead of the log is emptied and
//! indexed again from position 1; a damaged one is deleted and rebuilt. A message the index
//! cannot read (a gap, an event it cannot decode) stops it there: listings then answer that
//! error, and it tries again with a growing pause.
//!
//! Reads and the index's lag: a stream read takes its first position from the index when the
//! index holds the version asked for, else starts just after the indexed prefix, so it never
//! waits for the index; a listing waits (up to the read timeout) for the index to reach the
//! head this node knows, which includes its own appends (read-your-writes), and answers 503
//! while the index catches up on a log it has not read yet.

use super::message::decode;
use super::protocol::{self, Stored};
use super::readahead::BATCH;
use super::store::Inner;
use crate::log::ReadError;
use parking_lot::{Condvar, Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Each stream's version: how many events it holds.
const STREAMS: TableDefinition<&str, u64> = TableDefinition::new("streams");
/// (stream, stream version) → position.
const POSITIONS: TableDefinition<(&str, u64), u64> = TableDefinition::new("positions");
/// `indexed`: the last position the file indexes.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `log`: the identity of the log the file indexes ([`protocol::identity`]).
const LOG: TableDefinition<&str, &str> = TableDefinition::new("log");

const INDEXED: &str = "indexed";

/// The file's page cache.
const CACHE_BYTES: usize = 16 << 20;

/// How often the index makes its commits durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The pause after a failed read or write before trying again; doubled after each failure in
/// a row, up to [`MAX_RETRY_AFTER`].
const RETRY_AFTER: Duration = Duration::from_millis(100);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why the index stopped at a message, until it reads past it.
#[derive(Clone)]
struct Stuck {
    position: u64,
    reason: String,
}

/// How far the index goes.
#[derive(Default)]
struct Progress {
    /// The last position indexed.
    indexed: u64,
    /// The message it could not index, if it is stopped there.
    stuck: Option<Stuck>,
}

/// The node-local index of a JetStream log's streams (see the module's doc).
pub(super) struct StreamIndex {
    /// Its file (`None`: kept in memory), reopened after a failed write.
    path: Option<PathBuf>,
    db: RwLock<Database>,
    progress: Mutex<Progress>,
    /// Signalled when the index moves or stops (listings wait for it).
    moved: Condvar,
    /// When the index last made its commits durable.
    synced: Mutex<Instant>,
}

/// An error of the index's own file, or of a message it reads.
type Error = Box<dyn std::error::Error + Send + Sync>;

fn open_file(path: Option<&Path>) -> Result<Database, redb::Error> {
    let Some(path) = path else {
        return Ok(Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?);
    };
    match crate::store::open_database(path, CACHE_BYTES) {
        Err(redb::Error::Corrupted(why)) => {
            // Derived from the log: a damaged file is rebuilt, not repaired.
            tracing::warn!(path = %path.display(), %why, "the stream index is damaged: rebuilding it from the log");
            std::fs::remove_file(path)?;
            crate::store::open_database(path, CACHE_BYTES)
        }
        opened => opened,
    }
}

impl StreamIndex {
    /// Opens (or creates) the index at `path`, or one in memory, for the log named `log`
    /// whose head is `head`: a file of another log, or ahead of this one, starts again empty.
    pub fn open(path: Option<&Path>, log: &str, head: u64) -> Result<StreamIndex, Error> {
        let db = open_file(path)?;
        let (same_log, indexed) = {
            let read = db.begin_read()?;
            let named = match read.open_table(LOG) {
                Ok(t) => t.get("log")?.map(|v| v.value() == log),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let indexed = match read.open_table(META) {
                Ok(t) => t.get(INDEXED)?.map_or(0, |v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(e.into()),
            };
            (named == Some(true), indexed)
        };
        let again = !same_log || indexed > head;
        if again && indexed > 0 {
            tracing::warn!(
                indexed,
                head,
                same_log,
                "the stream index was written for another log or is ahead of it: indexing again from position 1"
            );
        }
        let write = db.begin_write()?;
        if again {
            write.delete_table(STREAMS)?;
            write.delete_table(POSITIONS)?;
            write.open_table(META)?.insert(INDEXED, 0)?;
            write.open_table(LOG)?.insert("log", log)?;
        }
        write.open_table(STREAMS)?;
        write.open_table(POSITIONS)?;
        write.open_table(META)?;
        write.open_table(LOG)?;
        write.commit()?;
        let indexed = if again { 0 } else { indexed };
        Ok(StreamIndex {
            path: path.map(Path::to_path_buf),
            db: RwLock::new(db),
            progress: Mutex::new(Progress {
                indexed,
                stuck: None,
            }),
            moved: Condvar::new(),
            synced: Mutex::new(Instant::now()),
        })
    }

    /// The last position indexed.
    pub fn indexed(&self) -> u64 {
        self.progress.lock().indexed
    }

    /// Indexes the log's next messages, `batch`, which start just after the indexed prefix.
    fn add(&self, batch: &[Stored]) -> Result<(), Error> {
        let Some(last) = batch.last().map(|m| m.sequence) else {
            return Ok(());
        };
        let first = self.indexed() + 1;
        let entries = match entries(first, batch) {
            Ok(entries) => entries,
            Err(stuck) => {
                let reason = stuck.reason.clone();
                self.progress.lock().stuck = Some(stuck);
                self.moved.notify_all();
                return Err(reason.into());
            }
        };
        let durable = self.synced.lock().elapsed() >= SYNC_EVERY;
        if let Err(e) = self.write(&entries, last, durable) {
            // redb refuses a database whose write failed until it is opened again.
            if let Some(path) = &self.path {
                let mut db = self.db.write();
                match open_file(Some(path)) {
                    Ok(reopened) => *db = reopened,
                    Err(again) => tracing::warn!(error = %again, "reopening the stream index"),
                }
            }
            return Err(e);
        }
        if durable {
            *self.synced.lock() = Instant::now();
        }
        *self.progress.lock() = Progress {
            indexed: last,
            stuck: None,
        };
        self.moved.notify_all();
        Ok(())
    }

    fn write(&self, entries: &[(String, u64, u64)], last: u64, durable: bool) -> Result<(), Error> {
        let db = self.db.read();
        let mut write = db.begin_write()?;
        if !durable {
            write.set_durability(Durability::None)?;
        }
        {
            let mut streams = write.open_table(STREAMS)?;
            let mut positions = write.open_table(POSITIONS)?;
            for (stream, version, position) in entries {
                positions.insert((stream.as_str(), *version), *position)?;
                streams.insert(stream.as_str(), *version)?;
            }
            write.open_table(META)?.insert(INDEXED, last)?;
        }
        write.commit()?;
        Ok(())
    }

    /// Waits until the index holds the log up to `position`, for `within` at most.
    pub fn reach(&self, position: u64, within: Duration) -> Result<(), ReadError> {
        let deadline = Instant::now() + within;
        let mut progress = self.progress.lock();
        while progress.indexed < position {
            if let Some(stuck) = &progress.stuck {
                return Err(ReadError::Corrupt {
                    position: stuck.position,
                    reason: format!("this node's stream index stopped there: {}", stuck.reason),
                });
            }
            if self.moved.wait_until(&mut progress, deadline).timed_out()
                && progress.indexed < position
            {
                return Err(ReadError::Unavailable(format!(
                    "this node's stream index is catching up with the log (position {} of {position})",
                    progress.indexed
                )));
            }
        }
        Ok(())
    }

    /// Where a read of `stream` from `version` on starts: the position of that version when
    /// indexed, else the position just after the indexed prefix (the version is beyond it).
    pub fn start_of(&self, stream: &str, version: u64) -> Result<u64, ReadError> {
        let db = self.db.read();
        let read = db.begin_read().map_err(storage)?;
        let indexed = read
            .open_table(META)
            .map_err(storage)?
            .get(INDEXED)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let at = read
            .open_table(POSITIONS)
            .map_err(storage)?
            .get((stream, version))
            .map_err(storage)?
            .map(|v| v.value());
        Ok(at.unwrap_or(indexed + 1))
    }

    /// Streams after `after` in name order, with their versions, `max` at most.
    pub fn streams(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, u64)>, ReadError> {
        let db = self.db.read();
        let read = db.begin_read().map_err(storage)?;
        let table = read.open_table(STREAMS).map_err(storage)?;
        let range = match after {
            Some(after) => {
                table.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => table.range::<&str>(..),
        }
        .map_err(storage)?;
        range
            .take(max)
            .map(|row| {
                let (name, version) = row.map_err(storage)?;
                Ok((name.value().to_string(), version.value()))
            })
            .collect()
    }
}

/// The index's entries for `batch`, whose first message must be at `first`: (stream, version,
/// position) of each, or where and why one cannot be indexed.
fn entries(first: u64, batch: &[Stored]) -> Result<Vec<(String, u64, u64)>, Stuck> {
    let mut out = Vec::with_capacity(batch.len());
    for (k, message) in batch.iter().enumerate() {
        let position = first + k as u64;
        if message.sequence != position {
            return Err(Stuck {
                position,
                reason: format!(
                    "the log skips from position {} to {}",
                    position - 1,
                    message.sequence
                ),
            });
        }
        let decoded = decode(message).map_err(|e| Stuck {
            position,
            reason: e.to_string(),
        })?;
        out.push((decoded.stream, decoded.event.stream_version, position));
    }
    Ok(out)
}

/// A failure of the index's file, as a read's error.
fn storage(e: impl Into<redb::Error>) -> ReadError {
    ReadError::from(e.into())
}

/// Indexes the log as it grows, until the log is dropped.
pub(super) async fn follow(inner: Weak<Inner>) {
    let Some(mut heads) = inner.upgrade().map(|i| i.heads()) else {
        return;
    };
    let mut pause = RETRY_AFTER;
    loop {
        let Some(log) = inner.upgrade() else { return };
        let (from, head) = (log.index.indexed() + 1, *heads.borrow_and_update());
        if from > head {
            drop(log);
            if heads.changed().await.is_err() {
                return;
            }
            continue;
        }
        match step(&log, from).await {
            Ok(()) => pause = RETRY_AFTER,
            Err(e) => {
                // A replica behind answered: usual under load, and over in moments. Said
                // loudly once the retries have grown.
                if pause > Duration::from_secs(1) {
                    tracing::warn!(from, error = %e, retry_in = ?pause, "indexing the log's streams");
                } else {
                    tracing::debug!(from, error = %e, retry_in = ?pause, "indexing the log's streams");
                }
                drop(log);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_AFTER);
            }
        }
    }
}

/// Indexes one batch of the log from `from` on.
async fn step(log: &Arc<Inner>, from: u64) -> Result<(), Error> {
    let batch = protocol::direct_get_batch_after(
        &log.client,
        from,
        None,
        BATCH,
        protocol::GET_BYTES,
        from,
        log.options.read_timeout,
    )
    .await?;
    let index = log.index.clone();
    tokio::task::spawn_blocking(move || index.add(&batch)).await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::jetstream::message::outbound;

    fn stored(sequence: u64, stream: &str, version: u64) -> Stored {
        let message = outbound(stream, version, "t", b"", b"{}");
        Stored {
            sequence,
            subject: message.subject,
            headers: message.headers,
            payload: message.payload,
        }
    }

    #[test]
    fn indexes_versions_and_positions_and_starts_again_for_another_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let index = StreamIndex::open(Some(&path), "log A", 0).unwrap();
        index
            .add(&[stored(1, "b", 1), stored(2, "a", 1), stored(3, "b", 2)])
            .unwrap();
        assert_eq!(index.indexed(), 3);
        assert_eq!(index.start_of("b", 2).unwrap(), 3);
        assert_eq!(index.start_of("b", 3).unwrap(), 4, "beyond the prefix");
        assert_eq!(
            index.streams(None, 10).unwrap(),
            vec![("a".into(), 1), ("b".into(), 2)]
        );
        assert_eq!(index.streams(Some("a"), 10).unwrap(), vec![("b".into(), 2)]);
        let gap = index.add(&[stored(5, "a", 2)]).unwrap_err();
        assert!(
            gap.to_string().contains("skips from position 3 to 5"),
            "{gap}"
        );
        // Stopped at the gap: a listing says where and why rather than wait.
        match index.reach(4, Duration::from_secs(10)) {
            Err(ReadError::Corrupt {
                position: 4,
                reason,
            }) => {
                assert!(reason.contains("skips"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(index.indexed(), 3);
        drop(index);

        let again = StreamIndex::open(Some(&path), "log A", 3).unwrap();
        assert_eq!(again.indexed(), 3, "kept for the same log");
        drop(again);
        let behind = StreamIndex::open(Some(&path), "log A", 2).unwrap();
        assert_eq!(behind.indexed(), 0, "a log shorter than the index");
        drop(behind);
        let other = StreamIndex::open(Some(&path), "log B", 10).unwrap();
        assert_eq!(other.indexed(), 0);
        assert!(other.streams(None, 10).unwrap().is_empty());
        assert!(matches!(
            other.reach(1, Duration::from_millis(10)),
            Err(ReadError::Unavailable(_))
        ));
    }

    #[test]
    fn a_waiting_listing_wakes_when_the_index_moves() {
        let index = Arc::new(StreamIndex::open(None, "log", 0).unwrap());
        let adder = {
            let index = index.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                index.add(&[stored(1, "a", 1), stored(2, "a", 2)]).unwrap();
            })
        };
        let started = Instant::now();
        index.reach(2, Duration::from_secs(20)).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken by the index, not by the timeout"
        );
        adder.join().unwrap();
    }
}
