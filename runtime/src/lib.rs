//! # Prism: a WebAssembly projection runtime
//!
//! Prism keeps an append-only event log and runs *projectors* — sandboxed WebAssembly
//! components — that turn its events into queryable views:
//!
//! ```text
//! append (HTTP/CLI) -> event log (log.redb) -> runner -> projector (Wasm)
//!                   -> view + checkpoint (projectors/<name>/gen-<n>.redb, one transaction) -> HTTP
//! ```
//!
//! - [`data_dir`]: where every file lives, and atomic whole-file writes.
//! - [`log`]: the event log, with group-committed durable appends and a head watch.
//! - [`engine`]: wasmtime, the WIT bindings, module validation and instances.
//! - [`projector`]: runners and the registry of deployed projectors.
//! - [`store`]: a projector's view and checkpoint, committed together.
//! - [`http`]: the API.
//! - [`server`]: all of it started on a data dir and a socket.
//! - [`cli`]: the `prism` command (serve, the remote commands over `prism_client`, the kit).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = prism::server::ServerConfig::new("prism-data", "127.0.0.1:7070".parse()?);
//! let server = prism::server::Server::start(config).await?;
//! println!("listening on http://{}", server.addr());
//! server.stop().await;
//! # Ok(()) }
//! ```

pub mod cli;
pub mod cluster;
pub mod config;
pub mod data_dir;
pub mod engine;
pub mod http;
pub mod kit;
pub mod log;
pub mod projector;
pub mod server;
pub mod store;
