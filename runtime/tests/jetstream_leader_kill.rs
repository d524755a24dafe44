//! Prism on a 3-server JetStream cluster (stream R3) loses nothing when the server leading the
//! events stream is killed with SIGKILL under load, and restarted.
//!
//! One Prism node (in process) runs the three examples; writers append over HTTP with expected
//! versions, each to streams of its own, every event carrying a unique `uid`, and give up
//! waiting for an answer after 2 s. Half the writers send no `Idempotency-Key` and never retry
//! (an append they gave up on, or answered 503 of unknown outcome, may land later: their next
//! append to that stream expects the same version and learns the truth from a 409); the other
//! half send one and send the same append again under the same key until it is acknowledged or
//! refused. About a second into the load the leader of `PRISM_EVENTS` is killed with
//! `kill -9`; once another server leads it, the two go on alone for 2 s before the killed one is
//! restarted (same ports, same store); the load goes on 3 s more.
//!
//! Then Prism stops (nothing it was still trying can land after that) and the whole log is read
//! back from JetStream and checked against what the writers were told, not against Prism's own
//! reading of it: positions 1..=head all there, each stream's versions 1..n in position order,
//! every acknowledged append at exactly its positions with exactly its events, nothing of a
//! refused append, an append of unknown outcome whole or not at all, no event twice and none
//! nobody sent, a 409 only after an unknown outcome on that stream. Prism starts again on the
//! same data dir, its projectors resume from their checkpoints, and every view must equal the
//! one this file computes from the events read back (a model of the examples written here, not
//! Prism's replay).

mod common;

use common::nats::NatsCluster;
use prism::log::jetstream::JetStreamLog;
use prism::log::{EventLog, RecordedEvent};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const STREAM: &str = prism::log::jetstream::protocol::STREAM;
/// Writers `0..WRITERS / 2` send no key; the others retry under one.
const WRITERS: usize = 6;
/// How long a writer waits for an answer (then the outcome is unknown).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a keyed writer keeps retrying one append.
const GIVE_UP: Duration = Duration::from_secs(60);

/// What a writer learned of one append.
#[derive(Debug, Clone)]
enum Outcome {
    /// 201 with these positions and stream version.
    Acked { first: u64, last: u64, version: u64 },
    /// Refused with nothing appended: 409, or a 503 saying so (and why).
    Refused(u16, String),
    /// No final answer: a client timeout, a transport error, a 503 of unknown outcome, a 500.
    Unknown(String),
}

/// One append as its writer sent it, and how it ended.
#[derive(Debug, Clone)]
struct Sent {
    keyed: bool,
    stream: String,
    expected: u64,
    /// `{"type", "data"}`, each data with its `uid`.
    events: Vec<Value>,
    attempts: u32,
    /// What the attempts before the last were answered (a keyed writer's retries).
    retried_on: Vec<String>,
    /// When its first attempt was sent and its last answered.
    started: Instant,
    ended: Instant,
    outcome: Outcome,
}

impl Sent {
    fn uids(&self) -> impl Iterator<Item = &str> {
        self.events
            .iter()
            .map(|e| e["data"]["uid"].as_str().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_appends_survive_a_kill_of_the_stream_leader() {
    let began = Instant::now();
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let configure = |config: &mut prism::server::ServerConfig| {
        config.event_log = Some(urls.clone());
        config.event_log_replicas = 3;
    };
    let (server, client) = common::start_with(dir.path(), configure).await;
    for (name, wasm) in common::examples() {
        client.deploy(name, wasm).await;
    }
    let ready = began.elapsed();

    // The load, the kill, the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let load = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(w, client.base.clone(), stop.clone())))
        .collect();
    let reader = tokio::spawn(read_stream_meanwhile(client.base.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = tokio::task::block_in_place(|| cluster.stream_leader(STREAM));
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill9(leader));
    let new_leader = tokio::task::block_in_place(|| cluster.stream_leader(STREAM));
    let elected = killed.elapsed();
    assert_ne!(new_leader, leader, "the stream's leader did not change");
    // Two servers go on without the third for a while before it comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.restart(leader));
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for writer in writers {
        sent.extend(writer.await.unwrap());
    }
    let load = load.elapsed();
    let reads = reader.await.unwrap();

    // Figures for the report (not assertions), printed before the checks.
    let acked_at: Vec<(Instant, Instant)> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Acked { .. }))
        .map(|s| (s.started, s.ended))
        .collect();
    let before = acked_at.iter().filter(|(_, e)| *e < killed).count();
    let during = acked_at
        .iter()
        .filter(|(_, e)| *e >= killed && *e < restarted)
        .count();
    let after = acked_at.iter().filter(|(s, _)| *s > restarted).count();
    let mut ends: Vec<Instant> = acked_at.iter().map(|(_, e)| *e).collect();
    ends.sort();
    let (gap, gap_from) = ends
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .expect("acknowledgements");
    let count = |f: &dyn Fn(&Sent) -> bool| sent.iter().filter(|s| f(s)).count();
    let retried: Vec<&Sent> = sent.iter().filter(|s| s.keyed && s.attempts > 1).collect();
    println!(
        "leader kill: cluster and examples ready in {ready:.1?}; load {load:.1?}; server n{leader} \
         (the stream's leader) killed, n{new_leader} leads after {elected:.1?}, n{leader} \
         restarted after {:.1?}",
        restarted - killed
    );
    println!(
        "appends: {} sent, {} acknowledged ({before} before the kill, {during} while a server \
         was down, {after} sent after the restart), {} refused with 409, {} refused with 503 \
         (nothing appended), {} unknown; keyed appends sent more than once: {} ({} attempts)",
        sent.len(),
        acked_at.len(),
        count(&|s| matches!(s.outcome, Outcome::Refused(409, _))),
        count(&|s| matches!(s.outcome, Outcome::Refused(503, _))),
        count(&|s| matches!(s.outcome, Outcome::Unknown(_))),
        retried.len(),
        retried.iter().map(|s| s.attempts).sum::<u32>(),
    );
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &sent {
        let last = match &s.outcome {
            Outcome::Refused(503, why) | Outcome::Unknown(why) => Some(why.as_str()),
            _ => None,
        };
        for why in s.retried_on.iter().map(String::as_str).chain(last) {
            *reasons.entry(why).or_default() += 1;
        }
    }
    for (why, times) in &reasons {
        println!("  answered {times}×: {why}");
    }
    println!(
        "longest pause between acknowledgements: {gap:.2?}, from {:+.2} s after the kill",
        signed_secs(gap_from, killed),
    );
    println!("stream reads meanwhile (GET /streams/order-w0a): {reads:?}");

    // A retry of the same append under its key is never taken for a different append.
    assert!(
        !reasons.keys().any(|why| why.starts_with("422")),
        "a keyed retry was refused as a different append"
    );

    // The fault happened under load: appends were acknowledged before the kill and after the
    // restart.
    assert!(before > 0, "no append was acknowledged before the kill");
    assert!(
        after > 0,
        "no append sent after the restart was acknowledged"
    );

    // Prism stops: appends it was still trying for writers that gave up are abandoned.
    server.stop().await;

    // The log, read back from JetStream by a client of its own.
    let (head, events) = read_log(&urls).await;
    let uids = check_log(&sent, head, &events);
    let unknown: Vec<&Sent> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Unknown(_)))
        .collect();
    let landed = unknown
        .iter()
        .filter(|s| s.uids().all(|u| uids.contains(u)))
        .count();
    println!(
        "appends of unknown outcome: {} landed (once), {} did not",
        landed,
        unknown.len() - landed
    );

    // Prism again: every view, resumed from its checkpoint, equals the one computed here from
    // the events read back.
    let (server, client) = common::start_with(dir.path(), configure).await;
    let expected = common::model::views(&events);
    for (name, _) in common::examples() {
        let status = client.wait_caught_up(name).await;
        assert_eq!(status["checkpoint"], head, "{name}: {status}");
        let view = client.whole_view_paged(name, 1000).await;
        let want = &expected[name];
        for (key, value) in want {
            assert_eq!(view.get(key), Some(value), "{name}/{key}");
        }
        assert_eq!(view.len(), want.len(), "{name} has keys the model has not");
    }
    server.stop().await;
    println!(
        "{} events in the log, all checked; the test took {:.1?}",
        events.len(),
        began.elapsed()
    );
}

fn signed_secs(at: Instant, zero: Instant) -> f64 {
    if at >= zero {
        (at - zero).as_secs_f64()
    } else {
        -(zero - at).as_secs_f64()
    }
}

/// A writer: appends to its own streams until `stop`, each append expecting the version its
/// earlier answers imply.
async fn write(w: usize, base: String, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let keyed = w >= WRITERS / 2;
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let streams = [
        format!("order-w{w}a"),
        format!("order-w{w}b"),
        format!("account-w{w}"),
        format!("note-w{w}"),
    ];
    let mut versions = [0u64; 4];
    let mut made = [0u64; 4];
    let mut out = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let s = (n % 4) as usize;
        let events: Vec<Value> = (0..1 + n % 3)
            .map(|j| {
                made[s] += 1;
                event(w, s, made[s], format!("w{w}-{n}-{j}"))
            })
            .collect();
        let key = keyed.then(|| format!("w{w}-{n}"));
        let (expected, started) = (versions[s], Instant::now());
        let (mut attempts, mut retried_on) = (0, Vec::new());
        let outcome = loop {
            attempts += 1;
            let answer = append(&http, &base, &streams[s], expected, key.as_deref(), &events);
            match answer.await {
                Answer::Acked(outcome) => break outcome,
                Answer::Conflict(actual) => {
                    versions[s] = actual;
                    break Outcome::Refused(409, String::new());
                }
                Answer::Unknown(why) if key.is_none() || started.elapsed() > GIVE_UP => {
                    break Outcome::Unknown(why);
                }
                Answer::NothingAppended(why) if key.is_none() => {
                    break Outcome::Refused(503, why);
                }
                // The same append again, under the same key.
                Answer::Unknown(why) | Answer::NothingAppended(why) => retried_on.push(why),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Outcome::Acked { version, .. } = outcome {
            versions[s] = version;
        }
        if !matches!(outcome, Outcome::Acked { .. } | Outcome::Refused(409, _)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.push(Sent {
            keyed,
            stream: streams[s].clone(),
            expected,
            events,
            attempts,
            retried_on,
            started,
            ended: Instant::now(),
            outcome,
        });
        n += 1;
    }
    out
}

/// Reads a stream over HTTP every 100 ms until `stop`: how many reads got each answer (a
/// figure, not a check).
async fn read_stream_meanwhile(base: String, stop: Arc<AtomicBool>) -> BTreeMap<String, usize> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut answers = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let answer = match http
            .get(format!("{base}/streams/order-w0a?limit=10"))
            .send()
            .await
        {
            Ok(reply) => reply.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "transport error".into(),
        };
        *answers.entry(answer).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers
}

/// The `c`th event a writer makes for its stream `s`: orders (some cancelled, some placed
/// twice, some cancelled without being placed), account movements (some overdrafts, a second
/// opening now and then), notes.
fn event(w: usize, s: usize, c: u64, uid: String) -> Value {
    let amount = 1 + (c * 97 + w as u64 * 13) % 400;
    let (event_type, mut data) = match s {
        0 | 1 => {
            let order = format!("w{w}{s}-o{c}");
            let placed = |order: String| {
                let total = 100 + (c * 37) % 900;
                json!({"order_id": order, "customer": format!("c{}", c % 5), "total_cents": total})
            };
            match c % 7 {
                4 | 5 => (
                    "OrderCancelled",
                    json!({"order_id": format!("w{w}{s}-o{}", c.saturating_sub(7))}),
                ),
                6 => ("OrderPlaced", placed(format!("w{w}{s}-o{}", c - 1))),
                _ => ("OrderPlaced", placed(order)),
            }
        }
        2 => {
            let (x, y) = (format!("w{w}x"), format!("w{w}y"));
            match c {
                1 => ("AccountOpened", json!({"account": x, "owner": "X"})),
                2 => ("AccountOpened", json!({"account": y, "owner": "Y"})),
                c if c % 25 == 0 => ("AccountOpened", json!({"account": x, "owner": "again"})),
                c => match c % 4 {
                    0 | 1 => ("Deposited", json!({"account": x, "amount": amount})),
                    2 => ("Withdrawn", json!({"account": y, "amount": amount})),
                    _ => (
                        "TransferMade",
                        json!({"from": x, "to": y, "amount": amount}),
                    ),
                },
            }
        }
        _ => ("Noted", json!({"n": c})),
    };
    data["uid"] = uid.into();
    json!({"type": event_type, "data": data})
}

/// What Prism answered an append.
enum Answer {
    Acked(Outcome),
    /// 409: the stream was at this version.
    Conflict(u64),
    /// A 503 saying nothing was appended (and why).
    NothingAppended(String),
    Unknown(String),
}

async fn append(
    http: &reqwest::Client,
    base: &str,
    stream: &str,
    expected: u64,
    key: Option<&str>,
    events: &[Value],
) -> Answer {
    let mut request = http
        .post(format!("{base}/streams/{stream}/events"))
        .query(&[("expected_version", expected)])
        .json(events);
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
        201 => Answer::Acked(Outcome::Acked {
            first: number("first_position"),
            last: number("last_position"),
            version: number("stream_version"),
        }),
        409 => Answer::Conflict(number("actual_version")),
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
async fn read_log(urls: &str) -> (u64, Vec<RecordedEvent>) {
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
fn check_log(sent: &[Sent], head: u64, events: &[RecordedEvent]) -> HashSet<String> {
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
        match s.outcome {
            Outcome::Unknown(_) => {
                uncertain.insert(&s.stream);
            }
            Outcome::Refused(409, _) => assert!(
                uncertain.contains(&s.stream),
                "a 409 with no append of unknown outcome before it on the stream: {s:?}"
            ),
            _ => {}
        }
        let found: Vec<Option<usize>> = s.uids().map(|u| at.get(u).copied()).collect();
        known.extend(s.uids());
        match s.outcome {
            Outcome::Acked {
                first,
                last,
                version,
            } => {
                let count = s.events.len() as u64;
                assert_eq!(last + 1 - first, count, "{s:?}");
                assert_eq!(version, s.expected + count, "{s:?}");
                for (j, (sent_event, stored)) in s.events.iter().zip(&found).enumerate() {
                    let position = first + j as u64;
                    assert_eq!(
                        *stored,
                        Some(position as usize - 1),
                        "an acknowledged event is not at its position {position}: {s:?}"
                    );
                    let e = &events[position as usize - 1];
                    assert_eq!(e.stream, s.stream);
                    assert_eq!(e.event_type, sent_event["type"]);
                    let data: Value = serde_json::from_slice(&e.data).unwrap();
                    assert_eq!(data, sent_event["data"]);
                    assert_eq!(e.stream_version, version - count + 1 + j as u64);
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

/// The test's model of the examples, on the shared history, gives the hand-computed views.
#[test]
fn the_model_of_the_examples_gives_the_hand_computed_views() {
    let mut events = Vec::new();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for (stream, appended) in common::history() {
        for event in appended.as_array().unwrap() {
            let version = versions.entry(stream).or_default();
            *version += 1;
            events.push(RecordedEvent {
                position: events.len() as u64 + 1,
                stream: stream.to_string(),
                stream_version: *version,
                event_type: event["type"].as_str().unwrap().to_string(),
                timestamp_ms: 0,
                data: event["data"].to_string().into_bytes(),
                metadata: b"{}".to_vec(),
            });
        }
    }
    let views = common::model::views(&events);
    for (name, _) in common::examples() {
        assert_eq!(views[name], common::expected_view(name), "{name}");
    }
}
