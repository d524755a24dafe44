//! An append to the JetStream log: checked against each stream's last message, published
//! atomically with an expectation the server checks (the first stream's last sequence, or the
//! log's when several streams or an expected head are involved), so a racing writer cannot slip
//! in between the check and the publish.
//!
//! Every append carries an id (`Prism-Append-Id` on its first message). When a publish's
//! outcome is unknown (a timeout, a leader change), the append looks for its id on the first
//! stream's messages after the last one it saw, and publishes again only with an expectation
//! that fails if the first publish landed meanwhile: an append is stored at most once, and an
//! acknowledged one is never stored twice. Across calls (a client retrying with its
//! idempotency key or event ids) the same search runs from the [`claims`] the first call left.

use super::claims::{self, Claim, Claimed};
use super::message::{self, APPEND_ID, CALL};
use super::protocol::{self, Expect, PublishError, subject_of};
use super::store::{Inner, last_of, read_head};
use crate::log::{Append, AppendError, Appended, ExpectedVersion};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Streams whose last message a node remembers at most (all forgotten when full).
const MAX_REMEMBERED: usize = 100_000;

/// Where an append of this call, or of an earlier one, may already be.
struct Search {
    append_id: String,
    /// The first stream's subject.
    subject: String,
    /// Its messages up to this sequence hold no message of the append.
    searched: u64,
    /// Whether the append may be on the log: after an unknown outcome, or when an earlier
    /// call made it.
    maybe_there: bool,
    /// This call, when other calls may publish the same append (it can be retried): its
    /// publishes carry it, so that a find says whether this call stored the append or another
    /// did (the answer is then `replayed`).
    call: Option<String>,
}

pub async fn append(inner: Arc<Inner>, append: Append) -> Result<Appended, AppendError> {
    let first_stream = append.parts[0].stream.clone();
    // Until its first publish, nothing of this append can be on the log: what is searched
    // starts at the first stream's last message as its first attempt reads it.
    let mut search = Search {
        append_id: nuid::next().to_string(),
        subject: subject_of(&first_stream),
        searched: 0,
        maybe_there: false,
        call: None,
    };
    let mut own = Vec::new();
    if claims::retryable(append.key.as_deref(), &append.parts) {
        // A claim says where a later call must look: after the first stream's last message
        // now, read from the server.
        let (floor, _) = last_of(&inner.events, &first_stream).await?;
        search.searched = floor;
        search.call = Some(nuid::next().to_string());
        let claim = Claim {
            append_id: search.append_id.clone(),
            digest: claims::digest(&append.parts),
            floor,
            index: 0,
        };
        match claims::claim(&inner.claims, append.key.as_deref(), &append.parts, &claim).await? {
            // Once the claim exists, a retry elsewhere may publish this same append: every
            // attempt here searches first too (nothing to search while the stream has not
            // moved past the floor).
            Claimed::Own(names) => {
                own = names;
                search.maybe_there = true;
            }
            Claimed::Earlier(before) => {
                search.append_id = before.append_id;
                search.searched = before.floor;
                search.maybe_there = true;
            }
        }
    }
    let result = publish(&inner, &append, &mut search).await;
    if let Err(
        AppendError::VersionConflict { .. }
        | AppendError::HeadMoved { .. }
        | AppendError::Invalid(_),
    ) = &result
    {
        // Refused for good: the key and ids are free again, as on the embedded log.
        claims::release(&inner.claims, &own).await;
    }
    result
}

async fn publish(
    inner: &Inner,
    append: &Append,
    search: &mut Search,
) -> Result<Appended, AppendError> {
    let mut streams: Vec<&str> = Vec::new();
    for part in &append.parts {
        if !streams.contains(&part.stream.as_str()) {
            streams.push(&part.stream);
        }
    }
    let count: u64 = append.parts.iter().map(|p| p.events.len() as u64).sum();
    let deadline = Instant::now() + inner.options.resolve_within;
    // The first attempt of a plain one-stream append may trust this node's last look at the
    // stream (the server checks it); every later one reads.
    let mut cached = streams.len() == 1 && append.expected_head.is_none() && !search.maybe_there;
    let mut agains = 0u64;
    loop {
        let tried = attempt(inner, append, &streams, count, search, cached).await;
        let was_cached = std::mem::replace(&mut cached, false);
        match tried {
            Ok(appended) => return Ok(appended),
            // A refusal that rests on what this node remembered is checked with the server.
            Err(Attempt::Refused(AppendError::VersionConflict { .. })) if was_cached => {
                forget(inner, &streams);
                continue;
            }
            Err(Attempt::Refused(e)) => return Err(e),
            // The log moved under the attempt (racing writers) or the server could not take it
            // yet (a leader change): again after a short pause, within the deadline.
            Err(Attempt::Again) => {
                agains += 1;
                if Instant::now() >= deadline {
                    let why = "the stream kept moving or the servers kept refusing for now";
                    return Err(if search.maybe_there {
                        AppendError::Unknown(format!("{why}; the append may have been stored"))
                    } else {
                        AppendError::Unavailable(format!("{why}; nothing was appended"))
                    });
                }
                if agains > 3 {
                    tokio::time::sleep(Duration::from_millis(agains.min(50))).await;
                }
            }
            // The server could not be asked, or did not answer: once the append may be on the
            // log, keep asking until it is found or surely not there, within the deadline.
            Err(Attempt::Unknown(why)) => {
                if !search.maybe_there {
                    return Err(AppendError::Unavailable(why));
                }
                if Instant::now() >= deadline {
                    return Err(AppendError::Unknown(format!(
                        "{why}; the append may or may not have been stored: send it again with \
                         the same idempotency key or event ids to store it at most once"
                    )));
                }
                tokio::time::sleep(inner.options.request_timeout / 4).await;
            }
        }
    }
}

/// How an attempt ended, when it did not append.
enum Attempt {
    /// With this refusal.
    Refused(AppendError),
    /// The log moved under it: read again.
    Again,
    /// Without an answer from the server.
    Unknown(String),
}

impl From<AppendError> for Attempt {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Unavailable(why) => Attempt::Unknown(why),
            e => Attempt::Refused(e),
        }
    }
}

/// Forgets what this node remembered of `streams`.
fn forget(inner: &Inner, streams: &[&str]) {
    let mut lasts = inner.lasts.lock();
    for stream in streams {
        lasts.remove(*stream);
    }
}

async fn attempt(
    inner: &Inner,
    append: &Append,
    streams: &[&str],
    count: u64,
    search: &mut Search,
    cached: bool,
) -> Result<Appended, Attempt> {
    // The head first, when the stream-wide expectation is needed: the versions read after it
    // are current as long as it has not moved, which the server then checks. One stream's
    // append needs only its subject's last sequence.
    let head = if streams.len() > 1 || append.expected_head.is_some() {
        read_head(&inner.events)
            .await
            .map_err(|e| Attempt::Unknown(e.to_string()))?
    } else {
        0
    };
    let mut last = Vec::new();
    for stream in streams {
        let remembered = cached
            .then(|| inner.lasts.lock().get(*stream).copied())
            .flatten();
        match remembered {
            Some(l) => last.push(l),
            None => last.push(last_of(&inner.events, stream).await?),
        }
    }
    if !cached && streams.len() == 1 {
        remember(inner, streams, &[last[0].1], last[0].0);
    }
    // Is the append there already? Only the first stream's messages after the last searched
    // can hold it; the publish below expects no more than what was searched.
    if search.maybe_there && last[0].0 > search.searched {
        if let Some(found) = find(inner, search, last[0].0, count).await? {
            return Ok(found);
        }
        search.searched = last[0].0;
    }
    search.searched = search.searched.max(last[0].0);
    if let Some(expected) = append.expected_head
        && expected != head
    {
        return Err(Attempt::Refused(AppendError::HeadMoved {
            expected,
            actual: head,
        }));
    }
    let mut versions: Vec<u64> = last.iter().map(|l| l.1).collect();
    let mut messages = Vec::with_capacity(count as usize);
    for part in &append.parts {
        let i = streams
            .iter()
            .position(|s| *s == part.stream)
            .expect("listed");
        if let ExpectedVersion::Exact(expected) = part.expected
            && expected != versions[i]
        {
            // Several streams' versions are read one after another: an append landing in
            // between (this very one, published by an earlier call under the same key) shows in
            // the later streams but not in the first stream searched for it. A conflict stands
            // only if the log did not move while they were read.
            if streams.len() > 1 {
                let now = read_head(&inner.events)
                    .await
                    .map_err(|e| Attempt::Unknown(e.to_string()))?;
                if now != head {
                    forget(inner, streams);
                    return Err(Attempt::Again);
                }
            }
            return Err(Attempt::Refused(AppendError::VersionConflict {
                stream: part.stream.clone(),
                expected,
                actual: versions[i],
            }));
        }
        for event in &part.events {
            versions[i] += 1;
            let metadata = event.metadata.as_deref().unwrap_or(b"{}");
            let mut outbound = message::outbound(
                &part.stream,
                versions[i],
                &event.event_type,
                metadata,
                &event.data,
            );
            if messages.is_empty() {
                outbound
                    .headers
                    .insert(APPEND_ID, search.append_id.as_str());
                if let Some(call) = &search.call {
                    outbound.headers.insert(CALL, call.as_str());
                }
            }
            messages.push(outbound);
        }
    }
    let expect = match (append.expected_head, streams.len()) {
        (Some(head), _) => Expect::LastSequence(head),
        (None, 1) => Expect::LastSubjectSequence(last[0].0),
        (None, _) => Expect::LastSequence(head),
    };
    match protocol::publish_atomic(
        &inner.client,
        messages,
        expect,
        inner.options.request_timeout,
    )
    .await
    {
        Ok((first, last_position)) => {
            inner.moved(last_position);
            remember(inner, streams, &versions, last_position);
            let stream = &append.parts.last().expect("an append has parts").stream;
            let i = streams.iter().position(|s| s == stream).expect("listed");
            Ok(Appended {
                first_position: first,
                last_position,
                stream_version: versions[i],
                replayed: false,
            })
        }
        // Someone appended in between: read again (a stale exact version then answers a
        // conflict, an expected head a moved head).
        Err(PublishError::WrongLastSequence(_)) => {
            forget(inner, streams);
            Err(Attempt::Again)
        }
        // More messages than the server takes in one atomic batch.
        Err(PublishError::Refused { code: 10199, .. }) => {
            Err(Attempt::Refused(AppendError::Invalid(format!(
                "an append of {count} events is more than the JetStream servers take in one \
                 atomic batch (their limits.batch.max_msgs, 1000 by default): append fewer \
                 events at a time, or raise that limit"
            ))))
        }
        Err(PublishError::Transient { .. }) => Err(Attempt::Again),
        Err(PublishError::Refused { code, description }) => Err(Attempt::Refused(
            AppendError::Storage(format!("JetStream error {code}: {description}")),
        )),
        Err(PublishError::Unknown(why)) => {
            search.maybe_there = true;
            Err(Attempt::Unknown(why))
        }
    }
}

/// Remembers the stream's last message after a one-stream append (the next append to it
/// from this node then needs no read first); forgets the streams of any other.
fn remember(inner: &Inner, streams: &[&str], versions: &[u64], last_position: u64) {
    let mut lasts = inner.lasts.lock();
    if streams.len() == 1 {
        if lasts.len() >= MAX_REMEMBERED && !lasts.contains_key(streams[0]) {
            lasts.clear();
        }
        lasts.insert(streams[0].to_string(), (last_position, versions[0]));
    } else {
        drop(lasts);
        forget(inner, streams);
    }
}

/// Looks for the append's first message on its subject after `search.searched`, up to
/// `until`: the append's result when it is there.
///
/// Asked of the stream's leader, one message at a time: "not there" must be sure, and a
/// replica that has not caught up (the one just restarted after a leader kill) answers a
/// direct get with what it holds — a keyed retry then missed the append it had stored and
/// answered a conflict (found by the leader-kill test). The search covers the first stream's
/// messages since the append's claim, only when an earlier call may have stored it.
async fn find(
    inner: &Inner,
    search: &Search,
    until: u64,
    count: u64,
) -> Result<Option<Appended>, Attempt> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let unknown = |e: &dyn std::fmt::Display| Attempt::Unknown(e.to_string());
    let mut from = search.searched + 1;
    while from <= until {
        let stored = match inner
            .events
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(search.subject.clone())
            .send()
            .await
        {
            Ok(stored) => stored,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(unknown(&e)),
        };
        if stored.sequence > until {
            break;
        }
        from = stored.sequence + 1;
        let header = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_string());
        if header(APPEND_ID).as_deref() != Some(search.append_id.as_str()) {
            continue;
        }
        let first_position = stored.sequence;
        let last_position = first_position + count - 1;
        // The last event is the last part's stream's: its version is the result's.
        let last_event = inner
            .events
            .get_raw_message(last_position)
            .await
            .map_err(|e| unknown(&e))?;
        let stream_version = message::version_of(&last_event.headers).ok_or_else(|| {
            Attempt::Refused(AppendError::Storage(format!(
                "the event at {last_position} has no version"
            )))
        })?;
        inner.moved(last_position);
        return Ok(Some(Appended {
            first_position,
            last_position,
            stream_version,
            // Stored once either way; by this call, or by another one.
            replayed: search.call.is_some() && header(CALL) != search.call,
        }));
    }
    Ok(None)
}
