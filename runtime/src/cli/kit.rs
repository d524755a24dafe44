//! The authoring kit's commands (`prism new`, `build`, `test`) and `prism repair`: they work on
//! files, with no server.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// `prism new`: a projector crate `dir/name`.
pub fn new(name: &str, dir: &Path, sdk: Option<PathBuf>) -> Result<()> {
    let sdk = sdk.unwrap_or_else(|| PathBuf::from(crate::kit::BUILT_SDK_DIR));
    let root = crate::kit::new_project(name, dir, &sdk)?;
    println!("created {}", root.display());
    println!(
        "next: cd {} && prism build && prism test fixtures/events.jsonl --expect fixtures/expected.json",
        root.display()
    );
    Ok(())
}

/// `prism build`: the crate in `dir` to a component.
pub async fn build(dir: PathBuf) -> Result<()> {
    let built = tokio::task::spawn_blocking(move || crate::kit::build(&dir)).await??;
    println!(
        "built {} ({} bytes, module {})",
        built.wasm.display(),
        built.bytes,
        built.hash
    );
    Ok(())
}

/// `prism test`: runs the projector over the fixture and prints the view (and any difference
/// from the expected view, which fails the command).
pub async fn test(
    fixture: &Path,
    expect: Option<&Path>,
    wasm: Option<PathBuf>,
    dir: PathBuf,
    config: &str,
) -> Result<()> {
    let events = crate::kit::read_fixture(fixture)?;
    let expected = expect
        .map(|path| -> Result<Map<String, Value>> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} must be a JSON object of key → value", path.display()))
        })
        .transpose()?;
    let wasm = match wasm {
        Some(path) => path,
        None => {
            let built = tokio::task::spawn_blocking(move || crate::kit::build(&dir)).await??;
            eprintln!("built {}", built.wasm.display());
            built.wasm
        }
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let count = events.len();
    let name = wasm.file_stem().and_then(|s| s.to_str()).unwrap_or("test");
    let (view, delivered) = match crate::kit::run_fixture(name, &bytes, events, config).await? {
        crate::kit::Outcome::View { view, delivered } => (view, delivered),
        crate::kit::Outcome::Faulted { fault, view } => {
            println!("{}", serde_json::to_string_pretty(&view)?);
            let at = match (fault.position, &fault.event_type, &fault.stream) {
                (Some(p), Some(t), Some(s)) => format!(" at event {p} ({t} in {s}; line order)"),
                (Some(p), _, _) => format!(" at event {p} (line order)"),
                _ => String::new(),
            };
            return Err(anyhow::anyhow!(
                "the projector failed{at}: {}",
                fault.message
            ));
        }
    };
    println!("{}", serde_json::to_string_pretty(&view)?);
    let applied = match count as u64 - delivered {
        0 => format!("{count} events applied"),
        skipped => format!(
            "{delivered} of {count} events applied ({skipped} not in the projector's subscription)"
        ),
    };
    let Some((path, expected)) = expect.zip(expected) else {
        eprintln!("{applied}; {} keys in the view", view.len());
        return Ok(());
    };
    let differences = crate::kit::diff(&expected, &view);
    if differences.is_empty() {
        eprintln!(
            "ok: {applied}; the view matches {} ({} keys)",
            path.display(),
            view.len()
        );
        return Ok(());
    }
    for line in &differences {
        eprintln!("{line}");
    }
    Err(anyhow::anyhow!(
        "the view differs from {} in {} keys",
        path.display(),
        differences.len()
    ))
}

/// `prism repair`: checks a data dir, moving damaged views aside.
pub fn repair(data_dir: &Path) -> Result<()> {
    let repairs = crate::server::repair(data_dir)?;
    if repairs.is_empty() {
        println!(
            "{}: every file opens; nothing to repair",
            data_dir.display()
        );
    }
    for crate::server::Repair::ViewMovedAside {
        file,
        moved_to,
        error,
    } in repairs
    {
        println!(
            "damaged view {} moved to {} ({error}); its projector rebuilds it from the log at the next start",
            file.display(),
            moved_to.display()
        );
    }
    Ok(())
}
