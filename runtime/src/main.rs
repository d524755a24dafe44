//! The `prism` command: the server, and a client for its HTTP API.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use prism::server::{Server, ServerConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Prism: a WebAssembly projection runtime for event-sourced systems.
///
/// Events are appended to a durable log; projectors (sandboxed Wasm components) turn them into
/// views you query over HTTP. `prism serve` runs the server; the other commands talk to it.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Prism: open (or create) the data dir, resume every projector, serve the HTTP API.
    Serve {
        /// Where Prism keeps the log, modules and views.
        #[arg(long, env = "PRISM_DATA_DIR", default_value = "prism-data")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "PRISM_LISTEN", default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
    },
    /// Upload a compiled projector (`.wasm`) as NAME; replaces any projector of that name.
    Deploy {
        #[command(flatten)]
        server: ServerArg,
        /// The projector's name (letters, digits, '-', '_').
        name: String,
        /// The `.wasm` file: a component, or a core module built with the guest SDK.
        file: PathBuf,
        /// A configuration string passed to the projector's `init`.
        #[arg(long, default_value = "")]
        config: String,
    },
    /// Append one event to STREAM.
    Append {
        #[command(flatten)]
        server: ServerArg,
        /// The stream, e.g. `order-42`.
        stream: String,
        /// The event's type, e.g. `OrderPlaced`.
        #[arg(long = "type")]
        event_type: String,
        /// The event's data, as JSON.
        #[arg(long)]
        data: String,
        /// The event's metadata, as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// Append only if the stream has exactly this many events (0: a new stream).
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Read the events of STREAM.
    Read {
        #[command(flatten)]
        server: ServerArg,
        stream: String,
        /// First stream version to read.
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the value under KEY in projector NAME's view.
    Get {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        key: String,
    },
    /// List entries of projector NAME's view in key order.
    Scan {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this key (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List projectors: state, module, checkpoint, lag.
    Ls {
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(clap::Args)]
struct ServerArg {
    /// The Prism server to talk to.
    #[arg(long, env = "PRISM_URL", default_value = "http://127.0.0.1:7070")]
    url: String,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve { data_dir, listen } => serve(data_dir, listen).await,
        Command::Deploy {
            server,
            name,
            file,
            config,
        } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let url = format!("{}/projectors/{name}", server.url);
            let reply = client()
                .put(url)
                .query(&[("config", config)])
                .body(wasm)
                .send()
                .await;
            print_json(reply).await
        }
        Command::Append {
            server,
            stream,
            event_type,
            data,
            metadata,
            expected_version,
        } => {
            let data: Value = serde_json::from_str(&data).context("--data must be JSON")?;
            let mut event = serde_json::json!({ "type": event_type, "data": data });
            if let Some(metadata) = metadata {
                event["metadata"] =
                    serde_json::from_str(&metadata).context("--metadata must be a JSON object")?;
            }
            let mut request = client()
                .post(format!("{}/streams/{stream}/events", server.url))
                .json(&[event]);
            if let Some(v) = expected_version {
                request = request.query(&[("expected_version", v)]);
            }
            print_json(request.send().await).await
        }
        Command::Read {
            server,
            stream,
            from,
            limit,
        } => {
            let request = client()
                .get(format!("{}/streams/{stream}", server.url))
                .query(&[("from", from), ("limit", limit as u64)]);
            print_json(request.send().await).await
        }
        Command::Get { server, name, key } => {
            let mut url = reqwest::Url::parse(&server.url).context("--url must be a URL")?;
            url.path_segments_mut()
                .map_err(|()| anyhow::anyhow!("--url cannot be a base URL"))?
                .pop_if_empty()
                .extend(["projectors", &name, "view"])
                .extend(key.split('/'));
            print_json(client().get(url).send().await).await
        }
        Command::Scan {
            server,
            name,
            prefix,
            after,
            limit,
        } => {
            let mut query = vec![("prefix", prefix), ("limit", limit.to_string())];
            query.extend(after.map(|a| ("after", a)));
            let request = client()
                .get(format!("{}/projectors/{name}/view", server.url))
                .query(&query);
            print_json(request.send().await).await
        }
        Command::Ls { server } => ls(&server.url).await,
    }
}

async fn serve(data_dir: PathBuf, listen: SocketAddr) -> Result<()> {
    let server = Server::start(ServerConfig {
        data_dir: data_dir.clone(),
        listen,
    })
    .await?;
    println!(
        "prism serving on http://{} with data in {}",
        server.addr(),
        data_dir.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Prints a JSON reply; an error status becomes the command's error.
async fn print_json(reply: reqwest::Result<reqwest::Response>) -> Result<()> {
    let reply = reply.context("cannot reach the Prism server (is `prism serve` running?)")?;
    let status = reply.status();
    let text = reply.text().await?;
    let pretty = serde_json::from_str::<Value>(&text)
        .map(|v| serde_json::to_string_pretty(&v).expect("JSON prints"))
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(())
    } else {
        bail!("{status}: {pretty}")
    }
}

async fn ls(url: &str) -> Result<()> {
    let reply = client()
        .get(format!("{url}/projectors"))
        .send()
        .await
        .context("cannot reach the Prism server (is `prism serve` running?)")?;
    if !reply.status().is_success() {
        bail!("{}: {}", reply.status(), reply.text().await?);
    }
    let body: Value = reply.json().await?;
    println!(
        "{:<24} {:<12} {:<14} {:>12} {:>10}  ERROR",
        "NAME", "STATE", "MODULE", "CHECKPOINT", "LAG"
    );
    for p in body["projectors"].as_array().into_iter().flatten() {
        let module = p["module"].as_str().unwrap_or("");
        println!(
            "{:<24} {:<12} {:<14} {:>12} {:>10}  {}",
            p["name"].as_str().unwrap_or(""),
            p["state"].as_str().unwrap_or(""),
            &module[..module.len().min(12)],
            p["checkpoint"].as_u64().unwrap_or_default(),
            p["lag"].as_u64().unwrap_or_default(),
            p["error"]["message"].as_str().unwrap_or(""),
        );
    }
    println!("log head: {}", body["head"]);
    Ok(())
}
