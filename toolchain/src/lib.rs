//! Builds Prism projectors to WebAssembly components.
//!
//! Projectors are Rust crates compiled for `wasm32-unknown-unknown`; the result is a core
//! module carrying wit-bindgen's component type, which [`componentize`] turns into a component.
//! Finding a compiler for that target is the hard part, so [`Toolchain::find`] tries, in order:
//!
//! 1. **rustup** with the `wasm32-unknown-unknown` target installed (what most users have). If
//!    rustup is there but the target is not, it tries `rustup target add` under a short timeout
//!    (on machines without access to the Rust download server that command hangs).
//! 2. **Debian's `rustc-web`**: `rustc-web`, `cargo-web`, `rust-web-src` and `lld` give a
//!    compiler without a prebuilt wasm32 standard library; it is built from source with
//!    `RUSTC_BOOTSTRAP=1 -Zbuild-std=std,panic_abort`, linked by `wasm-ld`. When the packages are
//!    missing and we run as root with apt, they are installed.
//! 3. Otherwise it fails with a message saying exactly what to install.
//!
//! `PRISM_WASM_TOOLCHAIN=rustup` or `=debian` forces one route (to test it, or to skip the
//! `rustup target add` attempt on machines where it hangs).
//!
//! Projectors written in C take the route of the [`c`] module ([`CToolchain`]): bindings
//! generated from the WIT by wit-bindgen's C generator, clang, `wasm-ld` and wasi-libc.

pub mod c;
pub mod nats;

pub use c::CToolchain;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Wasm target projectors build for.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// The Debian packages of route 2.
pub const DEBIAN_PACKAGES: [&str; 4] = ["rustc-web", "cargo-web", "rust-web-src", "lld"];

/// How long `rustup target add` may take before we give up on it.
const RUSTUP_ADD_TIMEOUT: Duration = Duration::from_secs(20);

/// A working way to compile Rust for `wasm32-unknown-unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's toolchain with the target's prebuilt standard library.
    Rustup,
    /// Debian's `rustc-web` building `std` from source (`-Zbuild-std`), linked by `wasm-ld`.
    DebianBuildStd {
        /// `/usr/bin/cargo` from `cargo-web`.
        cargo: PathBuf,
        /// `/usr/bin/rustc` from `rustc-web`.
        rustc: PathBuf,
    },
}

/// One projector built by [`build_workspace`].
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The crate's name, e.g. `event-counter`.
    pub name: String,
    /// The core module as the compiler wrote it.
    pub core_module: PathBuf,
}

impl Toolchain {
    /// Finds a route, installing what it can (see the crate docs). Progress goes to stderr.
    pub fn find() -> Result<Toolchain> {
        match std::env::var("PRISM_WASM_TOOLCHAIN").as_deref() {
            Ok("rustup") if rustup_has_target() => return Ok(Toolchain::Rustup),
            Ok("rustup") => bail!("PRISM_WASM_TOOLCHAIN=rustup, but rustup has no {TARGET} target"),
            Ok("debian") => {
                return debian_route().or_else(install_debian_route).ok_or_else(|| {
                    anyhow::anyhow!(
                        "PRISM_WASM_TOOLCHAIN=debian, but {} are not installed",
                        DEBIAN_PACKAGES.join(" ")
                    )
                });
            }
            _ => {}
        }
        if rustup_has_target() {
            return Ok(Toolchain::Rustup);
        }
        if which("rustup").is_some() {
            eprintln!(
                "prism-toolchain: rustup has no {TARGET} target; trying `rustup target add` ({}s timeout)",
                RUSTUP_ADD_TIMEOUT.as_secs()
            );
            let mut add = Command::new("rustup");
            add.args(["target", "add", TARGET]);
            if run_with_timeout(add, RUSTUP_ADD_TIMEOUT) && rustup_has_target() {
                return Ok(Toolchain::Rustup);
            }
        }
        if let Some(found) = debian_route().or_else(install_debian_route) {
            return Ok(found);
        }
        bail!(
            "no Rust toolchain for {TARGET} found. Install one of:\n  \
             - rustup's target: `rustup target add {TARGET}`\n  \
             - Debian's packages: `apt-get install -y {}` (Prism then builds std from source)",
            DEBIAN_PACKAGES.join(" ")
        )
    }

    /// A `cargo build --release --target wasm32-unknown-unknown` command for this route, with
    /// the environment of any enclosing cargo (e.g. a build script's) removed.
    pub fn cargo_build(&self) -> Command {
        let mut cmd = match self {
            Toolchain::Rustup => Command::new("cargo"),
            Toolchain::DebianBuildStd { cargo, .. } => Command::new(cargo),
        };
        scrub_cargo_env(&mut cmd);
        cmd.args(["build", "--release", "--target", TARGET]);
        if let Toolchain::DebianBuildStd { rustc, .. } = self {
            cmd.env("RUSTC", rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "wasm-ld")
                .arg("-Zbuild-std=std,panic_abort");
            if let Some(rustdoc) = rustc.parent().map(|dir| dir.join("rustdoc")) {
                cmd.env("RUSTDOC", rustdoc);
            }
        }
        cmd
    }
}

/// Builds every member of the projector workspace at `workspace` (or just `packages`) into
/// `target_dir`, and returns the core modules.
pub fn build_workspace(
    toolchain: &Toolchain,
    workspace: &Path,
    target_dir: &Path,
    packages: &[&str],
) -> Result<Vec<Artifact>> {
    let mut cmd = toolchain.cargo_build();
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .arg("--locked");
    for package in packages {
        cmd.args(["-p", package]);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo for {}", workspace.display()))?;
    if !status.success() {
        bail!(
            "building the projectors in {} failed ({status}) with {toolchain:?}",
            workspace.display()
        );
    }
    let out_dir = target_dir.join(TARGET).join("release");
    let mut artifacts = Vec::new();
    for entry in std::fs::read_dir(&out_dir).with_context(|| format!("{}", out_dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .replace('_', "-");
            if packages.is_empty() || packages.contains(&name.as_str()) {
                artifacts.push(Artifact {
                    name,
                    core_module: path,
                });
            }
        }
    }
    artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(artifacts)
}

/// Builds the one projector crate at `dir` (a package named `name`, its own workspace; a
/// missing `Cargo.lock` is created) into `target_dir`, and returns its core module.
pub fn build_package(
    toolchain: &Toolchain,
    dir: &Path,
    target_dir: &Path,
    name: &str,
) -> Result<Artifact> {
    // Cargo runs in `dir`: a relative target dir would be taken from there.
    let target_dir = &std::path::absolute(target_dir)?;
    let status = toolchain
        .cargo_build()
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .with_context(|| format!("running cargo for {}", dir.display()))?;
    if !status.success() {
        bail!(
            "building {} failed ({status}) with {toolchain:?}",
            dir.display()
        );
    }
    let core_module = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    if !core_module.is_file() {
        bail!(
            "cargo built no {} (is the crate a `cdylib`?)",
            core_module.display()
        );
    }
    Ok(Artifact {
        name: name.to_string(),
        core_module,
    })
}

/// Turns a core module with wit-bindgen's embedded component type into a component.
pub fn componentize(core_module: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(core_module)
        .context("reading the module's component type")?
        .validate(true)
        .encode()
        .context("encoding the component")
}

/// Embeds the component type of `world` (from the WIT package in `wit_dir`) in a core module,
/// as wit-bindgen does for the guests it builds: for core modules written by hand (the test
/// fixtures in WAT), which [`componentize`] then turns into components.
pub fn embed_world(core_module: &[u8], wit_dir: &Path, world: &str) -> Result<Vec<u8>> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_path(wit_dir)
        .with_context(|| format!("reading the WIT in {}", wit_dir.display()))?;
    let world = resolve.select_world(&[package], Some(world))?;
    let mut module = core_module.to_vec();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )?;
    Ok(module)
}

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(TARGET)
        })
}

/// Debian's route, when all of its parts are installed.
fn debian_route() -> Option<Toolchain> {
    let rustc = PathBuf::from("/usr/bin/rustc");
    let cargo = PathBuf::from("/usr/bin/cargo");
    let sysroot = Command::new(&rustc)
        .arg("--print")
        .arg("sysroot")
        .output()
        .ok()?;
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout).ok()?.trim());
    let std_sources = sysroot.join("lib/rustlib/src/rust/library/std");
    (cargo.exists() && std_sources.exists() && which("wasm-ld").is_some())
        .then_some(Toolchain::DebianBuildStd { cargo, rustc })
}

/// Installs Debian's route with apt-get when we are root, and returns it if that worked.
fn install_debian_route() -> Option<Toolchain> {
    apt_install(&DEBIAN_PACKAGES).then(debian_route).flatten()
}

/// Installs Debian `packages` with `apt-get install -y` (refreshing the package lists and
/// trying again when that fails, as on a fresh machine). Returns false without trying when we
/// are not root or there is no apt-get; true when the install succeeded. Progress goes to
/// stderr.
pub fn apt_install(packages: &[&str]) -> bool {
    if !is_root() || which("apt-get").is_none() {
        return false;
    }
    eprintln!(
        "prism-toolchain: installing Debian's {} with apt-get",
        packages.join(" ")
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if install() {
        return true;
    }
    let _ = Command::new("apt-get")
        .args(["update", "-q"])
        .stdout(Stdio::null())
        .status();
    install()
}

/// Removes what an enclosing cargo (running a build script) put in the environment, which
/// would otherwise leak its flags, target dir and compiler into the nested build.
fn scrub_cargo_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = [
            "CARGO_HOME",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTRIES_",
        ]
        .iter()
        .any(|k| key.starts_with(k));
        let cargo_set = key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "OUT_DIR"
                    | "TARGET"
                    | "HOST"
                    | "NUM_JOBS"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "PROFILE"
            );
        if cargo_set && !keep {
            cmd.env_remove(key);
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// Runs `cmd` quietly; false when it fails or outlives `timeout` (it is then killed).
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> bool {
    let Ok(mut child) = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}
