//! Pins: a table of exact JIDs, tenants and globs that send users to a named backend,
//! written inline (`[[routing.pin]]`) or in a pin file (read by `config::parse_pin_file`).

use std::collections::HashMap;

use serde::Deserialize;
use wildmatch::WildMatch;

use crate::route::key::{normalize_bare_jid, normalize_domain};

/// One pin as written in config (inline `[[routing.pin]]`) or in a pin file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinEntry {
    /// An exact bare JID, a glob over the bare JID (`*`, `?`), or `tenant:NAME`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The backend name the matching users are sent to.
    pub backend: String,
}

/// What a pin pattern means once checked, with its normalized text.
///
/// Patterns are normalized as the JIDs they are compared with are, so a pin written as
/// `Juliet@Example.TEST` still matches the account the server calls `juliet@example.test`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PinPattern {
    /// A normalized bare JID.
    Exact(String),
    /// A tenant name (Nodeprep, as it is cut from a normalized localpart).
    Tenant(String),
    /// A normalized glob over the bare JID.
    Glob(String),
}

/// The prefix of a tenant pin. `:` is prohibited in localparts, so no JID can be mistaken
/// for it.
const TENANT_PREFIX: &str = "tenant:";

impl PinPattern {
    /// Classify and normalize a pattern; the error says what is wrong with it.
    pub(crate) fn parse(pattern: &str) -> Result<PinPattern, String> {
        if pattern.trim().is_empty() {
            return Err("the pattern is empty".into());
        }
        if let Some(name) = pattern.strip_prefix(TENANT_PREFIX) {
            return Self::tenant(name);
        }
        if pattern.contains('/') {
            // normalize_bare_jid would silently drop a resource; a pin written with one is
            // a misunderstanding (pins apply to the account, every resource alike).
            return Err("pins match bare JIDs: remove the resource (`/…`)".into());
        }
        Self::foreign_glob_syntax(pattern)?;
        if pattern.contains(['*', '?']) {
            return Self::glob(pattern);
        }
        normalize_bare_jid(pattern)
            .map(PinPattern::Exact)
            .ok_or_else(|| {
                "not a valid bare JID (write user@domain, a glob with `*`/`?`, or tenant:NAME)"
                    .into()
            })
    }

    /// Only `*` and `?` are wildcards. Brackets and braces are legal in a localpart, but in a
    /// pin they are far likelier an attempt at a character class or alternatives (from shell
    /// or gitignore globs) than a real account, and taking them literally would make the pin
    /// silently match nobody. Brackets stay allowed around an IP-literal domain. A backslash
    /// is literal (XEP-0106 escapes such as `\20` are part of real localparts).
    fn foreign_glob_syntax(pattern: &str) -> Result<(), String> {
        if pattern.contains(['{', '}']) {
            return Err(
                "bad glob: only `*` and `?` are wildcards (no `{a,b}` alternatives)".into(),
            );
        }
        let (local, domain) = pattern.split_once('@').unwrap_or((pattern, ""));
        let ip_literal = domain.starts_with('[') && domain.ends_with(']');
        let domain_inner = if ip_literal {
            &domain[1..domain.len() - 1]
        } else {
            domain
        };
        if local.contains(['[', ']']) || domain_inner.contains(['[', ']']) {
            return Err(
                "bad glob: only `*` and `?` are wildcards (no `[...]` character classes; \
                 `?` stands for one character)"
                    .into(),
            );
        }
        Ok(())
    }

    fn tenant(name: &str) -> Result<PinPattern, String> {
        if name.is_empty() {
            return Err("`tenant:` needs a tenant name".into());
        }
        if name.contains(['*', '?']) {
            return Err("a tenant pin names one tenant: wildcards are not supported".into());
        }
        match stringprep::nodeprep(name) {
            Ok(n) if !n.is_empty() => Ok(PinPattern::Tenant(n.into_owned())),
            _ => Err(format!(
                "{name:?} is not a tenant name (tenants are parts of a localpart)"
            )),
        }
    }

    /// Normalize a glob part by part, so its literal text is spelled as in a normalized JID.
    /// A bare JID has exactly one `@`, so a glob with more can never match.
    fn glob(pattern: &str) -> Result<PinPattern, String> {
        if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("bad glob: spaces and control characters never occur in a JID".into());
        }
        let normalized = match pattern.split_once('@') {
            Some((_, domain)) if domain.contains('@') => {
                return Err("bad glob: a bare JID has only one `@`".into());
            }
            Some((local, domain)) => {
                if local.is_empty() || domain.is_empty() {
                    return Err("bad glob: write LOCAL@DOMAIN, each part non-empty".into());
                }
                let local = stringprep::nodeprep(local)
                    .map_err(|_| "bad glob: the localpart has characters no JID can have")?;
                let domain = normalize_domain(domain)
                    .ok_or("bad glob: the domain has characters no JID can have")?;
                format!("{local}@{domain}")
            }
            None => {
                // No `@`: the glob spans both parts. Nameprep maps as Nodeprep does (case
                // folding, NFKC); only their lists of prohibited characters differ.
                stringprep::nameprep(pattern)
                    .map_err(|_| "bad glob: it has characters no JID can have")?
                    .to_lowercase()
            }
        };
        Ok(PinPattern::Glob(normalized))
    }
}

/// A pin that matched: where the user goes, and which line of the table sent them there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PinMatch {
    /// The backend name.
    pub backend: String,
    /// The pattern that matched, as the operator wrote it (so it can be found in the file).
    pub rule: String,
    /// `"jid"`, `"tenant"` or `"glob"`.
    pub kind: &'static str,
}

/// A pin target: the backend, and the pattern as written.
#[derive(Debug)]
struct PinTarget {
    backend: String,
    written: String,
}

/// The checked pin table, shared by every domain's policy.
///
/// Exact JIDs and tenants are hashed, so a table of many thousands of device pins costs one
/// lookup each; globs are tried in table order, the first match winning.
#[derive(Debug)]
pub struct PinTable {
    exact: HashMap<String, PinTarget>,
    tenants: HashMap<String, PinTarget>,
    globs: Vec<(WildMatch, PinTarget)>,
}

impl PinTable {
    /// Check and index `entries`. Every backend must be one of `known_backends`: a pin to a
    /// node that does not exist would strand its users, so it is an error naming the pattern
    /// and the backend. A bad pattern is an error, and so is a pattern listed twice (after
    /// normalization): which of the two applied would depend on the order of the files.
    pub(crate) fn new(entries: &[PinEntry], known_backends: &[String]) -> Result<PinTable, String> {
        let mut table = PinTable {
            exact: HashMap::new(),
            tenants: HashMap::new(),
            globs: Vec::new(),
        };
        let mut seen_globs: HashMap<String, String> = HashMap::new();
        for entry in entries {
            let pattern = PinPattern::parse(&entry.pattern)
                .map_err(|m| format!("pin {:?}: {m}", entry.pattern))?;
            if !known_backends.contains(&entry.backend) {
                return Err(format!(
                    "pin {:?}: no backend named {:?} (backends: {})",
                    entry.pattern,
                    entry.backend,
                    known_backends.join(", ")
                ));
            }
            let target = PinTarget {
                backend: entry.backend.clone(),
                written: entry.pattern.clone(),
            };
            let twice = |first: &str| {
                format!(
                    "pin {:?} is listed twice (also as {first:?}): keep one",
                    entry.pattern
                )
            };
            match pattern {
                PinPattern::Exact(jid) => {
                    if let Some(first) = table.exact.get(&jid) {
                        return Err(twice(&first.written));
                    }
                    table.exact.insert(jid, target);
                }
                PinPattern::Tenant(name) => {
                    if let Some(first) = table.tenants.get(&name) {
                        return Err(twice(&first.written));
                    }
                    table.tenants.insert(name, target);
                }
                PinPattern::Glob(glob) => {
                    if let Some(first) = seen_globs.get(&glob) {
                        return Err(twice(first));
                    }
                    seen_globs.insert(glob.clone(), entry.pattern.clone());
                    table.globs.push((WildMatch::new(&glob), target));
                }
            }
        }
        Ok(table)
    }

    /// The pin of a normalized bare JID whose tenant (by its domain's pattern) is `tenant`.
    /// Precedence goes from the most to the least specific: the exact JID, then the tenant,
    /// then the globs in table order.
    pub(crate) fn lookup(&self, bare_jid: &str, tenant: Option<&str>) -> Option<PinMatch> {
        let found = |t: &PinTarget, kind| PinMatch {
            backend: t.backend.clone(),
            rule: t.written.clone(),
            kind,
        };
        if let Some(t) = self.exact.get(bare_jid) {
            return Some(found(t, "jid"));
        }
        if let Some(t) = tenant.and_then(|name| self.tenants.get(name)) {
            return Some(found(t, "tenant"));
        }
        self.globs
            .iter()
            .find(|(glob, _)| glob.matches(bare_jid))
            .map(|(_, t)| found(t, "glob"))
    }

    /// The number of pins.
    pub fn len(&self) -> usize {
        self.exact.len() + self.tenants.len() + self.globs.len()
    }

    /// Whether there are no pins.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
