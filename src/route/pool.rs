//! The backends of a deployment and the ring over them.

use crate::config::{BackendConfig, Config, KeyKind};
use crate::route::key::{normalize_bare_jid, normalize_domain, subnet_key};
use crate::route::ring::Ring;
use std::net::IpAddr;

/// Backends plus the consistent-hash ring that places keys on them. Immutable: a new
/// configuration builds a new pool.
pub struct Pool {
    /// The backends in config order; ring indices point here.
    backends: Vec<BackendConfig>,
    /// Placement of keys on backends.
    ring: Ring,
}

/// Why `xmpp-lb route` cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The JID is not a valid bare JID.
    #[error("{0:?} is not a valid JID")]
    BadJid(String),
    /// Subnet routing needs a client address.
    #[error("routing key is \"subnet\": give the client address with --ip")]
    NeedIp,
}

impl Pool {
    /// Build the pool of a configuration.
    pub fn new(backends: &[BackendConfig]) -> Pool {
        let spec: Vec<(String, u32)> = backends
            .iter()
            .map(|b| (b.name.clone(), b.weight))
            .collect();
        Pool {
            backends: backends.to_vec(),
            ring: Ring::new(&spec),
        }
    }

    /// Backend `i`.
    pub fn backend(&self, i: usize) -> &BackendConfig {
        &self.backends[i]
    }

    /// Every backend.
    pub fn backends(&self) -> &[BackendConfig] {
        &self.backends
    }

    /// Backends to try for `key`, home node first, then the next distinct nodes of the ring.
    pub fn preference(&self, key: &str) -> Vec<usize> {
        self.ring.preference(key)
    }

    /// The backend a user would land on, as the proxy computes it (for `xmpp-lb route`).
    pub fn lookup(
        &self,
        config: &Config,
        jid: &str,
        ip: Option<IpAddr>,
    ) -> Result<usize, LookupError> {
        let key = match config.routing.key {
            KeyKind::Jid => {
                normalize_bare_jid(jid).ok_or_else(|| LookupError::BadJid(jid.into()))?
            }
            KeyKind::Domain => {
                let domain = jid.rsplit_once('@').map_or(jid, |(_, d)| d);
                let domain = domain.split('/').next().unwrap_or(domain);
                normalize_domain(domain).ok_or_else(|| LookupError::BadJid(jid.into()))?
            }
            KeyKind::Subnet => {
                let ip = ip.ok_or(LookupError::NeedIp)?;
                subnet_key(ip, config.routing.ipv4_prefix, config.routing.ipv6_prefix)
            }
        };
        Ok(self.preference(&key)[0])
    }
}
