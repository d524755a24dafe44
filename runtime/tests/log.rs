//! The event log on its own: optimistic concurrency, atomic batches, gapless positions,
//! durability across reopen, and the head watch.

use prism::log::{AppendError, EventLog, ExpectedVersion, NewEvent};
use std::collections::BTreeSet;

fn events(n: usize, event_type: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            event_type: event_type.into(),
            data: format!("{{\"i\":{i}}}").into_bytes(),
            metadata: None,
            id: None,
        })
        .collect()
}

#[tokio::test]
async fn expected_version_mismatch_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    let first = log
        .append("s", ExpectedVersion::Exact(0), events(2, "A"))
        .await
        .unwrap();
    assert_eq!(
        (
            first.first_position,
            first.last_position,
            first.stream_version
        ),
        (1, 2, 2)
    );

    for expected in [0, 1, 3] {
        let err = log
            .append("s", ExpectedVersion::Exact(expected), events(3, "B"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, AppendError::VersionConflict { expected: e, actual: 2, .. } if e == expected),
            "{err}"
        );
    }
    assert_eq!(log.head(), 2);
    assert_eq!(log.stream_version("s").unwrap(), 2);
    assert_eq!(log.read_stream("s", 1, 100).unwrap().len(), 2);

    let next = log
        .append("s", ExpectedVersion::Exact(2), events(1, "C"))
        .await
        .unwrap();
    assert_eq!((next.first_position, next.stream_version), (3, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_get_gapless_positions_and_atomic_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    let mut tasks = Vec::new();
    for client in 0..16 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for round in 0..10 {
                let stream = format!("stream-{}", (client + round) % 5);
                acks.push(
                    log.append(&stream, ExpectedVersion::Any, events(3, "T"))
                        .await
                        .unwrap(),
                );
            }
            acks
        }));
    }
    let mut positions = BTreeSet::new();
    for task in tasks {
        for ack in task.await.unwrap() {
            // A batch's events are consecutive: nothing interleaves inside one append.
            assert_eq!(ack.last_position - ack.first_position, 2);
            positions.extend(ack.first_position..=ack.last_position);
        }
    }
    assert_eq!(positions, (1..=480).collect::<BTreeSet<_>>());
    assert_eq!(log.head(), 480);

    let all = log.read_from(1, 1000).unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=480).collect::<Vec<_>>()
    );
    // Stream versions are gapless within each stream, and in log order.
    for s in 0..5 {
        let stream = format!("stream-{s}");
        let versions: Vec<_> = all
            .iter()
            .filter(|e| e.stream == stream)
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
        assert_eq!(log.stream_version(&stream).unwrap(), versions.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_in_a_group_commit_leaves_the_other_appends_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    // Many racing appends with the same expectation: exactly one per version wins.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append("contended", ExpectedVersion::Exact(0), events(2, "T"))
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(ack) => {
                won += 1;
                assert_eq!((ack.first_position, ack.stream_version), (1, 2));
            }
            Err(AppendError::VersionConflict { actual: 2, .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(log.head(), 2);
}

#[tokio::test]
async fn acknowledged_events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    {
        let log = EventLog::open(&path).unwrap();
        log.append("a", ExpectedVersion::Any, events(5, "T"))
            .await
            .unwrap();
        log.append("b", ExpectedVersion::Any, events(1, "U"))
            .await
            .unwrap();
    }
    // Dropping the last handle closed the file: it opens again at once.
    let log = EventLog::open(&path).unwrap();
    assert_eq!(log.head(), 6);
    let b = log.read_stream("b", 1, 10).unwrap();
    assert_eq!(
        (
            b[0].position,
            b[0].event_type.as_str(),
            b[0].data.as_slice()
        ),
        (6, "U", &b"{\"i\":0}"[..])
    );
    let ack = log
        .append("a", ExpectedVersion::Exact(5), events(1, "T"))
        .await
        .unwrap();
    assert_eq!((ack.first_position, ack.stream_version), (7, 6));
}

#[tokio::test]
async fn the_head_watch_wakes_waiters_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    let mut head = log.subscribe();
    assert_eq!(*head.borrow(), 0);
    let waiter = tokio::spawn(async move { *head.wait_for(|h| *h >= 3).await.unwrap() });
    log.append("s", ExpectedVersion::Any, events(3, "T"))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), 3);
}
