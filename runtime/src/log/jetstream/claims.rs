//! Idempotency keys and event ids on the JetStream log: the same contract as the embedded log
//! ([`idempotency`](crate::log::idempotency)), kept in a KV bucket ([`BUCKET`]) whose age limit
//! is the idempotency window.
//!
//! Before its first publish, an append that can be retried *claims* its key (`k.<sha256>`) and
//! each event id (`e.<sha256>`) with a KV create, which only one writer can win. A claim names
//! the append's id (the `Prism-Append-Id` header on its first message), the request's digest,
//! and the first stream's last sequence when it was made: if the append ever landed, its first
//! message is on that stream's subject after that sequence. Whoever meets an existing claim for
//! the same request — a client retrying after a timeout, on this node or another — looks there
//! for the append id before appending, and publishes only with an expectation that the server
//! refuses if the append landed meanwhile: at most one copy, whatever the timing.
//!
//! Claims are write-once: nothing is written after the append (its result is found again on the
//! log), and a claim whose append was refused for good (a version conflict) is deleted, so the
//! key stays free as on the embedded log.

use crate::log::{AppendError, StreamAppend};
use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The KV bucket of claims.
pub const BUCKET: &str = "PRISM_APPENDS";

/// What a claim says of its append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The append's id: the `Prism-Append-Id` of its first message.
    pub append_id: String,
    /// sha256 of the request (hex): a different request under the same key is refused.
    pub digest: String,
    /// The first stream's last sequence when the claim was made.
    pub floor: u64,
    /// For an event id: the event's index in the append (0 for a key).
    #[serde(default)]
    pub index: u32,
}

/// Who holds the claims of an append.
pub enum Claimed {
    /// This append: nothing else used its key or ids. `names` are the KV keys it created, with
    /// their revisions, to release if the append is refused.
    Own(Vec<(String, u64)>),
    /// An earlier attempt at the same request, which may or may not have landed.
    Earlier(Claim),
}

/// Opens (or creates) the claims bucket, with `window` as its age limit.
pub async fn bucket(
    js: &jetstream::Context,
    replicas: usize,
    window: Duration,
) -> anyhow::Result<kv::Store> {
    let config = kv::Config {
        bucket: BUCKET.into(),
        description: "Prism: idempotency keys and event ids of appends".into(),
        history: 1,
        max_age: window,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    super::protocol::kv_bucket(js, config).await
}

fn name(prefix: &str, id: &str) -> String {
    format!("{prefix}.{}", hex::encode(Sha256::digest(id.as_bytes())))
}

/// The request's digest, as the embedded log computes it.
pub fn digest(parts: &[StreamAppend]) -> String {
    hex::encode(crate::log::idempotency::digest(parts))
}

/// Claims `key` (if any) and the event ids of `parts` for `claim`'s append; answers who holds
/// them, or a conflict when a different request used them.
pub async fn claim(
    bucket: &kv::Store,
    key: Option<&str>,
    parts: &[StreamAppend],
    claim: &Claim,
) -> Result<Claimed, AppendError> {
    let mut own = Vec::new();
    if let Some(key) = key {
        let name = name("k", key);
        match create(bucket, &name, claim).await? {
            Ok(revision) => own.push((name, revision)),
            Err(before) if before.append_id == claim.append_id => own.push((name, 0)),
            Err(before) if before.digest == claim.digest => return Ok(Claimed::Earlier(before)),
            Err(_) => {
                return Err(AppendError::Duplicate(format!(
                    "Idempotency-Key {key:?} was used for a different append; nothing was appended"
                )));
            }
        }
    }
    let events = parts.iter().map(|p| p.events.len()).sum::<usize>();
    let mut new_ids = 0;
    let mut earlier: Vec<(String, Claim)> = Vec::new();
    let mut index = 0u32;
    for part in parts {
        for event in &part.events {
            if let Some(id) = &event.id {
                let name = name("e", id);
                let mine = Claim {
                    index,
                    ..claim.clone()
                };
                let created = match create(bucket, &name, &mine).await {
                    Ok(created) => created,
                    Err(e) => {
                        // Nothing will be appended: what this append claimed is free again.
                        release(bucket, &own).await;
                        return Err(e);
                    }
                };
                match created {
                    Ok(revision) => {
                        own.push((name, revision));
                        new_ids += 1;
                    }
                    Err(before) if before.append_id == claim.append_id => own.push((name, 0)),
                    Err(before) => earlier.push((id.clone(), before)),
                }
            }
            index += 1;
        }
    }
    if earlier.is_empty() {
        return Ok(Claimed::Own(own));
    }
    // What this append claimed is released either way: a retry answers the earlier append's
    // result (and a key claimed for an append that is never published must not stay behind).
    release(bucket, &own).await;
    // A retry: every event has an id, all claimed by one earlier append of this same request,
    // each at its own index.
    let first = &earlier[0].1;
    let whole = new_ids == 0
        && earlier.len() == events
        && earlier.iter().enumerate().all(|(i, (_, c))| {
            c.append_id == first.append_id && c.digest == claim.digest && c.index == i as u32
        });
    if whole {
        return Ok(Claimed::Earlier(Claim {
            index: 0,
            ..first.clone()
        }));
    }
    Err(AppendError::Duplicate(
        crate::log::idempotency::ids_used_before(earlier.iter().map(|(id, _)| id.as_str())),
    ))
}

/// Creates `name` holding `claim`: its revision, or the claim already there.
async fn create(
    bucket: &kv::Store,
    name: &str,
    claim: &Claim,
) -> Result<Result<u64, Claim>, AppendError> {
    let value = serde_json::to_vec(claim).expect("a claim encodes");
    match bucket.create(name, value.into()).await {
        Ok(revision) => Ok(Ok(revision)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let entry = bucket
                .entry(name)
                .await
                .map_err(|e| {
                    AppendError::Unavailable(format!(
                        "the idempotency keys' bucket {BUCKET} did not answer ({e}); nothing \
                         was appended"
                    ))
                })?
                .filter(|e| e.operation == kv::Operation::Put)
                .ok_or_else(|| {
                    AppendError::Unavailable("a claim vanished while it was read".into())
                })?;
            serde_json::from_slice(&entry.value)
                .map(Err)
                .map_err(|e| AppendError::Storage(format!("an unreadable claim {name}: {e}")))
        }
        Err(e) => Err(AppendError::Unavailable(format!(
            "the idempotency keys' bucket {BUCKET} did not answer ({e}); nothing was appended"
        ))),
    }
}

/// Deletes the claims an append made, when it was refused for good (best effort: a claim left
/// behind only keeps its key or ids used until the window ends).
pub async fn release(bucket: &kv::Store, own: &[(String, u64)]) {
    for (name, revision) in own {
        let expect = (*revision > 0).then_some(*revision);
        if let Err(e) = bucket.delete_expect_revision(name, expect).await {
            tracing::warn!("could not release the claim {name}: {e}");
        }
    }
}

/// True when an append may be retried (and so must claim its key and ids).
pub fn retryable(key: Option<&str>, parts: &[StreamAppend]) -> bool {
    key.is_some()
        || parts
            .iter()
            .any(|p| p.events.iter().any(|e| e.id.is_some()))
}
