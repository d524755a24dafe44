//! The event log's redb tables and the encoding of a stored event.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// Every event by its global position (1, 2, 3, ... without gaps).
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Each stream's version: how many events it holds.
pub const STREAMS: TableDefinition<&str, u64> = TableDefinition::new("streams");

/// (stream, stream version) → global position, for reading one stream in order.
pub const STREAM_INDEX: TableDefinition<(&str, u64), u64> = TableDefinition::new("stream_index");

/// An event as stored under its position in [`EVENTS`] (postcard; fields borrow the row).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StoredEvent<'a> {
    pub stream: &'a str,
    pub stream_version: u64,
    pub event_type: &'a str,
    pub timestamp_ms: u64,
    #[serde(with = "serde_bytes")]
    pub data: &'a [u8],
    #[serde(with = "serde_bytes")]
    pub metadata: &'a [u8],
}

impl<'a> StoredEvent<'a> {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    pub fn decode(bytes: &'a [u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
