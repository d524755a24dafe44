//! One node of a cluster, assembled: its membership, its leases and the shared catalog, and the
//! loop that keeps the registry running exactly the projectors this node owns.
//!
//! Every [`TICK`](ClusterOptions::tick) the loop reads the shared catalog, brings the leases in
//! line with the live nodes ([`Ownership::tick`]), then reconciles the registry with what the
//! node owns now: a projector to hand over is stopped before its lease is released; one whose
//! lease was lost or lapsed (the node was cut off, or stopped) is stopped; one it owns but does
//! not run is adopted from the shared catalog, and answers queries only once it has caught up
//! with the log's head as it was at adoption (503 until then: never an older view than the
//! previous owner served). What this node keeps of projectors deleted elsewhere is removed.
//!
//! The node is also the registry's `SharedDeployments` ([`shared`]): a change of a deployment
//! is written to the shared catalog at the revision this node last saw, and only while it holds
//! the projector's lease. Each adoption writes the record again at the revision it read: the
//! revision is the fencing token, so a write the previous owner sent before its lease lapsed
//! and that arrives after is refused. An adoption restores the newest snapshot of each view
//! that fits; the owner uploads them ([`snapshots`]) periodically and when it hands a
//! projector over.

mod adoption;
mod shared;
mod snapshots;

pub use snapshots::Uploaded;

use super::membership::{Membership, Node};
use super::{Drains, Leases, Ownership, SharedCatalog, Snapshots, rendezvous};
use crate::log::EventLog;
use crate::projector::{Registry, Restored};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// This node's id, unique in the cluster (and the same across its restarts).
    pub node_id: String,
    /// Where the other nodes reach this one (`http://host:port`).
    pub advertise_url: String,
    /// The secret every node presents to the others.
    pub token: String,
    /// How long a lease (and a node's membership) lives without renewal.
    pub lease_ttl: Duration,
    /// How long before its lease expires a node stops acting as owner.
    pub lease_margin: Duration,
    /// How often the owner of a projector snapshots its changed views (zero: only when it
    /// hands the projector over).
    pub snapshot_interval: Duration,
    /// Snapshots kept per view.
    pub snapshots_kept: usize,
    /// Bytes a second a snapshot's upload may take at most (0: unbounded).
    pub snapshot_upload_rate: u64,
    /// Replicas of the cluster's buckets.
    pub replicas: usize,
    /// TLS between nodes (an option): the peer listener and its files.
    pub tls: Option<super::PeerTls>,
}

impl ClusterOptions {
    /// How often the node renews its leases and reconciles its projectors.
    pub fn tick(&self) -> Duration {
        (self.lease_ttl / 6).max(Duration::from_millis(100))
    }
}

/// Who answers for a projector, as this node sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node, under its lease at this revision.
    Here(u64),
    /// Another live node, under its lease at this revision.
    Node {
        id: String,
        url: String,
        revision: u64,
    },
    /// No node can answer now: the lease is free, lapsed, or its holder is gone.
    Moving,
    /// No node has the projector (or, for a deploy, this node should create it).
    Nobody,
}

/// One node of a cluster.
pub struct Cluster {
    options: ClusterOptions,
    ownership: Ownership,
    leases: Leases,
    catalog: SharedCatalog,
    log: EventLog,
    runtime: tokio::runtime::Handle,
    /// The shared catalog's revision of each deployment this node wrote or adopted last.
    revisions: Mutex<HashMap<String, u64>>,
    /// The live nodes at the last tick.
    live: RwLock<BTreeMap<String, Node>>,
    /// Projectors adopted and still catching up: the head they must reach before answering.
    catching_up: Mutex<HashMap<String, u64>>,
    /// The deployments at the last tick that could read them.
    known: Mutex<BTreeMap<String, super::catalog::Stored>>,
    /// The live nodes' advertised authorities (the HTTP boundary accepts them as `Host`).
    peers: crate::http::boundary::Peers,
    /// Projectors whose lease this node took to create them, and when: not in the shared
    /// catalog until their deploy records them, they are not "deleted" meanwhile.
    creating: Mutex<HashMap<String, std::time::Instant>>,
    /// The views' snapshots every node shares.
    snapshots: Snapshots,
    /// The nodes drained by an operator: rendezvous hashing gives them nothing.
    drains: Drains,
    /// Held while this node copies and uploads a snapshot: one at a time.
    snapshotting: tokio::sync::Mutex<()>,
    /// What this node last uploaded or restored of each view.
    latest: Mutex<snapshots::Latest>,
    /// The views restored from snapshots when this node adopted the projectors it owns.
    restores: Mutex<HashMap<String, Vec<Restored>>>,
    /// The module each projector coming to this node had its code readied for.
    warmed: Mutex<HashMap<String, String>>,
    /// Each lease this node took, numbered: an adoption that finds another number when it
    /// ends ran while the lease was given up and taken again, and is done afresh.
    tenures: Mutex<(u64, HashMap<String, u64>)>,
}

impl Cluster {
    /// Joins the cluster on the servers `client` is connected to (the event log's), opening
    /// (or creating) its buckets. Call it from the runtime the node runs on.
    pub async fn join(
        client: async_nats::Client,
        log: EventLog,
        options: ClusterOptions,
    ) -> anyhow::Result<Arc<Cluster>> {
        let js = async_nats::jetstream::new(client);
        let (ttl, replicas) = (options.lease_ttl, options.replicas);
        let node = Node {
            url: options.advertise_url.clone(),
        };
        let membership = Membership::open(&js, &options.node_id, node, replicas, ttl).await?;
        let leases =
            Leases::open(&js, &options.node_id, replicas, ttl, options.lease_margin).await?;
        let catalog = SharedCatalog::open(&js, replicas).await?;
        let snapshots = Snapshots::open(&js, replicas).await?;
        let drains = Drains::open(&js, replicas).await?;
        let ownership = Ownership::new(&options.node_id, membership, leases.clone());
        Ok(Arc::new(Cluster {
            options,
            ownership,
            leases,
            catalog,
            log,
            runtime: tokio::runtime::Handle::current(),
            revisions: Mutex::new(HashMap::new()),
            live: RwLock::new(BTreeMap::new()),
            catching_up: Mutex::new(HashMap::new()),
            known: Mutex::new(BTreeMap::new()),
            peers: Default::default(),
            creating: Mutex::new(HashMap::new()),
            snapshots,
            drains,
            snapshotting: tokio::sync::Mutex::new(()),
            latest: Mutex::new(HashMap::new()),
            restores: Mutex::new(HashMap::new()),
            warmed: Mutex::new(HashMap::new()),
            tenures: Mutex::new((0, HashMap::new())),
        }))
    }

    /// This node's options.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The revision of `projector`'s lease, when this node owns it now.
    pub fn owns(&self, projector: &str) -> Option<u64> {
        self.ownership.owns(projector)
    }

    /// The live nodes' advertised authorities, kept up to date.
    pub fn peers(&self) -> crate::http::boundary::Peers {
        self.peers.clone()
    }

    /// The live nodes at the last tick.
    pub fn live(&self) -> BTreeMap<String, Node> {
        self.live.read().clone()
    }

    /// The node rendezvous hashing gives `projector` to among the live nodes not drained, as
    /// this node last saw them.
    fn chosen(&self, projector: &str) -> Option<String> {
        self.ranked(projector).0
    }

    /// The node rendezvous hashing gives `projector` to (see [`Cluster::chosen`]), and the
    /// one it would go to if that node died.
    fn ranked(&self, projector: &str) -> (Option<String>, Option<String>) {
        let live = self.live.read();
        let drained = self.drains.drained();
        let eligible = super::drains::eligible(live.keys(), &drained);
        let first = rendezvous::owner(projector, eligible.iter().copied());
        let next = rendezvous::owner(
            projector,
            eligible.iter().copied().filter(|n| Some(*n) != first),
        );
        (first.map(str::to_string), next.map(str::to_string))
    }

    /// The leases' bucket (for `GET /cluster`).
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The shared catalog.
    pub fn catalog(&self) -> &SharedCatalog {
        &self.catalog
    }

    /// The drained nodes.
    pub fn drains(&self) -> &Drains {
        &self.drains
    }

    /// Who answers for `projector` now. `deploying`: the request would create it when no
    /// node has it, and this node should own it by rendezvous, so this node takes its lease.
    pub async fn owner(&self, projector: &str, deploying: bool) -> anyhow::Result<Owner> {
        if let Some(revision) = self.owns(projector) {
            return Ok(Owner::Here(revision));
        }
        match self.leases.holder(projector).await? {
            // Its own lease, lapsed or not yet taken by the loop: nobody answers until it is.
            Some((holder, _)) if holder == self.options.node_id => Ok(Owner::Moving),
            Some((holder, revision)) => Ok(match self.live.read().get(&holder) {
                Some(node) => Owner::Node {
                    id: holder,
                    url: node.url.clone(),
                    revision,
                },
                None => Owner::Moving,
            }),
            None if self.catalog.get(projector).await?.is_some() => Ok(Owner::Moving),
            None if !deploying => Ok(Owner::Nobody),
            None => {
                let chosen = self
                    .chosen(projector)
                    .unwrap_or_else(|| self.options.node_id.clone());
                if chosen == self.options.node_id {
                    return Ok(match self.claim(projector).await? {
                        Some(revision) => Owner::Here(revision),
                        None => Owner::Moving,
                    });
                }
                let url = match self.live.read().get(&chosen) {
                    Some(node) => node.url.clone(),
                    None => return Ok(Owner::Moving),
                };
                Ok(Owner::Node {
                    url,
                    id: chosen,
                    revision: 0,
                })
            }
        }
    }

    /// Takes the lease of `projector`, which no node has, to create it here (a deploy
    /// forwarded by a node that chose this one): its revision, or `None` when another node
    /// holds it.
    pub async fn claim(&self, projector: &str) -> anyhow::Result<Option<u64>> {
        let claimed = self.ownership.claim(projector).await?;
        if claimed.is_some() {
            self.took(projector);
            self.revisions.lock().remove(projector);
            self.creating
                .lock()
                .insert(projector.to_string(), std::time::Instant::now());
        }
        Ok(claimed)
    }

    /// Numbers a lease of `projector` this node has just taken (see `tenures`).
    fn took(&self, projector: &str) {
        let mut tenures = self.tenures.lock();
        tenures.0 += 1;
        let tenure = tenures.0;
        tenures.1.insert(projector.to_string(), tenure);
    }

    /// The number of this node's latest lease of `projector` (see `tenures`).
    fn tenure(&self, projector: &str) -> Option<u64> {
        self.tenures.lock().1.get(projector).copied()
    }

    /// Whether `projector`, adopted here, is still catching up with the log's head as it was
    /// at adoption (its queries wait, answered 503).
    pub fn catching_up(&self, projector: &str, registry: &Registry) -> bool {
        let mut catching_up = self.catching_up.lock();
        let Some(&target) = catching_up.get(projector) else {
            return false;
        };
        let reached = registry
            .get(projector)
            .is_some_and(|p| p.serving().status().checkpoint >= target);
        if reached {
            catching_up.remove(projector);
        }
        !reached
    }

    /// Whether `projector` is deployed, as the shared catalog said at the last tick.
    pub fn deployed(&self, projector: &str) -> bool {
        self.known.lock().contains_key(projector)
    }

    /// Announces the node (call it once the node serves), then runs its loops until the
    /// returned task is aborted: the renewals of its membership and leases, on a task of their
    /// own so that nothing slow delays them (loading a projector's code takes seconds), the
    /// periodic snapshots of its views, and the reconciliation of its projectors with what it
    /// owns.
    pub fn start(self: &Arc<Self>, registry: Registry) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            if let Err(e) = cluster.ownership.join().await {
                tracing::error!(error = %e, "announcing this node; the renewals go on trying");
            }
            let renewing = cluster.clone();
            let _renewals = AbortOnDropHandle::new(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(renewing.options.tick());
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    match renewing.ownership.renew().await {
                        Ok(lost) if !lost.is_empty() => {
                            tracing::warn!(?lost, "leases lost to other nodes");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "renewing this node's leases"),
                    }
                }
            }));
            let _snapshots = (!cluster.options.snapshot_interval.is_zero()).then(|| {
                let (snapshotting, registry) = (cluster.clone(), registry.clone());
                AbortOnDropHandle::new(tokio::spawn(async move {
                    let every = snapshotting.options.snapshot_interval;
                    let mut ticks =
                        tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticks.tick().await;
                        snapshotting.snapshot_all(&registry).await;
                    }
                }))
            });
            let _sweeps = AbortOnDropHandle::new(tokio::spawn(cluster.clone().sweep()));
            let woken = Arc::new(tokio::sync::Notify::new());
            let _nudges = AbortOnDropHandle::new(tokio::spawn(super::watch::nudge(
                cluster.leases.bucket().clone(),
                cluster.ownership.membership().bucket().clone(),
                woken.clone(),
            )));
            let _drains =
                AbortOnDropHandle::new(tokio::spawn(cluster.drains.clone().follow(woken.clone())));
            let mut ticks = tokio::time::interval(cluster.options.tick());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Adoptions run beside the loop (loading code takes seconds): it goes on taking
            // the leases of a dead node's other projectors meanwhile.
            let mut adoptions = adoption::Adoptions::default();
            loop {
                // A lease given up or a node come or gone wakes the loop at once.
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = woken.notified() => {}
                }
                adoptions.reap();
                cluster.tick(&registry, &mut adoptions).await;
            }
        })
    }

    /// Hands every projector over and leaves the set (a node shutting down): snapshots the
    /// views that changed (for [`snapshots::HANDOVER_SNAPSHOT_LIMIT`] in all), stops the
    /// projectors and gives up their leases; the others take over at once.
    pub async fn leave(&self, registry: &Registry) {
        let limit = snapshots::HANDOVER_SNAPSHOT_LIMIT;
        if tokio::time::timeout(limit, self.snapshot_all(registry))
            .await
            .is_err()
        {
            tracing::warn!("leaving before every view's snapshot was uploaded: it took too long");
        }
        let running: Vec<String> = registry.list().iter().map(|p| p.name.clone()).collect();
        for name in running {
            self.unload(registry, &name).await;
        }
        // Bounded: with the servers gone, the leases and the membership expire by themselves.
        let giving_up = async {
            for name in self.ownership.held() {
                if let Err(e) = self.ownership.release(&name).await {
                    tracing::warn!(projector = %name, error = %e, "releasing a lease at shutdown");
                }
            }
            if let Err(e) = self.ownership.leave().await {
                tracing::warn!(error = %e, "leaving the cluster");
            }
        };
        if tokio::time::timeout(self.options.lease_ttl, giving_up)
            .await
            .is_err()
        {
            tracing::warn!("the servers did not answer; this node's leases expire by themselves");
        }
    }

    /// One round of the loop.
    async fn tick(self: &Arc<Self>, registry: &Registry, adoptions: &mut adoption::Adoptions) {
        let read = self.catalog.deployments().await;
        let read_all = read.is_ok();
        let deployments = match read {
            Ok(deployments) => {
                *self.known.lock() = deployments.clone();
                deployments
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the shared catalog");
                self.known.lock().clone()
            }
        };
        // Projectors being created here: recorded once their deploy is (a minute at most).
        let creating: Vec<String> = {
            let mut creating = self.creating.lock();
            creating.retain(|name, since| {
                !deployments.contains_key(name) && since.elapsed() < Duration::from_secs(60)
            });
            creating.keys().cloned().collect()
        };
        let mut names: Vec<String> = deployments.keys().cloned().collect();
        names.extend(creating.iter().cloned());
        // A lease taken while the projector is still loaded here (this node lost it, stopped,
        // and took it again): that runner is from the earlier ownership and may be behind
        // what another owner served since. Its views wait until it is adopted afresh.
        let taking = |name: &str| {
            self.took(name);
            self.catching_up.lock().insert(name.to_string(), u64::MAX);
        };
        let drained = self.drains.drained();
        match self.ownership.balance(&names, &drained, taking).await {
            Ok(tick) => {
                if !tick.taken.is_empty() || !tick.to_release.is_empty() {
                    tracing::debug!(taken = ?tick.taken, to_release = ?tick.to_release, "leases moved");
                }
                *self.peers.write() = tick
                    .live
                    .values()
                    .filter_map(|n| n.url.parse::<axum::http::Uri>().ok())
                    .filter_map(|u| u.authority().map(|a| a.to_string()))
                    .collect();
                *self.live.write() = tick.live.clone();
                for name in &tick.taken {
                    if registry.get(name).is_some() {
                        self.unload(registry, name).await;
                        // Adopted afresh below: caught up before it answers.
                        self.catching_up.lock().insert(name.clone(), u64::MAX);
                    }
                }
                for name in &tick.to_release {
                    // Claimed by a deploy since this tick read the catalog: not gone.
                    if !deployments.contains_key(name) && self.creating.lock().contains_key(name) {
                        continue;
                    }
                    // A projector deleted meanwhile needs no snapshot.
                    match deployments.contains_key(name) {
                        true => self.hand_over(registry, name).await,
                        false => self.unload(registry, name).await,
                    }
                    if let Err(e) = self.ownership.release(name).await {
                        tracing::warn!(projector = %name, error = %e, "releasing a lease");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the live nodes"),
        }
        self.warm_incoming(registry, &deployments);
        // Lost or lapsed: stopped, whatever the tick said. And one still running from an
        // earlier ownership (a deploy finished after its lease was given up and taken again):
        // adopted afresh below, caught up before it answers.
        for projector in registry.list() {
            let name = &projector.name;
            let stale = self.catching_up.lock().get(name) == Some(&u64::MAX)
                && !adoptions.names.values().any(|n| n == name);
            if self.owns(name).is_none() || stale {
                self.unload(registry, name).await;
                if stale {
                    self.catching_up.lock().insert(name.clone(), u64::MAX);
                }
            }
        }
        for name in deployments.keys() {
            if self.owns(name).is_some()
                && registry.get(name).is_none()
                && !adoptions.names.values().any(|n| n == name)
            {
                let (cluster, registry, adopted) = (self.clone(), registry.clone(), name.clone());
                let task = adoptions.tasks.spawn(async move {
                    cluster.adopt(&registry, &adopted).await;
                });
                adoptions.names.insert(task.id(), name.clone());
            }
        }
        if read_all {
            self.forget_deleted(registry, &names).await;
        }
    }

    async fn unload(&self, registry: &Registry, name: &str) {
        let (registry, unloaded) = (registry.clone(), name.to_string());
        let _ = tokio::task::spawn_blocking(move || registry.unload(&unloaded)).await;
        self.catching_up.lock().remove(name);
        // Adopted afresh if this node owns it again.
        self.revisions.lock().remove(name);
        self.restores.lock().remove(name);
    }

    /// Removes what this node keeps of projectors no longer in the shared catalog.
    async fn forget_deleted(&self, registry: &Registry, deployed: &[String]) {
        let registry = registry.clone();
        let names = deployed.to_vec();
        let _ = tokio::task::spawn_blocking(move || {
            let recorded = match registry.recorded() {
                Ok(recorded) => recorded,
                Err(e) => {
                    tracing::warn!(error = %e, "listing this node's records");
                    return;
                }
            };
            for name in recorded.iter().filter(|n| !names.contains(n)) {
                if let Err(e) = registry.forget(name) {
                    tracing::warn!(projector = %name, error = %e, "forgetting a deleted projector");
                }
            }
        })
        .await;
    }

    /// Runs `work` on the node's runtime from a blocking thread.
    fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.options.node_id)
            .finish_non_exhaustive()
    }
}
