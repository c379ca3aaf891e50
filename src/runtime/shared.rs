//! What the whole process shares: the runtime new connections take (swapped on reload), the
//! backend states that outlive it, the feature cache, the metrics and the shutdown signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use tokio_util::sync::CancellationToken;

use super::build::BuildError;
use super::registry::StateRegistry;
use super::snapshot::Runtime;
use crate::config::{Config, GroupMember, GroupMembers};

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
    pub interrupt_all: CancellationToken,
    /// Serializes reloads (of the file, and of backend groups found in DNS).
    reload_lock: tokio::sync::Mutex<()>,
    /// The file's configuration (groups not expanded) and the members last found for each
    /// group: together they give the configuration in service. A change of either rebuilds
    /// the runtime from both, so a DNS change never re-reads the file.
    discovered: std::sync::Mutex<(Config, GroupMembers)>,
    /// Connections accepted and not yet relaying (shutdown lets them finish first).
    pub negotiating: AtomicUsize,
    /// Memory and descriptors in use, against the overload budget.
    pub overload: crate::overload::Overload,
    /// Per-source accounting: connection limits, rates, failed logins and bans.
    pub sources: Arc<crate::sources::Sources>,
    /// True while every listener is bound and accepting (not yet started, or shutting down:
    /// false), for `/readyz`.
    pub accepting: AtomicBool,
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
        Shared::with_members(config, GroupMembers::new(), metrics)
    }

    /// Shared state for a first configuration whose backend groups have these members.
    pub fn with_members(
        config: Config,
        members: GroupMembers,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Shared, BuildError> {
        let registry = StateRegistry::default();
        for g in &config.groups {
            let n = members.get(&g.name).map_or(0, Vec::len);
            metrics
                .dns_group_members
                .with_label_values(&[&g.name])
                .set(n as i64);
            for result in ["ok", "failed"] {
                metrics
                    .dns_lookups_total
                    .with_label_values(&[g.name.as_str(), result]);
            }
        }
        let runtime = Runtime::build(config.expand(&members), &registry)?;
        let discovered = std::sync::Mutex::new((config, members));
        runtime.apply_admission();
        super::zero::preset_start(&metrics, &runtime.config);
        for limit in crate::sources::Limit::ALL {
            metrics
                .source_refusals_total
                .with_label_values(&[limit.as_str()]);
        }
        let sources = Arc::new(crate::sources::Sources::new(
            metrics.sources_tracked.with_label_values::<&str>(&[]),
        ));
        let shared = Shared {
            overload: crate::overload::Overload::new(),
            sources,
            runtime: arc_swap::ArcSwap::from_pointee(runtime),
            registry,
            features: crate::backend::probe::FeatureCache::new(),
            metrics,
            interrupt_all: CancellationToken::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            discovered,
            negotiating: AtomicUsize::new(0),
            accepting: AtomicBool::new(false),
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
        let members = self.discovered().1;
        let mut file = None;
        let result = Config::load(&current.config.source)
            .map_err(ReloadError::from)
            .and_then(|config| {
                let expanded = config.expand(&members);
                file = Some(config);
                Runtime::build(expanded, &self.registry).map_err(ReloadError::from)
            })
            .and_then(|next| same_listeners(&current.config, &next.config).map(|()| next));
        match result {
            Ok(next) => {
                if let Some(file) = file {
                    // A group the file no longer has leaves the gauge.
                    for g in &self.discovered().0.groups {
                        if !file.groups.iter().any(|n| n.name == g.name) {
                            let _absent = self
                                .metrics
                                .dns_group_members
                                .remove_label_values(&[&g.name]);
                        }
                    }
                    for g in &file.groups {
                        let n = members.get(&g.name).map_or(0, Vec::len);
                        self.metrics
                            .dns_group_members
                            .with_label_values(&[&g.name])
                            .set(n as i64);
                    }
                    self.discovered_mut().0 = file;
                }
                let names = |rt: &Runtime| -> Vec<String> {
                    rt.backends.iter().map(|(_, b)| b.name.clone()).collect()
                };
                let (now, before) = (names(&next), names(&current));
                let removed: Vec<&String> = before.iter().filter(|n| !now.contains(n)).collect();
                tracing::info!(backends = ?now, removed = ?removed, "configuration reloaded");
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

    /// The file's configuration and the groups' members, as last put into service.
    pub fn discovered(&self) -> (Config, GroupMembers) {
        self.discovered_mut().clone()
    }

    fn discovered_mut(&self) -> std::sync::MutexGuard<'_, (Config, GroupMembers)> {
        self.discovered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Put a backend group's new members into service, as a reload would: the runtime is
    /// rebuilt from the file's configuration as last loaded (not re-read) and the new
    /// members. Unchanged members keep their state (health, connections) in the registry,
    /// and only added or removed members move users. Refused (and logged) if the result
    /// cannot be built; the running configuration then stays.
    pub async fn apply_members(
        &self,
        group: &str,
        members: Vec<GroupMember>,
    ) -> Result<(), BuildError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let (file, mut all) = self.discovered();
        let before: Vec<String> = all
            .get(group)
            .into_iter()
            .flatten()
            .map(|m| m.name.clone())
            .collect();
        let now: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        let count = members.len();
        all.insert(group.to_string(), members);
        let next = match Runtime::build(file.expand(&all), &self.registry) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(group, error = %e, "backend group change refused; keeping the running members");
                return Err(e);
            }
        };
        next.apply_admission();
        self.runtime.store(Arc::new(next));
        self.discovered_mut().1 = all;
        let added: Vec<&String> = now.iter().filter(|n| !before.contains(n)).collect();
        let removed: Vec<&String> = before.iter().filter(|n| !now.contains(n)).collect();
        tracing::info!(group, members = ?now, ?added, ?removed, "backend group changed");
        self.metrics
            .dns_group_members
            .with_label_values(&[group])
            .set(count as i64);
        self.publish_states();
        Ok(())
    }

    /// Put every backend's health and drain state, and each domain's ring shares, into the
    /// gauges.
    fn publish_states(&self) {
        let rt = self.runtime.load();
        super::zero::preset_backends(&self.metrics, &rt.config);
        // Shares follow the configuration: a backend or domain removed by a reload must not
        // keep its old share.
        self.metrics.backend_ring_share.reset();
        for (domain, route) in &rt.domains {
            for &(id, share) in &route.ring_shares {
                self.metrics
                    .backend_ring_share
                    .with_label_values(&[domain, rt.backends.name(id)])
                    .set(share);
            }
        }
        for (_, b) in rt.backends.iter() {
            self.metrics
                .backend_healthy
                .with_label_values(&[&b.name])
                .set(i64::from(b.state.is_healthy()));
            self.metrics
                .backend_draining
                .with_label_values(&[&b.name])
                .set(i64::from(b.state.is_draining()));
        }
    }
}

/// Whether `next` binds the same listeners as `current` (their sockets are bound once, at
/// start); the difference otherwise.
fn same_listeners(current: &Config, next: &Config) -> Result<(), ReloadError> {
    let shape = |c: &Config| {
        let mut v: Vec<String> = c
            .listeners
            .iter()
            .map(|l| format!("{} {:?} {:?}", l.name, l.bind, l.tls))
            .collect();
        v.sort();
        v
    };
    let (old, new) = (shape(current), shape(next));
    if old == new {
        return Ok(());
    }
    let diff: Vec<&String> = new
        .iter()
        .filter(|l| !old.contains(l))
        .chain(old.iter().filter(|l| !new.contains(l)))
        .collect();
    Err(ReloadError::Listeners(format!("{diff:?}")))
}
