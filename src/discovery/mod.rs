//! Backends from DNS: each `[[backend_group]]` is looked up at start (before listeners
//! serve) and again when its answer's TTL runs out (kept within `min_interval` and
//! `max_interval`). A changed answer is put into service like a reload
//! ([`Shared::apply_members`]); a failed lookup keeps the last good members, is logged and
//! counted, and is retried after `min_interval`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendGroupConfig, Config, GroupMembers};
use crate::metrics::Metrics;
use crate::runtime::Shared;

pub mod answer;
pub mod lookup;

pub use lookup::{Answer, LookupError};

/// How long start waits for the first answers of all groups together.
pub const FIRST_LOOKUP_WAIT: Duration = Duration::from_secs(5);

/// Look up every group once, each within [`FIRST_LOOKUP_WAIT`]. A group whose lookup fails
/// starts empty (logged as a warning): the proxy serves its other backends, `/readyz` says
/// whether a domain has any healthy node, and the group is retried every `min_interval`.
pub async fn first_lookup(config: &Config, metrics: &Metrics) -> GroupMembers {
    let mut members = GroupMembers::new();
    for g in &config.groups {
        let found = tokio::time::timeout(FIRST_LOOKUP_WAIT, resolve(g))
            .await
            .unwrap_or_else(|_| {
                Err(LookupError::Query {
                    name: g.name.clone(),
                    message: "timed out".into(),
                })
            });
        count(metrics, &g.name, found.is_ok());
        match found {
            Ok(answer) => {
                tracing::info!(group = %g.name, members = ?names(&answer), "backend group resolved");
                members.insert(g.name.clone(), answer.members);
            }
            Err(e) => {
                tracing::warn!(group = %g.name, error = %e, "backend group lookup failed at start; the group starts empty and is retried");
            }
        }
    }
    members
}

/// One lookup with a resolver made for it.
pub async fn resolve(group: &BackendGroupConfig) -> Result<Answer, LookupError> {
    let resolver = lookup::resolver(group)?;
    lookup::lookup(&resolver, group).await
}

/// Look every group up again when its time comes, until `shutdown`. The groups are read from
/// the configuration in service at each turn, so a reload that adds, removes or changes a
/// group takes effect at once.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    // Per group: its settings, its resolver, and when to look next.
    let mut state: HashMap<String, (BackendGroupConfig, TokioResolver, Instant)> = HashMap::new();
    loop {
        let (file, members) = shared.discovered();
        state.retain(|name, (g, _, _)| file.groups.iter().any(|n| &n.name == name && n == g));
        for g in &file.groups {
            if state.contains_key(&g.name) {
                continue;
            }
            match lookup::resolver(g) {
                // A new or changed group is looked up after min_interval (the first lookup
                // of a group at start was just made).
                Ok(r) => {
                    let due = Instant::now() + g.min_interval;
                    state.insert(g.name.clone(), (g.clone(), r, due));
                }
                Err(e) => {
                    tracing::warn!(group = %g.name, error = %e, "no resolver for backend group");
                    count(&shared.metrics, &g.name, false);
                }
            }
        }
        let now = Instant::now();
        let due: Vec<String> = state
            .iter()
            .filter(|(_, (_, _, at))| *at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some((g, resolver, at)) = state.get_mut(&name) else {
                continue;
            };
            let found = lookup::lookup(resolver, g).await;
            count(&shared.metrics, &name, found.is_ok());
            let wait = match found {
                Ok(answer) => {
                    let current = members.get(&name).cloned().unwrap_or_default();
                    if answer.members != current {
                        let _refused = shared.apply_members(&name, answer.members.clone()).await;
                    }
                    answer::next_interval(answer.ttl, g.min_interval, g.max_interval)
                }
                Err(e) => {
                    tracing::warn!(group = %name, error = %e, "backend group lookup failed; keeping the last good members");
                    g.min_interval
                }
            };
            *at = Instant::now() + wait;
        }
        // Wake for the next due group, or within a second to notice a reload.
        let next = state
            .values()
            .map(|(_, _, at)| *at)
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .min(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

fn count(metrics: &Metrics, group: &str, ok: bool) {
    metrics
        .dns_lookups_total
        .with_label_values(&[group, if ok { "ok" } else { "failed" }])
        .inc();
}

fn names(answer: &Answer) -> Vec<&str> {
    answer.members.iter().map(|m| m.name.as_str()).collect()
}
