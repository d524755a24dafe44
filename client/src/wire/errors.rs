//! Error bodies.

use super::Fault;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error answer: `{"error": "..."}`, sometimes with details (see
/// [`VersionConflict`], [`NotReached`] and [`ReplayFaulted`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// 409 of an append whose `expected_version` did not hold; nothing was appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionConflict {
    pub error: String,
    /// The version the request expected.
    pub expected_version: u64,
    /// The stream's actual version.
    pub actual_version: u64,
}

/// 504 of a query whose `min_position` the view did not reach within `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotReached {
    pub error: String,
    /// The position the view is at.
    pub checkpoint: u64,
    /// The position the query waited for.
    pub min_position: u64,
}

/// 422 of a verification whose replay faulted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplayFaulted {
    pub error: String,
    /// Where and why the replay faulted.
    pub fault: Fault,
}
