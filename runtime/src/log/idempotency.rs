//! Appends that can be retried safely. An append may carry an idempotency key (the HTTP
//! `Idempotency-Key` header) and its events may carry ids. The log remembers both, in the
//! append's own transaction, for a retention window: an append whose key it remembers answers
//! the original result and appends nothing (a different append under the same key is refused);
//! an append whose events' ids were all appended before, by one append in the same order,
//! answers that append's result and appends nothing (some known, some not: refused).
//!
//! This is the log's interface, not the HTTP layer's: a distributed log resolves an append of
//! unknown outcome the same way (the JetStream log maps the key to its message ids).

use super::{Appended, ExpectedVersion, NewEvent, StreamAppend};
use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the log remembers, by `k:<idempotency key>` or `e:<event id>`.
pub const REMEMBERED: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");

/// (when remembered, in ms since the epoch; the `REMEMBERED` key): what to forget first.
pub const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("idempotency_expiry");

/// Longest idempotency key or event id, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// How many remembered entries one commit forgets at most (the rest in later commits).
const FORGET_PER_COMMIT: usize = 1024;

/// A remembered append (for an event id: the one event).
#[derive(Debug, Serialize, Deserialize)]
struct Remembered<'a> {
    /// sha256 of the whole request, to tell a retry from a different append under one key.
    #[serde(with = "serde_bytes")]
    digest: &'a [u8],
    stream: &'a str,
    first_position: u64,
    last_position: u64,
    stream_version: u64,
    /// When it was remembered (ms since the epoch): past the window it is not honoured, even
    /// before it is forgotten.
    at_ms: u64,
}

/// What the log knows of a request.
pub enum Seen {
    /// Nothing: append it.
    New,
    /// It was appended before, with this result.
    Before(Appended),
    /// Its key or some of its event ids were used by a different append.
    Conflict(String),
}

/// Checks that a key or an id is fit to remember.
pub fn validate_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{what} must be 1 to {MAX_ID_LEN} bytes long, without control characters"
        ));
    }
    Ok(())
}

/// sha256 of everything an append says. An append to one stream hashes as it always has, so
/// what a log remembered before multi-stream appends existed is still recognised.
pub fn digest(parts: &[StreamAppend]) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    if parts.len() > 1 {
        field(b"\0several streams");
    }
    for part in parts {
        field(part.stream.as_bytes());
        match part.expected {
            ExpectedVersion::Any => field(b"any"),
            ExpectedVersion::Exact(v) => field(&v.to_le_bytes()),
        }
        for event in &part.events {
            field(event.event_type.as_bytes());
            field(&event.data);
            field(event.metadata.as_deref().unwrap_or(b"\0none"));
            field(event.id.as_deref().unwrap_or("\0none").as_bytes());
        }
    }
    hash.finalize().into()
}

/// Every event of `parts` with its stream, in order.
fn events_of(parts: &[StreamAppend]) -> impl Iterator<Item = (&str, &NewEvent)> {
    parts
        .iter()
        .flat_map(|p| p.events.iter().map(move |e| (p.stream.as_str(), e)))
}

/// What `remembered` knows of an append with `key` (if any), `events` and `digest`.
pub fn seen(
    remembered: &Table<&str, &[u8]>,
    key: Option<&str>,
    parts: &[StreamAppend],
    digest: &[u8; 32],
    oldest_ms: u64,
) -> Result<Seen, redb::Error> {
    if let Some(key) = key
        && let Some(row) = remembered.get(format!("k:{key}").as_str())?
        && decode(row.value())?.at_ms >= oldest_ms
    {
        let before = decode(row.value())?;
        return Ok(if before.digest == digest {
            Seen::Before(appended(&before, &before))
        } else {
            Seen::Conflict(format!(
                "Idempotency-Key {key:?} was used for a different append (stream {:?}, \
                 positions {}..={}); nothing was appended",
                before.stream, before.first_position, before.last_position
            ))
        });
    }
    let mut known = Vec::new();
    let mut streams = Vec::new();
    for (stream, event) in events_of(parts) {
        streams.push(stream);
        if let Some(id) = &event.id
            && let Some(row) = remembered.get(format!("e:{id}").as_str())?
            && decode(row.value())?.at_ms >= oldest_ms
        {
            known.push((id.clone(), row.value().to_vec()));
        }
    }
    if known.is_empty() {
        return Ok(Seen::New);
    }
    let before: Vec<Remembered> = known
        .iter()
        .map(|(_, bytes)| decode(bytes))
        .collect::<Result<_, _>>()?;
    // A retry: every event has an id, each was appended to its stream, in this order, by one
    // append.
    let first = &before[0];
    let whole = known.len() == streams.len()
        && first.digest == digest
        && before.iter().enumerate().all(|(i, b)| {
            b.stream == streams[i]
                && b.digest == first.digest
                && b.first_position == first.first_position + i as u64
        })
        && first.last_position == first.first_position + streams.len() as u64 - 1;
    if whole {
        return Ok(Seen::Before(appended(first, &before[before.len() - 1])));
    }
    Ok(Seen::Conflict(ids_used_before(
        known.iter().map(|(id, _)| id.as_str()),
    )))
}

/// Why an append whose events' ids (some of `ids`) were used by another append is refused.
pub fn ids_used_before<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let ids: Vec<String> = ids.take(5).map(|id| format!("{id:?}")).collect();
    format!(
        "events with ids {} were appended before, not by this same append; nothing was appended",
        ids.join(", ")
    )
}

fn appended(first: &Remembered, last: &Remembered) -> Appended {
    Appended {
        first_position: first.first_position,
        last_position: last.first_position.max(first.last_position),
        stream_version: last.stream_version,
        replayed: true,
    }
}

fn decode(bytes: &[u8]) -> Result<Remembered<'_>, redb::Error> {
    postcard::from_bytes(bytes)
        .map_err(|e| redb::Error::Corrupted(format!("a remembered append cannot be read: {e}")))
}

/// Remembers an append that was just made (its key, and each event's id).
#[allow(clippy::too_many_arguments)]
pub fn remember(
    remembered: &mut Table<&str, &[u8]>,
    expiry: &mut Table<(u64, &str), ()>,
    now_ms: u64,
    key: Option<&str>,
    parts: &[StreamAppend],
    digest: &[u8; 32],
    result: &Appended,
    versions: &[u64],
) -> Result<(), redb::Error> {
    let mut put = |name: String, record: Remembered| -> Result<(), redb::Error> {
        let bytes = postcard::to_stdvec(&record).expect("encoding to a Vec cannot fail");
        // A name remembered again (after its window) is forgotten at its new time only.
        if let Some(old) = remembered.insert(name.as_str(), bytes.as_slice())? {
            let old_at = decode(old.value())?.at_ms;
            expiry.remove((old_at, name.as_str()))?;
        }
        expiry.insert((now_ms, name.as_str()), ())?;
        Ok(())
    };
    if let Some(key) = key {
        put(
            format!("k:{key}"),
            Remembered {
                digest,
                stream: &parts[0].stream,
                first_position: result.first_position,
                last_position: result.last_position,
                stream_version: result.stream_version,
                at_ms: now_ms,
            },
        )?;
    }
    for (i, (stream, event)) in events_of(parts).enumerate() {
        if let Some(id) = &event.id {
            let position = result.first_position + i as u64;
            put(
                format!("e:{id}"),
                Remembered {
                    digest,
                    stream,
                    first_position: position,
                    last_position: result.last_position,
                    stream_version: versions[i],
                    at_ms: now_ms,
                },
            )?;
        }
    }
    Ok(())
}

/// Forgets what was remembered before `before_ms` (a bounded number per call).
pub fn forget(
    remembered: &mut Table<&str, &[u8]>,
    expiry: &mut Table<(u64, &str), ()>,
    before_ms: u64,
) -> Result<(), redb::Error> {
    let mut old = Vec::new();
    for row in expiry.range::<(u64, &str)>(..(before_ms, ""))? {
        let (key, _) = row?;
        let (at, name) = key.value();
        old.push((at, name.to_string()));
        if old.len() >= FORGET_PER_COMMIT {
            break;
        }
    }
    for (at, name) in old {
        expiry.remove((at, name.as_str()))?;
        remembered.remove(name.as_str())?;
    }
    Ok(())
}

/// A remembered append as logs of format 1 stored it: without its time, which only the expiry
/// table held.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(super) struct RememberedV1<'a> {
    #[serde(with = "serde_bytes")]
    pub digest: &'a [u8],
    pub stream: &'a str,
    pub first_position: u64,
    pub last_position: u64,
    pub stream_version: u64,
}

/// Rewrites what a log of format 1 remembered in today's form, taking each entry's time from
/// the expiry table; returns how many entries it rewrote.
pub fn upgrade(
    remembered: &mut Table<&str, &[u8]>,
    expiry: &mut Table<(u64, &str), ()>,
) -> Result<usize, redb::Error> {
    let mut times = std::collections::HashMap::new();
    for row in expiry.iter()? {
        let (key, _) = row?;
        let (at, name) = key.value();
        times.insert(name.to_string(), at);
    }
    let mut rewritten = Vec::new();
    let mut missing = Vec::new();
    for row in remembered.iter()? {
        let (name, bytes) = row?;
        let bytes = bytes.value();
        if decode(bytes).is_ok() {
            continue;
        }
        let old: RememberedV1 = postcard::from_bytes(bytes).map_err(|e| {
            redb::Error::Corrupted(format!("a remembered append cannot be read: {e}"))
        })?;
        let name = name.value().to_string();
        // An entry the expiry table does not know would never be forgotten: give it the
        // oldest time, so it is not honoured and the next commit forgets it.
        let at_ms = times.get(&name).copied().unwrap_or(0);
        if !times.contains_key(&name) {
            missing.push(name.clone());
        }
        let record = Remembered {
            digest: old.digest,
            stream: old.stream,
            first_position: old.first_position,
            last_position: old.last_position,
            stream_version: old.stream_version,
            at_ms,
        };
        let bytes = postcard::to_stdvec(&record).expect("encoding to a Vec cannot fail");
        rewritten.push((name, bytes));
    }
    for name in missing {
        expiry.insert((0, name.as_str()), ())?;
    }
    let mut remembered_again = 0;
    for (name, bytes) in rewritten {
        remembered.insert(name.as_str(), bytes.as_slice())?;
        remembered_again += 1;
    }
    Ok(remembered_again)
}
