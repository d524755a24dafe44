//! The JetStream figures, side by side with the embedded redb log in the same run: append
//! throughput and latency (single events and batches, 1 to 64 clients; one server or a
//! three-server cluster with three replicas; the servers' default durability or
//! `sync_interval: always`), replay throughput, and how long appends stall when the server
//! leading the stream is killed.
//!
//! Every client appends to its own stream with no expected version (the log's plain append
//! path); latencies are per append, from call to acknowledgement.

use super::{Report, human, ms, percentile, rate};
use prism::engine::{Engine, Sandbox};
use prism::log::jetstream::JetStreamLog;
use prism::log::{AppendError, EventLog, ExpectedVersion, NewEvent};
use prism::projector::{State, catch_up};
use prism::store::ViewStore;
use prism_test_artifacts as artifacts;
use prism_toolchain::nats::Servers;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long each append measurement runs (`PRISM_BENCH_APPEND_SECS`, default 2).
fn window() -> Duration {
    let secs = std::env::var("PRISM_BENCH_APPEND_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// (clients, events per append) measured for every log.
const SHAPES: [(usize, usize); 6] = [(1, 1), (16, 1), (64, 1), (16, 10), (16, 100), (16, 1000)];

/// One append measurement: events/s, p50 and p99 per append.
#[derive(Clone, Copy)]
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn event(i: u64) -> NewEvent {
    NewEvent {
        event_type: "Benchmarked".into(),
        data: format!(r#"{{"n":{i},"note":"a payload of about a hundred bytes, like the replay log's events"}}"#)
            .into_bytes(),
        metadata: None,
        id: None,
    }
}

/// `clients` tasks appending `batch` events at a time to their own streams for the window.
async fn appends(log: &EventLog, clients: usize, batch: usize, tag: &str) -> Measured {
    let until = Instant::now() + window();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let log = log.clone();
            let stream = format!("bench-{tag}-{clients}x{batch}-{c}");
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < until {
                    let events = (0..batch as u64).map(|j| event(i + j)).collect();
                    let start = Instant::now();
                    log.append(&stream, ExpectedVersion::Any, events)
                        .await
                        .expect("a benchmark append");
                    latencies.push(start.elapsed());
                    i += batch as u64;
                }
                latencies
            })
        })
        .collect();
    let start = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let took = start.elapsed();
    let events = (latencies.len() * batch) as u64;
    Measured {
        rate: rate(events, took),
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
    }
}

async fn every_shape(log: &EventLog, tag: &str) -> Vec<Measured> {
    let mut out = Vec::new();
    for (clients, batch) in SHAPES {
        out.push(appends(log, clients, batch, tag).await);
    }
    out
}

/// A JetStream log on fresh servers: `count` of them, keeping `replicas` copies.
fn servers(binary: &Path, dir: &Path, count: usize, sync_always: bool) -> (Servers, EventLog) {
    let servers = Servers::start(binary, dir, count, sync_always).expect("starting nats-server");
    let log = JetStreamLog::connect(&servers.urls(), count).expect("the JetStream log");
    (servers, EventLog::new(log))
}

pub(super) async fn jetstream_figures(report: &mut Report, n: u64, dir: &Path) {
    let binary = prism_toolchain::nats::nats_server(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .expect("a nats-server for the JetStream figures");
    println!(
        "JetStream appends ({:.1} s per shape; redb and each server setup in turn)",
        window().as_secs_f64()
    );
    let redb = EventLog::open(&dir.join("append-redb.redb")).unwrap();
    let baseline = every_shape(&redb, "redb").await;
    drop(redb);
    let mut table = vec![(
        "redb (embedded, fsync per commit)".to_string(),
        baseline.clone(),
    )];
    for (label, count, sync) in [
        ("JetStream R1", 1, false),
        ("JetStream R1, sync always", 1, true),
        ("JetStream R3", 3, false),
        ("JetStream R3, sync always", 3, true),
    ] {
        let where_ = tempfile::tempdir_in(dir).unwrap();
        let (servers, log) = servers(&binary, where_.path(), count, sync);
        let measured = every_shape(&log, "js").await;
        drop(log);
        drop(servers);
        table.push((label.to_string(), measured));
    }
    println!(
        "\n| log | {} |",
        SHAPES.map(|(c, b)| format!("{c} × {b}")).join(" | ")
    );
    println!("|---|{}", "---|".repeat(SHAPES.len()));
    for (label, measured) in &table {
        let cells: Vec<String> = measured
            .iter()
            .map(|m| format!("{} (p50 {}, p99 {})", human(m.rate), ms(m.p50), ms(m.p99)))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!("(clients × events per append: events/s, latency per append)\n");
    for (label, measured) in &table[1..] {
        for (i, (clients, batch)) in SHAPES.iter().enumerate() {
            if (*clients, *batch) != (16, 1) && (*clients, *batch) != (16, 100) {
                continue;
            }
            report.add(
                format!("appends, {label} ÷ redb, {clients} clients × {batch} events"),
                format!(
                    "{:.2} ({} events, p99 {})",
                    measured[i].rate / baseline[i].rate,
                    human(measured[i].rate),
                    ms(measured[i].p99)
                ),
                "(no target)",
                true,
            );
        }
    }

    // On a thread of its own: the replay and its fill block, outside any async runtime.
    std::thread::scope(|scope| {
        scope
            .spawn(|| replay_figures(report, n.min(1_000_000), dir, &binary))
            .join()
            .unwrap()
    });
    stall_figure(report, dir, &binary).await;
}

/// The replay figures alone (`PRISM_BENCH_ONLY=jetstream-replay`, for profiling).
pub(super) fn jetstream_replay_figures(report: &mut Report, n: u64, dir: &Path) {
    let binary = prism_toolchain::nats::nats_server(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .expect("a nats-server for the JetStream figures");
    replay_figures(report, n, dir, &binary);
}

/// `event-counter` rebuilt from the same events on redb and on JetStream (one server).
fn replay_figures(report: &mut Report, n: u64, dir: &Path, binary: &Path) {
    let engine = Engine::new(None, Sandbox::default()).unwrap();
    let module = engine
        .compile(&artifacts::read(artifacts::EVENT_COUNTER))
        .unwrap()
        .module;
    let replay = |log: &EventLog, view: &Path| {
        let store = Arc::new(ViewStore::open(view).unwrap());
        let instance = engine.instantiate(&module, "event-counter", "").unwrap();
        let start = Instant::now();
        let status = catch_up(&engine, &module, instance, log, store);
        let took = start.elapsed();
        assert_eq!((status.state, status.checkpoint), (State::Live, n));
        rate(n, took)
    };
    let redb = EventLog::open(&dir.join("replay-js-redb.redb")).unwrap();
    prism_benches::fill(&redb, n);
    let redb_rate = replay(&redb, &dir.join("replay-js-redb-view.redb"));
    drop(redb);
    let mut rates = Vec::new();
    for count in [1, 3] {
        let where_ = tempfile::tempdir_in(dir).unwrap();
        let (servers, log) = servers(binary, where_.path(), count, false);
        let filled = Instant::now();
        prism_benches::fill(&log, n);
        println!(
            "  (JetStream R{count}: {n} events appended in {:.1} s, 1000 per append)",
            filled.elapsed().as_secs_f64()
        );
        rates.push(replay(&log, &where_.path().join("view.redb")));
        drop(log);
        drop(servers);
    }
    for (count, js) in [1, 3].iter().zip(rates) {
        report.add(
            format!(
                "replay `event-counter`, JetStream R{count} ÷ redb ({n} events; redb {})",
                human(redb_rate)
            ),
            format!("{:.2} ({} events)", js / redb_rate, human(js)),
            "(no target)",
            true,
        );
    }
}

/// Sixteen clients appending to a three-server cluster when the server leading the stream is
/// killed (SIGKILL) and restarted 3 s later: the longest time without any acknowledgement.
async fn stall_figure(report: &mut Report, dir: &Path, binary: &Path) {
    let where_ = tempfile::tempdir_in(dir).unwrap();
    let (mut servers, log) = servers(binary, where_.path(), 3, false);
    let start = Instant::now();
    let until = start + Duration::from_secs(10);
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let log = log.clone();
            tokio::spawn(async move {
                let (mut acks, mut unknown, mut unavailable) = (Vec::new(), 0, 0);
                while Instant::now() < until {
                    match log
                        .append(&format!("stall-{c}"), ExpectedVersion::Any, vec![event(0)])
                        .await
                    {
                        Ok(_) => acks.push(Instant::now()),
                        Err(AppendError::Unknown(_)) => unknown += 1,
                        Err(_) => {
                            unavailable += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                (acks, unknown, unavailable)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = servers
        .stream_leader(prism::log::jetstream::protocol::STREAM)
        .expect("the stream has a leader");
    let killed = Instant::now();
    servers.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    servers.restart(leader).unwrap();
    let (mut acks, mut unknown, mut unavailable) = (Vec::new(), 0, 0);
    for task in tasks {
        let (a, u, e) = task.await.unwrap();
        acks.extend(a);
        unknown += u;
        unavailable += e;
    }
    acks.sort();
    let first_after = acks.iter().find(|t| **t > killed).copied();
    let longest = acks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let resumed = first_after.map(|t| t - killed);
    println!(
        "  (leader kill: {} acknowledged, {unknown} unknown outcomes, {unavailable} refused as unavailable)",
        acks.len()
    );
    report.add(
        "appends stall when the stream's leader is killed (R3, 16 clients)",
        format!(
            "first acknowledgement {} after the kill; longest gap {}",
            resumed.map_or("never".into(), ms),
            ms(longest)
        ),
        "(no target)",
        resumed.is_some(),
    );
    drop(log);
}
