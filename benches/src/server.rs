//! A real Prism server on loopback and a small HTTP client for it, for the end-to-end harnesses.

use prism::server::{Server, ServerConfig};
use serde_json::Value;
use std::time::Duration;

/// A running Prism and a client for its API.
pub struct Prism {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
}

impl Prism {
    /// Starts Prism on `127.0.0.1:0` over `dir`.
    pub async fn start(dir: &std::path::Path) -> Prism {
        let server = Server::start(ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let base = format!("http://{}", server.addr());
        Prism {
            server,
            base,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
        }
    }

    /// Deploys `wasm` as `name` (with a query string such as `mode=rebuild`); the reply.
    pub async fn deploy(&self, name: &str, wasm: &[u8], query: &str) -> Value {
        let reply = self
            .http
            .put(format!("{}/projectors/{name}?{query}", self.base))
            .body(wasm.to_vec())
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success());
        reply.json().await.unwrap()
    }

    /// A projector's status.
    pub async fn status(&self, name: &str) -> Value {
        let url = format!("{}/projectors/{name}", self.base);
        let reply = self.http.get(url).send().await.unwrap();
        reply.json().await.unwrap()
    }

    /// Polls a projector's status until `check` accepts it.
    pub async fn wait(&self, name: &str, check: impl Fn(&Value) -> bool) {
        while !check(&self.status(name).await) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Whether exactly `count` projectors are deployed and all are live with no lag.
    pub async fn all_live(&self, count: usize) -> bool {
        let Ok(reply) = self
            .http
            .get(format!("{}/projectors", self.base))
            .send()
            .await
        else {
            return false;
        };
        let body: Value = reply.json().await.unwrap();
        let projectors = body["projectors"].as_array().unwrap();
        projectors.len() == count
            && projectors
                .iter()
                .all(|p| p["state"] == "live" && p["lag"] == 0)
    }

    /// Appends `n` small events to stream `s`, 1000 per request.
    pub async fn append(&self, n: usize) {
        let mut left = n;
        while left > 0 {
            let batch: Vec<Value> = (0..left.min(1000))
                .map(|i| serde_json::json!({"type": "A", "data": {"i": i}}))
                .collect();
            left -= batch.len();
            let url = format!("{}/streams/s/events", self.base);
            let reply = self.http.post(url).json(&batch).send().await.unwrap();
            assert!(reply.status().is_success());
        }
    }
}
