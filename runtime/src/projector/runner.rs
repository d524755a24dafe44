//! One projector's loop: read a batch after the checkpoint, filter it, apply it in Wasm,
//! commit the view writes and the new checkpoint in one transaction, repeat; when caught up,
//! sleep until the log's head moves (no polling).

use super::{Fault, State, Status, Subscription};
use crate::engine::{ApplyError, EventBatch, Instance};
use crate::log::EventLog;
use crate::store::{BatchView, DURABLE_INTERVAL, ViewStore};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Most events read from the log per batch.
pub const MAX_BATCH_EVENTS: usize = 1024;
/// Most payload bytes per batch (a batch always holds at least one event).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Everything a runner needs besides its instance; it borrows nothing.
pub struct Runner {
    pub name: String,
    /// Return once the log's head is reached instead of waiting for more.
    pub until_head: bool,
    pub module_hash: String,
    pub log: EventLog,
    pub store: Arc<ViewStore>,
    pub status: Arc<Mutex<Status>>,
    pub stop: watch::Receiver<bool>,
}

impl Runner {
    /// Runs `instance` until stopped or faulted (or, with `until_head`, caught up), then makes
    /// the view durable. Returns the final status.
    pub fn run(mut self, instance: Instance) -> Status {
        let span = tracing::info_span!("projector", projector = %self.name, module = self.module_hash.get(..12).unwrap_or_default());
        let _entered = span.enter();
        if let Err(fault) = self.follow(instance) {
            tracing::error!(error = %fault.message, position = fault.position, "projector faulted");
            self.set(|s| {
                s.state = State::Faulted;
                s.error = Some(fault);
            });
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the view failed");
        }
        self.set(|s| {
            if s.state != State::Faulted && !self.until_head {
                s.state = State::Stopped;
            }
        });
        self.status.lock().expect("status lock").clone()
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().expect("status lock"))
    }

    fn follow(&mut self, mut instance: Instance) -> Result<(), Fault> {
        let subscription: Subscription = instance.descriptor().subscription.clone();
        let mut checkpoint = self.store.checkpoint().map_err(|e| fault(e.to_string()))?;
        let mut head = self.log.subscribe();
        let mut batch = EventBatch::default();
        let mut last_durable = Instant::now();
        self.set(|s| {
            s.checkpoint = checkpoint;
            s.state = State::CatchingUp;
        });
        while !*self.stop.borrow() {
            batch.clear();
            let last = self
                .log
                .visit_from(checkpoint + 1, MAX_BATCH_EVENTS, |position, event| {
                    if subscription.matches(event.stream, event.event_type) {
                        batch.push(position, event);
                    }
                    batch.byte_len() < MAX_BATCH_BYTES
                })
                .map_err(|e| fault(e.to_string()))?;
            let Some(last) = last else {
                self.set(|s| s.state = State::Live);
                if self.until_head || !self.wait_for_events(&mut head, checkpoint) {
                    break;
                }
                continue;
            };
            let view = BatchView::new(self.store.snapshot().map_err(|e| fault(e.to_string()))?);
            let view = if batch.is_empty() {
                view
            } else {
                let _span = tracing::debug_span!("apply", events = batch.len(), last).entered();
                match instance.apply(&batch, view) {
                    (view, Ok(())) => view,
                    (_, Err(e)) => return Err(self.describe_failure(e)),
                }
            };
            let durable = last_durable.elapsed() >= DURABLE_INTERVAL;
            self.store
                .commit(&view.into_overlay(), last, durable)
                .map_err(|e| fault(e.to_string()))?;
            if durable {
                last_durable = Instant::now();
            }
            checkpoint = last;
            let behind = self.log.head() > checkpoint;
            let applied = batch.len() as u64;
            self.set(|s| {
                s.checkpoint = checkpoint;
                s.events_applied += applied;
                s.state = if behind {
                    State::CatchingUp
                } else {
                    State::Live
                };
            });
        }
        Ok(())
    }

    /// Sleeps until the head passes `checkpoint` (true) or the runner is stopped (false).
    fn wait_for_events(&mut self, head: &mut watch::Receiver<u64>, checkpoint: u64) -> bool {
        let stop = &mut self.stop;
        futures::executor::block_on(async {
            tokio::select! {
                moved = head.wait_for(|h| *h > checkpoint) => moved.is_ok(),
                _ = stop.wait_for(|stop| *stop) => false,
            }
        })
    }

    /// A fault naming the failing event when the guest named one.
    fn describe_failure(&self, error: ApplyError) -> Fault {
        let position = match &error {
            ApplyError::Guest { position, .. } => Some(*position),
            ApplyError::Trap(_) => None,
        };
        let event = position.and_then(|p| self.log.read_from(p, 1).ok()?.pop());
        Fault {
            message: error.to_string(),
            position,
            stream: event.as_ref().map(|e| e.stream.clone()),
            event_type: event.map(|e| e.event_type),
        }
    }
}

pub fn fault(message: String) -> Fault {
    Fault {
        message,
        position: None,
        stream: None,
        event_type: None,
    }
}
