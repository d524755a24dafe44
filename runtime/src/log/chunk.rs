//! How the embedded log stores events: in chunks of up to [`CHUNK_EVENTS`] consecutive events
//! (and about [`CHUNK_BYTES`]), one redb row each, keyed by the chunk's first position. A
//! chunk holds fixed-size headers then every event's parts back to back, so a batch read copies
//! each event with one `memcpy` and decodes no payload (only the fixed headers are read, and
//! checked to add up); positions follow from the key. A commit group is split at those bounds,
//! so no row grows without limit.
//!
//! Layout (little-endian): `layout: u8 = 1`, `count: u32`, then `count` headers of 32 bytes
//! (`stream_version: u64`, `timestamp_ms: u64`, the lengths of stream, type, data and metadata
//! as `u32`), then the parts: for each event its stream name, type, data and metadata.

use super::StoredEvent;
use super::flat::PartLengths;

/// Most events in one chunk.
pub const CHUNK_EVENTS: usize = 1000;

/// A chunk is closed once its parts reach this many bytes (an event is never split, so one
/// large event makes a chunk of its own).
pub const CHUNK_BYTES: usize = 1 << 20;

const LAYOUT: u8 = 1;
const PREFIX: usize = 5;
const HEADER: usize = 32;

/// A stored chunk, borrowed from its row.
pub struct Chunk<'a> {
    count: usize,
    headers: &'a [u8],
    parts: &'a [u8],
}

/// One event of a chunk.
pub struct ChunkEvent<'a> {
    pub stream_version: u64,
    pub timestamp_ms: u64,
    pub lengths: PartLengths,
    /// The four parts back to back.
    pub span: &'a [u8],
}

impl<'a> ChunkEvent<'a> {
    /// The event with its parts apart; `None` when a name is not UTF-8 (a damaged row).
    pub fn parts(&self) -> Option<StoredEvent<'a>> {
        let (stream, rest) = self.span.split_at(self.lengths.stream as usize);
        let (event_type, rest) = rest.split_at(self.lengths.event_type as usize);
        let (data, metadata) = rest.split_at(self.lengths.data as usize);
        Some(StoredEvent {
            stream: std::str::from_utf8(stream).ok()?,
            stream_version: self.stream_version,
            event_type: std::str::from_utf8(event_type).ok()?,
            timestamp_ms: self.timestamp_ms,
            data,
            metadata,
        })
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> Chunk<'a> {
    /// Reads a row; an error says how it is damaged.
    pub fn parse(row: &'a [u8]) -> Result<Chunk<'a>, String> {
        if row.len() < PREFIX || row[0] != LAYOUT {
            return Err(format!("unknown chunk layout {:?}", row.first().copied()));
        }
        let count = u32_at(row, 1) as usize;
        let end = PREFIX + count * HEADER;
        if row.len() < end {
            return Err(format!("a chunk of {count} events is cut short"));
        }
        let chunk = Chunk {
            count,
            headers: &row[PREFIX..end],
            parts: &row[end..],
        };
        let total: usize = (0..count).map(|i| chunk.lengths(i).total()).sum();
        if total != chunk.parts.len() {
            return Err(format!(
                "a chunk's parts are {} bytes, its headers say {total}",
                chunk.parts.len()
            ));
        }
        Ok(chunk)
    }

    /// How many events a row holds, without checking it.
    pub fn count_of(row: &[u8]) -> u64 {
        if row.len() < PREFIX {
            return 0;
        }
        u64::from(u32_at(row, 1))
    }

    fn lengths(&self, i: usize) -> PartLengths {
        let at = i * HEADER + 16;
        PartLengths {
            stream: u32_at(self.headers, at),
            event_type: u32_at(self.headers, at + 4),
            data: u32_at(self.headers, at + 8),
            metadata: u32_at(self.headers, at + 12),
        }
    }

    /// The events from index `skip` on, in order.
    pub fn events(&self, skip: usize) -> impl Iterator<Item = ChunkEvent<'a>> + '_ {
        let offset: usize = (0..skip.min(self.count))
            .map(|i| self.lengths(i).total())
            .sum();
        let mut offset = offset;
        (skip..self.count).map(move |i| {
            let lengths = self.lengths(i);
            let span = &self.parts[offset..offset + lengths.total()];
            offset += lengths.total();
            ChunkEvent {
                stream_version: u64_at(self.headers, i * HEADER),
                timestamp_ms: u64_at(self.headers, i * HEADER + 8),
                lengths,
                span,
            }
        })
    }
}

/// Builds chunks from events in position order.
#[derive(Default)]
pub struct ChunkBuilder {
    first: u64,
    count: usize,
    headers: Vec<u8>,
    parts: Vec<u8>,
}

impl ChunkBuilder {
    /// Adds the event at `position` (the next one); returns a finished chunk (its first
    /// position and row) when this event filled it.
    pub fn push(&mut self, position: u64, event: &StoredEvent<'_>) -> Option<(u64, Vec<u8>)> {
        if self.count == 0 {
            self.first = position;
        }
        debug_assert_eq!(position, self.first + self.count as u64);
        self.headers
            .extend_from_slice(&event.stream_version.to_le_bytes());
        self.headers
            .extend_from_slice(&event.timestamp_ms.to_le_bytes());
        for part in [
            event.stream.as_bytes(),
            event.event_type.as_bytes(),
            event.data,
            event.metadata,
        ] {
            self.headers
                .extend_from_slice(&(part.len() as u32).to_le_bytes());
            self.parts.extend_from_slice(part);
        }
        self.count += 1;
        (self.count >= CHUNK_EVENTS || self.parts.len() >= CHUNK_BYTES)
            .then(|| self.finish())
            .flatten()
    }

    /// The chunk being built, if it holds any event; the builder starts again empty.
    pub fn finish(&mut self) -> Option<(u64, Vec<u8>)> {
        if self.count == 0 {
            return None;
        }
        let mut row = Vec::with_capacity(PREFIX + self.headers.len() + self.parts.len());
        row.push(LAYOUT);
        row.extend_from_slice(&(self.count as u32).to_le_bytes());
        row.extend_from_slice(&self.headers);
        row.extend_from_slice(&self.parts);
        self.count = 0;
        self.headers.clear();
        self.parts.clear();
        Some((self.first, row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(stream: &'a str, version: u64, data: &'a [u8]) -> StoredEvent<'a> {
        StoredEvent {
            stream,
            stream_version: version,
            event_type: "Happened",
            timestamp_ms: 7 + version,
            data,
            metadata: b"{}",
        }
    }

    #[test]
    fn a_chunk_gives_back_what_was_put_in() {
        let mut builder = ChunkBuilder::default();
        let big = vec![b'x'; 3000];
        let data: [&[u8]; 3] = [b"{\"a\":1}", b"", &big];
        for (i, d) in data.iter().enumerate() {
            assert!(
                builder
                    .push(10 + i as u64, &event("s-é", i as u64 + 1, d))
                    .is_none()
            );
        }
        let (first, row) = builder.finish().unwrap();
        assert_eq!(first, 10);
        assert_eq!(Chunk::count_of(&row), 3);
        let chunk = Chunk::parse(&row).unwrap();
        let back: Vec<_> = chunk.events(1).map(|e| e.parts().unwrap()).collect();
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[0].stream, back[0].stream_version, back[0].data),
            ("s-é", 2, &b""[..])
        );
        assert_eq!((back[1].timestamp_ms, back[1].data.len()), (10, 3000));
        assert_eq!(back[1].metadata, b"{}");
        assert!(builder.finish().is_none());
    }

    #[test]
    fn chunks_close_at_their_event_and_byte_limits() {
        let mut builder = ChunkBuilder::default();
        let mut closed = Vec::new();
        for p in 1..=CHUNK_EVENTS as u64 + 5 {
            closed.extend(builder.push(p, &event("s", p, b"1")).map(|(f, _)| f));
        }
        assert_eq!(closed, [1]);
        let big = vec![0u8; CHUNK_BYTES];
        let (first, row) = builder.push(1006, &event("s", 1006, &big)).unwrap();
        assert_eq!((first, Chunk::count_of(&row)), (1001, 6));
    }

    #[test]
    fn damaged_rows_are_refused() {
        let mut builder = ChunkBuilder::default();
        builder.push(1, &event("s", 1, b"12"));
        let (_, row) = builder.finish().unwrap();
        assert!(Chunk::parse(&row[..row.len() - 1]).is_err());
        assert!(Chunk::parse(&[2, 0, 0, 0, 0]).is_err());
        assert!(Chunk::parse(&row[..8]).is_err());
    }
}
