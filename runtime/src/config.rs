//! `prism serve`'s settings: defaults, then a TOML file, then `PRISM_...` environment variables,
//! then flags — each overriding the one before, merged once by [`Config::load`] (figment) into
//! the same types the server runs with: [`RequestLimits`] (`[limits]`) and [`Sandbox`]
//! (`[sandbox]`). The CLI (`cli::serve`) reads the environment and flags with clap and hands
//! them over as the last layer.
//!
//! ```toml
//! data_dir = "prism-data"
//! listen = "127.0.0.1:7070"
//! log_format = "text"          # or "json"
//! allowed_hosts = ["prism.internal"]   # printed only when set
//! view_sync_interval_ms = 30000
//! append_queue = 4096
//! idempotency_window_secs = 86400
//! keep_modules = 3
//! view_cache_bytes = 268435456
//! view_cache_interval_ms = 1000
//! event_log = "nats://127.0.0.1:4222"   # absent: the embedded log in the data dir
//! event_log_replicas = 1
//!
//! [nats]                        # the JetStream log's servers' security, each optional
//! credentials = "prism.creds"
//! tls_ca = "ca.pem"
//! tls_cert = "client.pem"
//! tls_key = "client-key.pem"
//!
//! [limits]
//! max_module_bytes = 67108864
//! max_append_events = 10000
//! request_timeout_secs = 60
//! stall_after_secs = 30
//! max_connections = 1024
//! max_subscribers = 256
//!
//! [sandbox]
//! fuel_per_event = 100000000
//! max_memory_bytes = 67108864
//! max_wasm_stack = 524288
//! max_value_bytes = 1048576
//! max_batch_write_bytes = 67108864
//! max_batch_writes = 100000
//! max_scan_entries = 10000
//! max_scan_bytes = 16777216
//! max_concurrent_compiles = 2
//! compile_timeout_ms = 60000
//! max_compile_memory_bytes = 4294967296
//!
//! [cluster]                     # a node of a cluster (needs event_log)
//! node_id = "n1"
//! advertise_url = "http://10.0.0.1:7070"
//! token = "..."
//! lease_ttl_ms = 6000
//! lease_margin_ms = 1000
//! snapshot_interval_ms = 30000  # how often an owner snapshots its views (0: at handover only)
//! snapshots_kept = 3            # snapshots kept per view
//! snapshot_upload_bytes_per_sec = 0  # at most this upload rate per snapshot (0: unbounded)
//! peer_listen = "0.0.0.0:7443"  # TLS between nodes (an option): the peers' listener,
//! tls_cert = "node.pem"         #   this node's certificate and key, and the CA that
//! tls_key = "node-key.pem"      #   issued every node's (advertise_url is then
//! tls_ca = "cluster-ca.pem"     #   https://HOST:PEER_PORT)
//!
//! [tokens]
//! admin = "..."
//! write = "..."
//! read = "..."
//! ```

use crate::engine::Sandbox;
use crate::http::{RequestLimits, Tokens};
use crate::log::jetstream::NatsSecurity;
use crate::server::ServerConfig;
use anyhow::Context;
use figment::Figment;
use figment::providers::Serialized;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file `prism serve` reads when no `--config` is given and the file exists.
pub const DEFAULT_FILE: &str = "prism.toml";

/// Everything `prism serve` can be told: the same [`RequestLimits`] and [`Sandbox`] the HTTP
/// layer and the engine run with, declared once, with their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where Prism keeps the log, modules and views.
    pub data_dir: PathBuf,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// `text` (readable, the default) or `json` (one object per line, for log shippers).
    pub log_format: LogFormat,
    /// `Host` and `Origin` names accepted beyond IP addresses and localhost (`*`: any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// How often, in milliseconds, a projector makes its view durable: a crash replays at
    /// most about this much of the log per projector.
    pub view_sync_interval_ms: u64,
    /// Appends that may wait for the log's writer; more are answered 503 with `Retry-After`.
    pub append_queue: usize,
    /// How long, in seconds, the log remembers appends' idempotency keys and event ids.
    pub idempotency_window_secs: u64,
    /// Modules kept per projector for rollback; stored modules no projector needs are deleted.
    pub keep_modules: usize,
    /// Bytes of view writes the catch-up caches of all projectors hold at most while they
    /// catch up (0: none, every batch commits).
    pub view_cache_bytes: usize,
    /// How long, in milliseconds, a cached view write waits at most before it commits.
    pub view_cache_interval_ms: u64,
    /// Where the events are: absent for the embedded log in the data dir, or NATS JetStream at
    /// `nats://HOST:PORT[,nats://HOST:PORT…]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_log: Option<String>,
    /// Replicas of the JetStream stream when Prism creates it (3 in a cluster).
    pub event_log_replicas: usize,
    pub limits: RequestLimits,
    pub sandbox: Sandbox,
    #[serde(skip_serializing_if = "NatsSecurity::is_empty")]
    pub nats: NatsSecurity,
    #[serde(skip_serializing_if = "Tokens::is_empty")]
    pub tokens: Tokens,
    #[serde(skip_serializing_if = "ClusterSettings::is_unset")]
    pub cluster: ClusterSettings,
}

/// The `[cluster]` table: this node's part in a cluster of Prism nodes sharing one JetStream
/// log (none: Prism runs alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id, unique in the cluster and the same across restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Where the other nodes reach this one (`http://HOST:PORT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// The secret the nodes present to each other (never printed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// How long, in milliseconds, a lease on a projector lives without renewal: how long a
    /// dead node's projectors wait for another owner.
    pub lease_ttl_ms: u64,
    /// How long, in milliseconds, before its lease expires a node stops acting as owner
    /// (more than the servers' clocks may drift apart over a TTL).
    pub lease_margin_ms: u64,
    /// How often, in milliseconds, a projector's owner uploads a snapshot of each of its views
    /// that changed (0: only when it hands the projector over). The log after the newest
    /// snapshot is what a new owner replays after a failover.
    pub snapshot_interval_ms: u64,
    /// Snapshots kept per view (the newest; older ones are deleted).
    pub snapshots_kept: usize,
    /// The most bytes a second one snapshot's upload takes from the servers (0: unbounded).
    pub snapshot_upload_bytes_per_sec: u64,
    /// TLS between nodes: where this node serves the requests others forward to it, over
    /// mutual TLS (with `tls_cert`, `tls_key` and `tls_ca`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_listen: Option<std::net::SocketAddr>,
    /// This node's certificate chain (PEM), issued by `tls_ca`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The CA (PEM) that issued every node's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_id: None,
            advertise_url: None,
            token: None,
            lease_ttl_ms: 6000,
            lease_margin_ms: 1000,
            snapshot_interval_ms: 30_000,
            snapshots_kept: 3,
            snapshot_upload_bytes_per_sec: 0,
            peer_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

/// Whether `id` can be a node's id: 1 to 64 letters, digits, '-' or '_'.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterSettings {
    fn is_unset(&self) -> bool {
        *self == ClusterSettings::default()
    }

    /// The node's options, when it joins a cluster; refuses an incomplete setting.
    fn options(&self, replicas: usize) -> anyhow::Result<Option<crate::cluster::ClusterOptions>> {
        let Some(node_id) = &self.node_id else {
            anyhow::ensure!(
                self.advertise_url.is_none() && self.token.is_none(),
                "[cluster] advertise_url and token need node_id (--node-id)"
            );
            return Ok(None);
        };
        anyhow::ensure!(
            valid_node_id(node_id),
            "node id {node_id:?}: use 1 to 64 letters, digits, '-' or '_'"
        );
        let Some(url) = &self.advertise_url else {
            anyhow::bail!(
                "a cluster node needs --advertise-url http://HOST:PORT (where the other nodes reach it)"
            );
        };
        let tls = self.tls()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        anyhow::ensure!(
            url.strip_prefix(scheme)
                .is_some_and(|u| u.starts_with("://"))
                && url
                    .parse::<axum::http::Uri>()
                    .is_ok_and(|u| u.authority().is_some()),
            "advertise_url {url:?}: expected {scheme}://HOST:PORT{}",
            if tls.is_some() {
                " (the peer listener's port: the nodes talk TLS)"
            } else {
                ""
            }
        );
        let token = self.token.clone().unwrap_or_default();
        anyhow::ensure!(
            !token.is_empty(),
            "a cluster node needs --cluster-token (the same secret on every node)"
        );
        anyhow::ensure!(
            self.lease_margin_ms < self.lease_ttl_ms && self.lease_ttl_ms >= 600,
            "[cluster] lease_ttl_ms must be at least 600 and more than lease_margin_ms"
        );
        anyhow::ensure!(
            self.snapshots_kept >= 1,
            "[cluster] snapshots_kept must be at least 1"
        );
        Ok(Some(crate::cluster::ClusterOptions {
            node_id: node_id.clone(),
            advertise_url: url.clone(),
            token,
            lease_ttl: std::time::Duration::from_millis(self.lease_ttl_ms),
            lease_margin: std::time::Duration::from_millis(self.lease_margin_ms),
            snapshot_interval: std::time::Duration::from_millis(self.snapshot_interval_ms),
            snapshots_kept: self.snapshots_kept,
            snapshot_upload_rate: self.snapshot_upload_bytes_per_sec,
            replicas,
            tls,
        }))
    }

    /// TLS between nodes, when set: all of `peer_listen`, `tls_cert`, `tls_key` and `tls_ca`.
    fn tls(&self) -> anyhow::Result<Option<crate::cluster::PeerTls>> {
        match (
            &self.peer_listen,
            &self.tls_cert,
            &self.tls_key,
            &self.tls_ca,
        ) {
            (None, None, None, None) => Ok(None),
            (Some(listen), Some(cert), Some(key), Some(ca)) => Ok(Some(crate::cluster::PeerTls {
                listen: *listen,
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            _ => anyhow::bail!(
                "TLS between nodes needs all of [cluster] peer_listen, tls_cert, tls_key and \
                 tls_ca (--peer-listen, --cluster-tls-cert, --cluster-tls-key, --cluster-tls-ca)"
            ),
        }
    }
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("prism-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            log_format: LogFormat::Text,
            allowed_hosts: Vec::new(),
            view_sync_interval_ms: crate::store::DURABLE_INTERVAL.as_millis() as u64,
            append_queue: crate::log::APPEND_QUEUE,
            idempotency_window_secs: crate::log::IDEMPOTENCY_WINDOW.as_secs(),
            keep_modules: crate::projector::catalog::KEEP_MODULES,
            view_cache_bytes: crate::store::CACHE_BYTES,
            view_cache_interval_ms: crate::store::CACHE_INTERVAL.as_millis() as u64,
            event_log: None,
            event_log_replicas: 1,
            limits: RequestLimits::default(),
            sandbox: Sandbox::default(),
            nats: NatsSecurity::default(),
            tokens: Tokens::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

impl Config {
    /// The defaults, overridden by `file` (or by [`DEFAULT_FILE`] when `file` is `None` and it
    /// exists), overridden by `overrides` (the environment and flags: any value that
    /// serializes as a table of the same keys, its missing keys left alone). A named file that
    /// is missing or unreadable, and an unknown key, are errors.
    pub fn load(file: Option<&Path>, overrides: &impl Serialize) -> anyhow::Result<Config> {
        let mut layers = Figment::from(Serialized::defaults(Config::default()));
        if let Some(table) = read_file(file)? {
            layers = layers.merge(Serialized::globals(table));
        }
        layers
            .merge(Serialized::globals(overrides))
            .extract()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Refuses settings that cannot be meant: an empty token (it would let every request in),
    /// an event log that is not a NATS address.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(urls) = &self.event_log
            && !urls.split(',').all(|url| url.trim().starts_with("nats://"))
        {
            anyhow::bail!(
                "event_log {urls:?}: expected nats://HOST:PORT (comma-separated for several servers), \
                 or no event_log for the embedded log"
            );
        }
        self.nats.check()?;
        self.cluster.options(self.event_log_replicas)?;
        if self.cluster.node_id.is_some() && self.event_log.is_none() {
            anyhow::bail!(
                "a cluster node needs the JetStream event log: --event-log nats://HOST:PORT"
            );
        }
        self.tokens.check().map_err(anyhow::Error::msg)
    }

    /// The effective config as TOML. Tokens are not printed, only which are set (as a comment,
    /// so the output can serve as a config file).
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        shown.tokens = Tokens::default();
        let cluster_token = shown.cluster.token.take().is_some();
        shown.event_log = shown
            .event_log
            .as_deref()
            .map(crate::log::jetstream::masked);
        let mut text = toml::to_string(&shown).expect("the config serializes");
        let set: Vec<&str> = self
            .tokens
            .roles()
            .filter(|(_, token)| token.is_some())
            .map(|(role, _)| role)
            .collect();
        if !set.is_empty() {
            text.push_str(&format!(
                "\n# [tokens]: {} set (not shown)\n",
                set.join(", ")
            ));
        }
        if cluster_token {
            text.push_str("\n# [cluster] token set (not shown)\n");
        }
        text
    }

    /// The server's config.
    pub fn server_config(&self) -> ServerConfig {
        let mut config = ServerConfig::new(&self.data_dir, self.listen);
        config.limits = self.limits;
        config.sandbox = self.sandbox;
        config.tokens = self.tokens.clone();
        config.allowed_hosts = self.allowed_hosts.clone();
        config.view_sync_interval = std::time::Duration::from_millis(self.view_sync_interval_ms);
        config.append_queue = self.append_queue;
        config.idempotency_window = std::time::Duration::from_secs(self.idempotency_window_secs);
        config.keep_modules = self.keep_modules;
        config.view_cache_bytes = self.view_cache_bytes;
        config.view_cache_interval = std::time::Duration::from_millis(self.view_cache_interval_ms);
        config.event_log = self.event_log.clone();
        config.event_log_replicas = self.event_log_replicas;
        config.nats = self.nats.clone();
        // Checked by `check`.
        config.cluster = self.cluster.options(self.event_log_replicas).ok().flatten();
        // Uploads are compiled by this executable's `compile-worker`, within bounds.
        config.compile_worker = std::env::current_exe().ok();
        config
    }
}

/// The config file as a TOML table (`None` when there is none). Its errors give the message
/// and the line, not a quote of the line: that may hold a token.
fn read_file(file: Option<&Path>) -> anyhow::Result<Option<toml::Table>> {
    let path = match file {
        Some(path) => path,
        None if Path::new(DEFAULT_FILE).exists() => Path::new(DEFAULT_FILE),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let named = |e: toml::de::Error| {
        let line = e
            .span()
            .map_or(0, |span| text[..span.start].matches('\n').count() + 1);
        anyhow::anyhow!(
            "in the config file {}, line {line}: {}",
            path.display(),
            e.message()
        )
    };
    // Unknown keys and wrong types, named by line; then the file's own keys, as a layer.
    toml::from_str::<Config>(&text).map_err(named)?;
    let table = text.parse::<toml::Table>().map_err(named)?;
    Ok(Some(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let config: Config = toml::from_str(
            "listen = \"0.0.0.0:9000\"\n[limits]\nstall_after_secs = 5\n[tokens]\nadmin = \"a\"\n",
        )
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.limits.stall_after, std::time::Duration::from_secs(5));
        assert_eq!(
            config.limits.max_append_events,
            RequestLimits::default().max_append_events
        );
        assert_eq!(config.data_dir, Config::default().data_dir);
        assert_eq!(config.tokens.admin.as_deref(), Some("a"));
        let server = config.server_config();
        assert_eq!(server.limits.stall_after, std::time::Duration::from_secs(5));
        assert_eq!(server.tokens.admin.as_deref(), Some("a"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let error = toml::from_str::<Config>("[limits]\nstall_after = 5\n").unwrap_err();
        assert!(error.to_string().contains("stall_after"), "{error}");
    }

    #[test]
    fn the_printed_config_reads_back_and_hides_tokens() {
        let mut config = Config::default();
        config.tokens.read = Some("secret".into());
        config.tokens.admin = Some("other".into());
        let printed = config.to_toml_masked();
        assert!(
            !printed.contains("secret") && !printed.contains("other"),
            "{printed}"
        );
        assert!(
            printed.contains("# [tokens]: admin, read set (not shown)"),
            "{printed}"
        );
        let back: Config = toml::from_str(&printed).unwrap();
        assert_eq!(back.tokens, Tokens::default());
        assert_eq!(back.limits, config.limits);
    }

    #[test]
    fn tls_between_nodes_needs_all_its_settings_and_an_https_address() {
        let cluster = |extra: &str, url: &str| -> anyhow::Result<_> {
            let text =
                format!("node_id = \"n1\"\ntoken = \"t\"\nadvertise_url = \"{url}\"\n{extra}");
            let settings: ClusterSettings = toml::from_str(&text).unwrap();
            settings.options(3)
        };
        let tls = "peer_listen = \"0.0.0.0:7443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_ca = \"ca.pem\"\n";
        let options = cluster(tls, "https://10.0.0.1:7443").unwrap().unwrap();
        let peer = options.tls.unwrap();
        assert_eq!(peer.listen, "0.0.0.0:7443".parse().unwrap());
        assert_eq!(peer.ca, std::path::PathBuf::from("ca.pem"));
        let plain = cluster(tls, "http://10.0.0.1:7443")
            .unwrap_err()
            .to_string();
        assert!(plain.contains("expected https://"), "{plain}");
        let partial = cluster("tls_cert = \"c.pem\"\n", "https://10.0.0.1:7443");
        let partial = partial.unwrap_err().to_string();
        assert!(partial.contains("needs all of"), "{partial}");
        let https_without = cluster("", "https://10.0.0.1:7070")
            .unwrap_err()
            .to_string();
        assert!(
            https_without.contains("expected http://"),
            "{https_without}"
        );
        assert!(
            cluster("", "http://10.0.0.1:7070")
                .unwrap()
                .unwrap()
                .tls
                .is_none()
        );
    }

    #[test]
    fn empty_tokens_are_refused_and_errors_do_not_quote_the_file() {
        let mut config = Config::default();
        config.tokens.write = Some(String::new());
        let error = config.check().unwrap_err();
        assert!(
            error.to_string().contains("write token is empty"),
            "{error}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prism.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[tokens]\nadmin = \"supersecret\n",
        )
        .unwrap();
        let error = Config::load(Some(&path), &()).unwrap_err().to_string();
        assert!(error.contains("line 3"), "{error}");
        assert!(!error.contains("supersecret"), "{error}");
    }
}
