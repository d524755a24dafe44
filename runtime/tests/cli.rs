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

/// `prism serve` settings: defaults, then the TOML file, then `PRISM_...` variables, then
/// flags; `--print-config` shows the result with tokens masked, and a misspelt key is refused.
#[test]
fn serve_config_layers_file_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prism.toml"),
        "data_dir = \"from-file\"\nlisten = \"0.0.0.0:9000\"\n\
         [limits]\nstall_after_secs = 5\nrequest_timeout_secs = 7\n[tokens]\nread = \"file-secret\"\n",
    )
    .unwrap();
    let serve = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_prism"))
            .current_dir(dir.path())
            .env_remove("PRISM_LISTEN")
            .env_remove("PRISM_CONFIG")
            .env("PRISM_DATA_DIR", "from-env")
            .env("PRISM_REQUEST_TIMEOUT_SECS", "8")
            .args(["serve", "--print-config"])
            .args(args)
            .output()
            .unwrap()
    };
    let printed = serve(&["--request-timeout-secs", "9"]);
    assert!(printed.status.success(), "{printed:?}");
    let config: toml::Table = toml::from_str(&String::from_utf8_lossy(&printed.stdout)).unwrap();
    assert_eq!(config["listen"].as_str(), Some("0.0.0.0:9000"), "file");
    assert_eq!(
        config["data_dir"].as_str(),
        Some("from-env"),
        "env over file"
    );
    let limits = &config["limits"];
    assert_eq!(
        limits["request_timeout_secs"].as_integer(),
        Some(9),
        "flag over env"
    );
    assert_eq!(limits["stall_after_secs"].as_integer(), Some(5), "file");
    assert_eq!(
        limits["max_append_events"].as_integer(),
        Some(10_000),
        "default"
    );
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert!(config.get("tokens").is_none(), "{stdout}");
    assert!(
        stdout.contains("# [tokens]: read set (not shown)"),
        "{stdout}"
    );
    assert!(!stdout.contains("file-secret"));

    std::fs::write(dir.path().join("bad.toml"), "[limits]\nstall_after = 1\n").unwrap();
    let refused = serve(&["--config", "bad.toml"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("unknown field `stall_after`"),
        "{stderr}"
    );
}

/// `prism test`, as a new user meets it: the count says what the subscription let through, a
/// failure names its event once, errors are one line without a backtrace (even with
/// `RUST_BACKTRACE=1`), and no colour codes reach a stderr that is not a terminal.
#[test]
fn prism_test_reports_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_prism"))
            .arg("test")
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    };
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    let events = write(
        "events.jsonl",
        concat!(
            r#"{"stream": "order-1", "type": "OrderPlaced", "data": {"order_id": "o1", "customer": "c1", "total_cents": 5}}"#,
            "\n",
            r#"{"stream": "order-1", "type": "OrderShipped", "data": {}}"#,
            "\n",
            r#"{"stream": "order-2", "type": "OrderPlaced", "data": {"order_id": "o2", "customer": "c1", "total_cents": 7}}"#,
            "\n",
        ),
    );
    let counted = run(&[&events, "--wasm", artifacts::ORDER_TOTALS]);
    assert!(counted.status.success(), "{}", stderr(&counted));
    assert!(
        stderr(&counted).contains("2 of 3 events applied (1 not in the projector's subscription)"),
        "{}",
        stderr(&counted)
    );

    // A normal verdict: one line, exit 1, no backtrace.
    let expected = write("expected.json", r#"{"stats": {"ignored": 1}}"#);
    let differs = run(&[
        &events,
        "--wasm",
        artifacts::ORDER_TOTALS,
        "--expect",
        &expected,
    ]);
    assert_eq!(differs.status.code(), Some(1));
    let text = stderr(&differs);
    assert!(text.contains("error: the view differs from"), "{text}");
    assert!(
        !text.contains("backtrace") && !text.contains(" 0: "),
        "{text}"
    );

    // A failing event is named once, with the guest's own message.
    let bad = write(
        "bad.jsonl",
        r#"{"stream": "order-9", "type": "OrderPlaced", "data": {"order_id": 9}}"#,
    );
    let failed = run(&[&bad, "--wasm", artifacts::ORDER_TOTALS]);
    assert_eq!(failed.status.code(), Some(1));
    let text = stderr(&failed);
    assert!(
        text.contains("failed at event 1 (OrderPlaced in order-9; line order): bad data:"),
        "{text}"
    );
    assert_eq!(text.matches("event 1").count(), 1, "{text}");

    // A module's WARN line, through a pipe: no ANSI colour codes.
    let poisoned = write(
        "poisoned.jsonl",
        r#"{"stream": "p", "type": "N", "data": {"n": 1, "poison": true}}"#,
    );
    let warned = run(&[&poisoned, "--wasm", artifacts::POISON]);
    let text = stderr(&warned);
    assert!(text.contains("refusing poisoned event 1"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe: {text:?}");
}

#[test]
fn prism_new_says_that_dir_is_the_parent() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["new", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("the crate is created in DIR/NAME"), "{text}");
}
