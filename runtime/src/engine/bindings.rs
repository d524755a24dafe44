//! Host bindings generated from `wit/projector.wit`. Only `engine` uses these types; the rest
//! of Prism sees domain types (see `convert`).

wasmtime::component::bindgen!({
    world: "projector-world",
    path: "../wit",
    imports: { default: trappable },
});

pub use self::prism::projector::{host, types, view};
