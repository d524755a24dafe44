//! The `prism` CLI against a real server: deploy (following a rebuild to its end), append,
//! get, scan, ls, lifecycle, and errors.

mod common;

use common::artifacts;
use serde_json::{Value, json};
use std::process::Output;

async fn prism(url: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_prism"));
    command.args(args).env("PRISM_URL", url);
    command.output().await.expect("running prism")
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "prism failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_drives_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let url = client.base.as_str();

    let deployed = stdout_json(&prism(url, &["deploy", "tally", artifacts::TALLY_V1]).await);
    assert_eq!(deployed["mode"], "created");
    let appended = stdout_json(
        &prism(
            url,
            &[
                "append",
                "s-1",
                "--type",
                "A",
                "--data",
                r#"{"x":1}"#,
                "--expected-version",
                "0",
            ],
        )
        .await,
    );
    assert_eq!(appended["stream_version"], 1);
    client.wait_caught_up("tally").await;
    assert_eq!(
        stdout_json(&prism(url, &["get", "tally", "count/A"]).await),
        json!(1)
    );
    let scan = stdout_json(&prism(url, &["scan", "tally", "--prefix", "count/"]).await);
    assert_eq!(scan["items"], json!([{"key": "count/A", "value": 1}]));

    // A rebuild: the command returns once the new generation serves.
    let deployed = stdout_json(&prism(url, &["deploy", "tally", artifacts::TALLY_V3]).await);
    assert_eq!(deployed["mode"], "rebuild");
    let status = stdout_json(&prism(url, &["status", "tally"]).await);
    assert_eq!(
        (status["generation"].clone(), status["rebuild"].clone()),
        (json!(2), Value::Null)
    );

    let paused = stdout_json(&prism(url, &["pause", "tally"]).await);
    assert_eq!(paused["state"], "paused");
    let ls = prism(url, &["ls"]).await;
    assert!(ls.status.success());
    let table = String::from_utf8_lossy(&ls.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("tally") && l.contains("paused")),
        "{table}"
    );

    // Errors: the server's message, and a failing exit status.
    let conflict = prism(
        url,
        &[
            "append",
            "s-1",
            "--type",
            "A",
            "--data",
            "1",
            "--expected-version",
            "0",
        ],
    )
    .await;
    assert!(!conflict.status.success());
    assert!(
        String::from_utf8_lossy(&conflict.stderr).contains("409"),
        "{conflict:?}"
    );
    let missing = prism(url, &["get", "tally", "no/such/key"]).await;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let bad_json = prism(url, &["append", "s-1", "--type", "A", "--data", "{nope"]).await;
    assert!(String::from_utf8_lossy(&bad_json.stderr).contains("--data must be JSON"));
    server.stop().await;

    let unreachable = prism(url, &["ls"]).await;
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the Prism server"));
}
