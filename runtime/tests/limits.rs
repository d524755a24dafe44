//! Sandbox limits and poison events, injected with hostile fixtures over a real socket: a
//! runaway loop, a memory bomb and deep recursion each trap only their own projector, which
//! stops just before the failing event; the `skip` policy dead-letters failing events in the
//! checkpoint's transaction; other projectors never notice.

mod common;

use common::artifacts;
use serde_json::{Value, json};

/// Deploys `wasm` as `name` next to an event-counter, appends `ok, ok, <bad>, ok` in one
/// append (one batch), and checks that only `name` stopped, right before the bad event.
async fn stops_just_before(wasm: &str, bad_type: &str, expect_in_error: &str) {
    stops_just_before_with(wasm, bad_type, expect_in_error, |_| {}).await;
}

/// [`stops_just_before`] on a Prism configured by `configure`; returns the fault's message.
pub async fn stops_just_before_with(
    wasm: &str,
    bad_type: &str,
    expect_in_error: &str,
    configure: impl FnOnce(&mut prism::server::ServerConfig),
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(dir.path(), configure).await;
    client.deploy("hostile", wasm).await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    client
        .append(
            "s-1",
            json!([
                {"type": "Fine", "data": {}},
                {"type": "Fine", "data": {}},
                {"type": bad_type, "data": {}},
                {"type": "Fine", "data": {}},
            ]),
        )
        .await;
    let status = client
        .wait_until("hostile", "a fault", |s| s["state"] == "faulted")
        .await;
    let error = &status["error"];
    assert_eq!(error["position"], 3, "{status}");
    assert_eq!(error["event_type"], bad_type);
    assert_eq!(error["stream"], "s-1");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(expect_in_error), "{message}");
    // The events before the failing one are committed; the failing one is not.
    assert_eq!(status["checkpoint"], 2);
    assert_eq!(client.view("hostile", "ok").await, json!(2));

    // The neighbour applied everything, and Prism keeps serving.
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, json!(4));
    client
        .append("s-1", json!([{"type": "Fine", "data": {}}]))
        .await;
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, json!(5));

    // Resuming re-applies the same event: fuel and limits are deterministic, so is the verdict.
    client.post_raw("/projectors/hostile/resume", "").await;
    let again = client
        .wait_until("hostile", "the same fault", |s| {
            s["state"] == "faulted" && s["error"]["position"] == 3
        })
        .await;
    assert_eq!(again["checkpoint"], 2);
    server.stop().await;
    message.to_string()
}

/// Each event has its own budget: batches of a thousand cheap events pass whole under a
/// budget that one event fits in many times, never a whole batch. (Without the refill they
/// would still pass, split until each failing event is first of its batch, which starts with
/// a full budget: the number of batches tells.)
#[tokio::test(flavor = "multi_thread")]
async fn every_event_of_a_batch_gets_its_own_instruction_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(dir.path(), |config| {
        config.sandbox.fuel_per_event = 20_000;
    })
    .await;
    let events: Vec<Value> = (0..5000)
        .map(|i| json!({"type": format!("T{}", i % 3), "data": {}}))
        .collect();
    client.append("s-1", json!(events)).await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    let status = client.wait_caught_up("counter").await;
    assert_eq!(status["state"], "live", "{status}");
    assert_eq!(client.view("counter", "total").await, 5000);
    let batches = client
        .projector_metric("prism_projector_batches_total", "counter")
        .await;
    assert!(batches <= 6, "5000 events took {batches} batches");
    // The budget binds: the runaway loop still exhausts it.
    client.deploy("loop", artifacts::INFINITE_LOOP).await;
    client
        .append("s-1", json!([{"type": "Loop", "data": {}}]))
        .await;
    let status = client
        .wait_until("loop", "a fault", |s| s["state"] == "faulted")
        .await;
    assert!(
        status["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("instruction budget")),
        "{status}"
    );
    server.stop().await;
}

/// A module that names an event past its batch as the failing one faults (it used to make the
/// runner split the batch forever); its neighbour carries on.
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_naming_an_event_past_the_batch_faults_only_its_projector() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("liar", artifacts::BAD_INDEX).await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    let events: Vec<Value> = (0..3).map(|_| json!({"type": "T", "data": {}})).collect();
    client.append("s-1", json!(events)).await;
    let status = client
        .wait_until("liar", "a fault", |s| s["state"] == "faulted")
        .await;
    assert_eq!(status["error"]["position"], 1, "{status}");
    assert!(
        status["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("naming an event")),
        "{status}"
    );
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_loop_exhausts_its_instruction_budget() {
    stops_just_before(artifacts::INFINITE_LOOP, "Loop", "instruction budget").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_hits_the_memory_cap() {
    stops_just_before(artifacts::MEMORY_BOMB, "Bomb", "memory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_hits_the_stack_cap() {
    stops_just_before(artifacts::DEEP_RECURSION, "Recurse", "stack").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_over_the_size_limit_traps() {
    stops_just_before(artifacts::HOSTILE, "BigValue", "max_value_bytes").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_checks_its_key_length() {
    stops_just_before(artifacts::HOSTILE, "LongDelete", "longer than the limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_asking_for_everything_traps_before_the_host_builds_it() {
    stops_just_before(artifacts::HOSTILE, "ScanAll", "max_scan_entries").await;
}

/// The SDK sends a batch's writes when `apply` ends, so the write budget is broken by the
/// batch's last event; the batch is split until the event that is over the budget alone is
/// found, and only it faults (the others, before and after it, are applied).
#[tokio::test(flavor = "multi_thread")]
async fn too_many_writes_fault_the_event_that_made_them_however_batched() {
    stops_just_before_with(
        artifacts::HOSTILE,
        "ManyWrites",
        "max_batch_writes",
        |config| {
            config.sandbox.max_batch_writes = 1000;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_error_message_is_cut_before_it_is_kept() {
    let message = stops_just_before_with(artifacts::HOSTILE, "HugeError", "eeee", |_| {}).await;
    assert!(
        message.len() <= 4096 + 64,
        "a {} byte error message was kept",
        message.len()
    );
}

fn poison_history() -> Value {
    json!([
        {"type": "N", "data": {"n": 1}},
        {"type": "N", "data": {"n": 2}},
        {"type": "N", "data": {"n": 3, "poison": true}},
        {"type": "N", "data": {"n": 4}},
        {"type": "N", "data": {"n": 5, "trap": true}},
        {"type": "N", "data": {"n": 6}},
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stop_policy_faults_at_the_first_failing_event() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("poison", artifacts::POISON).await;
    client.wait_caught_up("poison").await;
    let ready = client.get("/ready").await;
    assert_eq!(
        (ready.status, ready.body["ready"].clone()),
        (200, json!(true))
    );
    client.append("p-1", poison_history()).await;
    let status = client
        .wait_until("poison", "a fault", |s| s["state"] == "faulted")
        .await;
    assert_eq!(status["on_error"], "stop");
    // Readiness reports the faulted projector.
    let ready = client.get("/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["unready"][0]["name"], "poison");
    assert_eq!(ready.body["unready"][0]["reason"], "faulted");
    assert_eq!(ready.body["unready"][0]["error"]["position"], 3);
    let metrics = client.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "prism_projector_faults_total{projector=\"poison\"} 1"),
        "{metrics}"
    );
    assert_eq!(status["checkpoint"], 2);
    assert_eq!(status["error"]["position"], 3);
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("poisoned event 3")
    );
    // Events 1 and 2 are in the view; the failing event's partial write is not.
    assert_eq!(client.view("poison", "sum").await, json!(3));
    assert_eq!(client.view("poison", "count").await, json!(2));
    server.stop().await;

    // The fault and its checkpoint survive a restart; it stays faulted on the same event.
    let (server, client) = common::start(dir.path()).await;
    let status = client
        .wait_until("poison", "the fault again", |s| s["state"] == "faulted")
        .await;
    assert_eq!(
        (
            status["checkpoint"].clone(),
            status["error"]["position"].clone()
        ),
        (json!(2), json!(3))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_skip_policy_dead_letters_failing_events_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let deployed = client
        .deploy_with("poison", artifacts::POISON, "on_error=skip")
        .await;
    client.append("p-1", poison_history()).await;
    let status = client.wait_caught_up("poison").await;
    assert_eq!(status["on_error"], "skip");
    assert_eq!(status["checkpoint"], 6);
    assert_eq!(status["dead_letters_this_run"], 2);
    // Only the good events count; the failing events' partial writes were discarded.
    assert_eq!(client.view("poison", "count").await, json!(4));
    assert_eq!(client.view("poison", "sum").await, json!(1 + 2 + 4 + 6));

    let letters = client.get("/projectors/poison/dead-letters").await.body["dead_letters"].clone();
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["position"], 3);
    assert_eq!(letters[0]["stream"], "p-1");
    assert_eq!(letters[0]["event_type"], "N");
    assert_eq!(letters[0]["module"], deployed["module"]);
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("poisoned event 3")
    );
    assert_eq!(letters[1]["position"], 5);
    assert!(letters[1]["error"].as_str().unwrap().contains("trapped"));

    // What the module logged on the way, tagged with its module, readable over HTTP.
    let logs = client.get("/projectors/poison/logs").await.body["lines"].clone();
    let warning = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["message"] == "refusing poisoned event 3")
        .unwrap_or_else(|| panic!("no warning in {logs}"));
    assert_eq!(
        (&warning["level"], &warning["module"]),
        (&json!("warn"), &deployed["module"])
    );
    let newest = client.get("/projectors/poison/logs?limit=1").await.body["lines"].clone();
    let seq = newest[0]["seq"].as_u64().unwrap();
    assert_eq!(
        client
            .get(&format!("/projectors/poison/logs?after={seq}"))
            .await
            .body,
        json!({"lines": []})
    );
    assert_eq!(
        client.get("/projectors/poison/logs?limit=0").await.status,
        400
    );
    assert_eq!(client.get("/projectors/nope/logs").await.status, 404);
    let metrics = client.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "prism_projector_skipped_events_total{projector=\"poison\"} 2"),
        "{metrics}"
    );

    // Paging, and discarding.
    let after = client
        .get("/projectors/poison/dead-letters?after=3")
        .await
        .body;
    assert_eq!(after["dead_letters"].as_array().unwrap().len(), 1);
    let discard = client.delete("/projectors/poison/dead-letters/3").await;
    assert_eq!(discard.status, 200);
    let again = client.delete("/projectors/poison/dead-letters/3").await;
    assert_eq!(again.status, 404);
    let left = client.get("/projectors/poison/dead-letters").await.body["dead_letters"].clone();
    assert_eq!(left.as_array().unwrap().len(), 1);

    // Dead letters and the checkpoint survive a restart together.
    server.stop().await;
    let (server, client) = common::start(dir.path()).await;
    client
        .append("p-1", json!([{"type": "N", "data": {"n": 10}}]))
        .await;
    client.wait_caught_up("poison").await;
    assert_eq!(client.view("poison", "sum").await, json!(23));
    let left = client.get("/projectors/poison/dead-letters").await.body["dead_letters"].clone();
    assert_eq!(left.as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_retried_after_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy_with("poison", artifacts::POISON, "on_error=skip")
        .await;
    client.append("p-1", poison_history()).await;
    client.wait_caught_up("poison").await;
    assert_eq!(client.view("poison", "sum").await, json!(13));

    // Retrying with the same code fails again: the dead letter stays.
    let again = client
        .post_raw("/projectors/poison/dead-letters/3/retry", "")
        .await;
    assert_eq!(again.status, 422, "{}", again.body);
    assert!(
        again.body["error"]
            .as_str()
            .unwrap()
            .contains("poisoned event 3")
    );
    let unknown = client
        .post_raw("/projectors/poison/dead-letters/4/retry", "")
        .await;
    assert_eq!(unknown.status, 404);

    // Deploy the fix (same schema: continue), then retry both.
    let fixed = client.deploy("poison", artifacts::POISON_FIXED).await;
    assert_eq!(fixed["mode"], "continue");
    for position in [3, 5] {
        let retried = client
            .post_raw(
                &format!("/projectors/poison/dead-letters/{position}/retry"),
                "",
            )
            .await;
        assert_eq!(retried.status, 200, "{}", retried.body);
    }
    assert_eq!(client.view("poison", "sum").await, json!(21));
    assert_eq!(client.view("poison", "count").await, json!(6));
    let left = client.get("/projectors/poison/dead-letters").await.body;
    assert_eq!(left["dead_letters"], json!([]));
    // The checkpoint did not move, and new events still flow.
    client
        .append("p-1", json!([{"type": "N", "data": {"n": 100}}]))
        .await;
    client.wait_caught_up("poison").await;
    assert_eq!(client.view("poison", "sum").await, json!(121));
    server.stop().await;
}

/// Code on trial (a continue-mode reload) whose first batch breaks a write limit fails its
/// trial — the batch is not split under it — and the proven code applies the batch.
#[tokio::test(flavor = "multi_thread")]
async fn a_trial_that_breaks_a_write_limit_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let v1 = common::module_of(&client.deploy("tally", artifacts::TALLY_V1).await);
    client.wait_caught_up("tally").await;
    // `hostile` declares view schema 1 too: deployed over tally, it goes on trial.
    let deployed = client.deploy("tally", artifacts::HOSTILE).await;
    assert_eq!(deployed["mode"], "continue");
    client
        .append(
            "s",
            json!([{"type": "Fine", "data": {}}, {"type": "PutFlood", "data": {}}]),
        )
        .await;
    let status = client
        .wait_until("tally", "the trial's end", |s| {
            !s["reload_error"].is_null() && s["checkpoint"] == 2
        })
        .await;
    assert_eq!(status["module"], v1.as_str(), "{status}");
    let why = status["reload_error"].to_string();
    assert!(why.contains("max_batch_write_bytes"), "{status}");
    assert_eq!(client.view("tally", "applied").await, json!(2));
    server.stop().await;
}
