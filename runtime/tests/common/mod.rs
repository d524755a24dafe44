//! Shared by the integration tests: a real Prism on a real socket, a client, and a known
//! event history with the exact views the example projectors must derive from it.
#![allow(dead_code)]

pub mod appends;
pub mod certs;
pub mod cluster;
pub mod model;
pub mod nats;
pub mod observe;
pub mod process;
pub mod proxy;
pub mod writers;

use prism::server::{Server, ServerConfig};
use prism_client::wire::{DeployParams, NewEvent, ScanParams};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

pub use prism_test_artifacts as artifacts;

/// Starts Prism on `127.0.0.1:0` over `data_dir`.
pub async fn start(data_dir: &Path) -> (Server, Client) {
    start_with(data_dir, |_| {}).await
}

/// Starts Prism on `127.0.0.1:0` over `data_dir`, with `configure` applied to its config.
pub async fn start_with(
    data_dir: &Path,
    configure: impl FnOnce(&mut ServerConfig),
) -> (Server, Client) {
    let mut config = ServerConfig::new(data_dir, "127.0.0.1:0".parse().unwrap());
    configure(&mut config);
    let server = Server::start(config).await.expect("prism starts");
    let client = Client::new(&format!("http://{}", server.addr()));
    (server, client)
}

/// The tests' helpers over Prism's typed client ([`prism_client::Client`], in `api`): typed
/// calls for the usual steps, answers as JSON values for the assertions, and raw requests for
/// probing statuses.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub api: prism_client::Client,
}

/// A reply: status and JSON body (Null when the body is not JSON).
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

fn json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap()
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_string(),
            api: prism_client::Client::new(base).unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// A request to build and send by hand.
    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        self.api.request(method.parse().unwrap(), path)
    }

    /// `GET /metrics`, which must answer 200 with Prometheus text.
    pub async fn metrics(&self) -> String {
        self.api.metrics().await.unwrap()
    }

    /// The value of the metric `family` (e.g. `prism_projector_batches_total`) for
    /// `projector` (0 when absent).
    pub async fn projector_metric(&self, family: &str, projector: &str) -> u64 {
        let metrics = self.metrics().await;
        let prefix = format!("{family}{{projector=\"{projector}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    /// Sends `request`, whatever the answer's status.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let reply = self.api.send(request).await.unwrap();
        Reply {
            status: reply.status.as_u16(),
            body: reply.json(),
            headers: reply.headers,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request("GET", path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request("DELETE", path)).await
    }

    /// A `POST` of `body` as `application/json`, whatever the answer.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let request = self
            .request("POST", path)
            .header("content-type", "application/json");
        self.send(request.body(body)).await
    }

    /// A `PUT` of `body` as `application/wasm`, whatever the answer.
    pub async fn put_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let request = self
            .request("PUT", path)
            .header("content-type", "application/wasm");
        self.send(request.body(body)).await
    }

    /// Appends `events` (JSON array) to `stream`; panics unless it is acknowledged.
    pub async fn append(&self, stream: &str, events: Value) -> Value {
        let events: Vec<NewEvent> = serde_json::from_value(events).unwrap();
        match self.api.append(stream, &events, None).await {
            Ok(appended) => json(appended),
            Err(e) => panic!("append to {stream}: {e}"),
        }
    }

    /// Deploys a `.wasm` file; panics unless it is accepted.
    pub async fn deploy(&self, name: &str, wasm_path: &str) -> Value {
        self.deploy_with(name, wasm_path, "").await
    }

    /// Deploys a `.wasm` file with query parameters written as a query string (e.g.
    /// `mode=rebuild&on_error=skip`); panics unless it is accepted.
    pub async fn deploy_with(&self, name: &str, wasm_path: &str, query: &str) -> Value {
        let params: serde_json::Map<String, Value> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap();
                (key.to_string(), Value::String(value.to_string()))
            })
            .collect();
        let params: DeployParams = serde_json::from_value(Value::Object(params)).unwrap();
        match self
            .api
            .deploy(name, artifacts::read(wasm_path), &params)
            .await
        {
            Ok(deployed) => json(deployed),
            Err(e) => panic!("deploy {name}: {e}"),
        }
    }

    /// A projector's status.
    pub async fn status(&self, name: &str) -> Value {
        match self.api.projector(name).await {
            Ok(status) => json(status),
            Err(e) => panic!("status of {name}: {e}"),
        }
    }

    /// Waits until `check` accepts projector `name`'s status; returns that status.
    pub async fn wait_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status(name).await;
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: timed out waiting for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until projector `name` has applied the whole log; returns its status.
    pub async fn wait_caught_up(&self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status(name).await;
            assert_ne!(status["state"], "faulted", "{name} faulted: {status}");
            if status["lag"] == 0 && status["state"] == "live" {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not catch up: {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value under `key` in `name`'s view (Null when missing).
    pub async fn view(&self, name: &str, key: &str) -> Value {
        match self.api.view_value(name, key, &Default::default()).await {
            Ok(value) => value.and_then(|v| v.json).unwrap_or(Value::Null),
            Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => Value::Null,
            Err(e) => panic!("view {name}/{key}: {e}"),
        }
    }

    /// The whole view of `name`, paging through scans: key → value.
    pub async fn whole_view(&self, name: &str) -> serde_json::Map<String, Value> {
        self.whole_view_paged(name, 7).await
    }

    /// The whole view of `name`, in pages of `page` entries.
    pub async fn whole_view_paged(
        &self,
        name: &str,
        page: usize,
    ) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        let mut params = ScanParams {
            limit: Some(page),
            ..ScanParams::default()
        };
        loop {
            let scan = self
                .api
                .scan(name, &params)
                .await
                .unwrap_or_else(|e| panic!("scan {name}: {e}"));
            for item in scan.items {
                let item = json(item);
                out.insert(item["key"].as_str().unwrap().into(), item["value"].clone());
            }
            match scan.next {
                Some(next) => params.after = Some(next),
                None => return out,
            }
        }
    }
}

/// Appends `n` events of type `event_type` to `stream`, `per_append` at a time; returns the
/// last position.
pub async fn append_many(
    client: &Client,
    stream: &str,
    event_type: &str,
    n: usize,
    per_append: usize,
) -> u64 {
    let mut last = 0;
    let mut left = n;
    while left > 0 {
        let batch: Vec<Value> = (0..per_append.min(left))
            .map(|i| json!({"type": event_type, "data": {"i": i}}))
            .collect();
        left -= batch.len();
        last = client.append(stream, Value::Array(batch)).await["last_position"]
            .as_u64()
            .unwrap();
    }
    last
}

/// The module hash a deploy answered.
pub fn module_of(deployed: &Value) -> String {
    deployed["module"].as_str().unwrap().to_string()
}

/// The example projectors, by deployment name and artifact.
pub fn examples() -> [(&'static str, &'static str); 3] {
    [
        ("event-counter", artifacts::EVENT_COUNTER),
        ("order-totals", artifacts::ORDER_TOTALS),
        ("account-balances", artifacts::ACCOUNT_BALANCES),
    ]
}

/// A history of orders and accounts that exercises every rule of the examples:
/// (stream, events).
pub fn history() -> Vec<(&'static str, Value)> {
    vec![
        (
            "order-o1",
            json!([{"type": "OrderPlaced", "data": {"order_id": "o1", "customer": "c1", "total_cents": 1000}}]),
        ),
        (
            "account-a1",
            json!([{"type": "AccountOpened", "data": {"account": "a1", "owner": "Ada"}}]),
        ),
        (
            "order-o2",
            json!([
                {"type": "OrderPlaced", "data": {"order_id": "o2", "customer": "c1", "total_cents": 2500}, "metadata": {"user": "u7"}},
            ]),
        ),
        (
            "account-a2",
            json!([{"type": "AccountOpened", "data": {"account": "a2", "owner": "Bob"}}]),
        ),
        (
            "order-o3",
            json!([{"type": "OrderPlaced", "data": {"order_id": "o3", "customer": "c2", "total_cents": 700}}]),
        ),
        (
            "account-a1",
            json!([
                {"type": "Deposited", "data": {"account": "a1", "amount": 1000}},
                {"type": "Withdrawn", "data": {"account": "a1", "amount": 300}},
                {"type": "TransferMade", "data": {"from": "a1", "to": "a2", "amount": 200}},
            ]),
        ),
        // Cancelled twice: the second must not change the totals.
        (
            "order-o2",
            json!([
                {"type": "OrderCancelled", "data": {"order_id": "o2"}},
                {"type": "OrderCancelled", "data": {"order_id": "o2"}},
            ]),
        ),
        // Overdrafts are rejected and counted.
        (
            "account-a2",
            json!([{"type": "Withdrawn", "data": {"account": "a2", "amount": 500}}]),
        ),
        (
            "account-a1",
            json!([{"type": "TransferMade", "data": {"from": "a1", "to": "a2", "amount": 600}}]),
        ),
        // Never placed; placed twice; an unknown account.
        (
            "order-o9",
            json!([{"type": "OrderCancelled", "data": {"order_id": "o9"}}]),
        ),
        (
            "order-o1",
            json!([{"type": "OrderPlaced", "data": {"order_id": "o1", "customer": "c1", "total_cents": 1000}}]),
        ),
        (
            "account-a3",
            json!([{"type": "Deposited", "data": {"account": "a3", "amount": 50}}]),
        ),
    ]
}

/// Deploys the three examples, appends [`history`], and waits until all have applied it.
pub async fn examples_over_history(client: &Client) {
    for (name, wasm) in examples() {
        client.deploy(name, wasm).await;
    }
    append_history(client).await;
    for (name, _) in examples() {
        client.wait_caught_up(name).await;
    }
}

/// Appends [`history`]; returns the log head after it.
pub async fn append_history(client: &Client) -> u64 {
    let mut last = 0;
    for (stream, events) in history() {
        last = client.append(stream, events).await["last_position"]
            .as_u64()
            .unwrap();
    }
    last
}

/// The exact, whole views the examples derive from [`history`]: (projector, key, value).
pub fn expected_views() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("event-counter", "total", json!(15)),
        ("event-counter", "type/OrderPlaced", json!(4)),
        ("event-counter", "type/OrderCancelled", json!(3)),
        ("event-counter", "type/AccountOpened", json!(2)),
        ("event-counter", "type/Deposited", json!(2)),
        ("event-counter", "type/Withdrawn", json!(2)),
        ("event-counter", "type/TransferMade", json!(2)),
        ("event-counter", "category/order", json!(7)),
        ("event-counter", "category/account", json!(8)),
        (
            "order-totals",
            "customer/c1",
            json!({"orders": 1, "total_cents": 1000, "cancelled": 1}),
        ),
        (
            "order-totals",
            "customer/c2",
            json!({"orders": 1, "total_cents": 700, "cancelled": 0}),
        ),
        (
            "order-totals",
            "order/o1",
            json!({"customer": "c1", "total_cents": 1000, "cancelled": false}),
        ),
        (
            "order-totals",
            "order/o2",
            json!({"customer": "c1", "total_cents": 2500, "cancelled": true}),
        ),
        (
            "order-totals",
            "order/o3",
            json!({"customer": "c2", "total_cents": 700, "cancelled": false}),
        ),
        ("order-totals", "stats", json!({"ignored": 3})),
        (
            "account-balances",
            "account/a1",
            json!({"owner": "Ada", "balance": 500, "rejected_overdrafts": 1}),
        ),
        (
            "account-balances",
            "account/a2",
            json!({"owner": "Bob", "balance": 200, "rejected_overdrafts": 1}),
        ),
        (
            "account-balances",
            "stats",
            json!({"rejected_overdrafts": 2, "ignored": 1}),
        ),
    ]
}

/// The whole expected view of one example projector.
pub fn expected_view(projector: &str) -> serde_json::Map<String, Value> {
    expected_views()
        .into_iter()
        .filter(|(p, _, _)| *p == projector)
        .map(|(_, k, v)| (k.to_string(), v))
        .collect()
}

/// The high-water mark of this process's resident memory (Prism runs in it), in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
