//! The log's writer thread: group commits, each one durable transaction, with the
//! idempotency checks of its appends.

use super::chunk::ChunkBuilder;
use super::index::StreamIndex;
use super::schema::{CHUNKS, StoredEvent};
use super::shared::Shared;
use super::{AppendError, AppendRequest, Appended, ExpectedVersion, MAX_GROUP, idempotency};
use redb::Database;
use rustc_hash::FxHashMap;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The writer thread: takes every request waiting, commits them in one durable transaction,
/// then answers each and publishes the new head.
pub(super) fn write_loop(
    shared: &Shared,
    index: &StreamIndex,
    requests: mpsc::Receiver<AppendRequest>,
    head_tx: watch::Sender<u64>,
    mut head: u64,
    window: std::time::Duration,
) {
    let mut last_probe = std::time::Instant::now();
    loop {
        // While the log cannot write, look every second whether it can again (also under a
        // steady stream of retried appends).
        let first = if shared.trouble().is_some() {
            match requests.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match requests.recv() {
                Ok(request) => Some(request),
                Err(_) => break,
            }
        };
        if shared.trouble().is_some() && last_probe.elapsed() >= std::time::Duration::from_secs(1) {
            last_probe = std::time::Instant::now();
            if let Some(db) = shared.probe() {
                head = reread_head(&db, head, &head_tx, shared, index);
            }
        }
        let Some(first) = first else { continue };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        // While in trouble appends are refused at once; the probe above clears it.
        if let Some(trouble) = shared.trouble() {
            for request in group {
                let _ = request
                    .reply
                    .send(Err(AppendError::Unavailable(trouble.clone())));
            }
            continue;
        }
        let db = match shared.get() {
            Ok(db) => db,
            Err(e) => {
                for request in group {
                    let _ = request
                        .reply
                        .send(Err(AppendError::Unavailable(e.to_string())));
                }
                continue;
            }
        };
        let committed = commit_group(&db, index, &group, head, window);
        drop(db);
        match committed {
            Ok((outcomes, new_head, entries)) => {
                // Indexed before anyone learns of the append (see `index`).
                index.add(entries);
                head = new_head;
                head_tx.send_replace(head);
                for (request, outcome) in group.into_iter().zip(outcomes) {
                    let _ = request.reply.send(outcome);
                }
            }
            Err(e @ (redb::Error::Io(_) | redb::Error::PreviousIo)) => {
                // redb fails a database whose write failed until it is reopened: reopen it once
                // now, so reads (projectors, HTTP) go on; appends are refused until the probe
                // finds that writing works again.
                tracing::error!(error = %e, requests = group.len(), "the event log cannot write");
                shared.set_trouble(Some(format!("the event log cannot write: {e}")));
                last_probe = std::time::Instant::now();
                for request in group {
                    let _ = request
                        .reply
                        .send(Err(AppendError::Unavailable(e.to_string())));
                }
                match shared.reopen() {
                    Ok(db) => head = reread_head(&db, head, &head_tx, shared, index),
                    Err(e) => {
                        tracing::error!(error = %e, "reopening the event log failed; the probe tries again every second")
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = group.len(), "event log commit failed");
                for request in group {
                    let _ = request.reply.send(Err(AppendError::Storage(e.to_string())));
                }
            }
        }
    }
}

/// The head read again from a reopened log (a commit reported as failed may have reached the
/// file), published if it moved; the events it gained go to the stream index.
fn reread_head(
    db: &Database,
    head: u64,
    head_tx: &watch::Sender<u64>,
    shared: &Shared,
    index: &StreamIndex,
) -> u64 {
    match super::embedded::read_head(db) {
        Ok(reread) => {
            if reread > head
                && let Err(e) = index.add_from_log(db, head + 1, reread)
            {
                tracing::error!(error = %e, "indexing the events of a commit reported failed failed");
                shared.set_trouble(Some(format!("the event log cannot be read: {e}")));
                return head;
            }
            if reread != head {
                head_tx.send_replace(reread);
            }
            reread
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the reopened log's head failed");
            shared.set_trouble(Some(format!("the event log cannot be read: {e}")));
            head
        }
    }
}

type Outcomes = Vec<Result<Appended, AppendError>>;
/// `(stream, version, position)` of each event appended, for the stream index.
type Entries = Vec<(String, u64, u64)>;

fn commit_group(
    db: &Database,
    index: &StreamIndex,
    group: &[AppendRequest],
    head: u64,
    window: std::time::Duration,
) -> Result<(Outcomes, u64, Entries), redb::Error> {
    // Stream versions as the index has them (committed appends, in memory or in its file),
    // then as this group's earlier appends leave them.
    let versions_read = index.read()?;
    let mut latest: FxHashMap<&str, u64> = FxHashMap::default();
    let mut entries = Vec::new();
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let txn = db.begin_write()?;
    let mut next = head + 1;
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut chunks = txn.open_table(CHUNKS)?;
        let mut builder = ChunkBuilder::default();
        let mut remembered = txn.open_table(idempotency::REMEMBERED)?;
        let mut expiry = txn.open_table(idempotency::EXPIRY)?;
        let window_ms = window.as_millis() as u64;
        idempotency::forget(
            &mut remembered,
            &mut expiry,
            timestamp_ms.saturating_sub(window_ms),
        )?;
        for request in group {
            let parts = request.append.parts.as_slice();
            let key = request.append.key.as_deref();
            let remembers = key.is_some()
                || parts
                    .iter()
                    .any(|p| p.events.iter().any(|e| e.id.is_some()));
            // The request's hash is needed only to remember it: not on the common append.
            let digest = remembers.then(|| idempotency::digest(parts));
            if let Some(digest) = &digest {
                let oldest_ms = timestamp_ms.saturating_sub(window_ms);
                match idempotency::seen(&remembered, key, parts, digest, oldest_ms)? {
                    idempotency::Seen::New => {}
                    idempotency::Seen::Before(appended) => {
                        outcomes.push(Ok(appended));
                        continue;
                    }
                    idempotency::Seen::Conflict(message) => {
                        outcomes.push(Err(AppendError::Duplicate(message)));
                        continue;
                    }
                }
            }
            if let Some(expected) = request.append.expected_head
                && expected != next - 1
            {
                outcomes.push(Err(AppendError::HeadMoved {
                    expected,
                    actual: next - 1,
                }));
                continue;
            }
            // Every part's expected version first, against its stream after the earlier parts:
            // a refused request writes nothing.
            let mut versions: Vec<(&str, u64)> = Vec::with_capacity(parts.len());
            let mut request_latest: FxHashMap<&str, u64> = FxHashMap::default();
            let mut conflict = None;
            for part in parts {
                let stream = part.stream.as_str();
                let actual = match request_latest.get(stream).or_else(|| latest.get(stream)) {
                    Some(v) => *v,
                    None => versions_read.version(stream)?,
                };
                if let ExpectedVersion::Exact(expected) = part.expected
                    && expected != actual
                {
                    conflict = Some(AppendError::VersionConflict {
                        stream: part.stream.clone(),
                        expected,
                        actual,
                    });
                    break;
                }
                let end = actual + part.events.len() as u64;
                versions.push((stream, end));
                request_latest.insert(stream, end);
            }
            if let Some(conflict) = conflict {
                outcomes.push(Err(conflict));
                continue;
            }
            let first_position = next;
            let mut event_versions = Vec::new();
            for (part, (_, end)) in parts.iter().zip(&versions) {
                let stream = part.stream.as_str();
                let mut version = end - part.events.len() as u64;
                for event in &part.events {
                    version += 1;
                    let stored = StoredEvent {
                        stream,
                        stream_version: version,
                        event_type: &event.event_type,
                        timestamp_ms,
                        data: &event.data,
                        metadata: event.metadata.as_deref().unwrap_or(b"{}"),
                    };
                    if let Some((first, row)) = builder.push(next, &stored) {
                        put_chunk(&mut chunks, first, &row)?;
                    }
                    entries.push((part.stream.clone(), version, next));
                    if remembers {
                        event_versions.push(version);
                    }
                    next += 1;
                }
                latest.insert(stream, version);
            }
            let appended = Appended {
                first_position,
                last_position: next - 1,
                stream_version: versions.last().map_or(0, |(_, v)| *v),
                replayed: false,
            };
            if let Some(digest) = &digest {
                idempotency::remember(
                    &mut remembered,
                    &mut expiry,
                    timestamp_ms,
                    key,
                    parts,
                    digest,
                    &appended,
                    &event_versions,
                )?;
            }
            outcomes.push(Ok(appended));
        }
        if let Some((first, row)) = builder.finish() {
            put_chunk(&mut chunks, first, &row)?;
        }
    }
    drop(versions_read);
    txn.commit()?;
    Ok((outcomes, next - 1, entries))
}

/// Stores a new chunk; a row already there means the head was wrong, and nothing may be
/// overwritten.
fn put_chunk(
    chunks: &mut redb::Table<u64, &[u8]>,
    first: u64,
    row: &[u8],
) -> Result<(), redb::Error> {
    if chunks.insert(first, row)?.is_some() {
        return Err(redb::Error::Corrupted(format!(
            "a chunk already starts at position {first}: the log's head was wrong"
        )));
    }
    Ok(())
}
