//! The HTTP figures: `prism import`, appends, append-to-visible freshness, view GETs, reloads
//! and restarts, against a real server on loopback.

use super::{Report, cpu_time, human, ms, percentile, rate, rss};
use prism::log::EventLog;
use prism_benches::server::{DEFAULTS, Prism};
use prism_client::wire::NewEvent;
use prism_test_artifacts as artifacts;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Writes `events` events in the peers' JSONL shape, each on its own stream `<prefix><i>`.
fn write_history(file: &std::path::Path, prefix: &str, events: u64) {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).unwrap());
    for i in 0..events {
        writeln!(
            out,
            r#"{{"stream":"{prefix}{i}","type":"OrderPlaced","data":{{"order":"{prefix}{i}","customer":"customer-{}","total":{}}}}}"#,
            i % 100_000,
            i % 997
        )
        .unwrap();
    }
}

/// `prism import` of 1M events, each on its own stream (`order-<i>`), in the peers' JSONL
/// shape, with the import's defaults; then two imports of 500k events at once (what two
/// batches in flight could give at most).
pub(super) async fn import_figure(report: &mut Report, dir: &std::path::Path) {
    const EVENTS: u64 = 1_000_000;
    println!("prism import");
    let file = dir.join("history.jsonl");
    write_history(&file, "order-", EVENTS);
    let prism = Prism::start(&dir.join("import")).await;
    let batch = std::env::var("PRISM_BENCH_IMPORT_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(10_000);
    let start_at = Instant::now();
    prism::cli::import::import(&prism.api, &file, batch, None)
        .await
        .unwrap();
    let took = start_at.elapsed();
    assert_eq!(prism.api.projectors().await.unwrap().head, EVENTS);
    let per_second = rate(EVENTS, took);
    // The stream index is written off the append path: stopping waits for the rest of it.
    let stopping = Instant::now();
    prism.server.stop().await;
    let indexed_after = stopping.elapsed();
    let log = EventLog::open(&dir.join("import").join("log.redb")).unwrap();
    assert_eq!(log.stream_version("order-999999").unwrap(), 1);
    assert_eq!(log.streams(Some("order-99999"), 2).unwrap().len(), 2);
    drop(log);
    report.add(
        "`prism import` of 1M events over 1M streams",
        format!(
            "{} events (stopped, its stream index complete, {} after the last ack)",
            human(per_second),
            ms(indexed_after)
        ),
        "≥ 300k events/s",
        per_second >= 3e5,
    );

    let halves = [dir.join("half-a.jsonl"), dir.join("half-b.jsonl")];
    write_history(&halves[0], "a-", EVENTS / 2);
    write_history(&halves[1], "b-", EVENTS / 2);
    let prism = Prism::start(&dir.join("import-2")).await;
    let start_at = Instant::now();
    let (a, b) = tokio::join!(
        prism::cli::import::import(&prism.api, &halves[0], batch, None),
        prism::cli::import::import(&prism.api, &halves[1], batch, None),
    );
    a.unwrap();
    b.unwrap();
    let took = start_at.elapsed();
    assert_eq!(prism.api.projectors().await.unwrap().head, EVENTS);
    report.add(
        "two imports at once, 500k events each (the bound of two batches in flight)",
        format!("{} events", human(rate(EVENTS, took))),
        "(no target)",
        true,
    );
    prism.server.stop().await;
}

pub(super) async fn append_figures(report: &mut Report, dir: &std::path::Path) {
    println!("appends over HTTP");
    let prism = Prism::start(&dir.join("append")).await;
    // (a) batched: 1000 events per request, 4 clients.
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "T", "data": {"i": i, "note": "a payload of about a hundred bytes, more or less"}}))
        .collect();
    let body = serde_json::to_vec(&batch).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let total = Arc::new(AtomicU64::new(0));
    let start_at = Instant::now();
    let mut clients = Vec::new();
    for c in 0..4 {
        let (api, body, total) = (prism.api.clone(), body.clone(), total.clone());
        clients.push(tokio::spawn(async move {
            let path = format!("/streams/batch-{c}/events");
            while Instant::now() < deadline {
                // A body serialized once: the figure is the server's, not the client's.
                let reply = api
                    .request(Method::POST, &path)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status(), 201);
                total.fetch_add(1000, Ordering::Relaxed);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let batched = rate(total.load(Ordering::Relaxed), start_at.elapsed());
    report.add(
        "batched append via HTTP (1000/request, 4 clients)",
        format!("{} events", human(batched)),
        "≥ 500k events/s",
        batched >= 5e5,
    );

    // (b) 64 concurrent clients, one event per request, durable ack; (c) the same with an
    // expected version per stream.
    for expected in [false, true] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let total = Arc::new(AtomicU64::new(0));
        let start_at = Instant::now();
        let mut clients = Vec::new();
        for c in 0..64 {
            let (api, total) = (prism.api.clone(), total.clone());
            clients.push(tokio::spawn(async move {
                let path = format!("/streams/single-{expected}-{c}/events");
                let mut version = 0;
                while Instant::now() < deadline {
                    let mut request = api
                        .request(Method::POST, &path)
                        .header("content-type", "application/json")
                        .body(r#"[{"type":"T","data":{"n":1}}]"#);
                    if expected {
                        request = request.query(&[("expected_version", version)]);
                    }
                    let reply = request.send().await.unwrap();
                    assert_eq!(reply.status(), 201);
                    version += 1;
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        let singles = rate(total.load(Ordering::Relaxed), start_at.elapsed());
        if expected {
            report.add(
                "64 clients, single-event appends with expected version",
                format!("{} events", human(singles)),
                "(no target)",
                true,
            );
        } else {
            report.add(
                "64 concurrent single-event durable appends",
                format!("{} events", human(singles)),
                "≥ 30k events/s",
                singles >= 3e4,
            );
        }
    }
    // (d) the same single-event appends from wrk, a separate light client process, so that
    // the figure is the server's rather than that of 64 reqwest clients sharing its cores.
    let script = dir.join("append.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.body = '[{\"type\":\"T\",\"data\":{\"n\":1}}]'\n",
    )
    .unwrap();
    let url = prism.api.url("/streams/wrk-single/events");
    if let Some((per_second, p99)) = wrk(&url, 64, Some(&script)) {
        report.add(
            "64 single-event durable appends, wrk 2 threads × 64 connections (events/s, p99)",
            format!("{} events, p99 {}", human(per_second), ms(p99)),
            "≥ 30k events/s",
            per_second >= 3e4,
        );
    }
    prism.server.stop().await;
}

pub(super) async fn freshness_and_query_figures(report: &mut Report, dir: &std::path::Path) {
    println!("freshness and queries");
    let prism = Arc::new(Prism::start(&dir.join("fresh")).await);
    prism
        .deploy(
            "counter",
            &artifacts::read(artifacts::EVENT_COUNTER),
            &DEFAULTS,
        )
        .await;
    // One append every 1/rate s for 3 s over HTTP, sent by 64 clients that each take the
    // next scheduled append (sent at its time, or at once when behind); the latency of each is
    // from its acknowledgement to the projector's commit that makes it visible to view queries
    // (observed on the checkpoint watch, so no polling load skews it). A task per append
    // instead opened a connection per append once the server fell a little behind, until the
    // connection limit refused them; the figure measured here starts at the acknowledgement,
    // so how appends queue before it does not enter it.
    let generation = prism.server.registry().get("counter").unwrap().serving();
    for per_second in [1_000u64, 10_000] {
        let interval = Duration::from_secs_f64(1.0 / per_second as f64);
        let count = per_second * 3;
        let start_at = tokio::time::Instant::now();
        let cpu_before = cpu_time();
        let next = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        for _ in 0..64 {
            let (prism, next, generation) = (prism.clone(), next.clone(), generation.clone());
            senders.push(tokio::spawn(async move {
                let mut waits = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return waits;
                    }
                    tokio::time::sleep_until(start_at + interval * i as u32).await;
                    let event = NewEvent::new("T", &json!({})).unwrap();
                    // A server that cannot keep up refuses appends (503): counted, not a panic.
                    let Ok(appended) = prism.api.append("fresh", &[event], None).await else {
                        waits.push(tokio::spawn(async { None }));
                        continue;
                    };
                    let acked = Instant::now();
                    let position = appended.last_position;
                    let mut status = generation.watch();
                    waits.push(tokio::spawn(async move {
                        status.wait_for(|s| s.checkpoint >= position).await.unwrap();
                        Some(acked.elapsed())
                    }));
                }
            }));
        }
        let mut tasks = Vec::new();
        for sender in senders {
            tasks.extend(sender.await.unwrap());
        }
        // The rate the appends were acknowledged at, to show the schedule was kept.
        let sent = rate(count, start_at.elapsed());
        // Cores this process (clients, server, projector) kept busy meanwhile, of the machine's.
        let cores = (cpu_time() - cpu_before).as_secs_f64() / start_at.elapsed().as_secs_f64();
        let mut latencies = Vec::new();
        let mut refused = 0;
        for task in tasks {
            match task.await.unwrap() {
                Some(latency) => latencies.push(latency),
                None => refused += 1,
            }
        }
        if refused > 0 {
            report.add(
                format!("append acked → visible in view at {per_second} events/s"),
                format!("{refused} of {count} appends refused: the open loop outran the server"),
                "p99 ≤ 2 ms",
                false,
            );
            continue;
        }
        let (p50, p99, p999) = (
            percentile(&mut latencies, 0.5),
            percentile(&mut latencies, 0.99),
            percentile(&mut latencies, 0.999),
        );
        // Within 5% of the schedule, or the figure is not at the rate it claims.
        let kept = sent >= 0.95 * per_second as f64;
        let pass = kept && (per_second != 10_000 || p99 <= Duration::from_millis(2));
        report.add(
            format!("append acked → visible in view at {per_second} events/s (p50 / p99 / p999)"),
            format!(
                "{} / {} / {} (appended at {}; the process busy {cores:.1} of {} cores)",
                ms(p50),
                ms(p99),
                ms(p999),
                human(sent),
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
            if per_second == 10_000 {
                "p99 ≤ 2 ms"
            } else {
                "(no target)"
            },
            pass,
        );
    }

    // Queries: with wrk (a separate, light client process) when installed, else 32 in-process
    // clients for 5 s.
    let url = prism.api.url("/projectors/counter/view/type/T");
    if let Some((per_second, p99)) = wrk(&url, 32, None) {
        report.add(
            "view GET by key, loopback, wrk 2 threads × 32 connections (req/s, p99)",
            format!("{:.0} req/s, p99 {}", per_second, ms(p99)),
            "≥ 50k req/s, p99 ≤ 5 ms",
            per_second >= 50_000.0 && p99 <= Duration::from_millis(5),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let start_at = Instant::now();
    for _ in 0..32 {
        let (prism, stop) = (prism.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = prism
                    .api
                    .request(Method::GET, "/projectors/counter/view/type/T")
                    .send()
                    .await
                    .unwrap();
                let _ = reply.bytes().await.unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await.unwrap());
    }
    let per_second = rate(latencies.len() as u64, start_at.elapsed());
    let p99 = percentile(&mut latencies, 0.99);
    report.add(
        "view GET by key, loopback, 32 in-process reqwest clients (req/s, p99)",
        format!("{:.0} req/s, p99 {}", per_second, ms(p99)),
        "≥ 50k req/s, p99 ≤ 5 ms",
        per_second >= 50_000.0 && p99 <= Duration::from_millis(5),
    );
    if let Ok(prism) = Arc::try_unwrap(prism) {
        prism.server.stop().await;
    }
}

/// Runs wrk (2 threads, `connections` connections) against `url` for 5 s, with the Lua
/// `script` when given; (requests/s, p99 latency), or `None` without wrk or when a request was
/// not answered 2xx.
fn wrk(url: &str, connections: usize, script: Option<&std::path::Path>) -> Option<(f64, Duration)> {
    let mut command = std::process::Command::new("wrk");
    command.args(["-t2", &format!("-c{connections}"), "-d5s", "--latency"]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        eprintln!("wrk saw answers other than 2xx:\n{text}");
        return None;
    }
    let per_second = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .and_then(|v| {
            let (number, unit) = v.split_at(v.find(|c: char| c.is_alphabetic())?);
            let number: f64 = number.parse().ok()?;
            let seconds = match unit {
                "us" => number / 1e6,
                "ms" => number / 1e3,
                "s" => number,
                _ => return None,
            };
            Some(Duration::from_secs_f64(seconds))
        })?;
    Some((per_second, p99))
}

pub(super) async fn reload_and_restart_figures(report: &mut Report, dir: &std::path::Path) {
    println!("reload, restart and memory");
    let data = dir.join("many");
    let prism = Prism::start(&data).await;
    let v1 = artifacts::read(artifacts::TALLY_V1);
    let v2 = artifacts::read(artifacts::TALLY_V2);
    prism.deploy("tally", &v1, &DEFAULTS).await;
    prism.deploy("tally", &v2, &DEFAULTS).await;
    let mut hits = Vec::new();
    for i in 0..20 {
        let wasm = if i % 2 == 0 { &v1 } else { &v2 };
        let start_at = Instant::now();
        let deployed = prism.deploy("tally", wasm, &DEFAULTS).await;
        while prism.status("tally").await.module != deployed.module {}
        hits.push(start_at.elapsed());
    }
    let p50 = percentile(&mut hits, 0.5);
    report.add(
        "continue-mode reload, compile-cache hit, upload-to-serving (p50)",
        ms(p50),
        "≤ 50 ms",
        p50 <= Duration::from_millis(50),
    );

    // 50 idle projectors: memory, then a restart to all live.
    let counter = artifacts::read(artifacts::EVENT_COUNTER);
    let before = rss();
    for i in 0..50 {
        prism
            .deploy(&format!("idle-{i}"), &counter, &DEFAULTS)
            .await;
    }
    while !prism.all_live(51).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let per_projector = (rss().saturating_sub(before)) as f64 / 50.0 / (1 << 20) as f64;
    report.add(
        "resident memory per idle projector",
        format!("{per_projector:.2} MiB"),
        "≤ 2 MiB",
        per_projector <= 2.0,
    );
    prism.server.stop().await;
    let start_at = Instant::now();
    let prism = Prism::start(&data).await;
    while !prism.all_live(51).await {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start_at.elapsed();
    report.add(
        "restart with 51 projectors deployed, to all live",
        ms(took),
        "≤ 1 s",
        took <= Duration::from_secs(1),
    );
    prism.server.stop().await;
}
