//! NATS JetStream as the store behind the event log (issue 14, in progress): the wire protocol
//! that async-nats has no helper for ([`protocol`]), checked against a real nats-server. The
//! store over it, [`JetStreamLog`], is in progress.

mod append;
mod claims;
pub mod message;
mod options;
pub mod protocol;
mod readahead;
mod store;

pub use options::{JetStreamOptions, NatsSecurity, masked};
pub use store::JetStreamLog;
