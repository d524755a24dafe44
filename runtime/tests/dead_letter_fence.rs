//! The fence on dead-letter actions: in a cluster a node retries or discards a projector's
//! dead letter only while it holds the projector's lease. Here the registry runs on the
//! embedded log with a stand-in for the cluster (`SharedDeployments`) whose lease can be taken
//! away; the real cluster's `holds` is its lease check (`Cluster::owns`, tested in
//! `cluster_leases.rs` and `cluster_nodes.rs`). The fixed code is deployed first, so a retry
//! would apply: without the lease it is refused with `NotOwner` (421 over HTTP) and the dead
//! letters and the view stay as they were (sum 1+2+4+6 = 13); once the lease is back the retry
//! adds 3 (16) and the discard goes through.

mod common;

use common::artifacts;
use prism::data_dir::DataDir;
use prism::engine::{Engine, Sandbox};
use prism::log::{EventLog, ExpectedVersion, NewEvent};
use prism::projector::shared::{SharedDeployments, SharedError};
use prism::projector::{
    DeployOptions, Deployment, ErrorPolicy, LifecycleError, ModuleSource, Registry,
    RegistryOptions, RetryError, StorageError,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A cluster of one whose lease on every projector is `held`; `grants` more answers say yes
/// whatever `held` says (a lease that lapses between two checks).
#[derive(Debug, Default)]
struct Lease {
    held: AtomicBool,
    grants: AtomicUsize,
}

impl SharedDeployments for Lease {
    fn put(&self, _: &str, _: &Deployment) -> Result<(), SharedError> {
        Ok(())
    }
    fn remove(&self, _: &str) -> Result<(), SharedError> {
        Ok(())
    }
    fn store_module(&self, _: &str, _: &[u8]) -> Result<(), SharedError> {
        Ok(())
    }
    fn module(&self, _: &str) -> Result<Option<Vec<u8>>, SharedError> {
        Ok(None)
    }
    fn holds(&self, _: &str) -> bool {
        let granted = self
            .grants
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |g| g.checked_sub(1));
        granted.is_ok() || self.held.load(Ordering::SeqCst)
    }
    fn snapshots(&self, _: &str) -> Result<Vec<prism::store::snapshot::Label>, SharedError> {
        Ok(Vec::new())
    }
    fn fetch_snapshot(
        &self,
        label: &prism::store::snapshot::Label,
        _: &std::path::Path,
    ) -> Result<(), SharedError> {
        Err(SharedError::Unavailable(format!(
            "no {}",
            label.object_name()
        )))
    }
}

fn event(n: u64, flag: Option<&str>) -> NewEvent {
    let mut data = serde_json::json!({ "n": n });
    if let Some(flag) = flag {
        data[flag] = true.into();
    }
    NewEvent {
        event_type: "N".into(),
        data: serde_json::to_vec(&data).unwrap(),
        metadata: None,
        id: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_the_lease_takes_no_dead_letter_action() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::create(dir.path()).unwrap();
    let log = EventLog::open(&data.log()).unwrap();
    let lease = Arc::new(Lease::default());
    lease.held.store(true, Ordering::SeqCst);
    let options = RegistryOptions {
        shared: Some(lease.clone()),
        ..Default::default()
    };
    let engine = Engine::new(Some(data.cache()), Sandbox::default()).unwrap();
    let registry = Registry::open(&data, engine, log.clone(), options).unwrap();
    let deploy = DeployOptions {
        on_error: Some(ErrorPolicy::Skip),
        ..Default::default()
    };
    let wasm = artifacts::read(artifacts::POISON);
    let registry_ = registry.clone();
    tokio::task::spawn_blocking(move || {
        registry_.deploy("poison", ModuleSource::Upload(wasm), deploy)
    })
    .await
    .unwrap()
    .unwrap();
    // 1 + 2 + 4 + 6 applied; 3 (poison) and 5 (trap) dead-lettered.
    let events = vec![
        event(1, None),
        event(2, None),
        event(3, Some("poison")),
        event(4, None),
        event(5, Some("trap")),
        event(6, None),
    ];
    log.append("p-1", ExpectedVersion::Any, events)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry
        .get("poison")
        .unwrap()
        .serving()
        .status()
        .checkpoint
        < 6
    {
        assert!(
            Instant::now() < deadline,
            "the projector never applied the log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let letters = |registry: &Registry| -> Vec<u64> {
        let letters = registry.dead_letters("poison", 0, 100).unwrap();
        letters.iter().map(|l| l.position).collect()
    };
    assert_eq!(letters(&registry), [3, 5]);
    let sum = |registry: &Registry| {
        let store = &registry.get("poison").unwrap().serving().store;
        let value = store.snapshot().unwrap().get("sum").unwrap().unwrap();
        serde_json::from_slice::<serde_json::Value>(&value).unwrap()
    };
    assert_eq!(sum(&registry), 13);
    // The fix deployed (continue): a retry would now apply the events.
    let (registry_, fixed) = (registry.clone(), artifacts::read(artifacts::POISON_FIXED));
    tokio::task::spawn_blocking(move || {
        registry_.deploy(
            "poison",
            ModuleSource::Upload(fixed),
            DeployOptions::default(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let retry = |position: u64| {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.retry_dead_letter("poison", position))
    };

    // The lease lapsed: nothing is retried or discarded — also when it lapses after the
    // request was checked, before the runner commits the retry.
    lease.held.store(false, Ordering::SeqCst);
    let retried = retry(3).await.unwrap();
    assert!(matches!(retried, Err(RetryError::NotOwner)), "{retried:?}");
    lease.grants.store(1, Ordering::SeqCst);
    let retried = retry(3).await.unwrap();
    assert!(matches!(retried, Err(RetryError::NotOwner)), "{retried:?}");
    assert_eq!(
        lease.grants.load(Ordering::SeqCst),
        0,
        "the request was checked"
    );
    let discarded = registry.discard_dead_letter("poison", 5);
    assert!(
        matches!(
            &discarded,
            Err(LifecycleError::Storage(StorageError::Shared(
                SharedError::NotOwner(_)
            )))
        ),
        "{discarded:?}"
    );
    assert_eq!(letters(&registry), [3, 5]);
    assert_eq!(sum(&registry), 13);

    // The lease back: both go through.
    lease.held.store(true, Ordering::SeqCst);
    retry(3).await.unwrap().unwrap();
    assert_eq!(sum(&registry), 16);
    assert!(registry.discard_dead_letter("poison", 5).unwrap());
    assert_eq!(letters(&registry), Vec::<u64>::new());
    // Both recorded in the deployment, so that a node keeping a view from an earlier ownership
    // of it does not keep one without them (only the two that went through count).
    let recorded = registry.get("poison").unwrap().deployment();
    assert_eq!(recorded.dead_letter_actions, 2);
    let registry_ = registry.clone();
    tokio::task::spawn_blocking(move || registry_.shutdown())
        .await
        .unwrap();
}
