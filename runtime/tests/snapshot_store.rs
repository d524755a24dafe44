//! The snapshots' store against a real nats-server: which snapshots a collection keeps (the
//! expectations written out by hand), that a deleted snapshot leaves nothing behind (no
//! tombstone in the store's stream), and that a sweep purges the chunks of an upload cut short
//! once they have stopped growing — never those of an upload still growing, nor a named
//! snapshot's.

mod common;

use common::nats::NatsServer;
use futures::TryStreamExt;
use prism::cluster::snapshots::Damaged;
use prism::cluster::{Label, Snapshots};
use std::collections::HashMap;
use std::time::Duration;

fn label(incarnation: u64, generation: u64, checkpoint: u64) -> Label {
    coded(incarnation, generation, checkpoint, "a")
}

/// A snapshot of a view written by the code `code`.
fn coded(incarnation: u64, generation: u64, checkpoint: u64, code: &str) -> Label {
    Label {
        projector: "orders".into(),
        incarnation,
        generation,
        checkpoint,
        dead_letter_actions: 0,
        proven: Some(code.into()),
        entries: checkpoint,
    }
}

fn code(code: &str) -> Option<String> {
    Some(code.into())
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
    let upload = async |labels: &[(u64, u64, u64, &str)]| {
        for (incarnation, generation, checkpoint, code) in labels {
            let label = coded(*incarnation, *generation, *checkpoint, code);
            snapshots.upload(&label, &packed, 0).await.unwrap();
        }
    };
    upload(&[
        (1, 1, 5, "a"),  // an earlier deployment of the name
        (2, 1, 10, "a"), // the serving generation, oldest first
        (2, 1, 20, "a"),
        (2, 1, 30, "a"),
        (2, 1, 40, "a"),
        (2, 1, 35, "x"), // written by code a reload replaced
        (2, 2, 50, "b"), // a rebuild replaced or cancelled
        (2, 3, 70, "c"), // a later rebuild, cancelled
        (3, 1, 60, "a"), // a later deployment's (the collector is a stale owner)
    ])
    .await;
    let owner = || true;

    // The owner runs generation 1 of deployment 2 with code a, and keeps two: the two oldest
    // of it go, and every other but the later deployment's.
    let kept = [(2, 1, code("a"))];
    assert_eq!(
        snapshots.collect("orders", &kept, 2, owner).await.unwrap(),
        6
    );
    assert_eq!(
        stored(&snapshots).await,
        [(2, 1, 30), (2, 1, 40), (3, 1, 60)]
    );
    // A rebuild on generation 2 with code d (a cancelled one with code b used that number):
    // one kept of each, the cancelled rebuild's gone though its checkpoint is the newest.
    upload(&[(2, 2, 80, "b"), (2, 2, 55, "d")]).await;
    let kept = [(2, 1, code("a")), (2, 2, code("d"))];
    assert_eq!(
        snapshots.collect("orders", &kept, 1, owner).await.unwrap(),
        2
    );
    assert_eq!(
        stored(&snapshots).await,
        [(2, 1, 40), (2, 2, 55), (3, 1, 60)]
    );
    // A collector that lost the projector deletes nothing.
    let kept = [(3, 1, code("a"))];
    let lost = snapshots.collect("orders", &kept, 3, || false).await;
    assert!(lost.is_err(), "{lost:?}");
    assert_eq!(stored(&snapshots).await.len(), 3);
    // The newer owner of deployment 3 keeps its own and deletes the rest.
    assert_eq!(
        snapshots.collect("orders", &kept, 3, owner).await.unwrap(),
        2
    );
    assert_eq!(stored(&snapshots).await, [(3, 1, 60)]);
    // The projector deleted: none kept.
    assert_eq!(snapshots.collect("orders", &[], 3, owner).await.unwrap(), 1);
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

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_missing_chunks_or_with_other_bytes_is_refused_as_damaged() {
    let server = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let snapshots = Snapshots::open(&js, 1).await.unwrap();
    let store = js.get_object_store("PRISM_SNAPSHOTS").await.unwrap();
    let stream = js.get_stream("OBJ_PRISM_SNAPSHOTS").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let packed = dir.path().join("packed");
    let bytes: Vec<u8> = (0..1_000_000u64).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&packed, &bytes).unwrap();
    let back = dir.path().join("back");
    let damaged = |result: anyhow::Result<u64>| match result {
        Err(e) => e.downcast_ref::<Damaged>().is_some(),
        Ok(_) => false,
    };
    // 512 KiB chunks at this rate: two.
    let (intact, gone, changed) = (label(1, 1, 10), label(1, 1, 20), label(1, 1, 30));
    for label in [&intact, &gone, &changed] {
        snapshots.upload(label, &packed, 4 << 20).await.unwrap();
    }
    let chunks_of = async |label: &Label| {
        let info = store.info(label.object_name()).await.unwrap();
        assert_eq!(info.chunks, 2);
        format!("$O.PRISM_SNAPSHOTS.C.{}", info.nuid)
    };
    // Its chunks purged (a sweep that took a stopped node's upload for a cut one).
    stream.purge().filter(chunks_of(&gone).await).await.unwrap();
    let refused = snapshots.download(&gone, &back).await;
    assert!(damaged(refused), "a snapshot without its chunks");
    // As many chunks, other bytes.
    let subject = chunks_of(&changed).await;
    stream.purge().filter(&subject).await.unwrap();
    for _ in 0..2 {
        let chunk = vec![7u8; 500_000];
        js.publish(subject.clone(), chunk.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let refused = snapshots.download(&changed, &back).await;
    assert!(
        damaged(refused),
        "a snapshot whose bytes fail their SHA-256"
    );
    // The intact one downloads whole.
    let size = snapshots.download(&intact, &back).await.unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
}
