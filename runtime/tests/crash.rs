//! Crash safety: the real `prism` binary is killed with SIGKILL at random moments while
//! appends and projection run, many times over (50 by default, `PRISM_CRASH_KILLS` for more),
//! then restarted on the same data dir. Afterwards:
//! 1. every acknowledged append is in the log, at the position it was acknowledged with, and
//!    positions are gapless;
//! 2. every view equals the view computed here, independently, from the events read back (and
//!    a from-scratch replay); the `tally` projector, which marks each position it applies,
//!    never saw an event twice nor missed one;
//! 3. restarts really resumed from a checkpoint > 0: views are made durable every 5 ms here
//!    (`--view-sync-interval-ms`), so a restart that replayed from zero would show.

mod common;

use common::artifacts;
use common::process::{Acked, Rng, check_log, start, start_syncing};
use prism_client::wire::NewEvent;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_nothing_and_views_stay_exact() {
    let kills: usize = std::env::var("PRISM_CRASH_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut acked: Vec<Acked> = Vec::new();
    let mut next_id = 0u64;

    let prism = start(dir.path());
    prism
        .client
        .deploy("counter", artifacts::EVENT_COUNTER)
        .await;
    prism.client.deploy("tally", artifacts::TALLY_V1).await;
    let mut prism = Some(prism);
    // Per run: the checkpoint `tally` resumed from (its checkpoint less what it applied since
    // the start).
    let mut resumed_from = Vec::new();

    for _ in 0..kills {
        let mut current = prism.take().unwrap_or_else(|| start(dir.path()));
        // Append concurrently from a few clients until the kill.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(5 + rng.below(60));
        let mut appenders = Vec::new();
        for client_no in 0..3u64 {
            let client = current.client.clone();
            let sizes: Vec<u64> = (0..50).map(|_| 1 + rng.below(8)).collect();
            let start_id = next_id;
            next_id += 50 * 8;
            appenders.push(tokio::spawn(async move {
                let mut done = Vec::new();
                let mut id = start_id;
                for size in sizes {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let ids: Vec<u64> = (id..id + size).collect();
                    id += size;
                    let events: Vec<NewEvent> = ids
                        .iter()
                        .map(|i| NewEvent::new(format!("T{}", i % 3), &json!({"id": i})).unwrap())
                        .collect();
                    let stream = format!("c-{client_no}");
                    // A reply cut by the kill (or any error) is not an acknowledgement.
                    let Ok(appended) = client.api.append(&stream, &events, None).await else {
                        break;
                    };
                    done.push(Acked {
                        first_position: appended.first_position,
                        ids,
                    });
                }
                done
            }));
        }
        tokio::time::sleep_until(deadline).await;
        let status = current.client.get("/projectors/tally").await.body;
        if let (Some(checkpoint), Some(applied)) = (
            status["checkpoint"].as_u64(),
            status["events_applied"].as_u64(),
        ) {
            resumed_from.push(checkpoint - applied);
        }
        current.child.kill().expect("SIGKILL");
        current.child.wait().unwrap();
        for appender in appenders {
            acked.extend(appender.await.unwrap());
        }
    }

    // Recovery: start once more and let the projectors catch up.
    let prism = start(dir.path());
    let client = prism.client.clone();
    let head = client.api.projectors().await.unwrap().head;
    let acked_events: usize = acked.iter().map(|a| a.ids.len()).sum();
    assert!(
        acked_events > kills,
        "too few appends were acknowledged: {acked_events}"
    );

    // (1) Every acknowledged event is where it was acknowledged; positions are gapless.
    let by_position = check_log(&client, &["c-0", "c-1", "c-2"], head, &acked).await;

    // (2) Every view is exactly the one computed here from the events read back.
    let tally = client.wait_caught_up("tally").await;
    client.wait_caught_up("counter").await;
    assert_eq!(tally["head"], json!(head));
    let mut counts = [0u64; 3];
    for (_, id) in &by_position {
        counts[(id % 3) as usize] += 1;
    }
    let mut expected_tally = serde_json::Map::new();
    let mut expected_counter = serde_json::Map::new();
    expected_tally.insert("applied".into(), json!(head));
    expected_counter.insert("total".into(), json!(head));
    expected_counter.insert("category/c".into(), json!(head));
    for (kind, count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        expected_tally.insert(format!("count/T{kind}"), json!(count));
        expected_counter.insert(format!("type/T{kind}"), json!(count));
    }
    for position in 1..=head {
        expected_tally.insert(format!("seen/{position:08}"), json!(true));
    }
    let view = client.whole_view_paged("tally", 1000).await;
    assert_eq!(
        view["applied"],
        json!(head),
        "an event was skipped or applied twice"
    );
    assert_eq!(view.get("duplicates"), None, "an event was applied twice");
    assert!(
        view == expected_tally,
        "tally differs from the expected view"
    );
    assert_eq!(
        client.whole_view_paged("counter", 1000).await,
        expected_counter,
        "counter differs from the expected view"
    );
    // (3) Restarts resumed from durable checkpoints, not from zero.
    let resumed = resumed_from.iter().filter(|c| **c > 0).count();
    assert!(
        resumed * 2 >= resumed_from.len(),
        "only {resumed} of {} runs resumed from a checkpoint > 0: {resumed_from:?}",
        resumed_from.len()
    );
    for (name, wasm) in [
        ("counter", artifacts::EVENT_COUNTER),
        ("tally", artifacts::TALLY_V1),
    ] {
        let replay = format!("{name}-replay");
        client.deploy(&replay, wasm).await;
        client.wait_caught_up(&replay).await;
        assert_eq!(
            client.whole_view_paged(name, 1000).await,
            client.whole_view_paged(&replay, 1000).await,
            "{name} differs from a replay after {kills} kills"
        );
    }
    eprintln!(
        "{kills} SIGKILLs: {acked_events} acknowledged events, log head {head}, views exact; \
         {resumed} runs resumed from a checkpoint > 0 (largest {})",
        resumed_from.iter().max().unwrap_or(&0)
    );
    let mut prism = prism;
    prism.child.kill().unwrap();
    prism.child.wait().unwrap();
}

/// A rebuilt generation is promoted only once its view is durable: killed right after it
/// starts serving (views otherwise made durable every 30 s, the default), the restarted Prism
/// serves it whole, without replaying a single event.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_right_after_a_promotion_keeps_the_promoted_view() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut prism = start_syncing(dir.path(), 30_000);
        let client = prism.client.clone();
        client.deploy("tally", artifacts::TALLY_V1).await;
        let head = common::append_many(&client, "s", "A", 40_000, 1000).await;
        client.wait_caught_up("tally").await;
        let rebuild = client.deploy("tally", artifacts::TALLY_V3).await;
        assert_eq!(rebuild["mode"], "rebuild");
        let serving = client
            .wait_until("tally", "generation 2 to serve", |s| {
                s["generation"] == 2 && s["rebuild"].is_null()
            })
            .await;
        prism.child.kill().expect("SIGKILL");
        prism.child.wait().unwrap();
        assert_eq!(serving["checkpoint"], json!(head));

        let mut prism = start_syncing(dir.path(), 30_000);
        let client = prism.client.clone();
        let status = client.wait_caught_up("tally").await;
        assert_eq!(status["generation"], 2, "round {round}: {status}");
        assert_eq!(
            status["events_applied"], 0,
            "round {round}: the promoted view was behind after the kill and replayed: {status}"
        );
        assert_eq!(client.view("tally", "v3/applied").await, json!(head));
        prism.child.kill().unwrap();
        prism.child.wait().unwrap();
    }
}
