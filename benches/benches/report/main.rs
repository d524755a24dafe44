//! The end-to-end benchmark report: every figure of Prism's performance targets, measured on
//! this machine, printed as one table (figure, value, target, pass/fail).
//!
//! `cargo xtask bench-report [--events N]` runs it (default 1M events; the report in
//! `benches/REPORT.md` uses 10M). Everything runs in release, on real files, with real
//! servers on loopback where a figure is about HTTP. Clients share the machine with the server,
//! so HTTP figures are conservative.
//!
//! The figures are measured by part: `replay` (log → projector → view, Wasm against native and
//! the rusqlite rival), `http` (import, appends, freshness, queries, reloads, restarts) and
//! `jetstream` (the JetStream log against the embedded one: appends, replay, a leader kill).

mod cluster;
mod failover;
mod http;
mod jetstream;
mod replay;

use std::time::Duration;

struct Row {
    figure: String,
    value: String,
    target: &'static str,
    pass: bool,
}

struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, figure: impl Into<String>, value: String, target: &'static str, pass: bool) {
        let row = Row {
            figure: figure.into(),
            value,
            target,
            pass,
        };
        println!(
            "  {}: {} (target {}) {}",
            row.figure,
            row.value,
            row.target,
            verdict(row.pass)
        );
        self.rows.push(row);
    }

    fn print(&self) {
        println!("\n| figure | value | target | |\n|---|---|---|---|");
        for row in &self.rows {
            println!(
                "| {} | {} | {} | {} |",
                row.figure,
                row.value,
                row.target,
                verdict(row.pass)
            );
        }
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "FAIL" }
}

fn rate(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn human(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M/s", per_second / 1e6)
    } else if per_second >= 1e4 {
        format!("{:.0}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0}/s")
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th, in clock ticks (100 a second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u64 = std::env::var("PRISM_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut report = Report { rows: Vec::new() };
    // `PRISM_BENCH_ONLY=replay|import|http|jetstream|jetstream-replay|cluster|failover` measures one part (for
    // profiling).
    let only = std::env::var("PRISM_BENCH_ONLY").ok();
    if only.as_deref() == Some("jetstream-replay") {
        jetstream::jetstream_replay_figures(&mut report, n, dir.path());
        report.print();
        return;
    }
    if only.as_deref() == Some("cluster") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(cluster::cluster_figures(&mut report, dir.path()));
        report.print();
        return;
    }
    if only.as_deref() == Some("failover") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(failover::failover_figures(&mut report, dir.path()));
        report.print();
        return;
    }
    if only.as_deref() == Some("jetstream") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(jetstream::jetstream_figures(&mut report, n, dir.path()));
        report.print();
        return;
    }
    if !matches!(only.as_deref(), Some("import" | "http" | "jetstream")) {
        replay::replay_figures(&mut report, n, dir.path());
    }
    if only.as_deref() == Some("replay") {
        report.print();
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        if only.as_deref() != Some("http") {
            http::import_figure(&mut report, dir.path()).await;
        }
        if only.as_deref() == Some("import") {
            return;
        }
        http::append_figures(&mut report, dir.path()).await;
        http::freshness_and_query_figures(&mut report, dir.path()).await;
        http::reload_and_restart_figures(&mut report, dir.path()).await;
        jetstream::jetstream_figures(&mut report, n, dir.path()).await;
        cluster::cluster_figures(&mut report, dir.path()).await;
        failover::failover_figures(&mut report, dir.path()).await;
    });
    report.print();
}
