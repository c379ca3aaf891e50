//! Everything the proxy derives from one configuration, swapped whole on reload.
//!
//! A connection takes one [`Runtime`] snapshot when it is accepted and keeps it to the end, so
//! a reload can never change the rules under a login in progress, and never drops an
//! established connection. Backend *state* (health, drain, load) lives outside, keyed by name
//! in [`StateRegistry`], so it survives reloads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_rustls::TlsAcceptor;

use crate::backend::admission::AdmissionConfig;
use crate::backend::link::{Link, Member};
use crate::backend::state::{ActiveGuard, BackendState};
use crate::config::{BackendConfig, BackendTls, Config, parse_pin_file};
use crate::route::policy::{Decision, PinTable, Policy, PolicySpec, Who};
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

/// Backend states by name, shared by every runtime generation.
#[derive(Default)]
pub struct StateRegistry {
    /// Name → state; entries of removed backends stay (their connections may still run).
    by_name: Mutex<HashMap<String, Arc<BackendState>>>,
}

impl StateRegistry {
    /// The state of `b`, created on first sight; admission limits follow the current config.
    /// The state of `b`, created on first sight. An existing state keeps its admission limits
    /// until [`Runtime::apply_admission`] runs for a runtime actually put in service, so a
    /// refused reload changes nothing.
    fn get(&self, b: &BackendConfig, config: &Config) -> Arc<BackendState> {
        let adm = admission_of(b, config);
        let mut map = self.by_name.lock().expect("state registry lock");
        match map.get(&b.name) {
            Some(s) => s.clone(),
            None => {
                let s = BackendState::new(&b.name, adm);
                map.insert(b.name.clone(), s.clone());
                s
            }
        }
    }
}

/// The admission limits of one backend under `config` (its own, else the defaults).
fn admission_of(b: &BackendConfig, config: &Config) -> AdmissionConfig {
    AdmissionConfig {
        max_negotiations: b.max_negotiations.or(config.admission.max_negotiations),
        max_logins_per_second: b
            .max_logins_per_second
            .or(config.admission.max_logins_per_second),
        queue: config.admission.queue,
        queue_timeout: config.admission.queue_timeout,
    }
}

/// One domain's routing: its policy and its pool.
pub struct DomainRoute {
    /// Which key applies to a connection.
    pub policy: Policy,
    /// Where keys land.
    pub pool: DomainPool,
    /// Each member's share of the ring as (backend index, share), computed once per build
    /// because it depends only on names and weights.
    pub ring_shares: Vec<(usize, f64)>,
    /// How each member is reached for this domain, by backend index (`None` for backends
    /// outside the pool): its own settings over the domain's.
    pub links: Vec<Option<Arc<Link>>>,
}

/// Where one user lands and why: `xmpp-lb route` prints it, `/route` returns it as JSON.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RouteInfo {
    /// The bare JID, normalized as the proxy normalizes it.
    pub jid: String,
    /// Its domain.
    pub domain: String,
    /// The domain's routing keys, in fallback order.
    pub keys: Vec<&'static str>,
    /// The backend the user would be sent to now (health, drain and load considered).
    pub backend: String,
    /// The ring's home node for the user while every node is up (the pinned node for a pin;
    /// none for `random`). Differs from `backend` when health, drain or load moved the user.
    pub home: Option<String>,
    /// The key that applied.
    pub key: &'static str,
    /// The rule that applied, for a person.
    pub rule: String,
    /// Keys tried before, and why each did not apply.
    pub skipped: Vec<Skipped>,
    /// The bounded-load factor, if enabled.
    pub balance_factor: Option<f64>,
    /// The next nodes, in the order they would be tried if `backend` could not take the user.
    pub fallback: Vec<String>,
}

/// A routing key that did not apply.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    /// The key.
    pub key: &'static str,
    /// Why it did not apply.
    pub reason: &'static str,
}

/// A configuration made ready to serve.
pub struct Runtime {
    /// The configuration.
    pub config: Config,
    /// Backend names, by index (the index used everywhere below).
    pub names: Vec<String>,
    /// Backend states, by index.
    pub states: Vec<Arc<BackendState>>,
    /// Routing of each served domain.
    pub domains: HashMap<String, DomainRoute>,
    /// TLS acceptor of each listener, by listener name.
    pub acceptors: HashMap<String, TlsAcceptor>,
    /// The pin table every domain shares.
    pub pins: Arc<PinTable>,
    /// The bearer token the admin endpoints require, read from `[metrics] token_file`.
    pub admin_token: Option<crate::keys::AdminToken>,
    /// The fleet's keys for stream-management ids (`[resumption] sm_key_files`).
    pub sm_keys: Arc<crate::route::resume::SmKeys>,
    /// Backend names, shared with every connection's resumption context.
    pub known_nodes: Arc<[String]>,
}

impl Runtime {
    /// Build everything a configuration needs; nothing is swapped in if this fails.
    pub fn build(config: Config, registry: &StateRegistry) -> Result<Runtime, BuildError> {
        let names: Vec<String> = config.backends.iter().map(|b| b.name.clone()).collect();
        let weights: Vec<u32> = config.backends.iter().map(|b| b.weight).collect();
        let states = config
            .backends
            .iter()
            .map(|b| registry.get(b, &config))
            .collect();
        let mut acceptors = HashMap::new();
        for l in &config.listeners {
            let acceptor =
                crate::tls::listener_acceptor(l, &config.resumption).map_err(|source| {
                    BuildError::Tls {
                        listener: l.name.clone(),
                        source,
                    }
                })?;
            acceptors.insert(l.name.clone(), acceptor);
        }
        let mut entries = config.routing.pins.clone();
        if let Some(file) = &config.routing.pins_file {
            let text = std::fs::read_to_string(file).map_err(|e| BuildError::Pins {
                file: file.display().to_string(),
                message: e.to_string(),
            })?;
            let parsed = parse_pin_file(&text).map_err(|e| BuildError::Pins {
                file: file.display().to_string(),
                message: e.to_string(),
            })?;
            entries.extend(parsed);
        }
        let pins_error = |message: String| BuildError::Pins {
            file: config.routing.pins_file.as_ref().map_or_else(
                || config.source.display().to_string(),
                |f| f.display().to_string(),
            ),
            message,
        };
        // The whole table is checked once (patterns, names); each domain then gets the pins
        // that can apply to it: a pin to a node outside a domain's pool never routes there.
        let pins = Arc::new(PinTable::new(&entries, &names).map_err(pins_error)?);
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
            let policy_err = |message: String| BuildError::Policy {
                domain: d.name.clone(),
                message,
            };
            let own: Vec<_> = entries
                .iter()
                .filter(|e| d.backends.contains(&e.backend))
                .cloned()
                .collect();
            let domain_pins = Arc::new(PinTable::new(&own, &names).map_err(pins_error)?);
            let policy = Policy::new(
                PolicySpec {
                    keys: &d.keys,
                    tenant: d.tenant_pattern.as_ref(),
                    ipv4_prefix: config.routing.ipv4_prefix,
                    ipv6_prefix: config.routing.ipv6_prefix,
                },
                domain_pins,
            )
            .map_err(policy_err)?;
            let members: Vec<usize> = d
                .backends
                .iter()
                .filter_map(|n| names.iter().position(|m| m == n))
                .collect();
            let mut links = vec![None; names.len()];
            for &idx in &members {
                let backend = &config.backends[idx];
                let wanted = backend.link.resolve(&d.link);
                let link = match built.iter().find(|l| l.config == wanted) {
                    Some(l) => l.clone(),
                    None => {
                        let l = Arc::new(Link::build(wanted).map_err(|source| {
                            BuildError::BackendTls {
                                backend: backend.name.clone(),
                                source,
                            }
                        })?);
                        if l.config.tls != BackendTls::None && !l.config.verify {
                            tracing::warn!(backend = %backend.name, "tls_verify = false: the node's certificate is not checked");
                        }
                        built.push(l.clone());
                        l
                    }
                };
                links[idx] = Some(link);
            }
            let pool = DomainPool::new(members, &names, &weights, d.balance_factor);
            let ring_shares = pool.ring_shares();
            domains.insert(
                d.name.clone(),
                DomainRoute {
                    policy,
                    pool,
                    ring_shares,
                    links,
                },
            );
        }
        let admin_token = match &config.metrics_token_file {
            Some(file) => {
                let token_err = |message: String| BuildError::Token {
                    file: file.display().to_string(),
                    message,
                };
                let text = std::fs::read_to_string(file).map_err(|e| token_err(e.to_string()))?;
                Some(crate::keys::AdminToken::new(&text).map_err(token_err)?)
            }
            None => None,
        };
        let sm_keys = Arc::new(crate::route::resume::SmKeys::new(
            &config.resumption.sm_keys,
        ));
        let known_nodes: Arc<[String]> = names.clone().into();
        Ok(Runtime {
            config,
            names,
            states,
            domains,
            acceptors,
            pins,
            admin_token,
            sm_keys,
            known_nodes,
        })
    }

    /// Give every backend the admission limits of this runtime's configuration (called when
    /// the runtime goes into service).
    pub fn apply_admission(&self) {
        for (b, state) in self.config.backends.iter().zip(&self.states) {
            state.admission.reconfigure(admission_of(b, &self.config));
        }
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
        excluded: &[usize],
    ) -> Option<(usize, ActiveGuard)> {
        let route = self.domains.get(domain)?;
        route
            .pool
            .pick(&decision.placement, &self.states, &self.names, excluded)
    }

    /// The order nodes would be tried in now, without counting anything.
    pub fn order(&self, domain: &str, decision: &Decision) -> Vec<usize> {
        match self.domains.get(domain) {
            Some(route) => route
                .pool
                .order(&decision.placement, &self.states, &self.names),
            None => Vec::new(),
        }
    }

    /// Every backend serving `domain`, with its link for it (who to probe for its features).
    pub fn members_of(&self, domain: &str) -> Vec<Member> {
        self.domains.get(domain).map_or_else(Vec::new, |route| {
            route
                .pool
                .members()
                .iter()
                .filter_map(|&i| {
                    Some(Member {
                        name: self.names[i].clone(),
                        address: self.config.backends[i].address,
                        link: self.link(domain, i)?,
                    })
                })
                .collect()
        })
    }

    /// How backend `idx` is reached for clients of `domain`; `None` if it does not serve the
    /// domain. There is deliberately no default: a plain link to a node that expects TLS or a
    /// PROXY header would hand it a client's credentials in clear, so a (domain, node) pair
    /// without a configured link is never connected for a client.
    pub fn link(&self, domain: &str, idx: usize) -> Option<Arc<Link>> {
        self.domains
            .get(domain)
            .and_then(|route| route.links.get(idx).cloned().flatten())
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

    /// Index of a backend by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The domains a backend serves (its first one is used to health-check it).
    pub fn domains_of(&self, idx: usize) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .config
            .domains
            .iter()
            .filter(|d| d.backends.contains(&self.names[idx]))
            .map(|d| d.name.as_str())
            .collect();
        out.sort();
        out
    }

    /// Where `jid` (from `ip`) lands and why, with the backends' current state. An error
    /// names what is missing or wrong, for a person.
    pub fn route_info(&self, jid: &str, ip: Option<IpAddr>) -> Result<RouteInfo, String> {
        let bare = crate::route::key::normalize_bare_jid(jid)
            .ok_or_else(|| format!("{jid:?} is not a valid JID"))?;
        let (_, domain) = bare
            .rsplit_once('@')
            .ok_or_else(|| format!("{jid:?} has no domain"))?;
        let route = self
            .domains
            .get(domain)
            .ok_or_else(|| format!("domain {domain} is not served by this configuration"))?;
        let decision = self
            .decide(
                domain,
                Some(&bare),
                ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                true,
            )
            .ok_or("no routing decision")?;
        if decision.key == crate::route::policy::RouteKey::Subnet && ip.is_none() {
            return Err("this user is routed by subnet: give the client address with --ip".into());
        }
        let order = self.order(domain, &decision);
        let first = order.first().ok_or("no backend serves this domain")?;
        let home = match &decision.placement {
            crate::route::policy::Placement::Pinned(name) => Some(name.clone()),
            crate::route::policy::Placement::Ring(key) => route
                .pool
                .ring_order(key)
                .first()
                .map(|&i| self.names[i].clone()),
            crate::route::policy::Placement::Random => None,
            crate::route::policy::Placement::Resume { node, .. } => Some(node.clone()),
        };
        Ok(RouteInfo {
            jid: bare.clone(),
            domain: domain.to_string(),
            keys: route.policy.keys().iter().map(|k| k.as_str()).collect(),
            backend: self.names[*first].clone(),
            home,
            key: decision.key.as_str(),
            rule: decision.rule.clone(),
            skipped: decision
                .skipped
                .iter()
                .map(|(k, why)| Skipped {
                    key: k.as_str(),
                    reason: why,
                })
                .collect(),
            balance_factor: route.pool.balance_factor(),
            fallback: order[1..].iter().map(|&i| self.names[i].clone()).collect(),
        })
    }

    /// A human explanation of where `jid` (from `ip`) lands and why, for `xmpp-lb route`.
    /// The first line is the backend name alone, so scripts can read it.
    pub fn explain(&self, jid: &str, ip: Option<IpAddr>) -> Result<String, String> {
        let info = self.route_info(jid, ip)?;
        let mut out = format!("{}\n", info.backend);
        out.push_str(&format!(
            "  domain:   {} (keys = {:?})\n",
            info.domain, info.keys
        ));
        out.push_str(&format!("  key:      {}\n", info.key));
        out.push_str(&format!("  rule:     {}\n", info.rule));
        for s in &info.skipped {
            out.push_str(&format!("  skipped:  {} ({})\n", s.key, s.reason));
        }
        if let Some(f) = info.balance_factor {
            out.push_str(&format!(
                "  load:     bounded, factor {f} (a node over its bound passes users on)\n"
            ));
        }
        if !info.fallback.is_empty() {
            out.push_str(&format!(
                "  fallback: {} (if {} is down, draining or full)\n",
                info.fallback.join(", "),
                info.backend
            ));
        }
        Ok(out)
    }
}

/// Process-wide state: the current runtime (swapped on reload) and what outlives it.
pub struct Shared {
    /// The runtime new connections take.
    pub runtime: arc_swap::ArcSwap<Runtime>,
    /// Backend states by name (survive reloads).
    pub registry: StateRegistry,
    /// Backend features shown to clients before routing.
    pub features: crate::backend::probe::FeatureCache,
    /// Every metric.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Cancelled when every relayed connection must leave (last phase of shutdown).
    pub interrupt_all: tokio_util::sync::CancellationToken,
    /// Serializes reloads.
    reload_lock: tokio::sync::Mutex<()>,
    /// Connections accepted and not yet relaying (shutdown lets them finish first).
    pub negotiating: std::sync::atomic::AtomicUsize,
    /// True while every listener is bound and accepting (not yet started, or shutting down:
    /// false), for `/readyz`.
    pub accepting: std::sync::atomic::AtomicBool,
}

/// A reload that was refused; the running configuration is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not parse or validate.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The configuration could not be put into service.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Listeners were added, removed or changed: their sockets are bound once, at start.
    #[error("listeners changed ({0}); restart the proxy to apply listener changes")]
    Listeners(String),
}

impl Shared {
    /// Shared state for a first configuration.
    pub fn new(
        config: Config,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Shared, BuildError> {
        let registry = StateRegistry::default();
        let runtime = Runtime::build(config, &registry)?;
        runtime.apply_admission();
        let shared = Shared {
            runtime: arc_swap::ArcSwap::from_pointee(runtime),
            registry,
            features: crate::backend::probe::FeatureCache::new(),
            metrics,
            interrupt_all: tokio_util::sync::CancellationToken::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            negotiating: std::sync::atomic::AtomicUsize::new(0),
            accepting: std::sync::atomic::AtomicBool::new(false),
        };
        shared.publish_states();
        Ok(shared)
    }

    /// Re-read the configuration file and swap it in if it is good. New connections use it;
    /// established ones keep the runtime they started with. Listener addresses are not
    /// re-bound: a changed `bind` needs a restart (logged).
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.runtime.load_full();
        let result = Config::load(&current.config.source)
            .map_err(ReloadError::from)
            .and_then(|config| Runtime::build(config, &self.registry).map_err(ReloadError::from));
        let result = result.and_then(|next| {
            let shape = |c: &Config| {
                let mut v: Vec<String> = c
                    .listeners
                    .iter()
                    .map(|l| format!("{} {:?} {:?}", l.name, l.bind, l.tls))
                    .collect();
                v.sort();
                v
            };
            let (old, new) = (shape(&current.config), shape(&next.config));
            if old == new {
                Ok(next)
            } else {
                let diff: Vec<&String> = new
                    .iter()
                    .filter(|l| !old.contains(l))
                    .chain(old.iter().filter(|l| !new.contains(l)))
                    .collect();
                Err(ReloadError::Listeners(format!("{diff:?}")))
            }
        });
        match result {
            Ok(next) => {
                let removed: Vec<&String> = current
                    .names
                    .iter()
                    .filter(|n| !next.names.contains(n))
                    .collect();
                tracing::info!(backends = ?next.names, removed = ?removed, "configuration reloaded");
                if next.config.log_format != current.config.log_format {
                    // Logging is set up once, before anything else runs.
                    tracing::warn!("log_format changed: it takes effect at the next restart");
                }
                next.apply_admission();
                self.runtime.store(Arc::new(next));
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                self.publish_states();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; keeping the running one");
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["failed"])
                    .inc();
                Err(e)
            }
        }
    }

    /// Log and count a health transition.
    pub fn note_transition(&self, backend: &str, t: crate::backend::state::Transition) {
        use crate::backend::state::Transition;
        let (state, up) = match t {
            Transition::Up => ("up", 1),
            Transition::Down => ("down", 0),
        };
        tracing::warn!(backend, state, "backend health changed");
        self.metrics
            .health_transitions_total
            .with_label_values(&[backend, state])
            .inc();
        self.metrics
            .backend_healthy
            .with_label_values(&[backend])
            .set(up);
    }

    /// Put every backend's health and drain state, and each domain's ring shares, into the
    /// gauges.
    fn publish_states(&self) {
        let rt = self.runtime.load();
        // Shares follow the configuration: a backend or domain removed by a reload must not
        // keep its old share.
        self.metrics.backend_ring_share.reset();
        for (domain, route) in &rt.domains {
            for &(idx, share) in &route.ring_shares {
                self.metrics
                    .backend_ring_share
                    .with_label_values(&[domain, &rt.names[idx]])
                    .set(share);
            }
        }
        for (name, s) in rt.names.iter().zip(&rt.states) {
            self.metrics
                .backend_healthy
                .with_label_values(&[name])
                .set(i64::from(s.is_healthy()));
            self.metrics
                .backend_draining
                .with_label_values(&[name])
                .set(i64::from(s.is_draining()));
        }
    }

    /// Start or stop draining a backend. Draining in `redirect` mode asks its relayed clients
    /// to move, `rate` per second, until none is left or the drain is lifted.
    pub fn set_draining(self: &Arc<Self>, name: &str, on: bool) -> Result<(), String> {
        let rt = self.runtime.load_full();
        let idx = rt
            .index_of(name)
            .ok_or_else(|| format!("no backend named {name:?}"))?;
        let state = rt.states[idx].clone();
        let was = state.set_draining(on);
        self.metrics
            .backend_draining
            .with_label_values(&[name])
            .set(i64::from(on));
        tracing::warn!(backend = name, draining = on, "drain state changed");
        if on && !was && rt.config.drain.mode == crate::config::DrainMode::Redirect {
            let shared = self.clone();
            let period = std::time::Duration::from_secs_f64(1.0 / rt.config.drain.rate);
            let name = name.to_string();
            tokio::spawn(async move {
                while state.is_draining() && state.movable_relays() > 0 {
                    let asked = state.interrupt_some(1, crate::backend::state::Command::Drain);
                    shared
                        .metrics
                        .drain_redirects_total
                        .with_label_values(&[&name])
                        .inc_by(asked as u64);
                    tokio::time::sleep(period).await;
                }
                tracing::info!(backend = %name, "drain: no relayed client left to move");
            });
        }
        Ok(())
    }

    /// Check every backend at the XMPP level, forever (until `shutdown`): a stream header must
    /// get a header and features within the timeout. Results feed the rise/fall counters.
    pub async fn health_loop(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let rt = self.runtime.load_full();
            let checks = (0..rt.names.len()).map(|idx| {
                let rt = rt.clone();
                let shared = self.clone();
                async move {
                    let domain = rt.domains_of(idx).first().map(|d| d.to_string());
                    let Some(domain) = domain else { return };
                    let health = &rt.config.health;
                    // Its first domain serves it, so it has a link there.
                    let Some(link) = rt.link(&domain, idx) else {
                        return;
                    };
                    let ok = crate::backend::probe::probe(
                        rt.config.backends[idx].address,
                        &link,
                        &domain,
                        health.timeout,
                    )
                    .await
                    .is_ok();
                    if let Some(t) = rt.states[idx].record(ok, health.rise, health.fall) {
                        shared.note_transition(&rt.names[idx], t);
                    }
                }
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = futures_util::future::join_all(checks) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(rt.config.health.interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime from `body` (listener and certificate added), or its build error.
    fn build(body: &str) -> Result<Runtime, String> {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["example.test".to_string()]).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("c.key"), cert.signing_key.serialize_pem()).unwrap();
        let text = format!(
            "[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:0\"]\ntls = \"direct\"\ncert = \"c.pem\"\nkey = \"c.key\"\n\n{body}\n\
             [[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n\n\
             [[backend]]\nname = \"iot\"\naddress = \"127.0.0.1:3\"\n"
        );
        let path = dir.path().join("x.toml");
        let config = Config::from_toml(&text, &path).map_err(|e| e.to_string())?;
        Runtime::build(config, &StateRegistry::default()).map_err(|e| e.to_string())
    }

    const DOMAINS: &str = "[routing]\nkeys = [\"pin\", \"tenant\", \"jid\"]\ndomains = [\"example.test\"]\n\
        tenant_pattern = \"^(?<tenant>[a-z]+)-\"\n";

    #[test]
    fn pins_only_apply_in_domains_served_by_the_pinned_node() {
        let body = format!(
            "{DOMAINS}[[routing.pin]]\nmatch = \"tenant:acme\"\nbackend = \"iot\"\n\n\
             [[domain]]\nname = \"example.test\"\nbackends = [\"a\", \"b\"]\n\n\
             [[domain]]\nname = \"iot.test\"\nbackends = [\"iot\"]\n"
        );
        let rt = build(&body).unwrap();
        let ip = IpAddr::from([192, 0, 2, 1]);
        let iot = rt
            .decide("iot.test", Some("acme-1@iot.test"), ip, true)
            .unwrap();
        assert_eq!(iot.key, crate::route::policy::RouteKey::Pin);
        let other = rt
            .decide("example.test", Some("acme-1@example.test"), ip, true)
            .unwrap();
        assert_ne!(
            other.key,
            crate::route::policy::RouteKey::Pin,
            "the iot pin does not reach example.test: {other:?}"
        );
        let first = rt.order("example.test", &other)[0];
        assert!(["a", "b"].contains(&rt.names[first].as_str()));
    }

    #[test]
    fn a_jid_pin_to_a_node_outside_its_domain_is_refused() {
        let body = format!(
            "{DOMAINS}[[routing.pin]]\nmatch = \"sensor@example.test\"\nbackend = \"iot\"\n\n\
             [[domain]]\nname = \"example.test\"\nbackends = [\"a\", \"b\"]\n"
        );
        let err = build(&body).err().expect("refused");
        assert!(err.contains("does not serve example.test"), "{err}");
    }
}
