//! `/streams`: appends, stream pages and stream lists.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

/// An event to append.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewEvent {
    /// The event's type, e.g. `OrderPlaced`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's data: any JSON.
    #[schema(value_type = Value)]
    pub data: Box<RawValue>,
    /// The event's metadata: a JSON object (`{}` when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// An id for the event (1 to 256 bytes), unique to it: an append whose events' ids were
    /// all appended before by one same append, within the idempotency window, appends nothing
    /// and answers that append's result; one repeating only some of them is refused (422).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl NewEvent {
    /// An event of `event_type` with `data` (any JSON) and no metadata.
    pub fn new(event_type: impl Into<String>, data: &impl Serialize) -> serde_json::Result<Self> {
        Ok(NewEvent {
            event_type: event_type.into(),
            data: serde_json::value::to_raw_value(data)?,
            metadata: None,
            id: None,
        })
    }

    /// The same event with `metadata` (a JSON object).
    pub fn with_metadata(mut self, metadata: &impl Serialize) -> serde_json::Result<Self> {
        self.metadata = Some(serde_json::value::to_raw_value(metadata)?);
        Ok(self)
    }
}

/// An event to append to the stream it names: one element of `POST /events`, and one line of
/// a `prism import` file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamEvent {
    /// The stream to append it to.
    pub stream: String,
    /// The event's type, e.g. `OrderPlaced`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's data: any JSON.
    #[schema(value_type = Value)]
    pub data: Box<RawValue>,
    /// The event's metadata: a JSON object (`{}` when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// An id for the event, as in [`NewEvent::id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Append only if the stream holds exactly this many events when this event's turn comes
    /// (after the array's earlier events); otherwise 409 and nothing of the array is appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// The answer to `POST /events`: the array's events hold the consecutive positions
/// `first_position..=last_position`, in array order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppendedAll {
    /// Global position of the array's first event.
    pub first_position: u64,
    /// Global position of its last event (pass it as `min_position` to read your write).
    pub last_position: u64,
}

/// The query of `POST /events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppendAllParams {
    /// Append only if the log's last position is exactly this (0: an empty log); otherwise 412
    /// and nothing is appended. Lets a client send appends back to back without waiting for
    /// each answer, each expecting the position the previous one ends at, and still have them
    /// land in its order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_head: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppendParams {
    /// Append only if the stream holds exactly this many events (0: only if it does not exist
    /// yet); otherwise 409 and nothing is appended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// The answer to an append: its events hold the consecutive positions
/// `first_position..=last_position`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = AppendReply)]
pub struct Appended {
    pub stream: String,
    /// Global position of the request's first event.
    pub first_position: u64,
    /// Global position of its last event (pass it as `min_position` to read your write).
    pub last_position: u64,
    /// The stream's version after the append (its number of events).
    pub stream_version: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// The stream version to start at (default 1, the first event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Most events to return: 1 to 1000 (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A page of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamPage {
    /// The stream's version (its number of events).
    pub version: u64,
    pub events: Vec<Event>,
    /// The `from` of the next page, or null at the end.
    #[schema(required = true)]
    pub next: Option<u64>,
}

/// An event as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Global position in the log.
    pub position: u64,
    pub stream: String,
    /// Its version within the stream.
    pub stream_version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the log stored it (RFC 3339, milliseconds).
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The data as appended.
    pub data: Value,
    /// The metadata as appended (`{}` when none was given).
    pub metadata: Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// List the streams named after this one (the `next` of the previous page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Most streams to return: 1 to 1000 (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A page of stream names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamList {
    /// In name order.
    pub streams: Vec<StreamVersion>,
    /// The `after` of the next page, or null at the end.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// A stream and its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamVersion {
    pub stream: String,
    /// Its number of events.
    pub version: u64,
}
