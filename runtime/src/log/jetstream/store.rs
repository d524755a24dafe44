//! [`JetStreamLog`]: the event log kept in a NATS JetStream stream ([`protocol`]'s layout).
//!
//! Each event is one message on its stream's subject, at a sequence that is its log position;
//! its stream version travels in the `Prism-Version` header, its type, metadata and data in the
//! payload (`type length: u16, type, metadata length: u32, metadata, data`), its timestamp is
//! the server's. The NATS client runs on a small runtime of its own, so that the log's
//! blocking reads can be called from any thread and its appends awaited on any runtime.
//!
//! In progress (issue 14): idempotency keys and event ids are refused with a clear error until
//! they share the embedded log's mechanism; stream reads and listing ask the server (its
//! per-subject index) rather than a node-local index; the head is polled (100 ms) and moved by
//! this node's own appends, not yet pushed by a republish.

use super::protocol::{self, Expect, Outbound, PublishError, Stored, subject_of};
use crate::log::{
    Append, AppendError, Appended, BatchRead, BatchReader, ExpectedVersion, FlatBatch, LogStore,
    ReadError, RecordedEvent, StoredEvent,
};
use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::stream::Stream;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a request to the server may take before its outcome is unknown.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often the head is read from the server (besides this node's own appends).
const HEAD_POLL: Duration = Duration::from_millis(100);
/// Most messages one batch direct get asks for.
const MAX_GET: usize = 1000;

struct Inner {
    client: async_nats::Client,
    /// The events stream's handle: its info and direct gets without looking it up again.
    events: Stream,
    head: watch::Sender<u64>,
}

/// The event log in NATS JetStream.
pub struct JetStreamLog {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    head: watch::Receiver<u64>,
}

impl JetStreamLog {
    /// Connects to the servers at `urls` (`nats://host:port`, comma-separated), checks their
    /// version and the events stream (creating it with `replicas` when missing).
    pub fn connect(urls: &str, replicas: usize) -> anyhow::Result<JetStreamLog> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("prism-jetstream")
            .enable_all()
            .build()?;
        let urls = urls.to_string();
        let (client, events, head) = wait(runtime.handle(), async move {
            let client = async_nats::connect(urls.as_str())
                .await
                .with_context(|| format!("connecting to NATS at {urls}"))?;
            let version = client.server_info().version;
            if !prism_toolchain::nats::supported(&version) {
                anyhow::bail!(
                    "NATS at {urls} runs nats-server {version}; Prism's JetStream log needs 2.15.1 or later"
                );
            }
            let js = async_nats::jetstream::new(client.clone());
            protocol::ensure_stream(&js, replicas).await?;
            let events = js.get_stream(protocol::STREAM).await?;
            let head = read_head(&events).await?;
            Ok::<_, anyhow::Error>((client, events, head))
        })?;
        let (sender, receiver) = watch::channel(head);
        let inner = Arc::new(Inner {
            client,
            events,
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

async fn read_head(events: &Stream) -> anyhow::Result<u64> {
    Ok(events.get_info().await?.state.last_sequence)
}

async fn poll_head(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(HEAD_POLL).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Ok(head) = read_head(&inner.events).await {
            inner
                .head
                .send_if_modified(|h| std::mem::replace(h, (*h).max(head)) < head);
        }
    }
}

/// The payload of an event: its type, metadata and data, lengths first.
fn encode(event_type: &str, metadata: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + event_type.len() + metadata.len() + data.len());
    out.extend_from_slice(&(event_type.len() as u16).to_le_bytes());
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    out.extend_from_slice(metadata);
    out.extend_from_slice(data);
    out
}

/// A stored message as an event of the log.
struct Decoded<'a> {
    position: u64,
    stream: String,
    event: StoredEvent<'a>,
}

fn decode(message: &Stored) -> Result<Decoded<'_>, ReadError> {
    let position = message.sequence;
    let corrupt = |reason: &str| ReadError::Corrupt {
        position,
        reason: reason.into(),
    };
    let stream =
        protocol::stream_of(&message.subject).ok_or_else(|| corrupt("not an event's subject"))?;
    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_string());
    let stream_version = header("Prism-Version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt("no Prism-Version"))?;
    let timestamp_ms = header("Nats-Time-Stamp")
        .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let bytes = &message.payload[..];
    let type_len = u16::from_le_bytes(
        bytes
            .get(..2)
            .ok_or_else(|| corrupt("short"))?
            .try_into()
            .unwrap(),
    ) as usize;
    let rest = bytes.get(2..).ok_or_else(|| corrupt("short"))?;
    let event_type = std::str::from_utf8(rest.get(..type_len).ok_or_else(|| corrupt("short"))?)
        .map_err(|_| corrupt("its type is not UTF-8"))?;
    let rest = &rest[type_len..];
    let meta_len = u32::from_le_bytes(
        rest.get(..4)
            .ok_or_else(|| corrupt("short"))?
            .try_into()
            .unwrap(),
    ) as usize;
    let rest = &rest[4..];
    let metadata = rest.get(..meta_len).ok_or_else(|| corrupt("short"))?;
    let data = &rest[meta_len..];
    Ok(Decoded {
        position,
        stream,
        event: StoredEvent {
            stream: "",
            stream_version,
            event_type,
            timestamp_ms,
            data,
            metadata,
        },
    })
}

/// The last message of `stream`: its sequence and the stream's version (0, 0 when none).
async fn last_of(events: &Stream, stream: &str) -> Result<(u64, u64), AppendError> {
    match events.direct_get_last_for_subject(subject_of(stream)).await {
        Ok(message) => {
            let version = message
                .headers
                .get("Prism-Version")
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

async fn append(inner: Arc<Inner>, append: Append) -> Result<Appended, AppendError> {
    if append.key.is_some()
        || append
            .parts
            .iter()
            .flat_map(|p| &p.events)
            .any(|e| e.id.is_some())
    {
        return Err(AppendError::Invalid(
            "idempotency keys and event ids are not supported on the JetStream log yet".into(),
        ));
    }
    let mut streams: Vec<&str> = Vec::new();
    for part in &append.parts {
        if !streams.contains(&part.stream.as_str()) {
            streams.push(&part.stream);
        }
    }
    loop {
        // The head first, when the stream-wide expectation is needed: the versions read after
        // it are current as long as it has not moved, which the server then checks. One
        // stream's append needs only its subject's last sequence.
        let head = if streams.len() > 1 || append.expected_head.is_some() {
            read_head(&inner.events)
                .await
                .map_err(|e| AppendError::Unavailable(e.to_string()))?
        } else {
            0
        };
        if let Some(expected) = append.expected_head
            && expected != head
        {
            return Err(AppendError::HeadMoved {
                expected,
                actual: head,
            });
        }
        let mut last = Vec::new();
        for stream in &streams {
            last.push(last_of(&inner.events, stream).await?);
        }
        let mut versions: Vec<u64> = last.iter().map(|l| l.1).collect();
        let mut messages = Vec::new();
        for part in &append.parts {
            let i = streams
                .iter()
                .position(|s| *s == part.stream)
                .expect("listed");
            if let ExpectedVersion::Exact(expected) = part.expected
                && expected != versions[i]
            {
                return Err(AppendError::VersionConflict {
                    stream: part.stream.clone(),
                    expected,
                    actual: versions[i],
                });
            }
            for event in &part.events {
                versions[i] += 1;
                let mut headers = HeaderMap::new();
                headers.insert("Prism-Version", versions[i].to_string().as_str());
                let metadata = event.metadata.as_deref().unwrap_or(b"{}");
                messages.push(Outbound {
                    subject: subject_of(&part.stream),
                    headers,
                    payload: encode(&event.event_type, metadata, &event.data).into(),
                });
            }
        }
        let expect = match (append.expected_head, streams.len()) {
            (Some(head), _) => Expect::LastSequence(head),
            (None, 1) => Expect::LastSubjectSequence(last[0].0),
            (None, _) => Expect::LastSequence(head),
        };
        match protocol::publish_atomic(&inner.client, messages, expect, TIMEOUT).await {
            Ok((first, last_position)) => {
                inner.head.send_if_modified(|h| {
                    std::mem::replace(h, (*h).max(last_position)) < last_position
                });
                let stream = &append.parts.last().expect("an append has parts").stream;
                let i = streams.iter().position(|s| s == stream).expect("listed");
                return Ok(Appended {
                    first_position: first,
                    last_position,
                    stream_version: versions[i],
                    replayed: false,
                });
            }
            // Someone appended in between: read again (a stale exact version then answers a
            // conflict, an expected head a moved head).
            Err(PublishError::WrongLastSequence(_)) => continue,
            Err(PublishError::Refused { code, description }) => {
                return Err(AppendError::Storage(format!(
                    "JetStream error {code}: {description}"
                )));
            }
            Err(PublishError::Unknown(why)) => {
                return Err(AppendError::Unavailable(format!(
                    "{why}; the append may or may not have been stored"
                )));
            }
        }
    }
}

impl LogStore for JetStreamLog {
    fn append(&self, request: Append) -> BoxFuture<'static, Result<Appended, AppendError>> {
        let done = self.handle().spawn(append(self.inner.clone(), request));
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
        let from = from.max(1);
        let mut out = Vec::new();
        let mut at = 1;
        // The server's per-subject index walks the stream's messages; versions before `from`
        // are skipped here.
        while out.len() < max {
            let (client, subject) = (client.clone(), subject.clone());
            let got = self.read(async move {
                protocol::direct_get_batch(&client, at, Some(&subject), MAX_GET, 8 << 20, TIMEOUT)
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
        let got = self.read(async move {
            protocol::direct_get_batch(&client, from, None, ask, max_bytes.min(64 << 20), TIMEOUT)
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
