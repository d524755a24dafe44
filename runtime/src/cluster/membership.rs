//! Which Prism nodes are alive: each node's entry in the KV bucket `PRISM_NODES` (its id, the
//! URL other nodes reach it at), written again every `ttl / 6` and dropped by the servers `ttl`
//! after its last write (the bucket's `max_age`). A node that stops writing leaves the set
//! within `ttl`.

use anyhow::{Context, Result};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The nodes' bucket.
pub const BUCKET: &str = "PRISM_NODES";

/// What a node tells the others of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Where other nodes forward requests to it (`http://host:port`).
    pub url: String,
}

/// The membership of one node.
#[derive(Clone)]
pub struct Membership {
    bucket: kv::Store,
    id: String,
    node: Node,
}

impl Membership {
    /// The bucket (to watch it).
    pub fn bucket(&self) -> &kv::Store {
        &self.bucket
    }

    /// The membership of node `id`, creating the bucket (replicated `replicas` times, entries
    /// living `ttl`) when missing. The node is not announced yet ([`Membership::join`]).
    pub async fn open(
        js: &async_nats::jetstream::Context,
        id: &str,
        node: Node,
        replicas: usize,
        ttl: Duration,
    ) -> Result<Membership> {
        let bucket = super::ttl_bucket(js, BUCKET, "nodes", replicas, ttl).await?;
        Ok(Membership {
            bucket,
            id: id.to_string(),
            node,
        })
    }

    /// Announces the node for the first time: call it once the node serves what other nodes
    /// forward to it. A bucket another node created a moment ago may not take writes yet (its
    /// replicas still electing a leader: "no stream found"): asked again for up to 30 s.
    pub async fn join(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = self.announce().await {
            if std::time::Instant::now() >= deadline {
                return Err(e);
            }
            tracing::debug!(error = %e, "announcing this node; again shortly");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// What this node announces.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Writes this node's entry again (every `ttl / 6`, or it leaves the set).
    pub async fn announce(&self) -> Result<()> {
        let value = serde_json::to_vec(&self.node)?;
        self.bucket
            .put(&self.id, value.into())
            .await
            .context("announcing this node")?;
        Ok(())
    }

    /// Leaves the set at once (a node stopping).
    pub async fn leave(&self) -> Result<()> {
        self.bucket
            .delete(&self.id)
            .await
            .context("leaving the nodes' set")
    }

    /// The live nodes, by id.
    pub async fn live(&self) -> Result<BTreeMap<String, Node>> {
        let mut out = BTreeMap::new();
        for (key, entry) in super::live_entries(&self.bucket, "nodes").await? {
            match serde_json::from_slice(&entry.value) {
                Ok(node) => {
                    out.insert(key, node);
                }
                Err(e) => tracing::warn!(node = %key, error = %e, "an unreadable node entry"),
            }
        }
        Ok(out)
    }
}
