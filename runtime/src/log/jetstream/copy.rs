//! Copying a log into JetStream at the same positions (`prism log migrate`): the data dir's
//! views and checkpoints then carry over to Prism on JetStream, since a checkpoint is a position.
//!
//! Events are read from the source in batches ([`BatchRead`]) and published in atomic batches
//! ([`protocol::publish_atomic`]) of up to [`BATCH_EVENTS`] events and about [`BATCH_BYTES`],
//! each expecting the stream's last sequence to be its first position minus one: an event can
//! only land at its own position, and a writer racing the copy stops it. Each message carries
//! the event's stream version (`Prism-Version`) and its original timestamp (`Prism-Time`), so
//! the copy reads back with the source's position, stream, version, type, data, metadata and
//! timestamp.
//!
//! A copy resumes: when the target already holds events `1..=k`, its first and `k`-th events
//! are compared with the source's, every field (a message appended to JetStream directly
//! rather than copied differs in its timestamp at least), and the copy goes on from `k + 1`. A
//! target holding other events, or more than the source, is refused before anything is copied.
//!
//! Not copied: the idempotency keys and event ids the source remembers (the claims bucket is
//! not the log).

use super::message::{self, decode};
use super::options::JetStreamOptions;
use super::protocol::{self, Expect, Outbound, PublishError};
use super::store::read_head;
use crate::log::{BatchRead, EventLog, FlatBatch, ReadError, RecordedEvent, StoredEvent};
use async_nats::jetstream::stream::Stream;
use std::time::{Duration, Instant};

/// Most events one atomic batch carries (the server allows 1000 by default).
pub const BATCH_EVENTS: usize = 500;
/// A batch takes no more events once theirs reach this many bytes.
pub const BATCH_BYTES: usize = 4 << 20;

/// The pause before publishing again a batch that surely did not land.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What a copy did: the target holds the source's events `1..=already + copied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Events the target held before, checked to be the source's first ones.
    pub already: u64,
    /// Events copied now, at positions `already + 1..=already + copied`.
    pub copied: u64,
    /// Events the target holds after the source's last (appended there since an earlier copy).
    pub beyond: u64,
    /// The target log's identity ([`protocol::identity`]), which the data dir then follows.
    pub log: String,
}

impl Copied {
    /// The positions copied now (`None` when nothing was).
    pub fn positions(&self) -> Option<(u64, u64)> {
        (self.copied > 0).then(|| (self.already + 1, self.already + self.copied))
    }
}

/// Why a copy stopped. The target then holds a prefix of the source, and the same copy run
/// again goes on from its end.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The servers could not be reached, are too old, or their stream cannot hold the log.
    #[error("cannot open the JetStream log at {urls}: {reason}")]
    Target { urls: String, reason: String },
    /// The source log could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The source's data dir already follows another log than the target.
    #[error(
        "the data dir already follows {follows}, not {target}: its checkpoints are positions \
         there; nothing was copied"
    )]
    OtherLog { follows: String, target: String },
    /// The target's events are not the source's.
    #[error(
        "JetStream's event at position {position} is not the log's ({difference}): it holds \
         another log; nothing was copied"
    )]
    Diverged { position: u64, difference: String },
    /// Something else appended to the target during the copy.
    #[error(
        "something else appended to JetStream during the copy (its head is {head} where the \
         copy expected {expected}); the copy stopped after position {copied_until}: stop every \
         writer of the target before copying"
    )]
    Raced {
        expected: u64,
        head: u64,
        copied_until: u64,
    },
    /// The server refused a batch.
    #[error("JetStream refused the events at positions {first}..={last}: {reason}")]
    Refused {
        first: u64,
        last: u64,
        reason: String,
    },
    /// The servers did not answer in time: the copy stopped after `copied_until`.
    #[error(
        "JetStream did not answer about the events at positions {first}..={last} ({reason}); \
         the copy stopped after position {copied_until}: run it again to go on"
    )]
    Unavailable {
        first: u64,
        last: u64,
        copied_until: u64,
        reason: String,
    },
}

/// Copies `from` into the JetStream log at `to` (creating its stream with `to.replicas` when
/// missing), resuming after the events the target already holds; calls `progress` with the
/// last position copied and the source's head after each batch.
///
/// Blocks the calling thread, which drives the client's runtime: call it outside any Tokio
/// runtime (from `spawn_blocking` in async code). The source must not be appended to meanwhile
/// (`prism log migrate` opens it exclusively).
pub fn copy_log(
    from: &EventLog,
    to: &JetStreamOptions,
    follows: Option<&str>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Copied, CopyError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CopyError::Target {
            urls: to.urls.clone(),
            reason: format!("cannot start the client's runtime: {e}"),
        })?;
    let target = runtime.block_on(Target::open(to))?;
    let log = protocol::identity(target.events.cached_info());
    if let Some(follows) = follows
        && follows != log
    {
        return Err(CopyError::OtherLog {
            follows: follows.to_string(),
            target: log,
        });
    }
    let source_head = from.head();
    let held = runtime
        .block_on(target.head())
        .map_err(|e| target.error(e))?;
    // A target holding more goes on from the source (Prism ran on it since a copy): its
    // first and the source's last are checked, and nothing is copied.
    let already = held.min(source_head);
    let mut checked = match already {
        0 => vec![],
        _ => vec![1, already],
    };
    checked.dedup();
    for position in checked {
        let theirs = runtime
            .block_on(target.event_at(position))
            .map_err(|e| target.error(e))?;
        let ours = event_at(from, position)?;
        if let Some(difference) = difference(&ours, theirs.as_ref()) {
            return Err(CopyError::Diverged {
                position,
                difference,
            });
        }
    }
    let mut batch = FlatBatch::default();
    let mut next = already + 1;
    while next <= source_head {
        let read = BatchRead {
            from: next,
            until: source_head,
            max_scanned: BATCH_EVENTS,
            max_events: BATCH_EVENTS,
            max_bytes: BATCH_BYTES,
        };
        from.read_batch(&read, |_, _| true, &mut batch)?;
        for (i, header) in batch.headers.iter().enumerate() {
            if header.position != next + i as u64 {
                return Err(ReadError::Corrupt {
                    position: next + i as u64,
                    reason: format!("the log gave position {} in its place", header.position),
                }
                .into());
            }
        }
        if batch.is_empty() {
            return Err(ReadError::Corrupt {
                position: next,
                reason: format!("missing below the log's head {source_head}"),
            }
            .into());
        }
        let last = runtime.block_on(target.publish(&batch, next))?;
        progress(last, source_head);
        next = last + 1;
    }
    // Nothing else appended after the last batch either: the target is the log's copy.
    let head = runtime
        .block_on(target.head())
        .map_err(|e| target.error(e))?;
    if head != held.max(source_head) {
        return Err(CopyError::Raced {
            expected: held.max(source_head),
            head,
            copied_until: source_head,
        });
    }
    Ok(Copied {
        already,
        copied: next - 1 - already,
        beyond: held - already,
        log,
    })
}

/// The source's event at `position`.
fn event_at(log: &EventLog, position: u64) -> Result<RecordedEvent, ReadError> {
    log.read_from(position, 1)?
        .pop()
        .filter(|e| e.position == position)
        .ok_or_else(|| ReadError::Corrupt {
            position,
            reason: "missing below the log's head".into(),
        })
}

/// How `theirs` differs from `ours` (the fields that do), if it does.
fn difference(ours: &RecordedEvent, theirs: Option<&RecordedEvent>) -> Option<String> {
    let Some(theirs) = theirs else {
        return Some("JetStream has no event there".into());
    };
    let fields = [
        ("position", ours.position != theirs.position),
        ("stream", ours.stream != theirs.stream),
        (
            "stream version",
            ours.stream_version != theirs.stream_version,
        ),
        ("type", ours.event_type != theirs.event_type),
        ("data", ours.data != theirs.data),
        ("metadata", ours.metadata != theirs.metadata),
        ("timestamp", ours.timestamp_ms != theirs.timestamp_ms),
    ];
    let differ: Vec<&str> = fields
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| *name)
        .collect();
    (!differ.is_empty()).then(|| {
        format!(
            "it differs in its {}: JetStream has {:?} v{} {:?} at {} ms, the log {:?} v{} {:?} \
             at {} ms",
            differ.join(", "),
            theirs.stream,
            theirs.stream_version,
            theirs.event_type,
            theirs.timestamp_ms,
            ours.stream,
            ours.stream_version,
            ours.event_type,
            ours.timestamp_ms,
        )
    })
}

/// The messages of a batch's events, with their original timestamps.
fn messages(batch: &FlatBatch) -> Vec<Outbound> {
    (0..batch.len())
        .map(|i| {
            let event = batch.event(i).expect("a batch's own event");
            let mut outbound = message::outbound(
                event.stream,
                event.stream_version,
                event.event_type,
                event.metadata,
                event.data,
            );
            outbound
                .headers
                .insert(message::TIME, event.timestamp_ms.to_string().as_str());
            outbound
        })
        .collect()
}

/// The JetStream side of a copy.
struct Target {
    client: async_nats::Client,
    events: Stream,
    options: JetStreamOptions,
}

impl Target {
    /// Connects, checks the server's version, and creates or checks the events stream.
    async fn open(options: &JetStreamOptions) -> Result<Target, CopyError> {
        let fail = |e: anyhow::Error| CopyError::Target {
            urls: options.urls.clone(),
            reason: format!("{e:#}"),
        };
        let client = options.connect().await.map_err(fail)?;
        let version = client.server_info().version;
        if !prism_toolchain::nats::supported(&version) {
            return Err(fail(anyhow::anyhow!(
                "it runs nats-server {version}; Prism's JetStream log needs 2.15.1 or later (a pre-release of 2.15.1 counts as older)"
            )));
        }
        let js = async_nats::jetstream::new(client.clone());
        protocol::ensure_stream(&js, options.replicas)
            .await
            .map_err(fail)?;
        let events = js
            .get_stream(protocol::STREAM)
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(Target {
            client,
            events,
            options: options.clone(),
        })
    }

    fn error(&self, e: anyhow::Error) -> CopyError {
        CopyError::Target {
            urls: self.options.urls.clone(),
            reason: format!("{e:#}"),
        }
    }

    async fn head(&self) -> anyhow::Result<u64> {
        read_head(&self.events).await
    }

    /// The event at `position`, if the target holds one there.
    async fn event_at(&self, position: u64) -> anyhow::Result<Option<RecordedEvent>> {
        // The target holds `position` (its head says so): from a replica that does too (one
        // behind answers "not found", which is an error here, not a difference).
        let got = protocol::direct_get_batch_after(
            &self.client,
            position,
            None,
            1,
            64 << 20,
            position,
            self.options.request_timeout,
        )
        .await?;
        let Some(stored) = got.first().filter(|m| m.sequence == position) else {
            return Ok(None);
        };
        let decoded = decode(stored)?;
        let event = StoredEvent {
            stream: &decoded.stream,
            ..decoded.event
        };
        Ok(Some(RecordedEvent::from_stored(position, &event)))
    }

    /// Publishes `batch`, whose first event is at `first`, so that it lands at its positions;
    /// returns its last position. An unknown outcome is resolved by reading the target's head
    /// (the batch landed when the head reached its end with its last event), and the batch
    /// published again while it surely did not land, within `resolve_within`.
    async fn publish(&self, batch: &FlatBatch, first: u64) -> Result<u64, CopyError> {
        let last = first + batch.len() as u64 - 1;
        let last_event = {
            let event = batch.event(batch.len() - 1).expect("a batch's own event");
            RecordedEvent::from_stored(last, &event)
        };
        let deadline = Instant::now() + self.options.resolve_within;
        loop {
            let why = match protocol::publish_atomic(
                &self.client,
                messages(batch),
                Expect::LastSequence(first - 1),
                self.options.request_timeout,
            )
            .await
            {
                Ok((stored_first, stored_last)) if (stored_first, stored_last) == (first, last) => {
                    return Ok(last);
                }
                Ok((stored_first, stored_last)) => {
                    return Err(CopyError::Refused {
                        first,
                        last,
                        reason: format!("the server stored them at {stored_first}..={stored_last}"),
                    });
                }
                Err(PublishError::Refused { code, description }) => {
                    return Err(CopyError::Refused {
                        first,
                        last,
                        reason: format!("JetStream error {code}: {description}"),
                    });
                }
                // Another writer, or this batch's earlier attempt whose answer was lost.
                Err(PublishError::WrongLastSequence(why)) => why,
                Err(PublishError::Unknown(why)) => why,
                Err(PublishError::Transient { description, .. }) => description,
            };
            if self.landed(first, &last_event, deadline, &why).await? {
                return Ok(last);
            }
            if Instant::now() >= deadline {
                return Err(CopyError::Unavailable {
                    first,
                    last,
                    copied_until: first - 1,
                    reason: why,
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Whether the batch `first..=last_event.position` is on the target, and nothing after it
    /// (`false`: surely not there, publish it again; anything else on the target is a race),
    /// reading the head until it answers or `deadline` passes.
    async fn landed(
        &self,
        first: u64,
        last_event: &RecordedEvent,
        deadline: Instant,
        why: &str,
    ) -> Result<bool, CopyError> {
        let last = last_event.position;
        let unavailable = |reason: String| CopyError::Unavailable {
            first,
            last,
            copied_until: first - 1,
            reason,
        };
        loop {
            let found = async {
                let head = self.head().await?;
                if head < last {
                    return Ok::<_, anyhow::Error>((head, None));
                }
                Ok((head, Some(self.event_at(last).await?)))
            }
            .await;
            match found {
                Ok((head, _)) if head == first - 1 => return Ok(false),
                Ok((head, Some(Some(theirs))))
                    if difference(last_event, Some(&theirs)).is_none() =>
                {
                    if head == last {
                        return Ok(true);
                    }
                    // The batch landed, and something else appended after it.
                    return Err(CopyError::Raced {
                        expected: last,
                        head,
                        copied_until: last,
                    });
                }
                Ok((head, _)) => {
                    return Err(CopyError::Raced {
                        expected: first - 1,
                        head,
                        copied_until: first - 1,
                    });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(unavailable(format!("{why}; then {e:#}")));
                }
                Err(_) => tokio::time::sleep(self.options.request_timeout / 4).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> RecordedEvent {
        RecordedEvent {
            position: 7,
            stream: "order-1".into(),
            stream_version: 2,
            event_type: "OrderPlaced".into(),
            timestamp_ms: 1_000,
            data: br#"{"n":1}"#.to_vec(),
            metadata: b"{}".to_vec(),
        }
    }

    #[test]
    fn every_field_of_an_event_is_compared() {
        let ours = event();
        assert_eq!(difference(&ours, Some(&event())), None);
        assert_eq!(
            difference(&ours, None).as_deref(),
            Some("JetStream has no event there")
        );
        type Change = fn(&mut RecordedEvent);
        let changes: [(&str, Change); 7] = [
            ("position", |e| e.position += 1),
            ("stream", |e| e.stream.push('x')),
            ("stream version", |e| e.stream_version += 1),
            ("type", |e| e.event_type.push('x')),
            ("data", |e| e.data.push(b' ')),
            ("metadata", |e| e.metadata = br#"{"a":1}"#.to_vec()),
            ("timestamp", |e| e.timestamp_ms += 1),
        ];
        for (field, change) in changes {
            let mut theirs = event();
            change(&mut theirs);
            let found = difference(&ours, Some(&theirs)).expect(field);
            assert!(
                found.starts_with(&format!("it differs in its {field}:")),
                "{found}"
            );
        }
    }

    #[test]
    fn a_batch_keeps_each_event_s_version_and_timestamp() {
        let mut batch = FlatBatch::default();
        let e = event();
        batch.push(
            7,
            &StoredEvent {
                stream: &e.stream,
                stream_version: e.stream_version,
                event_type: &e.event_type,
                timestamp_ms: e.timestamp_ms,
                data: &e.data,
                metadata: &e.metadata,
            },
        );
        let out = messages(&batch);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, protocol::subject_of("order-1"));
        assert_eq!(out[0].headers.get(message::VERSION).unwrap().as_str(), "2");
        assert_eq!(out[0].headers.get(message::TIME).unwrap().as_str(), "1000");
        let stored = protocol::Stored {
            sequence: 7,
            subject: out[0].subject.clone(),
            headers: out[0].headers.clone(),
            payload: out[0].payload.clone(),
        };
        let decoded = decode(&stored).unwrap();
        let back = RecordedEvent::from_stored(
            7,
            &StoredEvent {
                stream: &decoded.stream,
                ..decoded.event
            },
        );
        assert_eq!(back, e);
        assert_eq!(
            Copied {
                already: 3,
                copied: 2,
                beyond: 0,
                log: String::new(),
            }
            .positions(),
            Some((4, 5))
        );
        assert_eq!(
            Copied {
                already: 3,
                copied: 0,
                beyond: 0,
                log: String::new(),
            }
            .positions(),
            None
        );
    }
}
