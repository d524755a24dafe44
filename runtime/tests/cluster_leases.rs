//! The cluster's building blocks against a real nats-server: a projector's lease is held by
//! one node at a time, renewed at its revision, lost when another node took it after it
//! expired, and its holder stops counting it valid before any other node can take it; the
//! nodes' set lists the nodes that announce themselves and drops a silent one within its TTL;
//! three nodes' ownership loops give every projector the owner rendezvous hashing names, and
//! never two owners at once, through a node falling silent and coming back.

mod common;

use common::nats::NatsServer;
use prism::cluster::{Leases, Membership, Node, Ownership, RenewError, rendezvous};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(2);
const MARGIN: Duration = Duration::from_millis(500);

async fn jetstream(server: &NatsServer) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_has_one_holder_who_stops_before_another_takes_it() {
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    let a = Leases::open(&js, "a", 1, TTL, MARGIN).await.unwrap();
    let b = Leases::open(&js, "b", 1, TTL, MARGIN).await.unwrap();
    let name = "order-totals";

    let mut lease = a
        .acquire(name)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert!(a.valid(&lease));
    assert_eq!(b.acquire(name).await.unwrap(), None, "held by a");
    assert_eq!(
        b.holder(name).await.unwrap(),
        Some(("a".to_string(), lease.revision))
    );
    // Renewed within its TTL, it stays a's well past the first TTL.
    let started = Instant::now();
    while started.elapsed() < TTL * 2 {
        tokio::time::sleep(TTL / 4).await;
        let renewed = a.renew(name, &lease).await.unwrap();
        assert!(renewed.revision > lease.revision);
        lease = renewed;
        assert_eq!(b.acquire(name).await.unwrap(), None, "renewed by a");
    }

    // a stops renewing; b tries to take the lease all along. When b first holds it (its call
    // returned), a's lease is no longer valid to a: never two owners at once.
    let (taken_at, taken) = loop {
        if let Some(taken) = b.acquire(name).await.unwrap() {
            break (Instant::now(), taken);
        }
        assert!(
            lease.written.elapsed() < TTL * 5,
            "the expired lease was never taken"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!a.valid(&lease), "a still counted the lease b took");
    assert!(
        taken_at - lease.written >= TTL - MARGIN,
        "taken {:?} after a's last renewal, before a's lease stopped counting",
        taken_at - lease.written
    );
    // a's renewal at its old revision fails: it is no longer the owner.
    assert!(matches!(a.renew(name, &lease).await, Err(RenewError::Lost)));
    assert_eq!(
        a.holder(name).await.unwrap(),
        Some(("b".to_string(), taken.revision))
    );

    // Released, it is free at once.
    b.release(name, &taken).await.unwrap();
    assert_eq!(a.holder(name).await.unwrap(), None);
    assert!(a.acquire(name).await.unwrap().is_some());

    // Every node must use the bucket's TTL.
    let other = Leases::open(&js, "c", 1, TTL * 3, MARGIN).await;
    assert!(other.is_err(), "a node with another TTL joined");
}

/// Node `id` in the nodes' set, announced.
async fn joined(js: &async_nats::jetstream::Context, id: &str, node: Node) -> Membership {
    let membership = Membership::open(js, id, node, 1, TTL).await.unwrap();
    membership.join().await.unwrap();
    membership
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nodes_set_drops_a_silent_node() {
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    let node = |n: u16| Node {
        url: format!("http://127.0.0.1:{n}"),
    };
    let one = joined(&js, "n1", node(1)).await;
    let two = joined(&js, "n2", node(2)).await;
    let three = joined(&js, "n3", node(3)).await;
    let live = one.live().await.unwrap();
    assert_eq!(
        live.into_iter().collect::<Vec<_>>(),
        [
            ("n1".to_string(), node(1)),
            ("n2".to_string(), node(2)),
            ("n3".to_string(), node(3))
        ]
    );
    // n3 leaves when it stops; n2 falls silent; n1 keeps announcing itself.
    three.leave().await.unwrap();
    assert!(!one.live().await.unwrap().contains_key("n3"));
    let started = Instant::now();
    loop {
        one.announce().await.unwrap();
        let live = one.live().await.unwrap();
        if !live.contains_key("n2") {
            assert!(live.contains_key("n1"));
            break;
        }
        assert!(
            started.elapsed() < TTL * 5,
            "a silent node stayed in the set"
        );
        tokio::time::sleep(TTL / 4).await;
    }
    assert!(started.elapsed() >= TTL / 2, "dropped before its TTL");
    drop(two);
    // Every node must use the bucket's TTL.
    assert!(
        Membership::open(&js, "n4", node(4), 1, TTL * 3)
            .await
            .is_err()
    );
}

/// Each projector's owners now, by the nodes' own account (`owns`).
fn owners(
    nodes: &[(&str, Arc<Ownership>)],
    projectors: &[String],
) -> BTreeMap<String, Vec<String>> {
    projectors
        .iter()
        .map(|p| {
            let of: Vec<String> = nodes
                .iter()
                .filter(|(_, n)| n.owns(p).is_some())
                .map(|(id, _)| id.to_string())
                .collect();
            (p.clone(), of)
        })
        .collect()
}

/// What rendezvous hashing gives each projector among `live`.
fn expected(live: &[&str], projectors: &[String]) -> BTreeMap<String, Vec<String>> {
    projectors
        .iter()
        .map(|p| {
            let owner = rendezvous::owner(p, live.iter().copied()).unwrap();
            (p.clone(), vec![owner.to_string()])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_projector_has_one_owner_at_a_time_through_a_node_falling_silent() {
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    let projectors: Vec<String> = (0..24).map(|i| format!("projector-{i}")).collect();
    let mut nodes = Vec::new();
    for (i, id) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let url = format!("http://127.0.0.1:{}", 9000 + i);
        let membership = Membership::open(&js, id, Node { url }, 1, TTL)
            .await
            .unwrap();
        let leases = Leases::open(&js, id, 1, TTL, MARGIN).await.unwrap();
        nodes.push((id, Arc::new(Ownership::new(id, membership, leases))));
    }
    // Each node's loop; a silent node does nothing (a stopped process, or one cut off).
    let silent: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    for ((_, node), silent) in nodes.iter().zip(&silent) {
        let (node, silent, stop) = (node.clone(), silent.clone(), stop.clone());
        let projectors = projectors.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !silent.load(Ordering::Relaxed)
                    && node.renew().await.is_ok()
                    && let Ok(tick) = node.balance(&projectors, &Default::default(), |_| {}).await
                {
                    for p in tick.to_release {
                        let _ = node.release(&p).await;
                    }
                }
                tokio::time::sleep(TTL / 4).await;
            }
        });
    }
    // Never two owners at once, sampled every 10 ms throughout.
    let (doubled, samples) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sampler = {
        let (nodes, projectors, stop) = (nodes.clone(), projectors.clone(), stop.clone());
        let (doubled, samples) = (doubled.clone(), samples.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now = owners(&nodes, &projectors);
                doubled.fetch_add(
                    now.values().filter(|o| o.len() > 1).count(),
                    Ordering::Relaxed,
                );
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let converge = |live: Vec<&'static str>, within: Duration| {
        let (nodes, projectors) = (nodes.clone(), projectors.clone());
        async move {
            let want = expected(&live, &projectors);
            let started = Instant::now();
            loop {
                let now = owners(&nodes, &projectors);
                if now == want {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < within,
                    "ownership did not settle on {live:?}: {now:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    converge(vec!["n1", "n2", "n3"], TTL * 5).await;
    let shares: Vec<usize> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            expected(&["n1", "n2", "n3"], &projectors)
                .values()
                .filter(|o| o[0] == *n)
                .count()
        })
        .collect();
    assert!(
        shares.iter().all(|s| *s > 0),
        "every node owns some: {shares:?}"
    );

    // n2 falls silent: its projectors move to n1 and n3, after n2 itself stopped owning them.
    silent[1].store(true, Ordering::Relaxed);
    let moved = converge(vec!["n1", "n3"], TTL * 8).await;
    assert!(
        nodes[1].1.owns(&projectors[0]).is_none()
            && projectors.iter().all(|p| nodes[1].1.owns(p).is_none()),
        "a silent node still counts itself owner"
    );
    // n2 comes back: it takes its share again, each handed over by its owner.
    silent[1].store(false, Ordering::Relaxed);
    converge(vec!["n1", "n2", "n3"], TTL * 8).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    println!(
        "projectors moved {moved:.1?} after n2 fell silent; {} samples",
        samples.load(Ordering::Relaxed)
    );
    assert!(samples.load(Ordering::Relaxed) > 100);
    assert_eq!(
        doubled.load(Ordering::Relaxed),
        0,
        "a projector had two owners at once"
    );
}
