//! The event log's redb tables and the version of their layout.

use redb::TableDefinition;

/// Events in chunks of consecutive positions, by the chunk's first position (see [`super::chunk`]).
pub const CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunks");

/// Each stream's version: how many events it holds.
pub const STREAMS: TableDefinition<&str, u64> = TableDefinition::new("streams");

/// (stream, stream version) → global position, for reading one stream in order.
pub const STREAM_INDEX: TableDefinition<(&str, u64), u64> = TableDefinition::new("stream_index");

/// What the file is: `format` → [`FORMAT`].
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The layout this code writes. Files without a `meta` table were written before layouts were
/// numbered: one postcard row per event in `events` (see [`super::migrate`]).
pub const FORMAT: u64 = 3;

/// An event, borrowed from wherever it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEvent<'a> {
    pub stream: &'a str,
    pub stream_version: u64,
    pub event_type: &'a str,
    pub timestamp_ms: u64,
    pub data: &'a [u8],
    pub metadata: &'a [u8],
}
