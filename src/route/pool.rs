//! The backends of one domain and the health- and load-aware walk over its ring.
//!
//! Selection follows pingora's shape: an immutable pool (rebuilt on reload) whose `pick`
//! walks the ring from the key's position and takes the first node that accepts logins
//! (healthy, not draining) and, with a balance factor, is under its load bound — consistent
//! hashing with bounded loads, as HAProxy's `hash-balance-factor`. Only when no node qualifies
//! are the others tried, in ring order: trying a node that may be down beats refusing a login.

use std::sync::Mutex;

use rand::seq::SliceRandom;

use crate::backend::record::{BackendId, Backends};
use crate::backend::state::ActiveGuard;
use crate::route::policy::Placement;
use crate::route::ring::Ring;

/// One domain's backends.
pub struct DomainPool {
    /// This domain's backends; ring index `i` is `members[i]`.
    members: Vec<BackendId>,
    /// Weight of each member (same order).
    weights: Vec<u32>,
    /// The ring over the members.
    ring: Ring,
    /// Bounded-load factor, if enabled.
    balance_factor: Option<f64>,
    /// Serializes pick-and-count so concurrent logins cannot all slip under one bound.
    pick_lock: Mutex<()>,
}

impl DomainPool {
    /// A pool over `members` of `backends`, placed by their names and weights.
    pub fn new(
        members: Vec<BackendId>,
        backends: &Backends,
        balance_factor: Option<f64>,
    ) -> DomainPool {
        let spec: Vec<(String, u32)> = members
            .iter()
            .map(|&id| (backends[id].name.clone(), backends[id].weight))
            .collect();
        DomainPool {
            weights: members.iter().map(|&id| backends[id].weight).collect(),
            ring: Ring::new(&spec),
            members,
            balance_factor,
            pick_lock: Mutex::new(()),
        }
    }

    /// The members, in configuration order.
    pub fn members(&self) -> &[BackendId] {
        &self.members
    }

    /// The bounded-load factor.
    pub fn balance_factor(&self) -> Option<f64> {
        self.balance_factor
    }

    /// Each member's share (0..=1) of this domain's ring: the fraction of the domain's users
    /// it is home to while every node is up.
    pub fn ring_shares(&self) -> Vec<(BackendId, f64)> {
        self.members
            .iter()
            .zip(self.ring.shares())
            .map(|(&id, &share)| (id, share))
            .collect()
    }

    /// The pure ring order for `key`, ignoring health and load: where a key lives when
    /// everything is up.
    pub fn ring_order(&self, key: &str) -> Vec<BackendId> {
        self.ring
            .preference(key)
            .into_iter()
            .map(|i| self.members[i])
            .collect()
    }

    /// Every candidate in the order they would be tried now: nodes accepting logins first
    /// (under the load bound first of all), then unhealthy ones as a last resort; draining
    /// nodes never (a pin still names its node: pinned devices never move).
    pub fn order(&self, placement: &Placement, backends: &Backends) -> Vec<BackendId> {
        let base: Vec<BackendId> = match placement {
            Placement::Resume { node, otherwise } => {
                // The session's node first, even if it is draining (its sessions may finish
                // there) or over the load bound; not when it is known to be down, and not if
                // it no longer serves this domain: the session is gone with it.
                let mut order = self.order(otherwise, backends);
                if let Some(id) = self
                    .members
                    .iter()
                    .copied()
                    .find(|&id| backends[id].name == *node && backends[id].state.is_healthy())
                {
                    order.retain(|&j| j != id);
                    order.insert(0, id);
                }
                return order;
            }
            Placement::Pinned(name) => {
                // Pins are strict: a pinned device never moves, even when its node is down.
                // Only a member of this domain can be the target: a node that stopped serving
                // the domain must not receive its clients (nor their credentials).
                return self
                    .members
                    .iter()
                    .copied()
                    .filter(|&id| backends[id].name == *name)
                    .collect();
            }
            Placement::Ring(key) => self.ring_order(key),
            Placement::Random => {
                let mut all = self.members.clone();
                all.shuffle(&mut rand::rng());
                all
            }
        };
        // Draining nodes take no new logins at all; unhealthy ones are a last resort (a check
        // may lag behind a node that just came back).
        let (mut accepting, rest): (Vec<BackendId>, Vec<BackendId>) = base
            .into_iter()
            .filter(|&id| !backends[id].state.is_draining())
            .partition(|&id| backends[id].state.accepts_logins());
        if let Some(factor) = self.balance_factor
            && let Some(pos) = self.first_under_bound(&accepting, backends, factor)
        {
            let chosen = accepting.remove(pos);
            accepting.insert(0, chosen);
        }
        accepting.extend(rest);
        accepting
    }

    /// Choose the first candidate of [`order`](Self::order) not in `excluded`, counting it as
    /// loaded before anyone else can look (the returned guard un-counts it).
    pub fn pick(
        &self,
        placement: &Placement,
        backends: &Backends,
        excluded: &[BackendId],
    ) -> Option<(BackendId, ActiveGuard)> {
        let _serial = self.pick_lock.lock().expect("pick lock");
        let id = self
            .order(placement, backends)
            .into_iter()
            .find(|id| !excluded.contains(id))?;
        Some((id, backends[id].state.track()))
    }

    /// Position in `candidates` (ring order) of the first node under its load bound:
    /// `factor × (total + 1) × weight / total weight`, rounded up, over accepting nodes.
    fn first_under_bound(
        &self,
        candidates: &[BackendId],
        backends: &Backends,
        factor: f64,
    ) -> Option<usize> {
        let weight_of = |id: BackendId| {
            let pos = self.members.iter().position(|&m| m == id).unwrap_or(0);
            f64::from(self.weights[pos])
        };
        let total_weight: f64 = candidates.iter().map(|&id| weight_of(id)).sum();
        if total_weight <= 0.0 {
            return None;
        }
        let active = |id: BackendId| backends[id].state.active();
        let total_load: usize = candidates.iter().map(|&id| active(id)).sum();
        candidates.iter().position(|&id| {
            let bound = (factor * (total_load as f64 + 1.0) * weight_of(id) / total_weight).ceil();
            (active(id) as f64) < bound
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::record::tests::{backends, ids};

    #[test]
    fn unhealthy_and_draining_nodes_are_skipped_in_ring_order() {
        let b = backends(&[1, 1, 1]);
        let pool = DomainPool::new(ids(&b), &b, None);
        let key = Placement::Ring("juliet@example.test".into());
        let ring = pool.ring_order("juliet@example.test");
        assert_eq!(pool.order(&key, &b), ring);
        for _ in 0..2 {
            b[ring[0]].state.record(false, 2, 2);
        }
        let order = pool.order(&key, &b);
        assert_eq!(
            order,
            vec![ring[1], ring[2], ring[0]],
            "the dead home node is tried last"
        );
        b[ring[1]].state.set_draining(true);
        assert_eq!(
            pool.order(&key, &b),
            vec![ring[2], ring[0]],
            "a draining node takes no new login"
        );
    }

    #[test]
    fn bounded_load_caps_every_node_under_a_skewed_key_set() {
        let b = backends(&[1, 1, 1]);
        let pool = DomainPool::new(ids(&b), &b, Some(1.25));
        let active = || b.iter().map(|(_, n)| n.state.active()).collect::<Vec<_>>();
        // A skewed set: every key is the same user, so plain hashing would put all on one node.
        let mut guards = Vec::new();
        for n in 1..=300usize {
            let (_, g) = pool
                .pick(&Placement::Ring("hot@example.test".into()), &b, &[])
                .unwrap();
            guards.push(g);
            let max = *active().iter().max().unwrap() as f64;
            let avg = n as f64 / 3.0;
            assert!(
                max <= (1.25 * avg).ceil() + 1.0,
                "after {n}: max {max} > 1.25 × avg {avg}"
            );
        }
        let loads = active();
        assert!(loads.iter().all(|&l| l <= 125), "{loads:?}");
        drop(guards);
        assert!(active().iter().all(|&l| l == 0));
    }

    #[test]
    fn pins_are_strict_and_random_covers_members() {
        let b = backends(&[1, 1, 1]);
        let all = ids(&b);
        let pool = DomainPool::new(all[1..].to_vec(), &b, None);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            seen.insert(pool.order(&Placement::Random, &b)[0]);
        }
        assert_eq!(seen, all[1..].iter().copied().collect());
        for _ in 0..2 {
            b[all[1]].state.record(false, 2, 2);
        }
        assert_eq!(
            pool.order(&Placement::Pinned("node2".into()), &b),
            vec![all[1]]
        );
        // A node outside the domain is never a target, even by name (a resumed session whose
        // node has left the domain must not be sent there).
        assert_eq!(
            pool.order(&Placement::Pinned("node1".into()), &b),
            Vec::<BackendId>::new()
        );
    }

    #[test]
    fn a_resume_goes_to_the_sessions_node_first_even_draining_unless_down() {
        let b = backends(&[1, 1, 1]);
        let pool = DomainPool::new(ids(&b), &b, Some(1.25));
        let key = "juliet@example.test";
        let ring = pool.ring_order(key);
        let holder = ring[2];
        let resume = Placement::Resume {
            node: b[holder].name.clone(),
            otherwise: Box::new(Placement::Ring(key.into())),
        };
        assert_eq!(pool.order(&resume, &b), vec![holder, ring[0], ring[1]]);
        // Draining: its sessions may still be resumed there.
        b[holder].state.set_draining(true);
        assert_eq!(pool.order(&resume, &b), vec![holder, ring[0], ring[1]]);
        // Down: the session is gone with it; the policy's order alone.
        for _ in 0..2 {
            b[holder].state.record(false, 2, 2);
        }
        assert_eq!(pool.order(&resume, &b), vec![ring[0], ring[1]]);
        // A node this domain does not use (or no longer has): the policy's order.
        let gone = Placement::Resume {
            node: "node9".into(),
            otherwise: Box::new(Placement::Ring(key.into())),
        };
        assert_eq!(pool.order(&gone, &b), vec![ring[0], ring[1]]);
    }
}
