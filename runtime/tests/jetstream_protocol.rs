//! The JetStream requests the log is built on, against a real nats-server 2.15.1: the events
//! stream is created and checked, atomic batches land whole at consecutive sequences or not
//! at all, the expected last subject sequence guards an append, and batch direct gets read
//! back exactly what was stored.

mod common;

use async_nats::HeaderMap;
use common::nats::NatsServer;
use prism::log::jetstream::protocol::{
    Expect, Outbound, PublishError, STREAM, direct_get_batch, ensure_stream, publish_atomic,
    stream_of, subject_of,
};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn message(stream: &str, data: &str) -> Outbound {
    let mut headers = HeaderMap::new();
    headers.insert("Prism-Type", "T");
    Outbound {
        subject: subject_of(stream),
        headers,
        payload: data.to_string().into(),
    }
}

#[test]
fn subjects_name_streams_reversibly() {
    for name in ["order-1", "a.b c>*", "ü/日本", "x"] {
        let subject = subject_of(name);
        assert!(subject.starts_with("prism.ev."));
        assert!(!subject["prism.ev.".len()..].contains(['.', ' ', '*', '>']));
        assert_eq!(stream_of(&subject).as_deref(), Some(name));
    }
    assert_eq!(stream_of("prism.ev.zz"), None);
    assert_eq!(stream_of("other.616263"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn atomic_batches_land_whole_and_read_back() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    ensure_stream(&js, 1).await.unwrap();
    // Again: the stream there is accepted as it is.
    ensure_stream(&js, 1).await.unwrap();

    // A batch of three on a new subject (expected last sequence 0), then one of two.
    let first = publish_atomic(
        &client,
        vec![message("a", "1"), message("a", "2"), message("a", "3")],
        Expect::LastSubjectSequence(0),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(first, (1, 3));
    let second = publish_atomic(
        &client,
        vec![message("b", "4"), message("a", "5")],
        Expect::LastSubjectSequence(0),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(second, (4, 5));

    // A stale expectation stores nothing, and says so.
    let stale = publish_atomic(
        &client,
        vec![message("a", "x"), message("a", "y")],
        Expect::LastSubjectSequence(3),
        WAIT,
    )
    .await;
    assert!(
        matches!(stale, Err(PublishError::WrongLastSequence(_))),
        "{stale:?}"
    );
    // The stream-wide expectation (what a multi-stream append or an expected head uses).
    let moved = publish_atomic(
        &client,
        vec![message("c", "z")],
        Expect::LastSequence(4),
        WAIT,
    )
    .await;
    assert!(
        matches!(moved, Err(PublishError::WrongLastSequence(_))),
        "{moved:?}"
    );
    // The right one (a's last message is at 5) lands after it, with no gap.
    let third = publish_atomic(
        &client,
        vec![message("a", "6")],
        Expect::LastSubjectSequence(5),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(third, (6, 6));

    // Eight writers at once, batches of 1-4: every batch contiguous, no sequence lost.
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut landed = Vec::new();
            for i in 0..10 {
                let n = 1 + (w + i) % 4;
                let batch = (0..n).map(|k| message(&format!("w{w}"), &format!("{w}:{i}:{k}")));
                let (from, to) = publish_atomic(&client, batch.collect(), Expect::Nothing, WAIT)
                    .await
                    .unwrap();
                assert_eq!(to + 1 - from, n as u64);
                landed.push((from, to, w, i));
            }
            landed
        }));
    }
    let mut landed = Vec::new();
    for writer in writers {
        landed.extend(writer.await.unwrap());
    }
    landed.sort();
    let mut next = 7;
    for &(from, to, _, _) in &landed {
        assert_eq!(from, next, "{landed:?}");
        next = to + 1;
    }

    // Read back in pieces: exactly what each batch stored, where it said.
    let mut read = Vec::new();
    let mut from = 1;
    loop {
        let got = direct_get_batch(&client, from, None, 7, 1 << 20, WAIT)
            .await
            .unwrap();
        let Some(last) = got.last() else { break };
        from = last.sequence + 1;
        read.extend(got);
    }
    assert_eq!(read.len() as u64, next - 1);
    let text = |i: usize| String::from_utf8(read[i].payload.to_vec()).unwrap();
    assert_eq!(
        (0..6).map(text).collect::<Vec<_>>(),
        ["1", "2", "3", "4", "5", "6"]
    );
    assert_eq!(stream_of(&read[3].subject).as_deref(), Some("b"));
    assert_eq!(read[0].headers.get("Prism-Type").unwrap().as_str(), "T");
    for &(from, to, w, i) in &landed {
        for (k, sequence) in (from..=to).enumerate() {
            let stored = &read[sequence as usize - 1];
            assert_eq!(stored.sequence, sequence);
            assert_eq!(stream_of(&stored.subject), Some(format!("w{w}")));
            assert_eq!(stored.payload, format!("{w}:{i}:{k}").as_bytes());
        }
    }
    // Past the end: nothing.
    assert!(
        direct_get_batch(&client, next, None, 10, 1 << 20, WAIT)
            .await
            .unwrap()
            .is_empty()
    );
    let info = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.last_sequence, next - 1);
}

/// Another node's appends move this node's head through the heads the server republishes: its
/// poll is set to an hour here, so nothing else could.
#[tokio::test(flavor = "multi_thread")]
async fn heads_are_republished_to_every_node() {
    use prism::log::jetstream::{JetStreamLog, JetStreamOptions};
    use prism::log::{EventLog, ExpectedVersion, NewEvent};
    let server = NatsServer::start();
    let open = || {
        let options = JetStreamOptions {
            head_poll: Duration::from_secs(3600),
            ..JetStreamOptions::new(&server.url(), 1)
        };
        EventLog::new(JetStreamLog::connect_with(options).unwrap())
    };
    let (writer, watcher) = (open(), open());
    let mut head = watcher.subscribe();
    for n in 1..=3u64 {
        let event = NewEvent {
            event_type: "T".into(),
            data: b"{}".to_vec(),
            metadata: None,
            id: None,
        };
        writer
            .append("s", ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), head.wait_for(|h| *h >= n))
            .await
            .expect("the watching node's head followed the other's append")
            .unwrap();
    }
    assert_eq!(watcher.head(), 3);
}

/// Two nodes take turns appending to one stream with exact expected versions: each node's
/// remembered last message of the stream is stale at every turn, and neither a false
/// conflict nor a wrong version comes of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_remembered_version_is_checked_with_the_server() {
    use prism::log::jetstream::JetStreamLog;
    use prism::log::{EventLog, ExpectedVersion, NewEvent};
    let server = NatsServer::start();
    let nodes = [
        EventLog::new(JetStreamLog::connect(&server.url(), 1).unwrap()),
        EventLog::new(JetStreamLog::connect(&server.url(), 1).unwrap()),
    ];
    for version in 0..6u64 {
        let event = NewEvent {
            event_type: "T".into(),
            data: format!("{{\"v\":{version}}}").into_bytes(),
            metadata: None,
            id: None,
        };
        let node = &nodes[version as usize % 2];
        let appended = node
            .append("s", ExpectedVersion::Exact(version), vec![event])
            .await
            .unwrap();
        assert_eq!(appended.stream_version, version + 1);
    }
    // A version a node remembers but the stream has passed is refused.
    let stale = NewEvent {
        event_type: "T".into(),
        data: b"{}".to_vec(),
        metadata: None,
        id: None,
    };
    let refused = nodes[0]
        .append("s", ExpectedVersion::Exact(5), vec![stale])
        .await;
    assert!(
        matches!(
            refused,
            Err(prism::log::AppendError::VersionConflict {
                expected: 5,
                actual: 6,
                ..
            })
        ),
        "{refused:?}"
    );
    let versions: Vec<u64> = nodes[0]
        .read_stream("s", 1, 100)
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

/// A stream that does not keep events as Prism needs is refused with the reason: here one
/// created with fewer replicas than configured.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_configured_otherwise_is_refused() {
    use prism::log::jetstream::JetStreamLog;
    let server = NatsServer::start();
    drop(JetStreamLog::connect(&server.url(), 1).unwrap());
    let refused = JetStreamLog::connect(&server.url(), 2).err().unwrap();
    let message = format!("{refused:#}");
    assert!(
        message.contains("cannot hold Prism's log")
            && message.contains("1 replicas, not the 2 configured"),
        "{message}"
    );
}

/// A reader far behind reads the next batches ahead; none of them may be an answer from when
/// the log was shorter (a rebuild reads ahead near the head; a verify replaying the same
/// positions later took those empty answers for the head and compared half a view — found by
/// `cluster_chaos.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn a_read_ahead_never_answers_for_a_log_that_grew_since() {
    use prism::log::{BatchRead, EventLog, ExpectedVersion, FlatBatch, NewEvent};
    let server = NatsServer::start();
    let log =
        EventLog::new(prism::log::jetstream::JetStreamLog::connect(&server.url(), 1).unwrap());
    let append = |n: usize| {
        let log = log.clone();
        async move {
            for _ in 0..n / 500 {
                let events = (0..500)
                    .map(|i| NewEvent {
                        event_type: "E".into(),
                        data: format!("{{\"i\":{i}}}").into_bytes(),
                        metadata: None,
                        id: None,
                    })
                    .collect();
                log.append("s", ExpectedVersion::Any, events).await.unwrap();
            }
        }
    };
    append(1000).await;
    // A full batch: the next ones are read ahead.
    let read = |from| {
        let mut batch = FlatBatch::default();
        let last = log
            .read_batch(&BatchRead::from(from, 1000), |_, _| true, &mut batch)
            .unwrap();
        (last, batch.len())
    };
    assert_eq!(read(1), (Some(1000), 1000));
    append(2500).await;
    let (mut from, mut seen) = (1001, 0);
    while let (Some(last), n) = read(from) {
        seen += n;
        from = last + 1;
    }
    assert_eq!((from, seen), (3501, 2500));
}
