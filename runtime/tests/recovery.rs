//! Restart: every projector resumes exactly from its checkpoint — no event applied twice,
//! none skipped — so its view equals a from-scratch replay of the same log.

mod common;

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_every_projector_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();

    let (server, client) = common::start(dir.path()).await;
    for (name, wasm) in common::examples() {
        client.deploy(name, wasm).await;
    }
    common::append_history(&client).await;
    for (name, _) in common::examples() {
        client.wait_caught_up(name).await;
    }
    server.stop().await;

    // Same data dir: the projectors come back by themselves, at their checkpoints.
    let (server, client) = common::start(dir.path()).await;
    for (name, _) in common::examples() {
        let status = client.get(&format!("/projectors/{name}")).await.body;
        assert!(status["checkpoint"].as_u64().unwrap() == 15, "{status}");
    }
    // More events after the restart: some new, some repeating the history's edge cases.
    client
        .append("order-o5", json!([{"type": "OrderPlaced", "data": {"order_id": "o5", "customer": "c3", "total_cents": 90}}]))
        .await;
    client
        .append(
            "order-o5",
            json!([{"type": "OrderCancelled", "data": {"order_id": "o5"}}]),
        )
        .await;
    client
        .append(
            "account-a2",
            json!([{"type": "TransferMade", "data": {"from": "a2", "to": "a1", "amount": 150}}]),
        )
        .await;
    for (name, _) in common::examples() {
        client.wait_caught_up(name).await;
    }
    assert_eq!(client.view("event-counter", "total").await, json!(18));
    assert_eq!(
        client.view("account-balances", "account/a1").await,
        json!({"owner": "Ada", "balance": 650, "rejected_overdrafts": 1})
    );

    // A from-scratch replay of the same log (the same modules under new names) must agree.
    for (name, wasm) in common::examples() {
        let replay = format!("{name}-replay");
        client.deploy(&replay, wasm).await;
        client.wait_caught_up(&replay).await;
        assert_eq!(
            client.whole_view(name).await,
            client.whole_view(&replay).await,
            "{name} after restart differs from a replay"
        );
    }
    server.stop().await;

    // And once more, with nothing new: the views do not change.
    let (server, client) = common::start(dir.path()).await;
    for (name, _) in common::examples() {
        client.wait_caught_up(name).await;
        assert_eq!(
            client.whole_view(name).await,
            client.whole_view(&format!("{name}-replay")).await
        );
    }
    server.stop().await;
}
