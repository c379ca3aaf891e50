//! Placeholder of the routing-policy module (replaced by the real implementation).

/// A routing key kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKey {
    Pin,
    Jid,
    Domain,
    Tenant,
    Subnet,
    Random,
}

/// One pin as written.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinEntry {
    #[serde(rename = "match")]
    pub pattern: String,
    pub backend: String,
}

/// Compile a tenant pattern.
pub fn compile_tenant(pattern: &str) -> Result<regex::Regex, String> {
    let re = regex::Regex::new(pattern).map_err(|e| e.to_string())?;
    if !re.capture_names().flatten().any(|n| n == "tenant") {
        return Err("the pattern has no named group `tenant`".into());
    }
    Ok(re)
}

impl RouteKey {
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
}

#[derive(Debug)]
pub struct PinFileError {
    pub line: usize,
    pub key: String,
    pub message: String,
}
impl std::fmt::Display for PinFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.key, self.message)
    }
}
pub fn parse_pin_file(_text: &str) -> Result<Vec<PinEntry>, PinFileError> {
    todo!()
}
#[derive(Debug)]
pub struct PinTable;
pub struct PinMatch {
    pub backend: String,
    pub rule: String,
    pub kind: &'static str,
}
impl PinTable {
    pub fn new(_entries: &[PinEntry], _known: &[String]) -> Result<PinTable, String> {
        Ok(PinTable)
    }
    pub fn len(&self) -> usize {
        0
    }
}
pub struct PolicySpec<'a> {
    pub keys: &'a [RouteKey],
    pub tenant: Option<&'a regex::Regex>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}
#[derive(Debug)]
pub struct Policy;
impl Policy {
    pub fn new(_spec: PolicySpec<'_>, _pins: std::sync::Arc<PinTable>) -> Result<Policy, String> {
        Ok(Policy)
    }
    pub fn decide(&self, _who: &Who<'_>) -> Option<Decision> {
        todo!()
    }
    pub fn keys(&self) -> &[RouteKey] {
        &[]
    }
}
pub struct Who<'a> {
    pub jid: Option<&'a str>,
    pub domain: &'a str,
    pub ip: std::net::IpAddr,
    pub identity_final: bool,
}
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    Pinned(String),
    Ring(String),
    Random,
}
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub key: RouteKey,
    pub placement: Placement,
    pub rule: String,
    pub skipped: Vec<(RouteKey, &'static str)>,
}
