//! `prism import FILE.jsonl` as a user runs it (the real binary against a real server): the
//! log ends up holding the file's events exactly once, in file order, also after the import
//! was killed mid-way or its progress was lost; a changed file or a bad line is refused.

mod common;

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};

/// A history of `n` events: most on a stream of their own (`order-<i>`), every seventh on a
/// shared `customer-<i % 50>` stream, a blank line now and then.
fn write_history(path: &Path, n: usize) -> Vec<(String, String, Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    for i in 0..n {
        let (stream, kind) = if i % 7 == 0 {
            (format!("customer-{}", i % 50), "CustomerSeen")
        } else {
            (format!("order-{i}"), "OrderPlaced")
        };
        let data = json!({"i": i, "total": i % 1000});
        text.push_str(&json!({"stream": stream, "type": kind, "data": data}).to_string());
        text.push('\n');
        if i % 1000 == 500 {
            text.push('\n');
        }
        events.push((stream, kind.to_string(), data));
    }
    std::fs::write(path, text).unwrap();
    events
}

fn import(base: &str, file: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_prism"));
    command
        .args(["import", "--url", base])
        .arg(file)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The log's head, as the server reports it.
async fn head(client: &common::Client) -> u64 {
    client.get("/projectors").await.body["head"]
        .as_u64()
        .unwrap()
}

/// Every event of the log (opened once the server stopped), checked against the file's, in
/// order, each once.
fn assert_log_holds(data: &Path, want: &[(String, String, Value)]) {
    let log = prism::log::EventLog::open(&data.join("log.redb")).unwrap();
    let events = log.read_from(1, want.len() + 10).unwrap();
    assert_eq!(events.len(), want.len(), "events in the log");
    for (i, e) in events.iter().enumerate() {
        let data: Value = serde_json::from_slice(&e.data).unwrap();
        assert_eq!(e.position, i as u64 + 1);
        assert_eq!(
            (&e.stream, &e.event_type, &data),
            (&want[i].0, &want[i].1, &want[i].2),
            "position {}",
            e.position
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_killed_mid_way_goes_on_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, client) = common::start(&data).await;
    let file = dir.path().join("history.jsonl");
    let want = write_history(&file, 20_000);
    let state = dir.path().join("history.jsonl.import-state");

    // Killed once some batches are in, before the end.
    let mut child = import(&client.base, &file, &["--batch", "500"])
        .spawn()
        .unwrap();
    let killed_at = loop {
        if let Ok(bytes) = std::fs::read(&state)
            && let Ok(s) = serde_json::from_slice::<Value>(&bytes)
            && s["events"].as_u64().unwrap_or(0) >= 2000
        {
            child.kill().unwrap();
            child.wait().unwrap();
            break s["events"].as_u64().unwrap();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(
        killed_at < 20_000,
        "killed mid-way, after {killed_at} events"
    );

    let out = import(&client.base, &file, &["--batch", "500"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["resumed_at_line"].as_u64().unwrap() > 1,
        "{summary}"
    );
    assert_eq!(head(&client).await, 20_000);

    // Run again: nothing new.
    let out = import(&client.base, &file, &["--batch", "500"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["events"], 0);

    // Progress lost (an old state file, as left by a crash before it was written): the
    // batches sent again are recognised by their keys and append nothing.
    let (other, other_client) = common::start(&dir.path().join("other")).await;
    let head_part = dir.path().join("part.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    // Cut after the 2500th event, where the first run ended a batch.
    let mut cut = 0;
    let mut events = 0;
    for line in text.split_inclusive('\n') {
        cut += line.len();
        events += usize::from(!line.trim().is_empty());
        if events == 2500 {
            break;
        }
    }
    std::fs::write(&head_part, &text[..cut]).unwrap();
    let part_state = dir.path().join("part.state");
    let out = import(
        &other_client.base,
        &head_part,
        &["--batch", "500", "--state"],
    )
    .arg(&part_state)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    other.stop().await;
    std::fs::copy(&part_state, &state).unwrap();
    let out = import(&client.base, &file, &["--batch", "500"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["resumed_at_line"],
        json!(2500 + 2 + 1),
        "two blank lines before it"
    );
    assert_eq!(
        (&summary["events"], &summary["already_appended"]),
        (&json!(0), &json!(17_500)),
        "{summary}"
    );
    assert_eq!(head(&client).await, 20_000);

    // A file whose imported part changed is refused; so is another batch size.
    let mut changed = text.clone().into_bytes();
    changed[10] = b' ';
    std::fs::write(&file, &changed).unwrap();
    let out = import(&client.base, &file, &["--batch", "500"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed since"));
    let out = import(&client.base, &file, &["--batch", "700"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch 500"));
    server.stop().await;
    assert_log_holds(&data, &want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_line_stops_the_import_naming_it_and_appends_nothing_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(&dir.path().join("data")).await;
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        "{\"stream\":\"a\",\"type\":\"T\",\"data\":1}\n\
         {\"stream\":\"b\",\"type\":\"T\",\"data\":2}\n\
         {\"stream\":\"c\",\"type\":\"T\",\"data\":3,\"metadata\":7}\n\
         {\"stream\":\"d\",\"type\":\"T\",\"data\":4}\n",
    )
    .unwrap();
    let out = import(&client.base, &file, &["--batch", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("starting at line 3"), "{stderr}");
    assert!(
        stderr.contains("metadata must be a JSON object"),
        "{stderr}"
    );
    // The first batch (lines 1-2) is in; the refused one is not.
    assert_eq!(
        client.get("/streams/b").await.body["events"][0]["position"],
        2
    );
    assert_eq!(client.get("/streams/d").await.status, 404);
    server.stop().await;
}
