//! Appends that can be retried safely, over a real socket: an `Idempotency-Key` or event ids
//! make a retried append answer the first one's result and append nothing — also under
//! concurrent retries and across a restart — until the idempotency window has passed.

mod common;

use serde_json::{Value, json};

async fn append(
    client: &common::Client,
    stream: &str,
    key: Option<&str>,
    events: Value,
) -> common::Reply {
    let mut request = client
        .request("POST", &format!("/streams/{stream}/events"))
        .header("content-type", "application/json")
        .body(events.to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    client.send(request).await
}

async fn stream_len(client: &common::Client, stream: &str) -> usize {
    let page = client.get(&format!("/streams/{stream}?limit=1000")).await;
    page.body["events"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_append_with_a_key_appends_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let events = json!([{"type": "Paid", "data": {"amount": 5}}, {"type": "Shipped", "data": {}}]);
    let first = append(&client, "order-1", Some("pay-1"), events.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.headers["idempotent-replayed"], "false");
    // The same request again (a client retrying after a timeout), and ten at once.
    let again = append(&client, "order-1", Some("pay-1"), events.clone()).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);
    let retries: Vec<_> = (0..10)
        .map(|_| {
            let (client, events) = (client.clone(), events.clone());
            tokio::spawn(async move { append(&client, "order-1", Some("pay-1"), events).await })
        })
        .collect();
    for retry in retries {
        let reply = retry.await.unwrap();
        assert_eq!((reply.status, &reply.body), (201, &first.body));
    }
    assert_eq!(stream_len(&client, "order-1").await, 2);

    // Ten concurrent first tries under a fresh key (one group commit may take several): one
    // appends, the others answer its result.
    let tries: Vec<_> = (0..10)
        .map(|_| {
            let (client, events) = (client.clone(), events.clone());
            tokio::spawn(async move { append(&client, "order-2", Some("pay-2"), events).await })
        })
        .collect();
    let mut bodies = std::collections::BTreeSet::new();
    let mut fresh = 0;
    for attempt in tries {
        let reply = attempt.await.unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
        fresh += usize::from(reply.headers["idempotent-replayed"] == "false");
        bodies.insert(reply.body.to_string());
    }
    assert_eq!((fresh, bodies.len()), (1, 1), "{bodies:?}");
    assert_eq!(stream_len(&client, "order-2").await, 2);

    // A different append under the same key is refused; nothing is appended.
    let other = append(
        &client,
        "order-1",
        Some("pay-1"),
        json!([{"type": "Paid", "data": {"amount": 6}}]),
    )
    .await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert!(other.body["error"].as_str().unwrap().contains("pay-1"));
    assert_eq!(stream_len(&client, "order-1").await, 2);

    // A key is remembered durably, with the events: across a restart, and whatever the stream's
    // version has become since (the retry is answered, not re-checked).
    append(
        &client,
        "order-1",
        None,
        json!([{"type": "Noted", "data": {}}]),
    )
    .await;
    server.stop().await;
    let (server, client) = common::start(dir.path()).await;
    let after = append(&client, "order-1", Some("pay-1"), events).await;
    assert_eq!((after.status, &after.body), (201, &first.body));
    assert_eq!(after.headers["idempotent-replayed"], "true");
    assert_eq!(stream_len(&client, "order-1").await, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn event_ids_make_a_retry_a_no_op_and_a_partial_repeat_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let events = json!([
        {"type": "A", "data": {}, "id": "evt-1"},
        {"type": "B", "data": {}, "id": "evt-2"},
    ]);
    let first = append(&client, "s", None, events.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = append(&client, "s", None, events).await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // The same ids with other data: not a retry, refused.
    let other = append(
        &client,
        "s",
        None,
        json!([
            {"type": "A", "data": {"changed": true}, "id": "evt-1"},
            {"type": "B", "data": {}, "id": "evt-2"},
        ]),
    )
    .await;
    assert_eq!(other.status, 422, "{}", other.body);
    // One known id with a new one: refused, nothing appended.
    let partial = append(
        &client,
        "s",
        None,
        json!([{"type": "B", "data": {}, "id": "evt-2"}, {"type": "C", "data": {}, "id": "evt-3"}]),
    )
    .await;
    assert_eq!(partial.status, 422, "{}", partial.body);
    assert!(partial.body["error"].as_str().unwrap().contains("evt-2"));
    // The same id twice in one append is a mistake.
    let twice = append(
        &client,
        "s",
        None,
        json!([{"type": "C", "data": {}, "id": "x"}, {"type": "C", "data": {}, "id": "x"}]),
    )
    .await;
    assert_eq!(twice.status, 400, "{}", twice.body);
    assert_eq!(stream_len(&client, "s").await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_forgotten_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(dir.path(), |config| {
        config.idempotency_window = std::time::Duration::from_secs(1);
    })
    .await;
    let events = json!([{"type": "T", "data": {}}]);
    assert_eq!(
        append(&client, "s", Some("k"), events.clone()).await.status,
        201
    );
    let replayed = append(&client, "s", Some("k"), events.clone()).await;
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Past the window the key is new again: this appends.
    let later = append(&client, "s", Some("k"), events).await;
    assert_eq!(later.status, 201);
    assert_eq!(later.headers["idempotent-replayed"], "false");
    assert_eq!(stream_len(&client, "s").await, 2);
    let bad = append(
        &client,
        "s",
        Some(&"k".repeat(300)),
        json!([{"type": "T", "data": {}}]),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    server.stop().await;
}
