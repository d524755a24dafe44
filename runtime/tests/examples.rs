//! Each example projector, fed a known history through the real runtime (real log, real
//! wasmtime, real HTTP), derives exactly the expected view.

mod common;

async fn derives_exact_view(name: &str, wasm: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy(name, wasm).await;
    common::append_history(&client).await;
    client.wait_caught_up(name).await;
    assert_eq!(client.whole_view(name).await, common::expected_view(name));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn event_counter_counts_per_type_and_category() {
    derives_exact_view("event-counter", common::artifacts::EVENT_COUNTER).await;
}

/// The WIT contract is language-neutral: the same projector written in C, against bindings
/// wit-bindgen generates from the WIT, derives exactly the view of its Rust twin.
#[tokio::test(flavor = "multi_thread")]
async fn event_counter_in_c_derives_the_same_view_as_its_rust_twin() {
    derives_exact_view("event-counter", common::artifacts::EVENT_COUNTER_C).await;
}

/// Side by side over the same history, the C and the Rust event-counter describe themselves
/// alike (name, subscription, schema version) and write byte-identical views: `verify`'s
/// digest is a sha256 over every key and raw value, in key order.
#[tokio::test(flavor = "multi_thread")]
async fn event_counter_in_c_describes_itself_and_writes_bytes_like_its_rust_twin() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy("counter-rust", common::artifacts::EVENT_COUNTER)
        .await;
    client
        .deploy("counter-c", common::artifacts::EVENT_COUNTER_C)
        .await;
    common::append_history(&client).await;
    let rust = client.wait_caught_up("counter-rust").await;
    let c = client.wait_caught_up("counter-c").await;
    for field in ["code_name", "subscription", "schema_version", "checkpoint"] {
        assert_eq!(c[field], rust[field], "{field}: C {c} / Rust {rust}");
    }
    assert_eq!(c["code_name"], "event-counter");
    let digest = |name: &'static str| {
        let client = client.clone();
        async move {
            let report = client
                .post_raw(&format!("/projectors/{name}/verify"), "")
                .await;
            assert_eq!(report.status, 200, "{}", report.body);
            assert_eq!(report.body["identical"], true, "{}", report.body);
            report.body["live"].clone()
        }
    };
    let (rust, c) = (digest("counter-rust").await, digest("counter-c").await);
    assert_eq!(c, rust);
    assert_eq!(c["entries"], 9);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn order_totals_survive_double_and_unknown_cancellations() {
    derives_exact_view("order-totals", common::artifacts::ORDER_TOTALS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn account_balances_reject_overdrafts() {
    derives_exact_view("account-balances", common::artifacts::ACCOUNT_BALANCES).await;
}

/// The core module the compiler writes is accepted too: Prism turns it into a component.
#[tokio::test(flavor = "multi_thread")]
async fn a_core_module_with_its_component_type_is_componentized() {
    derives_exact_view("order-totals", common::artifacts::ORDER_TOTALS_CORE).await;
}
