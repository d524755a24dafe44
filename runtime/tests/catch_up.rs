//! The catch-up cache: a projector far behind the log holds its writes in memory across
//! batches and commits them together. Checked against expectations computed here, not by the
//! system: `event-counter` counts every event, so its committed view at checkpoint `P` must
//! say `total = P`, whatever was held.

mod common;

use common::{Client, artifacts, start_with};
use prism::log::{EventLog, ExpectedVersion, NewEvent};
use std::time::{Duration, Instant};

/// Appends `n` events straight into the log of `data_dir` (before Prism starts): type `T<i%3>`
/// on streams `s-<i%10>`, 10,000 per append.
async fn fill(data_dir: &std::path::Path, n: u64) {
    let log = EventLog::open(&data_dir.join("log.redb")).unwrap();
    {
        let mut i = 0;
        while i < n {
            let stream = format!("s-{}", i % 10);
            let mut events = Vec::new();
            while i < n && events.len() < 10_000 {
                events.push(NewEvent {
                    event_type: format!("T{}", i % 3),
                    data: format!("{{\"i\":{i}}}").into_bytes(),
                    metadata: None,
                    id: None,
                });
                i += 1;
            }
            log.append(&stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    }
}

/// The `projector_commit_seconds` count of `name`: how many commits its runners made.
async fn commits(client: &Client, name: &str) -> u64 {
    client
        .projector_metric("prism_projector_commit_seconds_count", name)
        .await
}

/// `total` of the committed view, and the checkpoint it was read at (`None` before the first
/// commit).
async fn committed_total(client: &Client) -> Option<(u64, u64)> {
    let reply = client.get("/projectors/counter/view/total").await;
    if reply.status == 404 {
        return None;
    }
    let checkpoint: u64 = reply.headers["prism-checkpoint"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    Some((reply.body.as_u64().unwrap(), checkpoint))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_projector_far_behind_holds_its_writes_and_queries_see_only_committed_views() {
    const EVENTS: u64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), EVENTS).await;
    let stall_after = Duration::from_millis(300);
    let (server, client) = start_with(dir.path(), |c| {
        // Nothing commits on time: only when the projector nears the head.
        c.view_cache_interval = Duration::from_secs(3600);
        c.limits.stall_after = stall_after;
    })
    .await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;

    let mut held = 0;
    let mut longest_hold = Duration::ZERO;
    let mut last_checkpoint = (u64::MAX, Instant::now());
    loop {
        let status = client.status("counter").await;
        let (applied, checkpoint) = (
            status["applied"].as_u64().unwrap(),
            status["checkpoint"].as_u64().unwrap(),
        );
        assert!(applied >= checkpoint, "{status}");
        if applied > checkpoint {
            held += 1;
        }
        if checkpoint != last_checkpoint.0 {
            last_checkpoint = (checkpoint, Instant::now());
        }
        longest_hold = longest_hold.max(last_checkpoint.1.elapsed());
        // Queries read the last committed view, whole: the count at its checkpoint.
        if let Some((total, at)) = committed_total(&client).await {
            assert_eq!(
                total, at,
                "the committed view at {at} counts {total} events"
            );
        }
        // Holding writes is progress, not a stall.
        let ready = client.get("/ready").await;
        assert_eq!(ready.status, 200, "{}", ready.body);
        if checkpoint == EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held > 0, "the writes were never seen held");
    // The catch-up held its writes for longer than the stall limit, with /ready at 200.
    assert!(
        longest_hold > stall_after,
        "the checkpoint never stood still for {stall_after:?} (longest {longest_hold:?}): \
         the test did not cover a long hold"
    );
    // Nothing commits on time: one commit for the whole catch-up, or a few near the head.
    let made = commits(&client, "counter").await;
    assert!(
        made <= 3,
        "{made} commits for a catch-up of {EVENTS} events"
    );
    let view = client.whole_view("counter").await;
    assert_eq!(view["total"], EVENTS);
    for kind in 0..3 {
        let expected = (0..EVENTS).filter(|i| i % 3 == kind).count() as u64;
        assert_eq!(view[&format!("type/T{kind}")], expected);
    }
    assert_eq!(view["category/s"], EVENTS);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_budget_commits_and_caught_up_projectors_commit_every_batch() {
    const EVENTS: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), EVENTS).await;
    let (server, client) = start_with(dir.path(), |c| {
        // Room for two keys only: every batch fills it.
        c.view_cache_bytes = 256;
        c.view_cache_interval = Duration::from_secs(3600);
    })
    .await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    let status = client.wait_caught_up("counter").await;
    assert_eq!(status["checkpoint"], EVENTS);
    let batches = EVENTS / 1024;
    let made = commits(&client, "counter").await;
    assert!(
        made >= batches,
        "{made} commits for {batches} batches with a full budget"
    );
    // Live: each append commits at once (read-your-writes without waiting for an interval).
    for n in 1..=5u64 {
        client
            .append("s-1", serde_json::json!([{"type": "T0", "data": {}}]))
            .await;
        let reply = client
            .get(&format!(
                "/projectors/counter/view/total?min_position={}&timeout_ms=5000",
                EVENTS + n
            ))
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, EVENTS + n);
    }
    server.stop().await;
}
