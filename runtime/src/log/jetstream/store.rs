//! [`JetStreamLog`]: the event log kept in a NATS JetStream stream ([`protocol`]'s layout).
//!
//! Each event is one message on its stream's subject, at a sequence that is its log position;
//! its stream version travels in the `Prism-Version` header, its type, metadata and data in the
//! payload (`type length: u16, type, metadata length: u32, metadata, data`), its timestamp is
//! the server's. The NATS client runs on a small runtime of its own, so that the log's
//! blocking reads can be called from any thread and its appends awaited on any runtime.
//!
//! Appends: [`append`](super::append); idempotency keys and event ids: [`claims`](super::claims).
//!
//! The head moves with this node's appends and with the sequences the server republishes for
//! every stored event (any node's), and is read from the server every second in case one was
//! missed. Stream reads and listing use the node's stream index ([`index`](super::index)).

use super::claims;
use super::index::{self, StreamIndex};
use super::message::{self, decode};
use super::options::JetStreamOptions;
use super::protocol::{self, subject_of};
use super::readahead::{self, ReadAhead, Source};
use crate::log::{
    Append, AppendError, Appended, BatchRead, BatchReader, FlatBatch, LogStore, ReadError,
    RecordedEvent, StoredEvent,
};
use async_nats::jetstream::stream::Stream;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Most messages one batch direct get asks for.
const MAX_GET: usize = readahead::BATCH;

/// How long a listing waits for the node's stream index to reach the head (then 503).
const LISTING_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Inner {
    pub client: async_nats::Client,
    /// The events stream's handle: its info and direct gets without looking it up again.
    pub events: Stream,
    /// Idempotency keys and event ids.
    pub claims: async_nats::jetstream::kv::Store,
    pub options: JetStreamOptions,
    head: watch::Sender<u64>,
    read_ahead: ReadAhead,
    /// The last message (sequence, stream version) of streams this node appended to: the
    /// expectation of its next one-stream append there, which the server checks.
    pub lasts: parking_lot::Mutex<rustc_hash::FxHashMap<String, (u64, u64)>>,
    /// Each stream's version and events' positions, from the log.
    pub index: Arc<StreamIndex>,
}

impl Inner {
    /// The log holds events up to `position` (at least).
    pub fn moved(&self, position: u64) {
        self.head
            .send_if_modified(|h| std::mem::replace(h, (*h).max(position)) < position);
    }

    /// The head as it moves.
    pub fn heads(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}

/// The event log in NATS JetStream.
pub struct JetStreamLog {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    head: watch::Receiver<u64>,
    identity: String,
}

impl JetStreamLog {
    /// Connects to the servers at `urls` (`nats://host:port`, comma-separated) with the
    /// default options: [`connect_with`](Self::connect_with).
    pub fn connect(urls: &str, replicas: usize) -> anyhow::Result<JetStreamLog> {
        Self::connect_with(JetStreamOptions::new(urls, replicas))
    }

    /// Connects to the servers, checks their version and the events stream (creating it, and
    /// the claims bucket, when missing).
    pub fn connect_with(options: JetStreamOptions) -> anyhow::Result<JetStreamLog> {
        Self::connect_checked(options, |_| Ok(()))
    }

    /// [`connect_with`](Self::connect_with), refusing the log when `check` refuses its
    /// [`identity`](Self::identity), before the node's index of it is opened (a data dir
    /// started on another log keeps its index).
    pub fn connect_checked(
        options: JetStreamOptions,
        check: impl FnOnce(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<JetStreamLog> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("prism-jetstream")
            .enable_all()
            .build()?;
        let opened = options.clone();
        let options_poll = options.head_poll;
        let opening = wait(runtime.handle(), async move {
            let options = opened;
            let urls = super::options::masked(&options.urls);
            let client = options.connect().await?;
            let version = client.server_info().version;
            if !prism_toolchain::nats::supported(&version) {
                anyhow::bail!(
                    "NATS at {urls} runs nats-server {version}; Prism's JetStream log needs 2.15.1 or later (a pre-release of 2.15.1 counts as older)"
                );
            }
            let js = async_nats::jetstream::new(client.clone());
            protocol::ensure_stream(&js, options.replicas).await?;
            let events = js.get_stream(protocol::STREAM).await?;
            let claims = claims::bucket(&js, options.replicas, options.idempotency_window).await?;
            // Following the republished heads before reading the head: no append in between is
            // missed (the subscription is on the server once the flush returns).
            let heads = client.subscribe(protocol::HEADS).await?;
            client.flush().await?;
            let head = read_head(&events).await?;
            Ok::<_, anyhow::Error>((client, events, claims, head, heads))
        });
        let opening = opening.and_then(|(client, events, claims, head, heads)| {
            let identity = protocol::identity(events.cached_info());
            check(&identity)?;
            let index = StreamIndex::open(options.index.as_deref(), &identity, head)
                .map_err(|e| anyhow::anyhow!("opening the stream index: {e}"))?;
            Ok((client, events, claims, head, heads, identity, index))
        });
        let (client, events, claims, head, heads, identity, index) = match opening {
            Ok(opened) => opened,
            Err(e) => {
                // Without waiting: this may be called on an async worker.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let (sender, receiver) = watch::channel(head);
        let inner = Arc::new(Inner {
            client,
            events,
            claims,
            options,
            head: sender,
            read_ahead: ReadAhead::default(),
            lasts: Default::default(),
            index: Arc::new(index),
        });
        runtime.spawn(follow_heads(Arc::downgrade(&inner), heads));
        runtime.spawn(poll_head(Arc::downgrade(&inner), options_poll));
        if inner.options.follow_index {
            runtime.spawn(index::follow(Arc::downgrade(&inner)));
        }
        Ok(JetStreamLog {
            inner,
            runtime: Some(runtime),
            head: receiver,
            identity,
        })
    }

    /// The connection to the servers (a cluster's buckets live beside the log).
    pub fn client(&self) -> async_nats::Client {
        self.inner.client.clone()
    }

    /// Which log this is ([`protocol::identity`]).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The last position this node's stream index holds.
    pub fn indexed(&self) -> u64 {
        self.inner.index.indexed()
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the log")
            .handle()
    }

    /// `stream`'s last message, from the leader ([`last_of`]).
    fn last(&self, stream: &str) -> Result<(u64, u64), ReadError> {
        let (events, stream) = (self.inner.events.clone(), stream.to_string());
        self.read(async move { last_of(&events, &stream).await.map_err(anyhow::Error::from) })
    }

    /// Runs `read` on the client's runtime and waits for it here.
    fn read<T: Send + 'static>(
        &self,
        read: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> Result<T, ReadError> {
        // The servers did not answer (a leader election, a lost connection): try again later.
        wait(self.handle(), read).map_err(|e| ReadError::Unavailable(format!("{e:#}")))
    }
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        // Without waiting: the log may be dropped on an async worker.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `handle`'s runtime and blocks this thread until it is done.
pub(super) fn wait<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = sender.send(future.await);
    });
    receiver.recv().expect("the JetStream runtime stopped")
}

pub(super) async fn read_head(events: &Stream) -> anyhow::Result<u64> {
    Ok(events.get_info().await?.state.last_sequence)
}

/// Moves the head as the server republishes each stored event's sequence.
async fn follow_heads(inner: std::sync::Weak<Inner>, mut heads: async_nats::Subscriber) {
    use futures::StreamExt;
    while let Some(message) = heads.next().await {
        let Some(inner) = inner.upgrade() else { return };
        if let Some(sequence) = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Sequence"))
            .and_then(|v| v.as_str().parse().ok())
        {
            inner.moved(sequence);
        }
    }
}

async fn poll_head(inner: std::sync::Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Ok(head) = read_head(&inner.events).await {
            inner.moved(head);
        }
    }
}

/// The last message of `stream`: its sequence and the stream's version (0, 0 when none). Asked
/// of the stream's leader, not by a direct get: a replica may answer those from behind, and an
/// append's versions must be current.
pub(super) async fn last_of(events: &Stream, stream: &str) -> Result<(u64, u64), AppendError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match events
        .get_last_raw_message_by_subject(&subject_of(stream))
        .await
    {
        Ok(message) => {
            let version = message::version_of(&message.headers).ok_or_else(|| {
                AppendError::Storage(format!("the last event of {stream:?} has no version"))
            })?;
            Ok((message.sequence, version))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((0, 0)),
        Err(e) => Err(AppendError::Unavailable(e.to_string())),
    }
}

impl LogStore for JetStreamLog {
    fn append(&self, request: Append) -> BoxFuture<'static, Result<Appended, AppendError>> {
        let done = self
            .handle()
            .spawn(super::append::append(self.inner.clone(), request));
        Box::pin(async move { done.await.map_err(|_| AppendError::Closed)? })
    }

    fn trouble(&self) -> Option<String> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => None,
            state => Some(format!(
                "the connection to the NATS servers is {state}: appends and reads wait for it"
            )),
        }
    }

    fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn current_head(&self) -> Result<u64, ReadError> {
        // The stream's state, answered by its leader.
        let inner = self.inner.clone();
        let head = self.read(async move { read_head(&inner.events).await })?;
        self.inner.moved(head);
        Ok(head)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn stream_version(&self, stream: &str) -> Result<u64, ReadError> {
        Ok(self.last(stream)?.1)
    }

    fn streams(&self, after: Option<&str>, max: usize) -> Result<Vec<(String, u64)>, ReadError> {
        let index = &self.inner.index;
        index.reach(self.head(), LISTING_WAIT)?;
        index.streams(after, max)
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let (client, subject) = (self.inner.client.clone(), subject_of(stream));
        let timeout = self.inner.options.read_timeout;
        let from = from.max(1);
        if max == 0 {
            return Ok(Vec::new());
        }
        // What the read must find, from the leader: a replica behind answers a filtered read
        // with what it holds ("not found" beyond), so an answer short of it is asked again.
        let (last_sequence, version) = self.last(stream)?;
        if version < from {
            return Ok(Vec::new());
        }
        let want = usize::try_from(version - from + 1)
            .unwrap_or(usize::MAX)
            .min(max);
        let min_last = self.head().max(last_sequence);
        let mut at = self.inner.index.start_of(stream, from)?;
        let mut deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        // The server's per-subject index walks on from there; versions before `from` (of
        // events the stream index does not hold yet) are skipped here.
        while out.len() < want {
            let (client, subject) = (client.clone(), subject.clone());
            let got = self.read(async move {
                protocol::direct_get_batch_after(
                    &client,
                    at,
                    Some(&subject),
                    MAX_GET,
                    protocol::GET_BYTES,
                    min_last,
                    timeout,
                )
                .await
            })?;
            let Some(last) = got.last() else {
                if std::time::Instant::now() >= deadline {
                    return Err(ReadError::Unavailable(format!(
                        "the replica answering holds {stream:?} up to version {} of {version}: \
                         try again",
                        out.last()
                            .map_or(from - 1, |e: &RecordedEvent| e.stream_version)
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            at = last.sequence + 1;
            deadline = std::time::Instant::now() + timeout;
            for message in &got {
                let decoded = decode(message)?;
                if decoded.event.stream_version >= from && out.len() < want {
                    let event = StoredEvent {
                        stream: &decoded.stream,
                        ..decoded.event
                    };
                    out.push(RecordedEvent::from_stored(decoded.position, &event));
                }
            }
        }
        Ok(out)
    }
}

impl BatchReader for JetStreamLog {
    fn read_batch(
        &self,
        read: &BatchRead,
        keep: &mut dyn FnMut(&str, &str) -> bool,
        out: &mut FlatBatch,
    ) -> Result<Option<u64>, ReadError> {
        out.clear();
        if read.from > read.until || read.max_scanned == 0 || read.max_events == 0 {
            return Ok(None);
        }
        let span = (read.until - read.from).saturating_add(1);
        let ask = read
            .max_scanned
            .min(MAX_GET)
            .min(usize::try_from(span).unwrap_or(usize::MAX));
        let source = Source {
            runtime: self.handle(),
            client: &self.inner.client,
            timeout: self.inner.options.read_timeout,
            head: *self.head.borrow(),
        };
        let got = self
            .inner
            .read_ahead
            .read(
                &source,
                read.from,
                read.until,
                ask,
                read.max_bytes.min(64 << 20),
            )
            .map_err(|e| ReadError::Unavailable(format!("{e:#}")))?;
        let mut last = None;
        for message in &got {
            let decoded = decode(message)?;
            last = Some(decoded.position);
            let event = StoredEvent {
                stream: &decoded.stream,
                ..decoded.event
            };
            if keep(event.stream, event.event_type) {
                out.push(decoded.position, &event);
            }
            if out.len() >= read.max_events || out.byte_len() >= read.max_bytes {
                break;
            }
        }
        Ok(last)
    }
}
