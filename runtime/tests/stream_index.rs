//! The stream index, kept off the durable append in `log-index.redb`: reads see an append as
//! soon as it is acknowledged, and an index that is missing, behind the log (its last commits
//! not yet synced at a crash) or ahead of it (a log restored from an older copy) is brought
//! back to the log when it opens. Expected views are counted by hand from the appends made.

use prism::log::{EventLog, ExpectedVersion, NewEvent, StreamAppend};
use std::collections::BTreeMap;
use std::path::Path;

fn event(i: u64) -> NewEvent {
    NewEvent {
        event_type: "T".into(),
        data: format!("{{\"i\":{i}}}").into_bytes(),
        metadata: None,
        id: None,
    }
}

/// Appends `rounds` rounds over `streams` streams (stream `k` gets `k % 3 + 1` events a round,
/// in one multi-stream append per round, each part expecting the version counted here).
/// Returns what each stream must then hold: its events' `i`s in order.
async fn append_rounds(
    log: &EventLog,
    expected: &mut BTreeMap<String, Vec<u64>>,
    rounds: u64,
    streams: u64,
    tag: u64,
) {
    for round in 0..rounds {
        let mut parts = Vec::new();
        for k in 0..streams {
            let name = format!("s-{k:03}");
            let held = expected.entry(name.clone()).or_default();
            let version = held.len() as u64;
            let events: Vec<NewEvent> = (0..k % 3 + 1)
                .map(|j| {
                    let i = tag * 1_000_000 + round * 1000 + k * 10 + j;
                    held.push(i);
                    event(i)
                })
                .collect();
            parts.push(StreamAppend {
                stream: name,
                expected: ExpectedVersion::Exact(version),
                events,
            });
        }
        log.append_all(None, parts).await.unwrap();
    }
}

/// Every stream read back, listed and versioned exactly as `expected` says.
fn assert_index(log: &EventLog, expected: &BTreeMap<String, Vec<u64>>) {
    let listed = log.streams(None, 10_000).unwrap();
    let want: Vec<(String, u64)> = expected
        .iter()
        .map(|(name, held)| (name.clone(), held.len() as u64))
        .collect();
    assert_eq!(listed, want);
    // Paged listing: after a name, a few at a time.
    let page = log.streams(Some("s-004"), 3).unwrap();
    let after: Vec<(String, u64)> = want
        .iter()
        .filter(|(name, _)| name.as_str() > "s-004")
        .take(3)
        .cloned()
        .collect();
    assert_eq!(page, after);
    for (name, held) in expected {
        assert_eq!(log.stream_version(name).unwrap(), held.len() as u64);
        let read = log.read_stream(name, 1, 100_000).unwrap();
        let is: Vec<u64> = read
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
                v["i"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(&is, held, "stream {name}");
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (1..=held.len() as u64).collect::<Vec<_>>());
        // From the middle, a few.
        let from = held.len() as u64 / 2 + 1;
        let part = log.read_stream(name, from, 2).unwrap();
        assert_eq!(
            part.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
            (from..=(from + 1).min(held.len() as u64)).collect::<Vec<_>>()
        );
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

#[tokio::test]
async fn reads_see_each_append_at_once_and_the_index_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let mut expected = BTreeMap::new();
    {
        let log = EventLog::open(&path).unwrap();
        for round in 0..20 {
            append_rounds(&log, &mut expected, 1, 12, round).await;
            // Right after the acknowledgement, whether the indexer has written it or not.
            assert_index(&log, &expected);
        }
    }
    assert!(dir.path().join("log-index.redb").exists());
    let log = EventLog::open(&path).unwrap();
    assert_index(&log, &expected);
}

#[tokio::test]
async fn an_index_behind_missing_or_ahead_of_the_log_is_brought_back_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let index = dir.path().join("log-index.redb");
    let saved = tempfile::tempdir().unwrap();
    let mut early = BTreeMap::new();
    {
        let log = EventLog::open(&path).unwrap();
        append_rounds(&log, &mut early, 5, 12, 1).await;
    }
    copy(&path, &saved.path().join("log.redb"));
    copy(&index, &saved.path().join("log-index.redb"));
    let mut late = early.clone();
    {
        let log = EventLog::open(&path).unwrap();
        append_rounds(&log, &mut late, 7, 12, 2).await;
    }

    // Behind: the index as it was after the early rounds, the log after the late ones.
    copy(&saved.path().join("log-index.redb"), &index);
    assert_index(&EventLog::open(&path).unwrap(), &late);

    // Missing: rebuilt from the log.
    std::fs::remove_file(&index).unwrap();
    assert_index(&EventLog::open(&path).unwrap(), &late);

    // Ahead: the log as it was after the early rounds, the index after the late ones.
    copy(&saved.path().join("log.redb"), &path);
    let log = EventLog::open(&path).unwrap();
    assert_index(&log, &early);
    // And appends go on from the early versions.
    let mut after = early.clone();
    append_rounds(&log, &mut after, 2, 12, 3).await;
    assert_index(&log, &after);
}

#[tokio::test]
async fn closing_the_log_leaves_its_index_complete_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let mut expected = BTreeMap::new();
    let head = {
        let log = EventLog::open(&path).unwrap();
        append_rounds(&log, &mut expected, 30, 12, 1).await;
        log.head()
    };
    // Read the file itself: opening the log would index what is missing and hide it.
    let db = redb::Database::open(dir.path().join("log-index.redb")).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn
        .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
        .unwrap();
    assert_eq!(meta.get("indexed").unwrap().unwrap().value(), head);
}

#[tokio::test]
async fn appends_committed_together_get_consecutive_versions_and_refused_ones_none() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    // Many appends at once land in the same group commits: 40 that take any version, and 40
    // that expect the stream to be empty (at most one of them can be first).
    let any = (0..40).map(|i| {
        let log = log.clone();
        async move { log.append("g", ExpectedVersion::Any, vec![event(i)]).await }
    });
    let empty = (100..140).map(|i| {
        let log = log.clone();
        async move {
            log.append("g", ExpectedVersion::Exact(0), vec![event(i)])
                .await
        }
    });
    let (any, empty) = tokio::join!(
        futures::future::join_all(any),
        futures::future::join_all(empty)
    );
    assert!(any.iter().all(|r| r.is_ok()));
    let won = empty.iter().filter(|r| r.is_ok()).count();
    assert!(won <= 1);
    let appended = 40 + won as u64;
    assert_eq!(log.stream_version("g").unwrap(), appended);
    let read = log.read_stream("g", 1, 1000).unwrap();
    assert_eq!(
        read.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=appended).collect::<Vec<_>>()
    );
    // Every acknowledged append's event is there, at the version it was acknowledged with.
    for result in any.iter().chain(&empty).flatten() {
        let event = &read[result.stream_version as usize - 1];
        assert_eq!(event.position, result.last_position);
    }
    // And the next append continues from there.
    let next = log
        .append("g", ExpectedVersion::Exact(appended), vec![event(999)])
        .await
        .unwrap();
    assert_eq!(next.stream_version, appended + 1);
}

#[tokio::test]
async fn the_index_of_another_log_as_long_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    {
        let log = EventLog::open(&a.join("log.redb")).unwrap();
        append_rounds(&log, &mut BTreeMap::new(), 5, 12, 1).await;
    }
    // Another log of the same length with other streams and versions.
    let mut other = BTreeMap::new();
    {
        let log = EventLog::open(&b.join("log.redb")).unwrap();
        for k in 0..120 {
            let name = format!("s-{:03}", 100 + k % 7);
            let held: &mut Vec<u64> = other.entry(name.clone()).or_default();
            held.push(k);
            log.append(&name, ExpectedVersion::Any, vec![event(k)])
                .await
                .unwrap();
        }
    }
    // b's log with a's index.
    copy(&a.join("log-index.redb"), &b.join("log-index.redb"));
    assert_index(&EventLog::open(&b.join("log.redb")).unwrap(), &other);
}
