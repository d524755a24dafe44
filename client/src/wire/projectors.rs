//! `/projectors`: deploys, the lifecycle, dead letters, module logs, verification, modules.

use super::{ErrorPolicy, Projector};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// How a deploy applies to a projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeployMode {
    /// A new projector, starting from the beginning of the log.
    Created,
    /// The new code takes over between two batches and continues from the current checkpoint
    /// on the existing view, on trial until it has applied one batch. The default when the
    /// view schema version is unchanged.
    Continue,
    /// A new generation rebuilds a fresh view from the start of the log in the background;
    /// queries switch to it when it has caught up. The default when the schema changed.
    Rebuild,
}

/// The deploy modes a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModeChoice {
    Continue,
    Rebuild,
}

impl From<ModeChoice> for DeployMode {
    fn from(choice: ModeChoice) -> Self {
        match choice {
            ModeChoice::Continue => DeployMode::Continue,
            ModeChoice::Rebuild => DeployMode::Rebuild,
        }
    }
}

/// Where a module's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CompileSource {
    /// Compiled now.
    Compiled,
    /// Already loaded in this process.
    Memory,
    /// Loaded from the on-disk cache of compiled artifacts.
    DiskCache,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployParams {
    /// Deploy the stored module with this sha256 instead of the body (a rollback; see
    /// `GET /modules`). The body must then be empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// A new configuration string passed to the module's `init` (default: keep the current
    /// one; empty for a new projector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// `continue` (the new code goes on from the checkpoint on the same view) or `rebuild` (a
    /// fresh view is rebuilt in the background). Default: `continue` when the view schema
    /// version is unchanged, `rebuild` when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeChoice>,
    /// What to do with an event the module fails on: `stop` (fault) or `skip` (dead-letter it
    /// and go on). Default: keep the current policy (`stop` for a new projector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_error: Option<ErrorPolicy>,
}

/// The result of a deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployed {
    pub name: String,
    /// The module's sha256.
    pub module: String,
    /// The view schema version the module declares.
    pub schema_version: u32,
    pub mode: DeployMode,
    /// The generation the deploy runs in (a new one for a rebuild).
    pub generation: u64,
    /// Where the compiled code came from.
    pub compile: CompileSource,
    /// How long validation and compilation took, in milliseconds.
    pub compile_ms: f64,
}

/// The answer to a lifecycle action: the projector's status, or that it is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LifecycleReply {
    Projector(Box<Projector>),
    Deleted(DeletedReply),
}

/// A deleted projector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeletedReply {
    pub name: String,
    /// Always true.
    pub deleted: bool,
}

/// The stored modules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Modules {
    /// Their sha256 hashes.
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Only dead letters after this log position (the last one of the previous page).
    #[serde(default)]
    #[param(required = false)]
    pub after: u64,
    /// Most dead letters to return: 1 to 1000 (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// An event the projector failed on and skipped (error policy `skip`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    /// The event's position in the log.
    pub position: u64,
    pub stream: String,
    pub event_type: String,
    /// The error or trap message.
    pub error: String,
    /// The module that failed on it.
    pub module: String,
}

/// A page of dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    /// In log order.
    pub dead_letters: Vec<DeadLetter>,
}

/// A discarded dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Discarded {
    /// Its position.
    pub discarded: u64,
}

/// A dead letter applied again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Retried {
    /// Its position.
    pub retried: u64,
    /// Always true: it applied, and is no longer a dead letter.
    pub applied: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Only lines after this `seq` (the last one of the previous page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Most lines to return: 1 to 1000 (default 100); the newest ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One line a projector wrote with `host.log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Increases by one per line kept, per projector (for `?after=`).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The module (sha256) that wrote it.
    pub module: String,
    pub message: String,
}

/// A projector's log lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLines {
    /// Oldest first.
    pub lines: Vec<LogLine>,
}

/// The outcome of a verification: a from-scratch replay compared with the live view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    pub projector: String,
    pub module: String,
    pub generation: u64,
    /// The position both views reflect.
    pub checkpoint: u64,
    /// Whether the live view equals the replay.
    pub identical: bool,
    pub live: ViewDigest,
    pub replay: ViewDigest,
    /// The first few keys whose values differ.
    pub differences: Vec<Difference>,
    /// How long the replay took, in milliseconds.
    pub replay_ms: f64,
}

/// A view's size and content digest (sha256 over its entries in key order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ViewDigest {
    pub entries: u64,
    pub sha256: String,
}

/// One key on which the two views disagree (`null` where a side lacks the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Difference {
    pub key: String,
    #[schema(required = true)]
    pub live: Option<String>,
    #[schema(required = true)]
    pub replay: Option<String>,
}
