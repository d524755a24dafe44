//! Real nats-servers with JetStream for the tests, found or installed by
//! `prism_toolchain::nats` (under `target/tmp`): one on a free loopback port ([`NatsServer`]), or
//! a cluster of three ([`NatsCluster`]) whose servers can be killed and restarted. Killed when
//! dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Child,
    pub port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// A single nats-server with JetStream, accepting connections.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// [`start`](Self::start) with more arguments for nats-server (TLS, users...).
    pub fn start_with(args: &[&str]) -> NatsServer {
        let binary =
            prism_toolchain::nats::nats_server(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
                .expect("a nats-server for the JetStream tests");
        let store = tempfile::tempdir().unwrap();
        // The server picks its port and says which in its ports file: a port chosen here and
        // freed could be taken by another test's server before this one binds it.
        let mut child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(store.path())
            .arg("--ports_file_dir")
            .arg(store.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            let urls = prism_toolchain::nats::client_urls(store.path(), child.id());
            if let Some(port) = urls
                .iter()
                .find_map(|url| url.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
            {
                break port;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "nats-server exited while starting"
            );
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        };
        NatsServer {
            child,
            port,
            _store: store,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three nats-servers with JetStream clustered on loopback (`prism`), each with its own store
/// dir and monitor port (`prism_toolchain::nats::Servers`), for tests that kill and restart
/// one: [`NatsCluster::kill9`], [`NatsCluster::restart`] (same ports, same store dir).
/// Dropping it kills all three.
pub struct NatsCluster {
    servers: prism_toolchain::nats::Servers,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts the three servers and waits until they have elected a JetStream meta leader
    /// with every server current.
    pub fn start() -> NatsCluster {
        let binary =
            prism_toolchain::nats::nats_server(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
                .expect("a nats-server for the JetStream tests");
        let dir = tempfile::tempdir().unwrap();
        let servers = prism_toolchain::nats::Servers::start(&binary, dir.path(), 3, false)
            .expect("a three-server nats cluster");
        NatsCluster { servers, _dir: dir }
    }

    /// Every server's client URL, comma-separated.
    pub fn urls(&self) -> String {
        self.servers.urls()
    }

    /// Whether server `i` is running.
    pub fn alive(&self, i: usize) -> bool {
        self.servers.alive(i)
    }

    /// Server `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        self.servers.url(i)
    }

    /// Sends `signal` (`STOP`, `CONT`) to server `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.servers.pid(i).expect("the server runs");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Which running server leads JetStream stream `name`; waits (up to 30 s) until one does.
    pub fn stream_leader(&self, name: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(leader) = self.servers.stream_leader(name) {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no running server leads the stream {name}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills server `i` with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill9(&mut self, i: usize) {
        assert!(self.alive(i), "server {i} is not running");
        self.servers.kill(i);
    }

    /// Starts server `i` again on its ports and store dir; waits until it listens and sees a
    /// meta leader.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.alive(i), "server {i} is running");
        self.servers.restart(i).expect("restarting a nats-server");
    }
}
