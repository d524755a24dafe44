//! Three Prism nodes (in this process, each with its own data dir and socket) on a cluster of
//! three nats-servers: the examples deployed through one node are split between the nodes,
//! appends go through every node, and every node answers for every projector — its own, or
//! forwarded to the owner — with the hand-computed views. A node that stops hands its
//! projectors to the others, which rebuild them and answer exactly again (503 meanwhile, never
//! a wrong view).

mod common;

use common::nats::NatsCluster;
use common::process::free_port;
use common::{Client, artifacts};
use prism::cluster::ClusterOptions;
use prism::server::Server;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TOKEN: &str = "the-cluster-secret";

async fn node(nats: &str, id: &str, dir: &std::path::Path) -> (Server, Client) {
    let port = free_port();
    common::start_with(dir, |config| {
        config.listen = ([127, 0, 0, 1], port).into();
        config.event_log = Some(nats.to_string());
        config.event_log_replicas = 3;
        config.cluster = Some(ClusterOptions {
            node_id: id.to_string(),
            advertise_url: format!("http://127.0.0.1:{port}"),
            token: TOKEN.into(),
            lease_ttl: Duration::from_secs(3),
            lease_margin: Duration::from_millis(500),
            snapshot_interval: Duration::from_secs(30),
            snapshots_kept: 3,
            snapshot_upload_rate: 0,
            replicas: 3,
            tls: None,
        });
    })
    .await
}

/// `GET path` through `client` until it answers something else than 503 (a projector moving
/// between nodes), for up to 60 s.
async fn get_settled(client: &Client, path: &str) -> common::Reply {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = client.get(path).await;
        if reply.status != 503 {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: still 503: {}",
            reply.body
        );
        assert!(reply.headers.contains_key("retry-after"), "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until projector `name`, asked through `client`, has applied the log up to `head`.
async fn wait_applied(client: &Client, name: &str, head: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = get_settled(client, &format!("/projectors/{name}")).await;
        if status.status == 200 && status.body["checkpoint"].as_u64() >= Some(head) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {head}: {} {}",
            status.status,
            status.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every expected view value, asked through each of `clients`.
async fn check_views(clients: &[&Client], head: u64) {
    for client in clients {
        for (name, _) in projectors() {
            wait_applied(client, name, head).await;
        }
        for (projector, key, value) in expected() {
            let reply = get_settled(client, &format!("/projectors/{projector}/view/{key}")).await;
            assert_eq!(reply.status, 200, "{projector}/{key}: {}", reply.body);
            assert_eq!(reply.body, value, "{projector}/{key} via {}", client.base);
        }
    }
}

/// The examples, and a second counter: four projectors.
fn projectors() -> Vec<(&'static str, &'static str)> {
    let mut all = common::examples().to_vec();
    all.push(("tally", artifacts::EVENT_COUNTER));
    all
}

/// The hand-computed views of the history, the second counter included.
fn expected() -> Vec<(&'static str, &'static str, Value)> {
    let mut all = common::expected_views();
    all.push(("tally", "total", json!(15)));
    all
}

async fn owners(client: &Client) -> Value {
    let reply = client.get("/cluster").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_split_the_projectors_and_answer_for_each_other() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(Some(node(&urls, &format!("n{i}"), dir.path()).await));
    }
    let clients: Vec<Client> = nodes
        .iter()
        .map(|n| Client::new(&n.as_ref().unwrap().1.base))
        .collect();
    // Every node sees the three.
    let deadline = Instant::now() + Duration::from_secs(30);
    for client in &clients {
        while owners(client).await["nodes"].as_array().unwrap().len() < 3 {
            assert!(
                Instant::now() < deadline,
                "the nodes did not see each other"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Deployed through one node (the tally through another), appended through all.
    for (name, wasm) in projectors() {
        let through = if name == "tally" {
            &clients[1]
        } else {
            &clients[0]
        };
        through.deploy(name, wasm).await;
    }
    let mut head = 0;
    for (i, (stream, events)) in common::history().into_iter().enumerate() {
        let appended = clients[i % 3].append(stream, events).await;
        head = appended["last_position"].as_u64().unwrap();
    }
    assert_eq!(head, 15);
    check_views(&clients.iter().collect::<Vec<_>>(), head).await;

    // Every projector has one owner, a live node; the projectors are listed through any node.
    let status = owners(&clients[2]).await;
    let projectors_owned = status["projectors"].as_array().unwrap().clone();
    assert_eq!(projectors_owned.len(), 4, "{status}");
    let mut owned_by: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &projectors_owned {
        let owner = p["owner"]
            .as_str()
            .unwrap_or_else(|| panic!("no owner: {status}"));
        assert!(["n0", "n1", "n2"].contains(&owner), "{status}");
        *owned_by.entry(owner.to_string()).or_default() += 1;
    }
    assert!(owned_by.len() > 1, "every projector on one node: {status}");
    let listed = clients[2].get("/projectors").await;
    let names: Vec<&str> = listed.body["projectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["account-balances", "event-counter", "order-totals", "tally"],
        "{}",
        listed.body
    );

    // A request that claims to come from a node must carry the cluster token.
    let forged = clients[0]
        .send(
            clients[0]
                .request("GET", "/projectors/tally")
                .header("prism-forwarded-by", "n9")
                .header("prism-lease-revision", "1")
                .header("prism-cluster-token", "wrong"),
        )
        .await;
    assert_eq!(forged.status, 401, "{}", forged.body);

    // The node owning most projectors stops: the others take them over and answer exactly.
    let (busiest, _) = owned_by.iter().max_by_key(|(_, n)| **n).unwrap();
    let gone: usize = busiest[1..].parse().unwrap();
    let (server, _) = nodes[gone].take().unwrap();
    server.stop().await;
    let survivors: Vec<&Client> = (0..3).filter(|i| *i != gone).map(|i| &clients[i]).collect();
    let appended = survivors[0]
        .append(
            "order-o4",
            json!([{"type": "OrderPlaced", "data": {"order_id": "o4", "customer": "c2", "total_cents": 300}}]),
        )
        .await;
    let head = appended["last_position"].as_u64().unwrap();
    for client in &survivors {
        for (name, _) in projectors() {
            wait_applied(client, name, head).await;
        }
        let total = get_settled(client, "/projectors/event-counter/view/total").await;
        assert_eq!(total.body, json!(16));
        let c2 = get_settled(client, "/projectors/order-totals/view/customer/c2").await;
        assert_eq!(
            c2.body,
            json!({"orders": 2, "total_cents": 1000, "cancelled": 0})
        );
    }
    let status = owners(survivors[1]).await;
    for p in status["projectors"].as_array().unwrap() {
        assert_ne!(p["owner"], json!(format!("n{gone}")), "{status}");
    }
    for node in nodes.into_iter().flatten() {
        node.0.stop().await;
    }
}

/// The fence on the shared catalog: a node writes a deployment only while it holds the
/// projector's lease and counts it valid. Once its lease lapsed unrenewed (the node cut off, or
/// stopped), its write is refused — even before any other node took the lease — and the shared
/// catalog keeps what it held. A write it sent in time but that arrives after another node took
/// the projector over is refused too: taking over writes the record again, moving the revision
/// the late write expects.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_lease_lapsed_cannot_write_the_catalog() {
    use prism::cluster::Cluster;
    use prism::projector::shared::{SharedDeployments, SharedError};
    use prism::projector::{Deployment, GenerationRecord};
    let nats = common::nats::NatsServer::start();
    let log = prism::log::EventLog::new(
        prism::log::jetstream::JetStreamLog::connect(&nats.url(), 1).unwrap(),
    );
    let join = |id: &str| {
        let (log, url, id) = (log.clone(), nats.url(), id.to_string());
        async move {
            let client = async_nats::connect(url).await.unwrap();
            let options = ClusterOptions {
                node_id: id,
                advertise_url: "http://127.0.0.1:1".into(),
                token: TOKEN.into(),
                lease_ttl: Duration::from_millis(1500),
                lease_margin: Duration::from_millis(300),
                snapshot_interval: Duration::from_secs(30),
                snapshots_kept: 3,
                snapshot_upload_rate: 0,
                replicas: 1,
                tls: None,
            };
            Cluster::join(client, log, options).await.unwrap()
        }
    };
    let cluster = join("n1").await;
    let deployment = |config: &str| Deployment {
        serving: GenerationRecord {
            id: 1,
            module: "0".repeat(64),
            config: config.into(),
            schema_version: 1,
            on_error: Default::default(),
        },
        trial: None,
        pending: None,
        paused: false,
        incarnation: 7,
        dead_letter_actions: 0,
    };
    let put = |config: &'static str| {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.put("p", &deployment(config)))
    };
    // No node holds the lease: refused.
    assert!(matches!(
        put("a").await.unwrap(),
        Err(SharedError::NotOwner(_))
    ));
    assert!(cluster.claim("p").await.unwrap().is_some());
    put("b").await.unwrap().unwrap();
    put("c").await.unwrap().unwrap();
    let seen = cluster.catalog().get("p").await.unwrap().unwrap().revision;
    // Nothing renews it (the node's loop is not running): past its TTL less the margin.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(cluster.owns("p").is_none());
    assert!(matches!(
        put("d").await.unwrap(),
        Err(SharedError::NotOwner(_))
    ));
    let stored = cluster.catalog().get("p").await.unwrap().unwrap();
    let stored: Deployment = serde_json::from_slice(&stored.record).unwrap();
    assert_eq!(stored, deployment("c"));

    // A write n1 checked while its lease was valid and that arrives late — after another node
    // took the projector over — is refused by the compare-and-set on the revision n1 saw.
    let other = join("n2").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while other.claim("p").await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "n2 never got the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken = other.take_over("p").await.unwrap().expect("taken over");
    assert!(taken.revision > seen);
    let late = serde_json::to_vec(&deployment("late")).unwrap();
    let refused = cluster.catalog().put("p", late.into(), Some(seen)).await;
    assert!(
        matches!(refused, Err(prism::cluster::CatalogError::Changed { .. })),
        "a late write of the previous owner landed: {refused:?}"
    );
    let stored = cluster.catalog().get("p").await.unwrap().unwrap();
    let stored: Deployment = serde_json::from_slice(&stored.record).unwrap();
    assert_eq!(stored, deployment("c"));
}
