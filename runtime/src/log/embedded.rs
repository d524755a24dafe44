//! The embedded log: events in one redb file (`log.redb`), appended by one writer thread that
//! group-commits, with its stream index in a file beside it (`log-index.redb`, [`index`]).

use super::chunk::Chunk;
use super::schema::CHUNKS;
use super::store::{Append, LogStore};
use super::{
    AppendError, Appended, LogOptions, OpenError, ReadError, RecordedEvent, index, migrate, shared,
    writer,
};
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::{oneshot, watch};

/// An append on its way to the writer thread.
pub(super) struct AppendRequest {
    pub(super) append: Append,
    pub(super) reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// The embedded log. When dropped, the writer finishes its pending appends and the files are
/// closed.
pub struct RedbLog {
    pub(super) db: Arc<shared::Shared>,
    pub(super) index: Arc<index::StreamIndex>,
    writer: Writer,
    pub(super) head: watch::Receiver<u64>,
}

/// The writer thread's queue; dropping it closes the queue and waits for the thread, then
/// for the stream indexer to index what the writer appended last.
struct Writer {
    queue: Option<mpsc::SyncSender<AppendRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
    indexer: Option<index::Indexer>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The writer must not wait for room in the index while it is being joined.
        if let Some(indexer) = &self.indexer {
            indexer.index.close();
        }
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        drop(self.indexer.take());
    }
}

impl RedbLog {
    /// Opens (or creates) the log file at `path`, brings it to today's format, and starts its
    /// writer and indexer threads.
    pub fn open(path: &Path, options: LogOptions) -> Result<RedbLog, OpenError> {
        let queue = options.queue;
        let window = options.idempotency_window;
        let fail = |source: redb::Error| OpenError::Database {
            path: path.display().to_string(),
            source,
        };
        let db = crate::store::open_database(path, crate::store::LOG_CACHE_BYTES).map_err(fail)?;
        migrate::migrate(&db, migrate::STEP_EVENTS, None).map_err(|source| OpenError::Migrate {
            path: path.display().to_string(),
            source,
        })?;
        let head = read_head(&db).map_err(fail)?;
        let index_path = index::path_of(path);
        let index = Arc::new(index::StreamIndex::open(&index_path, &db, head).map_err(
            |source| OpenError::Database {
                path: index_path.display().to_string(),
                source,
            },
        )?);
        let db = Arc::new(shared::Shared::new(
            path.to_path_buf(),
            db,
            crate::store::LOG_CACHE_BYTES,
        ));
        let (indexing, indexed_log) = (index.clone(), db.clone());
        let indexer = index::Indexer {
            index: index.clone(),
            thread: Some(
                std::thread::Builder::new()
                    .name("prism-log-index".into())
                    .spawn(move || indexing.run(&indexed_log))
                    .map_err(OpenError::Spawn)?,
            ),
        };
        let (head_tx, head_rx) = watch::channel(head);
        let (queue, requests) = mpsc::sync_channel(queue.max(1));
        let (writer_db, writer_index) = (db.clone(), index.clone());
        let thread = std::thread::Builder::new()
            .name("prism-log-writer".into())
            .spawn(move || {
                writer::write_loop(&writer_db, &writer_index, requests, head_tx, head, window)
            })
            .map_err(OpenError::Spawn)?;
        Ok(RedbLog {
            db,
            index,
            writer: Writer {
                queue: Some(queue),
                thread: Some(thread),
                indexer: Some(indexer),
            },
            head: head_rx,
        })
    }
}

impl LogStore for RedbLog {
    fn append(&self, append: Append) -> BoxFuture<'static, Result<Appended, AppendError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .writer
            .queue
            .as_ref()
            .expect("the queue lives as long as the log")
            .try_send(AppendRequest { append, reply })
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => AppendError::Busy,
                mpsc::TrySendError::Disconnected(_) => AppendError::Closed,
            });
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| AppendError::Closed)?
        })
    }

    fn trouble(&self) -> Option<String> {
        self.db.trouble()
    }

    fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn stream_version(&self, stream: &str) -> Result<u64, ReadError> {
        RedbLog::stream_version(self, stream)
    }

    fn streams(&self, after: Option<&str>, max: usize) -> Result<Vec<(String, u64)>, ReadError> {
        RedbLog::streams(self, after, max)
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        RedbLog::read_stream(self, stream, from, max)
    }
}

/// The position of the last event in the log (0 when empty).
pub(super) fn read_head(db: &Database) -> Result<u64, redb::Error> {
    let txn = db.begin_read()?;
    let chunks = txn.open_table(CHUNKS)?;
    match chunks.last()? {
        None => Ok(0),
        // The head follows from the last chunk: a damaged one must not give a head below
        // the events stored (appends would overwrite them).
        Some((first, row)) => match Chunk::parse(row.value()) {
            Ok(_) => Ok(first.value() + Chunk::count_of(row.value()) - 1),
            Err(reason) => Err(redb::Error::Corrupted(format!(
                "the log's last chunk (from position {}) is damaged: {reason}",
                first.value()
            ))),
        },
    }
}
