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

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;
use wildmatch::WildMatch;

use crate::route::key::{normalize_bare_jid, normalize_domain, subnet_key};

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
enum PinPattern {
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
    fn parse(pattern: &str) -> Result<PinPattern, String> {
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
pub struct PinMatch {
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
    pub fn new(entries: &[PinEntry], known_backends: &[String]) -> Result<PinTable, String> {
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
    pub fn lookup(&self, bare_jid: &str, tenant: Option<&str>) -> Option<PinMatch> {
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

/// A pin file error, at a line of the file, under a key like `pin[3].backend`.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {key}: {message}")]
pub struct PinFileError {
    /// 1-based line number.
    pub line: usize,
    /// The key the error is about (`pin[0].match`), or `-` when none is known.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A pin file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPinFile {
    #[serde(default)]
    pin: Vec<RawPin>,
}

/// One `[[pin]]`, with spans so a checked-but-wrong value can be reported at its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    #[serde(rename = "match")]
    pattern: Spanned<String>,
    backend: Spanned<String>,
}

/// A pin file: `[[pin]]` tables with `match` and `backend`, nothing else (deny unknown keys).
///
/// Everything that can be checked without the list of backends is checked here, where the
/// error can name its line: patterns, empty backends, patterns listed twice. Backends are
/// checked by [`PinTable::new`].
pub fn parse_pin_file(text: &str) -> Result<Vec<PinEntry>, PinFileError> {
    let raw: RawPinFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        PinFileError {
            line: line_of(text, span.start),
            key: pin_key(text, &span, &message),
            message,
        }
    })?;
    let err = |span: Range<usize>, key: String, message: String| PinFileError {
        line: line_of(text, span.start),
        key,
        message,
    };
    let mut first_seen: HashMap<PinPattern, (usize, String)> = HashMap::new();
    let mut entries = Vec::with_capacity(raw.pin.len());
    for (i, pin) in raw.pin.into_iter().enumerate() {
        let (pattern_span, written) = (pin.pattern.span(), pin.pattern.into_inner());
        let (backend_span, backend) = (pin.backend.span(), pin.backend.into_inner());
        let pattern = PinPattern::parse(&written)
            .map_err(|m| err(pattern_span.clone(), format!("pin[{i}].match"), m))?;
        let line = line_of(text, pattern_span.start);
        if let Some((first, as_written)) = first_seen.insert(pattern, (line, written.clone())) {
            let spelled = if as_written == written {
                String::new()
            } else {
                format!(" as {as_written:?}")
            };
            return Err(err(
                pattern_span,
                format!("pin[{i}].match"),
                format!("{written:?} is already pinned on line {first}{spelled}"),
            ));
        }
        if backend.trim().is_empty() {
            return Err(err(
                backend_span,
                format!("pin[{i}].backend"),
                "name a backend".into(),
            ));
        }
        entries.push(PinEntry {
            pattern: written,
            backend,
        });
    }
    Ok(entries)
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key a parser error is about, in the form the checks use (`pin[2].backend`): the
/// `[[pin]]` table around the error (counted by header lines, which is enough for a file of
/// one array of tables), then the key on the error's line or the field serde names.
fn pin_key(text: &str, span: &Range<usize>, message: &str) -> String {
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split_once('`'))
        .map(|(f, _)| f.to_string());
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let is_header = line.starts_with('[');
    let is_pin_header = |l: &str| {
        l.strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .is_some_and(|(name, _)| name.trim() == "pin")
    };
    // Headers through the error's line when the error is on a `[[pin]]` header (a missing
    // field is reported there), else those before it.
    let upto = if is_header {
        line_start + line.len()
    } else {
        line_start
    };
    let mut table = None;
    let mut pins = 0;
    for l in text[..upto.min(text.len())].lines().map(str::trim) {
        if is_pin_header(l) {
            table = Some(format!("pin[{pins}]"));
            pins += 1;
        } else if l.starts_with('[') {
            table = None;
        }
    }
    if is_header && !is_pin_header(line) {
        // An unknown table: serde names it as a field of the top level.
        return field.unwrap_or_else(|| "-".into());
    }
    let mut parts: Vec<String> = table.into_iter().collect();
    match (field, line.find('=').filter(|_| !is_header)) {
        (Some(f), _) => parts.push(f),
        (None, Some(eq)) => {
            let k = line[..eq].trim();
            if !k.is_empty() {
                parts.push(k.trim_matches('"').to_string());
            }
        }
        (None, None) => {}
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(".")
    }
}

/// Compile a tenant pattern; error if it does not compile or has no named group `tenant`.
///
/// The pattern is matched against the normalized localpart (lowercase, NFKC), unanchored
/// unless it anchors itself: write `^(?<tenant>[a-z0-9]+)-` for "the part before the first
/// dash".
pub fn compile_tenant(pattern: &str) -> Result<Regex, String> {
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
pub struct PolicySpec<'a> {
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
pub struct Who<'a> {
    /// The normalized bare JID, once known (stream header `from`, or SASL).
    pub jid: Option<&'a str>,
    /// The normalized domain the client asked for.
    pub domain: &'a str,
    /// The client's address.
    pub ip: IpAddr,
    /// False at stream header time without `from`: SASL may still tell us the JID.
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
    pub fn resuming_on(self, node: String) -> Decision {
        let otherwise = Box::new(match self.placement {
            Placement::Resume { otherwise, .. } => *otherwise,
            other => other,
        });
        Decision {
            rule: format!("resume on {node}, else {}", self.rule),
            placement: Placement::Resume { node, otherwise },
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
}

/// Why a key was skipped: the user is not known (ANONYMOUS, registration).
const NO_IDENTITY: &str = "no identity";
/// Why `pin` was skipped.
const NO_PIN: &str = "no pin matches";
/// Why `tenant` was skipped.
const NO_TENANT: &str = "tenant pattern does not match";

impl Policy {
    /// Check the keys and build the policy. Errors: no keys, a key listed twice, `tenant`
    /// without a tenant pattern (or a pattern without a `tenant` group), a prefix length out
    /// of range, and keys after one that always applies (`domain`, `subnet`, `random`): they
    /// could never be reached, which is surely not what the operator meant.
    pub fn new(spec: PolicySpec<'_>, pins: Arc<PinTable>) -> Result<Policy, String> {
        let keys = spec.keys;
        if keys.is_empty() {
            return Err("list at least one routing key".into());
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].contains(k) {
                return Err(format!("`{k}` is listed twice in keys"));
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
        match spec.tenant {
            None if keys.contains(&RouteKey::Tenant) => {
                return Err("the `tenant` key needs a tenant pattern".into());
            }
            Some(re) if !has_tenant_group(re) => {
                return Err("the tenant pattern has no named group `tenant`".into());
            }
            _ => {}
        }
        if spec.ipv4_prefix > 32 {
            return Err(format!("IPv4 prefix /{} is over 32", spec.ipv4_prefix));
        }
        if spec.ipv6_prefix > 128 {
            return Err(format!("IPv6 prefix /{} is over 128", spec.ipv6_prefix));
        }
        Ok(Policy {
            keys: keys.to_vec(),
            tenant: spec.tenant.cloned(),
            ipv4_prefix: spec.ipv4_prefix,
            ipv6_prefix: spec.ipv6_prefix,
            pins,
        })
    }

    /// The keys, in fallback order.
    pub fn keys(&self) -> &[RouteKey] {
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
    pub fn decide(&self, who: &Who<'_>) -> Option<Decision> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "^(?<tenant>[a-z0-9]+)-";

    fn backends() -> Vec<String> {
        ["node1", "node2", "node3"].map(String::from).to_vec()
    }

    fn pin(pattern: &str, backend: &str) -> PinEntry {
        PinEntry {
            pattern: pattern.into(),
            backend: backend.into(),
        }
    }

    fn table(entries: &[PinEntry]) -> PinTable {
        PinTable::new(entries, &backends()).unwrap()
    }

    fn policy(keys: &[RouteKey], tenant: Option<&str>, pins: &[PinEntry]) -> Policy {
        let re = tenant.map(|t| compile_tenant(t).unwrap());
        Policy::new(
            PolicySpec {
                keys,
                tenant: re.as_ref(),
                ipv4_prefix: 24,
                ipv6_prefix: 64,
            },
            Arc::new(table(pins)),
        )
        .unwrap()
    }

    fn policy_err(keys: &[RouteKey], tenant: Option<&Regex>) -> String {
        Policy::new(
            PolicySpec {
                keys,
                tenant,
                ipv4_prefix: 24,
                ipv6_prefix: 64,
            },
            Arc::new(table(&[])),
        )
        .unwrap_err()
    }

    fn ip() -> IpAddr {
        "192.0.2.77".parse().unwrap()
    }

    fn who(jid: Option<&str>, identity_final: bool) -> Who<'_> {
        Who {
            jid,
            domain: "iot.example",
            ip: ip(),
            identity_final,
        }
    }

    fn decide(p: &Policy, jid: Option<&str>, identity_final: bool) -> Option<Decision> {
        p.decide(&who(jid, identity_final))
    }

    fn ring(d: &Decision) -> &str {
        match &d.placement {
            Placement::Ring(k) => k,
            other => panic!("not a ring placement: {other:?}"),
        }
    }

    use RouteKey::*;

    #[test]
    fn route_key_names_and_identity() {
        for (k, name, identity) in [
            (Pin, "pin", true),
            (Jid, "jid", true),
            (Domain, "domain", false),
            (Tenant, "tenant", true),
            (Subnet, "subnet", false),
            (Random, "random", false),
        ] {
            assert_eq!(k.as_str(), name);
            assert_eq!(k.to_string(), name);
            assert_eq!(k.needs_identity(), identity, "{name}");
            #[derive(Deserialize)]
            struct K {
                k: RouteKey,
            }
            let parsed: K = toml::from_str(&format!("k = {name:?}")).unwrap();
            assert_eq!(parsed.k, k);
        }
    }

    #[test]
    fn pin_precedence_exact_then_tenant_then_globs_in_order() {
        let re = compile_tenant(TENANT).unwrap();
        let t = table(&[
            pin("*@iot.example", "node3"),
            pin("acme-*@iot.example", "node2"),
            pin("tenant:acme", "node2"),
            pin("acme-7@iot.example", "node1"),
        ]);
        assert_eq!(t.len(), 4);
        assert!(!t.is_empty());
        let look = |jid: &str| t.lookup(jid, tenant_of(&re, jid)).unwrap();

        // The exact JID beats the tenant and both globs, wherever it is in the table.
        let m = look("acme-7@iot.example");
        assert_eq!(
            m,
            PinMatch {
                backend: "node1".into(),
                rule: "acme-7@iot.example".into(),
                kind: "jid",
            }
        );
        // The tenant beats the globs.
        let m = look("acme-1@iot.example");
        assert_eq!((m.backend.as_str(), m.kind), ("node2", "tenant"));
        assert_eq!(m.rule, "tenant:acme");
        // Without a tenant, the first glob in table order wins, even over a narrower one.
        let m = t.lookup("acme-1@iot.example", None).unwrap();
        assert_eq!((m.backend.as_str(), m.kind), ("node3", "glob"));
        assert_eq!(m.rule, "*@iot.example");
        let m = look("globex-1@iot.example");
        assert_eq!((m.backend.as_str(), m.kind), ("node3", "glob"));
        assert_eq!(t.lookup("x@other.example", None), None);
    }

    #[test]
    fn pin_globs_and_no_match() {
        let t = table(&[
            pin("sensor-*@iot.example", "node1"),
            pin("cam-??@iot.example", "node2"),
            pin("*@*.lab.example", "node3"),
        ]);
        let backend = |jid: &str| t.lookup(jid, None).map(|m| m.backend);
        assert_eq!(backend("sensor-17@iot.example").as_deref(), Some("node1"));
        assert_eq!(backend("sensor-@iot.example").as_deref(), Some("node1"));
        assert_eq!(backend("cam-01@iot.example").as_deref(), Some("node2"));
        assert_eq!(backend("cam-001@iot.example"), None);
        assert_eq!(backend("x@a.lab.example").as_deref(), Some("node3"));
        assert_eq!(backend("sensor-1@iot.example.org"), None);
        assert_eq!(backend("juliet@iot.example"), None);
        // A tenant pin needs the tenant the domain's pattern extracted.
        let t = table(&[pin("tenant:acme", "node2")]);
        assert_eq!(t.lookup("acme-1@iot.example", None), None);
        assert_eq!(t.lookup("acme-1@iot.example", Some("globex")), None);
        assert!(t.lookup("acme-1@iot.example", Some("acme")).is_some());
    }

    #[test]
    fn pin_patterns_are_normalized_like_jids() {
        let t = table(&[
            pin("Juliet@Example.TEST", "node1"),
            pin("SENSOR-*@IoT.Example.", "node2"),
            pin("tenant:ACME", "node3"),
        ]);
        let m = t.lookup("juliet@example.test", None).unwrap();
        assert_eq!(
            (m.backend.as_str(), m.rule.as_str()),
            ("node1", "Juliet@Example.TEST")
        );
        assert_eq!(
            t.lookup("sensor-1@iot.example", None).unwrap().backend,
            "node2"
        );
        assert_eq!(t.lookup("x@y", Some("acme")).unwrap().backend, "node3");
    }

    #[test]
    fn pin_unknown_backend_is_an_error_naming_pattern_and_backend() {
        let e = PinTable::new(&[pin("sensor-*@iot.example", "node9")], &backends()).unwrap_err();
        assert!(e.contains("sensor-*@iot.example"), "{e}");
        assert!(e.contains("node9"), "{e}");
        assert!(e.contains("node1, node2, node3"), "{e}");
        let e = PinTable::new(&[pin("tenant:acme", "")], &backends()).unwrap_err();
        assert!(e.contains("tenant:acme"), "{e}");
    }

    #[test]
    fn bad_pin_patterns() {
        for (pattern, why) in [
            ("", "empty"),
            ("   ", "empty"),
            ("sensor-[0-9]*@iot.example", "character classes"),
            ("*@iot.[ab]xample", "character classes"),
            ("{a,b}*@iot.example", "alternatives"),
            ("sensor-[0-9]@iot.example", "character classes"),
            ("{acme,globex}-1@iot.example", "alternatives"),
            ("sensor *@iot.example", "spaces"),
            ("*@*@iot.example", "one `@`"),
            ("@iot.example*", "non-empty"),
            ("sensor-*@", "non-empty"),
            ("sens:or-*@iot.example", "localpart"),
            ("juliet@example.test/phone", "resource"),
            ("sensor-*/x", "resource"),
            ("juliet", "not a valid bare JID"),
            ("jul iet@example.test", "not a valid bare JID"),
            ("tenant:", "tenant name"),
            ("tenant:ac*", "wildcards"),
            ("tenant:a@b", "not a tenant name"),
        ] {
            let e = PinTable::new(&[pin(pattern, "node1")], &backends()).unwrap_err();
            assert!(e.contains(why), "{pattern:?}: {e}");
            assert!(e.contains(&format!("{pattern:?}")), "{pattern:?}: {e}");
        }
        // An IP-literal domain keeps its brackets.
        let t = table(&[
            pin("*@[2001:db8::*]", "node1"),
            pin("y@[2001:DB8::2]", "node2"),
        ]);
        assert_eq!(t.lookup("x@[2001:db8::1]", None).unwrap().kind, "glob");
        assert_eq!(t.lookup("y@[2001:db8::2]", None).unwrap().kind, "jid");
        // A backslash is literal: XEP-0106 escapes are part of real localparts.
        let t = table(&[
            pin(r"d\27artagnan@example.test", "node1"),
            pin(r"*\40*@example.test", "node2"),
        ]);
        assert_eq!(
            t.lookup(r"d\27artagnan@example.test", None).unwrap().kind,
            "jid"
        );
        assert_eq!(t.lookup(r"x\40y@example.test", None).unwrap().kind, "glob");
    }

    #[test]
    fn pin_listed_twice_is_an_error() {
        for (a, b) in [
            ("juliet@example.test", "Juliet@example.test"),
            ("tenant:acme", "tenant:ACME"),
            ("s-*@iot.example", "S-*@iot.example"),
        ] {
            let e = PinTable::new(&[pin(a, "node1"), pin(b, "node2")], &backends()).unwrap_err();
            assert!(e.contains("twice") && e.contains(a) && e.contains(b), "{e}");
        }
    }

    #[test]
    fn empty_pin_table() {
        let t = table(&[]);
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(t.lookup("juliet@example.test", Some("acme")), None);
    }

    #[test]
    fn tenant_capture() {
        let re = compile_tenant(TENANT).unwrap();
        assert_eq!(tenant_of(&re, "acme-1@iot.example"), Some("acme"));
        assert_eq!(tenant_of(&re, "acme-phone-2@iot.example"), Some("acme"));
        assert_eq!(tenant_of(&re, "juliet@iot.example"), None);
        // The pattern sees the localpart only.
        assert_eq!(tenant_of(&re, "juliet@acme-x.example"), None);
        assert_eq!(tenant_of(&re, "no-at-sign"), None);
        // An empty or absent group is no tenant.
        let re = compile_tenant("^(?<tenant>[a-z]*)-").unwrap();
        assert_eq!(tenant_of(&re, "-1@iot.example"), None);
        let re = compile_tenant("^(?:x|(?<tenant>[a-z]+))-").unwrap();
        assert_eq!(tenant_of(&re, "x-1@iot.example"), None);
        assert_eq!(tenant_of(&re, "acme-1@iot.example"), Some("acme"));
    }

    #[test]
    fn bad_tenant_patterns() {
        let e = compile_tenant("^(?<tenant>[a-z+-").unwrap_err();
        assert!(e.starts_with("invalid regular expression"), "{e}");
        let e = compile_tenant("^([a-z]+)-").unwrap_err();
        assert!(e.contains("no named group `tenant`"), "{e}");
        let e = compile_tenant("^(?<customer>[a-z]+)-").unwrap_err();
        assert!(e.contains("no named group `tenant`"), "{e}");
        // A regex compiled elsewhere without the group is refused by the policy too.
        let plain = Regex::new("^([a-z]+)-").unwrap();
        let e = policy_err(&[Tenant, Subnet], Some(&plain));
        assert!(e.contains("no named group `tenant`"), "{e}");
    }

    const PINS: &str = r#"# Devices of the lab
[[pin]]
match = "sensor-*@iot.example"
backend = "node2"

[[pin]]
match = "tenant:acme"   # all of acme
backend = "node1"
"#;

    #[test]
    fn pin_file_parses() {
        let entries = parse_pin_file(PINS).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].pattern, "sensor-*@iot.example");
        assert_eq!(entries[0].backend, "node2");
        assert_eq!(entries[1].pattern, "tenant:acme");
        assert_eq!(entries[1].backend, "node1");
        assert_eq!(table(&entries).len(), 2);
        assert!(parse_pin_file("").unwrap().is_empty());
        assert!(parse_pin_file("# nothing pinned yet\n").unwrap().is_empty());
    }

    #[test]
    fn pin_file_errors_name_line_and_key() {
        let with = |extra: &str| format!("{PINS}\n[[pin]]\n{extra}");
        // Line 10 is the third `[[pin]]` header, 11 and 12 its keys.
        for (text, line, key, message) in [
            (
                with("match = \"a@iot.example\"\nbackned = \"node1\"\n"),
                12,
                "pin[2].backned",
                "unknown field `backned`",
            ),
            (
                with("match = \"a@iot.example\"\n"),
                10,
                "pin[2].backend",
                "missing field `backend`",
            ),
            (
                with("match = \"a@iot.example\"\nbackend = 3\n"),
                12,
                "pin[2].backend",
                "invalid type",
            ),
            (
                with("match = \"sensor-[0-9]@iot.example\"\nbackend = \"node1\"\n"),
                11,
                "pin[2].match",
                "bad glob",
            ),
            (
                with("match = \"SENSOR-*@iot.example\"\nbackend = \"node1\"\n"),
                11,
                "pin[2].match",
                "already pinned on line 3 as \"sensor-*@iot.example\"",
            ),
            (
                with("match = \"a@iot.example\"\nbackend = \"\"\n"),
                12,
                "pin[2].backend",
                "name a backend",
            ),
            (
                format!("version = 2\n{PINS}"),
                1,
                "version",
                "unknown field `version`",
            ),
            (
                format!("{PINS}[pins]\nx = 1\n"),
                9,
                "pins",
                "unknown field `pins`",
            ),
            (
                with("match = \"a@iot.example\n"),
                11,
                "pin[2].match",
                "string",
            ),
        ] {
            let e = parse_pin_file(&text).unwrap_err();
            assert_eq!((e.line, e.key.as_str()), (line, key), "{e}\n{text}");
            assert!(e.message.contains(message), "{e}");
            assert_eq!(e.to_string(), format!("line {line}: {key}: {}", e.message));
        }
    }

    #[test]
    fn policy_rejects_bad_key_lists() {
        let re = compile_tenant(TENANT).unwrap();
        assert!(policy_err(&[], None).contains("at least one"));
        let e = policy_err(&[Jid, Pin, Jid], None);
        assert!(e.contains("`jid` is listed twice"), "{e}");
        let e = policy_err(&[Pin, Tenant, Subnet], None);
        assert!(e.contains("`tenant` key needs a tenant pattern"), "{e}");
        for k in [Domain, Subnet, Random] {
            let e = policy_err(&[Pin, k, Jid], Some(&re));
            assert!(
                e.contains(&format!("`{k}` always applies")) && e.contains("`jid`"),
                "{e}"
            );
        }
        let e = policy_err(&[Subnet, Jid, Tenant], Some(&re));
        assert!(
            e.contains("`jid`, `tenant` after it") && e.contains("them"),
            "{e}"
        );
        let bad_prefix = |v4, v6| {
            Policy::new(
                PolicySpec {
                    keys: &[Subnet],
                    tenant: None,
                    ipv4_prefix: v4,
                    ipv6_prefix: v6,
                },
                Arc::new(table(&[])),
            )
            .unwrap_err()
        };
        assert!(bad_prefix(33, 64).contains("IPv4"));
        assert!(bad_prefix(24, 129).contains("IPv6"));
        // Every key alone, and the full chain ending in one that always applies, are fine.
        let p = policy(&[Pin, Tenant, Jid, Random], Some(TENANT), &[]);
        assert_eq!(p.keys(), &[Pin, Tenant, Jid, Random]);
    }

    #[test]
    fn jid_key_is_the_normalized_bare_jid() {
        let p = policy(&[Jid], None, &[]);
        let bare = normalize_bare_jid("JuLiet@IoT.Example/phone").unwrap();
        let d = decide(&p, Some(&bare), true).unwrap();
        assert_eq!(d.key, Jid);
        assert_eq!(d.placement, Placement::Ring("juliet@iot.example".into()));
        assert_eq!(ring(&d), bare);
        assert_eq!(d.rule, "consistent hash of the bare JID");
        assert!(d.skipped.is_empty());
    }

    #[test]
    fn domain_key_is_the_domain() {
        let p = policy(&[Domain], None, &[]);
        for (jid, fin) in [
            (None, false),
            (None, true),
            (Some("juliet@iot.example"), true),
        ] {
            let d = decide(&p, jid, fin).unwrap();
            assert_eq!(d.key, Domain);
            assert_eq!(ring(&d), normalize_domain("IoT.Example.").unwrap());
            assert_eq!(d.rule, "consistent hash of the domain");
        }
    }

    #[test]
    fn subnet_key_is_subnet_key() {
        let p = policy(&[Subnet], None, &[]);
        let d = decide(&p, None, false).unwrap();
        assert_eq!(d.key, Subnet);
        assert_eq!(ring(&d), subnet_key(ip(), 24, 64));
        assert_eq!(ring(&d), "192.0.2.0/24");
        assert_eq!(d.rule, "consistent hash of the client subnet 192.0.2.0/24");
        assert!(d.skipped.is_empty());
        let v6: IpAddr = "2001:db8:1:2::9".parse().unwrap();
        let w = Who {
            ip: v6,
            ..who(None, true)
        };
        assert_eq!(ring(&p.decide(&w).unwrap()), subnet_key(v6, 24, 64));
    }

    #[test]
    fn random_key() {
        let p = policy(&[Random], None, &[]);
        let d = decide(&p, None, false).unwrap();
        assert_eq!((d.key, d.placement), (Random, Placement::Random));
        assert_eq!(d.rule, "random node");
    }

    #[test]
    fn tenant_key_groups_a_customer() {
        let p = policy(&[Tenant, Jid], Some(TENANT), &[]);
        let key = |jid: &str| {
            let d = decide(&p, Some(jid), true).unwrap();
            (d.key, ring(&d).to_string(), d.rule)
        };
        let a1 = key("acme-1@iot.example");
        let a2 = key("acme-2@iot.example");
        let g1 = key("globex-1@iot.example");
        assert_eq!(
            a1,
            (
                Tenant,
                "tenant:acme@iot.example".into(),
                "tenant acme".into()
            )
        );
        assert_eq!(a1.1, a2.1);
        assert_ne!(a1.1, g1.1);
        assert_eq!(g1.1, "tenant:globex@iot.example");
        // No match: the next key.
        let d = decide(&p, Some("juliet@iot.example"), true).unwrap();
        assert_eq!((d.key, ring(&d)), (Jid, "juliet@iot.example"));
        assert_eq!(d.skipped, vec![(Tenant, "tenant pattern does not match")]);
    }

    #[test]
    fn pin_key_decisions() {
        let pins = [
            pin("sensor-*@iot.example", "node2"),
            pin("tenant:acme", "node3"),
            pin("juliet@iot.example", "node1"),
        ];
        let p = policy(&[Pin, Jid, Subnet], Some(TENANT), &pins);
        let d = decide(&p, Some("sensor-4@iot.example"), true).unwrap();
        assert_eq!(d.key, Pin);
        assert_eq!(d.placement, Placement::Pinned("node2".into()));
        assert_eq!(d.rule, "pin sensor-*@iot.example");
        assert!(d.skipped.is_empty());
        let d = decide(&p, Some("acme-9@iot.example"), true).unwrap();
        assert_eq!(
            (d.placement, d.rule.as_str()),
            (Placement::Pinned("node3".into()), "pin tenant:acme")
        );
        let d = decide(&p, Some("juliet@iot.example"), true).unwrap();
        assert_eq!(d.placement, Placement::Pinned("node1".into()));
        // Tenant pins need the domain's tenant pattern.
        let p = policy(&[Pin, Jid], None, &pins);
        let d = decide(&p, Some("acme-9@iot.example"), true).unwrap();
        assert_eq!((d.key, ring(&d)), (Jid, "acme-9@iot.example"));
    }

    #[test]
    fn fallback_chain_pin_jid_subnet() {
        let p = policy(
            &[Pin, Jid, Subnet],
            None,
            &[pin("sensor-*@iot.example", "node2")],
        );
        // Identity known, no pin: the bare JID.
        let d = decide(&p, Some("juliet@iot.example"), true).unwrap();
        assert_eq!((d.key, ring(&d)), (Jid, "juliet@iot.example"));
        assert_eq!(d.skipped, vec![(Pin, "no pin matches")]);
        // Known from the header already (identity_final false does not matter then).
        let d2 = decide(&p, Some("juliet@iot.example"), false).unwrap();
        assert_eq!(d, d2);
        // Not known yet: wait for SASL.
        assert_eq!(decide(&p, None, false), None);
        // Known to be unknown (ANONYMOUS): the subnet, listing what was skipped.
        let d = decide(&p, None, true).unwrap();
        assert_eq!((d.key, ring(&d)), (Subnet, "192.0.2.0/24"));
        assert_eq!(d.skipped, vec![(Pin, "no identity"), (Jid, "no identity")]);
        assert_eq!(d.rule, "consistent hash of the client subnet 192.0.2.0/24");
    }

    #[test]
    fn wait_only_when_the_first_applicable_key_needs_the_identity() {
        for keys in [&[Jid][..], &[Tenant, Jid], &[Pin, Domain]] {
            let p = policy(keys, Some(TENANT), &[]);
            assert_eq!(decide(&p, None, false), None, "{keys:?}");
        }
        // A key that always applies ends the walk before any identity key is reached.
        let p = policy(&[Random], None, &[]);
        assert!(decide(&p, None, false).is_some());
        // A skipped pin with a known JID does not wait either.
        let p = policy(&[Pin, Tenant, Domain], Some(TENANT), &[]);
        let d = decide(&p, Some("juliet@iot.example"), false).unwrap();
        assert_eq!(d.key, Domain);
        assert_eq!(
            d.skipped,
            vec![
                (Pin, "no pin matches"),
                (Tenant, "tenant pattern does not match")
            ]
        );
    }

    #[test]
    fn no_key_applies_falls_back_to_the_subnet() {
        let p = policy(&[Jid], None, &[]);
        let d = decide(&p, None, true).unwrap();
        assert_eq!(d.key, Subnet);
        assert_eq!(ring(&d), subnet_key(ip(), 24, 64));
        assert_eq!(d.rule, "fallback: no configured key applies");
        assert_eq!(d.skipped, vec![(Jid, "no identity")]);

        let p = policy(&[Pin, Tenant], Some(TENANT), &[pin("tenant:acme", "node1")]);
        let d = decide(&p, Some("juliet@iot.example"), true).unwrap();
        assert_eq!(d.key, Subnet);
        assert_eq!(d.rule, "fallback: no configured key applies");
        assert_eq!(
            d.skipped,
            vec![
                (Pin, "no pin matches"),
                (Tenant, "tenant pattern does not match")
            ]
        );
        // Never None once the identity is final, whatever the keys.
        for keys in [&[Pin][..], &[Tenant], &[Jid, Pin, Tenant]] {
            let p = policy(keys, Some(TENANT), &[]);
            assert!(decide(&p, None, true).is_some(), "{keys:?}");
            assert!(
                decide(&p, Some("x@iot.example"), true).is_some(),
                "{keys:?}"
            );
        }
    }
}
