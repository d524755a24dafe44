//! The snapshots' store against a real nats-server: which snapshots a collection keeps (the
//! expectations written out by hand), that a deleted snapshot leaves nothing behind (no
//! tombstone in the store's stream), and that a sweep purges the chunks of an upload cut short
//! once they have stopped growing — never those of an upload still growing, nor a named
//! snapshot's.

mod common;

use common::nats::NatsServer;
use futures::TryStreamExt;
use prism::cluster::{Label, Snapshots};
use std::collections::HashMap;
use std::time::Duration;

fn label(incarnation: u64, generation: u64, checkpoint: u64) -> Label {
    Label {
        projector: "orders".into(),
        incarnation,
        generation,
        checkpoint,
        dead_letter_actions: 0,
        proven: None,
        entries: checkpoint,
    }
}

/// `(incarnation, generation, checkpoint)` of each stored snapshot of `orders`.
async fn stored(snapshots: &Snapshots) -> Vec<(u64, u64, u64)> {
    let labels = snapshots.list("orders").await.unwrap();
    labels
        .iter()
        .map(|l| (l.incarnation, l.generation, l.checkpoint))
        .collect()
}

/// Messages in the store's stream under `filter`, by subject.
async fn subjects(js: &async_nats::jetstream::Context, filter: &str) -> HashMap<String, usize> {
    let stream = js.get_stream("OBJ_PRISM_SNAPSHOTS").await.unwrap();
    stream
        .info_with_subjects(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn collections_keep_what_they_should_and_leave_no_tombstones() {
    let server = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let snapshots = Snapshots::open(&js, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let packed = dir.path().join("packed");
    std::fs::write(&packed, b"a snapshot's bytes").unwrap();
    let all = [
        (1, 1, 5),  // an earlier deployment of the name
        (2, 1, 10), // the serving generation, oldest first
        (2, 1, 20),
        (2, 1, 30),
        (2, 1, 40),
        (2, 2, 50), // a generation being built (a later one than the collector keeps)
        (3, 1, 60), // a later deployment's (the collector is a stale owner)
    ];
    for (incarnation, generation, checkpoint) in all {
        let label = label(incarnation, generation, checkpoint);
        snapshots.upload(&label, &packed, 0).await.unwrap();
    }
    assert_eq!(stored(&snapshots).await, all);

    // Keeping two of generation 1 of deployment 2: its two oldest and the earlier
    // deployment's go; the later generation's and the later deployment's stay.
    assert_eq!(snapshots.collect("orders", &[(2, 1)], 2).await.unwrap(), 3);
    assert_eq!(
        stored(&snapshots).await,
        [(2, 1, 30), (2, 1, 40), (2, 2, 50), (3, 1, 60)]
    );
    // Keeping both generations, one each.
    assert_eq!(
        snapshots
            .collect("orders", &[(2, 1), (2, 2)], 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        stored(&snapshots).await,
        [(2, 1, 40), (2, 2, 50), (3, 1, 60)]
    );
    // The newer owner of deployment 3 keeps its own and deletes the rest.
    assert_eq!(snapshots.collect("orders", &[(3, 1)], 3).await.unwrap(), 2);
    assert_eq!(stored(&snapshots).await, [(3, 1, 60)]);
    // The projector deleted: none kept.
    assert_eq!(snapshots.collect("orders", &[], 3).await.unwrap(), 1);
    assert_eq!(stored(&snapshots).await, []);

    // Nothing left in the stream: no chunks, and no tombstones of the deleted names.
    assert_eq!(subjects(&js, "$O.PRISM_SNAPSHOTS.>").await, HashMap::new());
    let store = js.get_object_store("PRISM_SNAPSHOTS").await.unwrap();
    let listed: Vec<_> = store.list().await.unwrap().try_collect().await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sweeps_purge_the_chunks_of_cut_uploads_only() {
    let server = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let snapshots = Snapshots::open(&js, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let packed = dir.path().join("packed");
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&packed, &bytes).unwrap();
    // A complete snapshot.
    let whole = label(1, 1, 10);
    snapshots.upload(&whole, &packed, 0).await.unwrap();
    // An upload cut short: at 16 KiB a second (4 KiB chunks), about 1.5 s of 6.
    let cut = tokio::time::timeout(
        Duration::from_millis(1500),
        snapshots.upload(&label(1, 1, 20), &packed, 16 << 10),
    )
    .await;
    assert!(cut.is_err(), "the upload finished: {cut:?}");
    let unnamed = snapshots.unnamed().await.unwrap();
    assert_eq!(unnamed.len(), 1, "{unnamed:?}");
    let (orphan, chunks) = unnamed.iter().next().map(|(n, c)| (n.clone(), *c)).unwrap();
    assert!(chunks >= 2, "{chunks} chunks");
    // An upload under way (chunks published by hand, as the store does).
    let growing = "growing";
    let js = &js;
    let chunk = |n: u8| async move {
        let subject = format!("$O.PRISM_SNAPSHOTS.C.{growing}");
        js.publish(subject, vec![n; 64].into())
            .await
            .unwrap()
            .await
            .unwrap();
    };
    chunk(1).await;
    chunk(2).await;

    let after = Duration::from_millis(300);
    let mut seen = Default::default();
    // First seen: nothing purged yet.
    assert_eq!(snapshots.sweep(&mut seen, after).await.unwrap(), 0);
    chunk(3).await;
    tokio::time::sleep(after * 2).await;
    // The cut upload has not grown since: purged; the growing one has: kept.
    assert_eq!(snapshots.sweep(&mut seen, after).await.unwrap(), 1);
    let unnamed = snapshots.unnamed().await.unwrap();
    assert_eq!(unnamed, HashMap::from([(growing.to_string(), 3)]));
    assert!(!unnamed.contains_key(&orphan));
    // It stopped growing: purged at a later sweep.
    tokio::time::sleep(after * 2).await;
    assert_eq!(snapshots.sweep(&mut seen, after).await.unwrap(), 1);
    assert_eq!(snapshots.unnamed().await.unwrap(), HashMap::new());

    // The complete snapshot is whole.
    assert_eq!(stored(&snapshots).await, [(1, 1, 10)]);
    let back = dir.path().join("back");
    snapshots.download(&whole, &back).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
}
