//! Conversions between the generated WIT types and Prism's domain types.

use super::bindings::types as wit;
use crate::log::{FlatBatch, StoredEvent};
pub use prism_client::wire::Subscription;

/// What a projector module says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Descriptor {
    /// The name the code gives itself.
    pub name: String,
    /// Which events it wants.
    pub subscription: Subscription,
    /// Its view schema version.
    pub schema_version: u32,
}

impl From<wit::Descriptor> for Descriptor {
    fn from(d: wit::Descriptor) -> Self {
        Descriptor {
            name: d.name,
            subscription: Subscription {
                event_types: d.event_types,
                stream_prefixes: d.stream_prefixes,
            },
            schema_version: d.schema_version,
        }
    }
}

/// A batch of events in the flat layout the guest receives: one header per event, all strings
/// and payloads back to back in one buffer. Reused from batch to batch.
pub struct EventBatch {
    pub(super) inner: wit::Batch,
}

impl Default for EventBatch {
    fn default() -> Self {
        EventBatch {
            inner: wit::Batch {
                events: Vec::new(),
                bytes: Vec::new(),
            },
        }
    }
}

impl EventBatch {
    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.inner.events.clear();
        self.inner.bytes.clear();
    }

    /// Takes the events of `flat` (its byte buffer changes places with this batch's, so
    /// nothing is copied but the headers); `flat` is left empty.
    pub fn load(&mut self, flat: &mut FlatBatch) {
        self.clear();
        std::mem::swap(&mut self.inner.bytes, &mut flat.bytes);
        self.inner
            .events
            .extend(flat.headers.iter().map(|h| wit::EventHeader {
                position: h.position,
                stream_version: h.stream_version,
                timestamp_ms: h.timestamp_ms,
                stream_offset: h.stream_offset,
                stream_len: h.stream_len,
                type_offset: h.type_offset,
                type_len: h.type_len,
                data_offset: h.data_offset,
                data_len: h.data_len,
                metadata_offset: h.metadata_offset,
                metadata_len: h.metadata_len,
            }));
        flat.clear();
    }

    /// Adds one event.
    pub fn push(&mut self, position: u64, event: &StoredEvent<'_>) {
        let bytes = &mut self.inner.bytes;
        let mut append = |part: &[u8]| {
            let offset = bytes.len() as u32;
            bytes.extend_from_slice(part);
            (offset, part.len() as u32)
        };
        let (stream_offset, stream_len) = append(event.stream.as_bytes());
        let (type_offset, type_len) = append(event.event_type.as_bytes());
        let (data_offset, data_len) = append(event.data);
        let (metadata_offset, metadata_len) = append(event.metadata);
        self.inner.events.push(wit::EventHeader {
            position,
            stream_version: event.stream_version,
            timestamp_ms: event.timestamp_ms,
            stream_offset,
            stream_len,
            type_offset,
            type_len,
            data_offset,
            data_len,
            metadata_offset,
            metadata_len,
        });
    }

    /// Keeps only the first `len` events (their bytes stay where they are).
    pub fn truncate(&mut self, len: usize) {
        self.inner.events.truncate(len);
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.inner.events.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.inner.events.is_empty()
    }

    /// How many payload bytes the batch holds.
    pub fn byte_len(&self) -> usize {
        self.inner.bytes.len()
    }

    /// The position of the event at `index`.
    pub fn position(&self, index: usize) -> Option<u64> {
        self.inner.events.get(index).map(|h| h.position)
    }
}

/// Maps a guest's log level to `tracing`'s.
pub fn level(level: wit::Level) -> tracing::Level {
    match level {
        wit::Level::Trace => tracing::Level::TRACE,
        wit::Level::Debug => tracing::Level::DEBUG,
        wit::Level::Info => tracing::Level::INFO,
        wit::Level::Warn => tracing::Level::WARN,
        wit::Level::Error => tracing::Level::ERROR,
    }
}
