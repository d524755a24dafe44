//! Nodes an operator drained (`prism cluster drain NODE`): rendezvous hashing gives them no
//! projector, so their owners hand each one over (with its snapshots) to the others, while the
//! drained node stays up and answers through forwarding. A drain is kept in the KV bucket
//! `PRISM_DRAINED` until it is undone (`prism cluster undrain NODE`): a drained node that
//! restarts stays drained. Every node follows the bucket through a watch.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use parking_lot::RwLock;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The drained nodes' bucket.
pub const BUCKET: &str = "PRISM_DRAINED";

/// The drained nodes, as this node follows them.
#[derive(Clone)]
pub struct Drains {
    bucket: kv::Store,
    drained: Arc<RwLock<BTreeSet<String>>>,
}

impl Drains {
    /// Opens the bucket (creating it, replicated `replicas` times, when missing) and reads
    /// which nodes are drained now.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Drains> {
        let config = kv::Config {
            bucket: BUCKET.into(),
            history: 1,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let bucket = crate::log::jetstream::protocol::kv_bucket(js, config)
            .await
            .context("opening the drained nodes' bucket")?;
        let drained = super::live_entries(&bucket, "drained nodes")
            .await?
            .into_keys()
            .collect();
        Ok(Drains {
            bucket,
            drained: Arc::new(RwLock::new(drained)),
        })
    }

    /// The drained nodes.
    pub fn drained(&self) -> BTreeSet<String> {
        self.drained.read().clone()
    }

    /// Drains `node` (known to the cluster or not yet).
    pub async fn drain(&self, node: &str) -> Result<()> {
        self.bucket
            .put(node, bytes::Bytes::from_static(b"drained"))
            .await
            .with_context(|| format!("draining {node}"))?;
        self.drained.write().insert(node.to_string());
        Ok(())
    }

    /// Undoes the drain of `node`.
    pub async fn undrain(&self, node: &str) -> Result<()> {
        self.bucket
            .delete(node)
            .await
            .with_context(|| format!("undraining {node}"))?;
        self.drained.write().remove(node);
        Ok(())
    }

    /// Follows the bucket until aborted (watched again a second after a watch fails), waking
    /// `changed` at each drain or undrain.
    pub async fn follow(self, changed: Arc<tokio::sync::Notify>) {
        loop {
            match self.bucket.watch_with_history(">").await {
                Ok(mut entries) => {
                    while let Some(Ok(entry)) = entries.next().await {
                        let drained = entry.operation == kv::Operation::Put;
                        let mut set = self.drained.write();
                        let changed_now = match drained {
                            true => set.insert(entry.key),
                            false => set.remove(&entry.key),
                        };
                        if changed_now {
                            changed.notify_one();
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "watching the drained nodes"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The nodes rendezvous hashing may give projectors to: the live ones not drained (all the
/// live ones when every one is drained: projectors are never left without an owner).
pub fn eligible<'a>(
    live: impl IntoIterator<Item = &'a String> + Clone,
    drained: &BTreeSet<String>,
) -> Vec<&'a str> {
    let undrained: Vec<&str> = live
        .clone()
        .into_iter()
        .filter(|n| !drained.contains(*n))
        .map(String::as_str)
        .collect();
    match undrained.is_empty() {
        true => live.into_iter().map(String::as_str).collect(),
        false => undrained,
    }
}
