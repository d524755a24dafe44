//! The JetStream requests Prism's log is built on, written against the server's protocol
//! (async-nats 0.51 has no helper for them): the events stream, atomic batch publish (ADR-50)
//! and batch direct get (ADR-31). Facts checked on nats-server 2.15.1: `../shared/SCALEOUT.md`.
//!
//! Layout: one stream, [`STREAM`], on subjects `prism.ev.<hex of the stream name>`; a log
//! position is the stream's sequence, so positions mean the same on both logs.

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use std::time::Duration;

/// The JetStream stream holding every event.
pub const STREAM: &str = "PRISM_EVENTS";

/// Where the server republishes each stored event's headers (its sequence among them): how
/// every node learns that the log moved without asking.
pub const HEADS: &str = "prism.head.>";

/// Which log the events stream `info` describes: its name and when it was created (a stream
/// deleted and created again is another log, whose positions mean other events).
pub fn identity(info: &async_nats::jetstream::stream::Info) -> String {
    format!(
        "the JetStream stream {} created at {} (Unix ns)",
        info.config.name,
        info.created.unix_timestamp_nanos()
    )
}

/// The subject of a Prism stream's events: its name in lowercase hex (any byte string is a
/// legal subject token that way).
pub fn subject_of(stream: &str) -> String {
    format!("prism.ev.{}", hex::encode(stream.as_bytes()))
}

/// The Prism stream a subject belongs to, if it is one of [`subject_of`]'s.
pub fn stream_of(subject: &str) -> Option<String> {
    let name = hex::decode(subject.strip_prefix("prism.ev.")?).ok()?;
    String::from_utf8(name).ok()
}

/// Creates the events stream with `replicas`, or checks the one there: atomic publish and
/// direct gets allowed, deletes and purges denied, no limits that would drop events.
pub async fn ensure_stream(js: &jetstream::Context, replicas: usize) -> Result<()> {
    let wanted = stream::Config {
        name: STREAM.into(),
        subjects: vec!["prism.ev.>".into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_direct: true,
        allow_atomic_publish: true,
        deny_delete: true,
        deny_purge: true,
        republish: Some(stream::Republish {
            source: "prism.ev.>".into(),
            destination: HEADS.into(),
            headers_only: true,
        }),
        ..Default::default()
    };
    let republish = wanted.republish.clone();
    // A cluster that has just formed may not place a replicated stream yet (10005, "no
    // suitable peers"): its peers report in within seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match js.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => break stream,
            Err(e)
                if std::time::Instant::now() < deadline
                    && (e.to_string().contains("10005") || e.to_string().contains("timed out")) =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).context("creating or finding the JetStream stream"),
        }
    };
    let mut info = stream
        .info()
        .await
        .context("reading the stream's state")?
        .clone();
    if info.config.republish != republish {
        // A stream made before heads were republished: add it.
        let mut config = info.config.clone();
        config.republish = republish;
        info = js
            .update_stream(config)
            .await
            .context("adding the republished heads to the JetStream stream")?;
    }
    let config = &info.config;
    let mut wrong = Vec::new();
    if config.subjects != ["prism.ev.>"] {
        wrong.push(format!(
            "subjects {:?} (wanted [\"prism.ev.>\"])",
            config.subjects
        ));
    }
    for (set, what) in [
        (config.allow_direct, "allow_direct"),
        (config.allow_atomic_publish, "allow_atomic"),
        (config.deny_delete, "deny_delete"),
        (config.deny_purge, "deny_purge"),
    ] {
        if !set {
            wrong.push(format!("{what} is off"));
        }
    }
    if config.max_messages > 0
        || config.max_bytes > 0
        || config.max_age > Duration::ZERO
        || config.max_messages_per_subject > 0
    {
        wrong.push("it has limits that drop messages".into());
    }
    if config.allow_rollup || config.allow_message_ttl {
        wrong.push("it allows rollups or message TTLs, which remove messages".into());
    }
    if config.storage != stream::StorageType::File {
        wrong.push("it is kept in memory, not on disk".into());
    }
    if config.num_replicas != replicas.max(1) {
        wrong.push(format!(
            "it has {} replicas, not the {replicas} configured (event_log_replicas)",
            config.num_replicas
        ));
    }
    let deleted = info.state.deleted_count.unwrap_or(0);
    if info.state.messages > 0 && (info.state.first_sequence != 1 || deleted > 0) {
        wrong.push(format!(
            "messages are missing (first sequence {}, {deleted} deleted)",
            info.state.first_sequence
        ));
    }
    if !wrong.is_empty() {
        bail!(
            "the JetStream stream {STREAM} cannot hold Prism's log: {}",
            wrong.join("; ")
        );
    }
    Ok(())
}

/// One message of an append: its subject, headers and payload.
pub struct Outbound {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Why an atomic publish stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The first message's subject, or the stream, was not at the expected last sequence
    /// (JetStream errors 10071 and, inside an atomic batch, 10164).
    #[error("wrong last subject sequence: {0}")]
    WrongLastSequence(String),
    /// The server refused it for now, storing nothing (a leader change under way, an
    /// incomplete batch): the same publish may be sent again.
    #[error("JetStream refused the append for now: {code} {description}")]
    Transient { code: u64, description: String },
    /// The server refused the batch for another reason.
    #[error("JetStream refused the append: {code} {description}")]
    Refused { code: u64, description: String },
    /// No answer: the append may or may not have been stored.
    #[error("the append's outcome is unknown: {0}")]
    Unknown(String),
}

#[derive(Deserialize)]
struct Ack {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// What an append expects of the stream before it; checked by the server on the batch's first
/// message (the only one where such a header is honoured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing.
    Nothing,
    /// The first message's subject's last sequence (0: the subject has no message).
    LastSubjectSequence(u64),
    /// The stream's last sequence (0: the stream is empty).
    LastSequence(u64),
}

/// Stores `messages` atomically at consecutive sequences (all or none), if the stream is as
/// `expect` says. Returns the sequences of the first and last message.
pub async fn publish_atomic(
    client: &Client,
    messages: Vec<Outbound>,
    expect: Expect,
    timeout: Duration,
) -> Result<(u64, u64), PublishError> {
    let count = messages.len() as u64;
    assert!(count > 0, "an append has at least one message");
    let batch = client
        .new_inbox()
        .rsplit('.')
        .next()
        .unwrap_or("b")
        .to_string();
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| PublishError::Unknown(e.to_string()))?;
    for (i, message) in messages.into_iter().enumerate() {
        let sequence = i as u64 + 1;
        let mut headers = message.headers;
        // One message is atomic by itself: a plain publish, without the batch's staging
        // (which costs a non-replicated stream milliseconds per commit, nats-server#7298).
        if count > 1 {
            headers.insert("Nats-Batch-Id", batch.as_str());
            headers.insert("Nats-Batch-Sequence", sequence.to_string().as_str());
        }
        if sequence == 1 {
            match expect {
                Expect::Nothing => {}
                Expect::LastSubjectSequence(n) => headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    n.to_string().as_str(),
                ),
                Expect::LastSequence(n) => {
                    headers.insert("Nats-Expected-Last-Sequence", n.to_string().as_str())
                }
            }
        }
        if sequence == count && count > 1 {
            headers.insert("Nats-Batch-Commit", "1");
        }
        // Every message carries the inbox: a refused batch is answered at once, whichever
        // message the server refuses it on.
        client
            .publish_with_reply_and_headers(
                message.subject,
                inbox.clone(),
                headers,
                message.payload,
            )
            .await
            .map_err(|e| PublishError::Unknown(e.to_string()))?;
    }
    client
        .flush()
        .await
        .map_err(|e| PublishError::Unknown(e.to_string()))?;
    loop {
        let answer = tokio::time::timeout(timeout, answers.next())
            .await
            .map_err(|_| PublishError::Unknown(format!("no answer within {timeout:?}")))?
            .ok_or_else(|| PublishError::Unknown("the connection closed".into()))?;
        if answer.status == Some(StatusCode::NO_RESPONDERS) {
            return Err(PublishError::Unknown("no JetStream server answered".into()));
        }
        if answer.payload.is_empty() {
            // A flow-control acknowledgement of a message before the commit.
            continue;
        }
        let ack: Ack = serde_json::from_slice(&answer.payload)
            .map_err(|e| PublishError::Unknown(format!("an unreadable answer: {e}")))?;
        if let Some(error) = ack.error {
            return Err(match error.err_code {
                10071 | 10164 => PublishError::WrongLastSequence(error.description),
                // Not ready after a leader change, an incomplete or abandoned batch, no
                // JetStream leader: nothing was stored.
                10163 | 10176 | 10008 | 10167 => PublishError::Transient {
                    code: error.err_code,
                    description: error.description,
                },
                code => PublishError::Refused {
                    code,
                    description: error.description,
                },
            });
        }
        if count > 1 && ack.count != Some(count) {
            return Err(PublishError::Unknown(format!(
                "the batch's acknowledgement counts {:?} messages, not {count}",
                ack.count
            )));
        }
        return Ok((ack.seq + 1 - count, ack.seq));
    }
}

/// Bytes a batch direct get of stream reads, searches and the stream index asks for at most.
pub const GET_BYTES: usize = 8 << 20;

/// A stored message read back: its sequence, subject, headers and payload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Up to `max` messages from sequence `from` on (fewer when `max_bytes` is reached), only
/// those on `subject` when given, by one batch direct get; any replica may answer. A short
/// answer means "ask again", an empty one nothing at or after `from` yet.
pub async fn direct_get_batch(
    client: &Client,
    from: u64,
    subject: Option<&str>,
    max: usize,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<Stored>> {
    direct_get_batch_after(client, from, subject, max, max_bytes, 0, timeout).await
}

/// [`direct_get_batch`] from a replica that holds at least the stream's messages up to
/// `min_last` (one further behind refuses, and the read fails rather than answer short).
pub async fn direct_get_batch_after(
    client: &Client,
    from: u64,
    subject: Option<&str>,
    max: usize,
    max_bytes: usize,
    min_last: u64,
    timeout: Duration,
) -> Result<Vec<Stored>> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    let mut request = serde_json::json!({"seq": from, "batch": max, "max_bytes": max_bytes});
    if let Some(subject) = subject {
        request["next_by_subj"] = subject.into();
    }
    if min_last > 0 {
        request["min_last_seq"] = min_last.into();
    }
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{STREAM}"),
            inbox,
            request.to_string().into(),
        )
        .await?;
    client.flush().await?;
    let mut out = Vec::new();
    loop {
        let message = tokio::time::timeout(timeout, answers.next())
            .await
            .context("no answer to a direct get")?
            .context("the connection closed")?;
        match message.status {
            // The end of the batch (204), or nothing at `from` (404): from a replica holding
            // what was asked, or not an answer (nats-server 2.15.1 answers 404 from a replica
            // behind `min_last_seq`: one resumed after a stop, `jetstream_lagging_replica.rs`).
            Some(status) if status == StatusCode::NOT_FOUND || status.as_u16() == 204 => {
                // A replica behind answers "not found" for what it lacks, `min_last_seq` or
                // not: with no subject filter, nothing at or after `from` while the stream
                // holds `min_last ≥ from` is such an answer. (Filtered reads check what they
                // get against what the leader says the subject holds.)
                if subject.is_none() && out.is_empty() && from <= min_last {
                    bail!(
                        "direct get from {from}: a replica behind answered (the read needs \
                         the stream up to {min_last}); ask again"
                    );
                }
                return Ok(out);
            }
            Some(status) if status != StatusCode::OK => {
                bail!("direct get from {from}: {status} {:?}", message.description)
            }
            _ => {}
        }
        let headers = message
            .headers
            .context("a stored message without headers")?;
        let header = |name: &str| -> Result<String> {
            Ok(headers
                .get(name)
                .with_context(|| format!("a stored message without {name}"))?
                .as_str()
                .to_string())
        };
        out.push(Stored {
            sequence: header("Nats-Sequence")?.parse()?,
            subject: header("Nats-Subject")?,
            payload: message.payload,
            headers,
        });
    }
}

/// Opens the KV bucket `config` names, creating it when missing; as for the events stream, a
/// cluster that has just formed may not place it yet (10005), which is waited out for 30 s.
pub async fn kv_bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(store) = js.get_key_value(&config.bucket).await {
            return Ok(store);
        }
        match js.create_key_value(config.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("10005") => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
