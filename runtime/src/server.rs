//! Prism assembled: the log, the engine, the registry and the HTTP API on one data dir.

use crate::cluster::Cluster;
use crate::data_dir::DataDir;
use crate::engine::Engine;
use crate::engine::Sandbox;
use crate::http::{AppState, RequestLimits, router};
use crate::log::EventLog;
use crate::log::jetstream::{JetStreamLog, JetStreamOptions, NatsSecurity};
use crate::projector::{Registry, RegistryOptions, Spawner};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where Prism keeps its files and where it listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data dir: `log.redb`, `catalog.redb`, `modules/`, `projectors/`.
    pub data_dir: PathBuf,
    /// The address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Request limits.
    pub limits: RequestLimits,
    /// The sandbox projectors run in.
    pub sandbox: Sandbox,
    /// Bearer tokens (none: open, fit for loopback only).
    pub tokens: crate::http::Tokens,
    /// `Host` and `Origin` names accepted beyond IP addresses and localhost (see
    /// [`crate::http::AllowedHosts`]).
    pub allowed_hosts: Vec<String>,
    /// How projector threads are started (the default starts OS threads; tests inject
    /// failures).
    pub spawner: Spawner,
    /// Appends that may wait for the log's writer; more are answered 503 with `Retry-After`.
    pub append_queue: usize,
    /// How long the log remembers appends' idempotency keys and event ids.
    pub idempotency_window: std::time::Duration,
    /// How often a projector makes its view durable (see
    /// [`RegistryOptions::view_sync_interval`](crate::projector::RegistryOptions)).
    pub view_sync_interval: std::time::Duration,
    /// The `prism` executable that compiles uploads in bounded worker processes
    /// (`prism compile-worker`); `None` compiles them in this process, unbounded in time and
    /// memory (Prism as a library). `prism serve` sets it to itself.
    pub compile_worker: Option<PathBuf>,
    /// Modules kept per projector for rollback; stored modules no projector needs are deleted.
    pub keep_modules: usize,
    /// Bytes of view writes the catch-up caches of all projectors hold at most (0: none; every
    /// batch commits). Default [`CACHE_BYTES`](crate::store::CACHE_BYTES).
    pub view_cache_bytes: usize,
    /// How long a cached write waits at most before it commits. Default
    /// [`CACHE_INTERVAL`](crate::store::CACHE_INTERVAL).
    pub view_cache_interval: std::time::Duration,
    /// Where the events are: `None` for the embedded log in the data dir, or NATS JetStream
    /// at these `nats://` addresses (comma-separated).
    pub event_log: Option<String>,
    /// Replicas of the JetStream stream when Prism creates it.
    pub event_log_replicas: usize,
    /// The JetStream log's servers' security.
    pub nats: NatsSecurity,
    /// The cluster this node joins (`None`: Prism runs alone). Needs the JetStream log.
    pub cluster: Option<crate::cluster::ClusterOptions>,
}

impl ServerConfig {
    /// Defaults for everything but where.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            listen,
            limits: RequestLimits::default(),
            sandbox: Sandbox::default(),
            tokens: crate::http::Tokens::default(),
            allowed_hosts: Vec::new(),
            spawner: Spawner::default(),
            view_sync_interval: crate::store::DURABLE_INTERVAL,
            append_queue: crate::log::APPEND_QUEUE,
            idempotency_window: crate::log::IDEMPOTENCY_WINDOW,
            compile_worker: None,
            keep_modules: crate::projector::catalog::KEEP_MODULES,
            view_cache_bytes: crate::store::CACHE_BYTES,
            view_cache_interval: crate::store::CACHE_INTERVAL,
            event_log: None,
            event_log_replicas: 1,
            nats: NatsSecurity::default(),
            cluster: None,
        }
    }
}

/// A running Prism.
pub struct Server {
    addr: SocketAddr,
    registry: Registry,
    /// The cluster this node is part of, and its loop.
    cluster: Option<(Arc<Cluster>, JoinHandle<()>)>,
    shutdown: oneshot::Sender<()>,
    closing: tokio::sync::watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    /// The other nodes' listener (TLS between nodes).
    peers: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Opens the data dir, starts every deployed projector from its checkpoint, and serves the
    /// API.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        config.tokens.check().map_err(anyhow::Error::msg)?;
        let root = config.data_dir.clone();
        let sandbox = config.sandbox;
        let log_options = crate::log::LogOptions {
            queue: config.append_queue,
            idempotency_window: config.idempotency_window,
        };
        let worker = config.compile_worker.clone();
        let jetstream = config.event_log.as_deref().map(|urls| JetStreamOptions {
            idempotency_window: config.idempotency_window,
            security: config.nats.clone(),
            ..JetStreamOptions::new(urls, config.event_log_replicas)
        });
        let mut options = RegistryOptions {
            spawner: config.spawner.clone(),
            view_sync_interval: config.view_sync_interval,
            keep_modules: config.keep_modules,
            cache: crate::store::CacheBudget::new(
                config.view_cache_bytes,
                config.view_cache_interval,
            ),
            shared: None,
        };
        if config.cluster.is_some() && jetstream.is_none() {
            anyhow::bail!(
                "a cluster needs the JetStream event log: give --event-log nats://... with --node-id"
            );
        }
        let dir = DataDir::create(&root)
            .with_context(|| format!("creating the data dir {}", root.display()))?;
        let opening = dir.clone();
        let (log, client) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let dir = opening;
            Ok(match jetstream {
                None => {
                    dir.bind_log(crate::data_dir::EMBEDDED)?;
                    (EventLog::open_with(&dir.log(), log_options)?, None)
                }
                Some(options) => {
                    let urls = crate::log::jetstream::masked(&options.urls);
                    let options = JetStreamOptions {
                        index: Some(dir.jetstream_index()),
                        ..options
                    };
                    let log = JetStreamLog::connect_checked(options, |log| dir.bind_log(log))
                        .with_context(|| format!("opening the event log at {urls}"))?;
                    let client = log.client();
                    (EventLog::new(log), Some(client))
                }
            })
        })
        .await??;
        let cluster = match (&config.cluster, client) {
            (Some(cluster), Some(client)) => {
                let joined = Cluster::join(client, log.clone(), cluster.clone())
                    .await
                    .context("joining the cluster")?;
                options.shared = Some(joined.clone());
                Some(joined)
            }
            _ => None,
        };
        let opened = log.clone();
        let registry = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let engine = Engine::with_compile_worker(Some(dir.cache()), sandbox, worker)
                .map_err(|e| anyhow::anyhow!("starting the WebAssembly engine: {e:#}"))?;
            Ok(Registry::open(&dir, engine, opened, options)?)
        })
        .await??;
        let routes = match &cluster {
            Some(cluster) => Some(crate::http::ClusterRoutes {
                cluster: cluster.clone(),
                forwarder: crate::cluster::Forwarder::new(
                    &cluster.options().node_id,
                    &cluster.options().token,
                    cluster.options().tls.as_ref(),
                )?,
            }),
            None => None,
        };
        let mut allowed_hosts = config.allowed_hosts.clone();
        if let Some(cluster) = &config.cluster
            && let Ok(url) = cluster.advertise_url.parse::<axum::http::Uri>()
            && let Some(authority) = url.authority()
        {
            allowed_hosts.push(authority.to_string());
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let closing = tokio::sync::watch::Sender::new(false);
        let app = router(AppState::from(crate::http::Shared {
            log,
            registry: registry.clone(),
            limits: config.limits,
            tokens: config.tokens.clone(),
            allowed_hosts: match &cluster {
                Some(cluster) => {
                    crate::http::AllowedHosts::new(allowed_hosts).with_peers(cluster.peers())
                }
                None => crate::http::AllowedHosts::new(allowed_hosts),
            },
            metrics: crate::http::Metrics::default(),
            closing: closing.subscribe(),
            subscribers: Arc::new(tokio::sync::Semaphore::new(config.limits.max_subscribers)),
            cluster: routes,
        }));
        if !addr.ip().is_loopback() && config.tokens.admin.is_none() {
            tracing::warn!(%addr, "listening beyond loopback without an admin token: anyone who can reach this address can deploy and delete projectors (set --admin-token)");
        }
        // TLS between nodes: the peers' own listener, mutual TLS, the same API.
        let peers = match config.cluster.as_ref().and_then(|c| c.tls.clone()) {
            Some(tls) => {
                let acceptor = tls_listener::rustls::TlsAcceptor::from(tls.server_config()?);
                let listener = tokio::net::TcpListener::bind(tls.listen)
                    .await
                    .with_context(|| format!("listening for other nodes on {}", tls.listen))?;
                let listener = tls_listener::TlsListener::new(acceptor, listener);
                let mut closed = closing.subscribe();
                let app = app
                    .clone()
                    .layer(axum::Extension(crate::http::PeerListener));
                Some(tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = closed.wait_for(|closed| *closed).await;
                        })
                        .await
                }))
            }
            None => None,
        };
        let (shutdown, stopped) = oneshot::channel();
        let http = tokio::spawn(async move {
            let listener = crate::http::BoundedListener::new(
                listener,
                config.limits.max_connections,
                config.limits.idle_timeout,
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        // The loop starts once the API answers: forwarded requests reach a node that serves.
        let cluster = cluster.map(|cluster| {
            let running = cluster.start(registry.clone());
            (cluster, running)
        });
        tracing::info!(%addr, data_dir = %config.data_dir.display(), "prism is serving");
        Ok(Server {
            addr,
            registry,
            cluster,
            shutdown,
            closing,
            http,
            peers,
        })
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The deployed projectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stops the way a crash stops a node of a cluster, for failover measurements: its loops
    /// end without leaving (its leases and membership expire by themselves, as after `kill
    /// -9`), its API closes, its projectors stop. [`Server::stop`] is the shutdown.
    pub async fn halt(self) {
        self.close(false).await;
    }

    /// Stops serving, then stops every projector (each makes its view durable).
    pub async fn stop(self) {
        // A cluster's other nodes take this one's projectors over at once.
        self.close(true).await;
    }

    /// Ends the cluster's loops (and, `leaving`, hands every projector over and leaves the
    /// set), then stops serving and stops every projector.
    async fn close(self, leaving: bool) {
        if let Some((cluster, running)) = self.cluster {
            running.abort();
            let _ = running.await;
            if leaving {
                cluster.leave(&self.registry).await;
            }
        }
        let _ = self.shutdown.send(());
        self.closing.send_replace(true);
        let _ = self.http.await;
        if let Some(peers) = self.peers {
            let _ = peers.await;
        }
        let registry = self.registry;
        let _ = tokio::task::spawn_blocking(move || registry.shutdown()).await;
    }
}

/// What [`repair`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// A damaged view file was moved aside (to `moved_to`); its projector rebuilds it from the
    /// log at the next start.
    ViewMovedAside {
        file: PathBuf,
        moved_to: PathBuf,
        error: String,
    },
}

/// Checks every file of a data dir (Prism must not be running on it). Damaged view files are
/// moved aside so their projectors rebuild them from the log at the next start; a damaged log
/// or catalog is an error (restore it from a backup). Returns what was repaired.
pub fn repair(data_dir: &std::path::Path) -> anyhow::Result<Vec<Repair>> {
    let dir = DataDir::new(data_dir);
    EventLog::open(&dir.log())?;
    crate::projector::catalog::Catalog::open(&dir, crate::projector::catalog::KEEP_MODULES)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open the catalog {}: {e}; restore it from a backup",
                dir.catalog().display()
            )
        })?;
    let mut repairs = Vec::new();
    let projectors = dir.projectors();
    let Ok(dirs) = std::fs::read_dir(&projectors) else {
        return Ok(repairs);
    };
    for dir in dirs.flatten() {
        for file in std::fs::read_dir(dir.path())?.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "redb") {
                continue;
            }
            if let Err(e) = crate::store::ViewStore::open(&path) {
                let moved_to = path.with_extension(format!(
                    "redb.damaged-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                ));
                std::fs::rename(&path, &moved_to)?;
                repairs.push(Repair::ViewMovedAside {
                    file: path,
                    moved_to,
                    error: e.to_string(),
                });
            }
        }
    }
    Ok(repairs)
}
