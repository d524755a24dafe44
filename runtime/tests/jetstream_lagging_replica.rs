//! A replica that fell behind (stopped with SIGSTOP while the log grew, then resumed), asked
//! through a client connected to it: nats-server 2.15.1 answers a direct get for messages it
//! lacks with "not found", `min_last_seq` or not (seen here: the unguarded round shows it).
//! Prism's reads must take such an answer for "ask again", never for "nothing there": the
//! batch reader fails it (a runner pauses and reads again), and a stream read, which knows from
//! the leader how far the stream goes, answers all of it or 503 — never a stale page.

mod common;

use common::nats::NatsCluster;
use prism::log::jetstream::protocol::{STREAM, direct_get_batch_after};
use prism::log::jetstream::{JetStreamLog, JetStreamOptions};
use prism::log::{EventLog, ExpectedVersion, NewEvent, ReadError};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_behind_is_never_taken_for_the_end_of_the_log() {
    let cluster = NatsCluster::start();
    let first = EventLog::new(JetStreamLog::connect(&cluster.urls(), 3).unwrap());
    let event = |i: u64| NewEvent {
        event_type: "T".into(),
        data: format!("{{\"i\":{i}}}").into_bytes(),
        metadata: None,
        id: None,
    };
    first
        .append("s", ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap();
    drop(first);
    let leader = tokio::task::block_in_place(|| cluster.stream_leader(STREAM));
    let behind = (leader + 1) % 3;
    let log = EventLog::new(
        JetStreamLog::connect_with(JetStreamOptions::new(&cluster.url(leader), 3)).unwrap(),
    );
    let client = async_nats::connect(cluster.url(behind)).await.unwrap();
    let reader = EventLog::new(
        JetStreamLog::connect_with(JetStreamOptions::new(&cluster.url(behind), 3)).unwrap(),
    );
    // Rounds: the replica falls behind, then is asked without the guard (to show that it
    // answers from what it holds), with it, and through a stream read.
    let mut figures = Vec::new();
    for round in 0..3 {
        cluster.signal(behind, "STOP");
        for n in 0..20u64 {
            let events = (0..500).map(|i| event(n * 500 + i)).collect();
            log.append("s", ExpectedVersion::Any, events).await.unwrap();
        }
        let head = log.head();
        cluster.signal(behind, "CONT");
        let (mut whole, mut short, mut refused, mut last_refusal) = (0, 0, 0, String::new());
        for _ in 0..40 {
            let answer = if round < 2 {
                let guard = if round == 1 { head } else { 0 };
                let got = direct_get_batch_after(
                    &client,
                    head - 99,
                    None,
                    100,
                    1 << 20,
                    guard,
                    Duration::from_millis(500),
                )
                .await;
                got.map(|got| got.last().map(|m| m.sequence) == Some(head))
                    .map_err(|e| e.to_string())
            } else {
                // Versions are positions here: one stream.
                let read = tokio::task::block_in_place(|| reader.read_stream("s", head - 10, 100));
                match read {
                    Ok(events) => Ok(events.len() == 11
                        && events.iter().map(|e| e.stream_version).eq(head - 10..=head)),
                    Err(ReadError::Unavailable(why)) => Err(why),
                    Err(e) => panic!("{e}"),
                }
            };
            match answer {
                Ok(true) => whole += 1,
                Ok(false) => short += 1,
                Err(why) => {
                    refused += 1;
                    last_refusal = why;
                }
            }
        }
        println!(
            "round {round}: whole {whole}, short {short}, refused (ask again) {refused} ({last_refusal})"
        );
        // Refusing is right only while the replica is behind: most reads are answered.
        assert!(
            whole > 20,
            "round {round}: reads were refused after the catch-up"
        );
        figures.push(short);
    }
    assert_eq!(
        figures[1], 0,
        "a guarded read took a replica behind for the end"
    );
    assert_eq!(figures[2], 0, "a stream read answered a stale page");
}
