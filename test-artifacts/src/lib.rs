//! Paths to the example projectors, built by this crate's build script.
//!
//! Each constant names a `.wasm` file: `EVENT_COUNTER` is a component, `EVENT_COUNTER_CORE` the
//! core module the compiler wrote (with wit-bindgen's component type embedded).

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// Reads a built projector.
pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}
