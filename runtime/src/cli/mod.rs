//! The `prism` command: `serve` runs Prism ([`serve`]); the remote commands talk to a running
//! one through the typed client ([`remote`]); `new`, `build` and `test` are the authoring kit
//! ([`kit`]); `log` works on a stopped Prism's event log ([`log`]). `main.rs` only parses and
//! calls [`run`].

pub mod import;
mod kit;
mod log;
mod remote;
mod serve;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Prism: a WebAssembly projection runtime for event-sourced systems.
///
/// Events are appended to a durable log; projectors (sandboxed Wasm components) turn them into
/// views you query over HTTP. `prism serve` runs the server; the other commands talk to it.
#[derive(Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--mode` of a deploy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// The new code goes on from the checkpoint on the same view.
    Continue,
    /// A fresh view is rebuilt in the background.
    Rebuild,
}

/// `--on-error` of a deploy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnError {
    /// Fault the projector at the failing event.
    Stop,
    /// Record a dead letter and go on.
    Skip,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run Prism: open (or create) the data dir, resume every projector, serve the HTTP API.
    ///
    /// Settings come from defaults, then a TOML file (`--config`, else `./prism.toml` when it
    /// exists), then `PRISM_...` environment variables, then flags.
    Serve(Box<serve::ServeArgs>),
    /// Create a projector crate NAME: Cargo.toml against the guest SDK, a commented example,
    /// sample events (fixtures/events.jsonl) and the view they give (fixtures/expected.json).
    New {
        /// The crate's name (lowercase letters, digits, '-', '_').
        name: String,
        /// The parent directory: the crate is created in DIR/NAME.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The guest SDK's directory [default: the one this `prism` was built from].
        #[arg(long, env = "PRISM_GUEST_SDK")]
        sdk: Option<PathBuf>,
    },
    /// Build the projector crate in DIR to a deployable component (target/prism/NAME.wasm),
    /// finding a Wasm toolchain (rustup's target, else Debian's rustc-web, installed when it can).
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a projector over FIXTURE (one JSON event per line: {"stream", "type", "data",
    /// "metadata"?}) with Prism's real runtime, no server, and print the resulting view; with
    /// --expect, compare it with a JSON file and exit 1 on any difference.
    Test {
        /// The events, one JSON object per line.
        fixture: PathBuf,
        /// The view the events must give (a JSON object of key → value).
        #[arg(long)]
        expect: Option<PathBuf>,
        /// A built `.wasm` to run [default: build the crate in --dir first].
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// The crate to build when no --wasm is given.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The configuration string passed to the projector's `init`.
        #[arg(long, default_value = "")]
        config: String,
    },
    /// Check a data dir (with Prism stopped): damaged view files are moved aside and rebuilt
    /// from the log at the next start; a damaged log or catalog is reported (restore a backup).
    Repair {
        /// The data dir to check.
        #[arg(long, env = "PRISM_DATA_DIR", default_value = "prism-data")]
        data_dir: PathBuf,
    },
    /// Commands on a data dir's event log, with Prism stopped.
    #[command(subcommand)]
    Log(LogCommand),
    /// Upload a compiled projector (`.wasm`) as NAME, or redeploy a stored module by hash.
    ///
    /// Redeploying a projector is a hot reload: with the same view schema version the new code
    /// continues from the checkpoint; with a new one a fresh view is rebuilt in the background
    /// (a progress bar shows it) while the old one keeps serving, then queries switch over.
    Deploy {
        #[command(flatten)]
        server: remote::ServerArg,
        /// The projector's name (letters, digits, '-', '_').
        name: String,
        /// The `.wasm` file: a component, or a core module built with the guest SDK.
        #[arg(required_unless_present = "module")]
        file: Option<PathBuf>,
        /// Deploy a module Prism already stores (see `prism modules`), e.g. to roll back.
        #[arg(long, conflicts_with = "file")]
        module: Option<String>,
        /// A configuration string passed to the projector's `init` (default: keep the current).
        #[arg(long)]
        config: Option<String>,
        /// Force `continue` or `rebuild` instead of choosing from the view schema version.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// What to do with an event the module fails on: `stop` (fault; the default) or `skip`
        /// (record a dead letter and go on). Default: keep the current policy.
        #[arg(long, value_enum)]
        on_error: Option<OnError>,
        /// Return at once instead of following a rebuild to its end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Replay projector NAME from scratch and compare with its live view (exit 1 if they differ).
    Verify {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
    },
    /// List the events projector NAME skipped (dead letters).
    DeadLetters {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
        /// Only dead letters after this log position.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Apply the dead letter at POSITION of projector NAME again, with its current code.
    Retry {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
        position: u64,
    },
    /// Discard the dead letter at POSITION of projector NAME.
    Discard {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
        position: u64,
    },
    /// Show one projector's status (state, module, generation, checkpoint, lag, rebuild).
    Status {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
    },
    /// Pause a projector: it applies nothing until resumed; its view keeps serving.
    Pause {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
    },
    /// Resume a paused projector, or restart a faulted one from its checkpoint.
    Resume {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
    },
    /// Rebuild a projector's view from scratch in the background, then switch to it.
    Reset {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
        /// Return at once instead of following the rebuild to its end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop a projector and delete its views.
    Delete {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
    },
    /// List the modules Prism stores (deployable by hash).
    Modules {
        #[command(flatten)]
        server: remote::ServerArg,
    },
    /// Append one event to STREAM.
    Append {
        #[command(flatten)]
        server: remote::ServerArg,
        /// The stream, e.g. `order-42`.
        stream: String,
        /// The event's type, e.g. `OrderPlaced`.
        #[arg(long = "type")]
        event_type: String,
        /// The event's data, as JSON.
        #[arg(long)]
        data: String,
        /// The event's metadata, as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// Append only if the stream has exactly this many events (0: a new stream).
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Import a history: FILE holds one event per line, {"stream", "type", "data",
    /// "metadata"?, "id"?}, appended in file order in atomic batches over their streams.
    ///
    /// Resumable: run it again after an interruption and it goes on where it stopped, without
    /// appending anything twice (progress is kept in FILE.import-state; each batch is sent under
    /// an idempotency key taken from the file's content).
    Import {
        #[command(flatten)]
        server: remote::ServerArg,
        /// The JSONL file.
        file: PathBuf,
        /// Events per append (at most the server's `max_append_events`, 10000 by default).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Where the import's progress is kept [default: FILE.import-state].
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Read the events of STREAM.
    Read {
        #[command(flatten)]
        server: remote::ServerArg,
        stream: String,
        /// First stream version to read.
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the value under KEY in projector NAME's view.
    Get {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
        key: String,
    },
    /// List entries of projector NAME's view in key order.
    Scan {
        #[command(flatten)]
        server: remote::ServerArg,
        name: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this key (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List projectors: state, module, checkpoint, lag.
    Ls {
        #[command(flatten)]
        server: remote::ServerArg,
    },
    /// Show a cluster as the node at --url sees it: the live nodes, and which node owns each
    /// projector under which lease; or drain a node, undo it, or snapshot a projector's views.
    Cluster {
        #[command(flatten)]
        server: remote::ServerArg,
        #[command(subcommand)]
        action: Option<ClusterAction>,
    },
    /// (Internal) compile the component on stdin to an artifact on stdout; `prism serve` runs
    /// it to bound a compile's time and memory.
    #[command(hide = true)]
    CompileWorker {
        #[arg(long, action = clap::ArgAction::Set)]
        meter_fuel: bool,
        #[arg(long)]
        max_wasm_stack: usize,
        /// Address-space limit in bytes (0: none).
        #[arg(long)]
        max_memory: u64,
    },
}

/// `prism cluster`'s commands.
#[derive(clap::Subcommand)]
pub enum ClusterAction {
    /// Drain a node: its projectors move to the other nodes (each handed over with a
    /// snapshot), and it takes none until undrained, across its restarts. Waits until it owns
    /// nothing.
    Drain {
        node: String,
        /// Return once the drain is recorded, without waiting for the projectors to move.
        #[arg(long)]
        no_wait: bool,
    },
    /// Undo a node's drain: it takes its share of projectors again.
    Undrain { node: String },
    /// Have a projector's owner upload a snapshot of each of its views that changed.
    Snapshot { name: String },
}

/// `prism log`'s commands.
#[derive(Subcommand)]
pub enum LogCommand {
    /// Copy the data dir's event log (log.redb) into NATS JetStream at the same positions, so
    /// the data dir's views and checkpoints carry over to `prism serve --event-log URLS`.
    ///
    /// Stop Prism first: the log is opened exclusively. Every event keeps its position, stream,
    /// version, type, data, metadata and timestamp; events go in atomic batches, each expecting
    /// JetStream's last position to be the one before it. Safe to run again: when JetStream
    /// already holds the log's first events (its first and last held are compared, field by
    /// field) the copy goes on after them, and one that went on from the log (Prism ran on it
    /// since) needs nothing; a JetStream holding other events is refused and nothing is
    /// copied. The data dir then records that it follows JetStream (a data dir following one
    /// JetStream log is copied only into that one). Not copied: the idempotency keys and event
    /// ids the log remembers, so a retry of an append made before the copy is not recognised
    /// after it.
    Migrate {
        /// The data dir whose log to copy.
        #[arg(long = "from", value_name = "DATA_DIR")]
        data_dir: PathBuf,
        /// The NATS servers: `nats://HOST:PORT`, comma-separated.
        #[arg(long = "to", value_name = "URLS")]
        urls: String,
        /// Replicas of the JetStream stream when it is created (1, or 3 in a cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        #[command(flatten)]
        nats: serve::NatsArgs,
    },
}

/// Runs `cli`'s command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::CompileWorker {
        meter_fuel,
        max_wasm_stack,
        max_memory,
    } = cli.command
    {
        std::process::exit(crate::engine::compile_worker(
            meter_fuel,
            max_wasm_stack,
            max_memory,
        ));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(args) => serve::run(&args, &runtime),
        Command::New { name, dir, sdk } => kit::new(&name, &dir, sdk),
        Command::Build { dir } => runtime.block_on(kit::build(dir)),
        Command::Test {
            fixture,
            expect,
            wasm,
            dir,
            config,
        } => {
            serve::init_tracing(crate::config::LogFormat::Text);
            runtime.block_on(kit::test(&fixture, expect.as_deref(), wasm, dir, &config))
        }
        Command::Repair { data_dir } => kit::repair(&data_dir),
        Command::Log(LogCommand::Migrate {
            data_dir,
            urls,
            replicas,
            nats,
        }) => log::migrate(&data_dir, &urls, replicas, nats.into()),
        remote => {
            serve::init_tracing(crate::config::LogFormat::Text);
            runtime.block_on(remote::run(remote))
        }
    }
}
