//! The node's stream index on JetStream: stream reads start at the position the index gives
//! for the first version asked (checked against positions computed by hand, in and beyond
//! the indexed prefix: an index held still shows the reads past its end), listings come from
//! it and never from an index behind the head, a reopened node keeps its index, and an index
//! written for another log (the events stream deleted and created again) is not believed.

mod common;

use common::nats::NatsServer;
use prism::log::jetstream::{JetStreamLog, JetStreamOptions};
use prism::log::{EventLog, ExpectedVersion, NewEvent, ReadError};
use std::path::Path;

/// Appends of 100 events to `a`, each followed by one event to `b`.
const ROUNDS: u64 = 15;

fn open(url: &str, index: Option<&Path>) -> EventLog {
    EventLog::new(open_with(url, index, true))
}

fn open_with(url: &str, index: Option<&Path>, follow_index: bool) -> JetStreamLog {
    let options = JetStreamOptions {
        index: index.map(Path::to_path_buf),
        follow_index,
        ..JetStreamOptions::new(url, 1)
    };
    JetStreamLog::connect_with(options).unwrap()
}

fn events(stream: &str, from: u64, n: u64) -> Vec<NewEvent> {
    (from..from + n)
        .map(|v| NewEvent {
            event_type: "E".into(),
            data: format!(r#"{{"stream":"{stream}","v":{v}}}"#).into_bytes(),
            metadata: None,
            id: None,
        })
        .collect()
}

/// Where version `v` of `a` is: round `(v-1)/100` holds 101 positions, `a`'s 100 first.
fn position_in_a(v: u64) -> u64 {
    (v - 1) / 100 * 101 + (v - 1) % 100 + 1
}

/// Version `v` of `b` closes round `v-1`.
fn position_in_b(v: u64) -> u64 {
    v * 101
}

/// The (position, version, data) of `read_stream(stream, from, max)`, checked against the
/// hand-computed positions.
fn check_read(log: &EventLog, stream: &str, from: u64, max: usize, last: u64) {
    let read = log.read_stream(stream, from, max).unwrap();
    let expected: Vec<(u64, u64, String)> = (from..=last)
        .take(max)
        .map(|v| {
            let position = match stream {
                "a" => position_in_a(v),
                _ => position_in_b(v),
            };
            (position, v, format!(r#"{{"stream":"{stream}","v":{v}}}"#))
        })
        .collect();
    let got: Vec<(u64, u64, String)> = read
        .iter()
        .map(|e| {
            (
                e.position,
                e.stream_version,
                String::from_utf8(e.data.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected, "{stream} from {from}, {max} at most");
}

/// Reads across the log after `rounds` rounds.
fn check_all_reads(log: &EventLog, rounds: u64) {
    let (a, b) = (rounds * 100, rounds);
    check_read(log, "a", 1, 10, a);
    check_read(log, "a", 99, 3, a);
    check_read(log, "a", 1234, 300, a);
    check_read(log, "a", 1, 1200, a);
    check_read(log, "b", 7, 100, b);
    check_read(log, "b", b, 1, b);
    assert!(log.read_stream("a", a + 1, 10).unwrap().is_empty());
    assert!(log.read_stream("c", 1, 10).unwrap().is_empty());
}

async fn round(log: &EventLog, round: u64) {
    log.append("a", ExpectedVersion::Any, events("a", round * 100 + 1, 100))
        .await
        .unwrap();
    log.append(
        "b",
        ExpectedVersion::Exact(round),
        events("b", round + 1, 1),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_reads_and_listings_come_from_the_node_s_index() {
    let nats = NatsServer::start();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("jetstream-index.redb");

    let log = open(&url, Some(&index));
    // Read while the log is written: the reads beyond the indexed prefix walk the subject.
    for r in 0..ROUNDS {
        round(&log, r).await;
        let read = log.read_stream("b", 1, 100).unwrap();
        assert_eq!(read.len() as u64, r + 1, "read-your-writes");
        assert_eq!(read.last().unwrap().position, position_in_b(r + 1));
    }
    let listed = |rounds: u64| vec![("a".to_string(), rounds * 100), ("b".to_string(), rounds)];
    // A listing waits for the index to reach the head: it holds every append made here.
    assert_eq!(log.streams(None, 10).unwrap(), listed(ROUNDS));
    assert_eq!(log.streams(Some("a"), 10).unwrap(), listed(ROUNDS)[1..]);
    check_all_reads(&log, ROUNDS);
    drop(log);

    // Reopened on the same file without following the log: the index kept what it held, and
    // reads beyond it (from versions it does not hold, or across its end) walk on from there.
    let paused = open_with(&url, Some(&index), false);
    assert_eq!(paused.indexed(), ROUNDS * 101, "the index was kept");
    let paused = EventLog::new(paused);
    round(&paused, ROUNDS).await;
    let rounds = ROUNDS + 1;
    check_read(&paused, "a", 1550, 20, rounds * 100);
    check_read(&paused, "a", 1490, 30, rounds * 100);
    check_read(&paused, "a", 1501, 100, rounds * 100);
    check_read(&paused, "b", 14, 10, rounds);
    check_all_reads(&paused, rounds);
    // A listing does not answer from an index behind the head.
    assert!(matches!(
        paused.streams(None, 10),
        Err(ReadError::Unavailable(_))
    ));
    drop(paused);

    let log = open(&url, Some(&index));
    assert_eq!(log.streams(None, 10).unwrap(), listed(rounds));
    check_all_reads(&log, rounds);
    drop(log);

    // The stream deleted and created again holds other events at the same positions, more of
    // them: an index believed across the two would list `a` and `b`, and read `z` wrongly.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    js.delete_stream("PRISM_EVENTS").await.unwrap();
    let other = open(&url, None);
    let events_in_z = (rounds + 1) * 101 + 50;
    let mut version = 0;
    while version < events_in_z {
        let n = (events_in_z - version).min(500);
        other
            .append("z", ExpectedVersion::Any, events("z", version + 1, n))
            .await
            .unwrap();
        version += n;
    }
    drop(other);
    let log = open(&url, Some(&index));
    assert_eq!(
        log.streams(None, 10).unwrap(),
        [("z".to_string(), events_in_z)]
    );
    let read = log.read_stream("z", 1000, 2).unwrap();
    assert_eq!(
        read.iter()
            .map(|e| (e.position, e.stream_version))
            .collect::<Vec<_>>(),
        [(1000, 1000), (1001, 1001)]
    );
}
