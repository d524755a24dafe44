//! Which projectors this node owns: the ones [`rendezvous`](super::rendezvous) gives it among
//! the live nodes and whose lease it holds and still counts valid.
//!
//! Two loops drive it. [`Ownership::renew`], every `ttl / 6` or so on a task of its own,
//! announces the node and renews every lease it holds; [`Ownership::balance`], as often but
//! beside slower work, reads the live set and takes the leases this node should hold, and
//! reports the ones it should give up (another node joined). A lease it fails to renew stays
//! counted until it is no longer valid ([`Leases::valid`]), so a node cut off from the servers
//! stops acting as owner by itself, before any other node can take over.
//!
//! Handing a projector over is the caller's to order: stop its runner, then
//! [`Ownership::release`]; `balance` only reports the projectors this node should give up.

use super::lease::{Lease, Leases, RenewError};
use super::membership::Membership;
use super::rendezvous;
use anyhow::Result;
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// What one [`Ownership::balance`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Leases taken now.
    pub taken: Vec<String>,
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

    /// Announces the node for the first time (the bucket may have been created a moment ago
    /// and not take writes yet: asked again for up to 30 s). Call it once the node can serve.
    pub async fn join(&self) -> Result<()> {
        self.membership.join().await
    }

    /// Announces the node and renews every lease it holds, all at once: what keeps it owner.
    /// Run it every `ttl / 6` or so on a task of its own, so that nothing slow (loading a
    /// projector's code) delays it. A node that cannot announce itself renews nothing: the
    /// others will count it gone, and must be able to take its projectors once their leases
    /// expire. Answers the projectors whose lease was lost (another node took it after it
    /// expired). A lease that could not be renewed stays counted until it is no longer valid.
    pub async fn renew(&self) -> Result<Vec<String>> {
        self.membership.announce().await?;
        let held: Vec<(String, Lease)> = self
            .held
            .lock()
            .iter()
            .map(|(name, lease)| (name.clone(), *lease))
            .collect();
        let renewals = held.iter().map(|(name, lease)| async move {
            (name, lease, self.leases.renew(name, lease).await)
        });
        let mut lost = Vec::new();
        for (name, old, renewed) in futures::future::join_all(renewals).await {
            let mut held = self.held.lock();
            // Released (or taken again) meanwhile: that is what counts.
            if held.get(name).is_none_or(|l| l.revision != old.revision) {
                continue;
            }
            match renewed {
                Ok(renewed) => {
                    held.insert(name.clone(), renewed);
                }
                Err(RenewError::Lost) => {
                    held.remove(name);
                    lost.push(name.clone());
                }
                Err(RenewError::Unavailable(why)) => {
                    tracing::warn!(projector = %name, %why, "renewing a lease")
                }
            }
        }
        Ok(lost)
    }

    /// Brings the leases of `projectors` in line with the live nodes: takes the lease of each
    /// one rendezvous hashing gives this node and no node holds, and reports the ones it holds
    /// and should give up (another node joined, this one is `drained`, or the projector is
    /// gone). Renewing is
    /// [`Ownership::renew`]'s. `taking` is told of each lease taken, before this node counts
    /// it held (a projector still loaded from an earlier ownership must not answer under it).
    pub async fn balance(
        &self,
        projectors: &[String],
        drained: &std::collections::BTreeSet<String>,
        taking: impl Fn(&str),
    ) -> Result<Tick> {
        let mut live = self.membership.live().await?;
        // Announced by the renewals: live, whatever a replica behind answered.
        live.entry(self.node.clone())
            .or_insert_with(|| self.membership.node().clone());
        let eligible = super::drains::eligible(live.keys(), drained);
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
            let wanted = rendezvous::owner(projector, eligible.iter().copied()) == Some(&self.node);
            let held = self.held.lock().contains_key(projector);
            match (wanted, held) {
                (true, false) => match self.leases.acquire(projector).await {
                    Ok(Some(lease)) => {
                        taking(projector);
                        self.held.lock().insert(projector.clone(), lease);
                        tick.taken.push(projector.clone());
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%projector, error = %e, "taking a lease"),
                },
                // Kept (and renewed) until the caller has stopped it and releases it.
                (false, true) => tick.to_release.push(projector.clone()),
                _ => {}
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

    /// The live nodes' membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
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
        let Some(lease) = self.held.lock().remove(projector) else {
            return Ok(());
        };
        if self.leases.release(projector, &lease).await.is_ok() {
            return Ok(());
        }
        // A renewal in flight may have moved the lease on: released at its revision now,
        // if it is still this node's.
        match self.leases.holder(projector).await? {
            Some((holder, revision)) if holder == self.node => {
                let lease = Lease { revision, ..lease };
                self.leases.release(projector, &lease).await
            }
            _ => Ok(()),
        }
    }
}
