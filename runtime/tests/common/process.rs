//! The real `prism` binary as a child process, for tests that kill it.

use super::Client;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `prism serve` child process and a client for it.
pub struct Prism {
    pub child: Child,
    pub client: Client,
}

impl Drop for Prism {
    /// A test that fails leaves no `prism` running (it would hold the test's output open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `prism serve` on `data_dir`, its views made durable every 5 ms.
pub fn start(data_dir: &std::path::Path) -> Prism {
    start_syncing(data_dir, 5)
}

/// Starts `prism serve` on `data_dir`, its views made durable every `sync_ms`; a projector
/// catching up commits its held writes every 20 ms (so kills find some committed, some held).
pub fn start_syncing(data_dir: &std::path::Path, sync_ms: u64) -> Prism {
    let sync_ms = sync_ms.to_string();
    let (child, address) = serve(
        data_dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--view-sync-interval-ms",
            &sync_ms,
        ],
    );
    Prism {
        child,
        client: Client::new(&address),
    }
}

/// Runs `prism serve --data-dir data_dir` with `args` (catching up commits every 20 ms, logs
/// at warn on the test's stderr): the child, and the address it says it listens at.
fn serve(data_dir: &std::path::Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["serve", "--view-cache-interval-ms", "20"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting prism");
    let address = listening(&mut child);
    (child, address)
}

/// The address a `prism serve` child says, on its first line, it listens at.
fn listening(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("prism did not say where it listens: {line:?}"))
        .to_string()
}

/// A free loopback port (for a server told its address before it starts).
pub fn free_port() -> u16 {
    prism_toolchain::nats::free_ports(1).unwrap()[0]
}

/// The secret of the clusters [`start_node`] starts.
pub const CLUSTER_TOKEN: &str = "cluster-test-token";

/// Starts `prism serve` as node `id` of a cluster on the JetStream servers `nats` (streams
/// replicated 3 times), listening on (and advertising) loopback `port`, its leases living
/// `lease_ttl_ms`.
pub fn start_node(
    data_dir: &std::path::Path,
    nats: &str,
    id: &str,
    port: u16,
    lease_ttl_ms: u64,
) -> Prism {
    start_node_with(data_dir, nats, id, port, lease_ttl_ms, &[])
}

/// [`start_node`] with more flags.
pub fn start_node_with(
    data_dir: &std::path::Path,
    nats: &str,
    id: &str,
    port: u16,
    lease_ttl_ms: u64,
    more: &[&str],
) -> Prism {
    let address = format!("127.0.0.1:{port}");
    let (advertised, ttl) = (format!("http://{address}"), lease_ttl_ms.to_string());
    let mut args = vec![
        "--listen",
        &address,
        "--event-log",
        nats,
        "--event-log-replicas",
        "3",
        "--node-id",
        id,
        "--cluster-token",
        CLUSTER_TOKEN,
        "--advertise-url",
        &advertised,
        "--lease-ttl-ms",
        &ttl,
    ];
    args.extend_from_slice(more);
    let (child, said) = serve(data_dir, &args);
    assert_eq!(said, advertised, "prism node {id}");
    Prism {
        child,
        client: Client::new(&said),
    }
}

/// Sends `signal` (`STOP`, `CONT`) to `child`.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {}", child.id());
}

/// A deterministic pseudo-random sequence (no dependency, same run every time).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts `prism serve` on `data_dir` without waiting for it to listen (to kill it while it
/// opens its files and resumes its projectors).
pub fn spawn(data_dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_prism"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--view-sync-interval-ms",
            "5",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting prism")
}

/// An append that was acknowledged: its first position and its events' ids (`data.id`).
pub struct Acked {
    pub first_position: u64,
    pub ids: Vec<u64>,
}

/// Reads `streams` back whole and checks the log after crashes: positions gapless up to `head`,
/// every acknowledged event at the position it was acknowledged with. Returns `(position, id)`
/// of every event, in log order.
pub async fn check_log(
    client: &Client,
    streams: &[&str],
    head: u64,
    acked: &[Acked],
) -> Vec<(u64, u64)> {
    let mut by_position: Vec<(u64, u64)> = Vec::new();
    for stream in streams {
        let mut params = prism_client::wire::ReadParams {
            from: Some(1),
            limit: Some(1000),
        };
        loop {
            let page = match client.api.read_stream(stream, &params).await {
                Ok(page) => page,
                Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => break,
                Err(e) => panic!("reading {stream}: {e}"),
            };
            by_position.extend(
                page.events
                    .iter()
                    .map(|e| (e.position, e.data["id"].as_u64().unwrap())),
            );
            match page.next {
                Some(next) => params.from = Some(next),
                None => break,
            }
        }
    }
    by_position.sort();
    assert_eq!(
        by_position.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "positions are not gapless"
    );
    for ack in acked {
        for (offset, id) in ack.ids.iter().enumerate() {
            let position = ack.first_position + offset as u64;
            assert_eq!(
                by_position.get(position as usize - 1).map(|(_, id)| *id),
                Some(*id),
                "acknowledged event {id} missing at position {position}"
            );
        }
    }
    by_position
}
