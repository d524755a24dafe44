//! Kills in every phase: the real `prism` binary is SIGKILLed at a random moment of each kind
//! of work in turn — while it starts (opening files, resuming projectors), while a module is
//! uploaded and compiled, during a blue/green rebuild, right as a rebuild is promoted, during a
//! continue-mode swap (to good code, or to code that fails its trial), during a dead-letter
//! retry, during a verify, and while a rebuild holds applied writes in its catch-up cache
//! (status `applied` past `checkpoint`: the kill waits for it, and the test counts how often
//! it landed there) — with appends running throughout. 64 kills by default
//! (`PRISM_PHASE_KILLS`, e.g. 301, for more). After each restart no code that failed its trial
//! serves; at the end every acknowledged append is at its position, positions are gapless, and
//! every view equals the view computed here from the events read back.

mod common;

use common::artifacts;
use common::process::{Acked, Rng, check_log, spawn, start};
use prism_client::wire::{DeadLetterParams, NewEvent};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Startup,
    Deploy,
    Rebuild,
    Promotion,
    Swap,
    Retry,
    Verify,
    CatchUp,
}

const PHASES: [Phase; 8] = [
    Phase::Startup,
    Phase::Deploy,
    Phase::Rebuild,
    Phase::Promotion,
    Phase::Swap,
    Phase::Retry,
    Phase::Verify,
    Phase::CatchUp,
];

fn module_hash(path: &str) -> String {
    hex::encode(Sha256::digest(artifacts::read(path)))
}

/// A projector's status, or `None` when Prism does not answer (it may have just been killed).
async fn status_of(client: &common::Client, name: &str) -> Option<serde_json::Value> {
    let path = format!("/projectors/{name}");
    let reply = client
        .api
        .request(reqwest::Method::GET, &path)
        .send()
        .await
        .ok()?;
    reply.json().await.ok()
}

/// A trial cut short by a kill is resumed after the restart (the status then shows the code
/// on trial): when it is the code that fails, one more event ends the trial, and the proven
/// code must be the one left running.
async fn settle_trial(
    client: &common::Client,
    trap: &str,
    acked: &mut Vec<Acked>,
    next_id: &mut u64,
    phase: Phase,
) {
    if client.status("tally").await["module"] != trap {
        return;
    }
    let id = *next_id;
    *next_id += 1;
    // Like the appenders' events, so the expected views count it the same way.
    let data = json!({"id": id, "n": id % 5, "poison": poisoned(id)});
    let event = NewEvent::new(format!("T{}", id % 3), &data).unwrap();
    let appended = client.api.append("c-0", &[event], None).await.unwrap();
    acked.push(Acked {
        first_position: appended.first_position,
        ids: vec![id],
    });
    // The rollback shows at once; its reason a moment later (the registry records it).
    let what = format!("after a kill in {phase:?}, the failing code's trial to end in a rollback");
    client
        .wait_until("tally", &what, |s| {
            s["module"] != trap && !s["reload_error"].is_null()
        })
        .await;
}

/// The module that makes `rebuilt` rebuild: the tally of the other view schema version.
fn other_tally(status: &serde_json::Value) -> Vec<u8> {
    let next = if status["schema_version"].as_u64() == Some(2) {
        artifacts::TALLY_V1
    } else {
        artifacts::TALLY_V3
    };
    artifacts::read(next)
}

/// Whether a rebuild deployed over generation `before` has finished: a new generation serves
/// and no rebuild runs.
fn serves_new_generation(status: &serde_json::Value, before: Option<u64>) -> bool {
    status["generation"].as_u64() != before && status["rebuild"].is_null()
}

/// Every tenth event poisons the `poison` projector.
fn poisoned(id: u64) -> bool {
    id % 10 == 7
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_in_every_phase_lose_nothing_and_views_stay_exact() {
    let kills: usize = std::env::var("PRISM_PHASE_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let good_tally = [
        module_hash(artifacts::TALLY_V1),
        module_hash(artifacts::TALLY_V2),
    ];
    let trap = module_hash(artifacts::TRAP_ON_APPLY);

    let prism = start(dir.path());
    let client = prism.client.clone();
    client.deploy("tally", artifacts::TALLY_V1).await;
    client.deploy("rebuilt", artifacts::TALLY_V1).await;
    client
        .deploy_with("poison", artifacts::POISON, "on_error=skip")
        .await;
    let mut prism = Some(prism);
    let mut acked: Vec<Acked> = Vec::new();
    let mut next_id = 0u64;
    let mut survived = std::collections::BTreeMap::<String, usize>::new();
    // Kills that landed while a rebuild held unflushed writes (applied > checkpoint).
    let mut cache_kills = Vec::new();

    for kill in 0..kills {
        let phase = PHASES[kill % PHASES.len()];
        *survived.entry(format!("{phase:?}")).or_default() += 1;
        if phase == Phase::Startup {
            // Dropping it kills it.
            drop(prism.take());
            let mut child = spawn(dir.path());
            tokio::time::sleep(Duration::from_millis(rng.below(600))).await;
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
            continue;
        }
        let mut current = prism.take().unwrap_or_else(|| start(dir.path()));
        let client = current.client.clone();
        // No code that fails its trial serves after a restart.
        settle_trial(&client, &trap, &mut acked, &mut next_id, phase).await;

        // Appends throughout.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut appenders = Vec::new();
        for client_no in 0..2u64 {
            let (client, stop) = (client.clone(), stop.clone());
            let sizes: Vec<u64> = (0..400).map(|_| 1 + rng.below(6)).collect();
            let start_id = next_id;
            next_id += 400 * 6;
            appenders.push(tokio::spawn(async move {
                let mut done = Vec::new();
                let mut id = start_id;
                for size in sizes {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let ids: Vec<u64> = (id..id + size).collect();
                    id += size;
                    let events: Vec<NewEvent> = ids
                        .iter()
                        .map(|i| {
                            let data = json!({"id": i, "n": i % 5, "poison": poisoned(*i)});
                            NewEvent::new(format!("T{}", i % 3), &data).unwrap()
                        })
                        .collect();
                    let Ok(appended) = client
                        .api
                        .append(&format!("c-{client_no}"), &events, None)
                        .await
                    else {
                        break;
                    };
                    done.push(Acked {
                        first_position: appended.first_position,
                        ids,
                    });
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                done
            }));
        }

        // The phase's work, and when to kill.
        let (now_tx, now_rx) = tokio::sync::oneshot::channel::<()>();
        let window = match phase {
            Phase::Deploy => 5000,
            Phase::Swap => 2500,
            Phase::Rebuild | Phase::Verify => 1500,
            Phase::Promotion => 5000,
            // A catch-up kill waits for its moment, which the work below signals.
            Phase::CatchUp => 30_000,
            _ => 400,
        };
        let landed = std::sync::Arc::new(parking_lot::Mutex::new(None));
        // How far into its rebuild a catch-up kill waits for (percent of the head).
        let depth = rng.below(90);
        let work = {
            let landed = landed.clone();
            let client = client.clone();
            let good = good_tally.clone();
            let kill_no = kill;
            tokio::spawn(async move {
                let api = &client.api;
                match phase {
                    Phase::Deploy => {
                        let name = format!("extra-{kill_no}");
                        let _ = api
                            .deploy(
                                &name,
                                artifacts::read(artifacts::EVENT_COUNTER),
                                &Default::default(),
                            )
                            .await;
                    }
                    Phase::CatchUp => {
                        // A rebuild from position 1; kill once it is `depth` percent through
                        // the log, at a moment it holds applied writes not committed.
                        let Some(status) = status_of(&client, "rebuilt").await else {
                            return;
                        };
                        let target = status["head"].as_u64().unwrap_or(0) * depth / 100;
                        let before = status["generation"].as_u64();
                        // The deploy answers once the new code is compiled and its rebuild
                        // started, which a debug build under load can take seconds to do: the
                        // rebuild's progress is watched meanwhile, not after.
                        // (It ends with the server's kill, if not before.)
                        {
                            let client = client.clone();
                            let module = other_tally(&status);
                            tokio::spawn(async move {
                                let _ = client
                                    .api
                                    .deploy("rebuilt", module, &Default::default())
                                    .await;
                            });
                        }
                        loop {
                            let Some(status) = status_of(&client, "rebuilt").await else {
                                return;
                            };
                            let rebuild = &status["rebuild"];
                            if serves_new_generation(&status, before) {
                                // The rebuild finished between two looks: kill now anyway.
                                let _ = now_tx.send(());
                                break;
                            }
                            let (applied, checkpoint) =
                                (rebuild["applied"].as_u64(), rebuild["checkpoint"].as_u64());
                            if let (Some(applied), Some(checkpoint)) = (applied, checkpoint)
                                && applied > checkpoint
                                && applied >= target
                            {
                                *landed.lock() = Some((checkpoint, applied));
                                let _ = now_tx.send(());
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Phase::Rebuild | Phase::Promotion => {
                        let Some(status) = status_of(&client, "rebuilt").await else {
                            return;
                        };
                        let before = status["generation"].as_u64();
                        let _ = api
                            .deploy("rebuilt", other_tally(&status), &Default::default())
                            .await;
                        if phase == Phase::Promotion {
                            // Kill the moment the new generation serves.
                            loop {
                                let Some(status) = status_of(&client, "rebuilt").await else {
                                    return;
                                };
                                if serves_new_generation(&status, before) {
                                    let _ = now_tx.send(());
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                    Phase::Swap => {
                        // To the other good version, or to code that fails its first batch.
                        let Some(status) = status_of(&client, "tally").await else {
                            return;
                        };
                        let module = status["module"].as_str().unwrap_or_default().to_string();
                        let next = match kill_no % 3 {
                            0 => artifacts::TRAP_ON_APPLY,
                            _ if module == good[0] => artifacts::TALLY_V2,
                            _ => artifacts::TALLY_V1,
                        };
                        let _ = api
                            .deploy("tally", artifacts::read(next), &Default::default())
                            .await;
                    }
                    Phase::Retry => {
                        if let Ok(letters) = api
                            .dead_letters("poison", &DeadLetterParams::default())
                            .await
                        {
                            for letter in letters.dead_letters.iter().take(5) {
                                let _ = api.retry("poison", letter.position).await;
                            }
                        }
                    }
                    Phase::Verify => {
                        let _ = api.verify("tally").await;
                    }
                    Phase::Startup => unreachable!(),
                }
            })
        };
        // A catch-up kill waits for its moment (up to the window).
        let at = Duration::from_millis(if phase == Phase::CatchUp {
            window
        } else {
            rng.below(window)
        });
        tokio::select! {
            _ = tokio::time::sleep(at) => {}
            _ = now_rx => {}
        }
        current.child.kill().expect("SIGKILL");
        current.child.wait().unwrap();
        if let Some(at) = landed.lock().take() {
            cache_kills.push(at);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        work.abort();
        for appender in appenders {
            acked.extend(appender.await.unwrap());
        }
    }

    // Recovery.
    let prism = start(dir.path());
    let client = prism.client.clone();
    settle_trial(&client, &trap, &mut acked, &mut next_id, Phase::Startup).await;
    let head = client.api.projectors().await.unwrap().head;
    let acked_events: usize = acked.iter().map(|a| a.ids.len()).sum();
    assert!(
        acked_events > kills,
        "too few appends were acknowledged: {acked_events}"
    );

    // (1) Every acknowledged event is where it was acknowledged; positions are gapless.
    let by_position = check_log(&client, &["c-0", "c-1"], head, &acked).await;

    // (2) Views, computed here from the events read back.
    let tally_view = |prefix: &str| {
        let mut view = serde_json::Map::new();
        let mut counts = [0u64; 3];
        for (position, id) in &by_position {
            counts[(id % 3) as usize] += 1;
            view.insert(format!("{prefix}seen/{position:08}"), json!(true));
        }
        view.insert(format!("{prefix}applied"), json!(head));
        for (kind, count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            view.insert(format!("{prefix}count/T{kind}"), json!(count));
        }
        view
    };
    let tally = client.wait_caught_up("tally").await;
    assert!(
        good_tally.contains(&tally["module"].as_str().unwrap().to_string()),
        "{tally}"
    );
    assert!(
        client.whole_view_paged("tally", 1000).await == tally_view(""),
        "tally differs"
    );
    let rebuilt = client.wait_caught_up("rebuilt").await;
    let prefix = if rebuilt["schema_version"] == 2 {
        "v3/"
    } else {
        ""
    };
    assert!(
        client.whole_view_paged("rebuilt", 1000).await == tally_view(prefix),
        "rebuilt differs ({rebuilt})"
    );
    client.wait_caught_up("poison").await;
    let clean: Vec<u64> = by_position
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| !poisoned(*id))
        .collect();
    let mut expected_poison = serde_json::Map::new();
    expected_poison.insert("count".into(), json!(clean.len()));
    expected_poison.insert(
        "sum".into(),
        json!(clean.iter().map(|id| id % 5).sum::<u64>()),
    );
    let poison_view = client.whole_view_paged("poison", 1000).await;
    assert_eq!(
        poison_view.get("count"),
        expected_poison.get("count"),
        "poison count"
    );
    assert_eq!(
        poison_view.get("sum"),
        expected_poison.get("sum"),
        "poison sum"
    );
    let mut letters = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .api
            .dead_letters(
                "poison",
                &DeadLetterParams {
                    after,
                    limit: Some(1000),
                },
            )
            .await
            .unwrap();
        let Some(last) = page.dead_letters.last() else {
            break;
        };
        after = last.position;
        letters.extend(page.dead_letters.iter().map(|l| l.position));
    }
    let expected_letters: Vec<u64> = by_position
        .iter()
        .filter(|(_, id)| poisoned(*id))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(letters, expected_letters, "dead letters differ");
    // Every deploy that survived its kill serves a whole, exact view.
    let mut counter = serde_json::Map::new();
    counter.insert("total".into(), json!(head));
    counter.insert("category/c".into(), json!(head));
    for kind in 0..3u64 {
        let count = by_position.iter().filter(|(_, id)| id % 3 == kind).count();
        if count > 0 {
            counter.insert(format!("type/T{kind}"), json!(count));
        }
    }
    let listed = client.api.projectors().await.unwrap();
    let extras: Vec<String> = listed
        .projectors
        .iter()
        .map(|p| p.name.clone())
        .filter(|n| n.starts_with("extra-"))
        .collect();
    for name in &extras {
        client.wait_caught_up(name).await;
        assert_eq!(
            client.whole_view_paged(name, 1000).await,
            counter,
            "{name} differs"
        );
    }
    // The catch-up kills must have landed where they claim to (a few may not: a rebuild of
    // a short log can finish before the status is read).
    let catch_up_kills = survived.get("CatchUp").copied().unwrap_or(0);
    assert!(
        cache_kills.len() * 2 >= catch_up_kills,
        "only {} of {catch_up_kills} catch-up kills landed while writes were held: {cache_kills:?}",
        cache_kills.len()
    );
    eprintln!(
        "{kills} SIGKILLs across phases {survived:?}: {acked_events} acknowledged events, head {head}, \
         {} dead letters, {} of {} interrupted deploys landed, {} of {catch_up_kills} catch-up \
         kills with writes held (checkpoint, applied): {cache_kills:?}; every view exact",
        letters.len(),
        extras.len(),
        survived.get("Deploy").copied().unwrap_or(0),
        cache_kills.len(),
    );
    let mut prism = prism;
    prism.child.kill().unwrap();
    prism.child.wait().unwrap();
}
