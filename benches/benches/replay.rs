//! Replay throughput: a fresh projector replays a log to its head, end to end — log read →
//! host-side filter → one Wasm call per batch → view writes + checkpoint commit.
//!
//! The log holds `PRISM_BENCH_EVENTS` events (default 100 000): ~100-byte JSON payloads over
//! 10 000 streams, a mix of the example projectors' event types. Each iteration replays into a
//! new, empty view file.
//!
//! `cargo bench -p prism-benches --bench replay` (set `PRISM_BENCH_EVENTS=1000000` for 1M).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prism::engine::{Engine, Sandbox};
use prism::log::EventLog;
use prism::projector::{State, catch_up};
use prism::store::ViewStore;
use prism_benches::fill;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn events() -> u64 {
    std::env::var("PRISM_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

fn replay(c: &mut Criterion) {
    let n = events();
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    fill(&log, n);
    let engine = Engine::new(None, Sandbox::default()).unwrap();

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
