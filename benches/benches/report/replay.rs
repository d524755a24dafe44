//! The replay figures: each example projector rebuilt from the log, Wasm against the same logic
//! compiled natively, and `order-totals` against the rusqlite rival.

use super::{Report, human, rate, rss};
use prism::engine::{Engine, Sandbox};
use prism::log::EventLog;
use prism::projector::{State, catch_up};
use prism::store::ViewStore;
use prism_benches::native::{self, Native};
use prism_benches::rival;
use prism_test_artifacts as artifacts;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(super) fn replay_figures(report: &mut Report, n: u64, dir: &std::path::Path) {
    println!("replay ({n} events, 100-byte payloads, 10k streams)");
    let log_path = dir.join("replay-log.redb");
    let filled = Instant::now();
    prism_benches::fill(&EventLog::open(&log_path).unwrap(), n);
    println!(
        "  (log filled in {:.1} s, {} MiB)",
        filled.elapsed().as_secs_f64(),
        std::fs::metadata(&log_path).map_or(0, |m| m.len() >> 20)
    );
    // Every replay opens the log afresh: each starts with redb's cache cold (and the OS's page
    // cache warm), so no run profits from the one before it.
    let open_log = || EventLog::open(&log_path).unwrap();
    let engine = Engine::new(None, Sandbox::default()).unwrap();
    let projectors: [(&str, &str, &dyn Native, &'static str, f64); 3] = [
        (
            "event-counter",
            artifacts::EVENT_COUNTER,
            &native::EventCounter,
            "≥ 3M events/s",
            3e6,
        ),
        (
            "order-totals",
            artifacts::ORDER_TOTALS,
            &native::OrderTotals,
            "≥ 1M events/s",
            1e6,
        ),
        (
            "account-balances",
            artifacts::ACCOUNT_BALANCES,
            &native::AccountBalances,
            "(no target)",
            0.0,
        ),
    ];
    // `PRISM_BENCH_REPLAY=order-totals` replays one example only (for profiling).
    let only = std::env::var("PRISM_BENCH_REPLAY").ok();
    let repeat: usize = std::env::var("PRISM_BENCH_REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    for (name, path, native, target, goal) in projectors {
        if only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let module = engine.compile(&artifacts::read(path)).unwrap().module;
        let wasm_view = dir.join(format!("{name}-wasm.redb"));
        // `PRISM_BENCH_REPEAT=3`: the Wasm replay that many times (each into a new view, from a
        // log opened afresh), reported as the median, for the scaling rows.
        let mut rates = Vec::new();
        let mut peak = 0;
        let mut before = 0;
        let mut log = None;
        for _ in 0..repeat {
            let _ = std::fs::remove_file(&wasm_view);
            let store = Arc::new(ViewStore::open(&wasm_view).unwrap());
            let instance = engine.instantiate(&module, name, "").unwrap();
            drop(log.take());
            let opened = open_log();
            // Peak resident memory during the replay (the catch-up cache's budget is 256 MiB).
            before = rss();
            let done = Arc::new(AtomicBool::new(false));
            let sampler = {
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut peak = 0;
                    while !done.load(Ordering::Relaxed) {
                        peak = peak.max(rss());
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    peak
                })
            };
            let start = Instant::now();
            let status = catch_up(&engine, &module, instance, &opened, store);
            rates.push(rate(n, start.elapsed()));
            done.store(true, Ordering::Relaxed);
            peak = peak.max(sampler.join().unwrap());
            assert_eq!(
                (status.state, status.checkpoint),
                (State::Live, n),
                "{status:?}"
            );
            log = Some(opened);
        }
        let runs = rates.clone();
        rates.sort_by(f64::total_cmp);
        let wasm = rates[rates.len() / 2];
        println!(
            "  ({name}: peak RSS {} MiB, {} MiB before the replay{})",
            peak >> 20,
            before >> 20,
            if runs.len() > 1 {
                format!(
                    "; runs {}",
                    runs.iter()
                        .map(|r| human(*r))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            }
        );

        let native_view = dir.join(format!("{name}-native.redb"));
        let store = ViewStore::open(&native_view).unwrap();
        drop(log);
        let log = open_log();
        let start = Instant::now();
        assert_eq!(native::replay(native, &log, &store).unwrap(), n);
        let native_rate = rate(n, start.elapsed());
        // The baseline really did the same work: the views are identical.
        let same = {
            let wasm_store = ViewStore::open(&wasm_view).unwrap();
            let (a, b) = (wasm_store.snapshot().unwrap(), store.snapshot().unwrap());
            let (mut x, mut y) = (Vec::new(), Vec::new());
            a.for_each(|k, v| x.push((k.to_string(), v.to_vec())))
                .unwrap();
            b.for_each(|k, v| y.push((k.to_string(), v.to_vec())))
                .unwrap();
            x == y
        };
        assert!(
            same,
            "{name}: the native baseline's view differs from the Wasm one"
        );
        drop(log);
        let rival_rate = (name == "order-totals").then(|| {
            // The same projection without Prism, over the same log; its tables must say
            // exactly what Prism's view says.
            let mut conn = rival::open(&dir.join("rival.sqlite")).unwrap();
            let log = open_log();
            let start = Instant::now();
            assert_eq!(rival::replay(&log, &mut conn).unwrap(), n);
            let took = start.elapsed();
            let wasm_store = ViewStore::open(&wasm_view).unwrap();
            rival::compare(&conn, &wasm_store.snapshot().unwrap())
                .expect("the rival's tables equal Prism's view");
            rate(n, took)
        });
        let figure = if name == "order-totals" {
            format!(
                "replay `{name}` (customers up to {})",
                prism_benches::customers()
            )
        } else {
            format!("replay `{name}`")
        };
        let value = if runs.len() > 1 {
            format!(
                "{} events (median of {}: {})",
                human(wasm),
                runs.len(),
                runs.iter()
                    .map(|r| human(*r))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!("{} events", human(wasm))
        };
        report.add(figure, value, target, wasm >= goal);
        let ratio = wasm / native_rate;
        report.add(
            format!(
                "Wasm / native, `{name}` (native {} events)",
                human(native_rate)
            ),
            format!("{ratio:.2}"),
            "≥ 0.6",
            ratio >= 0.6,
        );
        if let Some(rival_rate) = rival_rate {
            let ratio = wasm / rival_rate;
            report.add(
                format!(
                    "Prism ÷ rusqlite rival, `{name}` (rival {} events, views equal)",
                    human(rival_rate)
                ),
                format!("{ratio:.2}"),
                "≥ 5",
                ratio >= 5.0,
            );
        }
        let _ = std::fs::remove_file(wasm_view);
        let _ = std::fs::remove_file(native_view);
    }
}
