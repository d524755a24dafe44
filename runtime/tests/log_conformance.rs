//! What every store behind the event log must do, checked through [`EventLog`] — the handle
//! everything above the log holds — against expectations written out by hand here. One suite,
//! run for each store (`conformance!` below): the embedded redb log and the JetStream log (on a
//! real nats-server).

use prism::log::{
    AppendError, Appended, BatchRead, EventLog, ExpectedVersion, FlatBatch, NewEvent, StreamAppend,
};
use std::path::Path;
use std::time::Duration;

mod common;

fn event(event_type: &str, data: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        data: data.as_bytes().to_vec(),
        metadata: None,
        id: None,
    }
}

fn part(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream: stream.into(),
        expected,
        events,
    }
}

/// `(position, stream, stream version, type, data)` of every event from `from` on.
fn everything(log: &EventLog, from: u64) -> Vec<(u64, String, u64, String, String)> {
    log.read_from(from, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.position,
                e.stream,
                e.stream_version,
                e.event_type,
                String::from_utf8(e.data).unwrap(),
            )
        })
        .collect()
}

fn row(p: u64, stream: &str, v: u64, t: &str, data: &str) -> (u64, String, u64, String, String) {
    (p, stream.into(), v, t.into(), data.into())
}

async fn expected_versions(log: EventLog) {
    let a = log
        .append("s", ExpectedVersion::Exact(0), vec![event("A", "1")])
        .await
        .unwrap();
    assert_eq!(
        a,
        Appended {
            first_position: 1,
            last_position: 1,
            stream_version: 1,
            replayed: false
        }
    );
    // A stale expectation appends nothing and says where the stream is.
    match log
        .append("s", ExpectedVersion::Exact(0), vec![event("B", "2")])
        .await
    {
        Err(AppendError::VersionConflict {
            stream,
            expected: 0,
            actual: 1,
        }) => assert_eq!(stream, "s"),
        other => panic!("{other:?}"),
    }
    // A stream that does not exist is at version 0.
    match log
        .append("t", ExpectedVersion::Exact(3), vec![event("B", "2")])
        .await
    {
        Err(AppendError::VersionConflict {
            expected: 3,
            actual: 0,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let b = log
        .append(
            "s",
            ExpectedVersion::Exact(1),
            vec![event("B", "2"), event("C", "3")],
        )
        .await
        .unwrap();
    assert_eq!(
        (b.first_position, b.last_position, b.stream_version),
        (2, 3, 3)
    );
    let c = log
        .append("t", ExpectedVersion::Any, vec![event("D", "4")])
        .await
        .unwrap();
    assert_eq!((c.first_position, c.stream_version), (4, 1));
    assert_eq!(log.head(), 4);
    assert_eq!(
        everything(&log, 1),
        [
            row(1, "s", 1, "A", "1"),
            row(2, "s", 2, "B", "2"),
            row(3, "s", 3, "C", "3"),
            row(4, "t", 1, "D", "4"),
        ]
    );
}

async fn multi_stream_appends_are_atomic(log: EventLog) {
    log.append("a", ExpectedVersion::Any, vec![event("A", "0")])
        .await
        .unwrap();
    let done = log
        .append_all(
            None,
            vec![
                part("b", ExpectedVersion::Exact(0), vec![event("B", "1")]),
                part(
                    "a",
                    ExpectedVersion::Exact(1),
                    vec![event("A", "2"), event("A", "3")],
                ),
                // The same stream again: checked after the parts before it.
                part("b", ExpectedVersion::Exact(1), vec![event("B", "4")]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (done.first_position, done.last_position, done.stream_version),
        (2, 5, 2)
    );
    // One failing part refuses the whole append: nothing of it lands.
    let refused = log
        .append_all(
            None,
            vec![
                part("c", ExpectedVersion::Any, vec![event("C", "x")]),
                part("a", ExpectedVersion::Exact(1), vec![event("A", "y")]),
            ],
        )
        .await;
    assert!(
        matches!(refused, Err(AppendError::VersionConflict { actual: 3, .. })),
        "{refused:?}"
    );
    assert_eq!(log.head(), 5);
    assert_eq!(log.stream_version("c").unwrap(), 0);
    assert_eq!(
        everything(&log, 1),
        [
            row(1, "a", 1, "A", "0"),
            row(2, "b", 1, "B", "1"),
            row(3, "a", 2, "A", "2"),
            row(4, "a", 3, "A", "3"),
            row(5, "b", 2, "B", "4"),
        ]
    );
}

async fn concurrent_appends_are_gapless(log: EventLog) {
    // 8 writers, each appending batches of 1–3 events to its own stream with exact versions.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("w-{w}");
            let mut version = 0;
            for i in 0..40u64 {
                let n = 1 + (i + w) % 3;
                let events = (0..n)
                    .map(|k| event("E", &format!("{w}:{i}:{k}")))
                    .collect();
                let done = log
                    .append(&stream, ExpectedVersion::Exact(version), events)
                    .await
                    .unwrap();
                assert_eq!(done.last_position - done.first_position + 1, n);
                version += n;
                assert_eq!(done.stream_version, version);
            }
            version
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(log.head(), total);
    let current = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || log.current_head())
            .await
            .unwrap()
    };
    assert_eq!(
        current.unwrap(),
        total,
        "the head as the log's authority knows it"
    );
    let all = everything(&log, 1);
    // Positions 1..=total, each stream's versions 1, 2, 3, … in log order, each writer's
    // events in the order it sent them, one batch's events side by side.
    assert_eq!(
        all.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    for w in 0..8u64 {
        let mine: Vec<_> = all.iter().filter(|e| e.1 == format!("w-{w}")).collect();
        let expected: Vec<String> = (0..40u64)
            .flat_map(|i| (0..1 + (i + w) % 3).map(move |k| format!("{w}:{i}:{k}")))
            .collect();
        assert_eq!(
            mine.iter().map(|e| e.4.clone()).collect::<Vec<_>>(),
            expected
        );
        assert!(mine.iter().enumerate().all(|(i, e)| e.2 == i as u64 + 1));
        assert_eq!(
            log.stream_version(&format!("w-{w}")).unwrap(),
            mine.len() as u64
        );
    }
}

async fn racing_writers_on_one_stream_never_both_win(log: EventLog) {
    // Four writers append to one stream, each expecting the version it last read: of two
    // appends expecting the same version, exactly one lands.
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..25u64 {
                let version = {
                    let log = log.clone();
                    tokio::task::spawn_blocking(move || log.stream_version("race").unwrap())
                        .await
                        .unwrap()
                };
                let data = format!("{w}:{i}");
                match log
                    .append(
                        "race",
                        ExpectedVersion::Exact(version),
                        vec![event("E", &data)],
                    )
                    .await
                {
                    Ok(done) => {
                        assert_eq!(done.stream_version, version + 1);
                        won.push((done.stream_version, data));
                    }
                    Err(AppendError::VersionConflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            won
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        won.extend(task.await.unwrap());
    }
    won.sort();
    // Every version won once, and the stream holds exactly the winners, in version order.
    assert_eq!(
        won.iter().map(|w| w.0).collect::<Vec<_>>(),
        (1..=won.len() as u64).collect::<Vec<_>>()
    );
    let stored: Vec<(u64, String)> = everything(&log, 1)
        .into_iter()
        .map(|e| (e.2, e.4))
        .collect();
    assert_eq!(stored, won);
}

async fn streams_are_read_and_listed(log: EventLog) {
    for (stream, n) in [
        ("order-2", 3),
        ("order-10", 1),
        ("account-1", 2),
        ("order-2", 2),
    ] {
        let events = (0..n)
            .map(|i| event("E", &format!("{stream}/{i}")))
            .collect();
        log.append(stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let read = log.read_stream("order-2", 2, 10).unwrap();
    assert_eq!(
        read.iter()
            .map(|e| (
                e.position,
                e.stream_version,
                String::from_utf8(e.data.clone()).unwrap()
            ))
            .collect::<Vec<_>>(),
        [
            (2, 2, "order-2/1".to_string()),
            (3, 3, "order-2/2".to_string()),
            (7, 4, "order-2/0".to_string()),
            (8, 5, "order-2/1".to_string()),
        ]
    );
    assert_eq!(log.read_stream("order-2", 5, 10).unwrap().len(), 1);
    assert_eq!(log.read_stream("order-2", 1, 2).unwrap().len(), 2);
    assert!(log.read_stream("order-2", 6, 10).unwrap().is_empty());
    assert!(log.read_stream("missing", 1, 10).unwrap().is_empty());
    // Listed in byte order of their names, paged after a name.
    let all = log.streams(None, 10).unwrap();
    assert_eq!(
        all,
        [
            ("account-1".to_string(), 2),
            ("order-10".to_string(), 1),
            ("order-2".to_string(), 5),
        ]
    );
    assert_eq!(log.streams(None, 1).unwrap(), all[..1]);
    assert_eq!(log.streams(Some("account-1"), 10).unwrap(), all[1..]);
    assert_eq!(log.streams(Some("order-2"), 10).unwrap(), []);
    assert_eq!(log.stream_version("order-10").unwrap(), 1);
}

async fn reads_start_at_a_position_and_stop_at_limits(log: EventLog) {
    for i in 0..10 {
        let (stream, t) = if i % 2 == 0 {
            ("x", "Even")
        } else {
            ("y", "Odd")
        };
        log.append(stream, ExpectedVersion::Any, vec![event(t, &i.to_string())])
            .await
            .unwrap();
    }
    assert_eq!(
        everything(&log, 8),
        [
            row(8, "y", 4, "Odd", "7"),
            row(9, "x", 5, "Even", "8"),
            row(10, "y", 5, "Odd", "9"),
        ]
    );
    assert!(everything(&log, 11).is_empty());
    // A filtered batch: the last position looked at, and only the events kept.
    let mut batch = FlatBatch::default();
    let read = BatchRead {
        from: 2,
        until: 7,
        max_scanned: 100,
        max_events: 100,
        max_bytes: 1 << 20,
    };
    let last = log
        .read_batch(&read, |_, event_type| event_type == "Odd", &mut batch)
        .unwrap();
    assert_eq!(last, Some(7));
    let kept: Vec<(u64, String)> = (0..batch.len())
        .map(|i| {
            let e = batch.event(i).unwrap();
            (
                batch.headers[i].position,
                String::from_utf8(e.data.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(kept, [(2, "1".into()), (4, "3".into()), (6, "5".into())]);
    // At most `max_events` kept, `max_scanned` looked at.
    let last = log
        .read_batch(
            &BatchRead {
                max_events: 2,
                ..read
            },
            |_, _| true,
            &mut batch,
        )
        .unwrap();
    assert_eq!((last, batch.len()), (Some(3), 2));
    let last = log
        .read_batch(
            &BatchRead {
                max_scanned: 3,
                ..read
            },
            |_, t| t == "Odd",
            &mut batch,
        )
        .unwrap();
    assert_eq!((last, batch.len()), (Some(4), 2));
}

async fn the_head_is_watched(log: EventLog) {
    let mut head = log.subscribe();
    assert_eq!(*head.borrow_and_update(), 0);
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            log.append(
                "s",
                ExpectedVersion::Any,
                vec![event("A", "1"), event("A", "2")],
            )
            .await
            .unwrap()
        })
    };
    tokio::time::timeout(Duration::from_secs(10), head.changed())
        .await
        .expect("the watch wakes on an append")
        .unwrap();
    writer.await.unwrap();
    // Seen only once acknowledged, and then readable at once.
    assert_eq!(*head.borrow_and_update(), 2);
    assert_eq!(everything(&log, 1).len(), 2);
}

async fn retries_append_once(log: EventLog) {
    let append = |key: &str, data: &str| {
        let log = log.clone();
        let key = key.to_string();
        let data = data.to_string();
        async move {
            log.append_once(
                Some(key),
                "s",
                ExpectedVersion::Any,
                vec![event("A", &data)],
            )
            .await
        }
    };
    let first = append("k-1", "1").await.unwrap();
    log.append("s", ExpectedVersion::Any, vec![event("B", "2")])
        .await
        .unwrap();
    // The same append under the same key: nothing appended, the first result answered.
    let again = append("k-1", "1").await.unwrap();
    assert_eq!(
        again,
        Appended {
            replayed: true,
            ..first
        }
    );
    // A different append under a used key is refused.
    assert!(matches!(
        append("k-1", "other").await,
        Err(AppendError::Duplicate(_))
    ));
    // Event ids: a retried event is recognised without a key.
    let with_id = |id: &str| NewEvent {
        id: Some(id.into()),
        ..event("C", "3")
    };
    let once = log
        .append("s", ExpectedVersion::Any, vec![with_id("e-1")])
        .await
        .unwrap();
    let twice = log
        .append("s", ExpectedVersion::Any, vec![with_id("e-1")])
        .await
        .unwrap();
    assert!(!once.replayed && twice.replayed);
    assert_eq!(twice.first_position, once.first_position);
    assert_eq!(log.head(), 3);
    assert_eq!(
        everything(&log, 1),
        [
            row(1, "s", 1, "A", "1"),
            row(2, "s", 2, "B", "2"),
            row(3, "s", 3, "C", "3"),
        ]
    );
}

async fn an_append_can_expect_the_head(log: EventLog) {
    log.append("s", ExpectedVersion::Any, vec![event("A", "1")])
        .await
        .unwrap();
    let after = |head| {
        log.append_all_after(
            None,
            vec![part("t", ExpectedVersion::Any, vec![event("B", "2")])],
            Some(head),
        )
    };
    assert!(matches!(
        after(0).await,
        Err(AppendError::HeadMoved {
            expected: 0,
            actual: 1
        })
    ));
    assert_eq!(after(1).await.unwrap().first_position, 2);
    assert_eq!(log.head(), 2);
}

async fn bad_appends_are_refused_whole(log: EventLog) {
    let long = "x".repeat(prism::log::MAX_NAME_LEN + 1);
    for (stream, events) in [
        ("", vec![event("T", "1")]),
        ("s", vec![]),
        ("s", vec![event("", "1")]),
        (long.as_str(), vec![event("T", "1")]),
    ] {
        let refused = log.append(stream, ExpectedVersion::Any, events).await;
        assert!(
            matches!(refused, Err(AppendError::Invalid(_))),
            "{refused:?}"
        );
    }
    assert_eq!(log.head(), 0);
}

/// One `#[tokio::test]` per listed case for a store opened by `$open(dir)`, which returns the
/// log and whatever must live as long as it (a server).
macro_rules! conformance {
    ($store:ident, $open:expr, [$($case:ident),* $(,)?]) => {
        mod $store {
            use super::*;

            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let open: fn(&Path) -> (EventLog, Box<dyn std::any::Any>) = $open;
                    let (log, _alive) = open(dir.path());
                    super::$case(log).await;
                }
            )*
        }
    };
}

conformance!(
    redb,
    |dir| (EventLog::open(&dir.join("log.redb")).unwrap(), Box::new(())),
    [
        expected_versions,
        multi_stream_appends_are_atomic,
        concurrent_appends_are_gapless,
        racing_writers_on_one_stream_never_both_win,
        streams_are_read_and_listed,
        reads_start_at_a_position_and_stop_at_limits,
        the_head_is_watched,
        retries_append_once,
        an_append_can_expect_the_head,
        bad_appends_are_refused_whole,
    ]
);

conformance!(
    jetstream,
    |_| {
        let server = common::nats::NatsServer::start();
        let log = prism::log::jetstream::JetStreamLog::connect(&server.url(), 1).unwrap();
        (EventLog::new(log), Box::new(server))
    },
    [
        expected_versions,
        multi_stream_appends_are_atomic,
        concurrent_appends_are_gapless,
        racing_writers_on_one_stream_never_both_win,
        streams_are_read_and_listed,
        reads_start_at_a_position_and_stop_at_limits,
        the_head_is_watched,
        retries_append_once,
        an_append_can_expect_the_head,
        bad_appends_are_refused_whole,
    ]
);
