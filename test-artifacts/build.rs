//! Builds the example projectors to components for Prism's tests and benches (the pattern of
//! wasmtime's `test-programs/artifacts`): the guest workspace is compiled into `OUT_DIR` with
//! whatever Wasm toolchain `prism-toolchain` finds, and `lib.rs` gets one path constant per
//! projector. The projectors written in C (`example-projectors/c/<name>/*.c`) are built by
//! `prism-toolchain`'s C route and get a `<NAME>_C` constant.

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
    build_c_projectors(&root, &guests.join("c"), &out_dir.join("c"), &mut consts)?;
    build_wat_fixtures(&root, &guests.join("fixtures/wat"), &out_dir, &mut consts)?;
    std::fs::write(out_dir.join("artifacts.rs"), consts)?;
    Ok(())
}

/// Builds each directory of `c_dir` (one projector, its `.c` files) with the C route and adds
/// its `<NAME>_C` and `<NAME>_C_CORE` constants to `consts`.
fn build_c_projectors(
    root: &Path,
    c_dir: &Path,
    out_dir: &Path,
    consts: &mut String,
) -> anyhow::Result<()> {
    for var in ["PRISM_CLANG", "PRISM_WASM_LD", "PRISM_WASI_SYSROOT"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let mut projectors: Vec<PathBuf> = std::fs::read_dir(c_dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    projectors.retain(|path| path.is_dir());
    projectors.sort();
    if projectors.is_empty() {
        return Ok(());
    }
    let toolchain = prism_toolchain::CToolchain::find()?;
    std::fs::create_dir_all(out_dir)?;
    for dir in projectors {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        sources.retain(|path| path.extension().is_some_and(|e| e == "c"));
        sources.sort();
        for path in &sources {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        let core = toolchain.build_projector(
            &name,
            &sources,
            &root.join("wit"),
            "projector-world",
            out_dir,
        )?;
        let component = prism_toolchain::componentize(&std::fs::read(&core)?)?;
        let component_path = out_dir.join(format!("{name}.component.wasm"));
        std::fs::write(&component_path, component)?;
        let ident = format!("{}_C", name.to_uppercase().replace('-', "_"));
        writeln!(
            consts,
            "/// The `{name}` projector written in C (`example-projectors/c/{name}`), as a component.\n\
             pub const {ident}: &str = {component:?};\n\
             /// The C `{name}` projector as a core module with its component type.\n\
             pub const {ident}_CORE: &str = {core:?};",
            component = component_path.display().to_string(),
            core = core.display().to_string(),
        )?;
    }
    Ok(())
}

/// Turns each hand-written core module in `wat_dir` (`<name>.wat`, for what no compiler emits)
/// into a projector component: its `<NAME>` constant.
fn build_wat_fixtures(
    root: &Path,
    wat_dir: &Path,
    out_dir: &Path,
    consts: &mut String,
) -> anyhow::Result<()> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(wat_dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    sources.retain(|path| path.extension().is_some_and(|e| e == "wat"));
    sources.sort();
    for path in sources {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let core = wat::parse_file(&path)?;
        let core = prism_toolchain::embed_world(&core, &root.join("wit"), "projector-world")?;
        let component = prism_toolchain::componentize(&core)?;
        let component_path = out_dir.join(format!("{name}.component.wasm"));
        std::fs::write(&component_path, component)?;
        writeln!(
            consts,
            "/// The hand-written `{name}` fixture (`example-projectors/fixtures/wat/{name}.wat`), as a component.\n\
             pub const {ident}: &str = {component:?};",
            ident = name.to_uppercase().replace('-', "_"),
            component = component_path.display().to_string(),
        )?;
    }
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
