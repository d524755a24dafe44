//! The newcomer's guide in `guest-sdk/README.md`, run line by line: `prism new`, `prism build`,
//! `prism test`, deploy to a real Prism on a real socket, append, and read the view — the
//! output must be what the guide says. If the guide changes, this runs the new guide.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The guide's `sh` block (the one after the marker comment) and the `json` block after it.
fn guide() -> (Vec<String>, Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let marker = text
        .find("runtime/tests/guide.rs")
        .expect("the guide names this test");
    let block = |from: usize, fence: &str| -> (String, usize) {
        let start = from + text[from..].find(fence).expect("a fenced block") + fence.len();
        let end = start + text[start..].find("```").expect("a closed block");
        (text[start..end].to_string(), end + 3)
    };
    let (commands, after) = block(marker, "```sh\n");
    let (output, _) = block(after, "```json\n");
    let commands = commands
        .lines()
        .map(|line| line.split("  #").next().unwrap().trim().to_string())
        .filter(|line| !line.is_empty())
        .collect();
    (commands, serde_json::from_str(&output).unwrap())
}

fn prism(dir: &Path, url: &str, args: &[String]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_prism"))
        .current_dir(dir)
        .env("PRISM_URL", url)
        .env_remove("PRISM_GUEST_SDK")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guide_goes_from_prism_new_to_a_queried_view() {
    let (commands, expected) = guide();
    let scratch = tempfile::tempdir().unwrap();
    let mut cwd: PathBuf = scratch.path().to_path_buf();
    let mut server = None;
    let mut url = String::from("http://127.0.0.1:1");
    let mut last = None;
    for line in &commands {
        let words = shlex::split(line).unwrap_or_else(|| panic!("cannot split {line:?}"));
        match words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["prism", "serve", "&"] => {
                // The guide's server: the same runtime, on a free port.
                let (started, client) = common::start(&cwd.join("prism-data")).await;
                url = client.base.clone();
                server = Some(started);
            }
            ["cd", dir] => cwd = cwd.join(dir),
            ["prism", ..] => {
                let args = words[1..].to_vec();
                let (dir, url) = (cwd.clone(), url.clone());
                let output = tokio::task::spawn_blocking(move || prism(&dir, &url, &args))
                    .await
                    .unwrap();
                assert!(
                    output.status.success(),
                    "`{line}` failed:\n{}\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                last = Some(output);
            }
            _ => panic!("the guide runs {line:?}, which this test does not know how to run"),
        }
    }
    let printed: Value = serde_json::from_slice(&last.expect("the guide runs commands").stdout)
        .expect("the last command prints JSON");
    assert_eq!(printed, expected, "the guide's last output");

    // `prism build` takes the crate's directory relative to where it runs.
    let crate_name = cwd.file_name().unwrap().to_str().unwrap().to_string();
    let from_parent = prism(cwd.parent().unwrap(), &url, &["build".into(), crate_name]);
    assert!(
        from_parent.status.success(),
        "{}",
        String::from_utf8_lossy(&from_parent.stderr)
    );

    // `prism test` fails on a difference and names it.
    let expected_path = cwd.join("fixtures/expected.json");
    let text = std::fs::read_to_string(&expected_path).unwrap();
    std::fs::write(
        &expected_path,
        text.replace("\"revenue\": 250", "\"revenue\": 999"),
    )
    .unwrap();
    let args: Vec<String> = [
        "test",
        "fixtures/events.jsonl",
        "--expect",
        "fixtures/expected.json",
        "--wasm",
        "target/prism/hello.wasm",
    ]
    .map(String::from)
    .to_vec();
    let failed = prism(&cwd, &url, &args);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("~ totals: expected") && stderr.contains("differs from"),
        "{stderr}"
    );
    server.expect("the guide starts a server").stop().await;
}
