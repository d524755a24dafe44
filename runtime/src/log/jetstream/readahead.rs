//! Reading the log ahead of a runner: one batch direct get at a time waits a round trip per
//! thousand events, so when a read comes back full (the reader is behind the head) the reads
//! of the next batches start at once, and the reader's next calls find them done or under way.
//! Positions have no gaps (the stream denies deletes), so the next batches start where a full
//! one ends; a guess that misses (a batch cut short by its byte limit) is simply not used.

use super::protocol::{self, Stored};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Messages one read asks for.
pub const BATCH: usize = 1000;
/// Batches read ahead of a full one.
const DEPTH: u64 = 3;
/// Reads ahead kept at most (several runners read at once), the oldest dropped first.
const MAX_PENDING: usize = 48;

type Read = JoinHandle<anyhow::Result<Vec<Stored>>>;

#[derive(Default)]
pub struct ReadAhead {
    /// Reads under way or done, by their first position.
    pending: parking_lot::Mutex<BTreeMap<u64, Read>>,
}

/// Where a read goes.
pub struct Source<'a> {
    pub runtime: &'a Handle,
    pub client: &'a async_nats::Client,
    pub timeout: Duration,
    /// The head as this node knows it: a replica that answers must hold at least the
    /// messages up to it (or up to the read's first position, when that is lower), so a
    /// short answer means the reader is at the head, not that a replica is behind.
    pub head: u64,
}

fn start(source: &Source, from: u64, max: usize, max_bytes: usize) -> Read {
    let (client, timeout) = (source.client.clone(), source.timeout);
    let min_last = source.head.min(from);
    source.runtime.spawn(async move {
        protocol::direct_get_batch_after(&client, from, None, max, max_bytes, min_last, timeout)
            .await
    })
}

impl ReadAhead {
    /// Up to `max` messages from `from` on (up to `until`), at most about `max_bytes`.
    pub fn read(
        &self,
        source: &Source,
        from: u64,
        until: u64,
        max: usize,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<Stored>> {
        let early = (max == BATCH)
            .then(|| self.pending.lock().remove(&from))
            .flatten();
        let read = early.unwrap_or_else(|| start(source, from, max, max_bytes));
        let mut got = super::store::wait(source.runtime, read)??;
        got.retain(|m| m.sequence <= until);
        if got.len() == BATCH {
            let mut pending = self.pending.lock();
            for k in 1..=DEPTH {
                let next = from + k * BATCH as u64;
                if next > until {
                    break;
                }
                pending
                    .entry(next)
                    .or_insert_with(|| start(source, next, BATCH, max_bytes));
            }
            while pending.len() > MAX_PENDING {
                if let Some((_, stale)) = pending.pop_first() {
                    stale.abort();
                }
            }
        }
        Ok(got)
    }
}
