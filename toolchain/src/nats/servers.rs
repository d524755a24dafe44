//! nats-server processes on loopback for tests, benchmarks and demos: one server or a cluster,
//! each with its own store directory (kept across a restart), the durability chosen
//! (`sync_interval: always`, or the server's default), killed with SIGKILL and restarted on
//! the same ports; which server leads a stream read from the monitoring endpoint.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Running nats-servers, killed when dropped.
pub struct Servers {
    binary: PathBuf,
    nodes: Vec<Node>,
}

struct Node {
    /// Where its log (stderr) goes, appended to across restarts.
    log: PathBuf,
    /// Where it writes its ports file once it listens (`--ports_file_dir`).
    ports: PathBuf,
    port: u16,
    monitor: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// `n` distinct free loopback ports (held together while chosen, so none comes twice), for
/// servers told their address before they start.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl Servers {
    /// Starts `count` servers with JetStream (a cluster named `prism` when more than one) under
    /// `dir`, fsyncing every write when `sync_always`, and waits until they accept clients (and
    /// a cluster has a JetStream meta leader).
    pub fn start(binary: &Path, dir: &Path, count: usize, sync_always: bool) -> Result<Servers> {
        let free = free_ports(3 * count)?;
        let ports: Vec<(u16, u16, u16)> = (0..count)
            .map(|i| (free[i], free[count + i], free[2 * count + i]))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, _, route)| format!("\"nats://127.0.0.1:{route}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, monitor, route)) in ports.iter().enumerate() {
            let store = dir.join(format!("n{i}"));
            let ports = dir.join(format!("n{i}.ports"));
            std::fs::create_dir_all(&store)?;
            std::fs::create_dir_all(&ports)?;
            let sync = if sync_always {
                "sync_interval: always"
            } else {
                ""
            };
            let cluster = if count > 1 {
                format!(
                    "cluster {{\n  name: prism\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            // `limits.batch.max_msgs` (default 1000; `/jsz` shows it as
            // `limits.max_batch_size`) raised to Prism's default most events per append, as a
            // production setup would.
            let config = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
                     ports_file_dir: {ports:?}\n\
                     jetstream {{\n  store_dir: {store:?}\n  {sync}\n  \
                     limits {{ batch {{ max_msgs: 10000 }} }}\n}}\n{cluster}",
                ),
            )?;
            nodes.push(Node {
                log: dir.join(format!("n{i}.log")),
                ports,
                port: *port,
                monitor: *monitor,
                config,
                child: None,
            });
        }
        let mut servers = Servers {
            binary: binary.to_path_buf(),
            nodes,
        };
        for i in 0..count {
            servers.spawn(i)?;
        }
        for i in 0..count {
            servers.wait_ready(i)?;
        }
        Ok(servers)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until server `i` listens on its port (its own ports file says so: a connection
    /// that succeeds may have met another process, or connected to itself) and, in a
    /// cluster, knows a meta leader. Fails if it exits meanwhile (a port taken, say).
    fn wait_ready(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = &mut self.nodes[i];
            let child = node.child.as_mut().context("the server was not started")?;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server n{i} exited ({status}) while starting; its log: {}",
                    node.log.display()
                );
            }
            let listening = client_urls(&node.ports, child.id())
                .contains(&format!("nats://127.0.0.1:{}", node.port));
            let ready = listening
                && (self.nodes.len() == 1
                    || self.jsz(i, "").is_ok_and(|jsz| {
                        jsz["meta_cluster"]["leader"]
                            .as_str()
                            .is_some_and(|l| !l.is_empty())
                    }));
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server n{i} was not ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every server's client address, comma-separated.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`'s client address.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Server `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Kills server `i` with SIGKILL (no shutdown of any kind) and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again, on its ports and store, and waits until it is ready.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i)
    }

    /// Server `i`'s process id, while it runs (to stop it with SIGSTOP, say).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Whether server `i` runs (it was not killed, or was restarted).
    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Which running server leads `stream`, as a running server's monitoring endpoint says
    /// now (`None` while none does: no stream yet, or an election under way).
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        for i in (0..self.nodes.len()).filter(|&i| self.alive(i)) {
            let Ok(jsz) = self.jsz(i, "?accounts=true&streams=true") else {
                continue;
            };
            for account in jsz["account_details"].as_array().into_iter().flatten() {
                for detail in account["stream_detail"].as_array().into_iter().flatten() {
                    if detail["name"] == stream
                        && let Some(leader) = detail["cluster"]["leader"].as_str()
                        && let Some(j) = leader.strip_prefix('n').and_then(|n| n.parse().ok())
                        && j < self.nodes.len()
                        && self.alive(j)
                    {
                        return Some(j);
                    }
                }
            }
        }
        None
    }

    /// Server `i`'s `/jsz` (with `query`), as JSON.
    fn jsz(&self, i: usize, query: &str) -> Result<serde_json::Value> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[i].monitor));
        let mut socket = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            socket,
            "GET /jsz{query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        )?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer)?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .context("an HTTP answer without a body")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("/jsz{query} answered {head:?}");
        }
        Ok(serde_json::from_str(body)?)
    }
}

/// The client URLs a nats-server started with `--ports_file_dir dir` as process `pid` listens
/// on: none until it has bound its listeners.
pub fn client_urls(dir: &Path, pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let suffix = format!("_{pid}.ports");
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .flat_map(|ports| {
            ports["nats"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|url| url.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

impl Drop for Servers {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
