//! A real Prism server on loopback and Prism's typed client for it, for the end-to-end
//! harnesses.

use prism::server::{Server, ServerConfig};
use prism_client::Client;
use prism_client::wire::{DeployParams, Deployed, NewEvent, Projector};
use std::time::Duration;

/// A deploy that keeps every default.
pub const DEFAULTS: DeployParams = DeployParams {
    module: None,
    config: None,
    mode: None,
    on_error: None,
};

/// A running Prism and a client for its API.
pub struct Prism {
    pub server: Server,
    pub api: Client,
}

impl Prism {
    /// Starts Prism on `127.0.0.1:0` over `dir`, with the defaults (the catch-up cache's
    /// budget from `PRISM_BENCH_VIEW_CACHE_BYTES` when set).
    pub async fn start(dir: &std::path::Path) -> Prism {
        let mut config = ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap());
        // `PRISM_BENCH_VIEW_CACHE_BYTES=0` turns the catch-up cache off (every batch commits),
        // to measure what it does to a figure in the same sitting.
        if let Some(bytes) = std::env::var("PRISM_BENCH_VIEW_CACHE_BYTES")
            .ok()
            .and_then(|b| b.parse().ok())
        {
            config.view_cache_bytes = bytes;
        }
        let server = Server::start(config).await.unwrap();
        let api = Client::new(&format!("http://{}", server.addr())).unwrap();
        Prism { server, api }
    }

    /// Deploys `wasm` as `name` with `params`; the reply.
    pub async fn deploy(&self, name: &str, wasm: &[u8], params: &DeployParams) -> Deployed {
        self.api.deploy(name, wasm.to_vec(), params).await.unwrap()
    }

    /// A projector's status.
    pub async fn status(&self, name: &str) -> Projector {
        self.api.projector(name).await.unwrap()
    }

    /// Polls a projector's status until `check` accepts it.
    pub async fn wait(&self, name: &str, check: impl Fn(&Projector) -> bool) {
        while !check(&self.status(name).await) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Whether exactly `count` projectors are deployed and all are live with no lag.
    pub async fn all_live(&self, count: usize) -> bool {
        let Ok(list) = self.api.projectors().await else {
            return false;
        };
        list.projectors.len() == count
            && list
                .projectors
                .iter()
                .all(|p| p.state == prism_client::wire::State::Live && p.lag == 0)
    }

    /// Appends `n` small events to stream `s`, 1000 per request.
    pub async fn append(&self, n: usize) {
        let mut left = n;
        while left > 0 {
            let batch: Vec<NewEvent> = (0..left.min(1000))
                .map(|i| NewEvent::new("A", &serde_json::json!({"i": i})).unwrap())
                .collect();
            left -= batch.len();
            self.api.append("s", &batch, None).await.unwrap();
        }
    }
}
