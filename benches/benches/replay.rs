//! Replay throughput: a fresh projector replays a log to its head, end to end — log read →
//! host-side filter → one Wasm call per batch → view writes + checkpoint commit.
//!
//! The log holds `PRISM_BENCH_EVENTS` events (default 100 000): ~100-byte JSON payloads over
//! 10 000 streams, a mix of the example projectors' event types. Each iteration replays into a
//! new, empty view file.
//!
//! `cargo bench -p prism-benches --bench replay` (set `PRISM_BENCH_EVENTS=1000000` for 1M).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prism::engine::{Engine, Limits};
use prism::log::{EventLog, ExpectedVersion, NewEvent};
use prism::projector::{State, catch_up};
use prism::store::ViewStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn events() -> u64 {
    std::env::var("PRISM_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// Event `i` of the benchmark log: (stream, event).
fn event(i: u64) -> (String, NewEvent) {
    let n = i % 10_000;
    let (stream, event_type, data) = match i % 4 {
        0 => (
            format!("order-{n}"),
            "OrderPlaced",
            format!(
                r#"{{"order_id":"o-{i}","customer":"c-{n}","total_cents":{},"note":"bench"}}"#,
                i % 997
            ),
        ),
        1 => (
            format!("account-{n}"),
            "Deposited",
            format!(
                r#"{{"account":"a-{n}","amount":{},"reference":"ref-{i:012}","note":"x"}}"#,
                i % 991
            ),
        ),
        2 => (
            format!("account-{n}"),
            "AccountOpened",
            format!(r#"{{"account":"a-{n}","owner":"owner number {n:06}","note":"benchmark"}}"#),
        ),
        _ => (
            format!("order-{n}"),
            "OrderCancelled",
            format!(
                r#"{{"order_id":"o-{}","reason":"customer changed their mind {i:08}"}}"#,
                i - 3
            ),
        ),
    };
    (
        stream,
        NewEvent {
            event_type: event_type.into(),
            data: data.into_bytes(),
            metadata: None,
        },
    )
}

/// Fills a log with `n` events, 1000 per append (each append one stream's run of events).
fn fill(log: &EventLog, n: u64) {
    futures::executor::block_on(async {
        let mut i = 0;
        while i < n {
            let (stream, _) = event(i);
            let mut batch = Vec::new();
            while i < n && batch.len() < 1000 {
                batch.push(event(i).1);
                i += 1;
            }
            log.append(&stream, ExpectedVersion::Any, batch)
                .await
                .unwrap();
        }
    });
}

fn replay(c: &mut Criterion) {
    let n = events();
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    fill(&log, n);
    let engine = Engine::new(None, Limits::default()).unwrap();

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(n));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for (name, path) in [
        ("event-counter", prism_test_artifacts::EVENT_COUNTER),
        ("order-totals", prism_test_artifacts::ORDER_TOTALS),
        ("account-balances", prism_test_artifacts::ACCOUNT_BALANCES),
    ] {
        let module = engine
            .compile(&prism_test_artifacts::read(path))
            .unwrap()
            .module;
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for i in 0..iterations {
                    let view = dir.path().join(format!("{name}-{i}.redb"));
                    let store = Arc::new(ViewStore::open(&view).unwrap());
                    let instance = engine.instantiate(&module, name, "").unwrap();
                    let start = Instant::now();
                    let status = catch_up(&engine, &module, instance, &log, store);
                    total += start.elapsed();
                    assert_eq!(
                        (status.state, status.checkpoint),
                        (State::Live, n),
                        "{status:?}"
                    );
                    std::fs::remove_file(view).unwrap();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
