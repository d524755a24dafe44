//! A full disk, for real: Prism's data dir on a small tmpfs. Appends that cannot commit answer
//! 503 (never 500, never a hang), `/ready` says why, nothing acknowledged is lost, and when space
//! returns the log writes again by itself; a projector whose view cannot commit is the only one
//! harmed, and catches up exactly once it can write.
//!
//! Needs root (CI runs as root) to mount the tmpfs; it fails saying so otherwise.

mod common;

use common::artifacts;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (or CAP_SYS_ADMIN) to mount one"
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remounting the tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_appends_with_503_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "24m");
    let data = disk.0.join("data");
    // Views durable often, so that their writes meet the full disk (between durable commits
    // redb keeps a view's writes in memory).
    let (server, client) = common::start_with(&data, |config| {
        config.view_sync_interval = Duration::from_millis(20);
    })
    .await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    client.deploy("blobs", artifacts::HOSTILE).await;
    client.wait_caught_up("counter").await;

    // A projector writing 512 KiB per event fills the disk with its view: it faults, saying
    // why; its neighbour does not.
    let mut blob_events = 0;
    loop {
        let request = client
            .request("POST", "/streams/b/events")
            .header("content-type", "application/json")
            .body(json!([{"type": "Blob", "data": {}}]).to_string());
        let reply = tokio::time::timeout(Duration::from_secs(30), client.send(request))
            .await
            .expect("an append hung on a full disk");
        assert!(matches!(reply.status, 201 | 503), "{}", reply.body);
        if reply.status == 201 {
            blob_events += 1;
        }
        let status = client
            .wait_until("blobs", "the blob applied or a fault", |s| {
                s["state"] == "faulted" || s["checkpoint"] == s["head"]
            })
            .await;
        if status["state"] == "faulted" {
            let message = status["error"]["message"].as_str().unwrap();
            assert!(message.contains("space"), "{status}");
            break;
        }
        assert!(
            blob_events < 200,
            "the view never filled the disk: {blob_events} blobs, last append {}, {status}",
            reply.status
        );
    }
    assert_ne!(client.status("counter").await["state"], "faulted");
    println!("the blobs view filled the disk after {blob_events} events");

    // Appends of 16 events of 32 KiB each until the disk is full.
    let blob = "x".repeat(32 << 10);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for n in 0..200u64 {
        let events: Vec<_> = (0..16)
            .map(|i| json!({"type": "Filled", "data": {"n": n, "i": i, "blob": blob}}))
            .collect();
        let request = client
            .request("POST", "/streams/fill/events")
            .header("content-type", "application/json")
            .body(json!(events).to_string());
        let reply = tokio::time::timeout(Duration::from_secs(30), client.send(request))
            .await
            .expect("an append hung on a full disk");
        match reply.status {
            201 => acknowledged.push(n),
            503 => {
                assert!(reply.headers.contains_key("retry-after"));
                let error = reply.body["error"].as_str().unwrap();
                assert!(error.contains("nothing was appended"), "{error}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("an append on a full disk answered {other}: {}", reply.body),
        }
        // The log's trouble harms no projector: they read on.
        assert_ne!(client.status("counter").await["state"], "faulted");
    }
    // Reads go on while the log cannot write.
    let read = client.get("/streams/b?limit=10").await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(refused > 0, "the disk never filled");
    let ready = client.get("/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let why = ready.body["log_error"].as_str().unwrap_or_default();
    assert!(why.contains("cannot write"), "{}", ready.body);
    println!(
        "disk full after {} appends; /ready: {why}",
        acknowledged.len()
    );

    // Space returns: the log writes again by itself.
    disk.resize("256m");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client.get("/ready").await;
        if ready.body["log_error"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log never recovered: {}",
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = client
        .append("fill", json!([{"type": "After", "data": {}}]))
        .await;
    // Every acknowledged append is there, in order, gapless; nothing refused is.
    let mut seen = Vec::new();
    let mut from = 1;
    loop {
        let page = client
            .get(&format!("/streams/fill?from={from}&limit=1000"))
            .await
            .body;
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        for event in &events {
            seen.push(event["data"]["n"].as_u64());
            from = event["stream_version"].as_u64().unwrap() + 1;
        }
    }
    let expected: Vec<Option<u64>> = acknowledged
        .iter()
        .flat_map(|n| std::iter::repeat_n(Some(*n), 16))
        .chain([None])
        .collect();
    assert_eq!(seen, expected, "the log lost or added appends");
    assert_eq!(after["last_position"], (blob_events + seen.len()) as u64);

    // Every view is whole again: the faulted one once resumed (its file is reopened), exact.
    let total = (seen.len() + blob_events) as u64;
    for name in ["counter", "blobs"] {
        let status = client.status(name).await;
        println!("{name} after the full disk: {}", status["state"]);
        if status["state"] == "faulted" {
            let resumed = client
                .post_raw(&format!("/projectors/{name}/resume"), "")
                .await;
            assert!(resumed.status < 300, "{}", resumed.body);
        }
        client.wait_caught_up(name).await;
    }
    assert_eq!(client.view("counter", "total").await, json!(total));
    assert_eq!(client.view("blobs", "ok").await, json!(total));
    let blobs = client.whole_view("blobs").await;
    assert_eq!(
        blobs.keys().filter(|k| k.starts_with("blob/")).count(),
        blob_events
    );
    server.stop().await;
}
