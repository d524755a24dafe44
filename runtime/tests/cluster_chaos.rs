//! Three Prism nodes (real `prism serve` processes) on three nats-servers lose nothing and never
//! answer as owner of one projector at once, through a `kill -9` and a `SIGSTOP` longer than a
//! lease, under load.
//!
//! Five projectors (the examples, a second event counter and a second order-totals) are
//! deployed through one node; six writers (see `common::writers`) append through all three;
//! one observer per node asks it, over and over, for every projector's status (for the two
//! event counters, their view), noting when each request left and its answer came, and which
//! node answered as owner under which lease revision (the `Prism-Owner` headers). Under that load: a rebuild of `order-totals` is asked
//! through a node that does not own it; the node owning most projectors is killed with
//! `kill -9`; once the others have taken its projectors over, the node owning most of them now
//! is stopped with `SIGSTOP` for four lease TTLs and continued — a pause of one of its
//! projectors, forwarded to it under the lease it held, waits for it meanwhile and must be
//! refused (421: it no longer owns it; the projector not paused); the killed node starts
//! again (same id and data dir) and takes its share back.
//!
//! Then: the log, read back from JetStream, holds every acknowledged append at its positions
//! and nothing twice (`common::appends::check_log`); every view, asked through every node,
//! equals the one this test computes from the events read back (`common::model`, not Prism's
//! replay) and Prism's own `verify` through a node that does not own it; a read through a
//! non-owner with `min_position` sees the append just made through another node. And over
//! every answer observed: lease revisions never go back in real time (an answer that came
//! before another request left never carries a newer lease than that request's answer): a
//! node that kept answering on a lease another node had taken would break it; and the
//! counters' views never go back (a count served, then a smaller one asked later: a view older
//! than one already served).

mod common;

use common::appends::{Outcome, append_recorded, check_log, read_log};
use common::cluster::{local_bases, owners, same_as_model, settled_view, wait_for_nodes};
use common::nats::NatsCluster;
use common::observe::{
    Observed, checkpoints_never_go_back, leases_never_go_back, observe, views_never_go_back,
};
use common::process::{Prism, free_port, signal, start_node};
use common::writers::{WRITERS, write};
use common::{Client, artifacts};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TTL_MS: u64 = 3000;
const TTL: Duration = Duration::from_millis(TTL_MS);
/// How long the busiest node is stopped: long past its leases, so that the others take its
/// projectors over meanwhile.
const STOPPED_FOR: Duration = Duration::from_millis(4 * TTL_MS);

/// The projectors: name, module, and the model's view it must equal.
const PROJECTORS: [(&str, &str, &str); 5] = [
    ("event-counter", artifacts::EVENT_COUNTER, "event-counter"),
    ("order-totals", artifacts::ORDER_TOTALS, "order-totals"),
    (
        "account-balances",
        artifacts::ACCOUNT_BALANCES,
        "account-balances",
    ),
    ("tally", artifacts::EVENT_COUNTER, "event-counter"),
    ("orders-again", artifacts::ORDER_TOTALS, "order-totals"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_of_three_loses_nothing_and_never_answers_for_one_projector_twice() {
    let began = Instant::now();
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let launch = |i: usize| start_node(dirs[i].path(), &urls, &format!("n{i}"), ports[i], TTL_MS);
    let mut nodes: Vec<Option<Prism>> = (0..3).map(|i| Some(launch(i))).collect();
    let bases = local_bases(&ports);
    let clients: Vec<Client> = bases.iter().map(|b| Client::new(b)).collect();
    wait_for_nodes(&clients, 3).await;
    for (name, wasm, _) in PROJECTORS {
        clients[0].deploy(name, wasm).await;
    }
    // A history to rebuild from, so that the rebuild asked under load takes a while.
    let mut before = Vec::new();
    for batch in 0..30 {
        let events = (0..100)
            .map(|i| json!({"type": "Noted", "data": {"uid": format!("before-{batch}-{i}")}}))
            .collect();
        before.push(append_recorded(&clients[1], "note-before", events).await);
    }
    let ready = began.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(w, bases.clone(), stop.clone())))
        .collect();
    let observers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(observe(i, bases[i].clone(), stop.clone(), &PROJECTORS)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A rebuild, asked through a node that does not own the projector.
    let owned = owners(&clients[0]).await;
    let not_owner = (0..3)
        .find(|i| owned["order-totals"] != format!("n{i}"))
        .unwrap();
    let reset = clients[not_owner]
        .send(clients[not_owner].request("POST", "/projectors/order-totals/reset"))
        .await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kill -9 of the node owning most projectors.
    let killed = busiest(&owners(&clients[not_owner]).await, &[]);
    let killed_at = Instant::now();
    drop(nodes[killed].take());
    let survivor = (killed + 1) % 3;
    wait_owned_without(&clients[survivor], &[killed]).await;
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGSTOP, for four lease TTLs, of the node owning most projectors now.
    let before_stop = owners(&clients[survivor]).await;
    let stopped = busiest(&before_stop, &[killed]);
    let (late_projector, late_lease) = lease_of(&clients[survivor], stopped).await;
    let child = &nodes[stopped].as_ref().unwrap().child;
    signal(child, "STOP");
    let stopped_at = Instant::now();
    // A pause (a change of the catalog) forwarded to it as its owner under the lease it held:
    // it reads the request only when it continues, its lease lapsed — it must not act on it.
    let late = tokio::spawn(forwarded_pause(
        bases[stopped].clone(),
        late_projector.clone(),
        late_lease,
    ));
    tokio::time::sleep(STOPPED_FOR).await;
    signal(child, "CONT");
    let continued_at = Instant::now();
    let (late, why) = late.await.unwrap();
    assert_eq!(
        late, 421,
        "n{stopped}, stopped past its lease, answered a pause of {late_projector} as owner: {why}"
    );
    // Refused for its lapsed lease: when the node reads the request (or, had it begun before
    // the stop took hold, when it writes the catalog) — not for a lease revision it moved on.
    assert!(
        why.contains("holds no valid lease") || why.contains("no longer owns"),
        "refused for another reason: {why}"
    );
    let status = clients[survivor]
        .get(&format!("/projectors/{late_projector}"))
        .await;
    assert_ne!(status.body["state"], "paused", "{}", status.body);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The killed node comes back and takes its share again.
    nodes[killed] = Some(launch(killed));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = before;
    for writer in writers {
        sent.extend(writer.await.unwrap());
    }
    let mut observed = Vec::new();
    for observer in observers {
        observed.extend(observer.await.unwrap());
    }
    let acked = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Acked { .. }))
        .count();
    println!(
        "cluster chaos: ready in {ready:.1?}; n{killed} killed, its projectors owned elsewhere \
         after {failover:.1?}; n{stopped} stopped {:.1?} after the kill for {:.1?}; {} appends \
         sent, {acked} acknowledged; {} answers observed",
        stopped_at - killed_at,
        continued_at - stopped_at,
        sent.len(),
        observed.len(),
    );
    assert!(acked > 0, "no append was acknowledged");

    let mut tally: BTreeMap<(&str, usize, u16, Option<String>), usize> = BTreeMap::new();
    for o in &observed {
        *tally
            .entry((
                o.projector,
                o.asked,
                o.status,
                o.owner.as_ref().map(|(n, _)| n.clone()),
            ))
            .or_default() += 1;
    }
    for (k, n) in &tally {
        println!("observed {k:?}: {n}");
    }
    // A deployed projector is answered, or 503 while it moves: never 404, never a 5xx else.
    let wrong: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.status != 200 && o.status != 503)
        .collect();
    assert!(wrong.is_empty(), "answers neither 200 nor 503: {wrong:?}");
    // Owners answered in lease order, each lease by one node.
    leases_never_go_back(&observed);
    // Another node took the stopped node's projectors before it continued: it answered as
    // their owner (200, or 503 while it loads them or catches up).
    let mut taken_over = Duration::ZERO;
    for (projector, owner) in &before_stop {
        if *owner != format!("n{stopped}") {
            continue;
        }
        let first = observed
            .iter()
            .filter(|o| o.projector == projector && o.sent > stopped_at)
            .filter(|o| {
                o.owner
                    .as_ref()
                    .is_some_and(|(n, _)| *n != format!("n{stopped}"))
            })
            .map(|o| o.received)
            .min();
        let first = first.filter(|at| *at < continued_at);
        let Some(first) = first else {
            panic!(
                "n{stopped} was stopped for {STOPPED_FOR:?} and no other node took {projector} over meanwhile"
            );
        };
        taken_over = taken_over.max(first - stopped_at);
    }
    println!(
        "n{stopped}'s projectors taken over (answered as owner, 200 or 503) by another node {taken_over:.1?} after it was stopped"
    );
    views_never_go_back(&observed);
    checkpoints_never_go_back(&observed);
    let resumed: Vec<&Observed> = observed
        .iter()
        .filter(|o| {
            o.asked == stopped && o.received > continued_at && o.sent < continued_at + TTL / 3
        })
        .collect();
    println!(
        "answers of the stopped node just after it continued: {} ({} as owner)",
        resumed.len(),
        resumed.iter().filter(|o| o.owner.is_some()).count()
    );

    // Every view, through every node, equals the model of the log as it settled; so does
    // `verify`, asked through a node that does not own the projector.
    wait_for_nodes(&clients, 3).await;
    let (head, events) = settled_log(&urls).await;
    let expected = common::model::views(&events);
    for client in &clients {
        for (name, _, model) in PROJECTORS {
            let view = settled_view(client, name, head).await;
            same_as_model(name, &view, &expected[model]);
        }
    }
    let owned = owners(&clients[0]).await;
    for (name, _, _) in PROJECTORS {
        let through = (0..3).find(|i| owned[name] != format!("n{i}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let verified = loop {
            let path = format!("/projectors/{name}/verify");
            let verified = clients[through]
                .send(clients[through].request("POST", &path))
                .await;
            if verified.status != 503 || Instant::now() > deadline {
                break verified;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(verified.status, 200, "{name}: {}", verified.body);
        assert_eq!(
            verified.body["identical"], true,
            "{name}: {}",
            verified.body
        );
    }

    // Read-your-writes through a node that does not own the projector.
    let owner = &owned["event-counter"];
    let (writer, reader) = {
        let others: Vec<usize> = (0..3).filter(|i| *owner != format!("n{i}")).collect();
        (others[0], others[1])
    };
    let after = append_recorded(
        &clients[writer],
        "note-after",
        vec![json!({"type": "Noted", "data": {"uid": "after"}})],
    )
    .await;
    let Outcome::Acked { last: position, .. } = after.outcome else {
        unreachable!()
    };
    sent.push(after);
    let read = clients[reader]
        .get(&format!(
            "/projectors/event-counter/view/total?min_position={position}"
        ))
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body, json!(position), "event-counter/total");

    // The log, read back from JetStream once no node is left to add to it.
    for node in nodes.iter_mut() {
        drop(node.take());
    }
    let (head, events) = read_log(&urls).await;
    check_log(&sent, head, &events);
    println!(
        "{head} events checked; the test took {:.1?}",
        began.elapsed()
    );
}

/// A projector node `n` owns, with the revision of its lease, as `client` sees it.
async fn lease_of(client: &Client, n: usize) -> (String, u64) {
    let reply = client.get("/cluster").await;
    let projectors = reply.body["projectors"].as_array().unwrap();
    let owned = projectors
        .iter()
        .find(|p| p["owner"] == format!("n{n}"))
        .unwrap_or_else(|| panic!("n{n} owns nothing: {}", reply.body));
    let name = owned["name"].as_str().unwrap().to_string();
    (name, owned["lease_revision"].as_u64().unwrap())
}

/// `POST /projectors/{projector}/pause` sent to the node at `base` as another node forwards
/// it, under lease `revision`: the status and body it answered (its answer may come only once
/// the node continues).
async fn forwarded_pause(base: String, projector: String, revision: u64) -> (u16, String) {
    let answer = reqwest::Client::new()
        .post(format!("{base}/projectors/{projector}/pause"))
        .header("prism-forwarded-by", "n-test")
        .header("prism-lease-revision", revision.to_string())
        .header("prism-cluster-token", common::process::CLUSTER_TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the stopped node answers once it continues");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

/// The node (not in `except`) owning most projectors.
fn busiest(owners: &HashMap<String, String>, except: &[usize]) -> usize {
    let mut counts: BTreeMap<usize, usize> = (0..3)
        .filter(|i| !except.contains(i))
        .map(|i| (i, 0))
        .collect();
    for owner in owners.values() {
        if let Some(count) = owner[1..]
            .parse()
            .ok()
            .and_then(|i: usize| counts.get_mut(&i))
        {
            *count += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(i, n)| (*n, usize::MAX - i))
        .unwrap()
        .0
}

/// Waits until every projector is owned by a node not in `gone`.
async fn wait_owned_without(client: &Client, gone: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owners = owners(client).await;
        if owners.len() == PROJECTORS.len()
            && owners
                .values()
                .all(|o| !gone.iter().any(|g| *o == format!("n{g}")))
        {
            return;
        }
        assert!(Instant::now() < deadline, "not taken over: {owners:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log once its head has not moved for a second (an append a node was still resolving
/// may land after the writers stopped).
async fn settled_log(urls: &str) -> (u64, Vec<prism::log::RecordedEvent>) {
    let mut last = read_log(urls).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = read_log(urls).await;
        if now.0 == last.0 {
            return now;
        }
        last = now;
    }
}
