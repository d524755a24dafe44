//! One projector generation's loop: read a batch after the checkpoint, filter it, apply it in
//! Wasm, commit the view writes and the new checkpoint in one transaction, repeat; when caught
//! up, sleep until the log's head moves or a command arrives (no polling).
//!
//! Code swaps (continue-mode reloads) happen here, between two batches: the new instance takes
//! over at the current checkpoint, on trial until it has applied one batch. If that first
//! batch fails, the runner goes back to the previous instance, reports the failure, and applies
//! the batch again with the old code — so a bad reload never faults a healthy projector.
//!
//! Poison events: when a batch fails (a guest error, a trap, a sandbox limit), its writes are
//! dropped with the instance, a fresh instance re-applies the events before the failing one and
//! commits them, and the error policy decides the rest: `stop` faults the projector with its
//! checkpoint just before the failing event; `skip` records the event as a dead letter in the
//! same transaction as the checkpoint that passes it, and goes on.

use super::{ErrorPolicy, Fault, State, Status, Subscription};
use crate::engine::{ApplyError, Engine, EventBatch, Instance, InstanceError, Module};
use crate::log::EventLog;
use crate::store::{BatchView, DURABLE_INTERVAL, DeadLetter, ViewStore};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Most events read from the log per batch.
pub const MAX_BATCH_EVENTS: usize = 1024;
/// Most payload bytes per batch (a batch always holds at least one event).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

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

/// What a runner is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Apply events.
    Run,
    /// Stay between batches, applying nothing, until told otherwise.
    Pause,
    /// Make the view durable and return.
    Stop,
}

/// What a runner reports to its owner, from its own thread. Handlers must not block on the
/// owner's locks (they hand work to another thread).
#[derive(Debug, Clone)]
pub enum RunnerEvent {
    /// The runner reached the log's head (reported once per run).
    CaughtUp,
    /// A swapped-in module applied its first batch: the reload is complete.
    ReloadSucceeded { module: String },
    /// A swapped-in module failed its first batch; the runner is back on `previous`.
    ReloadFailed {
        module: String,
        previous: String,
        error: String,
    },
}

/// Receives [`RunnerEvent`]s.
pub type Hook = Arc<dyn Fn(RunnerEvent) + Send + Sync>;

/// A module with the configuration it runs with.
#[derive(Clone)]
pub struct Code {
    pub module: Module,
    pub config: String,
}

/// A slot where the owner leaves new code, already instantiated, for the runner to swap in
/// between batches.
pub type SwapSlot = Arc<Mutex<Option<(Code, Instance)>>>;

/// A request to apply a dead-lettered event again, with the current code.
pub struct Retry {
    pub position: u64,
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Where the owner queues [`Retry`] requests for the runner (handled between batches); `None`
/// once the runner has stopped taking them.
pub type RetryQueue = Arc<Mutex<Option<Vec<Retry>>>>;

/// Everything a runner needs besides its first instance; it borrows nothing.
pub struct Runner {
    pub name: String,
    pub engine: Engine,
    /// What to do with an event the module fails on.
    pub policy: ErrorPolicy,
    /// Where to stop.
    pub stop_at: StopAt,
    pub log: EventLog,
    pub store: Arc<ViewStore>,
    pub status: Arc<Mutex<Status>>,
    /// Publishes the checkpoint after every commit (for read-your-writes waits and metrics).
    pub checkpoints: watch::Sender<u64>,
    pub commands: watch::Receiver<Command>,
    pub swap: SwapSlot,
    pub retries: RetryQueue,
    pub hook: Option<Hook>,
    pub metrics: super::RunnerMetrics,
    /// Where each commit's changes go (`None`: nobody can subscribe, as in verification).
    pub changes: Option<Arc<super::ChangeFeed>>,
}

impl Runner {
    /// Runs `instance` of `code` until stopped or faulted (or until `stop_at`),
    /// then makes the view durable. Returns the final status.
    pub fn run(mut self, code: Code, instance: Instance) -> Status {
        let span = tracing::info_span!("projector", projector = %self.name);
        let _entered = span.enter();
        self.set(|s| {
            s.module = instance.module().to_string();
            s.error = None;
        });
        if let Err(fault) = self.follow(code, instance) {
            tracing::error!(error = %fault.message, position = fault.position, "projector faulted");
            self.metrics.faults.inc();
            self.set(|s| {
                s.state = State::Faulted;
                s.error = Some(fault);
            });
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the view failed");
        }
        // Close the retry queue, answering what is left rather than leaving callers waiting.
        let left = self.retries.lock().expect("retry lock").take();
        for retry in left.into_iter().flatten() {
            let _ = retry
                .reply
                .send(Err("the projector stopped; resume it first".into()));
        }
        self.set(|s| {
            if s.state != State::Faulted && self.stop_at == StopAt::Never {
                s.state = State::Stopped;
            }
        });
        self.status.lock().expect("status lock").clone()
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        let mut status = self.status.lock().expect("status lock");
        f(&mut status);
        let checkpoint = status.checkpoint;
        drop(status);
        self.checkpoints.send_if_modified(|c| {
            let moved = *c != checkpoint;
            *c = checkpoint;
            moved
        });
    }

    fn report(&self, event: RunnerEvent) {
        if let Some(hook) = &self.hook {
            hook(event);
        }
    }

    fn instantiate(&self, code: &Code) -> Result<Instance, InstanceError> {
        self.engine
            .instantiate(&code.module, &self.name, &code.config)
    }

    fn follow(&mut self, mut code: Code, mut instance: Instance) -> Result<(), Fault> {
        let mut subscription: Subscription = instance.descriptor().subscription.clone();
        let mut previous: Option<(Code, Instance)> = None;
        let mut checkpoint = self.store.checkpoint().map_err(|e| fault(e.to_string()))?;
        let mut head = self.log.subscribe();
        let mut batch = EventBatch::default();
        let mut last_durable = Instant::now();
        let mut reported_caught_up = false;
        self.set(|s| {
            s.checkpoint = checkpoint;
            s.rate.record(checkpoint);
            s.state = State::CatchingUp;
        });
        loop {
            let command = *self.commands.borrow_and_update();
            if command == Command::Stop {
                return Ok(());
            }
            // New code first: a dead-letter retry asked for after a deploy runs the deployed code.
            if let Some((next_code, next)) = self.swap.lock().expect("swap lock").take() {
                tracing::info!(
                    from = instance.module(),
                    to = next.module(),
                    "swapping code"
                );
                subscription = next.descriptor().subscription.clone();
                let module = next.module().to_string();
                let old_code = std::mem::replace(&mut code, next_code);
                previous = Some((old_code, std::mem::replace(&mut instance, next)));
                self.set(|s| s.module = module);
            }
            let retries = self
                .retries
                .lock()
                .expect("retry lock")
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            for retry in retries {
                let outcome = self.retry(&mut instance, &code, retry.position);
                let _ = retry.reply.send(outcome);
            }
            if command == Command::Pause {
                self.set(|s| s.state = State::Paused);
                if !self.wait_for_command() {
                    return Ok(());
                }
                continue;
            }

            let end = match self.stop_at {
                StopAt::Position(end) if checkpoint >= end => return Ok(()),
                StopAt::Position(end) => end,
                _ => u64::MAX,
            };
            batch.clear();
            let last = self
                .log
                .visit_from(checkpoint + 1, MAX_BATCH_EVENTS, |position, event| {
                    if subscription.matches(event.stream, event.event_type) {
                        batch.push(position, event);
                    }
                    batch.byte_len() < MAX_BATCH_BYTES && position < end
                })
                .map_err(|e| fault(e.to_string()))?;
            let Some(last) = last else {
                self.set(|s| s.state = State::Live);
                if !reported_caught_up {
                    reported_caught_up = true;
                    self.report(RunnerEvent::CaughtUp);
                }
                if self.stop_at != StopAt::Never || !self.wait_for_events(&mut head, checkpoint) {
                    return Ok(());
                }
                continue;
            };
            let view = BatchView::new(self.store.snapshot().map_err(|e| fault(e.to_string()))?);
            let view = if batch.is_empty() {
                view
            } else {
                let _span = tracing::debug_span!("apply", events = batch.len(), last).entered();
                let started = Instant::now();
                let applied = instance.apply(&batch, view);
                self.metrics
                    .apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                match applied {
                    (view, Ok(())) => {
                        if let Some(old) = previous.take() {
                            self.report(RunnerEvent::ReloadSucceeded {
                                module: instance.module().to_string(),
                            });
                            drop(old);
                        }
                        view
                    }
                    (_, Err(e)) => {
                        if let Some((old_code, old)) = previous.take() {
                            // The new code failed its trial: back to the old code, and retry
                            // the batch with it.
                            let failed = std::mem::replace(&mut instance, old);
                            code = old_code;
                            subscription = instance.descriptor().subscription.clone();
                            let error = self.describe_failure(e).to_string();
                            tracing::warn!(module = failed.module(), %error, "reload failed its first batch; keeping the previous module");
                            self.set(|s| s.module = instance.module().to_string());
                            self.report(RunnerEvent::ReloadFailed {
                                module: failed.module().to_string(),
                                previous: instance.module().to_string(),
                                error,
                            });
                            continue;
                        }
                        // A poison event. The instance may be broken (a trap) and the batch's
                        // writes are tainted: drop both, and start again from the checkpoint.
                        instance = self.instantiate(&code).map_err(|e| fault(e.to_string()))?;
                        checkpoint = self.handle_poison(&mut instance, &mut batch, e, &code)?;
                        continue;
                    }
                }
            };
            let durable = last_durable.elapsed() >= DURABLE_INTERVAL;
            let overlay = view.into_overlay();
            let started = Instant::now();
            self.store
                .commit(&overlay, last, durable, None)
                .map_err(|e| fault(e.to_string()))?;
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batches.inc();
            if let Some(feed) = &self.changes {
                feed.publish(last, overlay);
            }
            if durable {
                last_durable = Instant::now();
            }
            checkpoint = last;
            let behind = self.log.head() > checkpoint;
            let applied = batch.len() as u64;
            self.set(|s| {
                s.checkpoint = checkpoint;
                s.events_applied += applied;
                s.rate.record(checkpoint);
                s.last_progress = Instant::now();
                s.state = if behind {
                    State::CatchingUp
                } else {
                    State::Live
                };
            });
        }
    }

    /// Commits the events of `batch` before the one `error` names (re-applied by the fresh
    /// `instance`), then applies the error policy to the failing event. Returns the new
    /// checkpoint, or the fault that stops the runner.
    fn handle_poison(
        &mut self,
        instance: &mut Instance,
        batch: &mut EventBatch,
        error: ApplyError,
        code: &Code,
    ) -> Result<u64, Fault> {
        let (index, position) = (error.index(), error.position());
        let mut view = BatchView::new(self.store.snapshot().map_err(|e| fault(e.to_string()))?);
        if index > 0 {
            batch.truncate(index);
            match instance.apply(batch, view) {
                (applied, Ok(())) => view = applied,
                // Deterministic code fails the same way twice; anything else is a fault.
                (_, Err(again)) => return Err(self.describe_failure(again)),
            }
        }
        let failure = self.describe_failure(error);
        let (checkpoint, letter) = match self.policy {
            ErrorPolicy::Stop => (position - 1, None),
            ErrorPolicy::Skip => {
                let letter = DeadLetter {
                    position,
                    stream: failure.stream.clone().unwrap_or_default(),
                    event_type: failure.event_type.clone().unwrap_or_default(),
                    error: failure.message.clone(),
                    module: code.module.hash.clone(),
                };
                (position, Some(letter))
            }
        };
        let overlay = view.into_overlay();
        self.store
            .commit(&overlay, checkpoint, true, letter.as_ref())
            .map_err(|e| fault(e.to_string()))?;
        if let Some(feed) = &self.changes {
            feed.publish(checkpoint, overlay);
        }
        self.set(|s| {
            s.checkpoint = checkpoint;
            s.events_applied += index as u64;
        });
        match letter {
            None => Err(failure),
            Some(_) => {
                tracing::warn!(position, error = %failure, "skipped a failing event (dead letter)");
                self.metrics.dead_letters.inc();
                self.set(|s| s.dead_letters += 1);
                Ok(checkpoint)
            }
        }
    }

    /// Applies the dead-lettered event at `position` again with the current code, on the current
    /// view. On success its writes commit and the dead letter goes, in one transaction; on
    /// failure the dead letter records the new error and the instance is replaced.
    fn retry(&mut self, instance: &mut Instance, code: &Code, position: u64) -> Result<(), String> {
        let letter = self
            .store
            .dead_letter(position)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no dead letter at position {position}"))?;
        let mut batch = EventBatch::default();
        self.log
            .visit_from(position, 1, |p, event| {
                batch.push(p, event);
                false
            })
            .map_err(|e| e.to_string())?;
        let view = BatchView::new(self.store.snapshot().map_err(|e| e.to_string())?);
        match instance.apply(&batch, view) {
            (view, Ok(())) => {
                self.store
                    .commit_retry(&view.into_overlay(), position)
                    .map_err(|e| e.to_string())?;
                // Its writes belong to an earlier position than the feed's: subscribers re-read.
                if let Some(feed) = &self.changes {
                    feed.invalidate();
                }
                tracing::info!(position, "dead letter retried and applied");
                Ok(())
            }
            (_, Err(error)) => {
                *instance = self.instantiate(code).map_err(|e| e.to_string())?;
                let failure = self.describe_failure(error).to_string();
                let letter = DeadLetter {
                    error: failure.clone(),
                    module: code.module.hash.clone(),
                    ..letter
                };
                self.store
                    .put_dead_letter(&letter)
                    .map_err(|e| e.to_string())?;
                Err(failure)
            }
        }
    }

    /// Sleeps until the head passes `checkpoint` (true) or a command arrives (true, to be
    /// handled by the loop); false when the owner is gone.
    fn wait_for_events(&mut self, head: &mut watch::Receiver<u64>, checkpoint: u64) -> bool {
        let commands = &mut self.commands;
        futures::executor::block_on(async {
            tokio::select! {
                moved = head.wait_for(|h| *h > checkpoint) => moved.is_ok(),
                changed = commands.changed() => changed.is_ok(),
            }
        })
    }

    /// Sleeps until a new command arrives; false when the owner is gone.
    fn wait_for_command(&mut self) -> bool {
        futures::executor::block_on(self.commands.changed()).is_ok()
    }

    /// A fault naming the failing event.
    fn describe_failure(&self, error: ApplyError) -> Fault {
        let position = error.position();
        let event = self
            .log
            .read_from(position, 1)
            .ok()
            .and_then(|mut e| e.pop());
        Fault {
            message: error.to_string(),
            position: Some(position),
            stream: event.as_ref().map(|e| e.stream.clone()),
            event_type: event.map(|e| e.event_type),
        }
    }
}

/// A fault with only a message.
pub fn fault(message: String) -> Fault {
    Fault {
        message,
        position: None,
        stream: None,
        event_type: None,
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let (Some(position), Some(stream), Some(event_type)) =
            (self.position, &self.stream, &self.event_type)
        {
            write!(f, " (event {position}, {event_type} in {stream})")?;
        }
        Ok(())
    }
}
