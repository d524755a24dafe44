//! What every store behind the event log does: the embedded redb log ([`RedbLog`]) and NATS
//! JetStream ([`JetStreamLog`](super::jetstream::JetStreamLog)). Everything above the log — runners, HTTP, verify,
//! `prism test` — holds an [`EventLog`], which checks each append the same way whatever the
//! store and reaches the store only through this trait.
//!
//! Positions are the log's global order: 1, 2, 3, … without gaps, one sequence for the whole
//! log. A store whose order is partitioned (several streams, Kafka partitions) would map its
//! own offsets onto it or change [`BatchRead::from`] and checkpoints into a vector; nothing
//! above the trait reads a position other than to compare, store and pass it back.
//!
//! [`RedbLog`]: super::RedbLog
//! [`EventLog`]: super::EventLog

#[cfg(doc)]
use super::flat::BatchRead;
use super::flat::BatchReader;
use super::{AppendError, Appended, ReadError, RecordedEvent, StreamAppend};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// One append as a store receives it: already checked (names, sizes, ids; see
/// [`EventLog::append_all_after`](super::EventLog::append_all_after)).
#[derive(Debug, Clone)]
pub struct Append {
    /// The idempotency key, if any: the same append under it within the window appends
    /// nothing and answers the first one's result.
    pub key: Option<String>,
    /// The streams' parts, appended atomically in this order at consecutive positions.
    pub parts: Vec<StreamAppend>,
    /// Append only if the log's last position is then this one.
    pub expected_head: Option<u64>,
}

/// A store behind the event log. Reads are blocking calls (runners read on their own
/// threads, HTTP handlers off the async workers); appends are futures.
pub trait LogStore: BatchReader + Send + Sync + 'static {
    /// Appends atomically (all events or none), acknowledged once durable as the store
    /// defines it; refusals as [`AppendError`] says.
    fn append(&self, append: Append) -> BoxFuture<'static, Result<Appended, AppendError>>;

    /// Why appends fail, while they do; `None` when they work.
    fn trouble(&self) -> Option<String>;

    /// The position of the last acknowledged event (0 when the log is empty).
    fn head(&self) -> u64;

    /// A watch of [`head`](Self::head).
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// The head as the store's authority knows it now, not as this process last heard of it
    /// (a distributed store's leader; the embedded log's head is always current).
    fn current_head(&self) -> Result<u64, ReadError> {
        Ok(self.head())
    }

    /// The stream's version (its number of events; 0 when it does not exist).
    fn stream_version(&self, stream: &str) -> Result<u64, ReadError>;

    /// Up to `max` stream names after `after`, in name order, with their versions.
    fn streams(&self, after: Option<&str>, max: usize) -> Result<Vec<(String, u64)>, ReadError>;

    /// Up to `max` events of `stream` from stream version `from` on.
    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError>;
}
