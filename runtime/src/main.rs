//! The `prism` command: the server, and a client for its HTTP API.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use prism::config::{Config, LogFormat};
use prism::server::{Server, ServerConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Prism: a WebAssembly projection runtime for event-sourced systems.
///
/// Events are appended to a durable log; projectors (sandboxed Wasm components) turn them into
/// views you query over HTTP. `prism serve` runs the server; the other commands talk to it.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Prism: open (or create) the data dir, resume every projector, serve the HTTP API.
    ///
    /// Settings come from defaults, then a TOML file (`--config`, else `./prism.toml` when it
    /// exists), then `PRISM_...` environment variables, then flags.
    Serve(Box<ServeArgs>),
    /// Create a projector crate NAME: Cargo.toml against the guest SDK, a commented example,
    /// sample events (fixtures/events.jsonl) and the view they give (fixtures/expected.json).
    New {
        /// The crate's name (lowercase letters, digits, '-', '_').
        name: String,
        /// Where to create it.
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
    /// Upload a compiled projector (`.wasm`) as NAME, or redeploy a stored module by hash.
    ///
    /// Redeploying a projector is a hot reload: with the same view schema version the new code
    /// continues from the checkpoint; with a new one a fresh view is rebuilt in the background
    /// (a progress bar shows it) while the old one keeps serving, then queries switch over.
    Deploy {
        #[command(flatten)]
        server: ServerArg,
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
        #[arg(long)]
        mode: Option<String>,
        /// What to do with an event the module fails on: `stop` (fault; the default) or `skip`
        /// (record a dead letter and go on). Default: keep the current policy.
        #[arg(long)]
        on_error: Option<String>,
        /// Return at once instead of following a rebuild to its end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Replay projector NAME from scratch and compare with its live view (exit 1 if they differ).
    Verify {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
    /// List the events projector NAME skipped (dead letters).
    DeadLetters {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        /// Only dead letters after this log position.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Apply the dead letter at POSITION of projector NAME again, with its current code.
    Retry {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        position: u64,
    },
    /// Discard the dead letter at POSITION of projector NAME.
    Discard {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        position: u64,
    },
    /// Show one projector's status (state, module, generation, checkpoint, lag, rebuild).
    Status {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
    /// Pause a projector: it applies nothing until resumed; its view keeps serving.
    Pause {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
    /// Resume a paused projector, or restart a faulted one from its checkpoint.
    Resume {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
    /// Rebuild a projector's view from scratch in the background, then switch to it.
    Reset {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        /// Return at once instead of following the rebuild to its end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop a projector and delete its views.
    Delete {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
    /// List the modules Prism stores (deployable by hash).
    Modules {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Append one event to STREAM.
    Append {
        #[command(flatten)]
        server: ServerArg,
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
    /// Read the events of STREAM.
    Read {
        #[command(flatten)]
        server: ServerArg,
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
        server: ServerArg,
        name: String,
        key: String,
    },
    /// List entries of projector NAME's view in key order.
    Scan {
        #[command(flatten)]
        server: ServerArg,
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
        server: ServerArg,
    },
}

/// `prism serve`'s flags; each overrides the environment variable named beside it, which
/// overrides the config file.
#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML config file (default: `./prism.toml` when it exists).
    #[arg(long, env = "PRISM_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective config (tokens masked) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Where Prism keeps the log, modules and views [default: prism-data].
    #[arg(long, env = "PRISM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "PRISM_LISTEN")]
    listen: Option<SocketAddr>,
    /// Log format: `text` (readable) or `json` (one object per line) [default: text].
    #[arg(long, env = "PRISM_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Largest module upload, in bytes [default: 64 MiB].
    #[arg(long, env = "PRISM_MAX_MODULE_BYTES")]
    max_module_bytes: Option<usize>,
    /// Instructions (wasmtime fuel) one event may use before its projector traps.
    #[arg(long, env = "PRISM_FUEL_PER_EVENT")]
    fuel_per_event: Option<u64>,
    /// Largest linear memory of a projector instance, in bytes [default: 64 MiB].
    #[arg(long, env = "PRISM_MAX_MEMORY_BYTES")]
    max_memory_bytes: Option<usize>,
    /// Largest Wasm stack of a projector instance, in bytes [default: 512 KiB].
    #[arg(long, env = "PRISM_MAX_WASM_STACK")]
    max_wasm_stack: Option<usize>,
    /// Most events in one append request [default: 10000].
    #[arg(long, env = "PRISM_MAX_APPEND_EVENTS")]
    max_append_events: Option<usize>,
    /// Seconds a request may take before it is answered 408 [default: 60].
    #[arg(long, env = "PRISM_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    /// Seconds a projector may be behind the log without progress before `/ready` fails
    /// [default: 30].
    #[arg(long, env = "PRISM_STALL_AFTER_SECS")]
    stall_after_secs: Option<u64>,
    /// Bearer token required for deploys and projector changes (default: none, open).
    #[arg(long, env = "PRISM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Bearer token required for appends (the admin token works too).
    #[arg(long, env = "PRISM_WRITE_TOKEN", hide_env_values = true)]
    write_token: Option<String>,
    /// Bearer token required for reads (the write and admin tokens work too).
    #[arg(long, env = "PRISM_READ_TOKEN", hide_env_values = true)]
    read_token: Option<String>,
}

impl ServeArgs {
    /// The config file's settings overridden by the environment and flags.
    fn config(&self) -> Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        fn set<T: Clone>(field: &mut T, given: &Option<T>) {
            if let Some(value) = given {
                *field = value.clone();
            }
        }
        set(&mut config.data_dir, &self.data_dir);
        set(&mut config.listen, &self.listen);
        set(&mut config.log_format, &self.log_format);
        set(&mut config.limits.max_module_bytes, &self.max_module_bytes);
        set(
            &mut config.limits.max_append_events,
            &self.max_append_events,
        );
        set(
            &mut config.limits.request_timeout_secs,
            &self.request_timeout_secs,
        );
        set(&mut config.limits.stall_after_secs, &self.stall_after_secs);
        set(&mut config.sandbox.fuel_per_event, &self.fuel_per_event);
        set(&mut config.sandbox.max_memory_bytes, &self.max_memory_bytes);
        set(&mut config.sandbox.max_wasm_stack, &self.max_wasm_stack);
        for (token, given) in [
            (&mut config.tokens.admin, &self.admin_token),
            (&mut config.tokens.write, &self.write_token),
            (&mut config.tokens.read, &self.read_token),
        ] {
            if given.is_some() {
                token.clone_from(given);
            }
        }
        Ok(config)
    }
}

#[derive(clap::Args)]
struct ServerArg {
    /// The Prism server to talk to.
    #[arg(long, env = "PRISM_URL", default_value = "http://127.0.0.1:7070")]
    url: String,
    /// Bearer token sent with every request.
    #[arg(long, env = "PRISM_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArg {
    /// An HTTP client that sends the token, if any.
    fn client(&self) -> Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("--token must be printable ASCII")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .build()?)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Command::Serve(args) = &cli.command {
        let config = args.config()?;
        config.check()?;
        if args.print_config {
            print!("{}", config.to_toml_masked());
            return Ok(());
        }
        init_tracing(config.log_format);
        return runtime.block_on(serve_until_signal(config.server_config()));
    }
    init_tracing(LogFormat::Text);
    runtime.block_on(run(cli.command))
}

/// Readable logs by default, JSON lines for production; `RUST_LOG` filters either.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(_) => unreachable!("handled in main"),
        Command::New { name, dir, sdk } => {
            let sdk = sdk.unwrap_or_else(|| PathBuf::from(prism::kit::BUILT_SDK_DIR));
            let root = prism::kit::new_project(&name, &dir, &sdk)?;
            println!("created {}", root.display());
            println!(
                "next: cd {} && prism build && prism test fixtures/events.jsonl --expect fixtures/expected.json",
                root.display()
            );
            Ok(())
        }
        Command::Build { dir } => {
            let built = tokio::task::spawn_blocking(move || prism::kit::build(&dir)).await??;
            println!(
                "built {} ({} bytes, module {})",
                built.wasm.display(),
                built.bytes,
                built.hash
            );
            Ok(())
        }
        Command::Test {
            fixture,
            expect,
            wasm,
            dir,
            config,
        } => test_projector(&fixture, expect.as_deref(), wasm, dir, &config).await,
        Command::Repair { data_dir } => {
            let repairs = prism::server::repair(&data_dir)?;
            if repairs.is_empty() {
                println!(
                    "{}: every file opens; nothing to repair",
                    data_dir.display()
                );
            }
            for prism::server::Repair::ViewMovedAside {
                file,
                moved_to,
                error,
            } in repairs
            {
                println!(
                    "damaged view {} moved to {} ({error}); its projector rebuilds it from the log at the next start",
                    file.display(),
                    moved_to.display()
                );
            }
            Ok(())
        }
        Command::Deploy {
            server,
            name,
            file,
            module,
            config,
            mode,
            on_error,
            no_wait,
        } => {
            let wasm = match &file {
                Some(file) => {
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
                }
                None => Vec::new(),
            };
            let mut query = Vec::new();
            query.extend(config.map(|c| ("config", c)));
            query.extend(mode.map(|m| ("mode", m)));
            query.extend(on_error.map(|p| ("on_error", p)));
            query.extend(module.map(|m| ("module", m)));
            let reply = server
                .client()?
                .put(format!("{}/projectors/{name}", server.url))
                .query(&query)
                .body(wasm)
                .send()
                .await;
            let deployed = json_reply(reply).await?;
            println!("{}", serde_json::to_string_pretty(&deployed)?);
            if deployed["mode"] == "rebuild" && !no_wait {
                follow_rebuild(&server, &name).await?;
            }
            Ok(())
        }
        Command::Status { server, name } => {
            let url = format!("{}/projectors/{name}", server.url);
            print_json(server.client()?.get(url).send().await).await
        }
        Command::Pause { server, name } => action(&server, &name, "pause").await,
        Command::Resume { server, name } => action(&server, &name, "resume").await,
        Command::Reset {
            server,
            name,
            no_wait,
        } => {
            action(&server, &name, "reset").await?;
            if !no_wait {
                follow_rebuild(&server, &name).await?;
            }
            Ok(())
        }
        Command::Delete { server, name } => {
            let url = format!("{}/projectors/{name}", server.url);
            print_json(server.client()?.delete(url).send().await).await
        }
        Command::Verify { server, name } => {
            let url = format!("{}/projectors/{name}/verify", server.url);
            let report = json_reply(server.client()?.post(url).send().await).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report["identical"] != true {
                bail!("the live view of {name} differs from a replay of the log");
            }
            Ok(())
        }
        Command::DeadLetters {
            server,
            name,
            after,
        } => {
            let url = format!("{}/projectors/{name}/dead-letters", server.url);
            print_json(
                server
                    .client()?
                    .get(url)
                    .query(&[("after", after)])
                    .send()
                    .await,
            )
            .await
        }
        Command::Retry {
            server,
            name,
            position,
        } => {
            let url = format!(
                "{}/projectors/{name}/dead-letters/{position}/retry",
                server.url
            );
            print_json(server.client()?.post(url).send().await).await
        }
        Command::Discard {
            server,
            name,
            position,
        } => {
            let url = format!("{}/projectors/{name}/dead-letters/{position}", server.url);
            print_json(server.client()?.delete(url).send().await).await
        }
        Command::Modules { server } => {
            print_json(
                server
                    .client()?
                    .get(format!("{}/modules", server.url))
                    .send()
                    .await,
            )
            .await
        }
        Command::Append {
            server,
            stream,
            event_type,
            data,
            metadata,
            expected_version,
        } => {
            let data: Value = serde_json::from_str(&data).context("--data must be JSON")?;
            let mut event = serde_json::json!({ "type": event_type, "data": data });
            if let Some(metadata) = metadata {
                event["metadata"] =
                    serde_json::from_str(&metadata).context("--metadata must be a JSON object")?;
            }
            let mut request = server
                .client()?
                .post(format!("{}/streams/{stream}/events", server.url))
                .json(&[event]);
            if let Some(v) = expected_version {
                request = request.query(&[("expected_version", v)]);
            }
            print_json(request.send().await).await
        }
        Command::Read {
            server,
            stream,
            from,
            limit,
        } => {
            let request = server
                .client()?
                .get(format!("{}/streams/{stream}", server.url))
                .query(&[("from", from), ("limit", limit as u64)]);
            print_json(request.send().await).await
        }
        Command::Get { server, name, key } => {
            let mut url = reqwest::Url::parse(&server.url).context("--url must be a URL")?;
            url.path_segments_mut()
                .map_err(|()| anyhow::anyhow!("--url cannot be a base URL"))?
                .pop_if_empty()
                .extend(["projectors", &name, "view"])
                .extend(key.split('/'));
            print_json(server.client()?.get(url).send().await).await
        }
        Command::Scan {
            server,
            name,
            prefix,
            after,
            limit,
        } => {
            let mut query = vec![("prefix", prefix), ("limit", limit.to_string())];
            query.extend(after.map(|a| ("after", a)));
            let request = server
                .client()?
                .get(format!("{}/projectors/{name}/view", server.url))
                .query(&query);
            print_json(request.send().await).await
        }
        Command::Ls { server } => ls(&server).await,
    }
}

/// `prism test`: runs the projector over the fixture and prints the view (and any difference
/// from the expected view, which fails the command).
async fn test_projector(
    fixture: &std::path::Path,
    expect: Option<&std::path::Path>,
    wasm: Option<PathBuf>,
    dir: PathBuf,
    config: &str,
) -> Result<()> {
    let events = prism::kit::read_fixture(fixture)?;
    let expected = expect
        .map(|path| -> Result<serde_json::Map<String, Value>> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} must be a JSON object of key → value", path.display()))
        })
        .transpose()?;
    let wasm = match wasm {
        Some(path) => path,
        None => {
            let built = tokio::task::spawn_blocking(move || prism::kit::build(&dir)).await??;
            eprintln!("built {}", built.wasm.display());
            built.wasm
        }
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let count = events.len();
    let name = wasm.file_stem().and_then(|s| s.to_str()).unwrap_or("test");
    let view = match prism::kit::run_fixture(name, &bytes, events, config).await? {
        prism::kit::Outcome::View(view) => view,
        prism::kit::Outcome::Faulted {
            message,
            position,
            view,
        } => {
            println!("{}", serde_json::to_string_pretty(&view)?);
            let at = position.map_or_else(String::new, |p| format!(" at event {p} (line order)"));
            bail!("the projector failed{at}: {message}");
        }
    };
    println!("{}", serde_json::to_string_pretty(&view)?);
    let Some((path, expected)) = expect.zip(expected) else {
        eprintln!("{count} events applied; {} keys in the view", view.len());
        return Ok(());
    };
    let differences = prism::kit::diff(&expected, &view);
    if differences.is_empty() {
        eprintln!(
            "ok: {count} events applied; the view matches {} ({} keys)",
            path.display(),
            view.len()
        );
        return Ok(());
    }
    for line in &differences {
        eprintln!("{line}");
    }
    bail!(
        "the view differs from {} in {} keys",
        path.display(),
        differences.len()
    )
}

async fn serve_until_signal(config: ServerConfig) -> Result<()> {
    let data_dir = config.data_dir.clone();
    let server = Server::start(config).await?;
    println!(
        "prism serving on http://{} with data in {}",
        server.addr(),
        data_dir.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A reply's JSON body; an error status becomes an error with the server's message.
async fn json_reply(reply: reqwest::Result<reqwest::Response>) -> Result<Value> {
    let reply = reply.context("cannot reach the Prism server (is `prism serve` running?)")?;
    let status = reply.status();
    let text = reply.text().await?;
    match serde_json::from_str::<Value>(&text) {
        Ok(body) if status.is_success() => Ok(body),
        Ok(body) => bail!(
            "{status}: {}",
            body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string)
        ),
        Err(_) => bail!("{status}: {text}"),
    }
}

/// Prints a JSON reply; an error status becomes the command's error.
async fn print_json(reply: reqwest::Result<reqwest::Response>) -> Result<()> {
    let body = json_reply(reply).await?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

/// `POST /projectors/{name}/{verb}`, printing the resulting status.
async fn action(server: &ServerArg, name: &str, verb: &str) -> Result<()> {
    let url = format!("{}/projectors/{name}/{verb}", server.url);
    print_json(server.client()?.post(url).send().await).await
}

/// Shows a rebuild's progress until it has been promoted (or has failed).
async fn follow_rebuild(server: &ServerArg, name: &str) -> Result<()> {
    let url = &server.url;
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rebuilding {prefix} [{bar:40}] {percent:>3}% {msg}",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    let status_url = format!("{url}/projectors/{name}");
    loop {
        let status = json_reply(server.client()?.get(&status_url).send().await).await?;
        let Some(rebuild) = status["rebuild"].as_object() else {
            if let Some(error) = status["error"]["message"].as_str() {
                bar.abandon_with_message(format!("projector faulted: {error}"));
                bail!("{name} faulted: {error}");
            }
            bar.finish_with_message(format!(
                "done: generation {} is serving at checkpoint {}",
                status["generation"], status["checkpoint"]
            ));
            return Ok(());
        };
        if let Some(error) = rebuild.get("error").and_then(|e| e["message"].as_str()) {
            bar.abandon_with_message(format!("the rebuild faulted: {error}"));
            bail!("the rebuild of {name} faulted (the old view keeps serving): {error}");
        }
        let percent = rebuild["percent"].as_f64().unwrap_or_default();
        bar.set_position((percent * 10.0) as u64);
        bar.set_message(format!(
            "{} / {} events, {} events/s, ETA {}",
            rebuild["checkpoint"],
            status["head"],
            rebuild["events_per_sec"],
            rebuild["eta_secs"]
                .as_f64()
                .map_or("-".to_string(), |s| format!("{s:.0}s"))
        ));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn ls(server: &ServerArg) -> Result<()> {
    let url = &server.url;
    let reply = server
        .client()?
        .get(format!("{url}/projectors"))
        .send()
        .await
        .context("cannot reach the Prism server (is `prism serve` running?)")?;
    if !reply.status().is_success() {
        bail!("{}: {}", reply.status(), reply.text().await?);
    }
    let body: Value = reply.json().await?;
    println!(
        "{:<24} {:<12} {:<14} {:>12} {:>10}  ERROR",
        "NAME", "STATE", "MODULE", "CHECKPOINT", "LAG"
    );
    for p in body["projectors"].as_array().into_iter().flatten() {
        let module = p["module"].as_str().unwrap_or("");
        println!(
            "{:<24} {:<12} {:<14} {:>12} {:>10}  {}",
            p["name"].as_str().unwrap_or(""),
            p["state"].as_str().unwrap_or(""),
            &module[..module.len().min(12)],
            p["checkpoint"].as_u64().unwrap_or_default(),
            p["lag"].as_u64().unwrap_or_default(),
            p["error"]["message"].as_str().unwrap_or(""),
        );
    }
    println!("log head: {}", body["head"]);
    Ok(())
}
