//! Every body and query string of Prism's HTTP API, shared by the server (which serializes them
//! and describes them in `/openapi.json`), the [`Client`](crate::Client), the CLI and the tests.
//! One declaration each: serde for the bytes, utoipa for the schema.

mod cluster;
mod errors;
mod projectors;
mod status;
mod streams;
mod views;

pub use cluster::{
    ClusterNode, ClusterStatus, Drain, ProjectorOwner, RestoredView, Snapshot, Snapshots,
};
pub use errors::{ErrorBody, NotReached, ReplayFaulted, VersionConflict};
pub use projectors::{
    CompileSource, DeadLetter, DeadLetterParams, DeadLetters, DeletedReply, DeployMode,
    DeployParams, Deployed, Difference, Discarded, LifecycleReply, LogLine, LogLines, LogParams,
    ModeChoice, Modules, Retried, Verification, ViewDigest,
};
pub use status::{
    ErrorPolicy, Fault, Health, Projector, ProjectorList, Readiness, ReadinessAnswer, ReadyOnly,
    RebuildProgress, State, Subscription, Unready, UnreadyProjector,
};
pub use streams::{
    AppendAllParams, AppendParams, Appended, AppendedAll, Event, ListParams, NewEvent, ReadParams,
    StreamEvent, StreamList, StreamPage, StreamVersion,
};
pub use views::{ChangeParams, Consistency, Entry, MAX_WAIT_MS, ScanPage, ScanParams};
