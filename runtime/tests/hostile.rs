//! A hostile module cannot take the host down: one that floods its view with 1 MiB values
//! (guest memory stays small, the host's would not) faults on every such event while Prism's
//! memory stays bounded and its neighbour stays live and exact. In its own test binary, so the
//! process's peak RSS is this test's alone.

mod common;

use common::{artifacts, peak_rss};
use serde_json::json;

/// The tests here measure this process's peak RSS or count its child processes: one at a time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn a_write_flood_is_bounded_and_harms_only_its_projector() {
    let _one_at_a_time = ALONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy_with("hostile", artifacts::HOSTILE, "on_error=skip")
        .await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    client.wait_caught_up("hostile").await;
    let before = peak_rss();
    // Ten floods, each of which would write 1,000 MiB: 10 GB without a budget.
    let events: Vec<_> = (0..20)
        .map(|i| {
            let kind = if i % 2 == 0 { "PutFlood" } else { "Fine" };
            json!({"type": kind, "data": {}})
        })
        .collect();
    client.append("s-1", json!(events)).await;
    let status = client
        .wait_until("hostile", "every flood dead-lettered", |s| {
            s["checkpoint"] == 20 && s["state"] == "live"
        })
        .await;
    assert_eq!(status["dead_letters_this_run"], 10, "{status}");
    let letters = client.get("/projectors/hostile/dead-letters").await;
    let first = &letters.body["dead_letters"][0];
    assert_eq!(first["position"], 1, "{}", letters.body);
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("max_batch_write_bytes"),
        "{first}"
    );
    // Only the fine events wrote, and only `ok`.
    assert_eq!(client.view("hostile", "ok").await, json!(10));
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 400 << 20,
        "ten write floods raised the peak RSS by {} MiB",
        grown >> 20
    );
    // The neighbour applied all twenty.
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, json!(20));
    // The flood left nothing in the hostile view's file either.
    let views: u64 = walk(&dir.path().join("projectors"));
    assert!(views < 64 << 20, "the view files hold {} MiB", views >> 20);
    println!(
        "write flood: peak RSS grew {} MiB; view files {} KiB",
        grown >> 20,
        views >> 10
    );
    server.stop().await;
}

/// Total bytes of the files under `dir`.
fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A module with 17 memories gets one memory cap for all of them, not one each: growing its
/// extra memories by 32 MiB apiece traps at the second (16 × 32 MiB would fit caps of 64 MiB
/// each).
#[tokio::test(flavor = "multi_thread")]
async fn the_memory_cap_counts_every_memory_together() {
    let _one_at_a_time = ALONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("memories", artifacts::MANY_MEMORIES).await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    client
        .append("s-1", json!([{"type": "Any", "data": {}}]))
        .await;
    let status = client
        .wait_until("memories", "a fault", |s| s["state"] == "faulted")
        .await;
    let message = status["error"]["message"].as_str().unwrap();
    assert!(message.contains("all its memories together"), "{message}");
    assert_eq!(status["checkpoint"], 0);
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, json!(1));
    server.stop().await;
}

/// A projector core module (WAT) whose `apply` is one huge function: many locals, long chains
/// of arithmetic between them, deep nesting — slow and hungry to compile ("a compile bomb").
/// Valid WebAssembly within wasmparser's size limits, given the projector world's type.
fn compile_bomb(operations: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let locals = 20_000;
    let mut body = String::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for i in 0..operations {
        if i % 1000 == 0 {
            body.push_str("(block ");
        }
        // Locals 0..4 are apply's (i32) parameters.
        let (a, b, c) = (4 + next(locals), 4 + next(locals), 4 + next(locals));
        // Loads give values the compiler cannot fold away.
        let at = (i % 4096) * 8;
        write!(body, "(local.set {c} (i64.add (i64.mul (local.get {a}) (local.get {b})) (i64.xor (local.get {c}) (i64.load (i32.const {at})))))").unwrap();
        // Keep the values alive: a store now and then observes them.
        if i % 8 == 0 {
            write!(body, "(i64.store (i32.const 0) (local.get {c}))").unwrap();
        }
    }
    body.push_str(&")".repeat(operations.div_ceil(1000)));
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (data (i32.const 16) "bomb")
  (data (i32.const 200) "\10\00\00\00\04\00\00\00" "\00\00\00\00\00\00\00\00" "\00\00\00\00\00\00\00\00" "\01\00\00\00")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "prism:projector/projector@0.1.0#describe") (result i32) (i32.const 200))
  (func (export "prism:projector/projector@0.1.0#init") (param i32 i32) (result i32) (i32.const 100))
  (func (export "prism:projector/projector@0.1.0#apply") (param i32 i32 i32 i32) (result i32)
    (local {locals_decl})
    {body}
    (i32.const 100))
)"#,
        locals_decl = "i64 ".repeat(locals),
    );
    let core = wat::parse_str(&wat).expect("the bomb is valid WAT");
    let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let core = prism_toolchain::embed_world(&core, &wit, "projector-world").unwrap();
    prism_toolchain::componentize(&core).unwrap()
}

/// The `prism` compile workers running under this process (Prism runs in it).
fn compile_workers() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            after.split_whitespace().nth(1) == Some(me.as_str())
        })
        .count()
}

async fn upload(client: &common::Client, name: &str, wasm: Vec<u8>) -> (u16, serde_json::Value) {
    let reply = client.put_raw(&format!("/projectors/{name}"), wasm).await;
    (reply.status, reply.body)
}

/// A compile bomb is refused within the compile time limit, compiles run one at a time as set,
/// and the neighbour (compiled by the same bounded workers) stays live and exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_compile_bomb_is_refused_in_bounded_time_one_compile_at_a_time() {
    let _one_at_a_time = ALONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(dir.path(), |config| {
        config.compile_worker = Some(env!("CARGO_BIN_EXE_prism").into());
        config.sandbox.compile_timeout_ms = 8_000;
        config.sandbox.max_concurrent_compiles = 1;
    })
    .await;
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    let bomb = compile_bomb(250_000);
    let started = std::time::Instant::now();
    let (status, body) = upload(&client, "bomb", bomb.clone()).await;
    let took = started.elapsed();
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("compile_timeout_ms"),
        "{body}"
    );
    assert!(
        took < std::time::Duration::from_secs(20),
        "refused after {took:?}"
    );
    println!("compile bomb: refused after {took:?} (limit 8 s)");

    // Three at once: one compile runs at a time, the others wait their turn.
    let uploads: Vec<_> = (0..3)
        .map(|i| {
            let (client, bomb) = (client.clone(), bomb.clone());
            tokio::spawn(async move { upload(&client, &format!("bomb{i}"), bomb).await.0 })
        })
        .collect();
    let mut most = 0;
    while uploads.iter().any(|u| !u.is_finished()) {
        most = most.max(compile_workers());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), 422);
    }
    assert_eq!(most, 1, "compile workers running at once");
    assert_eq!(compile_workers(), 0, "a worker outlived its compile");

    client
        .append("s-1", json!([{"type": "Any", "data": {}}]))
        .await;
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, json!(1));
    server.stop().await;
}

/// A compile whose request timed out (408) is abandoned: its worker is killed, not left running.
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_compile_stops_behind_its_408() {
    let _one_at_a_time = ALONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(dir.path(), |config| {
        config.compile_worker = Some(env!("CARGO_BIN_EXE_prism").into());
        config.sandbox.compile_timeout_ms = 120_000;
        config.limits.request_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let (status, body) = upload(&client, "bomb", compile_bomb(250_000)).await;
    assert_eq!(status, 408, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while compile_workers() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the compile worker still runs behind the 408"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Nothing was deployed.
    assert_eq!(client.get("/projectors/bomb").await.status, 404);
    server.stop().await;
}

/// A compile that needs more memory than allowed is refused; Prism is unharmed.
#[tokio::test(flavor = "multi_thread")]
async fn a_compile_over_its_memory_limit_is_refused() {
    let _one_at_a_time = ALONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(dir.path(), |config| {
        config.compile_worker = Some(env!("CARGO_BIN_EXE_prism").into());
        config.sandbox.max_compile_memory_bytes = 256 << 20;
    })
    .await;
    let (status, body) = upload(&client, "bomb", compile_bomb(250_000)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max_compile_memory_bytes"),
        "{body}"
    );
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    server.stop().await;
}

/// Every hostile fixture at once, one attack event at a time: each faults (dead-letters) only
/// on its own events, the neighbour stays exact, and Prism's peak RSS stays bounded — measured
/// per attack.
#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_fixture_leaves_prism_rss_bounded() {
    let _one_at_a_time = ALONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let hostile = [
        ("hostile", artifacts::HOSTILE),
        ("bomb", artifacts::MEMORY_BOMB),
        ("memories", artifacts::MANY_MEMORIES),
        ("loop", artifacts::INFINITE_LOOP),
        ("deep", artifacts::DEEP_RECURSION),
    ];
    for (name, wasm) in hostile {
        client.deploy_with(name, wasm, "on_error=skip").await;
    }
    client.deploy("counter", artifacts::EVENT_COUNTER).await;
    let start = peak_rss();
    let mut before = start;
    let mut table = Vec::new();
    let attacks = [
        "PutFlood",
        "BigValue",
        "LongDelete",
        "ScanAll",
        "HugeError",
        "Bomb",
        "Loop",
        "Recurse",
    ];
    for (i, attack) in attacks.iter().enumerate() {
        client
            .append(
                "s",
                json!([{"type": attack, "data": {}}, {"type": "Fine", "data": {}}]),
            )
            .await;
        let head = 2 * (i as u64 + 1);
        for (name, _) in hostile {
            client
                .wait_until(name, "the attack handled", |s| s["checkpoint"] == head)
                .await;
        }
        let now = peak_rss();
        table.push(format!(
            "{attack}: +{} MiB",
            now.saturating_sub(before) >> 20
        ));
        before = now;
    }
    let grown = peak_rss().saturating_sub(start);
    println!(
        "peak RSS per attack: {}; total +{} MiB",
        table.join(", "),
        grown >> 20
    );
    assert!(
        grown < 512 << 20,
        "the attacks raised the peak RSS by {} MiB: {table:?}",
        grown >> 20
    );
    // Every projector is still live; the neighbour applied everything.
    for (name, _) in hostile {
        assert_eq!(client.status(name).await["state"], "live", "{name}");
    }
    client.wait_caught_up("counter").await;
    assert_eq!(
        client.view("counter", "total").await,
        json!(2 * attacks.len())
    );
    server.stop().await;
}
