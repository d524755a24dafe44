//! The event log: an append-only sequence of immutable events.
//!
//! Every event gets a global, gapless position (1, 2, 3, ...) and a version within its stream
//! (1, 2, 3, ... per stream). An append is one request of events for one stream or several,
//! each stream's part optionally guarded by the stream version the caller expects (optimistic
//! concurrency); it either appends all its events or none.
//!
//! Everything above the log holds an [`EventLog`], which checks each append and hands it to
//! the store behind it, a [`LogStore`]. The embedded store, [`RedbLog`], keeps the events in
//! one redb file (`log.redb`) and appends through one writer thread that **group-commits**:
//! requests that arrive while a commit is in flight are validated one by one and committed
//! together in the next durable (`fsync`ed) transaction. An append is acknowledged only after
//! that commit returns, so an acknowledged event survives a crash. Readers (projectors, HTTP)
//! read committed snapshots in the flat batch layout ([`BatchReader`]) and wait for new events
//! on [`EventLog::subscribe`], a watch of the head position.
//!
//! Each stream's version and the positions of its events are an index derived from the log,
//! kept off the durable append in a file of its own ([`index`]); reads see an append in it as
//! soon as it is acknowledged.

mod chunk;
mod embedded;
mod flat;
mod idempotency;
mod index;
pub mod jetstream;
mod migrate;
mod read;
mod schema;
mod shared;
mod store;
mod writer;

use embedded::AppendRequest;
pub use embedded::RedbLog;
pub use flat::{BatchRead, BatchReader, FlatBatch, FlatHeader};
pub use migrate::{MigrateError, Opened};
pub use schema::{FORMAT, StoredEvent};
pub use store::{Append, LogStore};

use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// Longest stream name or event type accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// How many append requests one group commit takes at most.
const MAX_GROUP: usize = 4096;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event's type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// The event's data as JSON text.
    pub data: Vec<u8>,
    /// The event's metadata as JSON text (an object), if any.
    pub metadata: Option<Vec<u8>>,
    /// An id the client gave the event: the same id appended again within the idempotency
    /// window is recognised as a retry (see [`idempotency`]).
    pub id: Option<String>,
}

/// What the caller expects of the stream before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// Append only if the stream holds exactly this many events (0: the stream must not exist).
    Exact(u64),
}

/// The result of a successful append. Its events hold the consecutive positions
/// `first_position..=last_position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Position of the request's first event.
    pub first_position: u64,
    /// Position of the request's last event.
    pub last_position: u64,
    /// The stream's version after the append (its number of events).
    pub stream_version: u64,
    /// True when nothing was appended: the request was a retry of an append made before (by
    /// its idempotency key or its events' ids), whose result this is.
    pub replayed: bool,
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global position.
    pub position: u64,
    /// The stream it belongs to.
    pub stream: String,
    /// Its version within the stream.
    pub stream_version: u64,
    /// Its type.
    pub event_type: String,
    /// When the log stored it (milliseconds since the Unix epoch).
    pub timestamp_ms: u64,
    /// JSON data, as appended.
    pub data: Vec<u8>,
    /// JSON metadata (`{}` when none was given).
    pub metadata: Vec<u8>,
}

impl RecordedEvent {
    pub(crate) fn from_stored(position: u64, e: &StoredEvent<'_>) -> Self {
        RecordedEvent {
            position,
            stream: e.stream.to_string(),
            stream_version: e.stream_version,
            event_type: e.event_type.to_string(),
            timestamp_ms: e.timestamp_ms,
            data: e.data.to_vec(),
            metadata: e.metadata.to_vec(),
        }
    }
}

/// Why an append was refused. Nothing of a refused request is appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream's version was not the one the caller expected.
    #[error("stream {stream:?} is at version {actual}, but the append expected version {expected}")]
    VersionConflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
    /// The log's head was not the one the append expected; nothing was appended.
    #[error("the log's head is at {actual}, not the expected {expected}; nothing was appended")]
    HeadMoved { expected: u64, actual: u64 },
    /// The request is malformed (empty stream name, no events, a name too long...).
    #[error("{0}")]
    Invalid(String),
    /// The log could not store the events.
    #[error("the event log could not store the events: {0}")]
    Storage(String),
    /// The log cannot write now (a full disk, an I/O error); nothing was appended, and the
    /// log recovers by itself when writing works again.
    #[error("the event log cannot write now ({0}); nothing was appended: try again later")]
    Unavailable(String),
    /// No answer came from the log's servers in time: the append may or may not have been
    /// stored. Sent again with the same idempotency key or event ids, it is stored at most once.
    #[error("{0}")]
    Unknown(String),
    /// The log's writer has stopped (Prism is shutting down).
    #[error("the event log is closed")]
    Closed,
    /// The append's idempotency key, or some of its events' ids, were used by a different
    /// append within the idempotency window; nothing was appended.
    #[error("{0}")]
    Duplicate(String),
    /// Too many appends are waiting for the log's writer; nothing was appended, and the same
    /// append may be sent again shortly.
    #[error("too many appends are waiting for the event log; try again shortly")]
    Busy,
}

/// Why a read of the log failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store behind the log failed to read.
    #[error("reading the event log failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The log cannot be read now (it is being reopened after an I/O error).
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    /// A stored event could not be decoded.
    #[error("event {position} in the log cannot be decoded: {reason}")]
    Corrupt { position: u64, reason: String },
}

impl From<redb::Error> for ReadError {
    fn from(e: redb::Error) -> Self {
        ReadError::Storage(Box::new(e))
    }
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file could not be opened or is damaged.
    #[error(
        "cannot open the event log {path}: {source}. The log is the source of truth and cannot be rebuilt: \
         if the file is damaged, restore it from a backup (views can be rebuilt from the log; the log cannot)"
    )]
    Database {
        path: String,
        #[source]
        source: redb::Error,
    },
    /// The file could not be brought to today's format.
    #[error("cannot bring the event log {path} to today's format: {source}")]
    Migrate {
        path: String,
        #[source]
        source: MigrateError,
    },
    /// The log's writer thread could not be started.
    #[error("cannot start the event log's writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// One stream's part of an append: its events, guarded by the version the caller expects the
/// stream to be at when this part's turn comes (after the request's earlier parts).
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// The event log: what everything above the log holds. Cheap to clone; all clones share one
/// store ([`LogStore`]). Appends are checked here, the same way for every store.
#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn LogStore>,
}

pub const APPEND_QUEUE: usize = 4096;

/// How long idempotency keys and event ids are remembered by default.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How a log runs.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Appends that may wait for the writer; more are refused ([`AppendError::Busy`]).
    pub queue: usize,
    /// How long idempotency keys and event ids are remembered.
    pub idempotency_window: std::time::Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            queue: APPEND_QUEUE,
            idempotency_window: IDEMPOTENCY_WINDOW,
        }
    }
}

impl EventLog {
    /// Opens (or creates) the embedded log file at `path` and starts its writer thread, with
    /// room for [`APPEND_QUEUE`] waiting appends.
    pub fn open(path: &Path) -> Result<EventLog, OpenError> {
        EventLog::open_with_queue(path, APPEND_QUEUE)
    }

    /// Like [`open`](Self::open), with room for `queue` waiting appends (at least 1): when it
    /// is full, appends are refused at once ([`AppendError::Busy`]) rather than queued without
    /// bound.
    pub fn open_with_queue(path: &Path, queue: usize) -> Result<EventLog, OpenError> {
        EventLog::open_with(
            path,
            LogOptions {
                queue,
                ..LogOptions::default()
            },
        )
    }

    /// Like [`open`](Self::open), with `options`.
    pub fn open_with(path: &Path, options: LogOptions) -> Result<EventLog, OpenError> {
        Ok(EventLog::new(RedbLog::open(path, options)?))
    }

    /// The log kept by `store`.
    pub fn new(store: impl LogStore) -> EventLog {
        EventLog {
            store: Arc::new(store),
        }
    }

    /// Appends `events` to `stream` atomically, once durable.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, AppendError> {
        self.append_once(None, stream, expected, events).await
    }

    /// [`append`](Self::append) under an idempotency key: within the idempotency window, the
    /// same append under the same key appends nothing and answers the first one's result
    /// (`replayed`); a different append under it is refused ([`AppendError::Duplicate`]).
    /// Events' ids are remembered the same way, with or without a key.
    pub async fn append_once(
        &self,
        key: Option<String>,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, AppendError> {
        let part = StreamAppend {
            stream: stream.to_string(),
            expected,
            events,
        };
        self.append_all(key, vec![part]).await
    }

    /// Appends `parts`, on one stream or several, atomically: all their events or none, at
    /// consecutive positions in the order given. Each part's expected version is checked
    /// against its stream after the earlier parts (a stream may come in several parts). The
    /// result's `stream_version` is the last part's stream's. Idempotency as for
    /// [`append_once`](Self::append_once).
    pub async fn append_all(
        &self,
        key: Option<String>,
        parts: Vec<StreamAppend>,
    ) -> Result<Appended, AppendError> {
        self.append_all_after(key, parts, None).await
    }

    /// [`append_all`](Self::append_all), only if the log's head is then `expected_head`
    /// (when given): appends sent back to back in a known order without waiting for each
    /// other, each expecting the head the previous one leaves, land in that order or are
    /// refused ([`AppendError::HeadMoved`]). A retry recognised by its key or ids answers its
    /// first result whatever the head (the precondition is not part of the append).
    pub async fn append_all_after(
        &self,
        key: Option<String>,
        parts: Vec<StreamAppend>,
        expected_head: Option<u64>,
    ) -> Result<Appended, AppendError> {
        validate(&parts)?;
        if let Some(key) = &key {
            idempotency::validate_id("an idempotency key", key).map_err(AppendError::Invalid)?;
        }
        self.store
            .append(store::Append {
                key,
                parts,
                expected_head,
            })
            .await
    }

    /// Why appends fail, while they do (a full disk, an I/O error); `None` when they work.
    pub fn trouble(&self) -> Option<String> {
        self.store.trouble()
    }

    /// The position of the last committed event (0 when the log is empty).
    pub fn head(&self) -> u64 {
        self.store.head()
    }

    /// The head as the log's authority knows it now (on JetStream, the stream's leader),
    /// rather than as this process last heard of it.
    pub fn current_head(&self) -> Result<u64, ReadError> {
        self.store.current_head()
    }

    /// A watch of the head position; it changes after every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.store.subscribe()
    }

    /// [`BatchReader::read_batch`] with a filter of the caller's type.
    pub fn read_batch<F>(
        &self,
        read: &BatchRead,
        mut keep: F,
        out: &mut FlatBatch,
    ) -> Result<Option<u64>, ReadError>
    where
        F: FnMut(&str, &str) -> bool,
    {
        self.store.read_batch(read, &mut keep, out)
    }

    /// Visits up to `max` events from position `from` on, in order, until `visit` returns
    /// false; returns the position of the last one visited (`None` when there are none).
    pub fn visit_from<F>(
        &self,
        from: u64,
        max: usize,
        mut visit: F,
    ) -> Result<Option<u64>, ReadError>
    where
        F: FnMut(u64, &StoredEvent<'_>) -> bool,
    {
        let mut batch = FlatBatch::default();
        let last = self.read_batch(&BatchRead::from(from, max), |_, _| true, &mut batch)?;
        for (i, header) in batch.headers.iter().enumerate() {
            let event = batch.event(i).expect("a batch's own event");
            if !visit(header.position, &event) {
                return Ok(Some(header.position));
            }
        }
        Ok(last)
    }

    /// Reads up to `max` events from position `from` on.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = Vec::new();
        self.visit_from(from, max, |position, e| {
            events.push(RecordedEvent::from_stored(position, e));
            true
        })?;
        Ok(events)
    }

    /// The stream's version (its number of events; 0 when it does not exist).
    pub fn stream_version(&self, stream: &str) -> Result<u64, ReadError> {
        self.store.stream_version(stream)
    }

    /// Up to `max` stream names after `after` (all when `None`), in name order, with their
    /// versions.
    pub fn streams(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, u64)>, ReadError> {
        self.store.streams(after, max)
    }

    /// Reads up to `max` events of `stream`, from stream version `from` on.
    pub fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        self.store.read_stream(stream, from, max)
    }
}

impl BatchReader for EventLog {
    fn read_batch(
        &self,
        read: &BatchRead,
        keep: &mut dyn FnMut(&str, &str) -> bool,
        out: &mut FlatBatch,
    ) -> Result<Option<u64>, ReadError> {
        self.store.read_batch(read, keep, out)
    }
}

fn validate(parts: &[StreamAppend]) -> Result<(), AppendError> {
    let invalid = |m: String| Err(AppendError::Invalid(m));
    if parts.iter().all(|p| p.events.is_empty()) {
        return invalid("an append needs at least one event".into());
    }
    let mut i = 0;
    let mut ids = std::collections::HashSet::new();
    for part in parts {
        if part.stream.is_empty() || part.stream.len() > MAX_NAME_LEN {
            return invalid(format!(
                "event {i}: a stream name must be 1 to {MAX_NAME_LEN} bytes long"
            ));
        }
        if part.events.is_empty() {
            return invalid(format!(
                "the part for stream {:?} has no event",
                part.stream
            ));
        }
        for event in &part.events {
            if event.event_type.is_empty() || event.event_type.len() > MAX_NAME_LEN {
                return invalid(format!(
                    "event {i}: an event type must be 1 to {MAX_NAME_LEN} bytes long"
                ));
            }
            if let Some(id) = &event.id {
                idempotency::validate_id(&format!("event {i}: an event id"), id)
                    .map_err(AppendError::Invalid)?;
                if !ids.insert(id) {
                    return invalid(format!("event {i}: the id {id:?} is given twice"));
                }
            }
            i += 1;
        }
    }
    Ok(())
}

/// Brings the log file at `path` to today's format, moving `step_events` events per
/// transaction and stopping after `max_steps` transactions: what an interrupted migration
/// leaves (for tests; opening the log migrates it whole).
#[doc(hidden)]
pub fn migrate_partially(
    path: &Path,
    step_events: usize,
    max_steps: usize,
) -> Result<Opened, anyhow::Error> {
    let db = crate::store::open_database(path, crate::store::LOG_CACHE_BYTES)?;
    Ok(migrate::migrate(&db, step_events, Some(max_steps))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: &str, data: &str) -> NewEvent {
        NewEvent {
            event_type: t.into(),
            data: data.as_bytes().to_vec(),
            metadata: None,
            id: None,
        }
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn invalid_requests_are_refused_before_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for (stream, events) in [
            ("", vec![event("T", "1")]),
            ("s", vec![]),
            ("s", vec![event("", "1")]),
            (long.as_str(), vec![event("T", "1")]),
        ] {
            let err = block(log.append(stream, ExpectedVersion::Any, events)).unwrap_err();
            assert!(matches!(err, AppendError::Invalid(_)), "{err}");
        }
        assert_eq!(log.head(), 0);
    }
}
