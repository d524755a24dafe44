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
mod convert;
mod host;

pub use convert::{Descriptor, EventBatch};
use host::HostState;

use crate::store::BatchView;
use bindings::ProjectorWorldPre;
use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are not WebAssembly at all.
    #[error("the upload is not a WebAssembly module or component")]
    NotWasm,
    /// A core module without the component type a projector needs.
    #[error("the core module cannot become a projector component: {0}")]
    Componentize(String),
    /// The component is invalid or cannot be compiled.
    #[error("the component is invalid: {0}")]
    Invalid(String),
    /// The component does not implement Prism's projector world (a missing export, or an
    /// import Prism does not provide, such as WASI).
    #[error("the component does not fit Prism's projector world: {0}")]
    World(String),
}

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
    /// The guest returned an error for the event at `index` of the batch.
    #[error("event {position} failed: {message}")]
    Guest {
        index: usize,
        position: u64,
        message: String,
    },
    /// The guest trapped; the instance is unusable.
    #[error("the projector trapped: {0}")]
    Trap(String),
}

/// The process-wide WebAssembly engine and linker.
#[derive(Clone)]
pub struct Engine {
    engine: wasmtime::Engine,
    linker: std::sync::Arc<Linker<HostState>>,
}

/// A validated, compiled and pre-instantiated projector module.
#[derive(Clone)]
pub struct Module {
    /// sha256 of the component, hex: the module's identity.
    pub hash: String,
    /// The component's bytes (what Prism stores).
    pub component: std::sync::Arc<[u8]>,
    pre: ProjectorWorldPre<HostState>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("hash", &self.hash).finish()
    }
}

impl Engine {
    /// A new engine with Prism's imports in its linker.
    pub fn new() -> wasmtime::Result<Engine> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        bindings::ProjectorWorld::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        Ok(Engine {
            engine,
            linker: std::sync::Arc::new(linker),
        })
    }

    /// Validates and compiles `wasm` (a component, or a core module with its component type).
    /// Compiling is CPU-heavy: call it off the async executor.
    pub fn compile(&self, wasm: &[u8]) -> Result<Module, ModuleError> {
        let component_bytes = if wasmparser::Parser::is_component(wasm) {
            wasm.to_vec()
        } else if wasmparser::Parser::is_core_wasm(wasm) {
            prism_toolchain::componentize(wasm)
                .map_err(|e| ModuleError::Componentize(format!("{e:#}")))?
        } else {
            return Err(ModuleError::NotWasm);
        };
        let component = Component::new(&self.engine, &component_bytes)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ModuleError::World(format!("{e:#}")))?;
        let pre = ProjectorWorldPre::new(instance_pre)
            .map_err(|e| ModuleError::World(format!("{e:#}")))?;
        Ok(Module {
            hash: hex::encode(Sha256::digest(&component_bytes)),
            component: component_bytes.into(),
            pre,
        })
    }

    /// Starts an instance of `module` for the projector `name`: instantiates it, asks it to
    /// describe itself, and passes it `config`.
    pub fn instantiate(
        &self,
        module: &Module,
        name: &str,
        config: &str,
    ) -> Result<Instance, InstanceError> {
        let trap = |e: wasmtime::Error| InstanceError::Trap(format!("{e:#}"));
        let mut store = Store::new(
            &self.engine,
            HostState {
                projector: name.to_string(),
                batch: None,
            },
        );
        let bindings = module.pre.instantiate(&mut store).map_err(trap)?;
        let guest = bindings.prism_projector_projector();
        let descriptor = guest.call_describe(&mut store).map_err(trap)?.into();
        guest
            .call_init(&mut store, config)
            .map_err(trap)?
            .map_err(InstanceError::Init)?;
        Ok(Instance {
            store,
            bindings,
            descriptor,
        })
    }
}

/// A running instance of a projector module, with its own `Store`.
pub struct Instance {
    store: Store<HostState>,
    bindings: bindings::ProjectorWorld,
    descriptor: Descriptor,
}

impl Instance {
    /// What the module said about itself.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Applies `batch` on top of `view`. Returns the view with the batch's writes (to commit)
    /// or the failure (the writes are then to be dropped). After a trap, the instance must not
    /// be used again.
    pub fn apply(
        &mut self,
        batch: &EventBatch,
        view: BatchView,
    ) -> (BatchView, Result<(), ApplyError>) {
        self.store.data_mut().batch = Some(view);
        let outcome = self
            .bindings
            .prism_projector_projector()
            .call_apply(&mut self.store, &batch.inner);
        let view = self
            .store
            .data_mut()
            .batch
            .take()
            .expect("the batch view stays in the store during apply");
        let outcome = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let index = e.index as usize;
                Err(ApplyError::Guest {
                    index,
                    position: batch.position(index).unwrap_or_default(),
                    message: e.message,
                })
            }
            Err(trap) => Err(ApplyError::Trap(format!("{trap:#}"))),
        };
        (view, outcome)
    }
}
