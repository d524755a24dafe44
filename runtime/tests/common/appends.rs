//! Appends over HTTP as a writer under faults sends them ([`append`]: one stream, or several
//! at once through `POST /events`), what it learned of each ([`Sent`], [`Outcome`]), and the
//! check of a log read back from JetStream against all of it ([`check_log`]): every
//! acknowledged append at exactly its positions, nothing of a refused one, one of unknown
//! outcome whole or not at all, nothing twice, nothing nobody sent.

use prism::log::jetstream::JetStreamLog;
use prism::log::{EventLog, RecordedEvent};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a writer waits for an answer (then the outcome is unknown).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a writer learned of one append.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 201 with these positions, and the stream version of each part's first event.
    Acked {
        first: u64,
        last: u64,
        versions: Vec<u64>,
    },
    /// Refused with nothing appended: 409, or a 503 saying so (and why).
    Refused(u16, String),
    /// No final answer: a client timeout, a transport error, a 503 of unknown outcome, a 500.
    Unknown(String),
}

/// The events of one append on one stream.
#[derive(Debug, Clone)]
pub struct Part {
    pub stream: String,
    /// `None`: appended whatever the stream's version.
    pub expected: Option<u64>,
    /// `{"type", "data"}`, each data with its `uid`.
    pub events: Vec<Value>,
}

/// One append as its writer sent it, and how it ended.
#[derive(Debug, Clone)]
pub struct Sent {
    pub keyed: bool,
    /// One part, or two for an atomic append over two streams.
    pub parts: Vec<Part>,
    pub attempts: u32,
    /// What the attempts before the last were answered (a keyed writer's retries).
    pub retried_on: Vec<String>,
    /// When its first attempt was sent and its last answered.
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Outcome,
}

impl Sent {
    /// Each event with its stream, in the order sent.
    pub fn events(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.parts
            .iter()
            .flat_map(|p| p.events.iter().map(|e| (p.stream.as_str(), e)))
    }

    pub fn uids(&self) -> impl Iterator<Item = &str> {
        self.events()
            .map(|(_, e)| e["data"]["uid"].as_str().unwrap())
    }
}

/// A stream's version as Prism reads it (after a 409 of an append over two streams, which
/// does not say which one conflicted); `None` when it could not be read.
pub async fn version_of(http: &reqwest::Client, base: &str, stream: &str) -> Option<u64> {
    let reply = http
        .get(format!("{base}/streams/{stream}?limit=1"))
        .send()
        .await
        .ok()?;
    match reply.status().as_u16() {
        404 => Some(0),
        200 => reply.json::<Value>().await.ok()?["version"].as_u64(),
        _ => None,
    }
}

/// What Prism answered an append.
pub enum Answer {
    Acked(Outcome),
    /// 409: a stream was at another version (this one, for a one-stream append).
    Conflict(Option<u64>),
    /// A 503 saying nothing was appended (and why).
    NothingAppended(String),
    Unknown(String),
}

/// Sends `parts`: one to `POST /streams/{stream}/events`, two to `POST /events`.
pub async fn append(
    http: &reqwest::Client,
    base: &str,
    parts: &[Part],
    key: Option<&str>,
) -> Answer {
    let mut request = match parts {
        [part] => {
            let request = http.post(format!("{base}/streams/{}/events", part.stream));
            match part.expected {
                Some(expected) => request.query(&[("expected_version", expected)]),
                None => request,
            }
            .json(&part.events)
        }
        _ => {
            let events: Vec<Value> = parts
                .iter()
                .flat_map(|part| {
                    part.events.iter().enumerate().map(|(j, e)| {
                        let mut e = e.clone();
                        e["stream"] = part.stream.clone().into();
                        if let (0, Some(expected)) = (j, part.expected) {
                            e["expected_version"] = expected.into();
                        }
                        e
                    })
                })
                .collect();
            http.post(format!("{base}/events")).json(&events)
        }
    };
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let reply = match request.send().await {
        Ok(reply) => reply,
        Err(e) if e.is_timeout() => {
            return Answer::Unknown(format!("no answer within {CLIENT_TIMEOUT:?}"));
        }
        Err(e) => return Answer::Unknown(format!("transport: {e}")),
    };
    let status = reply.status().as_u16();
    let body: Value = match reply.json().await {
        Ok(body) => body,
        Err(e) => return Answer::Unknown(format!("{status} with an unreadable body: {e}")),
    };
    let number = |field: &str| body[field].as_u64().unwrap();
    match status {
        201 => {
            let versions = match parts {
                [part] => vec![number("stream_version") + 1 - part.events.len() as u64],
                // An append over several streams answers positions only: its parts expected
                // their versions.
                _ => parts.iter().map(|p| p.expected.unwrap() + 1).collect(),
            };
            Answer::Acked(Outcome::Acked {
                first: number("first_position"),
                last: number("last_position"),
                versions,
            })
        }
        409 => Answer::Conflict((parts.len() == 1).then(|| number("actual_version"))),
        503 if body["error"].as_str().is_some_and(|e| {
            e.contains("nothing was appended") && !e.contains("may or may not")
        }) =>
        {
            Answer::NothingAppended(body["error"].as_str().unwrap().to_string())
        }
        _ => Answer::Unknown(format!("{status} {body}")),
    }
}

/// The log's head and all its events, read from JetStream by a log of the test's own.
pub async fn read_log(urls: &str) -> (u64, Vec<RecordedEvent>) {
    let urls = urls.to_string();
    tokio::task::spawn_blocking(move || {
        let log = EventLog::new(JetStreamLog::connect(&urls, 3).expect("reading the log"));
        // Whatever was in the servers' hands when Prism stopped has landed once the head
        // stays put.
        let mut head = log.head();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = log.head();
            if now == head {
                break;
            }
            head = now;
        }
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (events.len() as u64) < head {
            // A short answer means "ask again".
            events.extend(log.read_from(events.len() as u64 + 1, 1000).unwrap());
            assert!(
                Instant::now() < deadline,
                "the log could not be read to {head}"
            );
        }
        (head, events)
    })
    .await
    .unwrap()
}

/// Checks the log against what the writers were told; returns the uids in it.
pub fn check_log(sent: &[Sent], head: u64, events: &[RecordedEvent]) -> HashSet<String> {
    // Positions 1..=head, gapless; each stream's versions 1..n in position order.
    assert_eq!(events.len() as u64, head);
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "a gap in the log's positions");
        let version = versions.entry(&e.stream).or_default();
        *version += 1;
        assert_eq!(
            e.stream_version, *version,
            "a gap in {}'s versions",
            e.stream
        );
        let data: Value = serde_json::from_slice(&e.data).unwrap();
        let uid = data["uid"].as_str().expect("every event has a uid");
        // Nothing twice: an append of unknown outcome, or retried, is there once at most.
        let before = at.insert(uid.to_string(), i);
        assert!(before.is_none(), "event {uid} is in the log twice: {e:?}");
    }
    let mut known = HashSet::new();
    // Streams where an append of unknown outcome may have landed: the only reason a writer,
    // alone on its streams, can meet a 409.
    let mut uncertain = HashSet::new();
    for s in sent {
        let streams = || s.parts.iter().map(|p| p.stream.as_str());
        match s.outcome {
            Outcome::Unknown(_) => uncertain.extend(streams()),
            Outcome::Refused(409, _) => assert!(
                streams().any(|stream| uncertain.contains(stream)),
                "a 409 with no append of unknown outcome before it on its streams (its events \
                 in the log at {:?}): {s:?}",
                s.uids()
                    .map(|u| at.get(u).map(|i| i + 1))
                    .collect::<Vec<_>>()
            ),
            _ => {}
        }
        let found: Vec<Option<usize>> = s.uids().map(|u| at.get(u).copied()).collect();
        known.extend(s.uids());
        match &s.outcome {
            Outcome::Acked {
                first,
                last,
                versions,
            } => {
                let count = s.events().count() as u64;
                assert_eq!(last + 1 - first, count, "{s:?}");
                let mut j = 0;
                for (part, first_version) in s.parts.iter().zip(versions) {
                    if let Some(expected) = part.expected {
                        assert_eq!(*first_version, expected + 1, "{s:?}");
                    }
                    for (k, sent_event) in part.events.iter().enumerate() {
                        let position = first + j as u64;
                        assert_eq!(
                            found[j],
                            Some(position as usize - 1),
                            "an acknowledged event is not at its position {position}: {s:?}"
                        );
                        let e = &events[position as usize - 1];
                        assert_eq!(e.stream, part.stream);
                        assert_eq!(e.event_type, sent_event["type"]);
                        let data: Value = serde_json::from_slice(&e.data).unwrap();
                        assert_eq!(data, sent_event["data"]);
                        assert_eq!(e.stream_version, first_version + k as u64);
                        j += 1;
                    }
                }
            }
            Outcome::Refused(..) => assert!(
                found.iter().all(Option::is_none),
                "a refused append is in the log: {s:?}"
            ),
            Outcome::Unknown(_) => {
                let all_there = found.iter().all(Option::is_some);
                assert!(
                    all_there || found.iter().all(Option::is_none),
                    "an append is in the log in part: {s:?}"
                );
                if all_there {
                    let first = found[0].unwrap();
                    assert!(
                        found.iter().enumerate().all(|(j, p)| *p == Some(first + j)),
                        "an append's events are not together: {s:?}"
                    );
                }
            }
        }
    }
    for (uid, i) in &at {
        assert!(known.contains(uid.as_str()), "nobody sent {:?}", events[*i]);
    }
    at.into_keys().collect()
}

/// Appends `events` to `stream` through `client`, as a writer would have recorded it.
pub async fn append_recorded(client: &super::Client, stream: &str, events: Vec<Value>) -> Sent {
    let started = Instant::now();
    let appended = client.append(stream, Value::Array(events.clone())).await;
    let number = |field: &str| appended[field].as_u64().unwrap();
    Sent {
        keyed: false,
        outcome: Outcome::Acked {
            first: number("first_position"),
            last: number("last_position"),
            versions: vec![number("stream_version") + 1 - events.len() as u64],
        },
        parts: vec![Part {
            stream: stream.to_string(),
            expected: None,
            events,
        }],
        attempts: 1,
        retried_on: Vec::new(),
        started,
        ended: Instant::now(),
    }
}
