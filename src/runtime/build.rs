//! Turning a validated configuration into a [`Runtime`]: certificates, pins, each domain's
//! policy, pool and links, the admin token and the fleet's keys. Nothing is swapped in unless
//! all of it succeeds.

use std::collections::HashMap;
use std::sync::Arc;

use super::registry::StateRegistry;
use super::snapshot::{DomainRoute, Runtime};
use crate::backend::link::Link;
use crate::backend::record::{Backend, BackendId, Backends};
use crate::config::{BackendTls, Config, DomainConfig, parse_pin_file};
use crate::route::policy::{PinEntry, PinTable, Policy, PolicySpec};
use crate::route::pool::DomainPool;

/// Why a configuration could not be put into service.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A listener's certificates could not be loaded.
    #[error("listener {listener}: {source}")]
    Tls {
        listener: String,
        source: crate::tls::TlsError,
    },
    /// The pin file could not be read or is invalid.
    #[error("{file}: {message}")]
    Pins { file: String, message: String },
    /// A routing policy is inconsistent.
    #[error("domain {domain}: {message}")]
    Policy { domain: String, message: String },
    /// A backend's TLS settings could not be loaded (its CA file).
    #[error("backend {backend}: {source}")]
    BackendTls {
        backend: String,
        source: crate::tls::TlsError,
    },
    /// The admin token file could not be read or holds no token.
    #[error("metrics.token_file {file}: {message}")]
    Token { file: String, message: String },
}

impl Runtime {
    /// Build everything a configuration needs; nothing is swapped in if this fails.
    pub fn build(config: Config, registry: &StateRegistry) -> Result<Runtime, BuildError> {
        let backends = Backends::new(
            config
                .backends
                .iter()
                .map(|b| Backend {
                    name: b.name.clone(),
                    address: b.address,
                    weight: b.weight,
                    state: registry.get(b, &config),
                })
                .collect(),
        );
        let names: Vec<String> = config.backends.iter().map(|b| b.name.clone()).collect();
        let mut acceptors = HashMap::new();
        let mut resolvers = HashMap::new();
        for l in &config.listeners {
            let (acceptor, resolver) = crate::tls::listener_acceptor(l, &config.resumption)
                .map_err(|source| BuildError::Tls {
                    listener: l.name.clone(),
                    source,
                })?;
            acceptors.insert(l.name.clone(), acceptor);
            resolvers.insert(l.name.clone(), resolver);
        }
        let entries = pin_entries(&config)?;
        let pins_error = |message: String| BuildError::Pins {
            file: config.routing.pins_file.as_ref().map_or_else(
                || config.source.display().to_string(),
                |f| f.display().to_string(),
            ),
            message,
        };
        // The whole table is checked once (patterns, names); each domain then gets the pins
        // that can apply to it: a pin to a node outside a domain's pool never routes there.
        PinTable::new(&entries, &names).map_err(pins_error)?;
        for entry in &entries {
            if let Some((_, jid_domain)) = entry.pattern.rsplit_once('@')
                && !jid_domain.contains(['*', '?'])
                && let Some(d) = config
                    .domains
                    .iter()
                    .find(|d| d.name.eq_ignore_ascii_case(jid_domain))
                && !d.backends.contains(&entry.backend)
            {
                return Err(pins_error(format!(
                    "pin {:?} names {}, which does not serve {}",
                    entry.pattern, entry.backend, d.name
                )));
            }
        }
        let mut domains = HashMap::new();
        // One `Link` per distinct setting, shared by every (domain, backend) that uses it.
        let mut built: Vec<Arc<Link>> = Vec::new();
        for d in &config.domains {
            let own: Vec<_> = entries
                .iter()
                .filter(|e| d.backends.contains(&e.backend))
                .cloned()
                .collect();
            let domain_pins = Arc::new(PinTable::new(&own, &names).map_err(pins_error)?);
            let route = domain_route(&config, d, &backends, domain_pins, &mut built)?;
            domains.insert(d.name.clone(), route);
        }
        let admin_token = admin_token(&config)?;
        let sm_keys = Arc::new(crate::route::resume::SmKeys::new(
            &config.resumption.sm_keys,
        ));
        let known_nodes: Arc<[String]> = names.into();
        let passes_channel_binding = built
            .iter()
            .any(|l| l.config.channel_binding == crate::config::ChannelBinding::Pass);
        Ok(Runtime {
            config,
            backends,
            domains,
            acceptors,
            resolvers,
            passes_channel_binding,
            admin_token,
            sm_keys,
            known_nodes,
            loaded_at: std::time::SystemTime::now(),
        })
    }
}

/// The pins of the configuration, then those of its pin file.
fn pin_entries(config: &Config) -> Result<Vec<PinEntry>, BuildError> {
    let mut entries = config.routing.pins.clone();
    if let Some(file) = &config.routing.pins_file {
        let pins_err = |message: String| BuildError::Pins {
            file: file.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| pins_err(e.to_string()))?;
        entries.extend(parse_pin_file(&text).map_err(|e| pins_err(e.to_string()))?);
    }
    Ok(entries)
}

/// One domain's policy, pool and links. `built` holds the links made so far, so that every
/// (domain, backend) pair with the same settings shares one (and one TLS client config).
fn domain_route(
    config: &Config,
    d: &DomainConfig,
    backends: &Backends,
    pins: Arc<PinTable>,
    built: &mut Vec<Arc<Link>>,
) -> Result<DomainRoute, BuildError> {
    let policy = Policy::new(
        PolicySpec {
            keys: &d.keys,
            tenant: d.tenant_pattern.as_ref(),
            ipv4_prefix: config.routing.ipv4_prefix,
            ipv6_prefix: config.routing.ipv6_prefix,
        },
        pins,
    )
    .map_err(|message| BuildError::Policy {
        domain: d.name.clone(),
        message,
    })?;
    let members: Vec<BackendId> = d.backends.iter().filter_map(|n| backends.find(n)).collect();
    let mut links = vec![None; backends.len()];
    for &id in &members {
        let backend = &config.backends[id.index()];
        let wanted = backend.link.resolve(&d.link);
        let link = match built.iter().find(|l| l.config == wanted) {
            Some(l) => l.clone(),
            None => {
                let l = Arc::new(
                    Link::build(wanted).map_err(|source| BuildError::BackendTls {
                        backend: backend.name.clone(),
                        source,
                    })?,
                );
                if l.config.tls != BackendTls::None && !l.config.verify {
                    tracing::warn!(backend = %backend.name, "tls_verify = false: the node's certificate is not checked");
                }
                built.push(l.clone());
                l
            }
        };
        links[id.index()] = Some(link);
    }
    let pool = DomainPool::new(members, backends, d.balance_factor);
    let ring_shares = pool.ring_shares();
    Ok(DomainRoute {
        policy,
        pool,
        ring_shares,
        links,
    })
}

/// The admin token from `[metrics] token_file`, if one is configured.
fn admin_token(config: &Config) -> Result<Option<crate::keys::AdminToken>, BuildError> {
    let Some(file) = &config.metrics_token_file else {
        return Ok(None);
    };
    let token_err = |message: String| BuildError::Token {
        file: file.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|e| token_err(e.to_string()))?;
    crate::keys::AdminToken::new(&text)
        .map(Some)
        .map_err(token_err)
}
