//! The cluster figures: three Prism nodes (in this process) on three nats-servers (R3), one
//! event counter deployed. A client appends one event and reads the counter with read your
//! writes (`min_position` = the position the append answered), one after the other: through the
//! projector's owner, and through a node that forwards the read to it. And a plain view read
//! through each, to show what forwarding costs by itself.

use super::{Report, ms, percentile};
use prism::cluster::ClusterOptions;
use prism::server::{Server, ServerConfig};
use prism_client::wire::{Consistency, NewEvent};
use prism_test_artifacts as artifacts;
use std::path::Path;
use std::time::{Duration, Instant};

/// Appends measured per node.
const ROUNDS: usize = 400;

fn free_port() -> u16 {
    prism_toolchain::nats::free_ports(1).expect("a free port")[0]
}

/// A cluster node `id` in this process on the servers `urls` (6 s leases), snapshotting its
/// views every `snapshot_interval` (zero: only at handover), and a client for it.
pub(super) async fn node(
    urls: &str,
    id: &str,
    dir: &Path,
    snapshot_interval: Duration,
) -> (Server, prism_client::Client) {
    let port = free_port();
    let mut config = ServerConfig::new(dir, ([127, 0, 0, 1], port).into());
    config.event_log = Some(urls.to_string());
    config.event_log_replicas = 3;
    config.cluster = Some(ClusterOptions {
        node_id: id.to_string(),
        advertise_url: format!("http://127.0.0.1:{port}"),
        token: "bench".into(),
        lease_ttl: Duration::from_secs(6),
        lease_margin: Duration::from_secs(1),
        snapshot_interval,
        snapshots_kept: 3,
        snapshot_upload_rate: 0,
        replicas: 3,
        tls: None,
    });
    let server = Server::start(config).await.expect("a cluster node");
    let api = prism_client::Client::new(&format!("http://{}", server.addr())).unwrap();
    (server, api)
}

/// Append → visible through `read` (appends through `write`), and plain reads: p50s and p99s.
async fn rounds(
    write: &prism_client::Client,
    read: &prism_client::Client,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut visible, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let event = NewEvent::new("T", &serde_json::json!({})).unwrap();
        let started = Instant::now();
        let appended = write.append("bench", &[event], None).await.unwrap();
        let consistency = Consistency {
            min_position: Some(appended.last_position),
            timeout_ms: None,
        };
        read.view_value("counter", "total", &consistency)
            .await
            .unwrap()
            .expect("the count");
        visible.push(started.elapsed());
        let started = Instant::now();
        read.view_value("counter", "total", &Consistency::default())
            .await
            .unwrap();
        reads.push(started.elapsed());
    }
    (visible, reads)
}

pub(super) async fn cluster_figures(report: &mut Report, dir: &Path) {
    println!("cluster: three nodes on three nats-servers (R3), {ROUNDS} rounds per way");
    let binary = prism_toolchain::nats::nats_server(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .expect("a nats-server for the cluster figures");
    let servers =
        prism_toolchain::nats::Servers::start(&binary, &dir.join("cluster-nats"), 3, false)
            .expect("starting nats-server");
    let urls = servers.urls();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (id, interval) = (format!("n{i}"), Duration::from_secs(30));
        nodes.push(node(&urls, &id, &dir.join(format!("cluster-n{i}")), interval).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes[0].1.cluster().await.map_or(0, |c| c.nodes.len()) < 3 {
        assert!(
            Instant::now() < deadline,
            "the nodes did not see each other"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deployed = nodes[0]
        .1
        .deploy(
            "counter",
            artifacts::read(artifacts::EVENT_COUNTER),
            &Default::default(),
        )
        .await;
    if let Err(e) = deployed {
        panic!("deploying the counter through n0: {e}");
    }
    let owner: usize = loop {
        let cluster = nodes[0].1.cluster().await.unwrap();
        if let Some(owner) = cluster.projectors.first().and_then(|p| p.owner.clone()) {
            break owner[1..].parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the counter has no owner: {cluster:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let other = (owner + 1) % 3;
    // Warm: connections, the forwarder's pool, the module's first calls.
    rounds(&nodes[other].1, &nodes[other].1).await;
    let (mut direct, mut direct_reads) = rounds(&nodes[owner].1, &nodes[owner].1).await;
    let (mut forwarded, mut forwarded_reads) = rounds(&nodes[other].1, &nodes[other].1).await;
    let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    let (f50, f99) = (
        percentile(&mut forwarded, 0.5),
        percentile(&mut forwarded, 0.99),
    );
    report.add(
        "cluster: append → visible (read your writes), through the owner (p50 / p99)",
        format!("{} / {}", ms(d50), ms(d99)),
        "(figure)",
        true,
    );
    report.add(
        "cluster: append → visible through a node forwarding to the owner (p50 / p99)",
        format!(
            "{} / {} ({:.2}× the owner's p50)",
            ms(f50),
            ms(f99),
            f50.as_secs_f64() / d50.as_secs_f64()
        ),
        "(figure)",
        true,
    );
    let (r50, r99) = (
        percentile(&mut direct_reads, 0.5),
        percentile(&mut direct_reads, 0.99),
    );
    let (g50, g99) = (
        percentile(&mut forwarded_reads, 0.5),
        percentile(&mut forwarded_reads, 0.99),
    );
    report.add(
        "cluster: a view read through the owner / forwarded (p50 / p99)",
        format!("{} / {} — {} / {}", ms(r50), ms(r99), ms(g50), ms(g99)),
        "(figure)",
        true,
    );
    for (server, _) in nodes {
        server.stop().await;
    }
    drop(servers);
}
