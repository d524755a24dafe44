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
        let mut request = client.request("GET", path);
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

/// The deployment's incarnation, from an event's id `<incarnation>-<generation>-<position>`.
fn incarnation_of(event: &SseEvent) -> u64 {
    let id = event.id.as_deref().expect("an id");
    id.split('-')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric incarnation")
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
    let incarnation = incarnation_of(&subscribed);
    let id = |generation: u64, position: u64| format!("{incarnation}-{generation}-{position}");
    assert_eq!(subscribed.id, Some(id(1, 2)));

    client.append("s", json!([event("A")])).await;
    let change = subscriber.next_named().await;
    assert_eq!(change.event, "change");
    assert_eq!(
        change.data,
        json!({"key": "count/A", "value": 2, "position": 3})
    );
    assert_eq!(change.id, Some(id(1, 3)));
    drop(subscriber);

    // Missed while disconnected: exactly the changes after the last id seen.
    client
        .append("s", json!([event("B"), event("C"), event("C")]))
        .await;
    client.wait_caught_up("tally").await;
    let mut subscriber = Subscriber::open(&client, path, Some(&id(1, 3))).await;
    assert_eq!(
        subscriber.changes_until(&id(1, 6)).await,
        BTreeMap::from([
            ("count/B".to_string(), json!(2)),
            ("count/C".to_string(), json!(2)),
        ])
    );
    // The query parameter works as the header does (EventSource cannot set headers).
    let mut by_query =
        Subscriber::open(&client, &format!("{path}&last_event_id={}", id(1, 3)), None).await;
    assert_eq!(
        by_query.changes_until(&id(1, 6)).await,
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
        everything.changes_until(&id(1, 7)).await,
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

    // A rebuild swaps the view: subscribers are told to re-read, then follow the new one.
    let mut subscriber = Subscriber::open(&client, "/projectors/tally/changes", None).await;
    let subscribed = subscriber.next_named().await;
    assert_eq!(subscribed.event, "subscribed");
    let incarnation = incarnation_of(&subscribed);
    let id = |generation: u64, position: u64| format!("{incarnation}-{generation}-{position}");

    // Positions this deployment cannot vouch for: ahead of it, another generation, another
    // deployment of the same name.
    for stale in [id(1, 999), id(7, 1), format!("{}-1-1", incarnation + 1)] {
        let mut stale_subscriber =
            Subscriber::open(&client, "/projectors/tally/changes", Some(&stale)).await;
        let reset = stale_subscriber.next_named().await;
        assert_eq!(reset.event, "reset", "{stale}");
        assert_eq!(
            (&reset.data["generation"], &reset.data["checkpoint"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(reset.id, Some(id(1, 1)));
    }

    client.deploy("tally", artifacts::TALLY_V3).await;
    let reset = subscriber.next_named().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["generation"], 2);
    client.wait_caught_up("tally").await;
    client.append("s", json!([event("B")])).await;
    assert_eq!(
        subscriber.changes_until(&id(2, 2)).await,
        BTreeMap::from([
            ("v3/applied".to_string(), json!(2)),
            ("v3/count/B".to_string(), json!(1)),
            ("v3/seen/00000002".to_string(), json!(true)),
        ])
    );

    // Bad requests are JSON errors.
    let bad = client
        .request("GET", "/projectors/tally/changes")
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
    let deleted = client.delete("/projectors/tally").await;
    assert_eq!(deleted.status, 200);
    assert_eq!(subscriber.next_named().await.event, "deleted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fixes_retries_and_redeploys_keep_subscribers_right() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let poisoned =
        json!([{"type": "N", "data": {"n": 1}}, {"type": "N", "data": {"n": 2, "poison": true}}]);

    // A faulted projector fixed by a deploy: its subscribers follow the new code's changes.
    client.deploy("stops", artifacts::POISON).await;
    let mut subscriber = Subscriber::open(&client, "/projectors/stops/changes", None).await;
    assert_eq!(subscriber.next_named().await.event, "subscribed");
    client.append("p-1", poisoned.clone()).await;
    client
        .wait_until("stops", "a fault", |s| s["state"] == "faulted")
        .await;
    client.deploy("stops", artifacts::POISON_FIXED).await;
    client.wait_caught_up("stops").await;
    let mut seen = BTreeMap::new();
    while seen.get("count") != Some(&json!(2)) || seen.get("sum") != Some(&json!(3)) {
        let change = subscriber.next_named().await;
        assert_eq!(change.event, "change", "{change:?}");
        seen.insert(
            change.data["key"].as_str().unwrap().to_string(),
            change.data["value"].clone(),
        );
    }

    // A dead-letter retry changes the view at an earlier position: subscribers re-read.
    client
        .deploy_with("skips", artifacts::POISON, "on_error=skip")
        .await;
    client.wait_caught_up("skips").await;
    let mut subscriber = Subscriber::open(&client, "/projectors/skips/changes", None).await;
    assert_eq!(subscriber.next_named().await.event, "subscribed");
    client.deploy("skips", artifacts::POISON_FIXED).await;
    let retried = client
        .post_raw("/projectors/skips/dead-letters/2/retry", "")
        .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    let reset = subscriber.next_named().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(
        reset.data["reason"]
            .as_str()
            .unwrap()
            .contains("dead letter"),
        "{reset:?}"
    );

    // Deleted and deployed anew under the same name: an old id does not carry over.
    client.deploy("tally", artifacts::TALLY_V1).await;
    client.wait_caught_up("tally").await;
    let mut subscriber = Subscriber::open(&client, "/projectors/tally/changes", None).await;
    let old_id = subscriber.next_named().await.id.unwrap();
    let deleted = client.delete("/projectors/tally").await;
    assert_eq!(deleted.status, 200);
    assert_eq!(subscriber.next_named().await.event, "deleted");
    client.deploy("tally", artifacts::TALLY_V3).await;
    client.wait_caught_up("tally").await;
    let mut subscriber =
        Subscriber::open(&client, "/projectors/tally/changes", Some(&old_id)).await;
    let reset = subscriber.next_named().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_ne!(reset.id.unwrap(), old_id);
    server.stop().await;
}
