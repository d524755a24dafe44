//! A batch in progress over the catch-up cache and a committed snapshot, and the bounds of a
//! scan.

use super::{Entry, Overlay, StoreError, ViewSnapshot, WriteBack};
use itertools::{EitherOrBoth, Itertools};
use std::ops::Bound;

/// Where a scan starts: after `after` when it lies within the prefix's range, else at `prefix`.
pub(super) enum Start<'a> {
    Including(&'a str),
    Excluding(&'a str),
}

pub(super) fn scan_start<'a>(prefix: &'a str, after: Option<&'a str>) -> Start<'a> {
    match after {
        Some(after) if after >= prefix => Start::Excluding(after),
        _ => Start::Including(prefix),
    }
}

pub(super) fn bound<'a>(start: &Start<'a>) -> Bound<&'a str> {
    match *start {
        Start::Including(k) => Bound::Included(k),
        Start::Excluding(k) => Bound::Excluded(k),
    }
}

/// Which side of a merged scan the next entry comes from.
enum Take {
    Committed,
    Pending,
    PendingOverCommitted,
}

/// A batch in progress: reads see the batch's own writes, then the writes held in the
/// catch-up cache, then the committed snapshot.
pub struct BatchView {
    base: ViewSnapshot,
    cache: Option<WriteBack>,
    overlay: Overlay,
    scanned: bool,
}

impl BatchView {
    /// Starts a batch over `base`.
    pub fn new(base: ViewSnapshot) -> Self {
        BatchView {
            base,
            cache: None,
            overlay: Overlay::new(),
            scanned: false,
        }
    }

    /// Starts a batch over the writes held in `cache`, over `base`.
    pub fn with_cache(base: ViewSnapshot, cache: WriteBack) -> Self {
        BatchView {
            cache: Some(cache),
            ..BatchView::new(base)
        }
    }

    /// The value under `key`, as this batch sees it.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.overlay.get(key) {
            return Ok(value.clone());
        }
        if let Some(held) = self.cache.as_ref().and_then(|c| c.get(key)) {
            return Ok(held.map(<[u8]>::to_vec));
        }
        self.base.get(key)
    }

    /// Whether the batch scanned the view.
    pub fn scanned(&self) -> bool {
        self.scanned
    }

    /// Stores `value` under `key` (in the batch).
    pub fn put(&mut self, key: String, value: Vec<u8>) {
        self.overlay.insert(key, Some(value));
    }

    /// Deletes `key` (in the batch).
    pub fn delete(&mut self, key: String) {
        self.overlay.insert(key, None);
    }

    /// A scan of the view as this batch sees it: committed entries merged with the batch's
    /// writes, walked side by side so that no more than `limit` entries are ever built. `None`
    /// when the entries would pass `max_bytes` (keys and values).
    pub fn scan(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<Entry>>, StoreError> {
        self.scanned = true;
        let start = scan_start(prefix, after);
        let mut committed = self
            .base
            .view
            .range::<&str>((bound(&start), Bound::Unbounded))?
            .peekable();
        let batch = self
            .overlay
            .range::<str, _>((bound(&start), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_deref()));
        // The cache is a hash map: its entries in range are picked out and sorted (a cost per
        // scan that the runner pays once: it stops caching for a projector that scans).
        let held = match self.cache.as_ref().filter(|c| !c.is_empty()) {
            None => Vec::new(),
            Some(cache) => cache.sorted_in(|key| {
                key.starts_with(prefix)
                    && match start {
                        Start::Including(from) => key >= from,
                        Start::Excluding(after) => key > after,
                    }
            }),
        };
        // The batch's writes win over the cache's.
        let mut pending = batch
            .merge_join_by(held, |a, b| a.0.cmp(b.0))
            .map(|pair| match pair {
                EitherOrBoth::Left(write) | EitherOrBoth::Both(write, _) => write,
                EitherOrBoth::Right(write) => write,
            })
            .peekable();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < limit {
            // Which side holds the next key: the batch's write wins over a committed entry
            // with the same key (which is then passed over).
            let take = match (committed.peek(), pending.peek()) {
                (Some(Err(_)), _) => {
                    let error = committed.next().and_then(Result::err);
                    return Err(error.expect("peeked an error").into());
                }
                (Some(Ok((key, _))), pending_next) if key.value().starts_with(prefix) => {
                    match pending_next {
                        Some((p, _)) => match (*p).cmp(key.value()) {
                            std::cmp::Ordering::Less => Take::Pending,
                            std::cmp::Ordering::Equal => Take::PendingOverCommitted,
                            std::cmp::Ordering::Greater => Take::Committed,
                        },
                        None => Take::Committed,
                    }
                }
                (_, Some(_)) => Take::Pending,
                (_, None) => break,
            };
            let entry = match take {
                Take::Committed => {
                    let (key, value) = committed.next().expect("peeked")?;
                    Some((key.value().to_string(), value.value().to_vec()))
                }
                Take::Pending | Take::PendingOverCommitted => {
                    if matches!(take, Take::PendingOverCommitted) {
                        committed.next();
                    }
                    let (key, value) = pending.next().expect("peeked");
                    value.map(|v| (key.to_string(), v.to_vec()))
                }
            };
            if let Some((key, value)) = entry {
                bytes = bytes.saturating_add(key.len() + value.len());
                if bytes > max_bytes {
                    return Ok(None);
                }
                out.push((key, value));
            }
        }
        Ok(Some(out))
    }

    /// The batch's writes, to commit.
    pub fn into_overlay(self) -> Overlay {
        self.overlay
    }

    /// The batch's writes, and the cache it read through.
    pub fn into_parts(self) -> (Overlay, Option<WriteBack>) {
        (self.overlay, self.cache)
    }
}
