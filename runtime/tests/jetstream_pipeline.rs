//! Prism on NATS JetStream end to end: a real nats-server as the event log, the three examples
//! deployed, a history appended over HTTP, every view equal to the hand-computed one; then a
//! restart on the same data dir and log resumes from the checkpoints (a replay from zero into
//! the kept views would double every count) and follows new appends.

mod common;

use common::nats::NatsServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn prism_projects_a_jetstream_log_and_resumes_after_a_restart() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let configure = |config: &mut prism::server::ServerConfig| {
        config.event_log = Some(url.clone());
    };
    let (server, client) = common::start_with(dir.path(), configure).await;
    for (name, wasm) in common::examples() {
        client.deploy(name, wasm).await;
    }
    assert_eq!(common::append_history(&client).await, 15);
    for (name, _) in common::examples() {
        assert_eq!(client.wait_caught_up(name).await["checkpoint"], 15);
    }
    for (projector, key, value) in common::expected_views() {
        assert_eq!(
            client.view(projector, key).await,
            value,
            "{projector}/{key}"
        );
    }
    // Nothing of the log is in the data dir: the events are in JetStream only.
    assert!(!dir.path().join("log.redb").exists());
    server.stop().await;

    let (server, client) = common::start_with(dir.path(), configure).await;
    for (name, _) in common::examples() {
        assert_eq!(client.wait_caught_up(name).await["checkpoint"], 15);
    }
    assert_eq!(client.view("event-counter", "total").await, json!(15));
    client
        .append(
            "order-o4",
            json!([{"type": "OrderPlaced", "data": {"order_id": "o4", "customer": "c2", "total_cents": 300}}]),
        )
        .await;
    client.wait_caught_up("order-totals").await;
    client.wait_caught_up("event-counter").await;
    assert_eq!(client.view("event-counter", "total").await, json!(16));
    assert_eq!(
        client.view("order-totals", "customer/c2").await,
        json!({"orders": 2, "total_cents": 1000, "cancelled": 0})
    );
    server.stop().await;

    // The data dir's checkpoints are positions in this stream: a start on the embedded log,
    // or on the stream deleted and created again, is refused.
    let refused = |config| async move {
        match prism::server::Server::start(config).await {
            Ok(_) => panic!("Prism started on another log than its data dir follows"),
            Err(e) => format!("{e:#}"),
        }
    };
    let embedded = prism::server::ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let error = refused(embedded).await;
    assert!(
        error.contains("follows the JetStream stream PRISM_EVENTS created at"),
        "{error}"
    );
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    js.delete_stream("PRISM_EVENTS").await.unwrap();
    let mut again = prism::server::ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    again.event_log = Some(url.clone());
    let error = refused(again).await;
    assert!(
        error.contains("follows the JetStream stream PRISM_EVENTS created at")
            && error.contains("not the JetStream stream PRISM_EVENTS created at"),
        "{error}"
    );
}
