//! NATS JetStream as the store behind the event log (issue 14, in progress): the wire protocol
//! that async-nats has no helper for ([`protocol`]), checked against a real nats-server. The
//! store over it, [`JetStreamLog`], is in progress. [`copy_log`] copies a log into it at the
//! same positions (`prism log migrate`).

mod append;
mod claims;
mod copy;
pub mod message;
mod options;
pub mod protocol;
mod readahead;
mod store;

pub use copy::{BATCH_BYTES, BATCH_EVENTS, Copied, CopyError, copy_log};
pub use options::{JetStreamOptions, NatsSecurity, masked};
pub use store::JetStreamLog;
