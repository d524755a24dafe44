//! The writers of the fault tests: each appends to streams of its own over HTTP, every event
//! carrying a unique `uid`, giving up on an answer after [`CLIENT_TIMEOUT`]: one stream with an
//! expected version; one stream with none (its notes); and every fifth an atomic append over
//! two streams (`POST /events`), each part with its expected version. Writers
//! `0..WRITERS / 2` send no `Idempotency-Key` and never retry (an append they gave up on may
//! land later: their next append to that stream expects the same version and learns the truth
//! from a 409); the others send one and send the same append again under the same key until it
//! is acknowledged or refused.

use super::appends::{self, Answer, CLIENT_TIMEOUT, Outcome, Part, Sent};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Writers `0..WRITERS / 2` send no key; the others retry under one.
pub const WRITERS: usize = 6;
/// How long a keyed writer keeps retrying one append.
const GIVE_UP: Duration = Duration::from_secs(60);

/// Writer `w`: appends to its own streams until `stop`, each part with an expected version
/// expecting the version its earlier answers imply, through `bases[w % len]` — and the next
/// one after an answer of unknown outcome (a node gone).
pub async fn write(w: usize, bases: Vec<String>, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let mut through = w % bases.len();
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
        // Every fifth append: an order stream and the account, atomically. Notes expect nothing.
        let chosen = match n % 5 {
            4 => vec![(n / 5 % 2) as usize, 2],
            _ => vec![(n % 4) as usize],
        };
        let parts: Vec<Part> = chosen
            .iter()
            .map(|&s| Part {
                stream: streams[s].clone(),
                expected: (s != 3).then_some(versions[s]),
                events: (0..1 + n % 3)
                    .map(|j| {
                        made[s] += 1;
                        event(w, s, made[s], format!("w{w}-{n}-{s}-{j}"))
                    })
                    .collect(),
            })
            .collect();
        let key = keyed.then(|| format!("w{w}-{n}"));
        let started = Instant::now();
        let (mut attempts, mut retried_on) = (0, Vec::new());
        let outcome = loop {
            attempts += 1;
            let base = &bases[through];
            let answer = appends::append(&http, base, &parts, key.as_deref()).await;
            if let Answer::Unknown(_) = answer {
                through = (through + 1) % bases.len();
            }
            match answer {
                Answer::Acked(outcome) => break outcome,
                Answer::Conflict(actual) => {
                    match actual {
                        Some(actual) => versions[chosen[0]] = actual,
                        None => {
                            for &s in &chosen {
                                if let Some(version) =
                                    appends::version_of(&http, base, &streams[s]).await
                                {
                                    versions[s] = version;
                                }
                            }
                        }
                    }
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
        if let Outcome::Acked {
            versions: firsts, ..
        } = &outcome
        {
            for ((&s, part), first) in chosen.iter().zip(&parts).zip(firsts) {
                versions[s] = first + part.events.len() as u64 - 1;
            }
        }
        if !matches!(outcome, Outcome::Acked { .. } | Outcome::Refused(409, _)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.push(Sent {
            keyed,
            parts,
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

/// The `c`th event a writer makes for its stream `s`: orders (some cancelled, some placed
/// twice, some cancelled without being placed), account movements (some overdrafts, a second
/// opening now and then), notes.
pub fn event(w: usize, s: usize, c: u64, uid: String) -> Value {
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
