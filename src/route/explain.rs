//! Where one user lands and why, for a person: `xmpp-lb route` prints it, `/route` returns
//! it as JSON. Read-only: it asks the runtime's routing the same questions a login does,
//! without counting anything.

use std::net::IpAddr;

use crate::route::policy::{Placement, RouteKey};
use crate::runtime::Runtime;

/// Where one user lands and why.
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

/// Where `jid` (from `ip`) lands under `rt` and why, with the backends' current state. An
/// error names what is missing or wrong, for a person.
pub fn route_info(rt: &Runtime, jid: &str, ip: Option<IpAddr>) -> Result<RouteInfo, String> {
    let bare = crate::route::key::normalize_bare_jid(jid)
        .ok_or_else(|| format!("{jid:?} is not a valid JID"))?;
    let (_, domain) = bare
        .rsplit_once('@')
        .ok_or_else(|| format!("{jid:?} has no domain"))?;
    let route = rt
        .domain(domain)
        .ok_or_else(|| format!("domain {domain} is not served by this configuration"))?;
    let decision = rt
        .decide(
            domain,
            Some(&bare),
            ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            true,
        )
        .ok_or("no routing decision")?;
    if decision.key == RouteKey::Subnet && ip.is_none() {
        return Err("this user is routed by subnet: give the client address with --ip".into());
    }
    let backends = rt.backends();
    let order = rt.order(domain, &decision);
    let first = *order.first().ok_or("no backend serves this domain")?;
    let home = match &decision.placement {
        Placement::Pinned(name) => Some(name.clone()),
        Placement::Ring(key) => route
            .pool
            .ring_order(key)
            .first()
            .map(|&id| backends.name(id).to_string()),
        Placement::Random => None,
        Placement::Resume { node, .. } => Some(node.clone()),
    };
    Ok(RouteInfo {
        jid: bare.clone(),
        domain: domain.to_string(),
        keys: route.policy.keys().iter().map(|k| k.as_str()).collect(),
        backend: backends.name(first).to_string(),
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
        fallback: order[1..]
            .iter()
            .map(|&id| backends.name(id).to_string())
            .collect(),
    })
}

/// A human explanation of where `jid` (from `ip`) lands and why, for `xmpp-lb route`. The
/// first line is the backend name alone, so scripts can read it.
pub fn explain(rt: &Runtime, jid: &str, ip: Option<IpAddr>) -> Result<String, String> {
    let info = route_info(rt, jid, ip)?;
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
