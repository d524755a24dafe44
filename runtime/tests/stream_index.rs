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
    assert_eq!(page, want[5..8].to_vec());
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
