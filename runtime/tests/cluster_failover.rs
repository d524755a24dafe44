//! Failover through snapshots, under faults: three Prism nodes (real `prism serve` processes;
//! snapshots only when asked for and at handover, each upload held to 40 KiB/s so that one
//! takes seconds) on three nats-servers, under six writers appending through all nodes and an
//! observer per node reading every projector's view over and over.
//!
//! 1. `kill -9` of the owner of a large view while it uploads a snapshot of it (asked for through
//!    another node): the upload is cut — its chunks are in the object store with no object
//!    naming them (checked) — and the next owner restores the newest complete snapshot, taken
//!    before at a known checkpoint, and replays the log after it.
//! 2. `kill -9` of the nats-server leading the event stream, and its restart.
//! 3. The node that holds the large view now is drained (`POST /cluster/nodes/{id}/drain`), and
//!    killed with `kill -9` while it uploads the snapshot it hands the view over with (checked
//!    the same way). The next owner waits for that lease to expire, restores the newest
//!    complete snapshot and replays; the node killed in phase 1 comes back meanwhile.
//!
//! Then: every acknowledged append is in the log at its position, gapless
//! (`common::appends::check_log`); every view, through every live node, equals the one this test
//! computes from the events (`common::model`); and over every answer observed, no view older
//! than one already served for the same generation (`Prism-Checkpoint`), no count going back,
//! no lease going back.

mod common;

use common::appends::{Outcome, Sent, append_recorded, check_log, read_log};
use common::cluster::{
    local_bases, owners, restores, same_as_model, settled_view, wait_applied, wait_for_nodes,
};
use common::nats::NatsCluster;
use common::observe::{
    Observed, checkpoints_never_go_back, leases_never_go_back, observe, views_never_go_back,
};
use common::process::{Prism, free_port, start_node_with};
use common::writers::{WRITERS, write};
use common::{Client, artifacts};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TTL_MS: u64 = 3000;
/// Each snapshot upload is held to this rate.
const UPLOAD_RATE: &str = "40960";
/// Orders placed before the load, so that the large view's snapshot takes seconds to upload.
const BIG: u64 = 60_000;

const PROJECTORS: [(&str, &str, &str); 3] = [
    ("orders", artifacts::ORDER_TOTALS, "order-totals"),
    ("tally", artifacts::EVENT_COUNTER, "event-counter"),
    ("accounts", artifacts::ACCOUNT_BALANCES, "account-balances"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_through_snapshots_survives_kills_mid_upload() {
    let began = Instant::now();
    let mut nats = NatsCluster::start();
    let urls = nats.urls();
    let store = snapshot_store(&urls).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let launch = |i: usize| {
        let more = [
            "--snapshot-interval-ms",
            "0",
            "--snapshot-upload-bytes-per-sec",
            UPLOAD_RATE,
        ];
        start_node_with(
            dirs[i].path(),
            &urls,
            &format!("n{i}"),
            ports[i],
            TTL_MS,
            &more,
        )
    };
    let mut nodes: Vec<Option<Prism>> = (0..3).map(|i| Some(launch(i))).collect();
    let bases = local_bases(&ports);
    let clients: Vec<Client> = bases.iter().map(|b| Client::new(b)).collect();
    wait_for_nodes(&clients, 3).await;
    for (name, wasm, _) in PROJECTORS {
        clients[0].deploy(name, wasm).await;
    }
    let mut sent = Vec::new();
    for batch in 0..BIG / 1000 {
        let events = (batch * 1000..(batch + 1) * 1000)
            .map(|i| {
                json!({"type": "OrderPlaced", "data": {
                    "uid": format!("big-{i}"),
                    "order_id": format!("big-{i}"),
                    "customer": format!("c{}", i % 97),
                    "total_cents": 100 + i % 500,
                }})
            })
            .collect();
        sent.push(append_recorded(&clients[1], &format!("big-{}", batch % 8), events).await);
    }
    let head = last_position(&sent);
    for (name, _, _) in PROJECTORS {
        wait_applied(&clients[0], name, head).await;
    }
    // The first complete snapshot of the large view.
    let first = snapshot(&clients[2], "orders").await;
    let first_checkpoint = first["checkpoint"].as_u64().unwrap();
    let bytes = first["bytes"].as_u64().unwrap();
    // Chunks of 10 KiB, four a second: a partial upload is seen at its second chunk, well
    // before its last (six seconds in, or more, for 256 KiB).
    assert!(
        bytes >= 256 << 10,
        "the large view's snapshot is {bytes} bytes: too small to be cut mid-upload"
    );
    println!("a snapshot of {bytes} bytes at {first_checkpoint}");

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(w, bases.clone(), stop.clone())))
        .collect();
    let observers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(observe(i, bases[i].clone(), stop.clone(), &PROJECTORS)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. kill -9 of the large view's owner while it uploads a snapshot of it.
    let killed = node_of(&owners(&clients[0]).await["orders"]);
    let asking = (killed + 1) % 3;
    let asked = tokio::spawn({
        let client = Client::new(&bases[asking]);
        async move {
            client
                .send(client.request("POST", "/projectors/orders/snapshot"))
                .await
        }
    });
    let cut = wait_new_partial_upload(&store, &BTreeSet::new()).await;
    drop(nodes[killed].take());
    let killed_at = Instant::now();
    let answer = asked.await.unwrap();
    assert_ne!(answer.status, 200, "the upload was cut: {}", answer.body);
    assert_eq!(
        checkpoints_stored(&store).await,
        vec![first_checkpoint],
        "only the complete snapshot is stored"
    );
    let heir = wait_owner_not(&clients[asking], "orders", killed).await;
    let owned_after = killed_at.elapsed();
    let now_head = wait_writers_past(&clients[asking], head).await;
    wait_applied(&clients[heir], "orders", now_head).await;
    // A figure, not a bound (a debug build under six writers, leases of 3 s).
    let answered_after = killed_at.elapsed();
    let restored = restores(&clients[heir]).await;
    println!(
        "kill -9 → n{heir} owns orders after {owned_after:.1?}, answers with everything appended \
         until then after {answered_after:.1?} (restored: {restored:?})"
    );
    assert_eq!(
        restored.get("orders").map(|(checkpoint, _)| *checkpoint),
        Some(first_checkpoint),
        "n{heir} restores the complete snapshot"
    );

    // 2. kill -9 of the nats-server leading the event stream, and its restart.
    let leader = nats.stream_leader("PRISM_EVENTS");
    nats.kill9(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. The large view's owner now is drained, and killed while it uploads the snapshot it
    // hands the view over with; then the node killed in phase 1 comes back.
    // Settled first (the servers' outage may have moved it): its owner serves it, caught up.
    let now_head = wait_writers_past(&clients[asking], 0).await;
    wait_applied(&clients[asking], "orders", now_head).await;
    let holder = wait_owner_not(&clients[asking], "orders", killed).await;
    // The upload cut in phase 1 stays in the store: only a new one is the handover's.
    let now_partial = patiently("listing the uploads", || partial_uploads(&store)).await;
    let cut = now_partial.union(&cut).cloned().collect();
    let drain = format!("/cluster/nodes/n{holder}/drain");
    let drained = clients[asking]
        .send(clients[asking].request("POST", &drain))
        .await;
    assert_eq!(drained.status, 200, "{}", drained.body);
    wait_new_partial_upload(&store, &cut).await;
    drop(nodes[holder].take());
    assert_eq!(
        checkpoints_stored(&store).await,
        vec![first_checkpoint],
        "the handover snapshot was cut"
    );
    nodes[killed] = Some(launch(killed));
    let alive: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let settled_owner = wait_owner_not(&clients[killed], "orders", holder).await;
    println!(
        "orders: n{holder} drained and killed handing over, n{killed} back, n{settled_owner} owns it"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        sent.extend(writer.await.unwrap());
    }
    let mut observed: Vec<Observed> = Vec::new();
    for observer in observers {
        observed.extend(observer.await.unwrap());
    }
    let (head, events) = read_log(&urls).await;
    check_log(&sent, head, &events);
    let want = common::model::views(&events);
    for i in &alive {
        for (name, _, model) in PROJECTORS {
            let view = settled_view(&clients[*i], name, head).await;
            same_as_model(name, &view, &want[model]);
        }
    }
    // The settled owner began at the complete snapshot's checkpoint or later (a snapshot, or
    // the view it kept), not at position 1: it was given no more events than the log holds
    // after that checkpoint (from 1, the 60,000 orders before it too).
    let status = clients[settled_owner].get("/projectors/orders").await;
    let applied = status.body["events_applied"].as_u64().unwrap();
    println!("n{settled_owner} applied {applied} of the {head} events");
    assert!(
        applied <= head - first_checkpoint,
        "n{settled_owner} applied {applied} events: it rebuilt the view from position 1"
    );
    views_never_go_back(&observed);
    checkpoints_never_go_back(&observed);
    leases_never_go_back(&observed);
    for node in nodes.iter_mut() {
        drop(node.take());
    }
    println!(
        "{head} events checked; the test took {:.1?}",
        began.elapsed()
    );
}

/// `nN` → N.
fn node_of(id: &str) -> usize {
    id[1..].parse().unwrap()
}

/// Asks for a snapshot of `projector` through `client`: the one uploaded.
async fn snapshot(client: &Client, projector: &str) -> Value {
    let path = format!("/projectors/{projector}/snapshot");
    let reply = client.send(client.request("POST", &path)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["uploaded"][0].clone()
}

fn last_position(sent: &[Sent]) -> u64 {
    sent.iter()
        .filter_map(|s| match s.outcome {
            Outcome::Acked { last, .. } => Some(last),
            _ => None,
        })
        .max()
        .unwrap()
}

/// The snapshots' object store, as the test reads it: one connection for the whole test, and
/// a patient time limit (the servers share two cores with three nodes and the load).
async fn snapshot_store(urls: &str) -> async_nats::jetstream::Context {
    let servers: Vec<async_nats::ServerAddr> =
        urls.split(',').map(|u| u.parse().unwrap()).collect();
    let client = async_nats::connect(servers).await.unwrap();
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(10));
    js
}

/// Asks `ask` until it answers (the servers may be slow or electing a leader; up to 60 s).
async fn patiently<T, F, Fut>(what: &str, ask: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ask().await {
            Ok(answer) => return answer,
            Err(e) if Instant::now() < deadline => {
                println!("{what}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// The checkpoints of the large view's stored snapshots.
async fn checkpoints_stored(js: &async_nats::jetstream::Context) -> Vec<u64> {
    patiently("listing the snapshots", || async {
        let snapshots = prism::cluster::Snapshots::open(js, 3)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let labels = snapshots
            .list("orders")
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(labels.iter().map(|l| l.checkpoint).collect())
    })
    .await
}

/// The uploads cut or under way: objects' ids (nuids) with two chunks or more in the object
/// store that no object names (a small view's upload is one chunk).
async fn partial_uploads(js: &async_nats::jetstream::Context) -> Result<BTreeSet<String>, String> {
    let snapshots = prism::cluster::Snapshots::open(js, 3)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let unnamed = snapshots.unnamed().await.map_err(|e| format!("{e:#}"))?;
    Ok(unnamed
        .into_iter()
        .filter(|(_, count)| *count >= 2)
        .map(|(nuid, _)| nuid)
        .collect())
}

/// Waits until a large snapshot's upload not in `known` is under way (up to 30 s): the
/// partial uploads then.
async fn wait_new_partial_upload(
    js: &async_nats::jetstream::Context,
    known: &BTreeSet<String>,
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match partial_uploads(js).await {
            Ok(partial) if partial.iter().any(|nuid| !known.contains(nuid)) => return partial,
            Ok(partial) => assert!(
                Instant::now() < deadline,
                "no new snapshot upload under way (known: {known:?}, now: {partial:?})"
            ),
            Err(e) => {
                assert!(Instant::now() < deadline, "listing the uploads: {e}");
                println!("listing the uploads: {e}; asking again");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `projector` is owned by a node other than `gone`, as `client` sees it: that node.
async fn wait_owner_not(client: &Client, projector: &str, gone: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(owner) = owners(client).await.get(projector)
            && node_of(owner) != gone
        {
            return node_of(owner);
        }
        assert!(Instant::now() < deadline, "{projector} not taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the log's head, as `client` sees it, is past `head` (the writers go on): it.
async fn wait_writers_past(client: &Client, head: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = client.get("/cluster").await;
        let now = reply.body["head"].as_u64().unwrap_or(0);
        if now > head {
            return now;
        }
        assert!(Instant::now() < deadline, "the writers appended nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
