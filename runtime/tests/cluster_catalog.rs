//! The catalog the nodes share, against a real nats-server: a deployment changed by two nodes
//! from the same revision is written by one and refused to the other (told the revision it
//! lost to), a deleted one likewise; a module round-trips through the Object Store by its
//! SHA-256, once, and one damaged in the store is refused on download.

mod common;

use common::nats::NatsServer;
use prism::cluster::{CatalogError, SharedCatalog};
use sha2::{Digest, Sha256};

async fn open(server: &NatsServer) -> (async_nats::jetstream::Context, SharedCatalog) {
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let catalog = SharedCatalog::open(&js, 1).await.unwrap();
    (js, catalog)
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_are_written_with_compare_and_set() {
    let server = NatsServer::start();
    let (_, one) = open(&server).await;
    let (_, two) = open(&server).await;

    let first = one.put("tally", "v1".into(), None).await.unwrap();
    // Created twice: the second creation is refused.
    match two.put("tally", "v1 again".into(), None).await {
        Err(CatalogError::Changed { revision }) => assert_eq!(revision, first),
        other => panic!("{other:?}"),
    }
    // Both read revision `first`; one writes, the other is refused and told why.
    let second = two.put("tally", "v2".into(), Some(first)).await.unwrap();
    assert!(second > first);
    match one.put("tally", "v2 elsewhere".into(), Some(first)).await {
        Err(CatalogError::Changed { revision }) => assert_eq!(revision, second),
        other => panic!("{other:?}"),
    }
    // The same write again (its answer was lost, say): it is there, at the later revision.
    assert_eq!(
        one.put("tally", "v2".into(), Some(first)).await.unwrap(),
        second
    );
    let stored = one.get("tally").await.unwrap().unwrap();
    assert_eq!(
        (stored.record.as_ref(), stored.revision),
        (&b"v2"[..], second)
    );
    one.put("orders", "o1".into(), None).await.unwrap();
    let all = two.deployments().await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["orders", "tally"]);

    // A delete at a stale revision is refused; at the current one it goes.
    match one.remove("tally", first).await {
        Err(CatalogError::Changed { revision }) => assert_eq!(revision, second),
        other => panic!("{other:?}"),
    }
    one.remove("tally", second).await.unwrap();
    assert_eq!(two.get("tally").await.unwrap(), None);
    match two.remove("tally", second).await {
        Err(CatalogError::Changed { revision: 0 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        two.deployments().await.unwrap().keys().collect::<Vec<_>>(),
        ["orders"]
    );
    // Created again after its deletion.
    two.put("tally", "v3".into(), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_are_stored_by_their_hash_and_checked_on_download() {
    let server = NatsServer::start();
    let (js, catalog) = open(&server).await;
    // 3 MiB: several of the store's chunks.
    let component: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let hash = catalog.put_module(&component).await.unwrap();
    assert_eq!(hash, hex::encode(Sha256::digest(&component)));
    assert_eq!(catalog.put_module(&component).await.unwrap(), hash);
    assert_eq!(catalog.module(&hash).await.unwrap(), Some(component));

    // Other bytes under that name (a damaged store): refused.
    let store = js.get_object_store("PRISM_MODULES").await.unwrap();
    store
        .put(
            format!("{hash}.wasm").as_str(),
            &mut std::io::Cursor::new(b"not the module".to_vec()),
        )
        .await
        .unwrap();
    match catalog.module(&hash).await {
        Err(CatalogError::Damaged { hash: h, actual }) => {
            assert_eq!(h, hash);
            assert_eq!(actual, hex::encode(Sha256::digest(b"not the module")));
        }
        other => panic!("{:?}", other.map(|m| m.map(|m| m.len()))),
    }
    assert_eq!(catalog.module(&"0".repeat(64)).await.unwrap(), None);
}
