//! Compiling uploaded modules within bounds. A module can be made to compile for minutes and
//! take gigabytes (huge functions, deep nesting, many locals), and Cranelift cannot be stopped
//! once it runs: so `prism serve` compiles in a worker process (`prism compile-worker`) with an
//! address-space limit, kills it when it runs past its time or its caller gives up (a request
//! that timed out), and runs at most a few at a time. The parent loads the worker's artifact.
//!
//! Without a worker (Prism as a library: tests, benches, `prism test`) compiles run in-process,
//! still a bounded number at a time, but neither their time nor their memory is bounded.

use super::{ModuleError, Sandbox};
use parking_lot::{Condvar, Mutex};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The engine settings that decide what compiled code looks like: the worker and the server
/// must build identical engines, or the server refuses the worker's artifacts.
pub(super) fn config(limits: &Sandbox) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(limits.meter_fuel)
        .max_wasm_stack(limits.max_wasm_stack);
    config
}

/// Set by a caller that no longer wants a compile's result (its request timed out, say); the
/// compile is then abandoned, its worker killed.
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Abandons the work this token was given to.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels when dropped: held by an async handler, it cancels the blocking
    /// work the handler started when the handler's future is dropped (a request timeout).
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// See [`Cancel::on_drop`].
pub struct CancelOnDrop(Cancel);

impl CancelOnDrop {
    /// The work finished: dropping the guard no longer cancels anything.
    pub fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// How modules get compiled: where, how many at once, within which bounds.
#[derive(Debug)]
pub(super) struct Compiler {
    /// The `prism` executable to run `compile-worker` with; `None` compiles in-process.
    worker: Option<PathBuf>,
    limits: Sandbox,
    running: Mutex<usize>,
    turn: Condvar,
}

impl Compiler {
    pub(super) fn new(worker: Option<PathBuf>, limits: Sandbox) -> Compiler {
        Compiler {
            worker,
            limits,
            running: Mutex::new(0),
            turn: Condvar::new(),
        }
    }

    /// Compiles (and validates) a component, waiting for a free slot first.
    pub(super) fn compile(
        &self,
        engine: &wasmtime::Engine,
        component: &[u8],
        cancel: &Cancel,
    ) -> Result<wasmtime::component::Component, ModuleError> {
        let _slot = self.slot(cancel)?;
        let Some(worker) = &self.worker else {
            return wasmtime::component::Component::new(engine, component)
                .map_err(|e| ModuleError::Invalid(format!("{e:#}")));
        };
        let artifact = self.run_worker(worker, component, cancel)?;
        // SAFETY: the artifact was just written by `prism compile-worker` — this executable's
        // own compiler, from an engine built by `config` — never bytes a user sent; wasmtime
        // also checks that it matches this engine's version and configuration.
        unsafe { wasmtime::component::Component::deserialize(engine, &artifact) }
            .map_err(|e| ModuleError::Invalid(format!("loading the compiled module: {e:#}")))
    }

    /// Waits for one of `max_concurrent_compiles` slots (or the caller's cancel).
    fn slot(&self, cancel: &Cancel) -> Result<Slot<'_>, ModuleError> {
        let mut running = self.running.lock();
        while *running >= self.limits.max_concurrent_compiles.max(1) {
            if cancel.is_cancelled() {
                return Err(ModuleError::Abandoned);
            }
            self.turn.wait_for(&mut running, Duration::from_millis(50));
        }
        *running += 1;
        Ok(Slot(self))
    }

    fn run_worker(
        &self,
        worker: &PathBuf,
        component: &[u8],
        cancel: &Cancel,
    ) -> Result<Vec<u8>, ModuleError> {
        let limits = &self.limits;
        let failed = |e: std::io::Error| ModuleError::Compile(format!("the compile worker: {e}"));
        let mut child = Command::new(worker)
            .arg("compile-worker")
            .arg(format!("--meter-fuel={}", limits.meter_fuel))
            .arg(format!("--max-wasm-stack={}", limits.max_wasm_stack))
            .arg(format!("--max-memory={}", limits.max_compile_memory_bytes))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(failed)?;
        // The pipes are drained on their own threads, so the child never blocks on a full one.
        let mut stdin = child.stdin.take().expect("piped");
        let input = component.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let mut stdout = child.stdout.take().expect("piped");
        let output = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            stdout.read_to_end(&mut bytes).map(|_| bytes)
        });
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            // Only the first few KiB: the worker writes one line.
            let _ = (&mut stderr).take(16 << 10).read_to_string(&mut text);
            text
        });
        let started = Instant::now();
        let timeout = Duration::from_millis(limits.compile_timeout_ms);
        let status = loop {
            if let Some(status) = child.try_wait().map_err(failed)? {
                break status;
            }
            let abandoned = if cancel.is_cancelled() {
                Some(ModuleError::Abandoned)
            } else if started.elapsed() > timeout {
                Some(ModuleError::TooLong {
                    limit_ms: limits.compile_timeout_ms,
                })
            } else {
                None
            };
            if let Some(error) = abandoned {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = feeder.join();
        let artifact = output.join().expect("reader thread").map_err(failed)?;
        let message = errors.join().expect("reader thread");
        if status.success() {
            return Ok(artifact);
        }
        let message = message.trim();
        Err(match message.strip_prefix("invalid: ") {
            Some(reason) => ModuleError::Invalid(reason.to_string()),
            // Killed by a signal, or out of its address space (an allocation failure aborts).
            None if message.is_empty() || message.contains("memory allocation") => {
                ModuleError::TooBig {
                    limit: limits.max_compile_memory_bytes,
                }
            }
            None => ModuleError::Compile(super::output::cut(message).to_string()),
        })
    }
}

/// A compile slot, given back when dropped.
struct Slot<'a>(&'a Compiler);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.running.lock() -= 1;
        self.0.turn.notify_one();
    }
}

/// `prism compile-worker`: compiles the component on stdin to an artifact on stdout, within
/// an address-space limit of `max_memory` bytes (0: none). Failures go to stderr as one line,
/// `invalid: <reason>` for a module that does not validate. Returns the exit code.
pub fn worker(meter_fuel: bool, max_wasm_stack: usize, max_memory: u64) -> i32 {
    if max_memory > 0 {
        let limit = rustix::process::Rlimit {
            current: Some(max_memory),
            maximum: Some(max_memory),
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::As, limit) {
            eprintln!("cannot limit the compile's memory: {e}");
            return 1;
        }
    }
    let limits = Sandbox {
        meter_fuel,
        max_wasm_stack,
        ..Sandbox::default()
    };
    let run = || -> Result<Vec<u8>, String> {
        let mut component = Vec::new();
        std::io::stdin()
            .read_to_end(&mut component)
            .map_err(|e| e.to_string())?;
        let engine = wasmtime::Engine::new(&config(&limits)).map_err(|e| format!("{e:#}"))?;
        engine
            .precompile_component(&component)
            .map_err(|e| format!("invalid: {e:#}"))
    };
    match run() {
        Ok(artifact) => match std::io::stdout().write_all(&artifact) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Err(message) => {
            eprintln!("{message}");
            1
        }
    }
}
