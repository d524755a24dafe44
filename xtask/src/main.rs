//! Project tasks: `cargo xtask <task>` (the cargo-xtask convention).
//!
//! - `build-guests`: build the example projectors to components in `target/projectors/`.
//! - `demo`: build everything, start Prism, deploy the examples, append a sample history, and
//!   keep serving (the README's main-job command).
//! - `cluster-demo`: the same on three nats-servers and three Prism nodes.
//! - `ci`: what CI runs: format check, clippy, the whole test suite.
//! - `bench-report`, `bench-scaling`: the benchmark report, and how replay scales.

mod cluster_demo;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use prism_client::wire::NewEvent;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the example projectors to deployable components.
    BuildGuests {
        /// Where to write `<name>.wasm`.
        #[arg(long, default_value = "target/projectors")]
        out: PathBuf,
    },
    /// Start Prism with the example projectors and a sample history, and keep serving.
    Demo {
        #[arg(long, default_value = "prism-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
    },
    /// Three nats-servers and three Prism nodes on this machine, the examples deployed and the
    /// sample history appended; any node answers for any projector. Starts afresh each time.
    ClusterDemo {
        /// The first node's port (the others take the next two).
        #[arg(long, default_value_t = 7071)]
        first_port: u16,
    },
    /// Format check, clippy, and the whole test suite.
    Ci,
    /// Run the end-to-end benchmark report and print its table (figure, value, target).
    BenchReport {
        /// Events in the replay log.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// How replay scales: `event-counter` at each of `--events`, `order-totals` at each of
    /// `--customers` (over `--order-events` events), each the median of `--repeat` runs.
    BenchScaling {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000000,10000000,50000000"
        )]
        events: Vec<u64>,
        #[arg(long, value_delimiter = ',', default_value = "10000,1000000,10000000")]
        customers: Vec<u64>,
        #[arg(long, default_value_t = 10_000_000)]
        order_events: u64,
        #[arg(long, default_value_t = 3)]
        repeat: u32,
    },
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    match Cli::parse().task {
        Task::BuildGuests { out } => {
            build_guests(&root, &root.join(out))?;
            Ok(())
        }
        Task::Demo { data_dir, listen } => demo(&root, &data_dir, &listen),
        Task::ClusterDemo { first_port } => cluster_demo::cluster_demo(&root, first_port),
        Task::BenchReport { events } => {
            eprintln!("xtask: cargo bench -p prism-benches --bench report ({events} events)");
            let status = Command::new(env!("CARGO"))
                .args(["bench", "-p", "prism-benches", "--bench", "report"])
                .env("PRISM_BENCH_EVENTS", events.to_string())
                .current_dir(&root)
                .status()?;
            if !status.success() {
                bail!("the benchmark report failed: {status}");
            }
            Ok(())
        }
        Task::BenchScaling {
            events,
            customers,
            order_events,
            repeat,
        } => {
            let mut rows = Vec::new();
            let runs = events.iter().map(|&n| ("event-counter", n, None)).chain(
                customers
                    .iter()
                    .map(|&c| ("order-totals", order_events, Some(c))),
            );
            for (projector, n, customers) in runs {
                eprintln!("xtask: {projector}, {n} events, customers {customers:?}");
                let mut command = Command::new(env!("CARGO"));
                command
                    .args(["bench", "-p", "prism-benches", "--bench", "report"])
                    .env("PRISM_BENCH_ONLY", "replay")
                    .env("PRISM_BENCH_REPLAY", projector)
                    .env("PRISM_BENCH_EVENTS", n.to_string())
                    .env("PRISM_BENCH_REPEAT", repeat.to_string())
                    .current_dir(&root);
                if let Some(customers) = customers {
                    command.env("PRISM_BENCH_CUSTOMERS", customers.to_string());
                }
                let output = command.output()?;
                let text = String::from_utf8_lossy(&output.stdout);
                print!("{text}");
                if !output.status.success() {
                    bail!("the benchmark report failed: {}", output.status);
                }
                let peak = text
                    .lines()
                    .find(|l| l.contains("peak RSS"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                for line in text.lines().filter(|l| l.starts_with("| replay")) {
                    rows.push(format!("{line} {n} events | {peak} |"));
                }
            }
            println!(
                "\n| figure | value | target | | events | memory |\n|---|---|---|---|---|---|"
            );
            for row in rows {
                println!("{row}");
            }
            Ok(())
        }
        Task::Ci => {
            cargo(&root, &["fmt", "--all", "--", "--check"])?;
            cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            cargo(&root, &["test", "--workspace"])
        }
    }
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The example projectors (the guest workspace also holds test fixtures).
const EXAMPLES: [&str; 3] = ["event-counter", "order-totals", "account-balances"];

/// Builds the example projectors and writes their components to `out`.
fn build_guests(root: &Path, out: &Path) -> Result<Vec<(String, PathBuf)>> {
    let toolchain = prism_toolchain::Toolchain::find()?;
    eprintln!("xtask: building the example projectors with {toolchain:?}");
    let guests = root.join("example-projectors");
    let artifacts =
        prism_toolchain::build_workspace(&toolchain, &guests, &guests.join("target"), &EXAMPLES)?;
    std::fs::create_dir_all(out)?;
    let mut built = Vec::new();
    for artifact in artifacts {
        let core = std::fs::read(&artifact.core_module)?;
        let path = out.join(format!("{}.wasm", artifact.name));
        std::fs::write(&path, prism_toolchain::componentize(&core)?)?;
        eprintln!("xtask: {}", path.display());
        built.push((artifact.name, path));
    }
    Ok(built)
}

/// Builds `prism` in release; its path.
fn build_prism(root: &Path) -> Result<PathBuf> {
    cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "prism-runtime",
            "--bin",
            "prism",
        ],
    )?;
    Ok(root.join("target/release/prism"))
}

fn demo(root: &Path, data_dir: &Path, listen: &str) -> Result<()> {
    let guests = build_guests(root, &root.join("target/projectors"))?;
    let binary = build_prism(root)?;
    let mut prism = Command::new(&binary)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(listen)
        .spawn()
        .context("starting prism")?;
    let result = seed(&mut prism, &binary, &format!("http://{listen}"), &guests);
    if let Err(e) = result {
        let _ = prism.kill();
        return Err(e);
    }
    let status = prism.wait()?;
    if !status.success() {
        bail!("prism exited with {status}");
    }
    Ok(())
}

/// Waits for Prism, deploys the examples, appends the sample history once, and says where to
/// look. Talks to Prism through its typed client.
/// Waits until `ready` says yes, asking every 100 ms for up to `within`; fails at once if
/// `child` (named `what`) exits meanwhile.
fn wait_for(
    child: &mut Child,
    what: &str,
    within: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + within;
    while !ready() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status}");
        }
        if Instant::now() > deadline {
            bail!("{what} was not ready within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn seed(prism: &mut Child, binary: &Path, url: &str, guests: &[(String, PathBuf)]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let api = prism_client::Client::new(url)?;
    wait_for(prism, "prism", Duration::from_secs(30), || {
        runtime.block_on(api.health()).is_ok()
    })
    .with_context(|| format!("prism did not answer on {url}"))?;
    for (name, path) in guests {
        let wasm = std::fs::read(path)?;
        let deployed = runtime
            .block_on(api.deploy(name, wasm, &Default::default()))
            .with_context(|| format!("deploying {name}"))?;
        let mode = serde_json::to_value(deployed.mode)?;
        let mode = mode.as_str().unwrap_or_default();
        eprintln!("xtask: deployed {name} ({mode}, {})", deployed.module);
    }
    if runtime.block_on(api.projectors())?.head == 0 {
        let mut appended = 0;
        for (stream, events) in sample_history() {
            let events: Vec<NewEvent> = serde_json::from_value(events)?;
            runtime
                .block_on(api.append(&stream, &events, None))
                .with_context(|| format!("appending to {stream}"))?;
            appended += events.len();
        }
        eprintln!("xtask: appended {appended} sample events");
    }
    println!(
        "\nPrism is serving on {url} (data in the data dir; Ctrl-C stops it). Try:\n\
         \x20 curl {url}/projectors\n\
         \x20 curl {url}/projectors/event-counter/view/total\n\
         \x20 curl '{url}/projectors/event-counter/view?prefix=type/'\n\
         \x20 curl {url}/projectors/order-totals/view/customer/c-3\n\
         \x20 curl {url}/projectors/account-balances/view/account/a-1\n\
         \x20 curl {url}/streams/order-7\n\
         \x20 {prism} append order-999 --url {url} --type OrderPlaced \\\n\
         \x20     --data '{{\"order_id\":\"o-999\",\"customer\":\"c-3\",\"total_cents\":4200}}'\n\
         \x20 {prism} get order-totals customer/c-3 --url {url}\n",
        prism = binary.display()
    );
    Ok(())
}

/// A deterministic sample: 60 orders of 8 customers (some cancelled), 6 accounts with
/// deposits, withdrawals and transfers (some overdrawn).
fn sample_history() -> Vec<(String, Value)> {
    let mut history = Vec::new();
    for i in 0..60u64 {
        let customer = format!("c-{}", i % 8);
        let total_cents = 500 + (i * 7919) % 9000;
        history.push((
            format!("order-{i}"),
            json!([{"type": "OrderPlaced", "data": {"order_id": format!("o-{i}"), "customer": customer, "total_cents": total_cents}}]),
        ));
        if i % 5 == 0 {
            history.push((
                format!("order-{i}"),
                json!([{"type": "OrderCancelled", "data": {"order_id": format!("o-{i}")}}]),
            ));
        }
    }
    for a in 0..6u64 {
        history.push((
            format!("account-a-{a}"),
            json!([
                {"type": "AccountOpened", "data": {"account": format!("a-{a}"), "owner": format!("owner {a}")}},
                {"type": "Deposited", "data": {"account": format!("a-{a}"), "amount": 1000 * (a + 1)}},
            ]),
        ));
    }
    for t in 0..20u64 {
        let (from, to) = (t % 6, (t + 1) % 6);
        history.push((
            format!("account-a-{from}"),
            json!([
                {"type": "TransferMade", "data": {"from": format!("a-{from}"), "to": format!("a-{to}"), "amount": 150 * (t + 1)}},
                {"type": "Withdrawn", "data": {"account": format!("a-{to}"), "amount": 100}},
            ]),
        ));
    }
    history
}
