//! Wakes a node's loop as soon as something it acts on changes, instead of at its next tick: a
//! lease given up (a handover: the next owner takes it at once) and a node joining or leaving
//! the set (the owners hand over what rendezvous hashing gives the others now). The tick stays
//! the backstop: a watch can be cut off, and an entry expiring by the bucket's `max_age` sends
//! no message.

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Watches the `leases` and `nodes` buckets and wakes `loop_` on what matters, until aborted.
pub async fn nudge(leases: kv::Store, nodes: kv::Store, loop_: Arc<Notify>) {
    let leases = watch(leases, loop_.clone(), |entry, _| {
        entry.operation != Operation::Put
    });
    // Renewals write the same keys again and again: only a key not seen yet, or one deleted,
    // says a node joined or left.
    let nodes = watch(nodes, loop_, |entry, seen| match entry.operation {
        Operation::Put => seen.insert(entry.key.clone()),
        _ => {
            seen.remove(&entry.key);
            true
        }
    });
    tokio::join!(leases, nodes);
}

/// Watches every key of `bucket` (again after a second when the watch fails or ends), waking
/// `loop_` on each entry `matters` accepts.
async fn watch(
    bucket: kv::Store,
    loop_: Arc<Notify>,
    matters: impl Fn(&kv::Entry, &mut HashSet<String>) -> bool,
) {
    let mut seen = HashSet::new();
    loop {
        match bucket.watch_all().await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    match entry {
                        Ok(entry) if matters(&entry, &mut seen) => loop_.notify_one(),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "a watch of the cluster's buckets failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "watching the cluster's buckets"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
