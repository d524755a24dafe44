//! End to end over a real socket: deploy the three examples, append a history over HTTP,
//! query the views, and check the status, headers, scans and stream reads.

mod common;

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn append_project_and_query_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;

    // Deploy before and after appending: one projector catches up, the others follow live.
    client
        .deploy("event-counter", common::artifacts::EVENT_COUNTER)
        .await;
    let head = common::append_history(&client).await;
    assert_eq!(head, 15);
    for (name, wasm) in &common::examples()[1..] {
        let deployed = client.deploy(name, wasm).await;
        assert_eq!(deployed["mode"], "created");
        assert_eq!(deployed["module"].as_str().unwrap().len(), 64);
    }
    for (name, _) in common::examples() {
        let status = client.wait_caught_up(name).await;
        assert_eq!(status["checkpoint"], 15);
        assert_eq!(status["head"], 15);
    }
    for (projector, key, value) in common::expected_views() {
        assert_eq!(
            client.view(projector, key).await,
            value,
            "{projector}/{key}"
        );
    }

    // Live: a new append reaches every view.
    client
        .append("order-o4", json!([{"type": "OrderPlaced", "data": {"order_id": "o4", "customer": "c2", "total_cents": 300}}]))
        .await;
    client.wait_caught_up("order-totals").await;
    client.wait_caught_up("event-counter").await;
    assert_eq!(
        client.view("order-totals", "customer/c2").await,
        json!({"orders": 2, "total_cents": 1000, "cancelled": 0})
    );
    assert_eq!(client.view("event-counter", "total").await, json!(16));

    // Answers say which module and which checkpoint they come from.
    let reply = client
        .get("/projectors/order-totals/view/customer/c2")
        .await;
    assert_eq!(reply.headers["prism-checkpoint"], "16");
    let listed = client.get("/projectors").await.body;
    let module = listed["projectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "order-totals")
        .unwrap()["module"]
        .clone();
    assert_eq!(reply.headers["prism-module"], module.as_str().unwrap());
    assert_eq!(listed["head"], 16);
    assert_eq!(listed["projectors"].as_array().unwrap().len(), 3);

    // Prometheus metrics agree with the status API.
    let text = client.metrics().await;
    for line in [
        "prism_log_head 16",
        "prism_log_appended_events_total 16",
        "prism_projector_checkpoint{projector=\"order-totals\"} 16",
        "prism_projector_lag{projector=\"order-totals\"} 0",
        "prism_projector_state{projector=\"event-counter\",state=\"live\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        text.lines().any(|l| l.starts_with(
            "prism_http_requests_total{method=\"GET\",route=\"/projectors/{name}/view/{*key}\",status=\"200\"}"
        )),
        "{text}"
    );
    // What the runner accumulated: every commit timed, each non-empty batch's apply timed.
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{projector=\"order-totals\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
            .parse()
            .unwrap()
    };
    let batches = value("prism_projector_batches_total");
    assert!(batches >= 1.0);
    assert_eq!(value("prism_projector_commit_seconds_count"), batches);
    assert!((1.0..=batches).contains(&value("prism_projector_apply_seconds_count")));
    assert!(value("prism_projector_apply_seconds_sum") > 0.0);
    assert_eq!(value("prism_projector_faults_total"), 0.0);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scans_page_through_a_prefix_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy("event-counter", common::artifacts::EVENT_COUNTER)
        .await;
    common::append_history(&client).await;
    client.wait_caught_up("event-counter").await;

    let page = client
        .get("/projectors/event-counter/view?prefix=type/&limit=4")
        .await
        .body;
    let keys: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].clone())
        .collect();
    assert_eq!(
        keys,
        [
            "type/AccountOpened",
            "type/Deposited",
            "type/OrderCancelled",
            "type/OrderPlaced"
        ]
    );
    assert_eq!(page["next"], "type/OrderPlaced");
    let rest = client
        .get("/projectors/event-counter/view?prefix=type/&limit=4&after=type/OrderPlaced")
        .await
        .body;
    assert_eq!(
        rest,
        json!({"items": [{"key": "type/TransferMade", "value": 2}, {"key": "type/Withdrawn", "value": 2}], "next": null})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_read_back_with_positions_versions_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    common::append_history(&client).await;

    let stream = client.get("/streams/order-o2").await;
    assert_eq!(stream.status, 200);
    let events = stream.body["events"].as_array().unwrap();
    assert_eq!(stream.body["version"], 3);
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["position"].as_u64().unwrap(),
                e["stream_version"].as_u64().unwrap(),
                e["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (3, 1, "OrderPlaced"),
            (9, 2, "OrderCancelled"),
            (10, 3, "OrderCancelled")
        ]
    );
    assert_eq!(events[0]["metadata"], json!({"user": "u7"}));
    assert_eq!(events[1]["metadata"], json!({}));
    assert_eq!(events[0]["data"]["total_cents"], 2500);
    assert!(events[0]["timestamp"].as_str().unwrap().ends_with('Z'));

    let page = client.get("/streams/order-o2?from=2&limit=1").await.body;
    assert_eq!(page["events"][0]["position"], 9);
    assert_eq!(page["next"], 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_your_writes_waits_for_min_position() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy("counter", common::artifacts::EVENT_COUNTER)
        .await;
    client.post_raw("/projectors/counter/pause", "").await;
    let appended = client
        .append("s-1", json!([{"type": "T", "data": {}}]))
        .await;
    let position = appended["last_position"].as_u64().unwrap();

    // Paused: the view cannot reach the position in time, and says where it is.
    let timed_out = client
        .get(&format!(
            "/projectors/counter/view/total?min_position={position}&timeout_ms=100"
        ))
        .await;
    assert_eq!(timed_out.status, 504, "{}", timed_out.body);
    assert_eq!(timed_out.body["checkpoint"], 0);
    assert_eq!(timed_out.body["min_position"], position);

    // A query waiting for the position is answered as soon as the projector gets there.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .get(&format!(
                    "/projectors/counter/view/total?min_position={position}"
                ))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    client.post_raw("/projectors/counter/resume", "").await;
    let answered = waiting.await.unwrap();
    assert_eq!(answered.status, 200);
    assert_eq!(answered.body, json!(1));
    let checkpoint: u64 = answered.headers["prism-checkpoint"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(checkpoint >= position);

    // Scans take it too; a bad timeout is a 400.
    let scan = client
        .get(&format!(
            "/projectors/counter/view?prefix=type/&min_position={position}"
        ))
        .await;
    assert_eq!(scan.body["items"][0]["key"], "type/T");
    let bad = client
        .get("/projectors/counter/view/total?min_position=1&timeout_ms=999999")
        .await;
    assert_eq!(bad.status, 400);
    server.stop().await;
}
