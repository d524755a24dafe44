//! Views move between nodes through snapshots, and the new owner replays only the log after the
//! snapshot it restored — checked against views this test computes itself (`common::model`),
//! so a tail applied twice, or not at all, shows.
//!
//! Two Prism nodes (real `prism serve` processes, periodic snapshots off so that only the
//! handovers and the explicit `POST …/snapshot` upload) on three nats-servers:
//! 1. n0 runs alone with five projectors and a history; n1 joins and the projectors rendezvous
//!    gives it are handed over: n0 snapshots each at its head before it lets go, and n1
//!    restores those snapshots (checkpoint = the head, nothing to replay).
//! 2. One of them is snapshotted through n0 (forwarded to its owner, n1), more is appended (the
//!    tail), n1 applies it and is killed with `kill -9`: n0 restores that snapshot (newer than
//!    the view it kept from phase 1) and replays the tail; the others, whose newest snapshot
//!    is no newer than what n0 kept, continue from n0's own views.
//! 3. More is appended and n1 starts again on its data dir: n0 hands its projectors back with
//!    snapshots at the head, newer than what n1 kept, and n1 restores them.
//! 4. n1 is drained (`POST /cluster/nodes/n1/drain`): it hands its projectors to n0 with
//!    snapshots at the head while it stays up; undrained, it takes them back.
//!
//! After each phase every view, through both nodes, equals the model's over the whole log.

mod common;

use common::appends::read_log;
use common::cluster::{
    local_bases, owners, restores, same_as_model, settled_view, wait_applied, wait_for_nodes,
};
use common::nats::NatsCluster;
use common::process::{Prism, free_port, start_node_with};
use common::{Client, artifacts};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const TTL_MS: u64 = 3000;

/// The projectors: name, module, and the model's view it must equal.
const PROJECTORS: [(&str, &str, &str); 5] = [
    ("tally-a", artifacts::EVENT_COUNTER, "event-counter"),
    ("tally-b", artifacts::EVENT_COUNTER, "event-counter"),
    ("tally-e", artifacts::EVENT_COUNTER, "event-counter"),
    ("orders-a", artifacts::ORDER_TOTALS, "order-totals"),
    ("orders-d", artifacts::ORDER_TOTALS, "order-totals"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_move_between_nodes_through_snapshots() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let launch = |i: usize| {
        let more = ["--snapshot-interval-ms", "0"];
        start_node_with(
            dirs[i].path(),
            &urls,
            &format!("n{i}"),
            ports[i],
            TTL_MS,
            &more,
        )
    };
    let clients: Vec<Client> = local_bases(&ports).iter().map(|b| Client::new(b)).collect();
    let mut nodes: Vec<Option<Prism>> = vec![Some(launch(0)), None];
    wait_for_nodes(&clients[..1], 1).await;
    for (name, wasm, _) in PROJECTORS {
        clients[0].deploy(name, wasm).await;
    }
    let mut orders = Orders::default();
    let head = orders.append(&clients[0], 1000).await;
    for (name, _, _) in PROJECTORS {
        wait_applied(&clients[0], name, head).await;
    }

    // 1. n1 joins: n0 hands over the projectors that are n1's now, each with a snapshot at
    // the head.
    nodes[1] = Some(launch(1));
    wait_for_nodes(&clients, 2).await;
    let placed = placement(&["n0", "n1"]);
    let moved: Vec<&str> = PROJECTORS
        .iter()
        .map(|p| p.0)
        .filter(|p| placed[*p] == "n1")
        .collect();
    assert!(
        !moved.is_empty() && moved.len() < PROJECTORS.len(),
        "the test needs projectors on both nodes: rename them ({placed:?})"
    );
    wait_placed(&clients[0], &placed).await;
    for name in &moved {
        wait_applied(&clients[1], name, head).await;
    }
    let restored = restores(&clients[1]).await;
    for name in &moved {
        assert_eq!(
            restored.get(*name),
            Some(&(head, 0)),
            "n1 restores {name} from the snapshot n0 took at the head when it handed it over"
        );
    }
    assert_eq!(restored.len(), moved.len(), "{restored:?}");
    views_match(&clients, &urls, head).await;

    // 2. A snapshot of one, a tail after it, and kill -9 of its owner.
    let victim = moved[0];
    let head2 = orders.append(&clients[0], 500).await;
    wait_applied(&clients[0], victim, head2).await;
    let snapshot = clients[0]
        .send(clients[0].request("POST", &format!("/projectors/{victim}/snapshot")))
        .await;
    assert_eq!(snapshot.status, 200, "{}", snapshot.body);
    assert_eq!(
        snapshot.body["uploaded"][0]["checkpoint"], head2,
        "{}",
        snapshot.body
    );
    let head3 = orders.append(&clients[0], 300).await;
    for name in &moved {
        wait_applied(&clients[0], name, head3).await;
    }
    let killed_at = Instant::now();
    drop(nodes[1].take());
    let alone = placement(&["n0"]);
    wait_placed(&clients[0], &alone).await;
    wait_applied(&clients[0], victim, head3).await;
    println!(
        "n0 answers for {victim} {:.1?} after the kill",
        killed_at.elapsed()
    );
    let restored = restores(&clients[0]).await;
    assert_eq!(
        restored.get(victim),
        Some(&(head2, head)),
        "n0 restores the snapshot taken at {head2} (newer than its own view at {head}) and \
         replays the tail to {head3}"
    );
    assert_eq!(
        restored.len(),
        1,
        "the others' newest snapshots are no newer than n0's own views: {restored:?}"
    );
    views_match(&clients[..1], &urls, head3).await;

    // 3. n1 comes back: n0 hands its projectors back with snapshots newer than what n1 kept.
    let head4 = orders.append(&clients[0], 200).await;
    for name in &moved {
        wait_applied(&clients[0], name, head4).await;
    }
    nodes[1] = Some(launch(1));
    wait_for_nodes(&clients, 2).await;
    wait_placed(&clients[0], &placed).await;
    for name in &moved {
        wait_applied(&clients[1], name, head4).await;
    }
    let restored = restores(&clients[1]).await;
    for name in &moved {
        let (checkpoint, kept) = restored[*name];
        assert_eq!(checkpoint, head4, "{name}: {restored:?}");
        assert!(kept <= head3, "{name}: n1 kept a view past what it applied");
    }
    views_match(&clients, &urls, head4).await;

    // 4. Drain n1: it stays up, hands everything to n0 (snapshots at the head, newer than the
    // views n0 kept), and answers through forwarding; undrained, it takes its share back.
    let head5 = orders.append(&clients[1], 100).await;
    for name in &moved {
        wait_applied(&clients[1], name, head5).await;
    }
    let drained = clients[1]
        .send(clients[1].request("POST", "/cluster/nodes/n1/drain"))
        .await;
    assert_eq!(drained.status, 200, "{}", drained.body);
    wait_placed(&clients[1], &alone).await;
    for name in &moved {
        wait_applied(&clients[0], name, head5).await;
    }
    let restored = restores(&clients[0]).await;
    for name in &moved {
        assert_eq!(restored[*name].0, head5, "{name}: {restored:?}");
    }
    let cluster = clients[1].get("/cluster").await;
    assert_eq!(cluster.body["drained"], json!(["n1"]), "{}", cluster.body);
    views_match(&clients, &urls, head5).await;
    let undrained = clients[0]
        .send(clients[0].request("DELETE", "/cluster/nodes/n1/drain"))
        .await;
    assert_eq!(undrained.status, 200, "{}", undrained.body);
    wait_placed(&clients[0], &placed).await;
    views_match(&clients, &urls, head5).await;
}

/// Orders placed and cancelled, appended in batches to seven streams.
#[derive(Default)]
struct Orders {
    next: u64,
}

impl Orders {
    /// Appends `n` events (every fifth cancels an earlier order) through `client`: the head.
    async fn append(&mut self, client: &Client, n: u64) -> u64 {
        let mut head = 0;
        let end = self.next + n;
        while self.next < end {
            let first = self.next;
            let batch: Vec<Value> = (first..end.min(first + 50))
                .map(|i| match i % 5 {
                    4 => json!({"type": "OrderCancelled", "data": {"order_id": format!("o-{}", i / 2)}}),
                    _ => json!({"type": "OrderPlaced", "data": {
                        "order_id": format!("o-{i}"),
                        "customer": format!("c-{}", i % 13),
                        "total_cents": 100 + i % 977,
                    }}),
                })
                .collect();
            self.next += batch.len() as u64;
            let appended = client
                .append(&format!("order-{}", first % 7), Value::Array(batch))
                .await;
            head = appended["last_position"].as_u64().unwrap();
        }
        head
    }
}

/// Where rendezvous hashing puts each projector among `nodes`.
fn placement(nodes: &[&str]) -> HashMap<String, String> {
    PROJECTORS
        .iter()
        .map(|(name, _, _)| {
            let owner = prism::cluster::rendezvous::owner(name, nodes.iter().copied()).unwrap();
            (name.to_string(), owner.to_string())
        })
        .collect()
}

/// Waits until every projector is owned where `placed` says.
async fn wait_placed(client: &Client, placed: &HashMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owners = owners(client).await;
        if owners == *placed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not placed: {owners:?}, want {placed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every projector's view through every client equals the model's over the log (whose head is
/// `head`).
async fn views_match(clients: &[Client], urls: &str, head: u64) {
    let (at, events) = read_log(urls).await;
    assert_eq!(at, head, "the log's head");
    let want = common::model::views(&events);
    for client in clients {
        for (name, _, model) in PROJECTORS {
            let view = settled_view(client, name, head).await;
            same_as_model(name, &view, &want[model]);
        }
    }
}
