//! Which projectors this node owns: the ones [`rendezvous`](super::rendezvous) gives it among
//! the live nodes and whose lease it holds and still counts valid.
//!
//! [`Ownership::tick`], called every `ttl / 6` or so, announces the node, reads the live set,
//! then for each projector renews the lease it holds, takes the one it should hold, or gives up
//! one it should no longer hold (another node joined). A lease it fails to renew stays counted
//! until it is no longer valid ([`Leases::valid`]), so a node cut off from the servers stops
//! acting as owner by itself, before any other node can take over.
//!
//! Handing a projector over is the caller's to order: stop its runner, then
//! [`Ownership::release`]; `tick` only reports the projectors this node should give up.

use super::lease::{Lease, Leases, RenewError};
use super::membership::Membership;
use super::rendezvous;
use anyhow::Result;
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// What one [`Ownership::tick`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Leases taken now.
    pub taken: Vec<String>,
    /// Leases this node held and lost (another node took them after they expired).
    pub lost: Vec<String>,
    /// Projectors another node should own now: stop them, then release.
    pub to_release: Vec<String>,
    /// The live nodes, this one included.
    pub live: BTreeMap<String, super::membership::Node>,
}

/// The projectors one node owns.
pub struct Ownership {
    node: String,
    membership: Membership,
    leases: Leases,
    held: Mutex<BTreeMap<String, Lease>>,
}

impl Ownership {
    /// The ownership of the node that `membership` announces, over `leases`.
    pub fn new(node: &str, membership: Membership, leases: Leases) -> Ownership {
        Ownership {
            node: node.to_string(),
            membership,
            leases,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    /// The revision of the lease of `projector`, when this node owns it now.
    pub fn owns(&self, projector: &str) -> Option<u64> {
        let held = self.held.lock();
        let lease = held.get(projector)?;
        self.leases.valid(lease).then_some(lease.revision)
    }

    /// Announces the node and brings its leases in line with the live nodes for `projectors`.
    pub async fn tick(&self, projectors: &[String]) -> Result<Tick> {
        self.membership.announce().await?;
        let mut live = self.membership.live().await?;
        // Announced just now: live, whatever a replica behind answered.
        live.entry(self.node.clone())
            .or_insert_with(|| self.membership.node().clone());
        let mut tick = Tick::default();
        // Projectors that are gone (deleted): the caller stops them, then releases.
        tick.to_release.extend(
            self.held
                .lock()
                .keys()
                .filter(|name| !projectors.contains(name))
                .cloned(),
        );
        for projector in projectors {
            let wanted =
                rendezvous::owner(projector, live.keys().map(String::as_str)) == Some(&self.node);
            let held = self.held.lock().get(projector).copied();
            match (wanted, held) {
                (true, Some(lease)) => match self.leases.renew(projector, &lease).await {
                    Ok(renewed) => {
                        self.held.lock().insert(projector.clone(), renewed);
                    }
                    Err(RenewError::Lost) => {
                        self.held.lock().remove(projector);
                        tick.lost.push(projector.clone());
                    }
                    // Still counted until it is no longer valid.
                    Err(RenewError::Unavailable(why)) => {
                        tracing::warn!(%projector, %why, "renewing a lease")
                    }
                },
                (true, None) => match self.leases.acquire(projector).await {
                    Ok(Some(lease)) => {
                        self.held.lock().insert(projector.clone(), lease);
                        tick.taken.push(projector.clone());
                    }
                    Ok(None) => {}
                    // The others' leases are renewed all the same.
                    Err(e) => tracing::warn!(%projector, error = %e, "taking a lease"),
                },
                (false, Some(lease)) => {
                    // Kept (renewed) until the caller has stopped it and releases it.
                    match self.leases.renew(projector, &lease).await {
                        Ok(renewed) => {
                            self.held.lock().insert(projector.clone(), renewed);
                            tick.to_release.push(projector.clone());
                        }
                        Err(RenewError::Lost) => {
                            self.held.lock().remove(projector);
                            tick.lost.push(projector.clone());
                        }
                        Err(RenewError::Unavailable(_)) => tick.to_release.push(projector.clone()),
                    }
                }
                (false, None) => {}
            }
        }
        tick.live = live;
        Ok(tick)
    }

    /// Takes the lease of `projector`, which no node holds, at once (a deploy creating it
    /// here): its revision, or `None` when another node holds it.
    pub async fn claim(&self, projector: &str) -> Result<Option<u64>> {
        let Some(lease) = self.leases.acquire(projector).await? else {
            return Ok(None);
        };
        self.held.lock().insert(projector.to_string(), lease);
        Ok(Some(lease.revision))
    }

    /// The projectors whose lease this node holds (valid or not).
    pub fn held(&self) -> Vec<String> {
        self.held.lock().keys().cloned().collect()
    }

    /// Leaves the live set (a node stopping; its leases released first).
    pub async fn leave(&self) -> Result<()> {
        self.membership.leave().await
    }

    /// Gives up the lease of `projector` (its runner stopped): the node it belongs to now can
    /// take it at once.
    pub async fn release(&self, projector: &str) -> Result<()> {
        let lease = self.held.lock().remove(projector);
        match lease {
            Some(lease) => self.leases.release(projector, &lease).await,
            None => Ok(()),
        }
    }
}
