//! `cargo xtask cluster-demo`: three nats-servers (one JetStream cluster) and three Prism nodes
//! on this machine, the examples deployed through one node, the sample history appended through
//! all three, and the URLs to ask any node about any projector. Starts afresh each time (the
//! servers' stores and the nodes' data dirs under `target/cluster-demo/`); Ctrl-C stops it all.

use anyhow::{Context, Result, bail};
use prism_client::wire::NewEvent;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The secret the demo's nodes present to each other.
const TOKEN: &str = "cluster-demo-token";

/// Kills the nodes when the demo ends (the servers go with `Servers`).
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn cluster_demo(root: &Path, first_port: u16) -> Result<()> {
    let guests = super::build_guests(root, &root.join("target/projectors"))?;
    let binary = super::build_prism(root)?;
    let dir = root.join("target/cluster-demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let nats = prism_toolchain::nats::nats_server(&root.join("target/tmp"))?;
    eprintln!("xtask: starting three nats-servers ({})", nats.display());
    let servers = prism_toolchain::nats::Servers::start(&nats, &dir.join("nats"), 3, false)?;
    let urls = servers.urls();
    let mut nodes = Nodes(Vec::new());
    let mut bases = Vec::new();
    for i in 0..3u16 {
        let listen = format!("127.0.0.1:{}", first_port + i);
        let base = format!("http://{listen}");
        let child = Command::new(&binary)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join(format!("n{i}")))
            .args(["--listen", &listen, "--advertise-url", &base])
            .args(["--event-log", &urls, "--event-log-replicas", "3"])
            .args(["--node-id", &format!("n{i}"), "--cluster-token", TOKEN])
            .spawn()
            .context("starting prism")?;
        nodes.0.push(child);
        bases.push(base);
    }
    seed(&mut nodes, &bases, &guests, &binary)?;
    // Until Ctrl-C (which reaches every child too) or every node has stopped: a node killed
    // is said, and the others go on (its projectors move to them).
    let mut running = vec![true; nodes.0.len()];
    while running.iter().any(|r| *r) {
        for (i, child) in nodes.0.iter_mut().enumerate() {
            if running[i]
                && let Some(status) = child.try_wait()?
            {
                running[i] = false;
                eprintln!("xtask: node n{i} exited ({status}); the others take its projectors");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("every node has stopped")
}

fn seed(
    nodes: &mut Nodes,
    bases: &[String],
    guests: &[(String, PathBuf)],
    binary: &Path,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let clients = bases
        .iter()
        .map(|b| prism_client::Client::new(b))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, api) in clients.iter().enumerate() {
        let sees_all = || {
            runtime
                .block_on(api.cluster())
                .is_ok_and(|c| c.nodes.len() >= 3)
        };
        crate::wait_for(
            &mut nodes.0[i],
            &format!("node n{i}"),
            Duration::from_secs(60),
            sees_all,
        )
        .context("the three nodes did not see each other")?;
    }
    for (name, path) in guests {
        let wasm = std::fs::read(path)?;
        let deployed = runtime
            .block_on(clients[0].deploy(name, wasm, &Default::default()))
            .with_context(|| format!("deploying {name}"))?;
        eprintln!("xtask: deployed {name} through n0 ({})", deployed.module);
    }
    let mut appended = 0;
    for (i, (stream, events)) in super::sample_history().into_iter().enumerate() {
        let events: Vec<NewEvent> = serde_json::from_value(events)?;
        runtime
            .block_on(clients[i % 3].append(&stream, &events, None))
            .with_context(|| format!("appending to {stream}"))?;
        appended += events.len();
    }
    eprintln!("xtask: appended {appended} sample events through all three nodes");
    let cluster = runtime.block_on(clients[0].cluster())?;
    for projector in &cluster.projectors {
        eprintln!(
            "xtask: {} is owned by {}",
            projector.name,
            projector.owner.as_deref().unwrap_or("(moving)")
        );
    }
    let (a, b, c) = (&bases[0], &bases[1], &bases[2]);
    println!(
        "\nThree Prism nodes serve one JetStream log: {a} (n0), {b} (n1), {c} (n2).\n\
         Any node answers for any projector (forwarding to its owner). Try:\n\
         \x20 curl {a}/cluster\n\
         \x20 curl {b}/projectors\n\
         \x20 curl {c}/projectors/event-counter/view/total\n\
         \x20 curl {a}/projectors/order-totals/view/customer/c-3\n\
         \x20 {prism} append order-999 --url {b} --type OrderPlaced \\\n\
         \x20     --data '{{\"order_id\":\"o-999\",\"customer\":\"c-3\",\"total_cents\":4200}}'\n\
         \x20 {prism} cluster --url {c}\n\
         Stop a node (kill its process) and ask the others: its projectors move within seconds.\n\
         Ctrl-C stops the demo.",
        prism = binary.display(),
    );
    Ok(())
}
