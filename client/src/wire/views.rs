//! `/projectors/{name}/view` and `/changes`: queries of a view and its change stream.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Longest a query may wait for `min_position`.
pub const MAX_WAIT_MS: u64 = 30_000;

/// Read-your-writes: `?min_position=P` (the position an append returned) makes a query wait
/// until the view reflects P, for at most `timeout_ms` (default 5000, at most 30000).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Consistency {
    /// Wait until the view reflects this log position (read your writes: the
    /// `last_position` an append returned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_position: Option<u64>,
    /// How long to wait for `min_position`, in milliseconds: at most 30000 (default 5000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScanParams {
    /// Only keys starting with this (default: every key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Only keys after this one (the `next` of the previous page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Most entries to return: 1 to 1000 (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    // Not `#[serde(flatten)]`ed from `Consistency`: flattening loses the query string's numbers.
    /// Wait until the view reflects this log position (read your writes: the
    /// `last_position` an append returned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_position: Option<u64>,
    /// How long to wait for `min_position`, in milliseconds: at most 30000 (default 5000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A page of a view scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScanPage {
    /// Entries in key order.
    pub items: Vec<Entry>,
    /// The `after` of the next page, or null at the end.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// A view entry: `value` when it is JSON, `value_base64` for any other bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Entry {
    Json {
        key: String,
        /// The value, as the projector wrote it.
        value: Value,
    },
    Bytes {
        key: String,
        /// The value's bytes, base64 (standard alphabet, padded).
        value_base64: String,
    },
}

impl Entry {
    /// The entry's key.
    pub fn key(&self) -> &str {
        match self {
            Entry::Json { key, .. } | Entry::Bytes { key, .. } => key,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangeParams {
    /// Only changes of keys starting with this (default: every key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Resume after this event id, `<incarnation>-<generation>-<position>` (for clients that
    /// cannot send the `Last-Event-ID` header; the header wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
}
