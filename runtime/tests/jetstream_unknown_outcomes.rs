//! Appends whose outcome the JetStream log cannot see at once: a real nats-server behind a
//! proxy that holds the server's answers (the append landed, its acknowledgement is late) or
//! the append itself (it may land late, or never). Whatever the timing, an append is stored at
//! most once: found again by its id within the call, or by its idempotency key or event ids
//! when the client sends it again.

mod common;

use common::nats::NatsServer;
use common::proxy::Proxy;
use prism::log::jetstream::{JetStreamLog, JetStreamOptions};
use prism::log::{AppendError, EventLog, ExpectedVersion, NewEvent};
use std::time::Duration;

/// The header on an append's first message (here, its only one): what the proxy waits for.
const COMMIT: &str = "Prism-Append-Id";

fn event(data: &str) -> NewEvent {
    NewEvent {
        event_type: "T".into(),
        data: format!("{{\"n\":\"{data}\"}}").into_bytes(),
        metadata: None,
        id: None,
    }
}

/// A log through `proxy`, with short timeouts; answering within `resolve`.
fn open(proxy: &Proxy, resolve: Duration) -> EventLog {
    let mut options = JetStreamOptions::new(&proxy.url(), 1);
    options.request_timeout = Duration::from_millis(300);
    options.resolve_within = resolve;
    EventLog::new(JetStreamLog::connect_with(options).unwrap())
}

/// Every event's (position, stream, version, data), read straight from the server.
fn contents(server: &NatsServer) -> Vec<(u64, String, u64, String)> {
    let log = EventLog::new(JetStreamLog::connect(&server.url(), 1).unwrap());
    log.read_from(1, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| {
            let data = String::from_utf8(e.data).unwrap();
            (e.position, e.stream, e.stream_version, data)
        })
        .collect()
}

fn row(position: u64, stream: &str, version: u64, n: &str) -> (u64, String, u64, String) {
    (
        position,
        stream.into(),
        version,
        format!("{{\"n\":\"{n}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_acknowledgement_is_resolved_without_a_second_copy() {
    let server = NatsServer::start();
    let proxy = Proxy::start(server.port).await;
    let log = open(&proxy, Duration::from_secs(20));
    log.append("s", ExpectedVersion::Any, vec![event("1")])
        .await
        .unwrap();
    // The append reaches the server and is stored; its acknowledgement waits in the proxy past
    // the request timeout, and so do the reads that follow until the proxy lets go.
    proxy.hold_replies_after(COMMIT);
    let pending = tokio::spawn({
        let log = log.clone();
        async move {
            log.append("s", ExpectedVersion::Exact(1), vec![event("2")])
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!pending.is_finished(), "the append waited for its outcome");
    proxy.hold_replies(false);
    let appended = pending.await.unwrap().unwrap();
    // Found again by its id: its own result, not a replay, and not a version conflict with
    // itself (the stream is at 2 because of this very append).
    assert_eq!((appended.first_position, appended.last_position), (2, 2));
    assert_eq!(appended.stream_version, 2);
    assert!(!appended.replayed);
    assert_eq!(
        contents(&server),
        [row(1, "s", 1, "1"), row(2, "s", 2, "2")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_outcome_is_said_and_a_keyed_retry_is_stored_once() {
    let server = NatsServer::start();
    let proxy = Proxy::start(server.port).await;
    let log = open(&proxy, Duration::from_secs(1));
    // A client: it sends again while the log is unavailable (nothing was appended then), as
    // its 503 and Retry-After say.
    let keyed = |n: &str| {
        let log = log.clone();
        let n = n.to_string();
        async move {
            loop {
                let result = log
                    .append_once(
                        Some(format!("key-{n}")),
                        "s",
                        ExpectedVersion::Any,
                        vec![event(&n)],
                    )
                    .await;
                match result {
                    Err(AppendError::Unavailable(_)) => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    result => return result,
                }
            }
        }
    };
    // Landed, acknowledgement lost for longer than the log waits: the answer says so.
    proxy.hold_replies_after(COMMIT);
    let unknown = keyed("a").await;
    assert!(
        matches!(unknown, Err(AppendError::Unknown(_))),
        "{unknown:?}"
    );
    proxy.hold_replies(false);
    // The client sends it again under its key: the first one is found, nothing is added.
    let retried = keyed("a").await.unwrap();
    assert!(retried.replayed);
    assert_eq!((retried.first_position, retried.stream_version), (1, 1));

    // Never landed: the append waits in the proxy, which then drops the connection with it.
    proxy.hold_requests_from(COMMIT);
    let unknown = keyed("b").await;
    assert!(
        matches!(unknown, Err(AppendError::Unknown(_))),
        "{unknown:?}"
    );
    proxy.cut();
    proxy.hold_requests(false);
    // Stored once, at 2, by the retry: not replayed (even when its own publish times out
    // and it finds it again, under a loaded machine: the message names the call).
    let retried = keyed("b").await.unwrap();
    assert!(!retried.replayed, "{retried:?}");
    assert_eq!((retried.first_position, retried.stream_version), (2, 2));

    // Late: the held append reaches the server when the proxy lets go, racing the retry. One
    // of the two lands, never both.
    proxy.hold_requests_from(COMMIT);
    let unknown = keyed("c").await;
    assert!(
        matches!(unknown, Err(AppendError::Unknown(_))),
        "{unknown:?}"
    );
    proxy.hold_requests(false);
    let retried = keyed("c").await.unwrap();
    assert_eq!((retried.first_position, retried.stream_version), (3, 3));

    // A retry by event id, without a key, the same way.
    let with_id = NewEvent {
        id: Some("event-d".into()),
        ..event("d")
    };
    proxy.hold_replies_after(COMMIT);
    let unknown = log
        .append("s", ExpectedVersion::Any, vec![with_id.clone()])
        .await;
    assert!(
        matches!(unknown, Err(AppendError::Unknown(_))),
        "{unknown:?}"
    );
    proxy.hold_replies(false);
    let retried = log
        .append("s", ExpectedVersion::Any, vec![with_id])
        .await
        .unwrap();
    assert!(retried.replayed, "{retried:?} {:?}", contents(&server));
    assert_eq!((retried.first_position, retried.stream_version), (4, 4));

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        contents(&server),
        [
            row(1, "s", 1, "a"),
            row(2, "s", 2, "b"),
            row(3, "s", 3, "c"),
            row(4, "s", 4, "d"),
        ]
    );
}

/// Two calls with one key at once: the first's publish waits in the proxy while a retry on
/// another connection finds the claim, sees nothing stored and publishes the same append; when
/// the first publish reaches the server it is refused (the stream moved), and the first call
/// must then find the append by its id rather than publish a second copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_racing_the_first_attempt_stores_the_append_once() {
    let server = NatsServer::start();
    let proxy = Proxy::start(server.port).await;
    // A publish that waits less than its timeout: refused when it arrives, not unknown.
    let slow = EventLog::new(
        JetStreamLog::connect_with(JetStreamOptions {
            request_timeout: Duration::from_secs(10),
            ..JetStreamOptions::new(&proxy.url(), 1)
        })
        .unwrap(),
    );
    let direct = EventLog::new(JetStreamLog::connect(&server.url(), 1).unwrap());
    let keyed = |log: &EventLog| {
        let log = log.clone();
        async move {
            log.append_once(
                Some("the-key".into()),
                "s",
                ExpectedVersion::Any,
                vec![event("once")],
            )
            .await
        }
    };
    proxy.hold_requests_from(COMMIT);
    let first = tokio::spawn(keyed(&slow));
    // The first call's claim is made before its publish, which now waits in the proxy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retry = keyed(&direct).await.unwrap();
    assert_eq!((retry.first_position, retry.stream_version), (1, 1));
    proxy.hold_requests(false);
    let first = first.await.unwrap().unwrap();
    assert_eq!((first.first_position, first.stream_version), (1, 1));
    assert_eq!(contents(&server), [row(1, "s", 1, "once")]);
    // One call stored it, the other found it: one answer says replayed, not both or neither.
    assert_eq!((retry.replayed, first.replayed), (false, true));
}
