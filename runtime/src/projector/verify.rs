//! `prism verify`: a from-scratch replay compared with the live view, by digest, naming the
//! keys that differ.

use crate::store::{StoreError, ViewSnapshot};
use prism_client::wire::{Difference, ViewDigest};
use std::collections::BTreeMap;

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
