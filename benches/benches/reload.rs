//! Hot-reload harness (end to end, real server on a real socket, release build):
//!
//! - upload-to-serving time of a continue-mode reload: from the start of the `PUT` until the
//!   status reports the new module running — cold (never compiled) and compile-cache hits;
//! - compile time of a cache hit, from memory and from the disk cache (after a restart);
//! - the longest gap in query service while a blue/green rebuild swaps generations, with 16
//!   clients querying.
//!
//! `cargo bench -p prism-benches --bench reload`

use prism_benches::server::{DEFAULTS, Prism};
use prism_client::wire::{CompileSource, DeployMode, Deployed, ScanParams};
use prism_test_artifacts as artifacts;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Deploys `wasm` over a running projector and waits until its runner runs the new module.
async fn upload_to_serving(prism: &Prism, wasm: &[u8]) -> (Duration, Deployed) {
    let start = Instant::now();
    let deployed = prism.deploy("tally", wasm, &DEFAULTS).await;
    assert_eq!(deployed.mode, DeployMode::Continue);
    prism.wait("tally", |s| s.module == deployed.module).await;
    (start.elapsed(), deployed)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let max = *samples.last().unwrap();
    format!("p50 {} max {} (n={})", ms(p50), ms(max), samples.len())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let v1 = artifacts::read(artifacts::TALLY_V1);
    let v2 = artifacts::read(artifacts::TALLY_V2);

    // Cold: each sample on a fresh data dir, so nothing is cached.
    let mut cold = Vec::new();
    let mut cold_compile = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let prism = Prism::start(dir.path()).await;
        prism.deploy("tally", &v1, &DEFAULTS).await;
        prism.append(1000).await;
        prism.wait("tally", |s| s.lag == 0).await;
        let (took, deployed) = upload_to_serving(&prism, &v2).await;
        assert_eq!(deployed.compile, CompileSource::Compiled);
        cold.push(took);
        cold_compile.push(Duration::from_secs_f64(deployed.compile_ms / 1000.0));
        prism.server.stop().await;
    }
    println!(
        "continue-mode reload, cold compile: upload-to-serving {}",
        summary(cold)
    );
    println!("  of which validation + compile: {}", summary(cold_compile));

    // Cache hits: alternate two known modules on one server.
    let dir = tempfile::tempdir().unwrap();
    let prism = Prism::start(dir.path()).await;
    prism.deploy("tally", &v1, &DEFAULTS).await;
    prism.deploy("tally", &v2, &DEFAULTS).await;
    prism.append(1000).await;
    let mut hits = Vec::new();
    let mut hit_compile = Vec::new();
    for i in 0..50 {
        let wasm = if i % 2 == 0 { &v1 } else { &v2 };
        let (took, deployed) = upload_to_serving(&prism, wasm).await;
        assert_eq!(deployed.compile, CompileSource::Memory);
        hits.push(took);
        hit_compile.push(Duration::from_secs_f64(deployed.compile_ms / 1000.0));
    }
    println!(
        "continue-mode reload, compile-cache hit: upload-to-serving {}",
        summary(hits)
    );
    println!(
        "  of which hashing + cache lookup: {}",
        summary(hit_compile)
    );
    prism.server.stop().await;

    // Disk cache: after a restart, a module compiled before is loaded, not compiled.
    let prism = Prism::start(dir.path()).await;
    let v3 = artifacts::read(artifacts::TALLY_V3);
    prism.deploy("warm", &v3, &DEFAULTS).await; // compiled now, cached on disk
    prism.api.delete("warm").await.unwrap();
    prism.server.stop().await;
    let prism = Prism::start(dir.path()).await;
    let deployed = prism.deploy("warm-2", &v3, &DEFAULTS).await;
    assert_eq!(deployed.compile, CompileSource::DiskCache);
    println!(
        "compile-cache hit from disk (after restart): {:.2} ms (cold compile of the same module above)",
        deployed.compile_ms
    );
    prism.server.stop().await;

    // Query service through a blue/green swap.
    let dir = tempfile::tempdir().unwrap();
    let prism = Arc::new(Prism::start(dir.path()).await);
    prism.deploy("tally", &v1, &DEFAULTS).await;
    prism.append(50_000).await;
    prism.wait("tally", |s| s.lag == 0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (prism, stop) = (prism.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let page = ScanParams {
                limit: Some(5),
                ..ScanParams::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                prism.api.scan("tally", &page).await.unwrap();
                done.push((start - epoch, start.elapsed()));
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deploy_at = epoch.elapsed();
    prism
        .deploy("tally", &artifacts::read(artifacts::TALLY_V3), &DEFAULTS)
        .await;
    prism
        .wait("tally", |s| s.generation == 2 && s.rebuild.is_none())
        .await;
    let swapped_at = epoch.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    let ends = {
        let mut ends: Vec<_> = all.iter().map(|(start, took)| *start + *took).collect();
        ends.sort();
        ends
    };
    let gap = ends.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    let during: Vec<_> = all
        .iter()
        .filter(|(start, _)| *start >= deploy_at && *start <= swapped_at)
        .map(|(_, took)| *took)
        .collect();
    let before: Vec<_> = all
        .iter()
        .filter(|(start, _)| *start < deploy_at)
        .map(|(_, took)| *took)
        .collect();
    println!(
        "blue/green swap under 16 query clients: {} queries, 0 failed; longest gap between answers {}",
        all.len(),
        ms(gap)
    );
    println!("  query latency before the deploy: {}", summary(before));
    println!(
        "  query latency during the rebuild ({} for 50k events) and swap: {}",
        ms(swapped_at - deploy_at),
        summary(during)
    );
    if let Ok(prism) = Arc::try_unwrap(prism) {
        prism.server.stop().await;
    }
}
