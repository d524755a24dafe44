//! Restart: every projector resumes exactly from its checkpoint — no event applied twice,
//! none skipped — so its view equals a from-scratch replay of the same log.

mod common;

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_every_projector_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();

    let (server, client) = common::start(dir.path()).await;
    common::examples_over_history(&client).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn verify_compares_the_live_view_with_a_replay_and_names_differences() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy("orders", common::artifacts::ORDER_TOTALS)
        .await;
    common::append_history(&client).await;
    client.wait_caught_up("orders").await;
    let report = client.post_raw("/projectors/orders/verify", "").await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert_eq!(report.body["identical"], true, "{}", report.body);
    assert_eq!(report.body["checkpoint"], 15);
    assert_eq!(report.body["live"], report.body["replay"]);
    assert_eq!(report.body["live"]["entries"], 6);
    server.stop().await;

    // Tamper with the view behind Prism's back: verify names the key.
    let view = dir.path().join("projectors/orders/gen-1.redb");
    {
        let store = prism::store::ViewStore::open(&view).unwrap();
        let checkpoint = store.checkpoint().unwrap();
        let tampered = [("customer/c2".to_string(), Some(b"{\"orders\":99}".to_vec()))];
        store
            .commit(&tampered.into_iter().collect(), checkpoint, true, None)
            .unwrap();
    }
    let (server, client) = common::start(dir.path()).await;
    let report = client.post_raw("/projectors/orders/verify", "").await.body;
    assert_eq!(report["identical"], false);
    assert_eq!(report["differences"][0]["key"], "customer/c2");
    assert_eq!(report["differences"][0]["live"], "{\"orders\":99}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(
            report["differences"][0]["replay"].as_str().unwrap()
        )
        .unwrap(),
        json!({"orders": 1, "total_cents": 700, "cancelled": 0})
    );
    server.stop().await;
}

/// Damages a file: flips the bytes of its header, flips one byte inside a data page (where
/// `needle`, data the file is known to hold, is stored), or truncates it.
fn damage(path: &std::path::Path, how: &str, needle: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "bit-flip" => bytes[..64].iter_mut().for_each(|b| *b ^= 0x5A),
        "data-page-flip" => {
            let at = bytes
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap_or_else(|| panic!("{needle:?} is not in {}", path.display()));
            // Far from the header: the fault lands in a data page.
            assert!(at > 4096, "{needle:?} found at {at}, in the header");
            bytes[at] ^= 0x01;
        }
        "truncate" => bytes.truncate(bytes.len() / 3),
        _ => unreachable!(),
    }
    std::fs::write(path, bytes).unwrap();
}

const DAMAGES: [&str; 3] = ["bit-flip", "data-page-flip", "truncate"];

async fn start_error(dir: &std::path::Path) -> String {
    let config = prism::server::ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap());
    match prism::server::Server::start(config).await {
        Ok(server) => {
            server.stop().await;
            panic!("Prism started on a damaged data dir")
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_log_refuses_to_start_with_a_clear_message() {
    for how in DAMAGES {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = common::start(dir.path()).await;
        common::append_history(&client).await;
        server.stop().await;
        let log = dir.path().join("log.redb");
        // An event type of the history.
        damage(&log, how, "Deposited");
        let message = start_error(dir.path()).await;
        assert!(
            message.contains(&log.display().to_string()),
            "{how}: {message}"
        );
        assert!(
            message.contains("restore it from a backup"),
            "{how}: {message}"
        );
        // `repair` cannot fix a log, and says so.
        let repair = prism::server::repair(dir.path()).unwrap_err().to_string();
        assert!(repair.contains("log.redb"), "{repair}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_view_is_named_and_repair_rebuilds_it_from_the_log() {
    for how in DAMAGES {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = common::start(dir.path()).await;
        common::examples_over_history(&client).await;
        server.stop().await;

        let view = dir.path().join("projectors/account-balances/gen-1.redb");
        damage(&view, how, "account/a");
        let message = start_error(dir.path()).await;
        assert!(
            message.contains(&view.display().to_string()),
            "{how}: {message}"
        );
        assert!(message.contains("prism repair"), "{how}: {message}");

        let repairs = prism::server::repair(dir.path()).unwrap();
        assert_eq!(repairs.len(), 1, "{repairs:?}");
        let (server, client) = common::start(dir.path()).await;
        for (name, _) in common::examples() {
            client.wait_caught_up(name).await;
            assert_eq!(
                client.whole_view(name).await,
                common::expected_view(name),
                "{how}: {name}"
            );
        }
        server.stop().await;
    }
}

/// A damaged catalog (which projectors run which code) refuses to start, naming the file and
/// what to do; never a panic.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_catalog_refuses_to_start_with_a_clear_message() {
    for how in DAMAGES {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = common::start(dir.path()).await;
        common::examples_over_history(&client).await;
        server.stop().await;
        let catalog = dir.path().join("catalog.redb");
        damage(&catalog, how, "account-balances");
        let message = start_error(dir.path()).await;
        assert!(
            message.contains(&catalog.display().to_string()),
            "{how}: {message}"
        );
        assert!(
            message.contains("restore it from a backup"),
            "{how}: {message}"
        );
    }
}
