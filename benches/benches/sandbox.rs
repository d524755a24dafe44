//! Sandbox costs (release, end to end through the runner):
//! - how long a runaway loop runs before its instruction budget stops it;
//! - what fuel metering costs on an `event-counter` replay (metered vs unmetered engines,
//!   interleaved in the same run).
//!
//! `cargo bench -p prism-benches --bench sandbox`

use prism::engine::{Engine, Sandbox};
use prism::log::{EventLog, ExpectedVersion, NewEvent};
use prism::projector::{State, catch_up};
use prism::store::ViewStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn event(event_type: &str, i: u64) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        data: format!(
            r#"{{"i":{i},"note":"a payload of about one hundred bytes, give or take a few"}}"#
        )
        .into_bytes(),
        metadata: None,
        id: None,
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Replays `path` over `log` into a fresh view; returns the time and the final status.
fn replay(
    engine: &Engine,
    path: &str,
    log: &EventLog,
    dir: &std::path::Path,
    n: u64,
) -> (Duration, prism::projector::Status) {
    let module = engine
        .compile(&prism_test_artifacts::read(path))
        .unwrap()
        .module;
    let view = dir.join(format!("view-{n}.redb"));
    let store = Arc::new(ViewStore::open(&view).unwrap());
    let instance = engine.instantiate(&module, "bench", "").unwrap();
    let start = Instant::now();
    let status = catch_up(engine, &module, instance, log, store);
    let took = start.elapsed();
    std::fs::remove_file(view).unwrap();
    (took, status)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let metered = Engine::new(None, Sandbox::default()).unwrap();
    let unmetered = Engine::new(
        None,
        Sandbox {
            meter_fuel: false,
            ..Sandbox::default()
        },
    )
    .unwrap();

    // A runaway loop: one event that never finishes.
    let loop_log = EventLog::open(&dir.path().join("loop.redb")).unwrap();
    futures::executor::block_on(loop_log.append("s", ExpectedVersion::Any, vec![event("Loop", 0)]))
        .unwrap();
    let stopped: Vec<f64> = (0..5)
        .map(|n| {
            let (took, status) = replay(
                &metered,
                prism_test_artifacts::INFINITE_LOOP,
                &loop_log,
                dir.path(),
                n,
            );
            assert_eq!(status.state, State::Faulted);
            let message = status.error.map(|e| e.message).unwrap_or_default();
            assert!(message.contains("instruction budget"), "{message}");
            took.as_secs_f64() * 1000.0
        })
        .collect();
    println!(
        "runaway loop stopped by its budget ({} instructions per event) after {:.1} ms (median of 5)",
        Sandbox::default().fuel_per_event,
        median(stopped)
    );

    // Fuel overhead on event-counter.
    let n = 200_000u64;
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    futures::executor::block_on(async {
        for chunk in 0..n / 1000 {
            let events = (0..1000)
                .map(|i| event(&format!("T{}", i % 5), chunk * 1000 + i))
                .collect();
            log.append(&format!("s-{}", chunk % 100), ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    });
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..7 {
        for (engine, rates) in [(&metered, &mut on), (&unmetered, &mut off)] {
            let (took, status) = replay(
                engine,
                prism_test_artifacts::EVENT_COUNTER,
                &log,
                dir.path(),
                100 + round,
            );
            assert_eq!(status.state, State::Live);
            rates.push(n as f64 / took.as_secs_f64());
        }
    }
    let (on, off) = (median(on), median(off));
    println!(
        "event-counter replay of {n} events: metered {:.0} events/s, unmetered {:.0} events/s: fuel costs {:.1}% (median of 7, interleaved)",
        on,
        off,
        (1.0 - on / off) * 100.0
    );
}
