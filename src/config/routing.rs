//! `[routing]` and `[[domain]]`: the served domains, and for each its backends, routing keys,
//! tenant pattern, bounded-load factor and link settings; the pins. The rules a list of keys
//! must follow belong to [`crate::route::policy`], which applies them here and again when a
//! policy is built.

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;

use regex::Regex;
use toml::Spanned;

use super::backends::{BackendConfig, LinkOverrides, RawLink};
use super::groups::BackendGroupConfig;
use super::raw::{RawDomain, RawRouting};
use super::source::{ConfigError, Source};
use crate::route::policy::{PinEntry, RouteKey};
use crate::route::policy::{check_ipv4_prefix, check_ipv6_prefix, check_keys, compile_tenant};

/// Routing settings.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Default routing keys, in fallback order.
    pub keys: Vec<RouteKey>,
    /// The XMPP domains served (normalized); any other `to` gets `<host-unknown/>`.
    pub domains: Vec<String>,
    /// Default tenant pattern, compiled.
    pub tenant_pattern: Option<Regex>,
    /// Default bounded-load factor.
    pub balance_factor: Option<f64>,
    /// Pin file (reloaded with the configuration).
    pub pins_file: Option<PathBuf>,
    /// Pins written inline.
    pub pins: Vec<PinEntry>,
    /// Prefix length of an IPv4 subnet group.
    pub ipv4_prefix: u8,
    /// Prefix length of an IPv6 subnet group.
    pub ipv6_prefix: u8,
}

/// The routing policy of one served domain.
#[derive(Clone, Debug)]
pub struct DomainConfig {
    /// The domain (normalized).
    pub name: String,
    /// Names of the backends serving it (all backends unless restricted).
    pub backends: Vec<String>,
    /// Routing keys in fallback order.
    pub keys: Vec<RouteKey>,
    /// Regular expression with a `tenant` group over the localpart, for the `tenant` key;
    /// compiled once, here, and used as it is by the domain's policy.
    pub tenant_pattern: Option<Regex>,
    /// Bounded-load factor (> 1.0): no node takes more than this times the average load.
    pub balance_factor: Option<f64>,
    /// How its backends are reached, unless a backend says otherwise.
    pub link: LinkOverrides,
}

/// The domains `[routing] domains` lists (normalized, each once), and the subnet prefixes.
pub(super) fn validate_served_domains(
    src: &Source<'_>,
    r: &RawRouting,
    has_domain_tables: bool,
) -> Result<Vec<String>, ConfigError> {
    let mut domains = Vec::new();
    if r.domains.get_ref().is_empty() && !has_domain_tables {
        return Err(src.err(
            &r.domains.span(),
            "routing.domains",
            "list at least one domain".into(),
        ));
    }
    for d in r.domains.get_ref() {
        let norm = crate::route::key::normalize_domain(d.get_ref()).ok_or_else(|| {
            src.err(
                &d.span(),
                "routing.domains",
                format!("{:?} is not a valid domain", d.get_ref()),
            )
        })?;
        if domains.contains(&norm) {
            return Err(src.err(
                &d.span(),
                "routing.domains",
                format!("{norm} is listed twice"),
            ));
        }
        domains.push(norm);
    }
    check_ipv4_prefix(*r.ipv4_prefix.get_ref())
        .map_err(|m| src.err(&r.ipv4_prefix.span(), "routing.ipv4_prefix", m))?;
    check_ipv6_prefix(*r.ipv6_prefix.get_ref())
        .map_err(|m| src.err(&r.ipv6_prefix.span(), "routing.ipv6_prefix", m))?;
    Ok(domains)
}

/// The default routing policy in `[routing]`, the pins, and each `[[domain]]` over the
/// defaults: the checked routing settings and one policy per served domain.
pub(super) fn validate_routing(
    src: &Source<'_>,
    routing: &Spanned<RawRouting>,
    raw_domains: &[RawDomain],
    mut domains: Vec<String>,
    backends: &[BackendConfig],
    groups: &[BackendGroupConfig],
) -> Result<(RoutingConfig, Vec<DomainConfig>), ConfigError> {
    // Pins name nodes; a domain's list may also name a group (expanded at run time).
    let pin_names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
    let names: Vec<String> = pin_names
        .iter()
        .cloned()
        .chain(groups.iter().map(|g| g.name.clone()))
        .collect();
    let r = routing.get_ref();
    let routing_span = routing.span();
    let default_keys = keys_of(&r.key, &r.keys, "routing", &routing_span, true)
        .map_err(|(span, key, msg)| src.err(&span, &key, msg))?
        .unwrap_or_default();
    let default_tenant = match &r.tenant_pattern {
        Some(p) => {
            Some(check_tenant(p).map_err(|m| src.err(&p.span(), "routing.tenant_pattern", m))?)
        }
        None => None,
    };
    check_keys(&default_keys, default_tenant.is_some())
        .map_err(|m| src.err(&routing_span, "routing.keys", m))?;
    let default_factor = match &r.balance_factor {
        Some(f) => {
            Some(check_factor(f).map_err(|m| src.err(&f.span(), "routing.balance_factor", m))?)
        }
        None => None,
    };
    let pins_file = match &r.pins {
        Some(p) => Some(src.resolve(p, "routing.pins")?),
        None => None,
    };
    let mut pins = Vec::new();
    for (i, pin) in r.pin.iter().enumerate() {
        let entry = pin.get_ref();
        if entry.pattern.trim().is_empty() || !pin_names.contains(&entry.backend) {
            return Err(src.err(
                &pin.span(),
                &format!("routing.pin[{i}]"),
                format!(
                    "pin {:?} must name a pattern and one of the backends ({})",
                    entry.pattern,
                    names.join(", ")
                ),
            ));
        }
        pins.push(entry.clone());
    }

    let mut domain_configs: Vec<DomainConfig> = domains
        .iter()
        .map(|d| DomainConfig {
            name: d.clone(),
            backends: names.clone(),
            keys: default_keys.clone(),
            tenant_pattern: default_tenant.clone(),
            balance_factor: default_factor,
            link: LinkOverrides::default(),
        })
        .collect();
    let mut seen_tables = HashSet::new();
    for (i, d) in raw_domains.iter().enumerate() {
        let key = |k: &str| format!("domain[{i}].{k}");
        let name = crate::route::key::normalize_domain(d.name.get_ref()).ok_or_else(|| {
            src.err(
                &d.name.span(),
                &key("name"),
                format!("{:?} is not a valid domain", d.name.get_ref()),
            )
        })?;
        if !seen_tables.insert(name.clone()) {
            return Err(src.err(
                &d.name.span(),
                &key("name"),
                format!("[[domain]] {name} is defined twice"),
            ));
        }
        let link = RawLink {
            proxy_protocol: d.proxy_protocol,
            tls: d.backend_tls,
            server_name: d.tls_server_name.as_ref(),
            ca: d.tls_ca.as_ref(),
            verify: d.tls_verify,
            channel_binding: d.channel_binding,
        }
        .check(src, &key(""))?;
        let mut dc = DomainConfig {
            name: name.clone(),
            backends: names.clone(),
            keys: default_keys.clone(),
            tenant_pattern: default_tenant.clone(),
            balance_factor: default_factor,
            link,
        };
        if let Some(list) = &d.backends {
            let mut chosen = Vec::new();
            for b in list.get_ref() {
                if !names.contains(b.get_ref()) {
                    return Err(src.err(
                        &b.span(),
                        &key("backends"),
                        format!("no backend or backend_group named {:?}", b.get_ref()),
                    ));
                }
                if !chosen.contains(b.get_ref()) {
                    chosen.push(b.get_ref().clone());
                }
            }
            if chosen.is_empty() {
                return Err(src.err(
                    &list.span(),
                    &key("backends"),
                    "list at least one backend".into(),
                ));
            }
            dc.backends = chosen;
        }
        if let Some(p) = &d.tenant_pattern {
            dc.tenant_pattern =
                Some(check_tenant(p).map_err(|m| src.err(&p.span(), &key("tenant_pattern"), m))?);
        }
        if let Some(f) = &d.balance_factor {
            dc.balance_factor =
                Some(check_factor(f).map_err(|m| src.err(&f.span(), &key("balance_factor"), m))?);
        }
        let table = format!("domain[{i}]");
        if let Some(keys) = keys_of(&d.key, &d.keys, &table, &d.name.span(), false)
            .map_err(|(span, k, msg)| src.err(&span, &k, msg))?
        {
            dc.keys = keys;
        }
        if dc.keys.is_empty() {
            return Err(src.err(
                &d.name.span(),
                &key("keys"),
                "set `key` or `keys` here or in [routing]".into(),
            ));
        }
        check_keys(&dc.keys, dc.tenant_pattern.is_some())
            .map_err(|m| src.err(&d.name.span(), &key("keys"), m))?;
        match domain_configs.iter_mut().find(|c| c.name == name) {
            Some(existing) => *existing = dc,
            None => {
                domains.push(name);
                domain_configs.push(dc);
            }
        }
    }
    if domain_configs.iter().any(|d| d.keys.is_empty()) {
        return Err(src.err(
            &routing_span,
            "routing.key",
            "set `key` (or `keys`) in [routing]".into(),
        ));
    }
    let routing = RoutingConfig {
        keys: default_keys,
        domains,
        tenant_pattern: default_tenant,
        balance_factor: default_factor,
        pins_file,
        pins,
        ipv4_prefix: *r.ipv4_prefix.get_ref(),
        ipv6_prefix: *r.ipv6_prefix.get_ref(),
    };
    Ok((routing, domain_configs))
}

/// An error not yet placed in the file: its span, key and message.
type SpannedError = (Range<usize>, String, String);

/// `key = "x"` or `keys = ["x", "y"]` of a table (not both). `None` when neither is set.
fn keys_of(
    key: &Option<Spanned<RouteKey>>,
    keys: &Option<Spanned<Vec<RouteKey>>>,
    table: &str,
    table_span: &Range<usize>,
    required: bool,
) -> Result<Option<Vec<RouteKey>>, SpannedError> {
    match (key, keys) {
        (Some(_), Some(k)) => Err((
            k.span(),
            format!("{table}.keys"),
            "set `key` or `keys`, not both".into(),
        )),
        (Some(k), None) => Ok(Some(vec![*k.get_ref()])),
        (None, Some(k)) => Ok(Some(k.get_ref().clone())),
        (None, None) if required => Err((
            table_span.clone(),
            format!("{table}.key"),
            "set `key` (or `keys`)".into(),
        )),
        (None, None) => Ok(None),
    }
}

/// A tenant pattern, compiled once: the policies of its domains use this very regex.
fn check_tenant(p: &Spanned<String>) -> Result<Regex, String> {
    compile_tenant(p.get_ref())
}

/// A bounded-load factor: a finite number above 1.0.
fn check_factor(f: &Spanned<f64>) -> Result<f64, String> {
    let f = *f.get_ref();
    if f.is_finite() && f > 1.0 {
        Ok(f)
    } else {
        Err("must be a number above 1.0 (e.g. 1.25)".into())
    }
}
