//! The commands that talk to a running Prism, through the typed [`Client`].

use super::{ClusterAction, Command, Mode, OnError};
use anyhow::{Context, Result};
use prism_client::Client;
use prism_client::wire::{
    Consistency, DeadLetterParams, DeployParams, ErrorPolicy, ModeChoice, NewEvent, ReadParams,
    ScanParams,
};
use serde::Serialize;

/// Which Prism to talk to.
#[derive(clap::Args)]
pub struct ServerArg {
    /// The Prism server to talk to.
    #[arg(
        long,
        env = "PRISM_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    url: String,
    /// Bearer token sent with every request.
    #[arg(long, env = "PRISM_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl ServerArg {
    fn client(&self) -> Result<Client> {
        Ok(Client::with_token(&self.url, self.token.as_deref())?)
    }
}

fn print(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs a remote command.
pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Deploy {
            server,
            name,
            file,
            module,
            config,
            mode,
            on_error,
            no_wait,
        } => {
            let wasm = match &file {
                Some(file) => {
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
                }
                None => Vec::new(),
            };
            let params = DeployParams {
                module,
                config,
                mode: mode.map(|m| match m {
                    Mode::Continue => ModeChoice::Continue,
                    Mode::Rebuild => ModeChoice::Rebuild,
                }),
                on_error: on_error.map(|p| match p {
                    OnError::Stop => ErrorPolicy::Stop,
                    OnError::Skip => ErrorPolicy::Skip,
                }),
            };
            let client = server.client()?;
            let deployed = client.deploy(&name, wasm, &params).await?;
            print(&deployed)?;
            if deployed.mode == prism_client::wire::DeployMode::Rebuild && !no_wait {
                follow_rebuild(&client, &name).await?;
            }
            Ok(())
        }
        Command::Import {
            server,
            file,
            batch,
            state,
        } => super::import::import(&server.client()?, &file, batch, state).await,
        Command::Status { server, name } => print(&server.client()?.projector(&name).await?),
        Command::Pause { server, name } => {
            print(&server.client()?.lifecycle(&name, "pause").await?)
        }
        Command::Resume { server, name } => {
            print(&server.client()?.lifecycle(&name, "resume").await?)
        }
        Command::Reset {
            server,
            name,
            no_wait,
        } => {
            let client = server.client()?;
            print(&client.lifecycle(&name, "reset").await?)?;
            if !no_wait {
                follow_rebuild(&client, &name).await?;
            }
            Ok(())
        }
        Command::Delete { server, name } => print(&server.client()?.delete(&name).await?),
        Command::Verify { server, name } => {
            let report = server.client()?.verify(&name).await?;
            print(&report)?;
            if !report.identical {
                return Err(anyhow::anyhow!(
                    "the live view of {name} differs from a replay of the log"
                ));
            }
            Ok(())
        }
        Command::DeadLetters {
            server,
            name,
            after,
        } => {
            let params = DeadLetterParams { after, limit: None };
            print(&server.client()?.dead_letters(&name, &params).await?)
        }
        Command::Retry {
            server,
            name,
            position,
        } => print(&server.client()?.retry(&name, position).await?),
        Command::Discard {
            server,
            name,
            position,
        } => print(&server.client()?.discard(&name, position).await?),
        Command::Modules { server } => print(&server.client()?.modules().await?),
        Command::Append {
            server,
            stream,
            event_type,
            data,
            metadata,
            expected_version,
        } => {
            let data: serde_json::Value =
                serde_json::from_str(&data).context("--data must be JSON")?;
            let mut event = NewEvent::new(event_type, &data)?;
            if let Some(metadata) = metadata {
                let metadata: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&metadata).context("--metadata must be a JSON object")?;
                event = event.with_metadata(&metadata)?;
            }
            let client = server.client()?;
            print(&client.append(&stream, &[event], expected_version).await?)
        }
        Command::Read {
            server,
            stream,
            from,
            limit,
        } => {
            let params = ReadParams {
                from: Some(from),
                limit: Some(limit),
            };
            print(&server.client()?.read_stream(&stream, &params).await?)
        }
        Command::Get { server, name, key } => {
            let client = server.client()?;
            match client
                .view_value(&name, &key, &Consistency::default())
                .await?
            {
                Some(value) => match value.json {
                    Some(json) => print(&json),
                    None => {
                        use std::io::Write;
                        std::io::stdout().write_all(&value.bytes)?;
                        Ok(())
                    }
                },
                None => Err(anyhow::anyhow!(
                    "404 Not Found: {name}'s view has no key {key:?}"
                )),
            }
        }
        Command::Scan {
            server,
            name,
            prefix,
            after,
            limit,
        } => {
            let params = ScanParams {
                prefix,
                after,
                limit: Some(limit),
                ..ScanParams::default()
            };
            print(&server.client()?.scan(&name, &params).await?)
        }
        Command::Ls { server } => ls(&server.client()?).await,
        Command::Cluster { server, action } => {
            let client = server.client()?;
            match action {
                None => cluster(&client).await,
                Some(ClusterAction::Drain { node, no_wait }) => {
                    client.drain(&node, true).await?;
                    println!("{node} drained: its projectors move to the other nodes");
                    if no_wait {
                        return Ok(());
                    }
                    wait_drained(&client, &node).await
                }
                Some(ClusterAction::Undrain { node }) => {
                    client.drain(&node, false).await?;
                    println!("{node} undrained: it takes its share of projectors again");
                    Ok(())
                }
                Some(ClusterAction::Snapshot { name }) => print(&client.snapshot(&name).await?),
            }
        }
        Command::Serve(_)
        | Command::New { .. }
        | Command::Build { .. }
        | Command::Test { .. }
        | Command::Repair { .. }
        | Command::Log(_)
        | Command::CompileWorker { .. } => unreachable!("local commands are run by cli::run"),
    }
}

/// Shows a rebuild's progress until it has been promoted (or has failed).
async fn follow_rebuild(client: &Client, name: &str) -> Result<()> {
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rebuilding {prefix} [{bar:40}] {percent:>3}% {msg}",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    loop {
        let status = client.projector(name).await?;
        let Some(rebuild) = status.rebuild else {
            if let Some(error) = status.error {
                bar.abandon_with_message(format!("projector faulted: {error}"));
                return Err(anyhow::anyhow!("{name} faulted: {error}"));
            }
            bar.finish_with_message(format!(
                "done: generation {} is serving at checkpoint {}",
                status.generation, status.checkpoint
            ));
            return Ok(());
        };
        if let Some(error) = rebuild.error {
            bar.abandon_with_message(format!("the rebuild faulted: {error}"));
            return Err(anyhow::anyhow!(
                "the rebuild of {name} faulted (the old view keeps serving): {error}"
            ));
        }
        bar.set_position((rebuild.percent * 10.0) as u64);
        bar.set_message(format!(
            "{} / {} events, {} events/s, ETA {}",
            rebuild.checkpoint,
            status.head,
            rebuild.events_per_sec,
            rebuild
                .eta_secs
                .map_or("-".to_string(), |s| format!("{s:.0}s"))
        ));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn cluster(client: &Client) -> Result<()> {
    let cluster = client.cluster().await?;
    println!("{:<16} URL", "NODE");
    for node in &cluster.nodes {
        let me = if node.id == cluster.node {
            "  (answered)"
        } else {
            ""
        };
        println!("{:<16} {}{me}", node.id, node.url);
    }
    println!();
    println!(
        "{:<24} {:<16} {:>10} {:>10}",
        "PROJECTOR", "OWNER", "LEASE", "AGE"
    );
    for p in &cluster.projectors {
        let age = p
            .lease_age_ms
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        println!(
            "{:<24} {:<16} {:>10} {:>10}",
            p.name,
            p.owner.as_deref().unwrap_or("(moving)"),
            p.lease_revision.map_or("-".into(), |r| r.to_string()),
            age,
        );
    }
    if !cluster.drained.is_empty() {
        println!("drained: {}", cluster.drained.join(", "));
    }
    println!("log head: {}", cluster.head);
    if let Some(error) = &cluster.log_error {
        println!("log unreachable from {}: {error}", cluster.node);
    }
    Ok(())
}

/// Waits until `node` owns no projector and none is moving (10 minutes at most).
async fn wait_drained(client: &Client, node: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let cluster = client.cluster().await?;
        anyhow::ensure!(
            cluster
                .nodes
                .iter()
                .any(|n| !cluster.drained.contains(&n.id)),
            "every live node is drained: the projectors stay where they are (undrain one)"
        );
        let left = cluster
            .projectors
            .iter()
            .filter(|p| p.owner.as_deref().is_none_or(|o| o == node))
            .count();
        if left == 0 {
            println!("{node} owns no projector");
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{node} still owns (or is moving) {left} projectors after 10 minutes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn ls(client: &Client) -> Result<()> {
    let list = client.projectors().await?;
    println!(
        "{:<24} {:<12} {:<14} {:>12} {:>10}  ERROR",
        "NAME", "STATE", "MODULE", "CHECKPOINT", "LAG"
    );
    for p in &list.projectors {
        let state = serde_json::to_value(p.state)?;
        println!(
            "{:<24} {:<12} {:<14} {:>12} {:>10}  {}",
            p.name,
            state.as_str().unwrap_or_default(),
            &p.module[..p.module.len().min(12)],
            p.checkpoint,
            p.lag,
            p.error.as_ref().map_or("", |e| e.message.as_str()),
        );
    }
    println!("log head: {}", list.head);
    Ok(())
}
