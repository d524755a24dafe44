//! A generation's feed of view changes, for `GET /projectors/{name}/changes`.
//!
//! After every commit the runner hands the batch's write overlay (each key written in the batch,
//! with its final value or `None` for a deletion) to the feed, keyed by the batch's checkpoint;
//! no copy is made. The feed keeps the most recent batches ([`RETAINED_CHANGES`] changes,
//! [`RETAINED_BYTES`] bytes) so a subscriber that reconnects with the last position it saw
//! continues exactly where it left off; one that asks for an older position is told to re-read.

use crate::store::Overlay;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;

/// Most changes kept for reconnecting subscribers.
pub const RETAINED_CHANGES: usize = 100_000;
/// Most key and value bytes kept for reconnecting subscribers.
pub const RETAINED_BYTES: usize = 32 << 20;

/// The changes one commit made, at the checkpoint it committed.
#[derive(Debug)]
pub struct ChangeBatch {
    pub position: u64,
    pub changes: Overlay,
    /// Key and value bytes, counted once for the retention limit.
    bytes: usize,
}

/// What a subscriber at a position gets.
#[derive(Debug)]
pub enum Since {
    /// The batches after the position (possibly none), oldest first.
    Changes(Vec<Arc<ChangeBatch>>),
    /// The position is older than what is kept (or not one this feed can vouch for); the
    /// subscriber must re-read the view. `checkpoint` is where the feed is now.
    Gone { checkpoint: u64 },
    /// The position is past the feed's checkpoint: from another generation or incarnation,
    /// or committed but not yet published (a reader of the view can be a moment ahead).
    Ahead { checkpoint: u64 },
    /// The generation stopped or was replaced.
    Closed,
}

/// One generation's recent changes.
pub struct ChangeFeed {
    state: Mutex<FeedState>,
    wake: watch::Sender<()>,
}

struct FeedState {
    batches: VecDeque<Arc<ChangeBatch>>,
    changes: usize,
    bytes: usize,
    /// Every change after this position is kept (or there was none).
    complete_after: u64,
    /// The last checkpoint published.
    checkpoint: u64,
    /// How many times the view changed outside the feed's order (see [`ChangeFeed::invalidate`]).
    invalidations: u64,
    closed: bool,
}

/// Key and value bytes of some changes.
fn change_bytes<'a>(changes: impl IntoIterator<Item = (&'a String, &'a Option<Vec<u8>>)>) -> usize {
    changes
        .into_iter()
        .map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len))
        .sum()
}

impl ChangeFeed {
    /// A feed for a generation starting at `checkpoint`.
    pub fn new(checkpoint: u64) -> ChangeFeed {
        ChangeFeed {
            state: Mutex::new(FeedState {
                batches: VecDeque::new(),
                changes: 0,
                bytes: 0,
                complete_after: checkpoint,
                checkpoint,
                invalidations: 0,
                closed: false,
            }),
            wake: watch::Sender::new(()),
        }
    }

    /// Records the changes committed at `position`.
    pub fn publish(&self, position: u64, changes: Overlay) {
        {
            let mut state = self.state.lock();
            state.checkpoint = position;
            if !changes.is_empty() {
                let bytes = change_bytes(&changes);
                state.changes += changes.len();
                state.bytes += bytes;
                state.batches.push_back(Arc::new(ChangeBatch {
                    position,
                    changes,
                    bytes,
                }));
                while state.changes > RETAINED_CHANGES || state.bytes > RETAINED_BYTES {
                    let Some(oldest) = state.batches.pop_front() else {
                        break;
                    };
                    state.changes -= oldest.changes.len();
                    state.bytes -= oldest.bytes;
                    state.complete_after = oldest.position;
                }
            }
        }
        self.wake.send_replace(());
    }

    /// Records the changes of a commit of held writes (in key order) at `position`. More than
    /// the feed keeps are not copied: subscribers from before `position` are told to re-read.
    pub fn publish_sorted(&self, position: u64, changes: Vec<crate::store::Write>) {
        let bytes = change_bytes(changes.iter().map(|(key, value)| (key, value)));
        if changes.len() <= RETAINED_CHANGES && bytes <= RETAINED_BYTES {
            return self.publish(position, changes.into_iter().collect());
        }
        drop(changes);
        {
            let mut state = self.state.lock();
            state.batches.clear();
            state.changes = 0;
            state.bytes = 0;
            state.complete_after = position;
            state.checkpoint = position;
        }
        self.wake.send_replace(());
    }

    /// Records that the view changed at an earlier position than the feed's (a dead-letter
    /// retry): every subscriber must re-read.
    pub fn invalidate(&self) {
        self.state.lock().invalidations += 1;
        self.wake.send_replace(());
    }

    /// How many times [`invalidate`](Self::invalidate) was called.
    pub fn invalidations(&self) -> u64 {
        self.state.lock().invalidations
    }

    /// Marks the feed closed (its generation stopped) and wakes every subscriber.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.wake.send_replace(());
    }

    /// A receiver that changes after every publish and at close. Take it *before* calling
    /// [`since`](Self::since), so no publish between the two is missed.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.wake.subscribe()
    }

    /// The last checkpoint published.
    pub fn checkpoint(&self) -> u64 {
        self.state.lock().checkpoint
    }

    /// What a subscriber that has seen everything up to `after` gets next.
    pub fn since(&self, after: u64) -> Since {
        let state = self.state.lock();
        if state.closed && (after < state.complete_after || after >= state.checkpoint) {
            return Since::Closed;
        }
        if after < state.complete_after {
            return Since::Gone {
                checkpoint: state.checkpoint,
            };
        }
        if after > state.checkpoint {
            return Since::Ahead {
                checkpoint: state.checkpoint,
            };
        }
        let start = state.batches.partition_point(|b| b.position <= after);
        let batches: Vec<_> = state.batches.range(start..).cloned().collect();
        if batches.is_empty() && state.closed {
            return Since::Closed;
        }
        Since::Changes(batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(writes: &[(&str, Option<&str>)]) -> Overlay {
        writes
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    fn positions(since: Since) -> Vec<u64> {
        match since {
            Since::Changes(batches) => batches.iter().map(|b| b.position).collect(),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[test]
    fn subscribers_continue_from_any_kept_position() {
        let feed = ChangeFeed::new(10);
        feed.publish(12, overlay(&[("a", Some("1"))]));
        feed.publish(15, Overlay::new());
        feed.publish(20, overlay(&[("a", None), ("b", Some("2"))]));
        assert_eq!(positions(feed.since(10)), [12, 20]);
        assert_eq!(positions(feed.since(12)), [20]);
        assert_eq!(positions(feed.since(15)), [20]);
        assert_eq!(positions(feed.since(20)), Vec::<u64>::new());
        assert!(matches!(feed.since(9), Since::Gone { checkpoint: 20 }));
        assert!(matches!(feed.since(21), Since::Ahead { checkpoint: 20 }));
    }

    #[test]
    fn old_batches_are_dropped_and_their_positions_become_gone() {
        let feed = ChangeFeed::new(0);
        let per_batch = 1000;
        let batches = RETAINED_CHANGES / per_batch + 5;
        for position in 1..=batches as u64 {
            let writes: Overlay = (0..per_batch)
                .map(|i| (format!("k{i}"), Some(vec![1])))
                .collect();
            feed.publish(position, writes);
        }
        assert!(matches!(feed.since(4), Since::Gone { .. }));
        assert_eq!(positions(feed.since(5)).len(), RETAINED_CHANGES / per_batch);
    }

    #[test]
    fn closing_wakes_subscribers_after_they_drained_the_feed() {
        let feed = ChangeFeed::new(0);
        let wake = feed.subscribe();
        feed.publish(1, overlay(&[("a", Some("1"))]));
        feed.close();
        assert!(wake.has_changed().unwrap());
        assert_eq!(positions(feed.since(0)), [1]);
        assert!(matches!(feed.since(1), Since::Closed));
    }
}
