//! The files `prism new` writes (under `template/`, with `{{name}}` and `{{sdk}}` filled in).

use std::path::Path;

const CARGO_TOML: &str = include_str!("template/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("template/lib.rs.tmpl");
const EVENTS: &str = include_str!("template/events.jsonl");
const EXPECTED: &str = include_str!("template/expected.json");
const README: &str = include_str!("template/README.md.tmpl");
const GITIGNORE: &str = include_str!("template/gitignore.tmpl");

/// Each file's path in the crate and its text.
pub fn files(name: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    // TOML basic strings take `\` escapes: write the path with forward slashes.
    let sdk = sdk.display().to_string().replace('\\', "/");
    let fill = |text: &str| text.replace("{{name}}", name).replace("{{sdk}}", &sdk);
    vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        ("fixtures/events.jsonl", EVENTS.to_string()),
        ("fixtures/expected.json", EXPECTED.to_string()),
        ("README.md", fill(README)),
        (".gitignore", GITIGNORE.to_string()),
    ]
}
