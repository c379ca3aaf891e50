//! One configuration made ready to serve: what a connection reads from accept to close.
//!
//! Built by `build.rs`; only read here. Its fields are the crate's: outside readers (the CLI,
//! tests) use the accessors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::backend::link::{Link, Member};
use crate::backend::record::{BackendId, Backends};
use crate::backend::state::ActiveGuard;
use crate::config::Config;
use crate::route::policy::{Decision, Policy, Who};
use crate::route::pool::DomainPool;

/// One domain's routing: its policy and its pool.
pub struct DomainRoute {
    /// Which key applies to a connection.
    pub policy: Policy,
    /// Where keys land.
    pub pool: DomainPool,
    /// Each member's share of the ring, computed once per build because it depends only on
    /// names and weights.
    pub ring_shares: Vec<(BackendId, f64)>,
    /// How each member is reached for this domain, by backend index (`None` for backends
    /// outside the pool): its own settings over the domain's.
    pub(super) links: Vec<Option<Arc<Link>>>,
}

/// A configuration made ready to serve.
pub struct Runtime {
    /// The configuration.
    pub(crate) config: Config,
    /// Every backend: name, address, weight and live state.
    pub(crate) backends: Backends,
    /// Routing of each served domain.
    pub(crate) domains: HashMap<String, DomainRoute>,
    /// TLS acceptor of each listener, by listener name.
    pub(crate) acceptors: HashMap<String, TlsAcceptor>,
    /// The certificate resolver of each listener, by listener name (which certificate a
    /// handshake presented, for the `tls-server-end-point` channel binding).
    pub(crate) resolvers: HashMap<String, Arc<crate::tls::SniResolver>>,
    /// Whether some node's link passes channel binding: only then does a connection compute
    /// the binding data of its TLS session.
    pub(crate) passes_channel_binding: bool,
    /// The bearer token the admin endpoints require, read from `[metrics] token_file`.
    pub(crate) admin_token: Option<crate::keys::AdminToken>,
    /// The fleet's keys for stream-management ids (`[resumption] sm_key_files`).
    pub(crate) sm_keys: Arc<crate::route::resume::SmKeys>,
    /// Backend names, shared with every connection's resumption context.
    pub(crate) known_nodes: Arc<[String]>,
    /// When this configuration was put into service (start or reload), for the status page.
    pub(crate) loaded_at: std::time::SystemTime,
}

impl Runtime {
    /// The configuration this runtime was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every backend of this runtime.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The routing of `domain`, if it is served.
    pub fn domain(&self, domain: &str) -> Option<&DomainRoute> {
        self.domains.get(domain)
    }

    /// The served domains and their routing, in no particular order.
    pub fn domains(&self) -> impl Iterator<Item = (&str, &DomainRoute)> {
        self.domains.iter().map(|(d, r)| (d.as_str(), r))
    }

    /// When this configuration was put into service (at start, or by a reload).
    pub fn loaded_at(&self) -> std::time::SystemTime {
        self.loaded_at
    }

    /// The admin bearer token, if one is configured.
    pub fn admin_token(&self) -> Option<&crate::keys::AdminToken> {
        self.admin_token.as_ref()
    }

    /// Decide which key applies (None: wait for SASL to learn the user).
    pub fn decide(
        &self,
        domain: &str,
        jid: Option<&str>,
        ip: IpAddr,
        identity_final: bool,
    ) -> Option<Decision> {
        let route = self.domains.get(domain)?;
        route.policy.decide(&Who {
            jid,
            domain,
            ip,
            identity_final,
        })
    }

    /// Pick the node for a decision, skipping `excluded` (nodes that already refused).
    pub fn pick(
        &self,
        domain: &str,
        decision: &Decision,
        excluded: &[BackendId],
    ) -> Option<(BackendId, ActiveGuard)> {
        let route = self.domains.get(domain)?;
        route
            .pool
            .pick(&decision.placement, &self.backends, excluded)
    }

    /// The order nodes would be tried in now, without counting anything.
    pub fn order(&self, domain: &str, decision: &Decision) -> Vec<BackendId> {
        match self.domains.get(domain) {
            Some(route) => route.pool.order(&decision.placement, &self.backends),
            None => Vec::new(),
        }
    }

    /// Whether the nodes of `domain` get the client's channel binding (all or none of them
    /// do: the configuration checks it).
    pub fn passes_channel_binding(&self, domain: &str) -> bool {
        self.passes_channel_binding
            && self
                .members_of(domain)
                .iter()
                .any(|m| m.link.config.channel_binding == crate::config::ChannelBinding::Pass)
    }

    /// Every backend serving `domain`, with its link for it (who to probe for its features).
    pub fn members_of(&self, domain: &str) -> Vec<Member> {
        self.domains.get(domain).map_or_else(Vec::new, |route| {
            route
                .pool
                .members()
                .iter()
                .filter_map(|&id| {
                    Some(Member {
                        name: self.backends[id].name.clone(),
                        address: self.backends[id].address,
                        link: self.link(domain, id)?,
                    })
                })
                .collect()
        })
    }

    /// How backend `id` is reached for clients of `domain`; `None` if it does not serve the
    /// domain. There is deliberately no default: a plain link to a node that expects TLS or a
    /// PROXY header would hand it a client's credentials in clear, so a (domain, node) pair
    /// without a configured link is never connected for a client.
    pub fn link(&self, domain: &str, id: BackendId) -> Option<Arc<Link>> {
        self.domains
            .get(domain)
            .and_then(|route| route.links.get(id.index()).cloned().flatten())
    }

    /// The domain the proxy speaks for before a client named one it serves (the `from` of
    /// the header before a stream error).
    pub fn default_domain(&self) -> &str {
        self.config
            .routing
            .domains
            .first()
            .map_or("", String::as_str)
    }

    /// The domains a backend serves, sorted (its first one is used to health-check it).
    pub fn domains_of(&self, id: BackendId) -> Vec<&str> {
        let name = &self.backends[id].name;
        let mut out: Vec<&str> = self
            .config
            .domains
            .iter()
            .filter(|d| d.backends.contains(name))
            .map(|d| d.name.as_str())
            .collect();
        out.sort();
        out
    }
}
