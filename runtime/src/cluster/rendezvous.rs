//! Which node owns a projector: rendezvous (highest random weight) hashing over the live
//! nodes. Every node computes the same owner from the same set of nodes, with no coordination;
//! when a node leaves, only its projectors move (each to the node with the next highest weight
//! for it), and when one joins, it takes about its share from the others.

use sha2::{Digest, Sha256};

/// The weight of `node` for `projector`: the first 8 bytes of a SHA-256 of both (the same on
/// every node, platform and release).
pub fn weight(node: &str, projector: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update((node.len() as u64).to_be_bytes());
    hash.update(node.as_bytes());
    hash.update(projector.as_bytes());
    let digest = hash.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The owner of `projector` among `nodes`: the node of highest weight (ties, if any, to the
/// greater name); `None` when there is no node.
pub fn owner<'a>(projector: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes
        .into_iter()
        .max_by_key(|node| (weight(node, projector), *node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn owners<'a>(projectors: &[String], nodes: &[&'a str]) -> BTreeMap<String, &'a str> {
        projectors
            .iter()
            .map(|p| (p.clone(), owner(p, nodes.iter().copied()).unwrap()))
            .collect()
    }

    #[test]
    fn owners_spread_and_only_a_leaving_node_s_projectors_move() {
        let projectors: Vec<String> = (0..3000).map(|i| format!("projector-{i}")).collect();
        let three = owners(&projectors, &["n1", "n2", "n3"]);
        // The order nodes are listed in does not matter.
        assert_eq!(three, owners(&projectors, &["n3", "n1", "n2"]));
        for node in ["n1", "n2", "n3"] {
            let share = three.values().filter(|n| **n == node).count();
            assert!((800..1200).contains(&share), "{node} owns {share} of 3000");
        }
        let two = owners(&projectors, &["n1", "n3"]);
        for (projector, before) in &three {
            if *before != "n2" {
                assert_eq!(two[projector], *before, "{projector} moved needlessly");
            }
        }
        assert_eq!(owner("p", std::iter::empty()), None);
    }

    /// Fixed values: a change of the weight function would move every projector of a running
    /// cluster whose nodes run different releases.
    #[test]
    fn weights_are_fixed() {
        // SHA-256 of the name's length (u64, big-endian), the name, the projector (Python's
        // hashlib gives the same).
        assert_eq!(weight("n1", "order-totals"), 10229493316986798076);
        assert_eq!(weight("n2", "order-totals"), 13580357567659852785);
        // Not confused by where the node name ends.
        assert_ne!(weight("n1o", "rder"), weight("n1", "order"));
    }
}
