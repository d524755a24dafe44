//! Live view changes over Server-Sent Events, on a real socket: what a subscriber sees, how it
//! resumes after a disconnect with `Last-Event-ID`, and when it is told to re-read.

mod common;

use common::{Client, artifacts};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// One SSE event as sent (`event` is empty for an id-only event).
#[derive(Debug)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: Value,
}

/// A subscriber reading `GET /projectors/{name}/changes` as it streams.
struct Subscriber {
    response: reqwest::Response,
    buffer: String,
}

impl Subscriber {
    async fn open(client: &Client, path: &str, last_event_id: Option<&str>) -> Subscriber {
        let mut request = client.http.get(client.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Subscriber {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments, i.e. keep-alives, skipped).
    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: String::new(),
                    id: None,
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        any |= !field.is_empty();
                        match field {
                            "event" => event.event = value.to_string(),
                            "id" => event.id = Some(value.to_string()),
                            "data" => event.data = serde_json::from_str(value).unwrap(),
                            _ => {}
                        }
                    }
                }
                if any {
                    return event;
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event with a type (id-only position updates skipped).
    async fn next_named(&mut self) -> SseEvent {
        loop {
            let event = self.next().await;
            if !event.event.is_empty() {
                return event;
            }
        }
    }

    /// Changes up to the commit whose id is `id`, as key → value; panics on anything but
    /// changes and id-only updates.
    async fn changes_until(&mut self, id: &str) -> BTreeMap<String, Value> {
        let mut seen = BTreeMap::new();
        loop {
            let event = self.next().await;
            match event.event.as_str() {
                "change" => {
                    let key = event.data["key"].as_str().unwrap().to_string();
                    seen.insert(key, event.data["value"].clone());
                }
                "" => {}
                other => panic!("expected changes, got {other}: {event:?}"),
            }
            if event.id.as_deref() == Some(id) {
                return seen;
            }
        }
    }
}

fn event(event_type: &str) -> Value {
    json!({"type": event_type, "data": {}})
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_stream_live_and_resume_after_a_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("tally", artifacts::TALLY_V1).await;
    client.append("s", json!([event("A"), event("B")])).await;
    client.wait_caught_up("tally").await;

    let path = "/projectors/tally/changes?prefix=count/";
    let mut subscriber = Subscriber::open(&client, path, None).await;
    let subscribed = subscriber.next_named().await;
    assert_eq!(subscribed.event, "subscribed");
    assert_eq!(subscribed.data, json!({"generation": 1, "checkpoint": 2}));
    assert_eq!(subscribed.id.as_deref(), Some("1-2"));

    client.append("s", json!([event("A")])).await;
    let change = subscriber.next_named().await;
    assert_eq!(change.event, "change");
    assert_eq!(
        change.data,
        json!({"key": "count/A", "value": 2, "position": 3})
    );
    assert_eq!(change.id.as_deref(), Some("1-3"));
    drop(subscriber);

    // Missed while disconnected: exactly the changes after the last id seen.
    client
        .append("s", json!([event("B"), event("C"), event("C")]))
        .await;
    client.wait_caught_up("tally").await;
    let mut subscriber = Subscriber::open(&client, path, Some("1-3")).await;
    assert_eq!(
        subscriber.changes_until("1-6").await,
        BTreeMap::from([
            ("count/B".to_string(), json!(2)),
            ("count/C".to_string(), json!(2)),
        ])
    );
    // The query parameter works as the header does (EventSource cannot set headers).
    let mut by_query = Subscriber::open(&client, &format!("{path}&last_event_id=1-3"), None).await;
    assert_eq!(
        by_query.changes_until("1-6").await,
        BTreeMap::from([
            ("count/B".to_string(), json!(2)),
            ("count/C".to_string(), json!(2)),
        ])
    );
    // And live again, unfiltered.
    let mut everything = Subscriber::open(&client, "/projectors/tally/changes", None).await;
    assert_eq!(everything.next_named().await.event, "subscribed");
    client.append("s", json!([event("D")])).await;
    assert_eq!(
        everything.changes_until("1-7").await,
        BTreeMap::from([
            ("applied".to_string(), json!(7)),
            ("count/D".to_string(), json!(1)),
            ("seen/00000007".to_string(), json!(true)),
        ])
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_or_an_unknown_position_tells_the_client_to_reread() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client.deploy("tally", artifacts::TALLY_V1).await;
    client.append("s", json!([event("A")])).await;
    client.wait_caught_up("tally").await;

    for stale in ["1-999", "7-1"] {
        let mut subscriber =
            Subscriber::open(&client, "/projectors/tally/changes", Some(stale)).await;
        let reset = subscriber.next_named().await;
        assert_eq!(reset.event, "reset", "{stale}");
        assert_eq!(
            (&reset.data["generation"], &reset.data["checkpoint"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(reset.id.as_deref(), Some("1-1"));
    }

    // A rebuild swaps the view: subscribers are told to re-read, then follow the new one.
    let mut subscriber = Subscriber::open(&client, "/projectors/tally/changes", None).await;
    assert_eq!(subscriber.next_named().await.event, "subscribed");
    client.deploy("tally", artifacts::TALLY_V3).await;
    let reset = subscriber.next_named().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["generation"], 2);
    client.wait_caught_up("tally").await;
    client.append("s", json!([event("B")])).await;
    assert_eq!(
        subscriber.changes_until("2-2").await,
        BTreeMap::from([
            ("v3/applied".to_string(), json!(2)),
            ("v3/count/B".to_string(), json!(1)),
            ("v3/seen/00000002".to_string(), json!(true)),
        ])
    );

    // Bad requests are JSON errors.
    let bad = client
        .http
        .get(client.url("/projectors/tally/changes"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("<generation>-<position>")
    );
    assert_eq!(client.get("/projectors/nope/changes").await.status, 404);

    // Deleting the projector ends the stream with a last event.
    let deleted = client
        .http
        .delete(client.url("/projectors/tally"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(subscriber.next_named().await.event, "deleted");
    server.stop().await;
}
