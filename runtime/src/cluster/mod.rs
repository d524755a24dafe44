//! Several Prism nodes on one JetStream log: which nodes are alive ([`membership`]), which node
//! should own each projector ([`rendezvous`]), the lease that lets a node act as a projector's
//! owner ([`lease`]), and the loops that keep a node's leases renewed and in line with the live
//! nodes ([`ownership`]); the deployments and modules every node shares ([`catalog`]); the node
//! assembled ([`node`]); requests forwarded to a projector's owner ([`forward`]), over mutual
//! TLS when configured ([`tls`]). Each piece over a KV bucket of the log's servers is tested
//! against a real nats-server (`tests/cluster_*.rs`).

pub mod catalog;
pub mod drains;
pub mod forward;
pub mod lease;
pub mod membership;
pub mod node;
pub mod ownership;
pub mod rendezvous;
pub mod snapshots;
pub mod tls;
pub mod watch;

pub use catalog::{CatalogError, SharedCatalog};
pub use drains::Drains;
pub use forward::Forwarder;
pub use lease::{Lease, Leases, RenewError};
pub use membership::{Membership, Node};
pub use node::{Cluster, ClusterOptions};
pub use ownership::{Ownership, Tick};
pub use snapshots::{Label, Snapshots};
pub use tls::PeerTls;

/// Opens (or creates) the KV bucket `name` whose entries live `ttl` after their last write
/// (replicated `replicas` times), refusing one that keeps them another time: every node must
/// use the same TTL. `what` names the bucket in errors.
async fn ttl_bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    what: &str,
    replicas: usize,
    ttl: std::time::Duration,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    use anyhow::Context;
    let config = async_nats::jetstream::kv::Config {
        bucket: name.into(),
        history: 1,
        max_age: ttl,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let bucket = crate::log::jetstream::protocol::kv_bucket(js, config)
        .await
        .with_context(|| format!("opening the {what}' bucket"))?;
    let max_age = bucket
        .status()
        .await
        .with_context(|| format!("reading the {what}' bucket"))?
        .max_age();
    anyhow::ensure!(
        max_age == ttl,
        "the bucket {name} keeps entries {max_age:?}, not the TTL {ttl:?} this node uses: every \
         node must use the same TTL"
    );
    Ok(bucket)
}

/// Opens the object store `name`, creating it (file storage, replicated `replicas` times)
/// when missing; one another node created at the same moment is opened.
async fn object_store(
    js: &async_nats::jetstream::Context,
    name: &str,
    replicas: usize,
) -> anyhow::Result<async_nats::jetstream::object_store::ObjectStore> {
    use async_nats::jetstream::{object_store, stream::StorageType};
    if let Ok(store) = js.get_object_store(name).await {
        return Ok(store);
    }
    let config = object_store::Config {
        bucket: name.into(),
        num_replicas: replicas,
        storage: StorageType::File,
        ..Default::default()
    };
    match js.create_object_store(config).await {
        Ok(store) => Ok(store),
        Err(created) => Ok(js.get_object_store(name).await.map_err(|_| created)?),
    }
}

/// Every entry of `bucket` that holds a value now (deleted ones left out), by key: its keys
/// listed, then each read (one deleted in between is left out). `what` names it in errors.
async fn live_entries(
    bucket: &async_nats::jetstream::kv::Store,
    what: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, async_nats::jetstream::kv::Entry>> {
    use anyhow::Context;
    use futures::TryStreamExt;
    let keys: Vec<String> = bucket
        .keys()
        .await
        .with_context(|| format!("listing the {what}"))?
        .try_collect()
        .await
        .with_context(|| format!("listing the {what}"))?;
    let mut out = std::collections::BTreeMap::new();
    for key in keys {
        let entry = bucket
            .entry(key.as_str())
            .await
            .with_context(|| format!("reading {key} of the {what}"))?;
        if let Some(entry) =
            entry.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
        {
            out.insert(key, entry);
        }
    }
    Ok(out)
}
