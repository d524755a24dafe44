//! A hostile module cannot take the host down: one that floods its view with 1 MiB values
//! (guest memory stays small, the host's would not) faults on every such event while Prism's
//! memory stays bounded and its neighbour stays live and exact. In its own test binary, so the
//! process's peak RSS is this test's alone.

mod common;

use common::artifacts;
use serde_json::json;

/// The high-water mark of this process's resident memory (Prism runs in it), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_flood_is_bounded_and_harms_only_its_projector() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy_with("hostile", artifacts::HOSTILE, "on_error=skip")
        .await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    client.wait_caught_up("hostile").await;
    let before = peak_rss();
    // Ten floods, each of which would write 1,000 MiB: 10 GB without a budget.
    let events: Vec<_> = (0..20)
        .map(|i| {
            let kind = if i % 2 == 0 { "PutFlood" } else { "Fine" };
            json!({"type": kind, "data": {}})
        })
        .collect();
    client.append("s-1", json!(events)).await;
    let status = client
        .wait_until("hostile", "every flood dead-lettered", |s| {
            s["checkpoint"] == 20 && s["state"] == "live"
        })
        .await;
    assert_eq!(status["dead_letters_this_run"], 10, "{status}");
    let letters = client.get("/projectors/hostile/dead-letters").await;
    let first = &letters.body["dead_letters"][0];
    assert_eq!(first["position"], 1, "{}", letters.body);
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("max_batch_write_bytes"),
        "{first}"
    );
    // Only the fine events wrote, and only `ok`.
    assert_eq!(client.view("hostile", "ok").await, json!(10));
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 400 << 20,
        "ten write floods raised the peak RSS by {} MiB",
        grown >> 20
    );
    // The neighbour applied all twenty.
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, json!(20));
    // The flood left nothing in the hostile view's file either.
    let views: u64 = walk(&dir.path().join("projectors"));
    assert!(views < 64 << 20, "the view files hold {} MiB", views >> 20);
    println!(
        "write flood: peak RSS grew {} MiB; view files {} KiB",
        grown >> 20,
        views >> 10
    );
    server.stop().await;
}

/// Total bytes of the files under `dir`.
fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A module with 17 memories gets one memory cap for all of them, not one each: growing its
/// extra memories by 32 MiB apiece traps at the second (16 × 32 MiB would fit caps of 64 MiB
/// each).
#[tokio::test(flavor = "multi_thread")]
async fn the_memory_cap_counts_every_memory_together() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("memories", artifacts::MANY_MEMORIES).await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    client
        .append("s-1", json!([{"type": "Any", "data": {}}]))
        .await;
    let status = client
        .wait_until("memories", "a fault", |s| s["state"] == "faulted")
        .await;
    let message = status["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("all its memories together"),
        "{message}"
    );
    assert_eq!(status["checkpoint"], 0);
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, json!(1));
    server.stop().await;
}
