//! `prism log migrate`: a data dir's embedded log copied into a real nats-server's JetStream at
//! the same positions. Prism runs the examples on the embedded log, is stopped, the real `prism`
//! binary copies the log; every event read back from JetStream equals the embedded log's (and
//! hand-written expectations); a rerun copies nothing, and after one more event only that one;
//! Prism started on JetStream over the same data dir resumes every projector from its
//! checkpoint (a replay from zero into the kept views would double every count) and follows new
//! appends. A target holding other events, or more, is refused and left as it was.

mod common;

use common::nats::NatsServer;
use prism::log::jetstream::{self, JetStreamLog, JetStreamOptions};
use prism::log::{EventLog, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

/// Runs `prism log migrate --from dir --to url`.
fn migrate(dir: &Path, url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["log", "migrate", "--from"])
        .arg(dir)
        .args(["--to", url])
        .output()
        .expect("running prism")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every event of `log`, in order.
fn all(log: &EventLog) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    loop {
        let got = log.read_from(events.len() as u64 + 1, 1000).unwrap();
        if got.is_empty() {
            return events;
        }
        events.extend(got);
    }
}

/// The data dir's embedded log, opened beside a stopped Prism.
fn embedded(dir: &Path) -> EventLog {
    EventLog::open(&dir.join("log.redb")).unwrap()
}

fn jetstream(url: &str) -> EventLog {
    EventLog::new(JetStreamLog::connect(url, 1).unwrap())
}

fn parsed(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Checks `event` against a hand-written expectation.
fn check(
    event: &RecordedEvent,
    position: u64,
    (stream, version, event_type): (&str, u64, &str),
    data: Value,
    metadata: Value,
) {
    assert_eq!(event.position, position);
    assert_eq!(
        (event.stream.as_str(), event.stream_version),
        (stream, version),
        "{event:?}"
    );
    assert_eq!(event.event_type, event_type, "{event:?}");
    assert_eq!(parsed(&event.data), data, "{event:?}");
    assert_eq!(parsed(&event.metadata), metadata, "{event:?}");
}

/// The examples' whole views after [`common::history`] and this test's extra events, computed
/// by hand: 16 an order placed by c3 (o5), 17–18 account a4 opened and credited 100 (one
/// append over both streams), 19 a withdrawal of 30 from a4 (appended to the embedded log
/// after the first copy), then, when `cancelled`, 20 o5 cancelled (over HTTP on JetStream).
fn expected_views(cancelled: bool) -> Vec<(&'static str, serde_json::Map<String, Value>)> {
    let mut counter = common::expected_view("event-counter");
    let mut orders = common::expected_view("order-totals");
    let mut accounts = common::expected_view("account-balances");
    let total = if cancelled { 20 } else { 19 };
    counter.insert("total".into(), json!(total));
    counter.insert("type/OrderPlaced".into(), json!(5));
    counter.insert("type/AccountOpened".into(), json!(3));
    counter.insert("type/Deposited".into(), json!(3));
    counter.insert("type/Withdrawn".into(), json!(3));
    counter.insert(
        "category/order".into(),
        json!(if cancelled { 9 } else { 8 }),
    );
    counter.insert("category/account".into(), json!(11));
    if cancelled {
        counter.insert("type/OrderCancelled".into(), json!(4));
    }
    orders.insert(
        "customer/c3".into(),
        match cancelled {
            false => json!({"orders": 1, "total_cents": 400, "cancelled": 0}),
            true => json!({"orders": 0, "total_cents": 0, "cancelled": 1}),
        },
    );
    orders.insert(
        "order/o5".into(),
        json!({"customer": "c3", "total_cents": 400, "cancelled": cancelled}),
    );
    accounts.insert(
        "account/a4".into(),
        json!({"owner": "Cy", "balance": 70, "rejected_overdrafts": 0}),
    );
    vec![
        ("event-counter", counter),
        ("order-totals", orders),
        ("account-balances", accounts),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_copies_the_log_at_the_same_positions_and_prism_resumes_on_jetstream() {
    let nats = NatsServer::start();
    let url = nats.url();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();

    // Prism on the embedded log: the examples over the history, an append over two streams,
    // events with metadata.
    let (server, client) = common::start(dir).await;
    for (name, wasm) in common::examples() {
        client.deploy(name, wasm).await;
    }
    assert_eq!(common::append_history(&client).await, 15);
    let both = json!([
        {"stream": "order-o5", "type": "OrderPlaced", "expected_version": 0,
         "data": {"order_id": "o5", "customer": "c3", "total_cents": 400},
         "metadata": {"user": "u9", "via": "import"}},
        {"stream": "account-a4", "type": "AccountOpened", "expected_version": 0,
         "data": {"account": "a4", "owner": "Cy"}},
        {"stream": "account-a4", "type": "Deposited",
         "data": {"account": "a4", "amount": 100}, "metadata": {"user": "u9"}},
    ]);
    let reply = client.post_raw("/events", both.to_string()).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({"first_position": 16, "last_position": 18})
    );
    for (name, _) in common::examples() {
        assert_eq!(client.wait_caught_up(name).await["checkpoint"], 18);
    }
    server.stop().await;

    // The copy, by the real binary.
    let output = migrate(dir, &url);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("copied 18 events (positions 1..18)"),
        "{}",
        text(&output)
    );

    // Every event, every field, equal on both logs; a few against hand-written values.
    let source = all(&embedded(dir));
    let copy = all(&jetstream(&url));
    assert_eq!(source.len(), 18);
    assert_eq!(copy, source);
    check(
        &copy[0],
        1,
        ("order-o1", 1, "OrderPlaced"),
        json!({"order_id": "o1", "customer": "c1", "total_cents": 1000}),
        json!({}),
    );
    check(
        &copy[2],
        3,
        ("order-o2", 1, "OrderPlaced"),
        json!({"order_id": "o2", "customer": "c1", "total_cents": 2500}),
        json!({"user": "u7"}),
    );
    check(
        &copy[7],
        8,
        ("account-a1", 4, "TransferMade"),
        json!({"from": "a1", "to": "a2", "amount": 200}),
        json!({}),
    );
    check(
        &copy[15],
        16,
        ("order-o5", 1, "OrderPlaced"),
        json!({"order_id": "o5", "customer": "c3", "total_cents": 400}),
        json!({"user": "u9", "via": "import"}),
    );
    check(
        &copy[17],
        18,
        ("account-a4", 2, "Deposited"),
        json!({"account": "a4", "amount": 100}),
        json!({"user": "u9"}),
    );
    // The original timestamps, not the copy's: the history was appended before the copy ran.
    let copied_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        copy.iter()
            .all(|e| e.timestamp_ms > 0 && e.timestamp_ms <= copied_at)
    );
    assert!(
        copy.windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
    );

    // Run again: nothing to copy. One more event on the embedded log: only it is copied.
    let output = migrate(dir, &url);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("already holds the 18 events"),
        "{}",
        text(&output)
    );
    assert_eq!(jetstream(&url).head(), 18);
    {
        let log = embedded(dir);
        let appended = log
            .append(
                "account-a4",
                ExpectedVersion::Exact(2),
                vec![NewEvent {
                    event_type: "Withdrawn".into(),
                    data: br#"{"account":"a4","amount":30}"#.to_vec(),
                    metadata: Some(br#"{"user":"u1"}"#.to_vec()),
                    id: None,
                }],
            )
            .await
            .unwrap();
        assert_eq!(appended.last_position, 19);
    }
    let output = migrate(dir, &url);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("now follows the JetStream stream"),
        "{}",
        text(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("copied 1 events (positions 19..19)"),
        "{}",
        text(&output)
    );
    let copy = all(&jetstream(&url));
    assert_eq!(copy, all(&embedded(dir)));
    check(
        &copy[18],
        19,
        ("account-a4", 3, "Withdrawn"),
        json!({"account": "a4", "amount": 30}),
        json!({"user": "u1"}),
    );

    // Prism on JetStream over the same data dir: every projector goes on from its checkpoint
    // (19: the event appended after Prism stopped is applied, nothing is applied twice).
    let configure = |config: &mut prism::server::ServerConfig| {
        config.event_log = Some(url.clone());
    };
    let (server, client) = common::start_with(dir, configure).await;
    for (name, _) in common::examples() {
        assert_eq!(client.wait_caught_up(name).await["checkpoint"], 19);
    }
    for (name, view) in expected_views(false) {
        assert_eq!(client.whole_view(name).await, view, "{name}");
    }
    client
        .append(
            "order-o5",
            json!([{"type": "OrderCancelled", "data": {"order_id": "o5"}}]),
        )
        .await;
    for (name, _) in common::examples() {
        assert_eq!(client.wait_caught_up(name).await["checkpoint"], 20);
    }
    for (name, view) in expected_views(true) {
        assert_eq!(client.whole_view(name).await, view, "{name}");
    }
    server.stop().await;

    // JetStream now holds more than the embedded log, which it goes on from: nothing to copy.
    let output = migrate(dir, &url);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("already holds the 19 events of")
            && String::from_utf8_lossy(&output.stdout)
                .contains("and 1 appended there since: nothing to copy"),
        "{}",
        text(&output)
    );
    assert_eq!(jetstream(&url).head(), 20);

    // The data dir follows this JetStream log: a copy into another one is refused.
    let other = NatsServer::start();
    let output = migrate(dir, &other.url());
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the data dir already follows"),
        "{}",
        text(&output)
    );
    assert_eq!(jetstream(&other.url()).head(), 0);

    // The data dir follows JetStream now: a start on its embedded log is refused.
    let config = prism::server::ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap());
    let refused = match prism::server::Server::start(config).await {
        Ok(_) => panic!("Prism started on the embedded log of a data dir migrated to JetStream"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains("follows the JetStream stream PRISM_EVENTS created at"),
        "{refused}"
    );
}

#[test]
fn migrate_s_help_says_what_is_not_copied() {
    let help = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["log", "migrate", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Stop Prism first"), "{text}");
    assert!(
        text.contains("Not copied: the idempotency keys and event ids"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_refuses_a_target_holding_other_events_and_copies_nothing() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    {
        let log = embedded(dir);
        for (stream, events) in common::history() {
            let events: Vec<NewEvent> = events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| NewEvent {
                    event_type: e["type"].as_str().unwrap().into(),
                    data: e["data"].to_string().into_bytes(),
                    metadata: e.get("metadata").map(|m| m.to_string().into_bytes()),
                    id: None,
                })
                .collect();
            log.append(stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
        assert_eq!(log.head(), 15);
    }

    // Another log's events: different ones at the first positions.
    let other = NatsServer::start();
    {
        let log = jetstream(&other.url());
        log.append(
            "elsewhere",
            ExpectedVersion::Any,
            vec![NewEvent {
                event_type: "Something".into(),
                data: b"{}".to_vec(),
                metadata: None,
                id: None,
            }],
        )
        .await
        .unwrap();
    }
    let output = migrate(dir, &other.url());
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("JetStream's event at position 1 is not the log's")
            && stderr.contains("it holds another log; nothing was copied"),
        "{}",
        text(&output)
    );
    let left = all(&jetstream(&other.url()));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].stream, "elsewhere");

    // The same events as the log's first one, appended rather than copied: their timestamp
    // is the server's, so the target is still not a copy of the log.
    let third = NatsServer::start();
    {
        let log = jetstream(&third.url());
        let first = &all(&embedded(dir))[0];
        log.append(
            &first.stream,
            ExpectedVersion::Exact(0),
            vec![NewEvent {
                event_type: first.event_type.clone(),
                data: first.data.clone(),
                metadata: Some(first.metadata.clone()),
                id: None,
            }],
        )
        .await
        .unwrap();
    }
    let output = migrate(dir, &third.url());
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("it differs in its timestamp"),
        "{}",
        text(&output)
    );
    assert_eq!(jetstream(&third.url()).head(), 1);

    // A data dir without a log, and one held by a running Prism, are refused.
    let empty = tempfile::tempdir().unwrap();
    let output = migrate(empty.path(), &other.url());
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("holds no event log"),
        "{}",
        text(&output)
    );
    let (server, _client) = common::start(dir).await;
    let output = migrate(dir, &other.url());
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("stop Prism first"),
        "{}",
        text(&output)
    );
    server.stop().await;
}

/// Many batches: 20,000 events over 40 streams, in appends over several streams, copied by the
/// library function with its progress; every event equal on both logs. Prints the rate (no
/// timing is asserted).
#[test]
fn a_large_log_copies_in_batches_with_progress() {
    const EVENTS: u64 = 20_000;
    let data = tempfile::tempdir().unwrap();
    let log = embedded(data.path());
    let mut position = 0;
    while position < EVENTS {
        let parts = (0..4)
            .map(|part| StreamAppend {
                stream: format!("stream-{}", (position / 250 + part) % 40),
                expected: ExpectedVersion::Any,
                events: (0..250)
                    .map(|i| NewEvent {
                        event_type: format!("Type{}", i % 3),
                        data: format!(r#"{{"n":{},"pad":"{}"}}"#, position + i, "x".repeat(100))
                            .into_bytes(),
                        metadata: (i % 2 == 0).then(|| format!(r#"{{"i":{i}}}"#).into_bytes()),
                        id: None,
                    })
                    .collect(),
            })
            .collect();
        let appended = futures::executor::block_on(log.append_all(None, parts)).unwrap();
        position = appended.last_position;
    }
    assert_eq!(log.head(), EVENTS);

    let nats = NatsServer::start();
    let mut reports = Vec::new();
    let started = std::time::Instant::now();
    let copied = jetstream::copy_log(
        &log,
        &JetStreamOptions::new(&nats.url(), 1),
        None,
        |at, of| reports.push((at, of)),
    )
    .unwrap();
    let took = started.elapsed();
    eprintln!(
        "copied {EVENTS} events in {:.2} s: {:.0} events/s",
        took.as_secs_f64(),
        EVENTS as f64 / took.as_secs_f64()
    );
    assert_eq!((copied.already, copied.copied), (0, EVENTS));
    assert!(
        copied.log.contains("PRISM_EVENTS created at"),
        "{}",
        copied.log
    );
    assert_eq!(copied.positions(), Some((1, EVENTS)));
    assert_eq!(
        reports.len() as u64,
        EVENTS / jetstream::BATCH_EVENTS as u64
    );
    assert!(reports.iter().all(|&(_, of)| of == EVENTS));
    assert!(reports.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(reports.last(), Some(&(EVENTS, EVENTS)));
    assert_eq!(all(&jetstream(&nats.url())), all(&log));
}

/// A writer appending to the target between two batches stops the copy with a clear error
/// after the batches that landed (the next batch's expected last sequence fails); a rerun then
/// refuses the target, which no longer holds a copy of the log. One appending after the last
/// batch fails the copy too (the target's head is read again at the end).
#[test]
fn a_writer_racing_the_copy_stops_it() {
    let data = tempfile::tempdir().unwrap();
    let log = embedded(data.path());
    let events = (0..1200)
        .map(|i| NewEvent {
            event_type: "Counted".into(),
            data: format!(r#"{{"i":{i}}}"#).into_bytes(),
            metadata: None,
            id: None,
        })
        .collect();
    futures::executor::block_on(log.append("counter", ExpectedVersion::Any, events)).unwrap();

    let nats = NatsServer::start();
    let writer = jetstream(&nats.url());
    let options = JetStreamOptions::new(&nats.url(), 1);
    let error = jetstream::copy_log(&log, &options, None, |at, _| {
        if at == jetstream::BATCH_EVENTS as u64 {
            let racing = NewEvent {
                event_type: "Racing".into(),
                data: b"{}".to_vec(),
                metadata: None,
                id: None,
            };
            futures::executor::block_on(writer.append(
                "elsewhere",
                ExpectedVersion::Any,
                vec![racing],
            ))
            .unwrap();
        }
    })
    .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(
            error,
            jetstream::CopyError::Raced {
                expected: 500,
                head: 501,
                copied_until: 500
            }
        ),
        "{message}"
    );
    assert!(
        message.contains("something else appended to JetStream during the copy"),
        "{message}"
    );
    assert_eq!(writer.head(), 501);
    assert_eq!(all(&writer)[..500], all(&log)[..500]);

    let again = jetstream::copy_log(&log, &options, None, |_, _| {}).unwrap_err();
    assert!(
        matches!(again, jetstream::CopyError::Diverged { position: 501, .. }),
        "{again}"
    );
    assert_eq!(writer.head(), 501);

    // After the last batch: the copy landed whole, but the target is no longer only it.
    let nats = NatsServer::start();
    let writer = jetstream(&nats.url());
    let options = JetStreamOptions::new(&nats.url(), 1);
    let error = jetstream::copy_log(&log, &options, None, |at, of| {
        if at == of {
            let racing = NewEvent {
                event_type: "Racing".into(),
                data: b"{}".to_vec(),
                metadata: None,
                id: None,
            };
            futures::executor::block_on(writer.append(
                "elsewhere",
                ExpectedVersion::Any,
                vec![racing],
            ))
            .unwrap();
        }
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            jetstream::CopyError::Raced {
                expected: 1200,
                head: 1201,
                copied_until: 1200
            }
        ),
        "{error}"
    );
}
