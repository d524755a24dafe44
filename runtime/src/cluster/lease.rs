//! Ownership leases: a projector is owned by the node holding its entry in the KV bucket
//! `PRISM_LEASES`, whose messages the servers drop `ttl` after they were written (the
//! bucket's `max_age`): a lease lives as long as its holder renews it.
//!
//! Fencing: a holder counts its lease valid only until `ttl - margin` after it *sent* the
//! request that last wrote it (a monotonic clock). The servers keep the entry at least `ttl`
//! after they stored that write, which came later, so the holder stops acting as owner before
//! any other node can take the lease; the margin covers the two clocks' rates.
//!
//! Taking a lease is `create` (it fails while another node's entry lives), renewing it is an
//! `update` at the revision last written (it fails once the lease expired and was taken),
//! releasing it a delete at that revision.

use anyhow::{Context, Result};
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// The leases' bucket.
pub const BUCKET: &str = "PRISM_LEASES";

/// A lease this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The entry's revision: what the next renewal expects (and what forwarded requests carry).
    pub revision: u64,
    /// When the request that wrote it was sent.
    pub written: Instant,
}

/// The leases of one node.
#[derive(Clone)]
pub struct Leases {
    bucket: kv::Store,
    node: String,
    ttl: Duration,
    margin: Duration,
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The lease expired and another node took it, or it was released: this node is no longer
    /// the owner.
    #[error("the lease was lost")]
    Lost,
    /// The servers did not answer: the lease may still be held (until it is no longer valid).
    #[error("the lease could not be renewed: {0}")]
    Unavailable(String),
}

impl Leases {
    /// The bucket (to watch it).
    pub fn bucket(&self) -> &kv::Store {
        &self.bucket
    }

    /// The leases of `node`, creating the bucket (replicated `replicas` times, entries living
    /// `ttl`) when missing.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        node: &str,
        replicas: usize,
        ttl: Duration,
        margin: Duration,
    ) -> Result<Leases> {
        anyhow::ensure!(
            margin < ttl,
            "the lease margin must be shorter than its TTL"
        );
        let bucket = super::ttl_bucket(js, BUCKET, "leases", replicas, ttl).await?;
        Ok(Leases {
            bucket,
            node: node.to_string(),
            ttl,
            margin,
        })
    }

    /// Whether `lease` still lets this node act as owner.
    pub fn valid(&self, lease: &Lease) -> bool {
        lease.written.elapsed() + self.margin < self.ttl
    }

    /// Takes the lease of `name` if no node holds it: `None` when another does.
    pub async fn acquire(&self, name: &str) -> Result<Option<Lease>> {
        let written = Instant::now();
        match self
            .bucket
            .create(name, Bytes::from(self.node.clone()))
            .await
        {
            Ok(revision) => Ok(Some(Lease { revision, written })),
            // This node's own entry: an earlier attempt whose answer was lost, or this node
            // before a restart. Renewed, it counts from now.
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                match self.holder(name).await? {
                    Some((holder, revision)) if holder == self.node => {
                        let lease = Lease { revision, written };
                        match self.renew(name, &lease).await {
                            Ok(lease) => Ok(Some(lease)),
                            Err(RenewError::Lost) => Ok(None),
                            Err(RenewError::Unavailable(why)) => {
                                Err(anyhow::anyhow!("taking the lease of {name}: {why}"))
                            }
                        }
                    }
                    _ => Ok(None),
                }
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("taking the lease of {name}"))),
        }
    }

    /// Renews `lease` of `name`.
    pub async fn renew(&self, name: &str, lease: &Lease) -> Result<Lease, RenewError> {
        let written = Instant::now();
        match self
            .bucket
            .update(name, Bytes::from(self.node.clone()), lease.revision)
            .await
        {
            Ok(revision) => Ok(Lease { revision, written }),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(RenewError::Lost),
            Err(e) => Err(RenewError::Unavailable(e.to_string())),
        }
    }

    /// Gives `lease` of `name` up (another node may take it at once).
    pub async fn release(&self, name: &str, lease: &Lease) -> Result<()> {
        self.bucket
            .delete_expect_revision(name, Some(lease.revision))
            .await
            .with_context(|| format!("releasing the lease of {name}"))
    }

    /// The node holding the lease of `name`, with its revision, if any does.
    pub async fn holder(&self, name: &str) -> Result<Option<(String, u64)>> {
        let entry = self
            .bucket
            .entry(name)
            .await
            .with_context(|| format!("reading the lease of {name}"))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.revision)))
    }

    /// Every lease held now, by projector: its holder, revision and age (since its last
    /// write, by the servers' clock).
    pub async fn all(&self) -> Result<std::collections::BTreeMap<String, HeldLease>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        let entries = super::live_entries(&self.bucket, "leases").await?;
        Ok(entries
            .into_iter()
            .map(|(name, entry)| {
                let age = (now - entry.created.unix_timestamp_nanos()).max(0) as u64;
                let lease = HeldLease {
                    holder: String::from_utf8_lossy(&entry.value).into_owned(),
                    revision: entry.revision,
                    age: Duration::from_nanos(age),
                };
                (name, lease)
            })
            .collect())
    }
}

/// A lease as the bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub holder: String,
    pub revision: u64,
    pub age: Duration,
}
