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
//! In progress (issue 14): stream reads and listing ask the server (its per-subject index)
//! rather than a node-local index; the head is polled (100 ms) and moved by this node's own
//! appends, not yet pushed by a republish.

use super::claims;
use super::message::{self, decode};
use super::protocol::{self, subject_of};
use crate::log::{
    Append, AppendError, Appended, BatchRead, BatchReader, FlatBatch, LogStore, ReadError,
    RecordedEvent, StoredEvent,
};
use anyhow::Context;
use async_nats::jetstream::stream::Stream;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the head is read from the server (besides this node's own appends).
const HEAD_POLL: Duration = Duration::from_millis(100);
/// Most messages one batch direct get asks for.
const MAX_GET: usize = 1000;

/// How to reach the servers and what to expect of them.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// `nats://host:port`, comma-separated (any of a cluster's servers).
    pub urls: String,
    /// How many servers keep each event (1, or 3 in a cluster; 5 at most).
    pub replicas: usize,
    /// How long idempotency keys and event ids are remembered.
    pub idempotency_window: Duration,
    /// How long a request to the server may take before its outcome is unknown.
    pub request_timeout: Duration,
    /// How long an append of unknown outcome keeps trying to learn it before answering
    /// [`AppendError::Unknown`](crate::log::AppendError::Unknown).
    pub resolve_within: Duration,
    /// A NATS credentials file (JWT and NKey seed), if the servers require one.
    pub credentials: Option<PathBuf>,
    /// PEM root certificates to trust (and TLS required), if the servers use a private CA.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), if the servers require mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

impl JetStreamOptions {
    /// The defaults for servers at `urls`, keeping each event on `replicas` servers.
    pub fn new(urls: &str, replicas: usize) -> JetStreamOptions {
        JetStreamOptions {
            urls: urls.to_string(),
            replicas,
            idempotency_window: crate::log::IDEMPOTENCY_WINDOW,
            request_timeout: Duration::from_secs(5),
            resolve_within: Duration::from_secs(30),
            credentials: None,
            tls_ca: None,
            tls_client: None,
        }
    }

    pub(super) async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new()
            .name("prism")
            .request_timeout(Some(self.request_timeout));
        if let Some(path) = &self.credentials {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading the NATS credentials {}", path.display()))?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = self
            .urls
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading the NATS urls {:?}", self.urls))?;
        options
            .connect(urls)
            .await
            .with_context(|| format!("connecting to NATS at {}", self.urls))
    }
}

pub(super) struct Inner {
    pub client: async_nats::Client,
    /// The events stream's handle: its info and direct gets without looking it up again.
    pub events: Stream,
    /// Idempotency keys and event ids.
    pub claims: async_nats::jetstream::kv::Store,
    pub options: JetStreamOptions,
    head: watch::Sender<u64>,
}

impl Inner {
    /// The log holds events up to `position` (at least).
    pub fn moved(&self, position: u64) {
        self.head
            .send_if_modified(|h| std::mem::replace(h, (*h).max(position)) < position);
    }
}

/// The event log in NATS JetStream.
pub struct JetStreamLog {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    head: watch::Receiver<u64>,
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("prism-jetstream")
            .enable_all()
            .build()?;
        let opened = options.clone();
        let (client, events, claims, head) = wait(runtime.handle(), async move {
            let options = opened;
            let urls = &options.urls;
            let client = options.connect().await?;
            let version = client.server_info().version;
            if !prism_toolchain::nats::supported(&version) {
                anyhow::bail!(
                    "NATS at {urls} runs nats-server {version}; Prism's JetStream log needs 2.15.1 or later"
                );
            }
            let js = async_nats::jetstream::new(client.clone());
            protocol::ensure_stream(&js, options.replicas).await?;
            let events = js.get_stream(protocol::STREAM).await?;
            let claims = claims::bucket(&js, options.replicas, options.idempotency_window).await?;
            let head = read_head(&events).await?;
            Ok::<_, anyhow::Error>((client, events, claims, head))
        })?;
        let (sender, receiver) = watch::channel(head);
        let inner = Arc::new(Inner {
            client,
            events,
            claims,
            options,
            head: sender,
        });
        runtime.spawn(poll_head(Arc::downgrade(&inner)));
        Ok(JetStreamLog {
            inner,
            runtime: Some(runtime),
            head: receiver,
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the log")
            .handle()
    }

    /// Runs `read` on the client's runtime and waits for it here.
    fn read<T: Send + 'static>(
        &self,
        read: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> Result<T, ReadError> {
        wait(self.handle(), read).map_err(|e| ReadError::Storage(e.into()))
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
fn wait<T: Send + 'static>(
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

async fn poll_head(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(HEAD_POLL).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Ok(head) = read_head(&inner.events).await {
            inner.moved(head);
        }
    }
}

/// The last message of `stream`: its sequence and the stream's version (0, 0 when none).
pub(super) async fn last_of(events: &Stream, stream: &str) -> Result<(u64, u64), AppendError> {
    match events.direct_get_last_for_subject(subject_of(stream)).await {
        Ok(message) => {
            let version = message
                .headers
                .get(message::VERSION)
                .and_then(|v| v.as_str().parse().ok())
                .ok_or_else(|| {
                    AppendError::Storage(format!("the last event of {stream:?} has no version"))
                })?;
            Ok((message.sequence, version))
        }
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
            Ok((0, 0))
        }
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
        None
    }

    fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn stream_version(&self, stream: &str) -> Result<u64, ReadError> {
        let (events, stream) = (self.inner.events.clone(), stream.to_string());
        self.read(async move {
            last_of(&events, &stream)
                .await
                .map(|l| l.1)
                .map_err(anyhow::Error::from)
        })
    }

    fn streams(&self, after: Option<&str>, max: usize) -> Result<Vec<(String, u64)>, ReadError> {
        let events = self.inner.events.clone();
        let mut all = self
            .read(async move {
                use futures::TryStreamExt;
                let subjects: Vec<(String, usize)> = events
                    .info_with_subjects("prism.ev.>")
                    .await?
                    .try_collect()
                    .await?;
                Ok(subjects)
            })?
            .into_iter()
            .filter_map(|(subject, count)| Some((protocol::stream_of(&subject)?, count as u64)))
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a))
            .collect::<Vec<_>>();
        all.sort_unstable();
        all.truncate(max);
        Ok(all)
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let (client, subject) = (self.inner.client.clone(), subject_of(stream));
        let timeout = self.inner.options.request_timeout;
        let from = from.max(1);
        let mut out = Vec::new();
        let mut at = 1;
        // The server's per-subject index walks the stream's messages; versions before `from`
        // are skipped here.
        while out.len() < max {
            let (client, subject) = (client.clone(), subject.clone());
            let got = self.read(async move {
                protocol::direct_get_batch(&client, at, Some(&subject), MAX_GET, 8 << 20, timeout)
                    .await
            })?;
            let Some(last) = got.last() else { break };
            at = last.sequence + 1;
            for message in &got {
                let decoded = decode(message)?;
                if decoded.event.stream_version >= from && out.len() < max {
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
        let (client, from, max_bytes) = (self.inner.client.clone(), read.from, read.max_bytes);
        let timeout = self.inner.options.request_timeout;
        let got = self.read(async move {
            protocol::direct_get_batch(&client, from, None, ask, max_bytes.min(64 << 20), timeout)
                .await
        })?;
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
