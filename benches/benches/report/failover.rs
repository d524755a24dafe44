//! The failover figures: two Prism nodes (in this process) on three nats-servers (R3), one
//! `order-totals` projector whose view holds about a million keys (one per order placed, and
//! the customers'), leases of the default 6 s.
//!
//! 1. A snapshot of its view through the owner: packed size, copy time, upload time.
//! 2. A tail appended after it, then the owner halted the way a crash halts it (its loops end,
//!    its leases and membership left to expire, its API closed: [`Server::halt`]). Measured from
//!    the halt: when the other node holds the lease (detection), how long it took to restore
//!    the snapshot, and when it first answers the last order of the tail exactly (the rest:
//!    loading the code and replaying the tail).
//! 3. The same failover with the snapshots deleted first, to a fresh node: the rebuild from
//!    position 1 that the snapshots replace.
//! 4. A handover: a node that rendezvous prefers joins and takes the projector, the old owner
//!    snapshotting it first; measured as the longest time a reader polling through the old
//!    owner went without an answer.

use super::Report;
use prism::server::Server;
use prism_client::wire::{Consistency, NewEvent};
use prism_test_artifacts as artifacts;
use std::path::Path;
use std::time::{Duration, Instant};

const PROJECTOR: &str = "orders";
/// Events in the tail appended after the snapshot.
const TAIL: u64 = 20_000;
const BATCH: u64 = 1000;

/// A cluster node of this benchmark: snapshots only when asked for and at handover.
async fn node(urls: &str, id: &str, dir: &Path) -> (Server, prism_client::Client) {
    super::cluster::node(urls, id, dir, Duration::ZERO).await
}

/// Appends orders `from..to` (one event each, a thousand per append): the last position.
async fn place_orders(api: &prism_client::Client, from: u64, to: u64) -> u64 {
    let mut last = 0;
    let mut next = from;
    while next < to {
        let events: Vec<NewEvent> = (next..to.min(next + BATCH))
            .map(|i| {
                let data = serde_json::json!({
                    "order_id": format!("o-{i:07}"),
                    "customer": format!("c-{}", i % 1000),
                    "total_cents": 100 + i % 977,
                });
                NewEvent::new("OrderPlaced", &data).unwrap()
            })
            .collect();
        next += events.len() as u64;
        let stream = format!("orders-{}", next % 16);
        last = api
            .append(&stream, &events, None)
            .await
            .unwrap()
            .last_position;
    }
    last
}

/// Waits until `api` answers the order `o-<last>` with read-your-writes at `head`: when.
async fn first_answer(api: &prism_client::Client, last: u64, head: u64) -> Instant {
    let key = format!("order/o-{last:07}");
    let consistency = Consistency {
        min_position: Some(head),
        timeout_ms: Some(500),
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(Some(value)) = api.view_value(PROJECTOR, &key, &consistency).await {
            assert_eq!(value.json.unwrap()["total_cents"], 100 + last % 977);
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no answer for {key}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `api`'s node sees `owner` holding the projector's lease: when.
async fn owned_by(api: &prism_client::Client, owner: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let cluster = api.cluster().await.unwrap();
        if cluster.projectors[0].owner.as_deref() == Some(owner) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{owner} did not take it over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The owner of the projector, as `api`'s node sees it.
async fn owner(api: &prism_client::Client) -> String {
    loop {
        let cluster = api.cluster().await.unwrap();
        if let Some(owner) = cluster.projectors.first().and_then(|p| p.owner.clone()) {
            return owner;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub(super) async fn failover_figures(report: &mut Report, dir: &Path) {
    let keys: u64 = std::env::var("PRISM_BENCH_FAILOVER_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    println!("failover: two nodes on three nats-servers (R3), order-totals over {keys} orders");
    let binary = prism_toolchain::nats::nats_server(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .expect("a nats-server for the failover figures");
    let servers =
        prism_toolchain::nats::Servers::start(&binary, &dir.join("failover-nats"), 3, false)
            .expect("starting nats-server");
    let urls = servers.urls();
    // "fa" and "fb" share the cluster; "fc" joins later and owns the projector by rendezvous.
    let mut nodes = vec![
        Some(node(&urls, "fa", &dir.join("failover-fa")).await),
        Some(node(&urls, "fb", &dir.join("failover-fb")).await),
    ];
    let api = |i: usize, nodes: &[Option<(Server, prism_client::Client)>]| {
        nodes[i].as_ref().unwrap().1.clone()
    };
    let first = api(0, &nodes);
    wait_nodes(&first, 2).await;
    first
        .deploy(
            PROJECTOR,
            artifacts::read(artifacts::ORDER_TOTALS),
            &Default::default(),
        )
        .await
        .expect("deploying order-totals");
    let started = Instant::now();
    let mut head = place_orders(&first, 0, keys).await;
    let appended = started.elapsed();
    let owner_id = owner(&first).await;
    let (o, other) = if owner_id == "fa" { (0, 1) } else { (1, 0) };
    first_answer(&api(o, &nodes), keys - 1, head).await;
    println!(
        "  {keys} orders appended in {}, applied by {owner_id} {} after",
        secs(appended),
        secs(started.elapsed() - appended)
    );

    // 1. A snapshot through the owner.
    let snapshot = api(other, &nodes).snapshot(PROJECTOR).await.unwrap();
    let taken = &snapshot.uploaded[0];
    report.add(
        format!(
            "failover: snapshot of a {}-key view (packed size; copy + pack; upload)",
            taken.entries
        ),
        format!(
            "{:.1} MB; {} ms; {} ms",
            taken.bytes as f64 / 1e6,
            taken.copy_ms,
            taken.upload_ms
        ),
        "(figure)",
        true,
    );

    // 2. A tail, then the owner halted.
    let tail_from = keys;
    head = place_orders(&first, tail_from, tail_from + TAIL).await;
    first_answer(&api(o, &nodes), tail_from + TAIL - 1, head).await;
    let survivor = api(other, &nodes);
    let halted = Instant::now();
    nodes[o].take().unwrap().0.halt().await;
    let survivor_id = if o == 0 { "fb" } else { "fa" };

    let detected = owned_by(&survivor, survivor_id).await;
    let answered = first_answer(&survivor, tail_from + TAIL - 1, head).await;
    let restored = survivor.cluster().await.unwrap().restored;
    let restore_ms = restored.first().map_or(0, |r| r.took_ms);
    let total = answered - halted;
    report.add(
        format!("failover: owner halted → first exact answer, {keys}-key view, {TAIL}-event tail (detection by the 6 s lease; restore; load + tail)"),
        format!(
            "{} ({}; {} ms; {})",
            secs(total),
            secs(detected - halted),
            restore_ms,
            secs(answered - detected - Duration::from_millis(restore_ms))
        ),
        "≤ 10 s",
        total <= Duration::from_secs(10) && !restored.is_empty(),
    );

    // 3. The fallback: a fresh node (rendezvous leaves the projector with the survivor), the
    // snapshots deleted, the survivor halted: the fresh node rebuilds from position 1.
    let survivor_node = nodes[other].take().unwrap();
    let fresh_id = id_where(survivor_id, false);
    let (fresh, fresh_api) = node(&urls, &fresh_id, &dir.join(&fresh_id)).await;
    wait_nodes(&fresh_api, 2).await;
    let store = snapshots(&urls).await;
    for label in store.list(PROJECTOR).await.unwrap() {
        store.delete(&label).await.unwrap();
    }
    let halted = Instant::now();
    survivor_node.0.halt().await;
    let detected = owned_by(&fresh_api, &fresh_id).await;
    let answered = first_answer(&fresh_api, tail_from + TAIL - 1, head).await;
    let restored = fresh_api.cluster().await.unwrap().restored;
    assert!(restored.is_empty(), "nothing to restore: {restored:?}");
    report.add(
        format!("failover without a snapshot: rebuild from position 1 of {head} (detection)"),
        format!("{} ({})", secs(answered - halted), secs(detected - halted)),
        "(figure)",
        true,
    );

    // 4. A handover: a node rendezvous prefers joins; the reader polls through the old owner.
    let joining_id = id_where(&fresh_id, true);
    let reading = fresh_api.clone();
    let key = format!("order/o-{:07}", tail_from + TAIL - 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut longest = Duration::ZERO;
            let mut last_ok = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let consistency = Consistency {
                    min_position: Some(head),
                    timeout_ms: Some(500),
                };
                if let Ok(Some(_)) = reading.view_value(PROJECTOR, &key, &consistency).await {
                    longest = longest.max(last_ok.elapsed());
                    last_ok = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            longest
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let joined = Instant::now();
    let (joining, joining_api) = node(&urls, &joining_id, &dir.join(&joining_id)).await;
    owned_by(&fresh_api, &joining_id).await;
    let answered = first_answer(&joining_api, tail_from + TAIL - 1, head).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let longest = reader.await.unwrap();
    let restored = joining_api.cluster().await.unwrap().restored;
    report.add(
        format!("handover of the {keys}-key view to a joining node: longest time without an answer through the old owner (join → new owner answers)"),
        format!("{} ({})", secs(longest), secs(answered - joined)),
        "≤ 2 s",
        longest <= Duration::from_secs(2) && !restored.is_empty(),
    );
    joining.stop().await;
    fresh.stop().await;
    drop(servers);
}

/// A node id (`fx…`) that rendezvous hashing puts before `other` for the projector
/// (`preferred`), or after it.
fn id_where(other: &str, preferred: bool) -> String {
    (0..)
        .map(|i| format!("fx{i}"))
        .find(|id| {
            let owner = prism::cluster::rendezvous::owner(PROJECTOR, [id.as_str(), other]);
            (owner == Some(id.as_str())) == preferred
        })
        .unwrap()
}

/// Waits until `api`'s node sees `n` live nodes.
async fn wait_nodes(api: &prism_client::Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.cluster().await.map_or(0, |c| c.nodes.len()) < n {
        assert!(
            Instant::now() < deadline,
            "the nodes did not see each other"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cluster's snapshots, opened from the bench.
async fn snapshots(urls: &str) -> prism::cluster::Snapshots {
    let client = async_nats::connect(urls.split(',').next().unwrap())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    prism::cluster::Snapshots::open(&js, 3).await.unwrap()
}
