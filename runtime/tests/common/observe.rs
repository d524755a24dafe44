//! What the cluster tests observe of their nodes: requests asked over and over through every
//! node (each projector's status, or an event counter's view), with when each left and came
//! back and which node answered as owner under which lease; and the checks over them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One answer an observer got.
#[derive(Debug, Clone)]
pub struct Observed {
    pub projector: &'static str,
    pub asked: usize,
    pub sent: Instant,
    pub received: Instant,
    /// The node that answered as owner, and its lease revision.
    pub owner: Option<(String, u64)>,
    pub status: u16,
    /// For the event counters, whose view is read: the count it answered.
    pub count: Option<u64>,
    /// The generation and checkpoint a view answer reflects (`Prism-Generation`,
    /// `Prism-Checkpoint`).
    pub checkpoint: Option<(u64, u64)>,
}

/// Asks node `i` for every projector's view until `stop` (an event counter's count, the first
/// entry of the others'), one request at a time per projector, each given up after a second:
/// while the node is stopped, a request leaves every second, and the last ones are answered
/// the moment it continues — asked after another node took its projectors over.
pub async fn observe(
    i: usize,
    base: String,
    stop: Arc<AtomicBool>,
    projectors: &[(&'static str, &'static str, &'static str)],
) -> Vec<Observed> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let askers: Vec<_> = projectors
        .iter()
        .map(|&(projector, _, model)| {
            let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
            // An event counter's count (it only grows); the others' first entry.
            let counter = model == "event-counter";
            let path = match counter {
                true => format!("{base}/projectors/{projector}/view/total"),
                false => format!("{base}/projectors/{projector}/view?limit=1"),
            };
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = http.get(&path).send().await;
                    let received = Instant::now();
                    let Ok(answer) = answer else {
                        // A node down, or stopped: ask again a little later.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let header = |name: &str| {
                        answer
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let owner = header("prism-owner")
                        .zip(header("prism-owner-lease").and_then(|l| l.parse().ok()));
                    let status = answer.status().as_u16();
                    let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
                    let checkpoint = match status {
                        200 => number("prism-generation").zip(number("prism-checkpoint")),
                        _ => None,
                    };
                    let count = match (counter, status) {
                        (true, 200) => answer.json::<u64>().await.ok(),
                        _ => None,
                    };
                    if counter && status == 200 && count.is_none() {
                        // Cut off mid-body (a node stopped): not an answer.
                        continue;
                    }
                    out.push(Observed {
                        projector,
                        asked: i,
                        sent,
                        received,
                        owner,
                        status,
                        count,
                        checkpoint,
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                out
            })
        })
        .collect();
    let mut out = Vec::new();
    for asker in askers {
        out.extend(asker.await.unwrap());
    }
    out
}

/// Over the answers given as owner: for each projector, an answer that came before another
/// request left carries a lease revision no newer than that request's answer (lease revisions
/// are the KV bucket's, unique per write, so one revision is never two nodes').
pub fn leases_never_go_back(observed: &[Observed]) {
    let mut by_projector: HashMap<&str, Vec<&Observed>> = HashMap::new();
    for o in observed.iter().filter(|o| o.status == 200) {
        by_projector.entry(o.projector).or_default().push(o);
    }
    for (projector, answers) in by_projector {
        let mut owned: Vec<(&Observed, &str, u64)> = answers
            .iter()
            .filter_map(|o| o.owner.as_ref().map(|(n, r)| (*o, n.as_str(), *r)))
            .collect();
        assert!(!owned.is_empty(), "{projector}: no answer named its owner");
        owned.sort_by_key(|(o, _, _)| o.received);
        // The newest lease answered before each moment.
        let mut newest = Vec::with_capacity(owned.len());
        let mut max = 0;
        for (o, node, revision) in &owned {
            max = max.max(*revision);
            newest.push((o.received, max, *node));
        }
        for (o, node, revision) in &owned {
            let before = newest.partition_point(|(received, _, _)| *received < o.sent);
            if before > 0 {
                let (_, max, by) = newest[before - 1];
                assert!(
                    *revision >= max,
                    "{projector}: n{} answered as owner {node} under lease {revision} after {by} \
                     had answered under lease {max}: {o:?}",
                    o.asked
                );
            }
        }
        let nodes: std::collections::BTreeSet<&str> = owned.iter().map(|(_, n, _)| *n).collect();
        println!("{projector}: answered as owner by {nodes:?}");
    }
}

/// Over the event counters' view reads, through every node: an answer that came before
/// another request left counted no more events than that request's answer — no node ever
/// served a view older than one already served (a new owner answers only once caught up).
pub fn views_never_go_back(observed: &[Observed]) {
    let mut by_projector: HashMap<&str, Vec<&Observed>> = HashMap::new();
    for o in observed.iter().filter(|o| o.count.is_some()) {
        by_projector.entry(o.projector).or_default().push(o);
    }
    for (projector, mut answers) in by_projector {
        answers.sort_by_key(|o| o.received);
        let mut newest = Vec::with_capacity(answers.len());
        let mut max = 0;
        for o in &answers {
            max = max.max(o.count.unwrap());
            newest.push((o.received, max));
        }
        for o in &answers {
            let before = newest.partition_point(|(received, _)| *received < o.sent);
            if before > 0 {
                let (_, max) = newest[before - 1];
                assert!(
                    o.count.unwrap() >= max,
                    "{projector}: n{} answered a count of {} after {max} had been served: {o:?}",
                    o.asked,
                    o.count.unwrap()
                );
            }
        }
        println!("{projector}: {} view reads, never older", answers.len());
    }
}

/// Over every view answer, through every node: for each projector and generation, an answer
/// that came before another request left reflected no later checkpoint than that request's
/// answer — no node served a view older than one already served for that generation (a new
/// owner restores a snapshot and answers only once caught up with the head).
pub fn checkpoints_never_go_back(observed: &[Observed]) {
    let mut by_view: HashMap<(&str, u64), Vec<(&Observed, u64)>> = HashMap::new();
    for o in observed {
        if let Some((generation, checkpoint)) = o.checkpoint {
            by_view
                .entry((o.projector, generation))
                .or_default()
                .push((o, checkpoint));
        }
    }
    assert!(!by_view.is_empty(), "no view answer carried its checkpoint");
    for ((projector, generation), mut answers) in by_view {
        answers.sort_by_key(|(o, _)| o.received);
        let mut newest = Vec::with_capacity(answers.len());
        let mut max = 0;
        for (o, checkpoint) in &answers {
            max = max.max(*checkpoint);
            newest.push((o.received, max));
        }
        for (o, checkpoint) in &answers {
            let before = newest.partition_point(|(received, _)| *received < o.sent);
            if before > 0 {
                let (_, max) = newest[before - 1];
                assert!(
                    *checkpoint >= max,
                    "{projector} generation {generation}: n{} answered at checkpoint \
                     {checkpoint} after {max} had been served: {o:?}",
                    o.asked
                );
            }
        }
        println!(
            "{projector} generation {generation}: {} view answers, never older",
            answers.len()
        );
    }
}
