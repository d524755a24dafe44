//! Prism on a 3-server JetStream cluster (stream R3) loses nothing when the server leading the
//! events stream is killed with SIGKILL under load, and restarted.
//!
//! One Prism node (in process) runs the three examples; writers append over HTTP, each to
//! streams of its own, every event carrying a unique `uid`, and give up waiting for an answer
//! after 2 s. Their appends: one stream with an expected version; one stream with none (its
//! notes); and every fifth an atomic append over two streams (`POST /events`), each part with
//! its expected version. Half the writers send no `Idempotency-Key` and never retry
//! (an append they gave up on, or answered 503 of unknown outcome, may land later: their next
//! append to that stream expects the same version and learns the truth from a 409); the other
//! half send one and send the same append again under the same key until it is acknowledged or
//! refused. About a second into the load the leader of `PRISM_EVENTS` is killed with
//! `kill -9`; once another server leads it, the two go on alone for 2 s before the killed one is
//! restarted (same ports, same store); the load goes on 3 s more.
//!
//! Once the log's head has settled, the views of the Prism node that lived through the kill
//! must equal the ones this file computes from the events read back (a model of the examples
//! written here, not Prism's replay). Then Prism stops (nothing it was still trying can land
//! after that) and the whole log is read back from JetStream and checked against what the writers were told, not against Prism's own
//! reading of it: positions 1..=head all there, each stream's versions 1..n in position order,
//! every acknowledged append at exactly its positions with exactly its events, nothing of a
//! refused append, an append of unknown outcome whole or not at all, no event twice and none
//! nobody sent, a 409 only after an unknown outcome on that stream. Prism starts again on the
//! same data dir, its projectors resume from their checkpoints, and every view must again equal
//! the model's.

mod common;

use common::appends::{Outcome, Sent, check_log, read_log};
use common::nats::NatsCluster;
use common::writers::{WRITERS, write};
use prism::log::RecordedEvent;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const STREAM: &str = prism::log::jetstream::protocol::STREAM;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_appends_survive_a_kill_of_the_stream_leader() {
    let began = Instant::now();
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let configure = |config: &mut prism::server::ServerConfig| {
        config.event_log = Some(urls.clone());
        config.event_log_replicas = 3;
    };
    let (server, client) = common::start_with(dir.path(), configure).await;
    for (name, wasm) in common::examples() {
        client.deploy(name, wasm).await;
    }
    let ready = began.elapsed();

    // The load, the kill, the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let load = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(w, vec![client.base.clone()], stop.clone())))
        .collect();
    let reader = tokio::spawn(read_stream_meanwhile(client.base.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = tokio::task::block_in_place(|| cluster.stream_leader(STREAM));
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill9(leader));
    let new_leader = tokio::task::block_in_place(|| cluster.stream_leader(STREAM));
    let elected = killed.elapsed();
    assert_ne!(new_leader, leader, "the stream's leader did not change");
    // Two servers go on without the third for a while before it comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.restart(leader));
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for writer in writers {
        sent.extend(writer.await.unwrap());
    }
    let load = load.elapsed();
    let reads = reader.await.unwrap();

    // Figures for the report (not assertions), printed before the checks.
    let acked_at: Vec<(Instant, Instant)> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Acked { .. }))
        .map(|s| (s.started, s.ended))
        .collect();
    let before = acked_at.iter().filter(|(_, e)| *e < killed).count();
    let during = acked_at
        .iter()
        .filter(|(_, e)| *e >= killed && *e < restarted)
        .count();
    let after = acked_at.iter().filter(|(s, _)| *s > restarted).count();
    let mut ends: Vec<Instant> = acked_at.iter().map(|(_, e)| *e).collect();
    ends.sort();
    let (gap, gap_from) = ends
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .expect("acknowledgements");
    let count = |f: &dyn Fn(&Sent) -> bool| sent.iter().filter(|s| f(s)).count();
    let retried: Vec<&Sent> = sent.iter().filter(|s| s.keyed && s.attempts > 1).collect();
    println!(
        "leader kill: cluster and examples ready in {ready:.1?}; load {load:.1?}; server n{leader} \
         (the stream's leader) killed, n{new_leader} leads after {elected:.1?}, n{leader} \
         restarted after {:.1?}",
        restarted - killed
    );
    println!(
        "appends: {} sent, {} acknowledged ({before} before the kill, {during} while a server \
         was down, {after} sent after the restart), {} refused with 409, {} refused with 503 \
         (nothing appended), {} unknown; keyed appends sent more than once: {} ({} attempts); \
         {} acknowledged over two streams, {} with no expected version",
        sent.len(),
        acked_at.len(),
        count(&|s| matches!(s.outcome, Outcome::Refused(409, _))),
        count(&|s| matches!(s.outcome, Outcome::Refused(503, _))),
        count(&|s| matches!(s.outcome, Outcome::Unknown(_))),
        retried.len(),
        retried.iter().map(|s| s.attempts).sum::<u32>(),
        count(&|s| s.parts.len() == 2 && matches!(s.outcome, Outcome::Acked { .. })),
        count(&|s| s.parts[0].expected.is_none() && matches!(s.outcome, Outcome::Acked { .. })),
    );
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &sent {
        let last = match &s.outcome {
            Outcome::Refused(503, why) | Outcome::Unknown(why) => Some(why.as_str()),
            _ => None,
        };
        for why in s.retried_on.iter().map(String::as_str).chain(last) {
            *reasons.entry(why).or_default() += 1;
        }
    }
    for (why, times) in &reasons {
        println!("  answered {times}×: {why}");
    }
    println!(
        "longest pause between acknowledgements: {gap:.2?}, from {:+.2} s after the kill",
        signed_secs(gap_from, killed),
    );
    println!("stream reads meanwhile (GET /streams/order-w0a): {reads:?}");

    // A retry of the same append under its key is never taken for a different append.
    assert!(
        !reasons.keys().any(|why| why.starts_with("422")),
        "a keyed retry was refused as a different append"
    );

    // The fault happened under load: appends were acknowledged before the kill and after the
    // restart.
    assert!(before > 0, "no append was acknowledged before the kill");
    assert!(
        after > 0,
        "no append sent after the restart was acknowledged"
    );

    // The node that lived through the kill serves the views of the log as it settled.
    views_match_the_log(&client, &urls).await;

    // Prism stops: appends it was still trying for writers that gave up are abandoned.
    server.stop().await;

    // The log, read back from JetStream by a client of its own.
    let (head, events) = read_log(&urls).await;
    let uids = check_log(&sent, head, &events);
    let unknown: Vec<&Sent> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Unknown(_)))
        .collect();
    let landed = unknown
        .iter()
        .filter(|s| s.uids().all(|u| uids.contains(u)))
        .count();
    println!(
        "appends of unknown outcome: {} landed (once), {} did not",
        landed,
        unknown.len() - landed
    );

    // Prism again: every view, resumed from its checkpoint, equals the one computed here from
    // the events read back.
    let (server, client) = common::start_with(dir.path(), configure).await;
    let expected = common::model::views(&events);
    for (name, _) in common::examples() {
        let status = client.wait_caught_up(name).await;
        assert_eq!(status["checkpoint"], head, "{name}: {status}");
        let view = client.whole_view_paged(name, 1000).await;
        same_as_model(name, &view, &expected[name]);
    }
    server.stop().await;
    println!(
        "{} events in the log, all checked; the test took {:.1?}",
        events.len(),
        began.elapsed()
    );
}

fn same_as_model(name: &str, view: &Map<String, Value>, want: &Map<String, Value>) {
    for (key, value) in want {
        assert_eq!(view.get(key), Some(value), "{name}/{key}");
    }
    assert_eq!(view.len(), want.len(), "{name} has keys the model has not");
}

/// Waits for the log's head to settle and every projector to reach it, then checks each view
/// against the model of the events read back; looks again if an append Prism was still
/// resolving landed meanwhile.
async fn views_match_the_log(client: &common::Client, urls: &str) {
    for _ in 0..5 {
        let (head, events) = read_log(urls).await;
        let mut views = Vec::new();
        for (name, _) in common::examples() {
            let deadline = Instant::now() + Duration::from_secs(60);
            let checkpoint = loop {
                let status = client.status(name).await;
                assert_ne!(status["state"], "faulted", "{name} faulted: {status}");
                let checkpoint = status["checkpoint"].as_u64().unwrap();
                if checkpoint >= head {
                    break checkpoint;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not reach {head}: {status}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if checkpoint > head {
                break;
            }
            views.push((name, client.whole_view_paged(name, 1000).await));
        }
        if views.len() < common::examples().len() || read_log(urls).await.0 != head {
            continue;
        }
        let expected = common::model::views(&events);
        for (name, view) in &views {
            same_as_model(name, view, &expected[name]);
        }
        println!("views of the node that lived through the kill checked at position {head}");
        return;
    }
    panic!("the log's head did not settle");
}

fn signed_secs(at: Instant, zero: Instant) -> f64 {
    if at >= zero {
        (at - zero).as_secs_f64()
    } else {
        -(zero - at).as_secs_f64()
    }
}

/// Reads a stream over HTTP every 100 ms until `stop`: how many reads got each answer (a
/// figure, not a check).
async fn read_stream_meanwhile(base: String, stop: Arc<AtomicBool>) -> BTreeMap<String, usize> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut answers = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let answer = match http
            .get(format!("{base}/streams/order-w0a?limit=10"))
            .send()
            .await
        {
            Ok(reply) => reply.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "transport error".into(),
        };
        *answers.entry(answer).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers
}

/// The test's model of the examples, on the shared history, gives the hand-computed views.
#[test]
fn the_model_of_the_examples_gives_the_hand_computed_views() {
    let mut events = Vec::new();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for (stream, appended) in common::history() {
        for event in appended.as_array().unwrap() {
            let version = versions.entry(stream).or_default();
            *version += 1;
            events.push(RecordedEvent {
                position: events.len() as u64 + 1,
                stream: stream.to_string(),
                stream_version: *version,
                event_type: event["type"].as_str().unwrap().to_string(),
                timestamp_ms: 0,
                data: event["data"].to_string().into_bytes(),
                metadata: b"{}".to_vec(),
            });
        }
    }
    let views = common::model::views(&events);
    for (name, _) in common::examples() {
        assert_eq!(views[name], common::expected_view(name), "{name}");
    }
}
