//! Builds the example projectors to components for Prism's tests and benches (the pattern of
//! wasmtime's `test-programs/artifacts`): the guest workspace is compiled into `OUT_DIR` with
//! whatever Wasm toolchain `prism-toolchain` finds, and `lib.rs` gets one path constant per
//! projector.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let guests = root.join("example-projectors");
    watch(&root, &guests);

    println!("cargo:rerun-if-env-changed=PRISM_WASM_TOOLCHAIN");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let toolchain = prism_toolchain::Toolchain::find()?;
    let artifacts =
        prism_toolchain::build_workspace(&toolchain, &guests, &out_dir.join("target"), &[])?;

    let mut consts = String::new();
    for artifact in &artifacts {
        let core = std::fs::read(&artifact.core_module)?;
        let component = prism_toolchain::componentize(&core)?;
        let component_path = out_dir.join(format!("{}.component.wasm", artifact.name));
        std::fs::write(&component_path, component)?;
        let ident = artifact.name.to_uppercase().replace('-', "_");
        writeln!(
            consts,
            "/// The `{name}` projector as a component.\npub const {ident}: &str = {component:?};\n\
             /// The `{name}` projector as a core module with its component type (not yet a component).\n\
             pub const {ident}_CORE: &str = {core:?};",
            name = artifact.name,
            component = component_path.display().to_string(),
            core = artifact.core_module.display().to_string(),
        )?;
    }
    std::fs::write(out_dir.join("artifacts.rs"), consts)?;
    Ok(())
}

/// Rebuild when the projectors, the SDK or the WIT change (not when a guest build elsewhere
/// touches `example-projectors/target`).
fn watch(root: &Path, guests: &Path) {
    for entry in std::fs::read_dir(guests).unwrap().flatten() {
        if entry.file_name() != "target" {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
    for path in [
        "guest-sdk/src",
        "guest-sdk/Cargo.toml",
        "wit",
        "toolchain/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}
