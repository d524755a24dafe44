//! How the registry and a runner talk. A runner owns its instance, view and checkpoint; the
//! registry holds a [`RunnerHandle`]: one mailbox of [`Control`] messages in (replies travel on a
//! oneshot inside the message), one status watch out, and [`Report`]s of what the runner did on
//! the registry's report channel. Nothing else is shared.

use super::Status;
use super::catalog::GenerationRecord;
use super::error::RetryError;
use crate::engine::{Instance, Module};
use parking_lot::Mutex;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot, watch};

/// A module with its whole deployment record (config, schema version, error policy): swapping
/// one swaps all.
#[derive(Clone)]
pub struct Code {
    pub module: Module,
    pub record: GenerationRecord,
}

/// New code for a running generation, already instantiated.
pub struct Swap {
    pub code: Code,
    pub instance: Instance,
    /// Whether the code is on trial (new module or config). Without a trial (only the error
    /// policy changed) it is proven at once and there is nothing to go back to.
    pub trial: bool,
    /// Answered when the runner has taken the code; dropped unanswered if it stopped first.
    pub taken: Option<oneshot::Sender<()>>,
}

/// Whether this node may still act as a projector's owner, asked right before a dead-letter
/// action commits: always on one node, while its lease is valid in a cluster.
pub type Fence = Box<dyn Fn() -> bool + Send>;

/// What a runner is told to do. It reads its mailbox between two batches, in order.
pub enum Control {
    /// Apply events (again, after a pause).
    Run,
    /// Stay between batches, applying nothing, until told to run. Retries are still answered.
    Pause,
    /// Make the view durable and return.
    Stop,
    /// Continue with new code from the current checkpoint, on trial (see [`Swap::trial`]) until
    /// it has applied one batch: if that batch fails, the runner goes back to the code it
    /// proved last.
    Swap(Box<Swap>),
    /// Apply the dead-lettered event at `position` again with the current code, committing it
    /// only if `fence` still says yes (in a cluster: this node's lease is still valid).
    Retry {
        position: u64,
        fence: Fence,
        reply: oneshot::Sender<Result<(), RetryError>>,
    },
}

/// What a runner tells the registry, from its own thread (never waiting for an answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerEvent {
    /// The runner reached the log's head (again, after applying events).
    CaughtUp,
    /// The runner now runs `record` as proven: code on trial applied its first batch (committed
    /// with the view's record of it), or code came without a trial.
    Proven { record: GenerationRecord },
    /// Code on trial failed its first batch; the runner is back on the code it proved last.
    TrialFailed {
        record: GenerationRecord,
        error: String,
    },
}

/// What arrives on the registry's report channel.
#[derive(Debug, Clone)]
pub enum Report {
    /// A [`RunnerEvent`] with where it comes from.
    Runner {
        projector: String,
        /// Which runner: unique in the process, so a report from a runner since replaced (on
        /// the same generation, say, after a restart) is told apart.
        run: u64,
        event: RunnerEvent,
    },
    /// The registry is shutting down: the reports before this one are the last.
    Shutdown,
}

/// Where runners send their [`Report`]s.
pub type Reports = mpsc::UnboundedSender<Report>;

/// The registry's side of one runner.
pub struct RunnerHandle {
    mailbox: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<Status>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl RunnerHandle {
    /// A handle on a runner started on `thread`.
    pub(super) fn new(
        mailbox: mpsc::UnboundedSender<Control>,
        status: watch::Receiver<Status>,
        thread: JoinHandle<()>,
    ) -> RunnerHandle {
        RunnerHandle {
            mailbox,
            status,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// A handle with no runner behind it (a generation that failed to start): its mailbox is
    /// closed and its status stays `status`.
    pub(super) fn idle(status: Status) -> RunnerHandle {
        let (mailbox, _) = mpsc::unbounded_channel();
        RunnerHandle {
            mailbox,
            status: watch::channel(status).1,
            thread: Mutex::new(None),
        }
    }

    /// Sends `control`; gives it back when the runner has stopped.
    pub fn send(&self, control: Control) -> Result<(), Control> {
        self.mailbox.send(control).map_err(|e| e.0)
    }

    /// A copy of the runner's status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A watch of the runner's status: it changes after every commit and state change.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Whether the runner is running and not on its way out after a fault.
    pub fn running(&self) -> bool {
        !self.mailbox.is_closed()
            && self.status.borrow().state != super::State::Faulted
            && self
                .thread
                .lock()
                .as_ref()
                .is_some_and(|thread| !thread.is_finished())
    }

    /// Stops the runner and waits for it to make its view durable.
    pub fn stop(&self) {
        let _ = self.mailbox.send(Control::Stop);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

/// Starts runner threads. The default starts an OS thread; tests inject failures.
#[derive(Clone)]
pub struct Spawner(Arc<SpawnFn>);

/// Starts `work` on a thread named by the first argument.
type SpawnFn =
    dyn Fn(String, Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>> + Send + Sync;

impl Spawner {
    /// A spawner that runs `spawn` (which must start `work` on a new thread, or fail).
    pub fn new(
        spawn: impl Fn(String, Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>>
        + Send
        + Sync
        + 'static,
    ) -> Spawner {
        Spawner(Arc::new(spawn))
    }

    /// Starts `work` on a new thread called `name`.
    pub fn spawn(
        &self,
        name: String,
        work: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        (self.0)(name, Box::new(work))
    }
}

impl Default for Spawner {
    fn default() -> Self {
        Spawner::new(|name, work| std::thread::Builder::new().name(name).spawn(work))
    }
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spawner")
    }
}
