//! `prism verify`: a from-scratch replay compared with the live view, by digest, naming the
//! keys that differ.

use crate::store::{StoreError, ViewSnapshot};
use std::collections::BTreeMap;

/// The outcome of [`Registry::verify`](super::Registry::verify).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub projector: String,
    pub module: String,
    pub generation: u64,
    /// The position both views reflect.
    pub checkpoint: u64,
    /// Whether the live view equals the replay.
    pub identical: bool,
    pub live: ViewDigest,
    pub replay: ViewDigest,
    /// The first few keys whose values differ (`null` where a side lacks the key).
    pub differences: Vec<Difference>,
    /// How long the replay took.
    pub replay_ms: f64,
}

/// A view's size and content digest (sha256 over its entries in key order).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ViewDigest {
    pub entries: u64,
    pub sha256: String,
}

/// One key on which two views disagree.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Difference {
    pub key: String,
    pub live: Option<String>,
    pub replay: Option<String>,
}

/// How many differences a verification lists at most.
const MAX_DIFFERENCES: usize = 10;

fn digest(view: &ViewSnapshot) -> Result<ViewDigest, StoreError> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut entries = 0;
    view.for_each(|key, value| {
        entries += 1;
        hasher.update((key.len() as u64).to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value);
    })?;
    Ok(ViewDigest {
        entries,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Digests two views and, when they differ, lists the first keys that do.
pub(super) fn compare(
    live: &ViewSnapshot,
    replay: &ViewSnapshot,
) -> Result<(ViewDigest, ViewDigest, Vec<Difference>), StoreError> {
    let (live_digest, replay_digest) = (digest(live)?, digest(replay)?);
    if live_digest == replay_digest {
        return Ok((live_digest, replay_digest, Vec::new()));
    }
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut replayed = BTreeMap::new();
    replay.for_each(|key, value| {
        replayed.insert(key.to_string(), text(value));
    })?;
    let mut differences = Vec::new();
    live.for_each(|key, value| {
        let live_value = text(value);
        match replayed.remove(key) {
            Some(replay_value) if replay_value == live_value => {}
            replay_value => differences.push(Difference {
                key: key.to_string(),
                live: Some(live_value),
                replay: replay_value,
            }),
        }
    })?;
    differences.extend(replayed.into_iter().map(|(key, value)| Difference {
        key,
        live: None,
        replay: Some(value),
    }));
    differences.sort_by(|a, b| a.key.cmp(&b.key));
    differences.truncate(MAX_DIFFERENCES);
    Ok((live_digest, replay_digest, differences))
}
