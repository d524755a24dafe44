//! One projector generation's loop: read a batch after the checkpoint, filter it, apply it in
//! Wasm, commit the view writes and the new checkpoint in one transaction, repeat; when caught
//! up, sleep until the log's head moves or a message arrives (no polling).
//!
//! The runner owns its instance, view and checkpoint. It reads its mailbox ([`Control`]) between
//! two batches, in order, and publishes its [`Status`] on a watch.
//!
//! Code swaps (continue-mode reloads) happen here, between two batches: the new instance takes
//! over at the current checkpoint with its whole deployment record (config, schema version,
//! error policy), on trial until it has applied one batch. If that first batch fails, the
//! runner goes back to the code it proved last (record included), reports the failure, and
//! applies the batch again with the old code — so a bad reload never faults a healthy
//! projector. A swap during a trial replaces the code on trial, never the proven code.
//!
//! Catching up: while the log's head is a full batch or more ahead, a successful batch's writes
//! go to the catch-up cache ([`WriteBack`]) instead of a commit; the next batches read through
//! it, and its writes commit — sorted, with the position they bring the view to, in one
//! transaction — when the process's cache budget fills, when the cache interval passes, when
//! the runner nears the head, before a message that needs the committed view, and when it
//! stops. The status shows both positions: `applied` (what the instance has applied) and
//! `checkpoint` (what is committed and what queries see). A projector that scans the view
//! commits every batch (a scan over a hash-map cache would cost the whole cache).
//!
//! Poison events: when a batch fails (a guest error, a trap, a sandbox limit), its writes are
//! dropped with the instance, a fresh instance re-applies the events before the failing one and
//! commits them, and the error policy decides the rest: `stop` faults the projector with its
//! checkpoint just before the failing event; `skip` records the event as a dead letter in the
//! same transaction as the checkpoint that passes it, and goes on.
//!
//! A log that cannot be read for now ([`ReadError::Unavailable`]: JetStream servers away during
//! a leader election, a log file being reopened) is not the projector's fault: a follower reads
//! again after a pause, doubling from 50 ms to 1 s while reads fail, and handles its messages in
//! between. Other read errors (a corrupt event, a failing disk) fault it, and a replay (`stop_at`
//! set, someone waiting for it) fails on the first failed read.

mod commit;
mod poison;

use super::control::{Code, Control, Report, Reports, RunnerEvent, Swap};
use super::error::RetryError;
use super::{Fault, State, Status};
use crate::engine::{ApplyError, Engine, EventBatch, Instance, InstanceError, Subscription};
use crate::log::{BatchRead, EventLog, FlatBatch, ReadError};
use crate::store::{BatchView, CacheBudget, ViewStore, WriteBack};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Most events read from the log per batch.
pub const MAX_BATCH_EVENTS: usize = 1024;
/// Most payload bytes per batch (a batch always holds at least one event).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// The first pause before a follower reads the log again after a failed read; it doubles
/// while reads fail, up to [`READ_PAUSE_MAX`].
const READ_PAUSE_MIN: Duration = Duration::from_millis(50);
const READ_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Where a runner stops by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    /// Never: follow the log until told to stop.
    Never,
    /// At the log's head.
    Head,
    /// Once the checkpoint reaches this position (or the head, if that comes first).
    Position(u64),
}

/// Everything a runner needs besides its first code; it borrows nothing.
pub struct Runner {
    pub name: String,
    pub engine: Engine,
    /// Where to stop.
    pub stop_at: StopAt,
    pub log: EventLog,
    pub store: Arc<ViewStore>,
    /// Where the runner publishes its status (after every commit and state change).
    pub status: watch::Sender<Status>,
    /// Where the runner's messages arrive; when every sender is gone it stops.
    pub mailbox: mpsc::UnboundedReceiver<Control>,
    /// Where it reports trials and catching up, with its run id (`None`: nobody listens).
    pub reports: Option<(Reports, u64)>,
    /// How often a commit is made durable (`fsync`ed); every commit is, when it stops.
    pub durable_every: std::time::Duration,
    pub metrics: super::RunnerMetrics,
    /// Where each commit's changes go (`None`: nobody can subscribe, as in verification).
    pub changes: Option<Arc<super::ChangeFeed>>,
    /// The catch-up cache's budget, shared by the process's runners.
    pub cache: Arc<CacheBudget>,
}

/// The code a runner applies with, what it falls back on, and the writes it holds.
struct Running {
    code: Code,
    instance: Instance,
    subscription: Subscription,
    /// During a trial: the code proven last, to go back to if the trial's first batch fails.
    proven: Option<(Code, Instance)>,
    /// Whether the view does not yet record that `code` writes it (see
    /// [`ViewStore::commit_proving`]): true at the start and after every change of code, until
    /// the next commit.
    unrecorded: bool,
    paused: bool,
    /// Writes applied but not committed (lent to the batch view while a batch applies).
    cache: Option<WriteBack>,
    /// Whether the code scanned the view: it then commits every batch.
    scans: bool,
    /// When a commit was last made durable.
    last_durable: Instant,
}

/// Whether to go on after a message.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

impl Runner {
    /// Runs `instance` of `code` until stopped or faulted (or until `stop_at`), then makes the
    /// view durable. Returns the final status. Messages left in the mailbox are dropped with
    /// it, so a waiting retry learns the runner stopped.
    pub fn run(mut self, code: Code, instance: Instance) -> Status {
        let span = tracing::info_span!("projector", projector = %self.name);
        let _entered = span.enter();
        let mut running = Running {
            subscription: instance.descriptor().subscription.clone(),
            code,
            instance,
            proven: None,
            unrecorded: true,
            paused: false,
            cache: Some(WriteBack::new(self.cache.clone())),
            scans: false,
            last_durable: Instant::now(),
        };
        self.publish_code(&running);
        self.set(|s| s.error = None);
        if let Err(fault) = self.follow(&mut running) {
            tracing::error!(error = %fault.message, position = fault.position, "projector faulted");
            self.metrics.faults.inc();
            self.set(|s| {
                s.state = State::Faulted;
                s.error = Some(fault);
            });
        }
        if let Err(fault) = self.commit_held(&mut running) {
            tracing::error!(error = %fault.message, "committing the held writes failed");
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the view failed");
        }
        self.mailbox.close();
        self.set(|s| {
            if s.state != State::Faulted && self.stop_at == StopAt::Never {
                s.state = State::Stopped;
            }
        });
        self.status.borrow().clone()
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(f);
    }

    /// Publishes the code running now.
    fn publish_code(&self, running: &Running) {
        let record = running.code.record.clone();
        let descriptor = running.instance.descriptor().clone();
        self.set(|s| {
            s.record = record;
            s.descriptor = Some(descriptor);
        });
    }

    fn report(&self, event: RunnerEvent) {
        if let Some((reports, run)) = &self.reports {
            let _ = reports.send(Report::Runner {
                projector: self.name.clone(),
                run: *run,
                event,
            });
        }
    }

    fn instantiate(&self, code: &Code) -> Result<Instance, InstanceError> {
        self.engine
            .instantiate(&code.module, &self.name, &code.record.config)
    }

    /// Handles one message.
    fn handle(&mut self, running: &mut Running, control: Control) -> Flow {
        match control {
            Control::Run => running.paused = false,
            Control::Pause => {
                running.paused = true;
                // A paused projector's queries see everything it applied.
                if let Err(fault) = self.commit_held(running) {
                    tracing::error!(error = %fault.message, "committing the held writes failed");
                }
            }
            Control::Stop => return Flow::Stop,
            Control::Swap(swap) => self.swap(running, *swap),
            Control::Retry {
                position,
                fence,
                reply,
            } => {
                // A retry applies on the committed view.
                let outcome = match self.commit_held(running) {
                    Ok(()) => self.retry(running, position, &fence),
                    Err(fault) => Err(RetryError::Internal(fault.message)),
                };
                let _ = reply.send(outcome);
            }
        }
        Flow::Go
    }

    /// Takes new code: on trial, the proven code stays the fallback however many swaps come;
    /// without a trial, it is proven at once, and recorded so on the view at its checkpoint
    /// then (the events after it are the new code's, idle or not: a snapshot taken before the
    /// next event says so). Either way the old code's held writes commit first.
    fn swap(&mut self, running: &mut Running, swap: Swap) {
        let Swap {
            code,
            instance,
            trial,
            taken,
        } = swap;
        if let Err(fault) = self.commit_held(running) {
            tracing::warn!(error = %fault.message, "committing the old code's writes at a swap");
        }
        tracing::info!(
            from = running.instance.module(),
            to = instance.module(),
            trial,
            "swapping code"
        );
        running.subscription = instance.descriptor().subscription.clone();
        let old_code = std::mem::replace(&mut running.code, code);
        let old_instance = std::mem::replace(&mut running.instance, instance);
        if !trial {
            running.proven = None;
        } else if running.proven.is_none() {
            running.proven = Some((old_code, old_instance));
        }
        running.unrecorded = true;
        if !trial {
            self.record_proven(running);
        }
        // Whether the new code scans is learned from its own batches (the old code's scans
        // would otherwise keep it from holding writes until the next restart).
        running.scans = false;
        self.publish_code(running);
        if let Some(taken) = taken {
            let _ = taken.send(());
        }
        if !trial {
            self.report(RunnerEvent::Proven {
                record: running.code.record.clone(),
            });
        }
    }

    /// Reads every message waiting in the mailbox; `Flow::Stop` when told to stop or when the
    /// registry is gone.
    fn drain(&mut self, running: &mut Running) -> Flow {
        loop {
            match self.mailbox.try_recv() {
                Ok(control) => {
                    if self.handle(running, control) == Flow::Stop {
                        return Flow::Stop;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return Flow::Go,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // A runner nobody holds (a replay) goes on until `stop_at`.
                    return if self.stop_at == StopAt::Never {
                        Flow::Stop
                    } else {
                        Flow::Go
                    };
                }
            }
        }
    }

    fn follow(&mut self, running: &mut Running) -> Result<(), Fault> {
        // The position of the last event applied: committed, or held in the cache.
        let mut applied = self
            .store
            .checkpoint()
            .map_err(|e| Fault::message(e.to_string()))?;
        let mut head = self.log.subscribe();
        let mut flat = FlatBatch::default();
        let mut batch = EventBatch::default();
        let mut reported_caught_up = false;
        // Most events the next batch may hold: lowered to split a batch whose writes broke a
        // limit, or to apply the events before a poison event on their own; raised again as
        // batches pass.
        let mut batch_limit = MAX_BATCH_EVENTS;
        // The pause after the last failed read of the log, while reads fail.
        let mut read_pause: Option<Duration> = None;
        self.set(|s| {
            s.checkpoint = applied;
            s.applied = applied;
            s.rate.record(applied);
            s.state = State::CatchingUp;
        });
        loop {
            if self.drain(running) == Flow::Stop {
                return Ok(());
            }
            if running.paused {
                self.set(|s| s.state = State::Paused);
                match self.next_message() {
                    Some(control) => {
                        if self.handle(running, control) == Flow::Stop {
                            return Ok(());
                        }
                        continue;
                    }
                    None => return Ok(()),
                }
            }

            let end = match self.stop_at {
                StopAt::Position(end) if applied >= end => return Ok(()),
                StopAt::Position(end) => end,
                _ => u64::MAX,
            };
            let subscription = &running.subscription;
            let read = BatchRead {
                from: applied + 1,
                until: end,
                max_scanned: MAX_BATCH_EVENTS,
                max_events: batch_limit,
                max_bytes: MAX_BATCH_BYTES,
            };
            let read = self.log.read_batch(
                &read,
                |stream, t| subscription.matches(stream, t),
                &mut flat,
            );
            let last = match read {
                Ok(last) => {
                    read_pause = None;
                    last
                }
                // Not the projector's fault: see the module's documentation.
                Err(e @ ReadError::Unavailable(_)) if self.stop_at == StopAt::Never => {
                    let pause = read_pause
                        .map_or(READ_PAUSE_MIN, |p: Duration| (p * 2).min(READ_PAUSE_MAX));
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "reading the event log failed; reading again after a pause");
                    read_pause = Some(pause);
                    std::thread::sleep(pause);
                    continue;
                }
                Err(e) => return Err(Fault::message(e.to_string())),
            };
            batch.load(&mut flat);
            let Some(last) = last else {
                // Caught up: what is held commits before anyone hears of it.
                self.commit_held(running)?;
                self.set(|s| s.state = State::Live);
                // Once per catching up: a report handled late or refused (a promotion whose
                // commit failed) comes again after the next events.
                if !reported_caught_up {
                    reported_caught_up = true;
                    self.report(RunnerEvent::CaughtUp);
                }
                if self.stop_at != StopAt::Never {
                    return Ok(());
                }
                match self.wait_for_events(&mut head, applied) {
                    Wake::Events => {}
                    Wake::Message(control) => {
                        if self.handle(running, control) == Flow::Stop {
                            return Ok(());
                        }
                    }
                    Wake::Gone => return Ok(()),
                }
                continue;
            };
            let snapshot = self
                .store
                .snapshot()
                .map_err(|e| Fault::message(e.to_string()))?;
            let cache = running
                .cache
                .take()
                .expect("the cache is back between batches");
            let view = BatchView::with_cache(snapshot, cache);
            let passed;
            let overlay = if batch.is_empty() {
                let (overlay, cache) = view.into_parts();
                running.cache = cache;
                // Code on trial passes on a batch with no event for it too: its checkpoint
                // then passes events only the proven code wanted, so going back to that code
                // could no longer be exact.
                passed = running.proven.take().is_some();
                overlay
            } else {
                let _span = tracing::debug_span!("apply", events = batch.len(), last).entered();
                let started = Instant::now();
                let (view, outcome) = running.instance.apply(&batch, view);
                self.metrics
                    .apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                running.scans |= view.scanned();
                let (overlay, cache) = view.into_parts();
                running.cache = cache;
                match outcome {
                    Ok(()) => {
                        passed = running.proven.take().is_some();
                        overlay
                    }
                    // New code on trial whose first batch breaks a write limit fails its trial
                    // (below), as on any failure of that batch: the batch is split only under
                    // proven code, so a trial never passes on half a batch.
                    Err(ApplyError::Writes { events, .. })
                        if events > 1 && running.proven.is_none() =>
                    {
                        // Which event wrote too much is not known: apply half as many at a
                        // time until it is alone (its verdict then never depends on batching).
                        running.instance = self
                            .instantiate(&running.code)
                            .map_err(|e| Fault::message(e.to_string()))?;
                        batch_limit = events / 2;
                        continue;
                    }
                    Err(e) => {
                        if let Some((proven_code, proven)) = running.proven.take() {
                            // The code on trial failed its first batch: back to the proven code
                            // (its whole record), and apply the batch again with it.
                            let failed = std::mem::replace(&mut running.code, proven_code);
                            running.instance = proven;
                            running.subscription =
                                running.instance.descriptor().subscription.clone();
                            let error = self.describe_failure(e).to_string();
                            tracing::warn!(module = %failed.record.module, %error, "reload failed its first batch; keeping the previous module");
                            running.unrecorded = true;
                            running.scans = false;
                            self.publish_code(running);
                            self.report(RunnerEvent::TrialFailed {
                                record: failed.record,
                                error,
                            });
                            continue;
                        }
                        // A poison event. The instance may be broken (a trap) and the batch's
                        // writes are tainted: drop both. The events before it are applied again
                        // as a batch of their own; the poison event then fails first in its
                        // batch and meets the error policy.
                        running.instance = self
                            .instantiate(&running.code)
                            .map_err(|e| Fault::message(e.to_string()))?;
                        if e.index() > 0 {
                            batch_limit = e.index();
                        } else {
                            applied = self.handle_poison(running, e)?;
                        }
                        continue;
                    }
                }
            };
            // Far behind (a full batch or more to read), proven code that does not scan holds
            // its writes; otherwise they commit now.
            let far_behind =
                self.log.head().min(end).saturating_sub(last) >= MAX_BATCH_EVENTS as u64;
            let cache = running.cache.as_mut().expect("the cache is back");
            let hold =
                far_behind && cache.enabled() && !running.scans && !running.unrecorded && !passed;
            if hold {
                cache.absorb(overlay, last);
                if cache.due() {
                    self.commit_held(running)?;
                }
            } else {
                self.commit(running, overlay, last)?;
            }
            if passed {
                tracing::info!(module = %running.code.record.module, "reload complete: the new module applied its first batch");
                self.report(RunnerEvent::Proven {
                    record: running.code.record.clone(),
                });
            }
            self.metrics.batches.inc();
            applied = last;
            reported_caught_up = false;
            batch_limit = batch_limit.saturating_mul(2).min(MAX_BATCH_EVENTS);
            let behind = self.log.head() > applied;
            let delivered = batch.len() as u64;
            self.set(|s| {
                s.applied = applied;
                s.events_applied += delivered;
                s.rate.record(applied);
                s.last_progress = Instant::now();
                s.state = if behind {
                    State::CatchingUp
                } else {
                    State::Live
                };
            });
        }
    }

    /// Sleeps until the head passes `checkpoint` or a message arrives.
    fn wait_for_events(&mut self, head: &mut watch::Receiver<u64>, checkpoint: u64) -> Wake {
        let mailbox = &mut self.mailbox;
        futures::executor::block_on(async {
            tokio::select! {
                moved = head.wait_for(|h| *h > checkpoint) => match moved {
                    Ok(_) => Wake::Events,
                    Err(_) => Wake::Gone,
                },
                control = mailbox.recv() => control.map_or(Wake::Gone, Wake::Message),
            }
        })
    }

    /// Sleeps until a message arrives; `None` when every sender is gone.
    fn next_message(&mut self) -> Option<Control> {
        futures::executor::block_on(self.mailbox.recv())
    }
}

/// Why a sleeping runner woke up.
enum Wake {
    /// The log's head moved.
    Events,
    /// A message arrived.
    Message(Control),
    /// The log or the registry is gone.
    Gone,
}
