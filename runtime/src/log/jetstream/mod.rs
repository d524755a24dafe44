//! NATS JetStream as the store behind the event log (issue 14, in progress): the wire protocol
//! that async-nats has no helper for ([`protocol`]), checked against a real nats-server. The
//! [`LogStore`](super::LogStore) over it comes next.

pub mod protocol;
