//! The log's read path: batches of events in the flat layout projectors receive (one header
//! per event; every string and payload back to back in one buffer). Nothing here is specific
//! to the store behind the log: the embedded log fills a batch by copying stored bytes, a
//! distributed log by copying fetched messages.

use super::StoredEvent;

/// One event of a [`FlatBatch`]: its position, versions and where its parts lie in the batch's
/// bytes. The same fields as the WIT's `event-header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatHeader {
    pub position: u64,
    pub stream_version: u64,
    pub timestamp_ms: u64,
    pub stream_offset: u32,
    pub stream_len: u32,
    pub type_offset: u32,
    pub type_len: u32,
    pub data_offset: u32,
    pub data_len: u32,
    pub metadata_offset: u32,
    pub metadata_len: u32,
}

/// A batch of events in log order, in the flat layout. Reused from read to read: clearing it
/// keeps its buffers.
#[derive(Debug, Default, Clone)]
pub struct FlatBatch {
    pub headers: Vec<FlatHeader>,
    pub bytes: Vec<u8>,
}

/// The lengths of an event's four parts, which lie back to back (stream, type, data,
/// metadata) in one span of bytes.
#[derive(Debug, Clone, Copy)]
pub struct PartLengths {
    pub stream: u32,
    pub event_type: u32,
    pub data: u32,
    pub metadata: u32,
}

impl PartLengths {
    pub fn total(&self) -> usize {
        self.stream as usize
            + self.event_type as usize
            + self.data as usize
            + self.metadata as usize
    }
}

impl FlatBatch {
    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.headers.clear();
        self.bytes.clear();
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// How many payload bytes the batch holds.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Adds one event whose parts are given one by one.
    pub fn push(&mut self, position: u64, event: &StoredEvent<'_>) {
        let lengths = PartLengths {
            stream: event.stream.len() as u32,
            event_type: event.event_type.len() as u32,
            data: event.data.len() as u32,
            metadata: event.metadata.len() as u32,
        };
        let base = self.bytes.len();
        self.bytes.reserve(lengths.total());
        for part in [
            event.stream.as_bytes(),
            event.event_type.as_bytes(),
            event.data,
            event.metadata,
        ] {
            self.bytes.extend_from_slice(part);
        }
        self.push_header(
            position,
            event.stream_version,
            event.timestamp_ms,
            base,
            lengths,
        );
    }

    /// Adds one event whose four parts lie back to back in `span` (one copy).
    pub fn push_span(
        &mut self,
        position: u64,
        stream_version: u64,
        timestamp_ms: u64,
        lengths: PartLengths,
        span: &[u8],
    ) {
        debug_assert_eq!(span.len(), lengths.total());
        let base = self.bytes.len();
        self.bytes.extend_from_slice(span);
        self.push_header(position, stream_version, timestamp_ms, base, lengths);
    }

    fn push_header(
        &mut self,
        position: u64,
        stream_version: u64,
        timestamp_ms: u64,
        base: usize,
        lengths: PartLengths,
    ) {
        let stream_offset = base as u32;
        let type_offset = stream_offset + lengths.stream;
        let data_offset = type_offset + lengths.event_type;
        let metadata_offset = data_offset + lengths.data;
        self.headers.push(FlatHeader {
            position,
            stream_version,
            timestamp_ms,
            stream_offset,
            stream_len: lengths.stream,
            type_offset,
            type_len: lengths.event_type,
            data_offset,
            data_len: lengths.data,
            metadata_offset,
            metadata_len: lengths.metadata,
        });
    }

    /// The event at `index`, borrowing the batch.
    pub fn event(&self, index: usize) -> Option<StoredEvent<'_>> {
        let h = self.headers.get(index)?;
        let part = |offset: u32, len: u32| &self.bytes[offset as usize..(offset + len) as usize];
        let text = |offset, len| std::str::from_utf8(part(offset, len)).unwrap_or_default();
        Some(StoredEvent {
            stream: text(h.stream_offset, h.stream_len),
            stream_version: h.stream_version,
            event_type: text(h.type_offset, h.type_len),
            timestamp_ms: h.timestamp_ms,
            data: part(h.data_offset, h.data_len),
            metadata: part(h.metadata_offset, h.metadata_len),
        })
    }
}

/// What one batch read may take: events from `from` on, stopping at whichever limit comes
/// first. Events the caller's filter refuses count toward `max_scanned` only.
#[derive(Debug, Clone, Copy)]
pub struct BatchRead {
    /// The first position to read.
    pub from: u64,
    /// The last position to read (inclusive).
    pub until: u64,
    /// Most events to look at, kept or not.
    pub max_scanned: usize,
    /// Most events to keep.
    pub max_events: usize,
    /// Stop once the kept events' bytes reach this.
    pub max_bytes: usize,
}

impl BatchRead {
    /// Every event from `from` on, up to `max_events` of them (and [`MAX_BYTES`]).
    pub fn from(from: u64, max_events: usize) -> BatchRead {
        BatchRead {
            from,
            until: u64::MAX,
            max_scanned: max_events,
            max_events,
            max_bytes: MAX_BYTES,
        }
    }
}

/// Most bytes a batch holds (its offsets are 32-bit): a read stops at the event that reaches
/// it, whatever its `max_bytes`.
pub const MAX_BYTES: usize = 1 << 30;

/// A log that reads batches: the read path every log implements (the embedded redb log today,
/// a distributed one later), with nothing of its store in the signature.
pub trait BatchReader {
    /// Reads a batch into `out` (emptied first): the events from `read.from` on that `keep`
    /// accepts (given each event's stream and type), within `read`'s limits. Returns the
    /// position of the last event looked at, kept or not; `None` when none was (the reader is
    /// at the head, or the read's limits allow nothing).
    fn read_batch(
        &self,
        read: &BatchRead,
        keep: &mut dyn FnMut(&str, &str) -> bool,
        out: &mut FlatBatch,
    ) -> Result<Option<u64>, super::ReadError>;
}
