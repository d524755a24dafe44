//! The WebAssembly side of Prism: one wasmtime [`Engine`] and [`Linker`] for the process, a
//! pre-instantiated component per module ([`Module`]), and a `Store` per running projector
//! ([`Instance`]).
//!
//! Modules arrive as bytes: a component implementing `prism:projector/projector-world`, or a
//! core module carrying wit-bindgen's component type (what `cargo build` for
//! `wasm32-unknown-unknown` writes), which is turned into a component first. A module may import
//! only Prism's `view` and `host` interfaces — no WASI — so projectors are pure and
//! deterministic.

mod bindings;
mod compile;
mod convert;
mod host;
mod limits;
mod output;

pub use compile::{Cancel, CancelOnDrop, worker as compile_worker};
pub use convert::{Descriptor, EventBatch, Subscription};
use host::HostState;
pub use limits::{Limit, Sandbox};
use limits::{Limiter, Written, describe_trap};
pub use output::{GuestOutput, OutputLine};

use crate::store::BatchView;
use bindings::ProjectorWorldPre;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are not WebAssembly at all.
    #[error("the upload is not a WebAssembly module or component")]
    NotWasm,
    /// The bytes are WebAssembly but do not validate.
    #[error("the WebAssembly does not validate: {0}")]
    Invalid(String),
    /// A core module without the component type a projector needs.
    #[error("the core module cannot become a projector component: {0}")]
    Componentize(String),
    /// The component imports something Prism does not provide (WASI, say): projectors may
    /// import only Prism's `view`, `host` and `types` interfaces.
    #[error("the component imports {}, which Prism does not provide: a projector may import only {}", .0.join(", "), ALLOWED_IMPORTS.join(", "))]
    Imports(Vec<String>),
    /// The component does not implement Prism's projector world (a missing or mistyped export).
    #[error("the component does not implement Prism's projector world: {0}")]
    World(String),
    /// Compiling took longer than the sandbox allows (a "compile bomb").
    #[error("the module took longer than {limit_ms} ms to compile (compile_timeout_ms)")]
    TooLong { limit_ms: u64 },
    /// Compiling needed more memory than the sandbox allows.
    #[error(
        "compiling the module needed more than {limit} bytes of memory (max_compile_memory_bytes)"
    )]
    TooBig { limit: u64 },
    /// The caller gave up before the compile finished.
    #[error("the compile was abandoned: its request is gone")]
    Abandoned,
    /// The compile worker failed for a reason of its own.
    #[error("compiling failed: {0}")]
    Compile(String),
    /// A stored module could not be read.
    #[error("module {hash} cannot be read: {reason}")]
    Unavailable { hash: String, reason: String },
}

/// The interfaces a projector may import.
pub const ALLOWED_IMPORTS: [&str; 3] = [
    "prism:projector/types@0.1.0",
    "prism:projector/view@0.1.0",
    "prism:projector/host@0.1.0",
];

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Instantiation, `describe` or `init` trapped.
    #[error("the projector trapped while starting: {0}")]
    Trap(String),
    /// `init` returned an error.
    #[error("the projector refused its configuration: {0}")]
    Init(String),
}

/// Why `apply` failed. The batch's writes are discarded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The guest returned an error for the event at `index` of the batch. The message is the
    /// guest's own; the event is named where the failure is shown (see `Fault`).
    #[error("{message}")]
    Guest {
        index: usize,
        position: u64,
        message: String,
    },
    /// The batch's writes broke a limit on writes ([`Limit::splits`]); which of its `events`
    /// wrote too much is not known (the SDK sends a batch's writes at its end), so the runner
    /// applies smaller batches until the event over the limit is alone. The instance is unusable.
    #[error("trapped: {message}")]
    Writes {
        events: usize,
        position: u64,
        message: String,
    },
    /// The guest trapped (a bug, or a sandbox limit hit) while applying the event at `index`;
    /// the instance is unusable.
    #[error("trapped: {message}")]
    Trap {
        index: usize,
        position: u64,
        message: String,
    },
}

impl ApplyError {
    /// The index in the batch of the event that failed.
    pub fn index(&self) -> usize {
        match self {
            ApplyError::Guest { index, .. } | ApplyError::Trap { index, .. } => *index,
            ApplyError::Writes { .. } => 0,
        }
    }

    /// The position of the event that failed.
    pub fn position(&self) -> u64 {
        match self {
            ApplyError::Guest { position, .. }
            | ApplyError::Trap { position, .. }
            | ApplyError::Writes { position, .. } => *position,
        }
    }
}

/// The process-wide WebAssembly engine and linker, with the cache of compiled modules.
#[derive(Clone)]
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Arc<Linker<HostState>>,
    /// Where compiled artifacts that Prism itself produced are kept (`<hash>.cwasm`).
    cache_dir: Option<PathBuf>,
    /// Where and how many at a time modules are compiled.
    compiler: Arc<compile::Compiler>,
    /// Modules compiled (or loaded) in this process, by hash.
    loaded: Arc<Mutex<HashMap<String, Module>>>,
    limits: Sandbox,
    output: GuestOutput,
}

/// A validated, compiled and pre-instantiated projector module.
#[derive(Clone)]
pub struct Module {
    /// sha256 of the component, hex: the module's identity.
    pub hash: String,
    pre: ProjectorWorldPre<HostState>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("hash", &self.hash).finish()
    }
}

/// An uploaded module, ready to store and run.
pub struct Upload {
    /// The compiled module.
    pub module: Module,
    /// The component's bytes, to store under `module.hash`.
    pub component: Vec<u8>,
    /// Where the compiled code came from.
    pub source: CompileSource,
}

/// Where a module's compiled code came from (the type the API shows).
pub use prism_client::wire::CompileSource;

impl Engine {
    /// A new engine with Prism's imports in its linker; compiled artifacts are cached in
    /// `cache_dir` when given; every instance runs under `limits`.
    pub fn new(cache_dir: Option<PathBuf>, limits: Sandbox) -> wasmtime::Result<Engine> {
        Engine::with_compile_worker(cache_dir, limits, None)
    }

    /// [`Engine::new`], compiling uploads in worker processes of the `prism` executable
    /// `worker` (`prism compile-worker`), whose time and memory are bounded.
    pub fn with_compile_worker(
        cache_dir: Option<PathBuf>,
        limits: Sandbox,
        worker: Option<PathBuf>,
    ) -> wasmtime::Result<Engine> {
        let mut config = compile::config(&limits);
        // `PRISM_PERF_MAP=1` names guest functions for `perf` (/tmp/perf-<pid>.map).
        if std::env::var_os("PRISM_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        bindings::ProjectorWorld::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        // `begin-event` refills the fuel from inside the call, which the generated binding
        // (data only, no store) cannot: defined again over the store, it needs no call hook
        // on every host call.
        linker.allow_shadowing(true);
        linker.instance("prism:projector/host@0.1.0")?.func_wrap(
            "begin-event",
            |mut store: wasmtime::StoreContextMut<'_, HostState>, (index,): (u32,)| {
                store.data_mut().begin(index)?;
                if let Some(fuel) = store.data().fuel_per_event {
                    store.set_fuel(fuel)?;
                }
                Ok(())
            },
        )?;
        linker.allow_shadowing(false);
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Engine {
            engine,
            linker: Arc::new(linker),
            cache_dir,
            compiler: Arc::new(compile::Compiler::new(worker, limits)),
            loaded: Arc::default(),
            limits,
            output: GuestOutput::default(),
        })
    }

    /// What each projector wrote with `host.log`.
    pub fn guest_output(&self) -> &GuestOutput {
        &self.output
    }

    /// The limits instances run under.
    pub fn limits(&self) -> Sandbox {
        self.limits
    }

    /// Validates and compiles uploaded bytes (a component, or a core module with its component
    /// type). Compiling is CPU-heavy: call it off the async executor. A module whose hash is
    /// known is not compiled again.
    pub fn compile(&self, wasm: &[u8]) -> Result<Upload, ModuleError> {
        self.compile_cancellable(wasm, &Cancel::default())
    }

    /// [`Engine::compile`], abandoned when `cancel` is set.
    pub fn compile_cancellable(&self, wasm: &[u8], cancel: &Cancel) -> Result<Upload, ModuleError> {
        let component = if wasmparser::Parser::is_component(wasm) {
            wasm.to_vec()
        } else if wasmparser::Parser::is_core_wasm(wasm) {
            wasmparser::Validator::new()
                .validate_all(wasm)
                .map_err(|e| ModuleError::Invalid(e.to_string()))?;
            prism_toolchain::componentize(wasm)
                .map_err(|e| ModuleError::Componentize(format!("{e:#}")))?
        } else {
            return Err(ModuleError::NotWasm);
        };
        let hash = hex::encode(Sha256::digest(&component));
        let (module, source) = self.load_cancellable(&hash, || Ok(component.clone()), cancel)?;
        Ok(Upload {
            module,
            component,
            source,
        })
    }

    /// The module with `hash`, from memory, the disk cache, or compiled from the bytes `read`
    /// returns (which must be the component with that hash).
    pub fn load(
        &self,
        hash: &str,
        read: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> Result<(Module, CompileSource), ModuleError> {
        self.load_cancellable(hash, read, &Cancel::default())
    }

    fn load_cancellable(
        &self,
        hash: &str,
        read: impl FnOnce() -> std::io::Result<Vec<u8>>,
        cancel: &Cancel,
    ) -> Result<(Module, CompileSource), ModuleError> {
        if let Some(module) = self.loaded.lock().get(hash) {
            return Ok((module.clone(), CompileSource::Memory));
        }
        let cached = self.cache_path(hash).and_then(|path| {
            // SAFETY: the cache dir holds only artifacts this process's code serialized
            // (`store_artifact`), never bytes a user sent; wasmtime checks that the artifact
            // matches this engine's version and configuration and refuses it otherwise.
            let loaded = unsafe { Component::deserialize_file(&self.engine, &path) };
            loaded
                .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "ignoring a stale compiled artifact"))
                .ok()
        });
        let (component, source) = match cached {
            Some(component) => (component, CompileSource::DiskCache),
            None => {
                let bytes = read().map_err(|e| ModuleError::Unavailable {
                    hash: hash.to_string(),
                    reason: e.to_string(),
                })?;
                // Compiling validates (with wasmparser) first.
                let component = self.compiler.compile(&self.engine, &bytes, cancel)?;
                check_imports(&self.engine, &component)?;
                (component, CompileSource::Compiled)
            }
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ModuleError::World(format!("{e:#}")))?;
        let pre = ProjectorWorldPre::new(instance_pre)
            .map_err(|e| ModuleError::World(format!("{e:#}")))?;
        let module = Module {
            hash: hash.to_string(),
            pre,
        };
        self.loaded.lock().insert(hash.to_string(), module.clone());
        Ok((module, source))
    }

    /// Forgets a module's compiled code kept in memory (its stored module was collected).
    pub fn forget(&self, hash: &str) {
        self.loaded.lock().remove(hash);
    }

    fn cache_path(&self, hash: &str) -> Option<PathBuf> {
        let path = self.cache_dir.as_ref()?.join(format!("{hash}.cwasm"));
        path.exists().then_some(path)
    }

    /// Keeps `module`'s compiled code in the on-disk cache, unless it is there already (best
    /// effort: a failure only costs a compile). Called once a module is accepted, so a refused
    /// upload leaves nothing on disk.
    pub fn keep(&self, module: &Module) {
        if self.cache_path(&module.hash).is_none() {
            self.store_artifact(&module.hash, module.pre.instance_pre().component());
        }
    }

    /// Writes a compiled artifact to the cache.
    fn store_artifact(&self, hash: &str, component: &Component) {
        let Some(dir) = &self.cache_dir else { return };
        // A unique temporary file per writer: two deploys of one module may compile it at
        // the same moment, and this file is later loaded with an `unsafe` deserialize.
        let write = || -> anyhow::Result<()> {
            let bytes = component
                .serialize()
                .map_err(|e| anyhow::anyhow!("{e:#}"))?;
            crate::data_dir::write_atomic(&dir.join(format!("{hash}.cwasm")), &bytes)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "caching a compiled module failed");
        }
    }

    /// Starts an instance of `module` for the projector `name`: instantiates it, asks it to
    /// describe itself, and passes it `config`.
    pub fn instantiate(
        &self,
        module: &Module,
        name: &str,
        config: &str,
    ) -> Result<Instance, InstanceError> {
        let trap = |e: wasmtime::Error| InstanceError::Trap(describe_trap(&e, &self.limits));
        let limits = self.limits;
        let mut store = Store::new(
            &self.engine,
            HostState {
                projector: name.to_string(),
                module: module.hash.clone(),
                log: self.output.of(name),
                batch: None,
                limiter: Limiter::new(&limits),
                sandbox: limits,
                written: Written::default(),
                fuel_per_event: limits.meter_fuel.then_some(limits.fuel_per_event),
                batch_len: 0,
                next_event: 0,
                current_event: None,
            },
        );
        store.limiter(|state| &mut state.limiter);
        if limits.meter_fuel {
            store.set_fuel(limits.fuel_to_start).map_err(trap)?;
        }
        let bindings = module.pre.instantiate(&mut store).map_err(trap)?;
        let guest = bindings.prism_projector_projector();
        let descriptor = guest.call_describe(&mut store).map_err(trap)?.into();
        guest
            .call_init(&mut store, config)
            .map_err(trap)?
            .map_err(|e| InstanceError::Init(output::cut(&e).to_string()))?;
        Ok(Instance {
            limits,
            module: module.hash.clone(),
            config: config.to_string(),
            store,
            bindings,
            descriptor,
        })
    }
}

/// Refuses a component that imports anything but Prism's interfaces, naming what it imports.
fn check_imports(engine: &wasmtime::Engine, component: &Component) -> Result<(), ModuleError> {
    let unknown: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !ALLOWED_IMPORTS.contains(name))
        .map(str::to_string)
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ModuleError::Imports(unknown))
    }
}

/// A running instance of a projector module, with its own `Store`.
pub struct Instance {
    limits: Sandbox,
    module: String,
    config: String,
    store: Store<HostState>,
    bindings: bindings::ProjectorWorld,
    descriptor: Descriptor,
}

impl Instance {
    /// The hash of the module this is an instance of.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The configuration string it was started with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// What the module said about itself.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Applies `batch` on top of `view`. Returns the view with the batch's writes (to commit)
    /// or the failure (the writes are then to be dropped). After a trap, the instance must not
    /// be used again.
    #[tracing::instrument(level = "debug", skip_all, fields(module = %self.module, events = batch.len()))]
    pub fn apply(
        &mut self,
        batch: &EventBatch,
        view: BatchView,
    ) -> (BatchView, Result<(), ApplyError>) {
        let state = self.store.data_mut();
        state.batch = Some(view);
        state.batch_len = batch.len() as u32;
        state.next_event = 0;
        state.current_event = None;
        state.written = Written::default();
        let fuel_per_event = state.fuel_per_event;
        // Fuel for the code before the first `begin-event`; each event then gets its own.
        let refuel = match fuel_per_event {
            Some(fuel) => self.store.set_fuel(fuel),
            None => Ok(()),
        };
        let outcome = refuel.and_then(|()| {
            self.bindings
                .prism_projector_projector()
                .call_apply(&mut self.store, &batch.inner)
        });
        let view = self
            .store
            .data_mut()
            .batch
            .take()
            .expect("the batch view stays in the store during apply");
        let outcome = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // A module naming an event its batch does not have is held to the event it
                // was applying (the last `begin-event`), so splitting the batch ends.
                let index = match e.index as usize {
                    index if index < batch.len() => index,
                    _ => self.store.data().current_event.unwrap_or(0) as usize,
                };
                Err(ApplyError::Guest {
                    index,
                    position: batch.position(index).unwrap_or_default(),
                    message: output::cut(&e.message).to_string(),
                })
            }
            Err(trap) if trap.downcast_ref::<Limit>().is_some_and(Limit::splits) => {
                Err(ApplyError::Writes {
                    events: batch.len(),
                    position: batch.position(0).unwrap_or_default(),
                    message: describe_trap(&trap, &self.limits),
                })
            }
            Err(trap) => {
                let index = self.store.data().current_event.unwrap_or(0) as usize;
                Err(ApplyError::Trap {
                    index,
                    position: batch.position(index).unwrap_or_default(),
                    message: describe_trap(&trap, &self.limits),
                })
            }
        };
        (view, outcome)
    }
}
