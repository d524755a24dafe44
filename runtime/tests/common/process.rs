//! The real `prism` binary as a child process, for tests that kill it.

use super::Client;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `prism serve` child process and a client for it.
pub struct Prism {
    pub child: Child,
    pub client: Client,
}

impl Drop for Prism {
    /// A test that fails leaves no `prism` running (it would hold the test's output open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `prism serve` on `data_dir`, its views made durable every 5 ms.
pub fn start(data_dir: &std::path::Path) -> Prism {
    start_syncing(data_dir, 5)
}

/// Starts `prism serve` on `data_dir`, its views made durable every `sync_ms`.
pub fn start_syncing(data_dir: &std::path::Path, sync_ms: u64) -> Prism {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--view-sync-interval-ms",
        ])
        .arg(sync_ms.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting prism");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("prism did not say where it listens: {line:?}"))
        .to_string();
    Prism {
        child,
        client: Client::new(&address),
    }
}

/// A deterministic pseudo-random sequence (no dependency, same run every time).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts `prism serve` on `data_dir` without waiting for it to listen (to kill it while it
/// opens its files and resumes its projectors).
pub fn spawn(data_dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_prism"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--view-sync-interval-ms",
            "5",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting prism")
}
