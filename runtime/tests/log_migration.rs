//! A log written by Prism at commit 268959e (one postcard row per event, no `meta` table; see
//! `tests/fixtures/log-268959e/README.md`) opens with today's code: migrated into chunks, it
//! reads back exactly what `make.py` sent, by the script's own accounting (`expected.jsonl`),
//! also when the migration was interrupted; appends go on after it.

use prism::log::{BatchRead, EventLog, ExpectedVersion, FlatBatch, NewEvent, Opened};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/log-268959e");

struct Expected {
    position: u64,
    stream: String,
    stream_version: u64,
    event_type: String,
    data: Value,
    metadata: Value,
}

fn expected() -> Vec<Expected> {
    let text = std::fs::read_to_string(Path::new(FIXTURE).join("expected.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Expected {
                position: v["position"].as_u64().unwrap(),
                stream: v["stream"].as_str().unwrap().into(),
                stream_version: v["stream_version"].as_u64().unwrap(),
                event_type: v["type"].as_str().unwrap().into(),
                data: v["data"].clone(),
                metadata: v["metadata"].clone(),
            }
        })
        .collect()
}

/// A copy of the fixture in a fresh directory (the fixture itself is never opened for writing).
fn copy_of_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    std::fs::copy(Path::new(FIXTURE).join("log.redb"), &path).unwrap();
    (dir, path)
}

/// Everything the log holds equals the expectation: each event by position (data and metadata
/// compared as JSON values and as the bytes the script sent), each stream's version and reads.
fn assert_log_is(log: &EventLog, want: &[Expected]) {
    assert_eq!(log.head(), want.len() as u64);
    let mut batch = FlatBatch::default();
    let last = log
        .read_batch(&BatchRead::from(1, 10_000), |_, _| true, &mut batch)
        .unwrap();
    assert_eq!(last, Some(want.len() as u64));
    assert_eq!(batch.len(), want.len());
    for (i, w) in want.iter().enumerate() {
        let e = batch.event(i).unwrap();
        assert_eq!(batch.headers[i].position, w.position);
        assert_eq!(
            (e.stream, e.stream_version, e.event_type),
            (w.stream.as_str(), w.stream_version, w.event_type.as_str()),
            "event {}",
            w.position
        );
        let data: Value = serde_json::from_slice(e.data).unwrap();
        let metadata: Value = serde_json::from_slice(e.metadata).unwrap();
        assert_eq!(
            (&data, &metadata),
            (&w.data, &w.metadata),
            "event {}",
            w.position
        );
        assert_eq!(e.data, serde_json::to_string(&w.data).unwrap().as_bytes());
        assert!(
            e.timestamp_ms > 1_700_000_000_000,
            "a timestamp of the old log"
        );
    }
    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for w in want {
        versions.entry(&w.stream).or_default().push(w.position);
    }
    let listed = log.streams(None, 10_000).unwrap();
    assert_eq!(listed.len(), versions.len());
    for (stream, version) in &listed {
        let positions = &versions[stream.as_str()];
        assert_eq!(*version, positions.len() as u64, "{stream}");
        let read = log.read_stream(stream, 1, 10_000).unwrap();
        assert_eq!(
            read.iter().map(|e| e.position).collect::<Vec<_>>(),
            *positions,
            "{stream}"
        );
    }
}

#[tokio::test]
async fn a_log_written_by_268959e_opens_migrated_and_reads_back_exactly() {
    let want = expected();
    assert_eq!(want.len(), 2642);
    let (_dir, path) = copy_of_fixture();
    let log = EventLog::open(&path).unwrap();
    assert_log_is(&log, &want);

    // Appends go on after the old events, with the old streams' versions.
    let (stream, version) = (
        "注文-2",
        want.iter().filter(|w| w.stream == "注文-2").count(),
    );
    let appended = log
        .append(
            stream,
            ExpectedVersion::Exact(version as u64),
            vec![NewEvent {
                event_type: "OrderShipped".into(),
                data: b"{\"after\":\"migration\"}".to_vec(),
                metadata: None,
                id: Some("after-migration-1".into()),
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        (appended.first_position, appended.stream_version),
        (2643, version as u64 + 1)
    );
    drop(log);

    // Opening again finds today's format: nothing to migrate, everything still there.
    assert_eq!(
        prism::log::migrate_partially(&path, 1000, 1).unwrap(),
        Opened::Current
    );
    let log = EventLog::open(&path).unwrap();
    assert_eq!(log.head(), 2643);
    let last = log.read_from(2643, 1).unwrap();
    assert_eq!(last[0].data, b"{\"after\":\"migration\"}");
}

#[tokio::test]
async fn an_interrupted_migration_goes_on_where_it_stopped() {
    let want = expected();
    let (_dir, path) = copy_of_fixture();
    // Two steps of 700 events, then "a crash": the file holds chunks and old rows both.
    assert_eq!(
        prism::log::migrate_partially(&path, 700, 2).unwrap(),
        Opened::Migrated {
            events: 1400,
            done: false
        }
    );
    assert_eq!(
        prism::log::migrate_partially(&path, 700, 1).unwrap(),
        Opened::Migrated {
            events: 700,
            done: false
        }
    );
    let log = EventLog::open(&path).unwrap();
    assert_log_is(&log, &want);
}
