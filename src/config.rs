//! The configuration file: what an operator writes, and the checked form the proxy runs on.
//!
//! Parsing happens in two steps, as in rathole: serde structs with `deny_unknown_fields`
//! reject typos at once, then [`RawConfig::validate`] checks what serde cannot (addresses,
//! files, duplicate names) and resolves relative paths against the config file's directory.
//! Every error names the file, the line and the key, because an operator reading
//! "invalid address" without a line number has to guess which of forty backends is wrong.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::keys::FleetKey;

/// A configuration error, rendered as `FILE:LINE:COLUMN: key: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but is wrong at a known place.
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

/// How a listener expects TLS to start.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// RFC 6120 STARTTLS: a clear-text stream header first, then TLS (port 5222 style).
    Starttls,
    /// XEP-0368 direct TLS: the TLS handshake is the first thing on the wire (port 5223 style).
    Direct,
    /// Both on one port: a first byte of 0x16 (a TLS handshake record) means direct TLS.
    Auto,
}

/// Whether, and in which version, a PROXY protocol header opens each connection to a node.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header: the node sees the proxy's address as the client's.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 ...`): every implementation reads it.
    V1,
    /// The binary header, which can also carry the client's ALPN, SNI and TLS facts (TLVs).
    V2,
}

/// How the proxy speaks TLS to a node.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BackendTls {
    /// Plain TCP on a trusted link.
    #[default]
    None,
    /// RFC 6120 STARTTLS, negotiated by the proxy itself before it replays the client's header.
    Starttls,
    /// XEP-0368 direct TLS (ALPN `xmpp-client`) from the first byte.
    Direct,
}

/// How the proxy reaches a node, as written for one `[[backend]]` or one `[[domain]]` (the
/// pool): every field unset means "inherit" (the backend's own value beats its pool's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkOverrides {
    /// PROXY protocol header toward the node.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TLS toward the node.
    pub tls: Option<BackendTls>,
    /// Name the node's certificate must match (default: the XMPP domain of the connection).
    pub server_name: Option<String>,
    /// PEM file of the CA certificates trusted for the node (default: the Mozilla roots).
    pub ca: Option<PathBuf>,
    /// Whether the node's certificate is verified (default: yes).
    pub verify: Option<bool>,
}

/// How the proxy reaches one node for one domain, every choice made.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinkConfig {
    /// PROXY protocol header toward the node.
    pub proxy_protocol: ProxyProtocol,
    /// TLS toward the node.
    pub tls: BackendTls,
    /// Name the node's certificate must match; `None`: the XMPP domain of the connection.
    pub server_name: Option<String>,
    /// PEM file of trusted CA certificates; `None`: the Mozilla roots compiled in.
    pub ca: Option<PathBuf>,
    /// Whether the node's certificate is verified.
    pub verify: bool,
}

impl LinkOverrides {
    /// The link of a backend (`self`) in a pool (`pool`): each field from the backend if set,
    /// else from the pool, else the default (plain TCP, no PROXY header, verification on).
    pub fn resolve(&self, pool: &LinkOverrides) -> LinkConfig {
        LinkConfig {
            proxy_protocol: self
                .proxy_protocol
                .or(pool.proxy_protocol)
                .unwrap_or_default(),
            tls: self.tls.or(pool.tls).unwrap_or_default(),
            server_name: self
                .server_name
                .clone()
                .or_else(|| pool.server_name.clone()),
            ca: self.ca.clone().or_else(|| pool.ca.clone()),
            verify: self.verify.or(pool.verify).unwrap_or(true),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal or journald.
    #[default]
    Text,
    /// One JSON object per line in the Logstash/ECS style (`@timestamp`, `log.level`,
    /// `message`, then the event's fields), for Elasticsearch, Loki or any document store.
    Json,
}

pub use crate::route::policy::{PinEntry, RouteKey};

/// The file as written (before checks). Public so tests can build one from text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    listener: Vec<RawListener>,
    routing: Spanned<RawRouting>,
    #[serde(default)]
    backend: Vec<RawBackend>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    probe: RawProbe,
    #[serde(default)]
    domain: Vec<RawDomain>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    drain: RawDrain,
    #[serde(default)]
    admission: RawAdmission,
    #[serde(default)]
    resumption: RawResumption,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default)]
    log_jids: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    bind: Spanned<Vec<Spanned<String>>>,
    tls: TlsMode,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    #[serde(default)]
    extra_cert: Vec<RawCertPair>,
    #[serde(default = "off")]
    accept_proxy_protocol: Spanned<bool>,
    #[serde(default)]
    trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertPair {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    key: Option<Spanned<RouteKey>>,
    keys: Option<Spanned<Vec<RouteKey>>>,
    #[serde(default = "no_domains")]
    domains: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_v4_prefix")]
    ipv4_prefix: Spanned<u8>,
    #[serde(default = "default_v6_prefix")]
    ipv6_prefix: Spanned<u8>,
    tenant_pattern: Option<Spanned<String>>,
    balance_factor: Option<Spanned<f64>>,
    pins: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pin: Vec<Spanned<PinEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: Spanned<String>,
    backends: Option<Spanned<Vec<Spanned<String>>>>,
    key: Option<Spanned<RouteKey>>,
    keys: Option<Spanned<Vec<RouteKey>>>,
    tenant_pattern: Option<Spanned<String>>,
    balance_factor: Option<Spanned<f64>>,
    proxy_protocol: Option<ProxyProtocol>,
    backend_tls: Option<BackendTls>,
    tls_server_name: Option<Spanned<String>>,
    tls_ca: Option<Spanned<PathBuf>>,
    tls_verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealth {
    #[serde(with = "humantime_serde")]
    interval: Duration,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    rise: u32,
    fall: u32,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 2,
        }
    }
}

/// What draining does to the clients already connected to the node.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DrainMode {
    /// Ask them to reconnect (`<see-other-host/>` pointing back at the proxy), a few per second.
    Redirect,
    /// Leave them until they log out by themselves.
    Wait,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawResumption {
    sm_key_files: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    tls_ticket_key_files: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    tls_ticket_rotation: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDrain {
    mode: DrainMode,
    rate: Spanned<f64>,
    redirect_to: Option<Spanned<String>>,
}

impl Default for RawDrain {
    fn default() -> Self {
        RawDrain {
            mode: DrainMode::Redirect,
            rate: Spanned::new(0..0, 50.0),
            redirect_to: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmission {
    max_negotiations: Option<usize>,
    max_logins_per_second: Option<Spanned<f64>>,
    queue: usize,
    #[serde(with = "humantime_serde")]
    queue_timeout: Duration,
    overflow_redirect: Option<Spanned<String>>,
}

impl Default for RawAdmission {
    fn default() -> Self {
        RawAdmission {
            max_negotiations: None,
            max_logins_per_second: None,
            queue: 10_000,
            queue_timeout: Duration::from_secs(30),
            overflow_redirect: None,
        }
    }
}

fn off() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

fn no_domains() -> Spanned<Vec<Spanned<String>>> {
    Spanned::new(0..0, Vec::new())
}

fn default_v4_prefix() -> Spanned<u8> {
    Spanned::new(0..0, 24)
}
fn default_v6_prefix() -> Spanned<u8> {
    Spanned::new(0..0, 64)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Spanned<String>,
    address: Spanned<String>,
    #[serde(default = "default_weight")]
    weight: Spanned<u32>,
    max_negotiations: Option<usize>,
    max_logins_per_second: Option<Spanned<f64>>,
    proxy_protocol: Option<ProxyProtocol>,
    backend_tls: Option<BackendTls>,
    tls_server_name: Option<Spanned<String>>,
    tls_ca: Option<Spanned<PathBuf>>,
    tls_verify: Option<bool>,
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_metrics_bind")]
    bind: Spanned<String>,
    token_file: Option<Spanned<PathBuf>>,
    allowed_hosts: Option<Vec<Spanned<String>>>,
}

/// Loopback: the admin endpoints can drain nodes and reload the configuration, so they are
/// reachable from elsewhere only when an operator says so.
fn default_metrics_bind() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9464".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    #[serde(with = "humantime_serde")]
    prerouting_timeout: Duration,
    #[serde(with = "humantime_serde")]
    negotiation_timeout: Duration,
    #[serde(with = "humantime_serde")]
    tls_handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    backend_connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    half_close_timeout: Duration,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    max_header_bytes: Spanned<usize>,
    max_prerouting_element_bytes: Spanned<usize>,
    max_negotiation_element_bytes: Spanned<usize>,
    max_connections: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            prerouting_timeout: Duration::from_secs(20),
            negotiation_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            backend_connect_timeout: Duration::from_secs(3),
            half_close_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            max_header_bytes: Spanned::new(0..0, 4096),
            max_prerouting_element_bytes: Spanned::new(0..0, 16384),
            max_negotiation_element_bytes: Spanned::new(0..0, 65536),
            max_connections: 200_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProbe {
    #[serde(with = "humantime_serde")]
    interval: Duration,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
}

impl Default for RawProbe {
    fn default() -> Self {
        RawProbe {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(3),
        }
    }
}

/// The largest `limits.max_header_bytes` accepted. A stream header is one start tag of a few
/// hundred bytes; the proxy keeps its namespaces for as long as the stream lives.
pub const MAX_HEADER_BYTES_BOUND: usize = 64 * 1024;

/// The largest `limits.max_prerouting_element_bytes` and `limits.max_negotiation_element_bytes`
/// accepted. Every negotiating connection may buffer one such element and parse it (a parse
/// allocates up to a few times the element's size), so the bound caps what a client can make
/// the proxy hold before it has logged in; the largest real negotiation elements (stream
/// features, a SASL2 `<authenticate/>`) are a few kilobytes.
pub const MAX_ELEMENT_BYTES_BOUND: usize = 1024 * 1024;

/// A checked configuration: every address parsed, every file present, paths absolute.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the configuration came from, for messages and reloads.
    pub source: PathBuf,
    /// Client-facing listeners.
    pub listeners: Vec<ListenerConfig>,
    /// How a connection becomes a routing key, and which domains are served.
    pub routing: RoutingConfig,
    /// The XMPP server nodes, in file order (the order does not affect placement).
    pub backends: Vec<BackendConfig>,
    /// Where `/metrics` and the admin endpoints are served, if anywhere.
    pub metrics_bind: Option<SocketAddr>,
    /// A file holding the bearer token the admin endpoints require (None: no token). The
    /// token itself is read when the configuration is put into service, so it never sits in
    /// the configuration file and can be rotated with a reload.
    pub metrics_token_file: Option<PathBuf>,
    /// Host names (lowercase, no port) the admin endpoints answer to besides IP literals and
    /// `localhost`: any other `Host` is refused, so a web page cannot read them through DNS
    /// rebinding.
    pub metrics_allowed_hosts: Vec<String>,
    /// How log lines are written (read at start only: logging is set up before anything else).
    pub log_format: LogFormat,
    /// Whether the access log names the user (bare JID). Off by default: a JID is personal data.
    pub log_jids: bool,
    /// Bounds on time and memory for every phase before the relay.
    pub limits: Limits,
    /// How the backends' stream features are learned.
    pub probe: ProbeConfig,
    /// One entry per served domain: its backends and routing policy (defaults from [routing]).
    pub domains: Vec<DomainConfig>,
    /// Active health checks.
    pub health: HealthConfig,
    /// What draining a node does.
    pub drain: DrainConfig,
    /// Login-storm shaping defaults (per-backend overrides are in [`BackendConfig`]).
    pub admission: AdmissionDefaults,
    /// Fast reconnect: the fleet's keys for stream-management ids and TLS session tickets.
    pub resumption: ResumptionConfig,
}

/// Fast reconnect across a fleet of proxies (see docs/fast-reconnect.md).
#[derive(Clone, Debug)]
pub struct ResumptionConfig {
    /// Keys that wrap XEP-0198 stream-management ids, newest first: the first wraps, all
    /// verify. Empty: ids pass through untouched and resumes are routed like logins.
    pub sm_keys: Vec<FleetKey>,
    /// Secrets TLS 1.3 session-ticket keys are derived from, newest first: the first issues,
    /// all decrypt. Empty: each proxy keeps its own session cache (no resumption across
    /// proxies, none across restarts).
    pub tls_ticket_keys: Vec<FleetKey>,
    /// How long one derived ticket key issues tickets; tickets of the previous period are still
    /// accepted, so a ticket lives between one and two periods.
    pub tls_ticket_rotation: Duration,
}

/// Default ticket-key period: short enough that a stolen derived key opens few sessions, long
/// enough that a phone reconnecting after a night still resumes.
pub const DEFAULT_TICKET_ROTATION: Duration = Duration::from_secs(12 * 3600);

/// The routing policy of one served domain.
#[derive(Clone, Debug)]
pub struct DomainConfig {
    /// The domain (normalized).
    pub name: String,
    /// Names of the backends serving it (all backends unless restricted).
    pub backends: Vec<String>,
    /// Routing keys in fallback order.
    pub keys: Vec<RouteKey>,
    /// Regular expression with a `tenant` group over the localpart, for the `tenant` key.
    pub tenant_pattern: Option<String>,
    /// Bounded-load factor (> 1.0): no node takes more than this times the average load.
    pub balance_factor: Option<f64>,
    /// How its backends are reached, unless a backend says otherwise.
    pub link: LinkOverrides,
}

/// Active health checking of backends at the XMPP level.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// Time between two checks of one backend.
    pub interval: Duration,
    /// Time a check (connect, header, features) may take.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy node healthy.
    pub rise: u32,
    /// Consecutive failures (checks or real connects) that make a node unhealthy.
    pub fall: u32,
}

/// Draining settings.
#[derive(Clone, Debug)]
pub struct DrainConfig {
    /// Move connected clients or wait for them to leave.
    pub mode: DrainMode,
    /// Clients asked to move per second.
    pub rate: f64,
    /// `host:port` put in `<see-other-host/>`; default: the domain and the listener's port.
    pub redirect_to: Option<String>,
}

/// Admission defaults for every backend.
#[derive(Clone, Debug)]
pub struct AdmissionDefaults {
    /// Concurrent logins per backend (None: unlimited).
    pub max_negotiations: Option<usize>,
    /// New logins per second per backend (None: unlimited).
    pub max_logins_per_second: Option<f64>,
    /// Clients that may wait per backend.
    pub queue: usize,
    /// How long one may wait.
    pub queue_timeout: Duration,
    /// `host:port` of another proxy to send clients to instead of `<resource-constraint/>`.
    pub overflow_redirect: Option<String>,
}

/// One client-facing listener.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// A short name used in logs and metric labels.
    pub name: String,
    /// Every address to bind (IPv4 and IPv6 alike).
    pub bind: Vec<SocketAddr>,
    /// How TLS starts on this listener.
    pub tls: TlsMode,
    /// The default certificate chain and key; extra pairs are chosen by SNI.
    pub certs: Vec<CertPair>,
    /// Networks of the front balancers whose PROXY protocol header is required and believed;
    /// empty: no header is accepted (and one sent is refused).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// PEM file holding the leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file holding the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Routing settings.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Default routing keys, in fallback order.
    pub keys: Vec<RouteKey>,
    /// The XMPP domains served (normalized); any other `to` gets `<host-unknown/>`.
    pub domains: Vec<String>,
    /// Default tenant pattern.
    pub tenant_pattern: Option<String>,
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

/// One XMPP server node.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// Stable name: it, and the weight, decide placement on the ring.
    pub name: String,
    /// The node's plain c2s address on the trusted link.
    pub address: SocketAddr,
    /// Relative share of the keys (virtual nodes on the ring).
    pub weight: u32,
    /// Concurrent logins allowed (overrides [admission]).
    pub max_negotiations: Option<usize>,
    /// New logins per second allowed (overrides [admission]).
    pub max_logins_per_second: Option<f64>,
    /// How the node is reached (overrides its pools' settings).
    pub link: LinkOverrides,
}

/// Bounds on every phase before the relay, so a slow or hostile client cannot hold resources.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time a client has, from accept, to say who it is (stream header, SASL message).
    pub prerouting_timeout: Duration,
    /// Time from accept to the end of authentication, after which the proxy stops parsing.
    pub negotiation_timeout: Duration,
    /// Time a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// Time to connect one backend before trying the next node.
    pub backend_connect_timeout: Duration,
    /// After one side half-closes, how long the other may keep sending.
    pub half_close_timeout: Duration,
    /// On shutdown, how long established connections may go on before the process exits.
    pub shutdown_grace: Duration,
    /// Largest stream header accepted.
    pub max_header_bytes: usize,
    /// Largest element accepted before the connection is routed.
    pub max_prerouting_element_bytes: usize,
    /// Largest element the proxy parses after routing, until authentication ends.
    pub max_negotiation_element_bytes: usize,
    /// Connections held at once; past it new ones wait in the kernel's backlog.
    pub max_connections: usize,
}

/// Feature probing settings.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// How often the cached stream features of each domain are refreshed.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
}

impl Config {
    /// Read, parse and check a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parse and check configuration text; `path` names it in errors and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().to_string();
            let key = key_path(text, &span, &message);
            invalid(path, text, &span, &key, message)
        })?;
        raw.validate(text, path)
    }
}

/// The full key an error from the parser is about, in the form [`RawConfig::validate`] uses
/// (`backend[1].address`, `limits.prerouting_timeout`): the table around the error, the key
/// whose value the error points into, and the field serde names ("unknown field `x`",
/// "missing field `x`"). Tables are found by scanning header lines, which is enough for this
/// file's layout; `-` when nothing is known (a syntax error at top level).
fn key_path(text: &str, span: &Range<usize>, message: &str) -> String {
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split_once('`'))
        .map(|(f, _)| f.to_string());
    let missing = message.starts_with("missing field");
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let is_header = line.trim_start().starts_with('[');
    let mut parts = Vec::new();
    // A missing field is reported on the header of the table that lacks it (or nowhere, for
    // the top level), an unknown table on its own header, which names it inside its parent;
    // anything else lies inside the table of the headers above its line.
    let through_line = &text[..line_start + line.len()];
    let table = if missing && span.is_empty() {
        None
    } else if is_header && (missing || field.is_none()) {
        table_at(through_line)
    } else if is_header {
        table_at(through_line).and_then(|t| t.rsplit_once('.').map(|(p, _)| p.to_string()))
    } else {
        table_at(&text[..line_start])
    };
    parts.extend(table);
    if let Some(eq) = line.find('=').filter(|_| !is_header) {
        let k = line[..eq].trim();
        // The error points into the value, or at the key itself (a duplicate key).
        let on_key = field.is_none() && text.get(span.clone()).is_some_and(|s| s.trim() == k);
        if !k.is_empty() && (start > line_start + eq || on_key) {
            parts.push(k.to_string());
        }
    }
    parts.extend(field);
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(".")
    }
}

/// The table the last header line of `text` opens, with array indices (`listener[0]`,
/// `listener[1].extra_cert[0]`, `routing`), or `None` before any header.
fn table_at(text: &str) -> Option<String> {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let (rest, array) = match rest.trim_start().strip_prefix('[') {
            Some(inner) => (inner, true),
            None => (rest, false),
        };
        let Some((name, _)) = rest.split_once(']') else {
            continue;
        };
        let segments: Vec<&str> = name.split('.').map(str::trim).collect();
        let mut path = String::new();
        for (i, seg) in segments.iter().enumerate() {
            if i > 0 {
                path.push('.');
            }
            path.push_str(seg);
            if array && i + 1 == segments.len() {
                let n = counts.entry(path.clone()).or_insert(0);
                path = format!("{path}[{n}]");
                *n += 1;
            } else if let Some(n) = counts.get(&path) {
                path = format!("{path}[{}]", n - 1);
            }
        }
        current = Some(path);
    }
    current
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn invalid(
    path: &Path,
    text: &str,
    span: &Range<usize>,
    key: &str,
    message: String,
) -> ConfigError {
    let (line, column) = line_col(text, span.start);
    ConfigError::Invalid {
        file: path.to_path_buf(),
        line,
        column,
        key: key.to_string(),
        message,
    }
}

impl RawConfig {
    fn validate(self, text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |span: &Range<usize>, key: &str, msg: String| invalid(path, text, span, key, msg);
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Spanned<PathBuf>, key: &str| -> Result<PathBuf, ConfigError> {
            let full = if p.get_ref().is_absolute() {
                p.get_ref().clone()
            } else {
                base.join(p.get_ref())
            };
            if !full.is_file() {
                return Err(err(
                    &p.span(),
                    key,
                    format!("file not found: {}", full.display()),
                ));
            }
            Ok(full)
        };

        if self.listener.is_empty() {
            return Err(err(
                &(0..0),
                "listener",
                "at least one [[listener]] is required".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        let mut listeners = Vec::new();
        for (i, l) in self.listener.iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            if l.name.get_ref().is_empty() || !names.insert(l.name.get_ref().clone()) {
                return Err(err(
                    &l.name.span(),
                    &key("name"),
                    format!(
                        "listener name {:?} is empty or used twice",
                        l.name.get_ref()
                    ),
                ));
            }
            if l.bind.get_ref().is_empty() {
                return Err(err(
                    &l.bind.span(),
                    &key("bind"),
                    "no address to bind".into(),
                ));
            }
            let mut addrs = Vec::new();
            for b in l.bind.get_ref() {
                let addr = parse_addr(b.get_ref()).map_err(|m| err(&b.span(), &key("bind"), m))?;
                // Port 0 asks the OS for a free port: never a clash, used by tests.
                if addr.port() != 0 && !binds.insert(addr) {
                    return Err(err(
                        &b.span(),
                        &key("bind"),
                        format!("{addr} is bound twice"),
                    ));
                }
                addrs.push(addr);
            }
            let mut certs = vec![CertPair {
                cert: resolve(&l.cert, &key("cert"))?,
                key: resolve(&l.key, &key("key"))?,
            }];
            for (j, pair) in l.extra_cert.iter().enumerate() {
                certs.push(CertPair {
                    cert: resolve(&pair.cert, &key(&format!("extra_cert[{j}].cert")))?,
                    key: resolve(&pair.key, &key(&format!("extra_cert[{j}].key")))?,
                });
            }
            let trusted_proxies = match (*l.accept_proxy_protocol.get_ref(), &l.trusted_proxies) {
                (false, None) => Vec::new(),
                (false, Some(list)) => {
                    return Err(err(
                        &list.span(),
                        &key("trusted_proxies"),
                        "set accept_proxy_protocol = true, or remove this list".into(),
                    ));
                }
                (true, None) => {
                    return Err(err(
                        &l.accept_proxy_protocol.span(),
                        &key("trusted_proxies"),
                        "list the networks of the front balancers (e.g. [\"10.0.0.0/24\"])".into(),
                    ));
                }
                (true, Some(list)) => {
                    let mut nets = Vec::new();
                    for n in list.get_ref() {
                        nets.push(
                            parse_net(n.get_ref())
                                .map_err(|m| err(&n.span(), &key("trusted_proxies"), m))?,
                        );
                    }
                    if nets.is_empty() {
                        return Err(err(
                            &list.span(),
                            &key("trusted_proxies"),
                            "list at least one network".into(),
                        ));
                    }
                    nets
                }
            };
            listeners.push(ListenerConfig {
                name: l.name.get_ref().clone(),
                bind: addrs,
                tls: l.tls,
                certs,
                trusted_proxies,
            });
        }

        let r = self.routing.get_ref();
        let mut domains = Vec::new();
        if r.domains.get_ref().is_empty() && self.domain.is_empty() {
            return Err(err(
                &r.domains.span(),
                "routing.domains",
                "list at least one domain".into(),
            ));
        }
        for d in r.domains.get_ref() {
            let norm = crate::route::key::normalize_domain(d.get_ref()).ok_or_else(|| {
                err(
                    &d.span(),
                    "routing.domains",
                    format!("{:?} is not a valid domain", d.get_ref()),
                )
            })?;
            if domains.contains(&norm) {
                return Err(err(
                    &d.span(),
                    "routing.domains",
                    format!("{norm} is listed twice"),
                ));
            }
            domains.push(norm);
        }
        if *r.ipv4_prefix.get_ref() > 32 {
            return Err(err(
                &r.ipv4_prefix.span(),
                "routing.ipv4_prefix",
                "must be 0..=32".into(),
            ));
        }
        if *r.ipv6_prefix.get_ref() > 128 {
            return Err(err(
                &r.ipv6_prefix.span(),
                "routing.ipv6_prefix",
                "must be 0..=128".into(),
            ));
        }

        if self.backend.is_empty() {
            return Err(err(
                &(0..0),
                "backend",
                "at least one [[backend]] is required".into(),
            ));
        }
        let mut backend_names = HashSet::new();
        let mut backends = Vec::new();
        for (i, b) in self.backend.iter().enumerate() {
            let key = |k: &str| format!("backend[{i}].{k}");
            let name = b.name.get_ref();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(err(
                    &b.name.span(),
                    &key("name"),
                    format!("{name:?}: use letters, digits, '-', '_' or '.'"),
                ));
            }
            if !backend_names.insert(name.clone()) {
                return Err(err(
                    &b.name.span(),
                    &key("name"),
                    format!("backend {name:?} is defined twice"),
                ));
            }
            let address = parse_addr(b.address.get_ref())
                .map_err(|m| err(&b.address.span(), &key("address"), m))?;
            if *b.weight.get_ref() == 0 || *b.weight.get_ref() > 1000 {
                return Err(err(
                    &b.weight.span(),
                    &key("weight"),
                    "must be 1..=1000".into(),
                ));
            }
            let link = RawLink {
                proxy_protocol: b.proxy_protocol,
                tls: b.backend_tls,
                server_name: b.tls_server_name.as_ref(),
                ca: b.tls_ca.as_ref(),
                verify: b.tls_verify,
            }
            .check(&key(""), &resolve, &err)?;
            backends.push(BackendConfig {
                name: name.clone(),
                address,
                weight: *b.weight.get_ref(),
                max_negotiations: None,
                max_logins_per_second: None,
                link,
            });
        }

        let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
        let routing_span = self.routing.span();
        let default_keys = keys_of(&r.key, &r.keys, "routing", &routing_span, true)
            .map_err(|(span, key, msg)| err(&span, &key, msg))?
            .unwrap_or_default();
        let default_tenant = match &r.tenant_pattern {
            Some(p) => {
                Some(check_tenant(p).map_err(|m| err(&p.span(), "routing.tenant_pattern", m))?)
            }
            None => None,
        };
        check_keys(&default_keys, default_tenant.is_some())
            .map_err(|m| err(&routing_span, "routing.keys", m))?;
        let default_factor = match &r.balance_factor {
            Some(f) => {
                Some(check_factor(f).map_err(|m| err(&f.span(), "routing.balance_factor", m))?)
            }
            None => None,
        };
        let pins_file = match &r.pins {
            Some(p) => Some(resolve(p, "routing.pins")?),
            None => None,
        };
        let mut pins = Vec::new();
        for (i, pin) in r.pin.iter().enumerate() {
            let entry = pin.get_ref();
            if entry.pattern.trim().is_empty() || !names.contains(&entry.backend) {
                return Err(err(
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
        for (i, d) in self.domain.iter().enumerate() {
            let key = |k: &str| format!("domain[{i}].{k}");
            let name = crate::route::key::normalize_domain(d.name.get_ref()).ok_or_else(|| {
                err(
                    &d.name.span(),
                    &key("name"),
                    format!("{:?} is not a valid domain", d.name.get_ref()),
                )
            })?;
            if !seen_tables.insert(name.clone()) {
                return Err(err(
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
            }
            .check(&key(""), &resolve, &err)?;
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
                        return Err(err(
                            &b.span(),
                            &key("backends"),
                            format!("no backend named {:?}", b.get_ref()),
                        ));
                    }
                    if !chosen.contains(b.get_ref()) {
                        chosen.push(b.get_ref().clone());
                    }
                }
                if chosen.is_empty() {
                    return Err(err(
                        &list.span(),
                        &key("backends"),
                        "list at least one backend".into(),
                    ));
                }
                dc.backends = chosen;
            }
            if let Some(p) = &d.tenant_pattern {
                dc.tenant_pattern =
                    Some(check_tenant(p).map_err(|m| err(&p.span(), &key("tenant_pattern"), m))?);
            }
            if let Some(f) = &d.balance_factor {
                dc.balance_factor =
                    Some(check_factor(f).map_err(|m| err(&f.span(), &key("balance_factor"), m))?);
            }
            let table = format!("domain[{i}]");
            if let Some(keys) = keys_of(&d.key, &d.keys, &table, &d.name.span(), false)
                .map_err(|(span, k, msg)| err(&span, &k, msg))?
            {
                dc.keys = keys;
            }
            if dc.keys.is_empty() {
                return Err(err(
                    &d.name.span(),
                    &key("keys"),
                    "set `key` or `keys` here or in [routing]".into(),
                ));
            }
            check_keys(&dc.keys, dc.tenant_pattern.is_some())
                .map_err(|m| err(&d.name.span(), &key("keys"), m))?;
            match domain_configs.iter_mut().find(|c| c.name == name) {
                Some(existing) => *existing = dc,
                None => {
                    domains.push(name);
                    domain_configs.push(dc);
                }
            }
        }
        if domain_configs.iter().any(|d| d.keys.is_empty()) {
            return Err(err(
                &routing_span,
                "routing.key",
                "set `key` (or `keys`) in [routing]".into(),
            ));
        }

        let drain = &self.drain;
        if !(*drain.rate.get_ref() > 0.0 && drain.rate.get_ref().is_finite()) {
            return Err(err(
                &drain.rate.span(),
                "drain.rate",
                "must be a positive number of clients per second".into(),
            ));
        }
        let redirect_to = match &drain.redirect_to {
            Some(h) => Some(
                check_host_port(h.get_ref()).map_err(|m| err(&h.span(), "drain.redirect_to", m))?,
            ),
            None => None,
        };
        let adm = &self.admission;
        let overflow_redirect = match &adm.overflow_redirect {
            Some(h) => Some(
                check_host_port(h.get_ref())
                    .map_err(|m| err(&h.span(), "admission.overflow_redirect", m))?,
            ),
            None => None,
        };
        let adm_rate = match &adm.max_logins_per_second {
            Some(r) => Some(
                check_rate(r).map_err(|m| err(&r.span(), "admission.max_logins_per_second", m))?,
            ),
            None => None,
        };
        for (i, b) in self.backend.iter().enumerate() {
            if let Some(r) = &b.max_logins_per_second {
                backends[i].max_logins_per_second = Some(check_rate(r).map_err(|m| {
                    err(&r.span(), &format!("backend[{i}].max_logins_per_second"), m)
                })?);
            }
            backends[i].max_negotiations = b.max_negotiations;
        }
        let health = &self.health;

        let metrics_bind = match &self.metrics {
            Some(m) => Some(
                parse_addr(m.bind.get_ref())
                    .map_err(|msg| err(&m.bind.span(), "metrics.bind", msg))?,
            ),
            None => None,
        };
        let metrics_token_file = match self.metrics.as_ref().and_then(|m| m.token_file.as_ref()) {
            Some(f) => Some(resolve(f, "metrics.token_file")?),
            None => None,
        };
        let mut metrics_allowed_hosts = Vec::new();
        let hosts = self.metrics.as_ref().and_then(|m| m.allowed_hosts.as_ref());
        for (i, h) in hosts.into_iter().flatten().enumerate() {
            let name = check_host_name(h.get_ref())
                .map_err(|msg| err(&h.span(), &format!("metrics.allowed_hosts[{i}]"), msg))?;
            metrics_allowed_hosts.push(name);
        }
        let l = &self.limits;
        for (name, v, max) in [
            (
                "limits.max_header_bytes",
                &l.max_header_bytes,
                MAX_HEADER_BYTES_BOUND,
            ),
            (
                "limits.max_prerouting_element_bytes",
                &l.max_prerouting_element_bytes,
                MAX_ELEMENT_BYTES_BOUND,
            ),
            (
                "limits.max_negotiation_element_bytes",
                &l.max_negotiation_element_bytes,
                MAX_ELEMENT_BYTES_BOUND,
            ),
        ] {
            if *v.get_ref() < 512 {
                return Err(err(&v.span(), name, "must be at least 512 bytes".into()));
            }
            if *v.get_ref() > max {
                let unit = if max >= 1 << 20 {
                    format!("{} MiB", max >> 20)
                } else {
                    format!("{} KiB", max >> 10)
                };
                return Err(err(
                    &v.span(),
                    name,
                    format!("must be at most {max} bytes ({unit})"),
                ));
            }
        }
        let resumption = self.resumption.check(&resolve, &err)?;
        Ok(Config {
            source: path.to_path_buf(),
            listeners,
            routing: RoutingConfig {
                keys: default_keys,
                domains,
                tenant_pattern: default_tenant,
                balance_factor: default_factor,
                pins_file,
                pins,
                ipv4_prefix: *r.ipv4_prefix.get_ref(),
                ipv6_prefix: *r.ipv6_prefix.get_ref(),
            },
            backends,
            metrics_bind,
            metrics_token_file,
            metrics_allowed_hosts,
            log_format: self.log_format,
            log_jids: self.log_jids,
            limits: Limits {
                prerouting_timeout: l.prerouting_timeout,
                negotiation_timeout: l.negotiation_timeout,
                tls_handshake_timeout: l.tls_handshake_timeout,
                backend_connect_timeout: l.backend_connect_timeout,
                half_close_timeout: l.half_close_timeout,
                shutdown_grace: l.shutdown_grace,
                max_header_bytes: *l.max_header_bytes.get_ref(),
                max_prerouting_element_bytes: *l.max_prerouting_element_bytes.get_ref(),
                max_negotiation_element_bytes: *l.max_negotiation_element_bytes.get_ref(),
                max_connections: l.max_connections.max(1),
            },
            probe: ProbeConfig {
                interval: self.probe.interval,
                timeout: self.probe.timeout,
            },
            domains: domain_configs,
            health: HealthConfig {
                interval: health.interval,
                timeout: health.timeout,
                rise: health.rise.max(1),
                fall: health.fall.max(1),
            },
            drain: DrainConfig {
                mode: drain.mode,
                rate: *drain.rate.get_ref(),
                redirect_to,
            },
            admission: AdmissionDefaults {
                max_negotiations: adm.max_negotiations,
                max_logins_per_second: adm_rate,
                queue: adm.queue,
                queue_timeout: adm.queue_timeout,
                overflow_redirect,
            },
            resumption,
        })
    }
}

impl RawResumption {
    /// Read every key file (so `xmpp-lb check` and a reload refuse a bad one by name) and
    /// check the ticket rotation period.
    fn check(
        &self,
        resolve: &ResolvePath<'_>,
        err: &dyn Fn(&Range<usize>, &str, String) -> ConfigError,
    ) -> Result<ResumptionConfig, ConfigError> {
        let load = |list: &Option<Spanned<Vec<Spanned<PathBuf>>>>,
                    name: &str|
         -> Result<Vec<FleetKey>, ConfigError> {
            let Some(list) = list else {
                return Ok(Vec::new());
            };
            let mut keys: Vec<FleetKey> = Vec::new();
            for (i, f) in list.get_ref().iter().enumerate() {
                let key = format!("resumption.{name}[{i}]");
                let path = resolve(f, &key)?;
                let loaded =
                    FleetKey::load(&path).map_err(|e| err(&f.span(), &key, e.to_string()))?;
                if let Some(twin) = keys.iter().find(|k| k.id() == loaded.id()) {
                    return Err(err(
                        &f.span(),
                        &key,
                        format!(
                            "holds the same secret as {}; each key must be different",
                            twin.file().display()
                        ),
                    ));
                }
                keys.push(loaded);
            }
            Ok(keys)
        };
        let sm_keys = load(&self.sm_key_files, "sm_key_files")?;
        let tls_ticket_keys = load(&self.tls_ticket_key_files, "tls_ticket_key_files")?;
        let tls_ticket_rotation = match &self.tls_ticket_rotation {
            None => DEFAULT_TICKET_ROTATION,
            Some(text) => {
                let key = "resumption.tls_ticket_rotation";
                let d = humantime_serde::re::humantime::parse_duration(text.get_ref())
                    .map_err(|e| err(&text.span(), key, format!("not a duration: {e}")))?;
                if d < Duration::from_secs(60) || d > Duration::from_secs(7 * 86400) {
                    return Err(err(
                        &text.span(),
                        key,
                        "must be between 1 minute and 7 days".into(),
                    ));
                }
                d
            }
        };
        Ok(ResumptionConfig {
            sm_keys,
            tls_ticket_keys,
            tls_ticket_rotation,
        })
    }
}

type SpannedError = (Range<usize>, String, String);

/// Resolves a configured file path against the configuration's directory, checking it exists.
type ResolvePath<'a> = dyn Fn(&Spanned<PathBuf>, &str) -> Result<PathBuf, ConfigError> + 'a;

/// The link settings of a `[[backend]]` or `[[domain]]` table, before checks.
struct RawLink<'a> {
    proxy_protocol: Option<ProxyProtocol>,
    tls: Option<BackendTls>,
    server_name: Option<&'a Spanned<String>>,
    ca: Option<&'a Spanned<PathBuf>>,
    verify: Option<bool>,
}

impl RawLink<'_> {
    /// Check the server name (a DNS name or an IP address, as TLS can verify it) and resolve
    /// the CA file. `prefix` is the table's key prefix (`backend[0].`).
    fn check(
        self,
        prefix: &str,
        resolve: &ResolvePath<'_>,
        err: &dyn Fn(&Range<usize>, &str, String) -> ConfigError,
    ) -> Result<LinkOverrides, ConfigError> {
        let server_name = match self.server_name {
            Some(n) => {
                if rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
                    return Err(err(
                        &n.span(),
                        &format!("{prefix}tls_server_name"),
                        format!("{:?} is not a DNS name or an IP address", n.get_ref()),
                    ));
                }
                Some(n.get_ref().clone())
            }
            None => None,
        };
        let ca = match self.ca {
            Some(p) => Some(resolve(p, &format!("{prefix}tls_ca"))?),
            None => None,
        };
        Ok(LinkOverrides {
            proxy_protocol: self.proxy_protocol,
            tls: self.tls,
            server_name,
            ca,
            verify: self.verify,
        })
    }
}

/// A network written as `ADDRESS/PREFIX`, or a single address.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| {
            format!("{s:?} is not a network (\"10.0.0.0/8\", \"2001:db8::/32\") or an address")
        })
}

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

/// A fallback order that can work: not empty, no repeats, `tenant` only with a pattern, and
/// nothing after a key that always applies (it could never be reached).
fn check_keys(keys: &[RouteKey], has_tenant_pattern: bool) -> Result<(), String> {
    if keys.is_empty() {
        return Err("list at least one routing key".into());
    }
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].contains(k) {
            return Err(format!("{k:?} is listed twice").to_lowercase());
        }
        if *k == RouteKey::Tenant && !has_tenant_pattern {
            return Err("the `tenant` key needs a `tenant_pattern`".into());
        }
        if matches!(k, RouteKey::Domain | RouteKey::Subnet | RouteKey::Random) && i + 1 < keys.len()
        {
            return Err(format!(
                "{:?} always applies, so the keys after it are never used",
                k
            )
            .to_lowercase());
        }
    }
    Ok(())
}

fn check_tenant(p: &Spanned<String>) -> Result<String, String> {
    crate::route::policy::compile_tenant(p.get_ref())?;
    Ok(p.get_ref().clone())
}

fn check_factor(f: &Spanned<f64>) -> Result<f64, String> {
    let f = *f.get_ref();
    if f.is_finite() && f > 1.0 {
        Ok(f)
    } else {
        Err("must be a number above 1.0 (e.g. 1.25)".into())
    }
}

fn check_rate(r: &Spanned<f64>) -> Result<f64, String> {
    let r = *r.get_ref();
    if r.is_finite() && r > 0.0 {
        Ok(r)
    } else {
        Err("must be a positive number per second".into())
    }
}

/// `host:port` as a client would connect to it (a name or an IP; IPv6 in brackets).
/// A DNS name as a `Host` header carries it, without port or scheme; lowercase, without a
/// final dot.
fn check_host_name(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a host name (write the name alone, e.g. \"metrics.example.org\", \
             without port or scheme; IP addresses and localhost need no entry)"
        ));
    }
    Ok(name)
}

fn check_host_port(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not host:port (IPv6 in brackets)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// A socket address written as `IP:PORT` (IPv6 in brackets); names are not resolved,
/// so that the same file means the same thing on every proxy of a fleet.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is not an IP:PORT address (IPv6 in brackets, e.g. \"[::1]:5222\")")
    })
}

#[cfg(test)]
mod tests;
