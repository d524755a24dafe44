//! The projector authoring kit behind `prism new`, `prism build` and `prism test`: scaffold a
//! projector crate, build it to a deployable component, and run it against a file of events
//! with the real runtime (redb log, wasmtime, view store) — no server needed.

mod templates;

use crate::engine::{Engine, Sandbox};
use crate::log::{EventLog, ExpectedVersion, NewEvent};
use crate::projector::State;
use crate::store::ViewStore;
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the guest SDK's sources were when this `prism` was built (the default `--sdk`).
pub const BUILT_SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// Creates the projector crate `name` in `dir/name`, against the guest SDK at `sdk`.
/// Returns the crate's directory.
pub fn new_project(name: &str, dir: &Path, sdk: &Path) -> Result<PathBuf> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "{name:?} is not a good projector name: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|sdk| sdk.join("Cargo.toml").is_file())
        .with_context(|| {
            format!(
                "the guest SDK is not at {} (give its directory, `guest-sdk/` of a Prism checkout, with --sdk)",
                sdk.display()
            )
        })?;
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    for (path, text) in templates::files(name, &sdk) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("files are inside the crate"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root)
}

/// A built projector.
#[derive(Debug)]
pub struct Built {
    /// The component, ready for `prism deploy`.
    pub wasm: PathBuf,
    /// sha256 of the component (its module hash once deployed).
    pub hash: String,
    pub bytes: usize,
}

/// Builds the projector crate at `dir` for Wasm (finding a toolchain the way Prism's own build
/// does) and writes the component to `dir/target/prism/<name>.wasm`.
pub fn build(dir: &Path) -> Result<Built> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("no projector crate at {} (no Cargo.toml)", dir.display()))?;
    let name = package_name(&text)
        .with_context(|| format!("{} has no [package] name", manifest.display()))?;
    let toolchain = prism_toolchain::Toolchain::find()?;
    let target_dir = dir.join("target");
    let artifact = prism_toolchain::build_package(&toolchain, dir, &target_dir, &name)?;
    let core = std::fs::read(&artifact.core_module)?;
    let component = prism_toolchain::componentize(&core).with_context(|| {
        format!(
            "{} is not a Prism projector",
            artifact.core_module.display()
        )
    })?;
    let out = target_dir.join("prism").join(format!("{name}.wasm"));
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(&out, &component)?;
    Ok(Built {
        wasm: out,
        hash: hex::encode(Sha256::digest(&component)),
        bytes: component.len(),
    })
}

fn package_name(cargo_toml: &str) -> Option<String> {
    let manifest: toml::Table = toml::from_str(cargo_toml).ok()?;
    Some(manifest.get("package")?.get("name")?.as_str()?.to_string())
}

/// One line of a fixture file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureEvent {
    stream: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// Reads a fixture: one JSON event per line, `{"stream", "type", "data", "metadata"?}`; blank
/// lines and lines starting with `//` are skipped.
pub fn read_fixture(path: &Path) -> Result<Vec<(String, NewEvent)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the fixture {}", path.display()))?;
    let mut events = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let event: FixtureEvent = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not an event {{\"stream\", \"type\", \"data\", \"metadata\"?}}",
                path.display(),
                number + 1
            )
        })?;
        events.push((
            event.stream,
            NewEvent {
                event_type: event.event_type,
                data: serde_json::to_vec(&event.data)?,
                metadata: event.metadata.map(|m| serde_json::to_vec(&m)).transpose()?,
                id: None,
            },
        ));
    }
    Ok(events)
}

/// What a projector made of a fixture.
#[derive(Debug)]
pub enum Outcome {
    /// Every event applied: the whole view (values as JSON; other bytes as `{"base64": ...}`),
    /// and how many events the projector's subscription let through to it.
    View {
        view: Map<String, Value>,
        delivered: u64,
    },
    /// The projector failed; `view` is what it had committed before.
    Faulted {
        fault: crate::projector::Fault,
        view: Map<String, Value>,
    },
}

/// Runs the projector `wasm` (a component or core module) deployed as `name` over `events`
/// with the real runtime in a scratch directory, under the default sandbox limits, with the
/// deployment `config`.
pub async fn run_fixture(
    name: &str,
    wasm: &[u8],
    events: Vec<(String, NewEvent)>,
    config: &str,
) -> Result<Outcome> {
    let scratch = tempfile::tempdir()?;
    let log = EventLog::open(&scratch.path().join("log.redb"))?;
    for (stream, event) in events {
        log.append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .with_context(|| format!("appending to {stream:?}"))?;
    }
    let wasm = wasm.to_vec();
    let config = config.to_string();
    let name = name.to_string();
    let path = scratch.path().join("view.redb");
    tokio::task::spawn_blocking(move || -> Result<Outcome> {
        let engine = Engine::new(None, Sandbox::default())
            .map_err(|e| anyhow::anyhow!("starting the WebAssembly engine: {e:#}"))?;
        let upload = engine.compile(&wasm)?;
        let instance = engine.instantiate(&upload.module, &name, &config)?;
        let store = Arc::new(ViewStore::open(&path)?);
        let status =
            crate::projector::catch_up(&engine, &upload.module, instance, &log, store.clone());
        let view = whole_view(&store)?;
        Ok(match (status.state, status.error) {
            (State::Faulted, Some(fault)) => Outcome::Faulted { fault, view },
            _ => Outcome::View {
                view,
                delivered: status.events_applied,
            },
        })
    })
    .await?
}

fn whole_view(store: &ViewStore) -> Result<Map<String, Value>> {
    let snapshot = store.snapshot()?;
    let mut view = Map::new();
    for (key, value) in snapshot.scan("", None, usize::MAX)? {
        let value = serde_json::from_slice(&value).unwrap_or_else(|_| {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&value) })
        });
        view.insert(key, value);
    }
    Ok(view)
}

/// How an actual view differs from an expected one, one line per key (empty: equal).
pub fn diff(expected: &Map<String, Value>, actual: &Map<String, Value>) -> Vec<String> {
    let mut lines = Vec::new();
    let keys: std::collections::BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    for key in keys {
        match (expected.get(key), actual.get(key)) {
            (Some(e), Some(a)) if e == a => {}
            (Some(e), Some(a)) => lines.push(format!("~ {key}: expected {e}, got {a}")),
            (Some(e), None) => lines.push(format!("- {key}: expected {e}, missing")),
            (None, Some(a)) => lines.push(format!("+ {key}: unexpected {a}")),
            (None, None) => unreachable!("the key came from one of the maps"),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_every_differing_key() {
        let expected = json!({"a": 1, "b": 2, "c": 3});
        let actual = json!({"a": 1, "b": 5, "d": 4});
        let lines = diff(expected.as_object().unwrap(), actual.as_object().unwrap());
        assert_eq!(
            lines,
            [
                "~ b: expected 2, got 5",
                "- c: expected 3, missing",
                "+ d: unexpected 4"
            ]
        );
    }

    #[test]
    fn fixtures_skip_blank_and_comment_lines_and_name_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            "// a comment\n{\"stream\":\"s-1\",\"type\":\"A\",\"data\":{\"x\":1}}\n\n{\"stream\":\"s-1\"}\n",
        )
        .unwrap();
        let error = read_fixture(&path).unwrap_err();
        assert!(format!("{error:#}").contains("events.jsonl:4"), "{error:#}");
        std::fs::write(&path, "{\"stream\":\"s-1\",\"type\":\"A\"}\n").unwrap();
        let events = read_fixture(&path).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1.data, b"null");
    }

    #[test]
    fn names_must_suit_a_crate() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "1st", "has space", "dots.no"] {
            assert!(
                new_project(bad, dir.path(), Path::new(BUILT_SDK_DIR)).is_err(),
                "{bad:?}"
            );
        }
        let error = new_project("fine", dir.path(), &dir.path().join("nowhere")).unwrap_err();
        assert!(error.to_string().contains("--sdk"), "{error}");
    }
}
