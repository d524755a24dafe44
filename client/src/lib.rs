//! # prism-client: Prism's HTTP API in Rust
//!
//! [`wire`] holds every body and query string of the API, one declaration each, shared by the
//! server (which serializes them and describes them in `/openapi.json`), this crate's typed
//! [`Client`], the `prism` CLI, the tests and the benchmarks.
//!
//! ```no_run
//! # async fn run() -> Result<(), prism_client::Error> {
//! use prism_client::{Client, wire::NewEvent};
//! let prism = Client::new("http://127.0.0.1:7070")?;
//! let placed = NewEvent::new("OrderPlaced", &serde_json::json!({"order_id": "o-1"}))?;
//! let appended = prism.append("order-1", &[placed], None).await?;
//! let status = prism.projector("order-totals").await?;
//! println!("appended at {}; the view is at {}", appended.last_position, status.checkpoint);
//! # Ok(()) }
//! ```

mod client;
pub mod wire;

pub use client::{Client, Error, Reply, ViewValue};
