//! Reading the log ahead of a runner: one batch direct get at a time waits a round trip per
//! thousand events, so when a read comes back full (the reader is behind the head) the reads
//! of the next batches start at once, and the reader's next calls find them done or under way.
//! Positions have no gaps (the stream denies deletes), so the next batches start where a full
//! one ends; a guess that misses (a batch cut short by its byte limit) is simply not used.
//! Reads ahead never start beyond the head this node knows: an empty answer kept until the
//! log has grown past it would tell a replay (a verify, a rebuild) it had reached the head.

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
    /// The head as this node knows it: a read from at most the head that comes back empty
    /// was answered by a replica behind and fails (see [`protocol::direct_get_batch_after`]);
    /// a short answer only means "ask again".
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

/// The answer of `read`; one that failed (a replica behind answered, or none did in time) is
/// read again, fresh, for up to the read timeout: a read ahead must not hand its reader a stale
/// failure, and a replica behind catches up in moments.
fn settle(
    source: &Source,
    read: Read,
    from: u64,
    max: usize,
    max_bytes: usize,
) -> anyhow::Result<Vec<Stored>> {
    let deadline = std::time::Instant::now() + source.timeout;
    match super::store::wait(source.runtime, read)? {
        Ok(got) => Ok(got),
        Err(mut e) => loop {
            if std::time::Instant::now() >= deadline {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(20));
            let again = start(source, from, max, max_bytes);
            match super::store::wait(source.runtime, again)? {
                Ok(got) => break Ok(got),
                Err(failed) => e = failed,
            }
        },
    }
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
        let mut got = match early {
            Some(read) => settle(source, read, from, max, max_bytes)?,
            None => Vec::new(),
        };
        // Read now: no read ahead, or one that found nothing (the log may have grown since it
        // was answered: it never starts beyond the head, but the head it knew may have been
        // late).
        if got.is_empty() {
            let read = start(source, from, max, max_bytes);
            got = settle(source, read, from, max, max_bytes)?;
        }
        got.retain(|m| m.sequence <= until);
        if got.len() == BATCH {
            let mut pending = self.pending.lock();
            for k in 1..=DEPTH {
                let next = from + k * BATCH as u64;
                // Beyond the head a read finds nothing, or less than will be there: an answer
                // kept for later would tell a reader it has caught up when it has not.
                if next > until || next > source.head {
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
