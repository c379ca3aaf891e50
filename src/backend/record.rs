//! The backends of one runtime: one record per backend, addressed by a [`BackendId`].
//!
//! A backend used to be a bare index into parallel vectors (names, states, settings), and
//! every reader had to know which vector held what. Here one [`Backend`] holds what the
//! routing and the connection path ask about a node, and a [`BackendId`] can only come from
//! the list that holds it. An id is meaningful for the runtime that issued it only: a reload
//! builds a new list (a node's *state* is shared across reloads by name, not by id).

use std::net::SocketAddr;
use std::ops::Index;
use std::sync::Arc;

use crate::backend::state::BackendState;

/// A backend's place in one runtime's [`Backends`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(u32);

impl BackendId {
    /// The position of this backend in its list (for tables kept beside it, and for tests).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One backend as a runtime sees it.
pub struct Backend {
    /// Its stable name: with the weight, it decides placement on the ring.
    pub name: String,
    /// The node's c2s address on the trusted link.
    pub address: SocketAddr,
    /// Its relative share of the keys.
    pub weight: u32,
    /// Its live state (health, drain, load, admission), shared across reloads by name.
    pub state: Arc<BackendState>,
}

/// Every backend of one runtime, in configuration order.
pub struct Backends {
    list: Vec<Backend>,
}

impl Backends {
    /// The list, in configuration order (ids follow it).
    pub fn new(list: Vec<Backend>) -> Backends {
        assert!(u32::try_from(list.len()).is_ok(), "backend count fits u32");
        Backends { list }
    }

    /// How many backends there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there is none (a validated configuration always has one).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every backend with its id, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = (BackendId, &Backend)> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, b)| (BackendId(i as u32), b))
    }

    /// The id of the backend called `name`.
    pub fn find(&self, name: &str) -> Option<BackendId> {
        self.list
            .iter()
            .position(|b| b.name == name)
            .map(|i| BackendId(i as u32))
    }

    /// The backend called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Backend> {
        self.find(name).map(|id| &self[id])
    }

    /// The name of backend `id` (shorthand for log lines and labels).
    pub fn name(&self, id: BackendId) -> &str {
        &self[id].name
    }
}

impl Index<BackendId> for Backends {
    type Output = Backend;

    fn index(&self, id: BackendId) -> &Backend {
        &self.list[id.index()]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::admission::AdmissionConfig;

    /// Backends `node1..` with these weights, on unroutable addresses, with no admission
    /// limits (used by the pool and routing tests).
    pub(crate) fn backends(weights: &[u32]) -> Backends {
        Backends::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| {
                    let name = format!("node{}", i + 1);
                    Backend {
                        state: BackendState::new(
                            &name,
                            AdmissionConfig {
                                max_negotiations: None,
                                max_logins_per_second: None,
                                queue: 1,
                                queue_timeout: std::time::Duration::from_secs(1),
                            },
                        ),
                        name,
                        address: SocketAddr::from(([127, 0, 0, 1], 1)),
                        weight,
                    }
                })
                .collect(),
        )
    }

    /// The ids of `backends`, in order.
    pub(crate) fn ids(backends: &Backends) -> Vec<BackendId> {
        backends.iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn ids_follow_configuration_order_and_find_by_name() {
        let b = backends(&[1, 2, 3]);
        assert_eq!(b.len(), 3);
        let ids = ids(&b);
        assert_eq!(ids.iter().map(|i| i.index()).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(b.find("node2"), Some(ids[1]));
        assert_eq!(b.find("node9"), None);
        assert_eq!(b.by_name("node2").map(|n| n.weight), Some(2));
        assert_eq!(b.name(ids[2]), "node3");
        assert_eq!(b[ids[2]].weight, 3);
    }
}
