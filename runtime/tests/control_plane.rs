//! The control plane's promises, each once broken: a redeploy changes everything it says (module,
//! config, error policy) or, when its trial fails, nothing — also across a restart; a trial cut
//! short by a restart is resumed, not trusted; a thread that cannot start fails only its own
//! request; errors are JSON, internal causes stay in the log.

mod common;

use common::{artifacts, module_of};
use prism::projector::Spawner;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bug 1: the runner kept the error policy it was started with.
#[tokio::test(flavor = "multi_thread")]
async fn a_continue_redeploy_with_a_new_error_policy_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("poison", artifacts::POISON).await;
    client
        .append("p-1", json!([{"type": "N", "data": {"n": 1}}]))
        .await;
    client.wait_caught_up("poison").await;

    let redeployed = client
        .deploy_with("poison", artifacts::POISON, "on_error=skip")
        .await;
    assert_eq!(redeployed["mode"], "continue");
    // The new deployment proves itself on a healthy event, then meets a poisoned one.
    client
        .append("p-1", json!([{"type": "N", "data": {"n": 2}}]))
        .await;
    client.wait_caught_up("poison").await;
    client
        .append(
            "p-1",
            json!([
                {"type": "N", "data": {"n": 3, "poison": true}},
                {"type": "N", "data": {"n": 4}},
            ]),
        )
        .await;
    let status = client.wait_caught_up("poison").await;
    assert_eq!(status["on_error"], "skip");
    assert_eq!(status["error"], Value::Null);
    assert_eq!(status["checkpoint"], 4);
    // Hand-computed: events 1, 2 and 4 count; 3 is a dead letter.
    assert_eq!(client.view("poison", "sum").await, json!(1 + 2 + 4));
    assert_eq!(client.view("poison", "count").await, json!(3));
    let letters = client.get("/projectors/poison/dead-letters").await.body;
    assert_eq!(letters["dead_letters"][0]["position"], 3);
    server.stop().await;
}

/// Bug 2: a failed trial rolled back only the module; the catalog kept the new config and
/// policy, and after a restart the old module ran with them.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_trial_rolls_back_the_whole_deployment_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let v1 = module_of(&client.deploy("tally", artifacts::TALLY_V1).await);
    client.append("s", json!([{"type": "A", "data": {}}])).await;
    client.wait_caught_up("tally").await;

    let trap = client
        .deploy_with(
            "tally",
            artifacts::TRAP_ON_APPLY,
            "config=two&on_error=skip",
        )
        .await;
    assert_eq!(trap["mode"], "continue");
    client.append("s", json!([{"type": "A", "data": {}}])).await;
    let status = client
        .wait_until("tally", "the trial to fail", |s| {
            s["reload_error"].is_string() && s["checkpoint"] == 2
        })
        .await;
    let rolled_back = |s: &Value| {
        assert_eq!(s["module"], v1, "{s}");
        assert_eq!(s["config"], "", "{s}");
        assert_eq!(s["on_error"], "stop", "{s}");
        assert_eq!(s["error"], Value::Null, "{s}");
    };
    rolled_back(&status);
    server.stop().await;

    let (server, client) = common::start(dir.path()).await;
    rolled_back(&client.status("tally").await);
    client.append("s", json!([{"type": "A", "data": {}}])).await;
    let status = client.wait_caught_up("tally").await;
    rolled_back(&status);
    assert_eq!(client.view("tally", "applied").await, json!(3));
    server.stop().await;
}

/// Bug 3: a trial that had not run yet when Prism stopped was trusted after the restart, and
/// the projector faulted on the trapping module.
#[tokio::test(flavor = "multi_thread")]
async fn a_trial_cut_short_by_a_restart_is_resumed_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let v1 = module_of(&client.deploy("tally", artifacts::TALLY_V1).await);
    client.append("s", json!([{"type": "A", "data": {}}])).await;
    client.wait_caught_up("tally").await;
    let trap = client.deploy("tally", artifacts::TRAP_ON_APPLY).await;
    assert_eq!(trap["mode"], "continue");
    // No event arrives: the trial has not run when Prism stops.
    server.stop().await;

    let (server, client) = common::start(dir.path()).await;
    client.append("s", json!([{"type": "A", "data": {}}])).await;
    let status = client
        .wait_until("tally", "the resumed trial to fail", |s| {
            (s["checkpoint"] == 2 && s["reload_error"].is_string()) || s["state"] == "faulted"
        })
        .await;
    assert_eq!(status["state"], "live", "{status}");
    assert_eq!(status["module"], v1);
    assert!(
        status["reload_error"]
            .as_str()
            .is_some_and(|e| e.contains(&module_of(&trap))),
        "{status}"
    );
    assert_eq!(client.view("tally", "applied").await, json!(2));
    server.stop().await;

    // The failed trial is recorded: the next start does not try it again.
    let (server, client) = common::start(dir.path()).await;
    assert_eq!(client.status("tally").await["module"], v1);
    client.append("s", json!([{"type": "A", "data": {}}])).await;
    let status = client.wait_caught_up("tally").await;
    assert_eq!(status["reload_error"], Value::Null);
    assert_eq!(client.view("tally", "applied").await, json!(3));
    server.stop().await;
}

/// Bug 5: a thread that failed to start panicked under the deploy lock and poisoned it, so
/// every later deploy, pause or delete panicked too.
#[tokio::test(flavor = "multi_thread")]
async fn a_thread_that_cannot_start_fails_only_its_own_request() {
    let dir = tempfile::tempdir().unwrap();
    let out_of_threads = Arc::new(AtomicBool::new(false));
    let flag = out_of_threads.clone();
    let (server, client) = common::start_with(dir.path(), move |config| {
        config.spawner = Spawner::new(move |name, work| {
            if flag.load(Ordering::SeqCst) {
                Err(std::io::Error::other("no threads left (injected)"))
            } else {
                std::thread::Builder::new().name(name).spawn(work)
            }
        });
    })
    .await;
    let v1 = module_of(&client.deploy("tally", artifacts::TALLY_V1).await);
    client.deploy("poison", artifacts::POISON).await;
    client
        .append("p", json!([{"type": "N", "data": {"trap": true}}]))
        .await;
    client
        .wait_until("poison", "a fault", |s| s["state"] == "faulted")
        .await;

    out_of_threads.store(true, Ordering::SeqCst);
    let unavailable = |reply: &common::Reply, what: &str| {
        assert_eq!(reply.status, 503, "{what}: {}", reply.body);
        assert_eq!(reply.headers["retry-after"], "1", "{what}");
        assert!(
            reply.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("projector thread")),
            "{what}: {}",
            reply.body
        );
    };
    let new = client
        .put_raw("/projectors/other", artifacts::read(artifacts::TALLY_V1))
        .await;
    unavailable(&new, "a new projector");
    assert_eq!(client.get("/projectors/other").await.status, 404);
    let rebuild = client
        .put_raw(
            "/projectors/tally?mode=rebuild",
            artifacts::read(artifacts::TALLY_V3),
        )
        .await;
    unavailable(&rebuild, "a rebuild");
    let status = client.status("tally").await;
    assert_eq!(status["rebuild"], Value::Null);
    assert_eq!(status["module"], v1);
    let resume = client.post_raw("/projectors/poison/resume", "").await;
    unavailable(&resume, "a restart");
    assert_eq!(client.status("poison").await["state"], "faulted");

    // Nothing is left broken: every later request works.
    out_of_threads.store(false, Ordering::SeqCst);
    let created = client
        .put_raw("/projectors/other", artifacts::read(artifacts::TALLY_V1))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(
        client.post_raw("/projectors/tally/pause", "").await.status,
        200
    );
    assert_eq!(
        client.post_raw("/projectors/tally/resume", "").await.status,
        200
    );
    assert_eq!(client.delete("/projectors/other").await.status, 200);
    client.wait_caught_up("tally").await;
    server.stop().await;
}

/// Bug 6: internal causes were sent to clients, and path parameters that do not parse were
/// answered in plain text.
#[tokio::test(flavor = "multi_thread")]
async fn errors_are_json_and_internal_causes_stay_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("tally", artifacts::TALLY_V1).await;
    for (method, path) in [
        ("DELETE", "/projectors/tally/dead-letters/abc"),
        ("POST", "/projectors/tally/dead-letters/-1/retry"),
        ("GET", "/projectors/tally/dead-letters?limit=many"),
        ("GET", "/projectors/tally/view/total?min_position=soon"),
        ("PUT", "/projectors/tally?mode=sideways"),
        ("GET", "/projectors/%FF"),
        ("PATCH", "/health"),
    ] {
        let reply = client
            .api
            .request(method.parse().unwrap(), path)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let content_type = reply.headers()["content-type"].clone();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        let expected = if method == "PATCH" { 405 } else { 400 };
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert_eq!(content_type, "application/json", "{method} {path}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }

    // A storage failure: the modules directory is now a file.
    let modules = dir.path().join("modules");
    std::fs::remove_dir_all(&modules).unwrap();
    std::fs::write(&modules, b"not a directory").unwrap();
    let reply = client
        .request("PUT", "/projectors/other")
        .header("x-request-id", "req-42")
        .header("content-type", "application/wasm")
        .body(artifacts::read(artifacts::TALLY_V3))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 500);
    assert_eq!(reply.headers()["x-request-id"], "req-42");
    let body: Value = reply.json().await.unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("x-request-id"), "{message}");
    for cause in ["os error", "directory", "modules", "Not a"] {
        assert!(!message.contains(cause), "the cause leaked: {message}");
    }
    // Every answer carries an id, made up when the client sent none.
    let health = client.get("/health").await;
    assert!(!health.headers["x-request-id"].is_empty());
    server.stop().await;
}

/// Bug 6: a verification whose replay faulted was a 500 storage error. With the skip policy
/// the replay skips what the live run skipped; a replay that faults where the live run did not
/// is the module's failure (422, naming the event), not the server's.
#[tokio::test(flavor = "multi_thread")]
async fn a_verification_replays_with_the_projectors_policy_and_reports_a_replay_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy_with("poison", artifacts::POISON, "on_error=skip")
        .await;
    client.deploy("tally", artifacts::TALLY_V1).await;
    client
        .append(
            "p",
            json!([
                {"type": "N", "data": {"n": 1}},
                {"type": "N", "data": {"n": 2, "poison": true}},
                {"type": "N", "data": {"n": 4}},
            ]),
        )
        .await;
    client.wait_caught_up("poison").await;
    client.wait_caught_up("tally").await;
    let verified = client.post_raw("/projectors/poison/verify", "").await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    assert_eq!(verified.body["identical"], true, "{}", verified.body);
    server.stop().await;

    // The same log, replayed under an instruction budget too small for one event.
    let (server, client) = common::start_with(dir.path(), |config| {
        config.sandbox.fuel_per_event = 1_000;
    })
    .await;
    let reply = client.post_raw("/projectors/tally/verify", "").await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.body["fault"]["position"], 1, "{}", reply.body);
    assert!(
        reply.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("instruction budget")),
        "{}",
        reply.body
    );
    server.stop().await;
}
