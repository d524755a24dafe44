//! Brings a log file to today's layout when it is opened.
//!
//! Formats: **1** (up to commit 268959e) stored one postcard row per event in `events` and
//! remembered appends without their time; **2** did the same, remembering the time; neither
//! wrote a `meta` table. **3** stores events in chunks ([`super::chunk`]) and says so in `meta`.
//!
//! Migrating a file of format 1 or 2 moves its events into chunks a step at a time, each step
//! one durable transaction that adds chunks and removes the same events from `events`: an
//! interrupted migration goes on where it stopped when the file is opened again. The last step
//! rewrites remembered appends in today's form, drops `events` and writes the format.

use super::chunk::{Chunk, ChunkBuilder};
use super::idempotency;
use super::schema::{CHUNKS, FORMAT, META, STREAM_INDEX, STREAMS, StoredEvent};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Deserialize;

/// Formats 1 and 2: every event by its position, a postcard row each.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// How many events one migration step moves.
pub const STEP_EVENTS: usize = 100_000;

/// An event as formats 1 and 2 stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct LegacyEvent<'a> {
    stream: &'a str,
    stream_version: u64,
    event_type: &'a str,
    timestamp_ms: u64,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
    #[serde(with = "serde_bytes")]
    metadata: &'a [u8],
}

/// Why a log could not be brought to today's layout.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Storage(redb::Error),
    #[error(
        "the log was written in format {0}, newer than this Prism knows ({FORMAT}): use a newer Prism"
    )]
    Newer(u64),
    #[error("event {position} of the old log cannot be read: {reason}")]
    Corrupt { position: u64, reason: String },
}

impl<E: Into<redb::Error>> From<E> for MigrateError {
    fn from(e: E) -> Self {
        MigrateError::Storage(e.into())
    }
}

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The file was in today's format (or new).
    Current,
    /// Events were moved into chunks; `done` is false when `max_steps` stopped it early.
    Migrated { events: u64, done: bool },
}

/// Brings the file to today's format, moving at most `step_events` events per transaction and
/// stopping after `max_steps` of them (`None`: until done).
pub fn migrate(
    db: &Database,
    step_events: usize,
    max_steps: Option<usize>,
) -> Result<Opened, MigrateError> {
    let (format, legacy) = {
        let txn = db.begin_read()?;
        let format = match txn.open_table(META) {
            Ok(meta) => meta.get("format")?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let legacy = txn.list_tables()?.any(|t| t.name() == EVENTS.name());
        (format, legacy)
    };
    match format {
        Some(FORMAT) => return Ok(Opened::Current),
        Some(newer) if newer > FORMAT => return Err(MigrateError::Newer(newer)),
        _ => {}
    }
    if !legacy {
        finish(db)?;
        return Ok(Opened::Current);
    }
    let mut moved = 0;
    let mut steps = 0;
    loop {
        if max_steps.is_some_and(|max| steps >= max) {
            return Ok(Opened::Migrated {
                events: moved,
                done: false,
            });
        }
        let n = step(db, step_events)?;
        moved += n;
        steps += 1;
        if n == 0 {
            break;
        }
    }
    finish(db)?;
    tracing::info!(
        events = moved,
        "the event log was migrated to format {FORMAT}"
    );
    Ok(Opened::Migrated {
        events: moved,
        done: true,
    })
}

/// Moves up to `max` of the oldest events left in `events` into chunks; returns how many.
fn step(db: &Database, max: usize) -> Result<u64, MigrateError> {
    let txn = db.begin_write()?;
    let moved = {
        let mut events = txn.open_table(EVENTS)?;
        let mut chunks = txn.open_table(CHUNKS)?;
        let mut builder = ChunkBuilder::default();
        // The position the next event must have: after the chunks moved so far.
        let mut next = match chunks.last()? {
            Some((first, row)) => first.value() + Chunk::count_of(row.value()),
            None => 1,
        };
        let mut count = 0;
        for row in events.range::<u64>(..)?.take(max) {
            let (position, bytes) = row?;
            let position = position.value();
            let old: LegacyEvent =
                postcard::from_bytes(bytes.value()).map_err(|e| MigrateError::Corrupt {
                    position,
                    reason: e.to_string(),
                })?;
            let event = StoredEvent {
                stream: old.stream,
                stream_version: old.stream_version,
                event_type: old.event_type,
                timestamp_ms: old.timestamp_ms,
                data: old.data,
                metadata: old.metadata,
            };
            if position != next {
                return Err(MigrateError::Corrupt {
                    position,
                    reason: format!("the log has a gap: event {next} is missing"),
                });
            }
            if let Some((first, row)) = builder.push(position, &event) {
                chunks.insert(first, row.as_slice())?;
            }
            next += 1;
            count += 1;
        }
        if let Some((first, row)) = builder.finish() {
            chunks.insert(first, row.as_slice())?;
        }
        if count > 0 {
            events.retain_in(..next, |_, _| false)?;
        }
        count
    };
    txn.commit()?;
    Ok(moved)
}

/// The last step: tables of today's format, remembered appends rewritten, `events` dropped,
/// the format written.
fn finish(db: &Database) -> Result<(), MigrateError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(CHUNKS)?;
        txn.open_table(STREAMS)?;
        txn.open_table(STREAM_INDEX)?;
        let mut remembered = txn.open_table(idempotency::REMEMBERED)?;
        let mut expiry = txn.open_table(idempotency::EXPIRY)?;
        let rewritten = idempotency::upgrade(&mut remembered, &mut expiry)?;
        if rewritten > 0 {
            tracing::info!(rewritten, "remembered appends were given their time");
        }
        txn.delete_table(EVENTS)?;
        txn.open_table(META)?.insert("format", FORMAT)?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{EventLog, ExpectedVersion, NewEvent};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn event(data: &str) -> NewEvent {
        NewEvent {
            event_type: "T".into(),
            data: data.as_bytes().to_vec(),
            metadata: None,
            id: None,
        }
    }

    /// A file as a Prism between commits 7fed49e and 3bb8d1b left it: events in `events`, and
    /// appends remembered without their time (only the expiry table had it).
    #[test]
    fn appends_remembered_without_their_time_are_honoured_after_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let fresh = vec![event("1"), event("2")];
        let stale = vec![event("3")];
        {
            let db = crate::store::open_database(&path, crate::store::LOG_CACHE_BYTES).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut events = txn.open_table(EVENTS).unwrap();
                let mut streams = txn.open_table(STREAMS).unwrap();
                let mut index = txn.open_table(STREAM_INDEX).unwrap();
                for (p, (stream, v, data)) in [("a", 1, "1"), ("a", 2, "2"), ("b", 1, "3")]
                    .into_iter()
                    .enumerate()
                {
                    let old = LegacyEvent {
                        stream,
                        stream_version: v,
                        event_type: "T",
                        timestamp_ms: now,
                        data: data.as_bytes(),
                        metadata: b"{}",
                    };
                    let row = postcard::to_stdvec(&old).unwrap();
                    events.insert(p as u64 + 1, row.as_slice()).unwrap();
                    streams.insert(stream, v).unwrap();
                    index.insert((stream, v), p as u64 + 1).unwrap();
                }
                let mut remembered = txn.open_table(idempotency::REMEMBERED).unwrap();
                let mut expiry = txn.open_table(idempotency::EXPIRY).unwrap();
                for (key, stream, events, first, last, at) in [
                    ("k:fresh", "a", &fresh, 1, 2, now - 1000),
                    ("k:stale", "b", &stale, 3, 3, 5),
                ] {
                    let digest = idempotency::digest(&[crate::log::StreamAppend {
                        stream: stream.into(),
                        expected: ExpectedVersion::Any,
                        events: events.clone(),
                    }]);
                    let record = idempotency::RememberedV1 {
                        digest: &digest,
                        stream,
                        first_position: first,
                        last_position: last,
                        stream_version: last - first + 1,
                    };
                    let row = postcard::to_stdvec(&record).unwrap();
                    remembered.insert(key, row.as_slice()).unwrap();
                    expiry.insert((at, key), ()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let log = EventLog::open(&path).unwrap();
        assert_eq!(log.head(), 3);
        let retry = |key: &str, stream: &str, events: &Vec<NewEvent>| {
            futures::executor::block_on(log.append_once(
                Some(key.into()),
                stream,
                ExpectedVersion::Any,
                events.clone(),
            ))
            .unwrap()
        };
        // Remembered within the window: a retry, answered with the first result.
        let again = retry("fresh", "a", &fresh);
        assert!(again.replayed);
        assert_eq!((again.first_position, again.last_position), (1, 2));
        // Remembered long ago (past the 24 h window): not a retry any more.
        let anew = retry("stale", "b", &stale);
        assert!(!anew.replayed);
        assert_eq!(anew.first_position, 4);
        assert_eq!(log.read_from(1, 10).unwrap().len(), 4);
    }
}
