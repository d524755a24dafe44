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

/// Runs an import that must succeed; its summary.
fn import_ok(base: &str, file: &Path, extra: &[&str]) -> Value {
    let out = import(base, file, extra).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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

    let summary = import_ok(&client.base, &file, &["--batch", "500"]);
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
    let summary = import_ok(&client.base, &file, &["--batch", "500"]);
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
    assert!(stderr.contains("line 3:"), "{stderr}");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_sent_before_a_crash_goes_again_whole_even_if_the_file_grew() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, client) = common::start(&data).await;
    let file = dir.path().join("history.jsonl");
    let mut want = write_history(&file, 1200);
    let out = import(&client.base, &file, &["--batch", "500"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read(&file).unwrap();
    // The state as a crash right after the server appended the last, short batch (events
    // 1001..=1200) but before its acknowledgement was recorded would leave it.
    let line_ends: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    let mut events = 0;
    let mut cut = (0, 0);
    for (n, end) in line_ends.iter().enumerate() {
        let start = if n == 0 { 0 } else { line_ends[n - 1] };
        events += usize::from(text[start..*end].iter().any(|b| !b.is_ascii_whitespace()));
        if events == 1000 {
            cut = (*end, n + 1);
            break;
        }
    }
    let sha = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let state = json!({
        "batch": 500, "bytes": cut.0, "lines": cut.1, "events": 1000,
        "sha256": sha(&text[..cut.0]), "last_position": 1000,
        "pending": {"bytes": text.len(), "lines": line_ends.len(), "events": 1200,
                    "sha256": sha(&text)},
    });
    std::fs::write(
        dir.path().join("history.jsonl.import-state"),
        state.to_string(),
    )
    .unwrap();
    // Then the file grew by 300 events.
    let more = dir.path().join("more.jsonl");
    let extra = write_history(&more, 1500).split_off(1200);
    let grown: Vec<u8> = std::fs::read(&more).unwrap();
    let tail_start = grown.len()
        - extra
            .iter()
            .map(|(stream, kind, data)| {
                json!({"stream": stream, "type": kind, "data": data})
                    .to_string()
                    .len()
                    + 1
            })
            .sum::<usize>();
    let mut text = text;
    text.extend_from_slice(&grown[tail_start..]);
    std::fs::write(&file, &text).unwrap();
    want.extend(extra);

    let summary = import_ok(&client.base, &file, &["--batch", "500"]);
    assert_eq!(
        (&summary["already_appended"], &summary["events"]),
        (&json!(200), &json!(300)),
        "{summary}"
    );
    server.stop().await;
    assert_log_holds(&data, &want);
}
