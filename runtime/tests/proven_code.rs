//! Which code a view records as having written it (what a snapshot carries, and what decides
//! whether a new owner may restore it): a reload without a trial (only the error policy
//! changed) is recorded at once, at the view's checkpoint, on an idle projector too — the
//! events after it are the new code's; a reload on trial is recorded only when its first
//! batch commits. Checked on the view itself, against records written out here.

mod common;

use common::artifacts;
use prism::data_dir::DataDir;
use prism::engine::{Engine, Sandbox};
use prism::log::{EventLog, ExpectedVersion, NewEvent};
use prism::projector::{DeployOptions, ErrorPolicy, ModuleSource, Registry, RegistryOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_type: "N".into(),
        data: serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap(),
        metadata: None,
        id: None,
    }
}

/// The serving view's checkpoint and the record of the code proven on it, as JSON.
fn proven(registry: &Registry) -> (u64, Option<Value>) {
    let states = registry.view_states("tally");
    let (_, checkpoint, proven) = states.first().cloned().unwrap();
    let proven = proven.map(|p| serde_json::from_slice(&p).unwrap());
    (checkpoint, proven)
}

async fn deploy(registry: &Registry, wasm: &str, options: DeployOptions) {
    let (registry, wasm) = (registry.clone(), artifacts::read(wasm));
    tokio::task::spawn_blocking(move || {
        registry.deploy("tally", ModuleSource::Upload(wasm), options)
    })
    .await
    .unwrap()
    .unwrap();
}

async fn wait_checkpoint(registry: &Registry, at: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while proven(registry).0 < at {
        assert!(Instant::now() < deadline, "the view never reached {at}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_are_recorded_on_the_view_when_their_code_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::create(dir.path()).unwrap();
    let log = EventLog::open(&data.log()).unwrap();
    let engine = Engine::new(Some(data.cache()), Sandbox::default()).unwrap();
    let registry = Registry::open(&data, engine, log.clone(), RegistryOptions::default()).unwrap();
    deploy(
        &registry,
        artifacts::EVENT_COUNTER,
        DeployOptions::default(),
    )
    .await;
    log.append("n-1", ExpectedVersion::Any, (1..=3).map(event).collect())
        .await
        .unwrap();
    wait_checkpoint(&registry, 3).await;
    let (checkpoint, first) = proven(&registry);
    let first = first.expect("the first batch records the code");
    assert_eq!((checkpoint, &first["on_error"]), (3, &Value::from("stop")));

    // Only the error policy changes: no trial; recorded at once, at checkpoint 3, though no
    // event has come since.
    let skip = DeployOptions {
        on_error: Some(ErrorPolicy::Skip),
        ..Default::default()
    };
    deploy(&registry, artifacts::EVENT_COUNTER, skip).await;
    let mut skipping = first.clone();
    skipping["on_error"] = "skip".into();
    assert_eq!(proven(&registry), (3, Some(skipping.clone())));

    // New config: a trial, recorded only with the first batch it applies.
    let config = DeployOptions {
        config: Some("another".into()),
        ..Default::default()
    };
    deploy(&registry, artifacts::EVENT_COUNTER, config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proven(&registry), (3, Some(skipping.clone())));
    log.append("n-1", ExpectedVersion::Any, vec![event(4)])
        .await
        .unwrap();
    wait_checkpoint(&registry, 4).await;
    let mut configured = skipping;
    configured["config"] = "another".into();
    assert_eq!(proven(&registry), (4, Some(configured)));
}
