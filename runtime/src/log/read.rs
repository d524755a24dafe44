//! The log's reads: batches in the flat layout, events from a position, streams and their
//! events, over the chunked tables.

use super::chunk::{Chunk, ChunkEvent};
use super::flat::MAX_BYTES;
use super::schema::CHUNKS;
use super::{BatchRead, BatchReader, FlatBatch, ReadError, RecordedEvent, RedbLog};
use redb::ReadableDatabase;

impl BatchReader for RedbLog {
    /// Each event is one copy of its stored bytes.
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
        let mut scanned = 0;
        let mut damaged = None;
        let last = self.scan(read.from, |position, event| {
            let Some(parts) = event.parts() else {
                damaged = Some(position);
                return false;
            };
            scanned += 1;
            if keep(parts.stream, parts.event_type) {
                out.push_span(
                    position,
                    event.stream_version,
                    event.timestamp_ms,
                    event.lengths,
                    event.span,
                );
            }
            scanned < read.max_scanned
                && out.len() < read.max_events
                && out.byte_len() < read.max_bytes.min(MAX_BYTES)
                && position < read.until
        })?;
        match damaged {
            Some(position) => Err(not_utf8(position)),
            None => Ok(last),
        }
    }
}

impl RedbLog {
    /// Walks the log up to its published head (an event committed but not yet published is
    /// not yet in the stream index, nor acknowledged): see [`walk_chunks`].
    fn scan<F>(&self, from: u64, visit: F) -> Result<Option<u64>, ReadError>
    where
        F: FnMut(u64, &ChunkEvent<'_>) -> bool,
    {
        let head = *self.head.borrow();
        walk_chunks(&self.read_table(CHUNKS)?, from, head, visit)
    }

    /// The stream's version (its number of events; 0 when it does not exist).
    pub(super) fn stream_version(&self, stream: &str) -> Result<u64, ReadError> {
        Ok(self.index.read()?.version(stream)?)
    }

    /// Up to `max` stream names after `after` (all when `None`), in name order, with their
    /// versions.
    pub(super) fn streams(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, u64)>, ReadError> {
        Ok(self.index.read()?.streams(after, max)?)
    }

    /// Reads up to `max` events of `stream`, from stream version `from` on.
    pub(super) fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        // The positions first (the index's lock is held only for them); every indexed event
        // is committed in the log, so a read of the log begun after sees them all.
        let positions = self.index.read()?.positions(stream, from, max)?;
        let txn = self.db.get()?.begin_read().map_err(redb::Error::from)?;
        let chunks = txn.open_table(CHUNKS).map_err(redb::Error::from)?;
        // Positions ascend: each chunk is looked up and parsed once for all of its events.
        let mut out = Vec::with_capacity(positions.len());
        let mut i = 0;
        while let Some(&position) = positions.get(i) {
            let corrupt = |reason: String| ReadError::Corrupt { position, reason };
            let (first, bytes) = chunks
                .range(..=position)
                .map_err(redb::Error::from)?
                .next_back()
                .ok_or_else(|| corrupt("indexed but missing".into()))?
                .map_err(redb::Error::from)?;
            let first = first.value();
            let chunk = Chunk::parse(bytes.value()).map_err(corrupt)?;
            let end = first + Chunk::count_of(bytes.value());
            let before = i;
            for (k, event) in chunk.events((position - first) as usize).enumerate() {
                let at = position + k as u64;
                if positions.get(i) == Some(&at) {
                    let event = event.parts().ok_or_else(|| not_utf8(at))?;
                    out.push(RecordedEvent::from_stored(at, &event));
                    i += 1;
                }
                if positions.get(i).is_none_or(|&next| next >= end) {
                    break;
                }
            }
            if i == before {
                return Err(corrupt("indexed but missing".into()));
            }
        }
        Ok(out)
    }

    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: redb::TableDefinition<K, V>,
    ) -> Result<redb::ReadOnlyTable<K, V>, ReadError> {
        let txn = self.db.get()?.begin_read().map_err(redb::Error::from)?;
        Ok(txn.open_table(table).map_err(redb::Error::from)?)
    }
}

pub(super) fn not_utf8(position: u64) -> ReadError {
    ReadError::Corrupt {
        position,
        reason: "its stream name or type is not UTF-8".into(),
    }
}

/// Walks the chunks of `table` from the one holding `from`, handing `visit` each event from
/// `from` through `until` until it returns false; returns the last position handed. The one
/// walk over the chunks, for the log's reads and for indexing its streams (which runs before
/// the log is open).
pub(super) fn walk_chunks<F>(
    table: &impl redb::ReadableTable<u64, &'static [u8]>,
    from: u64,
    until: u64,
    mut visit: F,
) -> Result<Option<u64>, ReadError>
where
    F: FnMut(u64, &ChunkEvent<'_>) -> bool,
{
    let start = match table.range(..=from).map_err(redb::Error::from)?.next_back() {
        Some(row) => row.map_err(redb::Error::from)?.0.value(),
        None => from,
    };
    let mut last = None;
    for row in table.range(start..).map_err(redb::Error::from)? {
        let (first, bytes) = row.map_err(redb::Error::from)?;
        let first = first.value();
        let chunk = Chunk::parse(bytes.value()).map_err(|reason| ReadError::Corrupt {
            position: first,
            reason,
        })?;
        let skip = from.saturating_sub(first) as usize;
        for (i, event) in chunk.events(skip).enumerate() {
            let position = first + (skip + i) as u64;
            if position > until {
                return Ok(last);
            }
            last = Some(position);
            if !visit(position, &event) {
                return Ok(last);
            }
        }
    }
    Ok(last)
}
