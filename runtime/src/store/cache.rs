//! The catch-up cache: a projector's view writes kept in host memory across batches while it is
//! behind the log, and committed together — sorted, with the checkpoint they bring the view to —
//! when the process's budget fills, when an interval passes, or when the projector catches up.
//!
//! It is the record cache and commit interval that Kafka Streams puts in front of RocksDB: a
//! rebuild or a catch-up writes each hot key once per flush instead of once per batch, and
//! redb gets few large sorted transactions instead of many small random ones. Reads during a
//! batch see the batch's own writes, then this cache, then the committed view
//! ([`BatchView`](super::BatchView)); queries keep reading the last committed snapshot.
//!
//! A crash loses only what was not flushed: the view file still holds an older view with its
//! matching checkpoint, and the projector applies the events after it again.

use rustc_hash::FxBuildHasher;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How many bytes of cached writes the projectors of one process hold at most, by default.
pub const CACHE_BYTES: usize = 256 << 20;

/// How long cached writes wait at most before they are committed, by default: well within a
/// `min_position` query's wait (5 s by default), for a projector that keeps pace a full batch
/// or more behind a steady stream of appends and so holds its writes.
pub const CACHE_INTERVAL: Duration = Duration::from_secs(1);

/// What an entry costs besides its key and value bytes: the map's slot (key and value
/// headers, control byte and spare capacity) and the two allocations' headers.
const ENTRY_OVERHEAD: usize = 112;

/// The cache's settings, shared by every projector of a process: one budget of bytes they
/// draw on together.
#[derive(Debug)]
pub struct CacheBudget {
    limit: usize,
    interval: Duration,
    used: AtomicUsize,
}

impl CacheBudget {
    /// A budget of `limit` bytes (0 turns the cache off: every batch commits), whose writes
    /// wait at most `interval`.
    pub fn new(limit: usize, interval: Duration) -> Arc<CacheBudget> {
        Arc::new(CacheBudget {
            limit,
            interval,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held by every cache drawing on this budget now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the cache may hold writes at all.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }
}

impl Default for CacheBudget {
    fn default() -> Self {
        CacheBudget {
            limit: CACHE_BYTES,
            interval: CACHE_INTERVAL,
            used: AtomicUsize::new(0),
        }
    }
}

/// One key's cached write: its new value, or `None` for a deletion.
pub type Write = (String, Option<Vec<u8>>);

/// One projector's writes not yet committed, and the position they bring the view to.
pub struct WriteBack {
    entries: HashMap<String, Option<Vec<u8>>, FxBuildHasher>,
    bytes: usize,
    budget: Arc<CacheBudget>,
    /// The position of the last event whose writes are held (meaningful when not empty).
    position: u64,
    /// When the oldest held write was taken.
    since: Option<Instant>,
}

impl WriteBack {
    /// An empty cache drawing on `budget`.
    pub fn new(budget: Arc<CacheBudget>) -> WriteBack {
        WriteBack {
            entries: HashMap::default(),
            bytes: 0,
            budget,
            position: 0,
            since: None,
        }
    }

    /// Whether no write is held (nothing to commit).
    pub fn is_empty(&self) -> bool {
        self.since.is_none()
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The position the held writes bring the view to.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The held write of `key`: `Some(None)` is a deletion, `None` means not held.
    pub fn get(&self, key: &str) -> Option<Option<&[u8]>> {
        self.entries.get(key).map(Option::as_deref)
    }

    /// Takes a batch's writes (which win over the held ones), up to `position`.
    pub fn absorb(&mut self, writes: impl IntoIterator<Item = Write>, position: u64) {
        let mut added = 0isize;
        for (key, value) in writes {
            added += entry_size(&key, &value) as isize;
            if let Some(old) = self.entries.get_mut(key.as_str()) {
                added -= entry_size(&key, old) as isize;
                *old = value;
            } else {
                self.entries.insert(key, value);
            }
        }
        let bytes = (self.bytes as isize + added).max(0) as usize;
        self.account(bytes);
        self.position = position;
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether the held writes are due: the budget is full or the interval has passed.
    pub fn due(&self) -> bool {
        match self.since {
            None => false,
            Some(since) => {
                self.budget.used() > self.budget.limit || since.elapsed() >= self.budget.interval
            }
        }
    }

    /// Whether this cache may hold writes.
    pub fn enabled(&self) -> bool {
        self.budget.enabled()
    }

    /// Every held write in key order, leaving the cache empty.
    pub fn drain_sorted(&mut self) -> Vec<Write> {
        // Sorted by the keys' first 16 bytes held inline, then the whole keys: most
        // comparisons then never reach the keys on the heap (a sort of a million keys was
        // bound by those cache misses).
        let mut keyed: Vec<(u128, Write)> = self
            .entries
            .drain()
            .map(|write| (prefix(&write.0), write))
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.0.cmp(&b.1.0)));
        let writes: Vec<Write> = keyed.into_iter().map(|(_, write)| write).collect();
        // Give the map's memory back: a cache that held a rebuild's millions of keys should not
        // keep their slots while live.
        self.entries.shrink_to(0);
        self.account(0);
        self.since = None;
        writes
    }

    /// The held writes whose keys lie in `range`, in key order (for a scan).
    pub fn sorted_in(&self, within: impl Fn(&str) -> bool) -> Vec<(&str, Option<&[u8]>)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .filter(|(key, _)| within(key))
            .map(|(key, value)| (key.as_str(), value.as_deref()))
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out
    }

    fn account(&mut self, bytes: usize) {
        let used = &self.budget.used;
        if bytes >= self.bytes {
            used.fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            used.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }
}

/// The first 16 bytes of `key`, big-endian, zero-padded: ordered as the keys are, up to ties.
fn prefix(key: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let len = key.len().min(16);
    bytes[..len].copy_from_slice(&key.as_bytes()[..len]);
    u128::from_be_bytes(bytes)
}

/// What one held entry costs against the budget.
fn entry_size(key: &str, value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

impl Drop for WriteBack {
    fn drop(&mut self) {
        self.account(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, value: Option<&str>) -> Write {
        (key.to_string(), value.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn later_writes_win_and_drain_in_key_order() {
        let budget = CacheBudget::new(1 << 20, Duration::from_secs(60));
        let mut cache = WriteBack::new(budget.clone());
        assert!(cache.is_empty());
        cache.absorb([write("b", Some("1")), write("a", Some("1"))], 4);
        cache.absorb([write("b", None), write("c", Some("3"))], 9);
        assert_eq!(cache.get("a"), Some(Some(&b"1"[..])));
        assert_eq!(cache.get("b"), Some(None));
        assert_eq!(cache.get("z"), None);
        assert_eq!(cache.position(), 9);
        assert_eq!(budget.used(), 3 * ENTRY_OVERHEAD + 3 + 2);
        let drained = cache.drain_sorted();
        assert_eq!(
            drained,
            [
                write("a", Some("1")),
                write("b", None),
                write("c", Some("3"))
            ]
        );
        assert!(cache.is_empty());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn drained_keys_are_in_byte_order_whatever_they_share() {
        let budget = CacheBudget::new(1 << 30, Duration::from_secs(60));
        let mut cache = WriteBack::new(budget);
        let mut keys: Vec<String> = Vec::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..2000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key = match i % 5 {
                0 => format!("customer/c-{}", seed % 100_000),
                1 => format!("order/o-{}", seed % 1000),
                2 => "a-prefix-longer-than-16-bytes/".repeat(1 + (seed % 3) as usize),
                3 => format!("ab{}", "\0".repeat((seed % 4) as usize)),
                _ => format!("{}", seed % 50),
            };
            keys.push(key);
        }
        cache.absorb(keys.iter().map(|k| (k.clone(), None)), 1);
        let drained: Vec<String> = cache.drain_sorted().into_iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(drained, keys);
    }

    #[test]
    fn caches_share_one_budget_and_give_it_back_when_dropped() {
        let budget = CacheBudget::new(2 * ENTRY_OVERHEAD + 10, Duration::from_secs(60));
        let mut one = WriteBack::new(budget.clone());
        let mut two = WriteBack::new(budget.clone());
        one.absorb([write("k", Some("12345"))], 1);
        assert!(!one.due());
        two.absorb([write("k", Some("123456"))], 1);
        // Together they pass the budget: both are due.
        assert!(one.due() && two.due());
        drop(two);
        assert!(!one.due());
        assert_eq!(budget.used(), ENTRY_OVERHEAD + 6);
    }

    #[test]
    fn writes_are_due_after_the_interval() {
        let budget = CacheBudget::new(1 << 20, Duration::from_millis(20));
        let mut cache = WriteBack::new(budget);
        cache.absorb([write("k", Some("v"))], 1);
        assert!(!cache.due());
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.due());
    }
}
