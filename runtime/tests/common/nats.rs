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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
/// dir and monitor port, for tests that kill and restart one: [`NatsCluster::kill9`],
/// [`NatsCluster::restart`] (same ports, same store dir). Dropping it kills all three.
pub struct NatsCluster {
    binary: std::path::PathBuf,
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

struct ClusterNode {
    name: String,
    port: u16,
    monitor: u16,
    config: std::path::PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts the three servers and waits until they have elected a JetStream meta leader
    /// with every server current.
    pub fn start() -> NatsCluster {
        let binary =
            prism_toolchain::nats::nats_server(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
                .expect("a nats-server for the JetStream tests");
        let dir = tempfile::tempdir().unwrap();
        // Nine distinct free ports, held together so none is handed out twice.
        let listeners: Vec<_> = (0..9)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let routes: Vec<String> = (0..3)
            .map(|i| format!("nats://127.0.0.1:{}", ports[6 + i]))
            .collect();
        let nodes = (0..3)
            .map(|i| {
                let name = format!("n{i}");
                let store = dir.path().join(&name);
                std::fs::create_dir_all(&store).unwrap();
                // `limits.batch.max_msgs` (default 1000, checked with `nats-server -t` on
                // 2.15.1; `/jsz` reports it as `limits.max_batch_size`) raised to Prism's
                // default most events per append, as a production cluster would be.
                let config = format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{port}\n\
                     http: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: {store:?}\n  limits {{ batch {{ max_msgs: 10000 }} }}\n}}\n\
                     cluster {{\n  name: prism\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                    port = ports[i],
                    monitor = ports[3 + i],
                    route = ports[6 + i],
                    routes = routes.join(", "),
                );
                let path = dir.path().join(format!("{name}.conf"));
                std::fs::write(&path, config).unwrap();
                ClusterNode {
                    name,
                    port: ports[i],
                    monitor: ports[3 + i],
                    config: path,
                    child: None,
                }
            })
            .collect();
        let mut cluster = NatsCluster { binary, nodes, dir };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_listening(i);
        }
        cluster.wait_for_meta_leader();
        cluster
    }

    /// Every server's client URL, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether server `i` is running.
    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Which server leads JetStream stream `name`, as a running server reports it; waits (up
    /// to 30 s) until one names a leader that is running.
    pub fn stream_leader(&self, name: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in (0..3).filter(|&i| self.alive(i)) {
                let Some(jsz) = self.monitor(i, "/jsz?accounts=true&streams=true") else {
                    continue;
                };
                let leader = jsz["account_details"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                    .find(|s| s["name"] == name)
                    .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_string));
                if let Some(leader) = leader
                    && let Some(j) = self.nodes.iter().position(|n| n.name == leader)
                    && self.alive(j)
                {
                    return j;
                }
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
        let mut child = self.nodes[i].child.take().expect("a running server");
        // std's Child::kill sends SIGKILL on Unix.
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts server `i` again on its ports and store dir; waits until it listens and sees a
    /// meta leader.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.alive(i), "server {i} is running");
        self.spawn(i);
        self.wait_listening(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.monitor(i, "/jsz").is_some_and(|jsz| {
            jsz["meta_cluster"]["leader"]
                .as_str()
                .is_some_and(|l| !l.is_empty())
        }) {
            assert!(
                Instant::now() < deadline,
                "the restarted server {i} sees no meta leader"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", node.name)))
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        node.child = Some(child);
    }

    fn wait_listening(&self, i: usize) {
        let port = self.nodes[i].port;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_meta_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = (0..3).all(|i| {
                self.monitor(i, "/jsz").is_some_and(|jsz| {
                    let meta = &jsz["meta_cluster"];
                    meta["leader"].as_str().is_some_and(|l| !l.is_empty())
                        && meta["cluster_size"] == 3
                })
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster elected no meta leader: {:?}",
                self.monitor(0, "/jsz")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on server `i`'s monitor port, as JSON (`None` when it does not answer).
    fn monitor(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[i].monitor));
        let mut stream =
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
