//! NATS JetStream as the store behind the event log: [`JetStreamLog`] (appends in `append`,
//! idempotency in `claims`, reads ahead in `readahead`), over the wire protocol async-nats has
//! no helper for ([`protocol`]) and one message per event ([`message`]); [`copy_log`] copies
//! an embedded log into it at the same positions (`prism log migrate`).

mod append;
mod claims;
mod copy;
mod index;
pub mod message;
mod options;
pub mod protocol;
mod readahead;
mod store;

pub use copy::{BATCH_BYTES, BATCH_EVENTS, Copied, CopyError, copy_log};
pub use options::{JetStreamOptions, NatsSecurity, masked};
pub use store::JetStreamLog;
