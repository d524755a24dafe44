//! One event as one JetStream message: its stream's subject ([`subject_of`]), its stream
//! version in the `Prism-Version` header, its type, metadata and data in the payload
//! (`type length: u16, type, metadata length: u32, metadata, data`). Its timestamp is the
//! server's (`Nats-Time-Stamp`), unless the event was copied from another log
//! (`prism log migrate`), which keeps the original in `Prism-Time` (ms since the epoch).

use super::protocol::{Outbound, Stored, stream_of, subject_of};
use crate::log::{ReadError, StoredEvent};
use async_nats::HeaderMap;

/// The header holding an event's stream version.
pub const VERSION: &str = "Prism-Version";
/// The header holding an event's original timestamp, when it was copied from another log.
pub const TIME: &str = "Prism-Time";
/// The header naming the append an event belongs to, when the append can be retried (an
/// idempotency key or event ids): how an append of unknown outcome is found again.
pub const APPEND_ID: &str = "Prism-Append-Id";
/// The header naming the call that published an append which can be retried (several calls
/// share its append id): whether the call that finds it published it, or found another's.
pub const CALL: &str = "Prism-Call";

/// The message of an event of `stream` at `version`.
pub fn outbound(
    stream: &str,
    version: u64,
    event_type: &str,
    metadata: &[u8],
    data: &[u8],
) -> Outbound {
    let mut headers = HeaderMap::new();
    headers.insert(VERSION, version.to_string().as_str());
    Outbound {
        subject: subject_of(stream),
        headers,
        payload: encode(event_type, metadata, data).into(),
    }
}

/// The payload of an event: its type, metadata and data, lengths first.
fn encode(event_type: &str, metadata: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + event_type.len() + metadata.len() + data.len());
    out.extend_from_slice(&(event_type.len() as u16).to_le_bytes());
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    out.extend_from_slice(metadata);
    out.extend_from_slice(data);
    out
}

/// A stored message as an event of the log.
pub struct Decoded<'a> {
    pub position: u64,
    pub stream: String,
    /// The event, its `stream` empty (it is in [`Decoded::stream`]).
    pub event: StoredEvent<'a>,
}

/// The stream version in an event's headers, if they hold a readable one.
pub fn version_of(headers: &HeaderMap) -> Option<u64> {
    headers.get(VERSION).and_then(|v| v.as_str().parse().ok())
}

/// A header's value, if the message has it.
pub fn header(message: &Stored, name: &str) -> Option<String> {
    message.headers.get(name).map(|v| v.as_str().to_string())
}

pub fn decode(message: &Stored) -> Result<Decoded<'_>, ReadError> {
    let position = message.sequence;
    let corrupt = |reason: &str| ReadError::Corrupt {
        position,
        reason: reason.into(),
    };
    let stream = stream_of(&message.subject).ok_or_else(|| corrupt("not an event's subject"))?;
    let stream_version = version_of(&message.headers).ok_or_else(|| corrupt("no Prism-Version"))?;
    let timestamp_ms = match header(message, TIME) {
        Some(ms) => ms.parse().map_err(|_| corrupt("a bad Prism-Time"))?,
        None => header(message, "Nats-Time-Stamp")
            .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64),
    };
    let bytes = &message.payload[..];
    let type_len = u16::from_le_bytes(
        bytes
            .get(..2)
            .ok_or_else(|| corrupt("short"))?
            .try_into()
            .unwrap(),
    ) as usize;
    let rest = bytes.get(2..).ok_or_else(|| corrupt("short"))?;
    let event_type = std::str::from_utf8(rest.get(..type_len).ok_or_else(|| corrupt("short"))?)
        .map_err(|_| corrupt("its type is not UTF-8"))?;
    let rest = &rest[type_len..];
    let meta_len = u32::from_le_bytes(
        rest.get(..4)
            .ok_or_else(|| corrupt("short"))?
            .try_into()
            .unwrap(),
    ) as usize;
    let rest = &rest[4..];
    let metadata = rest.get(..meta_len).ok_or_else(|| corrupt("short"))?;
    let data = &rest[meta_len..];
    Ok(Decoded {
        position,
        stream,
        event: StoredEvent {
            stream: "",
            stream_version,
            event_type,
            timestamp_ms,
            data,
            metadata,
        },
    })
}
