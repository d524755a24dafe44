//! Appends over several streams at once (`EventLog::append_all`, `POST /events`): all or
//! nothing, at consecutive positions in the order given, each expected version checked after
//! the request's earlier events; retried safely under a key or event ids. Each result is
//! checked against positions and versions counted by hand.

mod common;

use prism::log::{AppendError, EventLog, ExpectedVersion, NewEvent, StreamAppend};
use serde_json::json;

fn event(t: &str, id: Option<&str>) -> NewEvent {
    NewEvent {
        event_type: t.into(),
        data: format!("{{\"t\":\"{t}\"}}").into_bytes(),
        metadata: None,
        id: id.map(str::to_string),
    }
}

fn part(stream: &str, expected: Option<u64>, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream: stream.into(),
        expected: expected.map_or(ExpectedVersion::Any, ExpectedVersion::Exact),
        events,
    }
}

/// (position, stream, stream version, type) of every event in the log.
fn contents(log: &EventLog) -> Vec<(u64, String, u64, String)> {
    log.read_from(1, 1000)
        .unwrap()
        .into_iter()
        .map(|e| (e.position, e.stream, e.stream_version, e.event_type))
        .collect()
}

fn row(p: u64, s: &str, v: u64, t: &str) -> (u64, String, u64, String) {
    (p, s.into(), v, t.into())
}

#[tokio::test]
async fn an_append_over_several_streams_is_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    log.append("b", ExpectedVersion::Any, vec![event("B0", None)])
        .await
        .unwrap();

    // a: new (0), then b at 1, then a again at 2 (after this request's own events).
    let appended = log
        .append_all(
            None,
            vec![
                part("a", Some(0), vec![event("A1", None), event("A2", None)]),
                part("b", Some(1), vec![event("B2", None)]),
                part("a", Some(2), vec![event("A3", None)]),
            ],
        )
        .await
        .unwrap();
    assert_eq!((appended.first_position, appended.last_position), (2, 5));
    assert_eq!(appended.stream_version, 3, "the last part's stream: a");
    let want = vec![
        row(1, "b", 1, "B0"),
        row(2, "a", 1, "A1"),
        row(3, "a", 2, "A2"),
        row(4, "b", 2, "B2"),
        row(5, "a", 3, "A3"),
    ];
    assert_eq!(contents(&log), want);
    assert_eq!(log.stream_version("a").unwrap(), 3);

    // A wrong expectation in the last part refuses the whole request, earlier parts too.
    let err = log
        .append_all(
            None,
            vec![
                part("c", None, vec![event("C1", None)]),
                part("a", Some(2), vec![event("A4", None)]),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AppendError::VersionConflict { stream, expected: 2, actual: 3 } if stream == "a"),
        "{err}"
    );
    assert_eq!(contents(&log), want);
    assert_eq!(log.stream_version("c").unwrap(), 0);
    assert!(log.read_stream("c", 1, 10).unwrap().is_empty());

    // Under a key: a retry answers the first result; other events under it are refused.
    let request = vec![
        part("c", None, vec![event("C1", None)]),
        part("d", None, vec![event("D1", None)]),
    ];
    let first = log
        .append_all(Some("k-1".into()), request.clone())
        .await
        .unwrap();
    let again = log
        .append_all(Some("k-1".into()), request.clone())
        .await
        .unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(
        (again.first_position, again.last_position),
        (first.first_position, first.last_position)
    );
    let mut other = request.clone();
    other[1].stream = "e".into();
    assert!(matches!(
        log.append_all(Some("k-1".into()), other).await,
        Err(AppendError::Duplicate(_))
    ));
    assert_eq!(log.head(), 7);

    // Event ids over several streams: the same events again are a retry.
    let with_ids = vec![
        part("x", None, vec![event("X1", Some("id-x1"))]),
        part("y", None, vec![event("Y1", Some("id-y1"))]),
    ];
    let first = log.append_all(None, with_ids.clone()).await.unwrap();
    let again = log.append_all(None, with_ids).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.first_position, again.last_position), (8, 9));
    assert_eq!(first.last_position, 9);
    // One of them on another stream is not the same append.
    let moved = vec![
        part("x", None, vec![event("X1", Some("id-x1"))]),
        part("z", None, vec![event("Y1", Some("id-y1"))]),
    ];
    assert!(matches!(
        log.append_all(None, moved).await,
        Err(AppendError::Duplicate(_))
    ));
    assert_eq!(log.head(), 9);
}

#[tokio::test]
async fn an_expected_head_orders_appends_sent_back_to_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    let one = |t: &str| vec![part("s", None, vec![event(t, None)])];
    // Sent together, each expecting the head the previous one leaves: they land in order.
    let (a, b) = tokio::join!(
        log.append_all_after(None, one("A"), Some(0)),
        log.append_all_after(None, one("B"), Some(1)),
    );
    assert_eq!(
        (a.unwrap().first_position, b.unwrap().first_position),
        (1, 2)
    );
    // A wrong head appends nothing and says where the head is.
    let err = log
        .append_all_after(None, one("C"), Some(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::HeadMoved {
                expected: 1,
                actual: 2
            }
        ),
        "{err}"
    );
    assert_eq!(log.head(), 2);
    // A retry recognised by its key answers its first result whatever the head.
    let first = log
        .append_all_after(Some("k".into()), one("D"), Some(2))
        .await
        .unwrap();
    let again = log
        .append_all_after(Some("k".into()), one("D"), Some(2))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.first_position, first.first_position);
    assert_eq!(
        contents(&log),
        vec![
            row(1, "s", 1, "A"),
            row(2, "s", 2, "B"),
            row(3, "s", 3, "D")
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_multi_stream_appends_stay_whole_and_gapless() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for r in 0..20 {
                let parts: Vec<_> = (0..3)
                    .map(|s| part(&format!("s-{t}-{s}"), Some(r), vec![event("E", None)]))
                    .collect();
                results.push(log.append_all(None, parts).await.unwrap());
            }
            results
        }));
    }
    let mut ranges = Vec::new();
    for task in tasks {
        for appended in task.await.unwrap() {
            assert_eq!(appended.last_position - appended.first_position, 2);
            ranges.push((appended.first_position, appended.last_position));
        }
    }
    ranges.sort();
    // 320 requests of 3 events, each whole: together exactly 1..=960.
    for (i, (first, _)) in ranges.iter().enumerate() {
        assert_eq!(*first, i as u64 * 3 + 1);
    }
    let events = contents(&log);
    assert_eq!(events.len(), 960);
    for (first, _) in ranges {
        let streams: Vec<_> = (first..first + 3)
            .map(|p| events[p as usize - 1].1.clone())
            .collect();
        let owner = streams[0].rsplit_once('-').unwrap().0.to_string();
        assert!(
            streams
                .iter()
                .enumerate()
                .all(|(s, name)| *name == format!("{owner}-{s}")),
            "{streams:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn post_events_appends_over_several_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let post = |body: serde_json::Value, key: Option<&'static str>| {
        let mut request = client
            .request("POST", "/events")
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        client.send(request)
    };
    let body = json!([
        {"stream": "order-1", "type": "OrderPlaced", "data": {"total": 5}, "expected_version": 0},
        {"stream": "order-1", "type": "OrderPaid", "data": {}},
        {"stream": "customer-1", "type": "OrderCounted", "data": {"order": 1}, "metadata": {"by": "t"}},
    ]);
    let reply = post(body.clone(), Some("batch-1")).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body, json!({"first_position": 1, "last_position": 3}));
    assert_eq!(reply.headers["idempotent-replayed"], "false");
    let again = post(body, Some("batch-1")).await;
    assert_eq!(
        (again.status, again.body.clone()),
        (201, reply.body.clone())
    );
    assert_eq!(again.headers["idempotent-replayed"], "true");

    let page = client.get("/streams/customer-1").await;
    assert_eq!(page.body["events"][0]["position"], 3);
    assert_eq!(page.body["events"][0]["metadata"], json!({"by": "t"}));
    let page = client.get("/streams/order-1").await;
    assert_eq!(page.body["version"], 2);

    // A conflict on the second event: 409 naming the versions, nothing appended.
    let conflict = post(
        json!([
            {"stream": "order-2", "type": "OrderPlaced", "data": {}},
            {"stream": "order-1", "type": "OrderPaid", "data": {}, "expected_version": 1},
        ]),
        None,
    )
    .await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert_eq!(
        (
            &conflict.body["expected_version"],
            &conflict.body["actual_version"]
        ),
        (&json!(1), &json!(2))
    );
    assert_eq!(client.get("/streams/order-2").await.status, 404);
    // Bad shapes: 400 with the JSON error body.
    for bad in [
        json!([{"type": "T", "data": {}}]),
        json!([{"stream": "", "type": "T", "data": {}}]),
        json!([{"stream": "s", "type": "T", "data": {}, "metadata": 5}]),
        json!([]),
    ] {
        let reply = post(bad.clone(), None).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.body["error"].is_string());
    }
    // `expected_head`: the log's last position, else 412 and nothing appended.
    let head = |h: u64| {
        client
            .request("POST", &format!("/events?expected_head={h}"))
            .header("content-type", "application/json")
            .body(json!([{"stream": "order-5", "type": "T", "data": {}}]).to_string())
    };
    let refused = client.send(head(2)).await;
    assert_eq!(refused.status, 412, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("head is at 3")
    );
    let taken = client.send(head(3)).await;
    assert_eq!(taken.status, 201, "{}", taken.body);
    assert_eq!(taken.body["first_position"], 4);
    // The typed client.
    let events: Vec<prism_client::wire::StreamEvent> = serde_json::from_value(json!([
        {"stream": "order-3", "type": "OrderPlaced", "data": {}},
        {"stream": "order-4", "type": "OrderPlaced", "data": {}},
    ]))
    .unwrap();
    let (appended, replayed) = client.api.append_all(&events, None).await.unwrap();
    assert_eq!(
        (appended.first_position, appended.last_position, replayed),
        (5, 6, false)
    );
    server.stop().await;
}
