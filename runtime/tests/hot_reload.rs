//! Hot reload over a real socket: continue-mode swaps under appends, blue/green rebuilds under
//! query load, bad modules during a reload, a restart in the middle of a rebuild, and the
//! lifecycle (pause, resume, reset, rollback, delete).

mod common;

use common::{artifacts, module_of};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test(flavor = "multi_thread")]
async fn continue_mode_reload_while_appends_flow_applies_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("tally", artifacts::TALLY_V1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let kind = if round % 2 == 0 { "A" } else { "B" };
                common::append_many(&client, &format!("s-{}", round % 7), kind, 1 + round % 5, 5)
                    .await;
                round += 1;
            }
            round
        })
    };
    // Redeploy while the appends flow: same schema, so the new code continues.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let v2 = client.deploy("tally", artifacts::TALLY_V2).await;
    assert_eq!(v2["mode"], "continue");
    assert_eq!(v2["generation"], 1);
    client
        .wait_until("tally", "the swap", |s| s["module"] == v2["module"])
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = appender.await.unwrap();
    assert!(rounds > 5, "only {rounds} appends ran");
    // Events only v2 understands come after the reload.
    for n in [3, 4] {
        client
            .append("bonus", json!([{"type": "Bonus", "data": {"n": n}}]))
            .await;
    }
    let status = client.wait_caught_up("tally").await;
    assert_eq!(status["module"], v2["module"]);
    assert_eq!(status["reload_error"], Value::Null);
    let head = status["head"].as_u64().unwrap();

    let view = client.whole_view_paged("tally", 500).await;
    assert_eq!(view["applied"], json!(head), "every event applied");
    assert_eq!(view.get("duplicates"), None, "no event applied twice");
    assert_eq!(view["bonus"], json!(7));

    // The final view equals a from-scratch replay of the new code over the same log.
    client.deploy("tally-replay", artifacts::TALLY_V2).await;
    client.wait_caught_up("tally-replay").await;
    assert_eq!(view, client.whole_view_paged("tally-replay", 500).await);
    server.stop().await;
}

/// One answer seen by a query client: status, generation, module, keys.
struct Answer {
    status: u16,
    generation: u64,
    module: String,
    keys: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_mode_swaps_atomically_under_query_load() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let v1 = module_of(&client.deploy("tally", artifacts::TALLY_V1).await);
    common::append_many(&client, "load", "A", 20_000, 1000).await;
    client.wait_caught_up("tally").await;

    // Hammer the view from many concurrent clients through the whole swap.
    let stop = Arc::new(AtomicBool::new(false));
    let mut hammers = Vec::new();
    for _ in 0..64 {
        let (client, stop) = (client.clone(), stop.clone());
        hammers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = client.get("/projectors/tally/view?limit=5").await;
                let header = |name: &str| {
                    reply
                        .headers
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_string())
                };
                answers.push(Answer {
                    status: reply.status,
                    generation: header("prism-generation")
                        .unwrap_or_default()
                        .parse()
                        .unwrap_or(0),
                    module: header("prism-module").unwrap_or_default(),
                    keys: reply.body["items"]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|i| i["key"].as_str().unwrap().to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            answers
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let deployed = client.deploy("tally", artifacts::TALLY_V3).await;
    assert_eq!(deployed["mode"], "rebuild");
    assert_eq!(deployed["generation"], 2);
    let v3 = module_of(&deployed);
    // The old generation keeps following the log while the new one rebuilds.
    common::append_many(&client, "load", "B", 50, 10).await;
    let rebuilding = client.status("tally").await;
    let swapped = client
        .wait_until("tally", "the swap", |s| {
            s["generation"] == 2 && s["rebuild"].is_null()
        })
        .await;
    assert_eq!(swapped["module"], json!(v3));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    let mut per_generation = [0; 3];
    for hammer in hammers {
        let answers = hammer.await.unwrap();
        let mut newest = 0;
        for a in &answers {
            assert_eq!(a.status, 200, "a query failed during the swap");
            // Every answer comes from exactly one generation: its keys and module agree.
            match a.generation {
                1 => {
                    assert_eq!(a.module, v1);
                    assert!(a.keys.iter().all(|k| !k.starts_with("v3/")), "{:?}", a.keys);
                }
                2 => {
                    assert_eq!(a.module, v3);
                    assert!(a.keys.iter().all(|k| k.starts_with("v3/")), "{:?}", a.keys);
                }
                g => panic!("answer from generation {g}"),
            }
            // Once a client has seen the new generation, it never sees the old one again.
            assert!(
                a.generation >= newest,
                "went back from generation {newest} to {}",
                a.generation
            );
            newest = a.generation;
            per_generation[a.generation as usize] += 1;
        }
        assert_eq!(newest, 2, "every client ends on the new generation");
        total += answers.len();
    }
    assert!(total >= 300, "only {total} queries ran through the swap");
    assert!(
        per_generation[1] > 0 && per_generation[2] > 0,
        "{per_generation:?}"
    );
    eprintln!(
        "{total} queries through the swap: {per_generation:?}; status while rebuilding: {rebuilding}"
    );

    // The new view is exact, and the old generation's file is gone.
    let head = client.status("tally").await["head"].as_u64().unwrap();
    assert_eq!(client.view("tally", "v3/applied").await, json!(head));
    assert_eq!(client.view("tally", "v3/duplicates").await, Value::Null);
    assert!(!dir.path().join("projectors/tally/gen-1.redb").exists());
    assert!(dir.path().join("projectors/tally/gen-2.redb").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_module_during_a_reload_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let v1 = module_of(&client.deploy("tally", artifacts::TALLY_V1).await);
    common::append_many(&client, "s", "A", 10, 5).await;
    client.wait_caught_up("tally").await;

    // Fails to initialize: refused, nothing changes.
    let refused = client
        .put_raw("/projectors/tally", artifacts::read(artifacts::BAD_INIT))
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("bad-init refuses")
    );
    assert_eq!(client.status("tally").await["module"], json!(v1));

    // Traps on its first batch in continue mode: the old code takes the batch back.
    let trap = client.deploy("tally", artifacts::TRAP_ON_APPLY).await;
    assert_eq!(trap["mode"], "continue");
    common::append_many(&client, "s", "A", 3, 3).await;
    let status = client
        .wait_until("tally", "the reload to fail", |s| {
            !s["reload_error"].is_null() && s["lag"] == 0
        })
        .await;
    assert_eq!(status["module"], json!(v1));
    assert_eq!(status["state"], "live");
    assert!(
        status["reload_error"].as_str().unwrap().contains("trap"),
        "{status}"
    );
    assert_eq!(client.view("tally", "applied").await, json!(13));
    assert_eq!(client.view("tally", "duplicates").await, Value::Null);

    // Traps while rebuilding: the old generation keeps serving and following; status says why.
    let rebuild = client
        .deploy_with("tally", artifacts::TRAP_ON_APPLY, "mode=rebuild")
        .await;
    assert_eq!(rebuild["mode"], "rebuild");
    let status = client
        .wait_until("tally", "the rebuild to fault", |s| {
            s["rebuild"]["state"] == "faulted"
        })
        .await;
    assert!(
        status["rebuild"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("trap"),
        "{status}"
    );
    assert_eq!(status["generation"], 1);
    common::append_many(&client, "s", "A", 2, 2).await;
    client
        .wait_until("tally", "the old one to follow", |s| s["lag"] == 0)
        .await;
    assert_eq!(client.view("tally", "applied").await, json!(15));
    server.stop().await;

    // After a restart the failed continue-mode reload stays undone.
    let (server, client) = common::start(dir.path()).await;
    let status = client.status("tally").await;
    assert_eq!(status["module"], json!(v1));
    server.stop().await;
}

/// New code on trial whose first batch holds no event for it (its subscription is narrower)
/// passes its trial: the checkpoint moved past events only the old code wanted, so a later
/// failure is the new code's poison event, never a rollback that would skip them.
#[tokio::test(flavor = "multi_thread")]
async fn a_trial_whose_first_batch_is_empty_passes_and_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("x", artifacts::EVENT_COUNTER).await;
    common::append_many(&client, "s", "A", 10, 5).await;
    client.wait_caught_up("x").await;
    // Same schema version: a continue-mode trial of code that wants only orders.
    let orders = client.deploy("x", artifacts::ORDER_TOTALS).await;
    assert_eq!(orders["mode"], "continue");
    let others: Vec<Value> = (0..1100)
        .map(|_| json!({"type": "Other", "data": {}}))
        .collect();
    client.append("s", json!(others)).await;
    client
        .wait_until("x", "the empty batch to pass the trial", |s| {
            s["module"] == orders["module"] && s["lag"] == 0
        })
        .await;
    // Bad data for the new code: its own fault, not a rollback to the counter.
    client
        .append("s", json!([{"type": "OrderPlaced", "data": {}}]))
        .await;
    let status = client
        .wait_until("x", "the new code to fault", |s| s["state"] == "faulted")
        .await;
    assert_eq!(status["module"], orders["module"], "{status}");
    assert_eq!(status["reload_error"], Value::Null, "{status}");
    assert_eq!(status["error"]["position"], 1111, "{status}");
    // The counter's view is what it applied before the swap.
    assert_eq!(client.view("x", "total").await, json!(10));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_middle_of_a_rebuild_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let v1 = module_of(&client.deploy("tally", artifacts::TALLY_V1).await);
    let head = common::append_many(&client, "s", "A", 30_000, 1000).await;
    client.wait_caught_up("tally").await;

    client.deploy("tally", artifacts::TALLY_V3).await;
    let midway = client
        .wait_until("tally", "the rebuild to start", |s| {
            s["rebuild"]["checkpoint"].as_u64().unwrap_or(0) > 0
        })
        .await;
    server.stop().await;
    let reached = midway["rebuild"]["checkpoint"].as_u64().unwrap();
    assert!(
        reached < head,
        "the rebuild finished before the restart: {midway}"
    );

    let (server, client) = common::start(dir.path()).await;
    let resumed = client.status("tally").await;
    // Until the rebuild completes, the old generation serves.
    if !resumed["rebuild"].is_null() {
        assert_eq!(resumed["generation"], 1);
        assert_eq!(resumed["module"], json!(v1));
        assert_eq!(client.view("tally", "applied").await, json!(head));
        assert!(
            resumed["rebuild"]["checkpoint"].as_u64().unwrap() >= reached,
            "{resumed}"
        );
    }
    client
        .wait_until("tally", "the swap", |s| {
            s["generation"] == 2 && s["rebuild"].is_null() && s["lag"] == 0
        })
        .await;
    assert_eq!(client.view("tally", "v3/applied").await, json!(head));
    assert_eq!(client.view("tally", "v3/duplicates").await, Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_pause_resume_reset_rollback_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let v1 = module_of(&client.deploy("tally", artifacts::TALLY_V1).await);
    common::append_many(&client, "s", "A", 10, 10).await;
    client.wait_caught_up("tally").await;

    // Pause: appends wait; the view keeps serving. Paused survives a restart.
    let paused = client.post_raw("/projectors/tally/pause", "").await;
    assert_eq!(
        (paused.status, paused.body["state"].clone()),
        (200, json!("paused"))
    );
    common::append_many(&client, "s", "A", 5, 5).await;
    server.stop().await;
    let (server, client) = common::start(dir.path()).await;
    let status = client
        .wait_until("tally", "paused", |s| s["state"] == "paused")
        .await;
    assert_eq!(status["checkpoint"], 10);
    assert_eq!(client.view("tally", "applied").await, json!(10));
    client.post_raw("/projectors/tally/resume", "").await;
    client.wait_caught_up("tally").await;
    assert_eq!(client.view("tally", "applied").await, json!(15));

    // Reset: a new generation rebuilds the same view from scratch.
    let before = client.whole_view("tally").await;
    let reset = client.post_raw("/projectors/tally/reset", "").await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    client
        .wait_until("tally", "the reset", |s| {
            s["generation"] == 2 && s["rebuild"].is_null() && s["lag"] == 0
        })
        .await;
    assert_eq!(client.whole_view("tally").await, before);

    // Rollback by hash, without re-uploading; a redeploy of a known module is not recompiled.
    let v2 = client.deploy("tally", artifacts::TALLY_V2).await;
    assert_eq!(v2["compile"], "compiled");
    let rollback = client
        .put_raw(&format!("/projectors/tally?module={v1}"), "")
        .await;
    assert_eq!(rollback.status, 200, "{}", rollback.body);
    assert_eq!(rollback.body["mode"], "continue");
    assert_eq!(rollback.body["compile"], "memory");
    // The runner takes the new code between two batches, at once when idle.
    client
        .wait_until("tally", "the rollback", |s| s["module"] == json!(v1))
        .await;
    let modules = client.get("/modules").await.body["modules"].clone();
    assert!(modules.as_array().unwrap().contains(&json!(v1)));
    assert!(modules.as_array().unwrap().contains(&v2["module"]));
    let unknown = client
        .put_raw(&format!("/projectors/tally?module={}", "0".repeat(64)), "")
        .await;
    assert_eq!(unknown.status, 404);
    server.stop().await;

    // After a restart, a module compiled before comes from the disk cache.
    let (server, client) = common::start(dir.path()).await;
    let cached = client.deploy("other", artifacts::TALLY_V2).await;
    assert_eq!(cached["compile"], "disk-cache");

    // Delete: gone, files and all; other projectors untouched.
    let deleted = client.delete("/projectors/tally").await;
    assert_eq!(deleted.status, 200);
    assert_eq!(client.get("/projectors/tally").await.status, 404);
    assert!(!dir.path().join("projectors/tally").exists());
    assert_eq!(client.get("/projectors/tally/pause").await.status, 405);
    assert_eq!(
        client.post_raw("/projectors/tally/pause", "").await.status,
        404
    );
    client.wait_caught_up("other").await;
    server.stop().await;
}
