//! Which routing key applies to a connection, in the order the operator configured.
//!
//! One key rarely fits every client of a domain: devices of a customer belong together
//! (`tenant`), a few accounts must live on a given node (`pin`), anonymous logins have no
//! account to hash (`random`, `subnet`). So a domain lists keys as a fallback chain, e.g.
//! `keys = ["pin", "jid", "subnet"]`, and [`Policy::decide`] takes the first that yields a
//! placement for what is known about the connection.
//!
//! The ring keys of `jid`, `domain` and `subnet` are exactly the strings used before policies
//! existed (the bare JID, the domain, [`subnet_key`]), so turning a single `key` into a chain
//! starting with the same key moves nobody.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;

use crate::route::KeySource;
use crate::route::key::subnet_key;

mod pins;

pub(crate) use pins::PinPattern;
pub use pins::{PinEntry, PinTable};

/// One routing key kind, as written in `keys = [...]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKey {
    /// A static pin table names the backend of a JID, a JID glob or a tenant.
    Pin,
    /// Consistent hash of the normalized bare JID.
    Jid,
    /// Consistent hash of the domain: every user of a domain on one node.
    Domain,
    /// Consistent hash of a tenant extracted from the localpart by a regular expression.
    Tenant,
    /// Consistent hash of the client's IPv4/IPv6 subnet.
    Subnet,
    /// Any node, uniformly at random (ANONYMOUS logins, in-band registration).
    Random,
}

impl RouteKey {
    /// The name as written in the configuration (also a metric label and a log field).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKey::Pin => "pin",
            RouteKey::Jid => "jid",
            RouteKey::Domain => "domain",
            RouteKey::Tenant => "tenant",
            RouteKey::Subnet => "subnet",
            RouteKey::Random => "random",
        }
    }

    /// Whether the key needs the user's JID. Before the JID is known (a stream header without
    /// `from`) such a key can only be decided after SASL; the others apply at once.
    pub fn needs_identity(self) -> bool {
        matches!(self, RouteKey::Pin | RouteKey::Jid | RouteKey::Tenant)
    }

    /// Keys that apply to every connection: anything listed after one is dead configuration.
    fn always_applies(self) -> bool {
        matches!(self, RouteKey::Domain | RouteKey::Subnet | RouteKey::Random)
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rules of a fallback order, checked by the configuration (to point at the file) and by
/// [`Policy::new`]: at least one key, none listed twice, `tenant` only with a tenant pattern,
/// and nothing after a key that always applies (`domain`, `subnet`, `random`): it could never
/// be reached, which is surely not what the operator meant.
pub(crate) fn check_keys(keys: &[RouteKey], has_tenant_pattern: bool) -> Result<(), String> {
    if keys.is_empty() {
        return Err("list at least one routing key".into());
    }
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].contains(k) {
            return Err(format!("`{k}` is listed twice in keys"));
        }
        if *k == RouteKey::Tenant && !has_tenant_pattern {
            return Err("the `tenant` key needs a tenant pattern (`tenant_pattern`)".into());
        }
        if k.always_applies() && i + 1 < keys.len() {
            let dead: Vec<String> = keys[i + 1..].iter().map(|d| format!("`{d}`")).collect();
            return Err(format!(
                "`{k}` always applies, so {} after it can never be used: remove {} or \
                 move `{k}` to the end",
                dead.join(", "),
                if dead.len() == 1 { "it" } else { "them" },
            ));
        }
    }
    Ok(())
}

/// The prefix length of an IPv4 subnet key: 0..=32.
pub(crate) fn check_ipv4_prefix(prefix: u8) -> Result<(), String> {
    if prefix > 32 {
        return Err("must be 0..=32".into());
    }
    Ok(())
}

/// The prefix length of an IPv6 subnet key: 0..=128.
pub(crate) fn check_ipv6_prefix(prefix: u8) -> Result<(), String> {
    if prefix > 128 {
        return Err("must be 0..=128".into());
    }
    Ok(())
}

/// Compile a tenant pattern; error if it does not compile or has no named group `tenant`.
///
/// The pattern is matched against the normalized localpart (lowercase, NFKC), unanchored
/// unless it anchors itself: write `^(?<tenant>[a-z0-9]+)-` for "the part before the first
/// dash".
pub(crate) fn compile_tenant(pattern: &str) -> Result<Regex, String> {
    let re = Regex::new(pattern).map_err(|e| format!("invalid regular expression: {e}"))?;
    if !has_tenant_group(&re) {
        return Err("the pattern has no named group `tenant`, e.g. ^(?<tenant>[a-z0-9]+)-".into());
    }
    Ok(re)
}

fn has_tenant_group(re: &Regex) -> bool {
    re.capture_names().flatten().any(|n| n == "tenant")
}

/// The tenant of a normalized bare JID: the `tenant` group of `re` over the localpart.
/// `None` when the pattern does not match or the group is empty or did not take part, so a
/// user the pattern does not describe falls through to the next key instead of being lumped
/// with everyone else under an empty tenant.
fn tenant_of<'j>(re: &Regex, bare_jid: &'j str) -> Option<&'j str> {
    let (local, _) = bare_jid.split_once('@')?;
    let t = re.captures(local)?.name("tenant")?.as_str();
    (!t.is_empty()).then_some(t)
}

/// What a domain's [`Policy`] is built from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PolicySpec<'a> {
    /// The keys, in fallback order.
    pub keys: &'a [RouteKey],
    /// The domain's tenant pattern (from [`compile_tenant`]), for `tenant` keys and pins.
    pub tenant: Option<&'a Regex>,
    /// Prefix length of an IPv4 subnet (0..=32).
    pub ipv4_prefix: u8,
    /// Prefix length of an IPv6 subnet (0..=128).
    pub ipv6_prefix: u8,
}

/// A domain's routing policy: keys in fallback order, ready to decide.
#[derive(Debug)]
pub struct Policy {
    keys: Vec<RouteKey>,
    tenant: Option<Regex>,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    pins: Arc<PinTable>,
}

/// What is known about the connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Who<'a> {
    /// The normalized bare JID, once known (stream header `from`, or SASL).
    pub jid: Option<&'a str>,
    /// The normalized domain the client asked for.
    pub domain: &'a str,
    /// The client's address.
    pub ip: IpAddr,
    /// False at stream header time: a `from` there names the user, and without one SASL may
    /// still tell us the JID. True once the client's first SASL message was read: whatever it
    /// named (or nothing) is final.
    pub identity_final: bool,
}

/// Where a connection goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// A named backend (strict: a pinned user never moves).
    Pinned(String),
    /// The node the ring gives this key.
    Ring(String),
    /// Any node of the domain.
    Random,
    /// The node a verified stream-management id names (it holds the session being resumed),
    /// then wherever the policy would have sent the client, should that node be down or gone.
    Resume {
        /// The node holding the session.
        node: String,
        /// The policy's own placement.
        otherwise: Box<Placement>,
    },
}

impl Decision {
    /// This decision, sending the client first to `node`, which holds the session it resumes.
    pub(crate) fn resuming_on(self, node: String) -> Decision {
        let otherwise = Box::new(match self.placement {
            Placement::Resume { otherwise, .. } => *otherwise,
            other => other,
        });
        Decision {
            rule: format!("resume on {node}, else {}", self.rule),
            placement: Placement::Resume { node, otherwise },
            source: KeySource::Resume,
            ..self
        }
    }
}

/// The outcome of [`Policy::decide`], with enough to explain it (`xmpp-lb route`, logs).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The key that applied.
    pub key: RouteKey,
    /// Where the connection goes.
    pub placement: Placement,
    /// For a person: which rule applied, e.g. "pin sensor-*@iot.example", "tenant acme".
    pub rule: String,
    /// Keys tried before, and why each did not apply.
    pub skipped: Vec<(RouteKey, &'static str)>,
    /// Where the key came from (a metric label and a log field): which key applied, and for
    /// `jid` whether the JID was the stream header's `from` or the SASL username.
    pub source: KeySource,
}

/// Why a key was skipped: the user is not known (ANONYMOUS, registration).
const NO_IDENTITY: &str = "no identity";
/// Why `pin` was skipped.
const NO_PIN: &str = "no pin matches";
/// Why `tenant` was skipped.
const NO_TENANT: &str = "tenant pattern does not match";

impl Policy {
    /// Check the keys ([`check_keys`]), the tenant pattern's `tenant` group and the prefix
    /// lengths, and build the policy.
    pub(crate) fn new(spec: PolicySpec<'_>, pins: Arc<PinTable>) -> Result<Policy, String> {
        let keys = spec.keys;
        check_keys(keys, spec.tenant.is_some())?;
        if let Some(re) = spec.tenant
            && !has_tenant_group(re)
        {
            return Err("the tenant pattern has no named group `tenant`".into());
        }
        check_ipv4_prefix(spec.ipv4_prefix)
            .map_err(|m| format!("IPv4 prefix /{}: {m}", spec.ipv4_prefix))?;
        check_ipv6_prefix(spec.ipv6_prefix)
            .map_err(|m| format!("IPv6 prefix /{}: {m}", spec.ipv6_prefix))?;
        Ok(Policy {
            keys: keys.to_vec(),
            tenant: spec.tenant.cloned(),
            ipv4_prefix: spec.ipv4_prefix,
            ipv6_prefix: spec.ipv6_prefix,
            pins,
        })
    }

    /// The keys, in fallback order.
    pub(crate) fn keys(&self) -> &[RouteKey] {
        &self.keys
    }

    /// Walk the keys in order and take the first that yields a placement.
    ///
    /// `None`: the first applicable key needs the identity and it is not known yet
    /// (`identity_final` false) — wait for SASL. Deciding on a later key instead would send
    /// the user somewhere else than where they land once they announce themselves.
    ///
    /// Once the identity is final this always decides: if no key applies (say `keys =
    /// ["jid"]` and an ANONYMOUS login) the client's subnet is used, so the connection still
    /// lands somewhere stable.
    pub(crate) fn decide(&self, who: &Who<'_>) -> Option<Decision> {
        let mut skipped = Vec::new();
        for &key in &self.keys {
            let attempt = match key {
                RouteKey::Pin | RouteKey::Jid | RouteKey::Tenant => {
                    let Some(jid) = who.jid else {
                        if !who.identity_final {
                            return None;
                        }
                        skipped.push((key, NO_IDENTITY));
                        continue;
                    };
                    self.by_identity(key, jid, who.domain)
                }
                RouteKey::Domain => Ok((
                    Placement::Ring(who.domain.to_string()),
                    "consistent hash of the domain".to_string(),
                )),
                RouteKey::Subnet => {
                    let subnet = self.subnet(who.ip);
                    let rule = format!("consistent hash of the client subnet {subnet}");
                    Ok((Placement::Ring(subnet), rule))
                }
                RouteKey::Random => Ok((Placement::Random, "random node".to_string())),
            };
            match attempt {
                Ok((placement, rule)) => {
                    return Some(Decision {
                        key,
                        placement,
                        rule,
                        skipped,
                        source: source_of(key, who),
                    });
                }
                Err(why) => skipped.push((key, why)),
            }
        }
        Some(Decision {
            key: RouteKey::Subnet,
            placement: Placement::Ring(self.subnet(who.ip)),
            rule: "fallback: no configured key applies".into(),
            skipped,
            source: KeySource::Fallback,
        })
    }

    /// The placement by an identity key (`pin`, `jid`, `tenant`) of a known JID, or why the
    /// key does not apply to it.
    fn by_identity(
        &self,
        key: RouteKey,
        jid: &str,
        domain: &str,
    ) -> Result<(Placement, String), &'static str> {
        let tenant = self.tenant.as_ref().and_then(|re| tenant_of(re, jid));
        match key {
            RouteKey::Pin => self
                .pins
                .lookup(jid, tenant)
                .map(|m| (Placement::Pinned(m.backend), format!("pin {}", m.rule)))
                .ok_or(NO_PIN),
            RouteKey::Tenant => tenant
                .map(|t| {
                    // `:` cannot occur in a localpart, so this never equals a `jid` key.
                    let ring = format!("tenant:{t}@{domain}");
                    (Placement::Ring(ring), format!("tenant {t}"))
                })
                .ok_or(NO_TENANT),
            _ => Ok((
                Placement::Ring(jid.to_string()),
                "consistent hash of the bare JID".to_string(),
            )),
        }
    }

    fn subnet(&self, ip: IpAddr) -> String {
        subnet_key(ip, self.ipv4_prefix, self.ipv6_prefix)
    }
}

/// The source of a key that applied to `who`.
fn source_of(key: RouteKey, who: &Who<'_>) -> KeySource {
    match key {
        RouteKey::Jid if who.identity_final => KeySource::Sasl,
        RouteKey::Jid => KeySource::From,
        RouteKey::Pin => KeySource::Pin,
        RouteKey::Tenant => KeySource::Tenant,
        RouteKey::Domain => KeySource::Domain,
        RouteKey::Subnet => KeySource::Subnet,
        RouteKey::Random => KeySource::Random,
    }
}

#[cfg(test)]
mod tests;
