//! The backends of one domain and the health- and load-aware walk over its ring.
//!
//! Selection follows pingora's shape: an immutable pool (rebuilt on reload) whose `pick`
//! walks the ring from the key's position and takes the first node that accepts logins
//! (healthy, not draining) and, with a balance factor, is under its load bound — consistent
//! hashing with bounded loads, as HAProxy's `hash-balance-factor`. Only when no node qualifies
//! are the others tried, in ring order: trying a node that may be down beats refusing a login.

use std::sync::{Arc, Mutex};

use rand::seq::SliceRandom;

use crate::backend::state::{ActiveGuard, BackendState};
use crate::route::policy::Placement;
use crate::route::ring::Ring;

/// One domain's backends.
pub struct DomainPool {
    /// Indices (into the runtime's backend list) of this domain's backends.
    members: Vec<usize>,
    /// Weight of each member (same order).
    weights: Vec<u32>,
    /// The ring over the members; ring index `i` is `members[i]`.
    ring: Ring,
    /// Bounded-load factor, if enabled.
    balance_factor: Option<f64>,
    /// Serializes pick-and-count so concurrent logins cannot all slip under one bound.
    pick_lock: Mutex<()>,
}

impl DomainPool {
    /// A pool over `members` (indices into `names`/`weights` of the whole backend list).
    pub fn new(
        members: Vec<usize>,
        names: &[String],
        weights: &[u32],
        balance_factor: Option<f64>,
    ) -> DomainPool {
        let spec: Vec<(String, u32)> = members
            .iter()
            .map(|&i| (names[i].clone(), weights[i]))
            .collect();
        DomainPool {
            weights: members.iter().map(|&i| weights[i]).collect(),
            ring: Ring::new(&spec),
            members,
            balance_factor,
            pick_lock: Mutex::new(()),
        }
    }

    /// The member indices.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// The bounded-load factor.
    pub fn balance_factor(&self) -> Option<f64> {
        self.balance_factor
    }

    /// Each member's share (0..=1) of this domain's ring, as (backend index, share): the
    /// fraction of the domain's users it is home to while every node is up.
    pub fn ring_shares(&self) -> Vec<(usize, f64)> {
        self.members
            .iter()
            .zip(self.ring.shares())
            .map(|(&i, &share)| (i, share))
            .collect()
    }

    /// The pure ring order for `key` (backend indices), ignoring health and load: where a key
    /// lives when everything is up.
    pub fn ring_order(&self, key: &str) -> Vec<usize> {
        self.ring
            .preference(key)
            .into_iter()
            .map(|i| self.members[i])
            .collect()
    }

    /// Every candidate in the order they would be tried now: nodes accepting logins first
    /// (under the load bound first of all), then unhealthy ones as a last resort; draining
    /// nodes never (a pin still names its node: pinned devices never move).
    pub fn order(
        &self,
        placement: &Placement,
        states: &[Arc<BackendState>],
        names: &[String],
    ) -> Vec<usize> {
        let base: Vec<usize> = match placement {
            Placement::Resume { node, otherwise } => {
                // The session's node first, even if it is draining (its sessions may finish
                // there) or over the load bound; not when it is known to be down, and not if
                // it no longer serves this domain: the session is gone with it.
                let mut order = self.order(otherwise, states, names);
                if let Some(i) = self
                    .members
                    .iter()
                    .copied()
                    .find(|&i| names[i] == *node && states[i].is_healthy())
                {
                    order.retain(|&j| j != i);
                    order.insert(0, i);
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
                    .filter(|&i| names[i] == *name)
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
        let (mut accepting, rest): (Vec<usize>, Vec<usize>) = base
            .into_iter()
            .filter(|&i| !states[i].is_draining())
            .partition(|&i| states[i].accepts_logins());
        if let Some(factor) = self.balance_factor
            && let Some(pos) = self.first_under_bound(&accepting, states, factor)
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
        states: &[Arc<BackendState>],
        names: &[String],
        excluded: &[usize],
    ) -> Option<(usize, ActiveGuard)> {
        let _serial = self.pick_lock.lock().expect("pick lock");
        let idx = self
            .order(placement, states, names)
            .into_iter()
            .find(|i| !excluded.contains(i))?;
        Some((idx, states[idx].track()))
    }

    /// Position in `candidates` (ring order) of the first node under its load bound:
    /// `factor × (total + 1) × weight / total weight`, rounded up, over accepting nodes.
    fn first_under_bound(
        &self,
        candidates: &[usize],
        states: &[Arc<BackendState>],
        factor: f64,
    ) -> Option<usize> {
        let weight_of = |i: usize| {
            let pos = self.members.iter().position(|&m| m == i).unwrap_or(0);
            f64::from(self.weights[pos])
        };
        let total_weight: f64 = candidates.iter().map(|&i| weight_of(i)).sum();
        if total_weight <= 0.0 {
            return None;
        }
        let total_load: usize = candidates.iter().map(|&i| states[i].active()).sum();
        candidates.iter().position(|&i| {
            let bound = (factor * (total_load as f64 + 1.0) * weight_of(i) / total_weight).ceil();
            (states[i].active() as f64) < bound
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::admission::AdmissionConfig;

    /// Backend states for `n` nodes `node1..`, with no admission limits (also used by the
    /// routing tests beside `route/mod.rs`).
    pub(crate) fn states(n: usize) -> (Vec<Arc<BackendState>>, Vec<String>) {
        let names: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
        let states = names
            .iter()
            .map(|n| {
                BackendState::new(
                    n,
                    AdmissionConfig {
                        max_negotiations: None,
                        max_logins_per_second: None,
                        queue: 1,
                        queue_timeout: std::time::Duration::from_secs(1),
                    },
                )
            })
            .collect();
        (states, names)
    }

    #[test]
    fn unhealthy_and_draining_nodes_are_skipped_in_ring_order() {
        let (states, names) = states(3);
        let pool = DomainPool::new(vec![0, 1, 2], &names, &[1, 1, 1], None);
        let key = Placement::Ring("juliet@example.test".into());
        let ring = pool.ring_order("juliet@example.test");
        assert_eq!(pool.order(&key, &states, &names), ring);
        for _ in 0..2 {
            states[ring[0]].record(false, 2, 2);
        }
        let order = pool.order(&key, &states, &names);
        assert_eq!(
            order,
            vec![ring[1], ring[2], ring[0]],
            "the dead home node is tried last"
        );
        states[ring[1]].set_draining(true);
        assert_eq!(
            pool.order(&key, &states, &names),
            vec![ring[2], ring[0]],
            "a draining node takes no new login"
        );
    }

    #[test]
    fn bounded_load_caps_every_node_under_a_skewed_key_set() {
        let (states, names) = states(3);
        let pool = DomainPool::new(vec![0, 1, 2], &names, &[1, 1, 1], Some(1.25));
        // A skewed set: every key is the same user, so plain hashing would put all on one node.
        let mut guards = Vec::new();
        for n in 1..=300usize {
            let (_, g) = pool
                .pick(
                    &Placement::Ring("hot@example.test".into()),
                    &states,
                    &names,
                    &[],
                )
                .unwrap();
            guards.push(g);
            let max = states.iter().map(|s| s.active()).max().unwrap() as f64;
            let avg = n as f64 / 3.0;
            assert!(
                max <= (1.25 * avg).ceil() + 1.0,
                "after {n}: max {max} > 1.25 × avg {avg}"
            );
        }
        let loads: Vec<usize> = states.iter().map(|s| s.active()).collect();
        assert!(loads.iter().all(|&l| l <= 125), "{loads:?}");
        drop(guards);
        assert!(states.iter().all(|s| s.active() == 0));
    }

    #[test]
    fn pins_are_strict_and_random_covers_members() {
        let (states, names) = states(3);
        let pool = DomainPool::new(vec![1, 2], &names, &[1, 1, 1], None);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            seen.insert(pool.order(&Placement::Random, &states, &names)[0]);
        }
        assert_eq!(seen, [1usize, 2].into_iter().collect());
        for _ in 0..2 {
            states[1].record(false, 2, 2);
        }
        assert_eq!(
            pool.order(&Placement::Pinned("node2".into()), &states, &names),
            vec![1]
        );
        // A node outside the domain is never a target, even by name (a resumed session whose
        // node has left the domain must not be sent there).
        assert_eq!(
            pool.order(&Placement::Pinned("node1".into()), &states, &names),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn a_resume_goes_to_the_sessions_node_first_even_draining_unless_down() {
        let (states, names) = states(3);
        let pool = DomainPool::new(vec![0, 1, 2], &names, &[1, 1, 1], Some(1.25));
        let key = "juliet@example.test";
        let ring = pool.ring_order(key);
        let holder = ring[2];
        let resume = Placement::Resume {
            node: names[holder].clone(),
            otherwise: Box::new(Placement::Ring(key.into())),
        };
        assert_eq!(
            pool.order(&resume, &states, &names),
            vec![holder, ring[0], ring[1]]
        );
        // Draining: its sessions may still be resumed there.
        states[holder].set_draining(true);
        assert_eq!(
            pool.order(&resume, &states, &names),
            vec![holder, ring[0], ring[1]]
        );
        // Down: the session is gone with it; the policy's order alone.
        for _ in 0..2 {
            states[holder].record(false, 2, 2);
        }
        assert_eq!(pool.order(&resume, &states, &names), vec![ring[0], ring[1]]);
        // A node this domain does not use (or no longer has): the policy's order.
        let gone = Placement::Resume {
            node: "node9".into(),
            otherwise: Box::new(Placement::Ring(key.into())),
        };
        assert_eq!(pool.order(&gone, &states, &names), vec![ring[0], ring[1]]);
    }
}
