//! Consistent hashing of routing keys onto backend nodes.
//!
//! Every proxy instance must send a given user to the same backend without talking to the
//! others, and a change in the backend set should move as few users as possible. A hash
//! ring with virtual nodes gives both: placement is a pure function of the configured
//! (name, weight) pairs and the key, and adding or removing a node only moves the keys that
//! land on (or leave) that node's virtual nodes.
//!
//! The placement must stay stable across releases, because moving a user to another
//! backend breaks their sessions' locality. The tests pin golden vectors for that reason.

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;

/// Virtual nodes per unit of weight. Enough to keep each backend's share within a few
/// percent of its weight while keeping the ring small. Changing it moves users.
pub const VNODES_PER_WEIGHT: u32 = 160;

/// One point on the ring. Only the label takes part in hashing, so a virtual node's place is
/// determined by `"{name}#{i}"` alone, exactly as a key string would be hashed.
#[derive(Clone, Debug)]
struct VNode {
    label: String,
    /// Dense id, indexing `Ring::backend_of` and `Ring::position_of`.
    id: usize,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

/// Immutable ring built from (backend name, weight) pairs.
///
/// Each backend gets `VNODES_PER_WEIGHT * weight` virtual nodes; virtual node `i` of backend
/// `name` is hashed as the string `"{name}#{i}"` with hashring's default hasher (SipHash with
/// fixed keys), so placement is a pure, stable function of (names, weights, key) — identical
/// in every proxy that reads the same config.
#[derive(Clone, Debug)]
pub struct Ring {
    ring: HashRing<VNode>,
    /// Backend index (into the slice given to `new`) of each virtual node id.
    backend_of: Vec<usize>,
    /// Position in ring order of each virtual node id.
    position_of: Vec<usize>,
    /// Backend index of each virtual node, in ring order; walked for failover.
    order: Vec<usize>,
    /// Length of the `backends` slice given to `new`.
    slots: usize,
    /// Number of distinct backends that own at least one virtual node.
    members: usize,
    /// Fraction of the hash space each backend (by index into `backends`) is home to.
    shares: Vec<f64>,
}

impl Ring {
    /// Build the ring. A backend of weight 0 gets no virtual node and is never chosen.
    ///
    /// The order of `backends` does not affect placement: virtual nodes are inserted sorted by
    /// backend name, so even a (practically impossible) hash tie is broken by name. Names
    /// are expected to be unique; if one repeats, only its first occurrence is placed, since
    /// identical names would produce identical virtual nodes. Weights should stay small
    /// (the ring holds `VNODES_PER_WEIGHT` entries per unit of weight).
    pub fn new(backends: &[(String, u32)]) -> Ring {
        let mut by_name: Vec<usize> = (0..backends.len()).collect();
        by_name.sort_by(|&a, &b| backends[a].0.cmp(&backends[b].0).then(a.cmp(&b)));

        let mut vnodes = Vec::new();
        let mut backend_of = Vec::new();
        let mut members = 0;
        let mut previous: Option<&str> = None;
        for index in by_name {
            let (name, weight) = &backends[index];
            if previous == Some(name.as_str()) {
                continue;
            }
            previous = Some(name);
            if *weight == 0 {
                continue;
            }
            members += 1;
            let count = u64::from(VNODES_PER_WEIGHT) * u64::from(*weight);
            for i in 0..count {
                vnodes.push(VNode {
                    label: format!("{name}#{i}"),
                    id: backend_of.len(),
                });
                backend_of.push(index);
            }
        }

        let mut ring = HashRing::new();
        ring.batch_add(vnodes);

        // The ring keeps its points sorted; iterating a copy once gives the ring order that
        // failover walks, without hashing anything a second time.
        let mut position_of = vec![0; backend_of.len()];
        let mut order = Vec::with_capacity(backend_of.len());
        let mut points = Vec::with_capacity(backend_of.len());
        for (position, vnode) in ring.clone().into_iter().enumerate() {
            position_of[vnode.id] = position;
            order.push(backend_of[vnode.id]);
            points.push(hashring::DefaultHashBuilder.hash_one(&vnode));
        }
        let shares = arc_shares(&points, &order, backends.len());

        Ring {
            ring,
            backend_of,
            position_of,
            order,
            slots: backends.len(),
            members,
            shares,
        }
    }

    /// The fraction (0..=1) of all keys each backend is home to, by index into the
    /// `backends` slice given to `new`: the exact length of the ring arcs its virtual nodes
    /// own, not an estimate. Zero for a backend with no virtual node; sums to 1 otherwise.
    pub fn shares(&self) -> &[f64] {
        &self.shares
    }

    /// Distinct backend indices (into the `backends` slice given to `new`) in ring order
    /// starting at the key's position: `[0]` is the key's home node, then the next distinct
    /// nodes for failover. Empty if the ring is empty.
    pub fn preference(&self, key: &str) -> Vec<usize> {
        let Some(home) = self.ring.get(&key) else {
            return Vec::new();
        };
        let start = self.position_of[home.id];
        let mut seen = vec![false; self.slots];
        let mut out = Vec::with_capacity(self.members);
        let walk = self.order[start..].iter().chain(&self.order[..start]);
        for &backend in walk {
            if !seen[backend] {
                seen[backend] = true;
                out.push(backend);
                if out.len() == self.members {
                    break;
                }
            }
        }
        out
    }

    /// The key's home backend; the same as `preference(key)[0]`, without the walk.
    pub fn primary(&self, key: &str) -> Option<usize> {
        self.ring.get(&key).map(|vnode| self.backend_of[vnode.id])
    }

    /// Number of backends on the ring (those with a non-zero weight).
    pub fn len(&self) -> usize {
        self.members
    }

    /// Whether no backend is on the ring, so no key can be placed.
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }
}

/// Each slot's share of the 64-bit hash space. A key goes to the first point at or after its
/// hash (wrapping to the first point), so the point at `i` owns `(points[i-1], points[i]]`
/// and the first point also owns everything after the last one.
fn arc_shares(points: &[u64], owner: &[usize], slots: usize) -> Vec<f64> {
    let mut owned = vec![0u128; slots];
    let full = 1u128 << 64;
    for (i, &p) in points.iter().enumerate() {
        let arc = match i {
            0 => full - u128::from(points[points.len() - 1]) + u128::from(p),
            _ => u128::from(p - points[i - 1]),
        };
        owned[owner[i]] += arc;
    }
    owned
        .into_iter()
        .map(|o| (o as f64) / (full as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(spec: &[(&str, u32)]) -> Vec<(String, u32)> {
        spec.iter().map(|&(n, w)| (n.to_owned(), w)).collect()
    }

    fn names<'a>(set: &'a [(String, u32)], indices: &[usize]) -> Vec<&'a str> {
        indices.iter().map(|&i| set[i].0.as_str()).collect()
    }

    fn keys(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("user{i}@example.test"))
            .collect()
    }

    const GOLDEN_KEYS: [&str; 20] = [
        "juliet@example.test",
        "romeo@example.test",
        "nurse@example.test",
        "benvolio@example.test",
        "mercutio@example.test",
        "tybalt@example.test",
        "capulet@example.test",
        "montague@example.test",
        "paris@example.test",
        "laurence@example.test",
        "balthasar@example.test",
        "sampson@example.test",
        "gregory@example.test",
        "änne@example.test",
        "ωμέγα@example.test",
        "日本語@example.test",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "2001:db8:1:2::/64",
        "",
    ];

    // Golden vectors. They pin where users live: if any of these change, every deployed
    // proxy would send existing users to different backends after an upgrade, breaking
    // their session locality. Never update them to make a test pass; a placement change
    // must be a deliberate, announced migration.
    const GOLDEN_EQUAL: [(&str, [&str; 3]); 20] = [
        ("juliet@example.test", ["node2", "node1", "node3"]),
        ("romeo@example.test", ["node2", "node1", "node3"]),
        ("nurse@example.test", ["node2", "node3", "node1"]),
        ("benvolio@example.test", ["node1", "node2", "node3"]),
        ("mercutio@example.test", ["node1", "node2", "node3"]),
        ("tybalt@example.test", ["node2", "node3", "node1"]),
        ("capulet@example.test", ["node3", "node2", "node1"]),
        ("montague@example.test", ["node1", "node3", "node2"]),
        ("paris@example.test", ["node1", "node3", "node2"]),
        ("laurence@example.test", ["node2", "node1", "node3"]),
        ("balthasar@example.test", ["node3", "node1", "node2"]),
        ("sampson@example.test", ["node1", "node3", "node2"]),
        ("gregory@example.test", ["node1", "node2", "node3"]),
        ("änne@example.test", ["node1", "node2", "node3"]),
        ("ωμέγα@example.test", ["node2", "node3", "node1"]),
        ("日本語@example.test", ["node1", "node3", "node2"]),
        ("192.0.2.0/24", ["node1", "node3", "node2"]),
        ("198.51.100.0/24", ["node3", "node1", "node2"]),
        ("2001:db8:1:2::/64", ["node2", "node3", "node1"]),
        ("", ["node1", "node3", "node2"]),
    ];
    const GOLDEN_WEIGHTED: [(&str, [&str; 3]); 20] = [
        ("juliet@example.test", ["c", "a", "b"]),
        ("romeo@example.test", ["b", "c", "a"]),
        ("nurse@example.test", ["b", "c", "a"]),
        ("benvolio@example.test", ["c", "b", "a"]),
        ("mercutio@example.test", ["a", "c", "b"]),
        ("tybalt@example.test", ["c", "a", "b"]),
        ("capulet@example.test", ["c", "b", "a"]),
        ("montague@example.test", ["c", "b", "a"]),
        ("paris@example.test", ["b", "c", "a"]),
        ("laurence@example.test", ["a", "b", "c"]),
        ("balthasar@example.test", ["c", "b", "a"]),
        ("sampson@example.test", ["b", "c", "a"]),
        ("gregory@example.test", ["c", "a", "b"]),
        ("änne@example.test", ["c", "a", "b"]),
        ("ωμέγα@example.test", ["b", "c", "a"]),
        ("日本語@example.test", ["b", "a", "c"]),
        ("192.0.2.0/24", ["c", "a", "b"]),
        ("198.51.100.0/24", ["b", "a", "c"]),
        ("2001:db8:1:2::/64", ["c", "a", "b"]),
        ("", ["c", "b", "a"]),
    ];

    #[test]
    fn golden_equal_weights() {
        let set = backends(&[("node1", 1), ("node2", 1), ("node3", 1)]);
        let ring = Ring::new(&set);
        assert_eq!(GOLDEN_EQUAL.map(|(key, _)| key), GOLDEN_KEYS);
        for (key, expected) in GOLDEN_EQUAL {
            let pref = ring.preference(key);
            assert_eq!(names(&set, &pref), expected, "{key:?}");
            assert_eq!(ring.primary(key), Some(pref[0]), "{key:?}");
        }
    }

    #[test]
    fn golden_weighted() {
        let set = backends(&[("a", 1), ("b", 2), ("c", 3)]);
        let ring = Ring::new(&set);
        assert_eq!(GOLDEN_WEIGHTED.map(|(key, _)| key), GOLDEN_KEYS);
        for (key, expected) in GOLDEN_WEIGHTED {
            let pref = ring.preference(key);
            assert_eq!(names(&set, &pref), expected, "{key:?}");
            assert_eq!(ring.primary(key), Some(pref[0]), "{key:?}");
        }
    }

    #[test]
    fn matches_brute_force_walk() {
        // An independent reading of the placement rule: sort every virtual node by hash,
        // start at the first one at or after the key's hash (wrapping), walk clockwise.
        use std::hash::BuildHasher;
        let set = backends(&[("a", 1), ("b", 2), ("c", 3), ("d", 1)]);
        let ring = Ring::new(&set);
        let hasher = hashring::DefaultHashBuilder;
        let mut points: Vec<(u64, usize)> = Vec::new();
        for (index, (name, weight)) in set.iter().enumerate() {
            for i in 0..VNODES_PER_WEIGHT * weight {
                points.push((hasher.hash_one(format!("{name}#{i}")), index));
            }
        }
        points.sort_unstable();
        for key in keys(1000).iter().map(String::as_str).chain(GOLDEN_KEYS) {
            let h = hasher.hash_one(key);
            let start = points.partition_point(|&(p, _)| p < h) % points.len();
            let mut expected = Vec::new();
            for &(_, index) in points[start..].iter().chain(&points[..start]) {
                if !expected.contains(&index) {
                    expected.push(index);
                }
            }
            assert_eq!(ring.preference(key), expected, "{key:?}");
        }
    }

    #[test]
    fn preference_is_complete_and_distinct() {
        let set = backends(&[("a", 1), ("b", 2), ("c", 3), ("d", 1), ("e", 0)]);
        let ring = Ring::new(&set);
        assert_eq!(ring.len(), 4);
        for key in keys(2000) {
            let mut pref = ring.preference(&key);
            assert_eq!(ring.primary(&key), Some(pref[0]));
            pref.sort_unstable();
            assert_eq!(pref, vec![0, 1, 2, 3], "{key}");
        }
    }

    #[test]
    fn adding_a_node_moves_about_a_quarter_and_only_to_it() {
        let three = backends(&[("node1", 1), ("node2", 1), ("node3", 1)]);
        let four = backends(&[("node1", 1), ("node2", 1), ("node3", 1), ("node4", 1)]);
        let before = Ring::new(&three);
        let after = Ring::new(&four);
        let all = keys(10_000);
        let mut moved = 0;
        for key in &all {
            let old = before.primary(key).unwrap();
            let new = after.primary(key).unwrap();
            if old != new {
                moved += 1;
                assert_eq!(new, 3, "{key} moved to an old node");
            }
        }
        let share = f64::from(moved) / all.len() as f64;
        assert!((0.18..=0.32).contains(&share), "moved share {share}");
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let four = backends(&[("node1", 1), ("node2", 1), ("node3", 1), ("node4", 1)]);
        let three = backends(&[("node1", 1), ("node2", 1), ("node4", 1)]);
        let before = Ring::new(&four);
        let after = Ring::new(&three);
        for key in keys(10_000) {
            let old = &four[before.primary(&key).unwrap()].0;
            let new = &three[after.primary(&key).unwrap()].0;
            if old != "node3" {
                assert_eq!(old, new, "{key} moved although its node stayed");
            } else {
                // The orphaned key falls to its next failover choice.
                let fallback = &four[before.preference(&key)[1]].0;
                assert_eq!(new, fallback, "{key}");
            }
        }
    }

    #[test]
    fn weights_set_shares() {
        let set = backends(&[("a", 1), ("b", 2), ("c", 3)]);
        let ring = Ring::new(&set);
        let all = keys(30_000);
        let mut counts = [0u32; 3];
        for key in &all {
            counts[ring.primary(key).unwrap()] += 1;
        }
        for (i, expected) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].into_iter().enumerate() {
            let share = f64::from(counts[i]) / all.len() as f64;
            let relative = (share - expected).abs() / expected;
            assert!(
                relative <= 0.25,
                "backend {i}: share {share}, want {expected}"
            );
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let forward = backends(&[("a", 1), ("b", 2), ("c", 3)]);
        let reverse = backends(&[("c", 3), ("b", 2), ("a", 1)]);
        let rf = Ring::new(&forward);
        let rr = Ring::new(&reverse);
        for key in keys(3000) {
            let pf = names(&forward, &rf.preference(&key));
            let pr = names(&reverse, &rr.preference(&key));
            assert_eq!(pf, pr, "{key}");
        }
    }

    #[test]
    fn zero_weight_is_excluded() {
        let set = backends(&[("a", 1), ("zero", 0), ("b", 1)]);
        let ring = Ring::new(&set);
        assert_eq!(ring.len(), 2);
        for key in keys(2000) {
            let pref = ring.preference(&key);
            assert_eq!(pref.len(), 2);
            assert!(!pref.contains(&1), "{key}");
        }
        // A zero-weight backend does not shift anyone: same placement as without it.
        let without = backends(&[("a", 1), ("b", 1)]);
        let ring_without = Ring::new(&without);
        for key in keys(2000) {
            assert_eq!(
                names(&set, &ring.preference(&key)),
                names(&without, &ring_without.preference(&key))
            );
        }
    }

    #[test]
    fn empty_ring() {
        for set in [backends(&[]), backends(&[("a", 0), ("b", 0)])] {
            let ring = Ring::new(&set);
            assert!(ring.is_empty());
            assert_eq!(ring.len(), 0);
            assert!(ring.preference("juliet@example.test").is_empty());
            assert_eq!(ring.primary("juliet@example.test"), None);
        }
    }

    #[test]
    fn single_backend_takes_everything() {
        let set = backends(&[("only", 2)]);
        let ring = Ring::new(&set);
        assert_eq!(ring.preference("juliet@example.test"), vec![0]);
        assert_eq!(ring.primary("romeo@example.test"), Some(0));
    }

    #[test]
    fn duplicate_names_are_placed_once() {
        let set = backends(&[("a", 1), ("b", 1), ("a", 1)]);
        let ring = Ring::new(&set);
        assert_eq!(ring.len(), 2);
        for key in keys(500) {
            let pref = ring.preference(&key);
            assert_eq!(pref.len(), 2);
            assert!(!pref.contains(&2));
        }
    }

    #[test]
    fn virtual_nodes_hash_like_key_strings() {
        // A key spelled exactly like a virtual node label sits on that virtual node.
        let set = backends(&[("node1", 1), ("node2", 1), ("node3", 1)]);
        let ring = Ring::new(&set);
        for (index, (name, _)) in set.iter().enumerate() {
            for i in [0, 7, 159] {
                assert_eq!(ring.primary(&format!("{name}#{i}")), Some(index));
            }
        }
    }

    #[test]
    fn shares_are_the_fraction_of_keys_each_node_is_home_to() {
        let set = backends(&[("node1", 1), ("node2", 1), ("node3", 2)]);
        let ring = Ring::new(&set);
        let shares = ring.shares();
        assert_eq!(shares.len(), 3);
        assert!(
            (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{shares:?}"
        );
        // Counting where many keys land gives the same fractions as the arc lengths.
        let sample = keys(200_000);
        let mut homes = [0usize; 3];
        for key in &sample {
            homes[ring.primary(key).unwrap()] += 1;
        }
        for (i, &home) in homes.iter().enumerate() {
            let seen = home as f64 / sample.len() as f64;
            assert!(
                (seen - shares[i]).abs() < 0.01,
                "node{}: share {} but {seen} of the keys",
                i + 1,
                shares[i]
            );
        }
        // Weight 2 of 4 is about half the ring.
        assert!((shares[2] - 0.5).abs() < 0.06, "{shares:?}");
    }

    #[test]
    fn shares_of_degenerate_rings() {
        assert_eq!(Ring::new(&backends(&[("only", 3)])).shares(), &[1.0]);
        assert_eq!(
            Ring::new(&backends(&[("a", 0), ("b", 0)])).shares(),
            &[0.0, 0.0]
        );
        let dup = Ring::new(&backends(&[("a", 1), ("b", 1), ("a", 1)]));
        assert_eq!(dup.shares()[2], 0.0, "a repeated name owns nothing");
        assert!((dup.shares()[0] + dup.shares()[1] - 1.0).abs() < 1e-9);
    }
}
