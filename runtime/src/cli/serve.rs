//! `prism serve`: settings from defaults, the config file, the environment and flags (each
//! overriding the one before, merged once by [`Config::load`]), then the server until a signal.

use crate::config::{Config, LogFormat};
use crate::server::{Server, ServerConfig};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `prism serve`'s flags; each overrides the environment variable named beside it, which
/// overrides the config file. Serialized (unset ones left out), they are the last layer of
/// the config.
#[derive(clap::Args, Serialize)]
pub struct ServeArgs {
    /// A TOML config file (default: `./prism.toml` when it exists).
    #[arg(long, env = "PRISM_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective config (tokens masked) as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// Where Prism keeps the log, modules and views [default: prism-data].
    #[arg(long, env = "PRISM_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "PRISM_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Log format: `text` (readable) or `json` (one object per line) [default: text].
    #[arg(long, env = "PRISM_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    /// A host name (or `name:port`) this Prism may be reached by, besides its IP addresses and
    /// localhost; repeat it, or `*` for any (PRISM_ALLOWED_HOSTS: comma-separated).
    #[arg(
        long = "allowed-host",
        env = "PRISM_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_hosts: Vec<String>,
    /// Milliseconds between two durable commits of a projector's view [default: 30000].
    #[arg(long, env = "PRISM_VIEW_SYNC_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    view_sync_interval_ms: Option<u64>,
    /// Bytes of view writes projectors catching up hold in memory, all together, before they
    /// commit them (0: commit every batch) [default: 268435456].
    #[arg(long, env = "PRISM_VIEW_CACHE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    view_cache_bytes: Option<usize>,
    /// Milliseconds a cached view write waits at most before it commits [default: 1000].
    #[arg(long, env = "PRISM_VIEW_CACHE_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    view_cache_interval_ms: Option<u64>,
    /// Appends that may wait for the log's writer; more are answered 503 [default: 4096].
    #[arg(long, env = "PRISM_APPEND_QUEUE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    append_queue: Option<usize>,
    /// Where the events are: NATS JetStream at `nats://HOST:PORT[,…]` (a user and password
    /// or a token as `nats://USER:PASS@HOST:PORT`; see also the `--nats-*` flags) [default:
    /// the embedded log in the data dir].
    #[arg(long, env = "PRISM_EVENT_LOG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    event_log: Option<String>,
    /// Replicas of the JetStream stream when Prism creates it [default: 1].
    #[arg(long, env = "PRISM_EVENT_LOG_REPLICAS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    event_log_replicas: Option<usize>,
    /// Seconds the log remembers appends' idempotency keys and event ids [default: 86400].
    #[arg(long, env = "PRISM_IDEMPOTENCY_WINDOW_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_window_secs: Option<u64>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(flatten)]
    tokens: TokenArgs,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    #[serde(skip_serializing_if = "ClusterArgs::is_empty")]
    cluster: ClusterArgs,
}

/// The `[cluster]` flags: this node's part in a cluster of Prism nodes on one JetStream log.
#[derive(clap::Args, Serialize)]
pub struct ClusterArgs {
    /// This node's id in a cluster (needs --event-log nats://…, --advertise-url and
    /// --cluster-token); the same across its restarts, unique among the nodes.
    #[arg(long, env = "PRISM_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// Where the other nodes reach this one: `http://HOST:PORT`.
    #[arg(long, env = "PRISM_ADVERTISE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_url: Option<String>,
    /// The secret the nodes of a cluster present to each other (the same on every node).
    #[arg(long, env = "PRISM_CLUSTER_TOKEN", hide_env_values = true)]
    #[serde(rename = "token", skip_serializing_if = "Option::is_none")]
    cluster_token: Option<String>,
    /// Milliseconds a node's lease on a projector lives without renewal [default: 6000].
    #[arg(long, env = "PRISM_LEASE_TTL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl_ms: Option<u64>,
    /// Milliseconds between two snapshots of a projector's changed views, uploaded by its
    /// owner (0: only at handover) [default: 30000].
    #[arg(long, env = "PRISM_SNAPSHOT_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_interval_ms: Option<u64>,
    /// The most bytes a second one snapshot's upload takes from the servers [default: 0,
    /// unbounded].
    #[arg(long, env = "PRISM_SNAPSHOT_UPLOAD_BYTES_PER_SEC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_upload_bytes_per_sec: Option<u64>,
    /// TLS between nodes: the address this node serves other nodes on, over mutual TLS (with
    /// the three --cluster-tls-* files; --advertise-url is then https://HOST:PORT of it).
    #[arg(long, env = "PRISM_PEER_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_listen: Option<std::net::SocketAddr>,
    /// This node's PEM certificate chain for TLS between nodes, issued by --cluster-tls-ca.
    #[arg(long, env = "PRISM_CLUSTER_TLS_CERT")]
    #[serde(rename = "tls_cert", skip_serializing_if = "Option::is_none")]
    cluster_tls_cert: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(long, env = "PRISM_CLUSTER_TLS_KEY")]
    #[serde(rename = "tls_key", skip_serializing_if = "Option::is_none")]
    cluster_tls_key: Option<PathBuf>,
    /// The PEM CA that issued every node's certificate (the only one trusted between nodes).
    #[arg(long, env = "PRISM_CLUSTER_TLS_CA")]
    #[serde(rename = "tls_ca", skip_serializing_if = "Option::is_none")]
    cluster_tls_ca: Option<PathBuf>,
}

impl ClusterArgs {
    fn is_empty(&self) -> bool {
        self.node_id.is_none()
            && self.advertise_url.is_none()
            && self.cluster_token.is_none()
            && self.lease_ttl_ms.is_none()
            && self.snapshot_interval_ms.is_none()
            && self.snapshot_upload_bytes_per_sec.is_none()
            && self.peer_listen.is_none()
            && self.cluster_tls_cert.is_none()
            && self.cluster_tls_key.is_none()
            && self.cluster_tls_ca.is_none()
    }
}

/// The `[nats]` flags: the JetStream log's servers' security.
#[derive(clap::Args, Serialize)]
pub struct NatsArgs {
    /// A NATS credentials file (user JWT and NKey seed) for the JetStream log's servers.
    #[arg(long, env = "PRISM_NATS_CREDENTIALS")]
    #[serde(rename = "credentials", skip_serializing_if = "Option::is_none")]
    nats_credentials: Option<PathBuf>,
    /// PEM root certificates the NATS servers' certificates must chain to (TLS required).
    #[arg(long, env = "PRISM_NATS_TLS_CA")]
    #[serde(rename = "tls_ca", skip_serializing_if = "Option::is_none")]
    nats_tls_ca: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS with the NATS servers (with --nats-tls-key).
    #[arg(long, env = "PRISM_NATS_TLS_CERT")]
    #[serde(rename = "tls_cert", skip_serializing_if = "Option::is_none")]
    nats_tls_cert: Option<PathBuf>,
    /// The client certificate's PEM key.
    #[arg(long, env = "PRISM_NATS_TLS_KEY")]
    #[serde(rename = "tls_key", skip_serializing_if = "Option::is_none")]
    nats_tls_key: Option<PathBuf>,
}

impl From<NatsArgs> for crate::log::jetstream::NatsSecurity {
    fn from(args: NatsArgs) -> Self {
        crate::log::jetstream::NatsSecurity {
            credentials: args.nats_credentials,
            tls_ca: args.nats_tls_ca,
            tls_cert: args.nats_tls_cert,
            tls_key: args.nats_tls_key,
        }
    }
}

/// The `[limits]` flags.
#[derive(clap::Args, Serialize)]
struct LimitArgs {
    /// Largest module upload, in bytes [default: 64 MiB].
    #[arg(long, env = "PRISM_MAX_MODULE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_module_bytes: Option<usize>,
    /// Most events in one append request [default: 10000].
    #[arg(long, env = "PRISM_MAX_APPEND_EVENTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_append_events: Option<usize>,
    /// Seconds a request may take before it is answered 408 [default: 60].
    #[arg(long, env = "PRISM_REQUEST_TIMEOUT_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout_secs: Option<u64>,
    /// Seconds a projector may be behind the log without progress before `/ready` fails
    /// [default: 30].
    #[arg(long, env = "PRISM_STALL_AFTER_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    stall_after_secs: Option<u64>,
}

/// The `[sandbox]` flags.
#[derive(clap::Args, Serialize)]
struct SandboxArgs {
    /// Instructions (wasmtime fuel) one event may use before its projector traps.
    #[arg(long, env = "PRISM_FUEL_PER_EVENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    fuel_per_event: Option<u64>,
    /// Largest linear memory of a projector instance, in bytes [default: 64 MiB].
    #[arg(long, env = "PRISM_MAX_MEMORY_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_memory_bytes: Option<usize>,
    /// Largest Wasm stack of a projector instance, in bytes [default: 512 KiB].
    #[arg(long, env = "PRISM_MAX_WASM_STACK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wasm_stack: Option<usize>,
}

/// The `[tokens]` flags.
#[derive(clap::Args, Serialize)]
struct TokenArgs {
    /// Bearer token required for deploys and projector changes (default: none, open).
    #[arg(long, env = "PRISM_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(rename = "admin", skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    /// Bearer token required for appends (the admin token works too).
    #[arg(long, env = "PRISM_WRITE_TOKEN", hide_env_values = true)]
    #[serde(rename = "write", skip_serializing_if = "Option::is_none")]
    write_token: Option<String>,
    /// Bearer token required for reads (the write and admin tokens work too).
    #[arg(long, env = "PRISM_READ_TOKEN", hide_env_values = true)]
    #[serde(rename = "read", skip_serializing_if = "Option::is_none")]
    read_token: Option<String>,
}

/// Loads the config, then prints it or serves until Ctrl-C or SIGTERM.
pub fn run(args: &ServeArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), args)?;
    config.check()?;
    if args.print_config {
        print!("{}", config.to_toml_masked());
        return Ok(());
    }
    init_tracing(config.log_format);
    runtime.block_on(serve_until_signal(config.server_config()))
}

/// Readable logs by default, JSON lines for production; `RUST_LOG` filters either. Colours
/// only when stderr is a terminal.
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn serve_until_signal(config: ServerConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let server = Server::start(config).await?;
    println!(
        "prism serving on http://{} with data in {}",
        server.addr(),
        data_dir.display()
    );
    shutdown_signal().await?;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await?;
    Ok(())
}
