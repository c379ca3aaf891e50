//! The configuration file: what an operator writes, and the checked form the proxy runs on.
//!
//! Parsing happens in two steps, as in rathole: serde structs with `deny_unknown_fields`
//! (`raw`) reject typos at once, then `RawConfig::validate` checks what serde cannot
//! (addresses, files, duplicate names) and resolves relative paths against the config file's
//! directory. Every error names the file, the line and the key, because an operator reading
//! "invalid address" without a line number has to guess which of forty backends is wrong.
//!
//! Each section has one owner, which holds its checked types and its `validate_*` function:
//! `listeners`, `backends` (and how nodes are reached), `routing` (served domains, keys, pins,
//! `[[domain]]` tables; the key rules themselves belong to [`crate::route::policy`]), `limits`
//! (also probes and health checks), `drain`, `admission`, `metrics` and `resumption`. `pins`
//! reads a pin file, and `position` turns a byte offset into the line, column and key path
//! every error names.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod admission;
mod backends;
mod drain;
mod limits;
mod listeners;
mod metrics;
mod pins;
mod position;
mod raw;
mod resumption;
mod routing;
mod websocket;

pub use admission::AdmissionDefaults;
pub use backends::{BackendConfig, BackendTls, LinkConfig, LinkOverrides, ProxyProtocol};
pub use drain::{DrainConfig, DrainMode};
pub use limits::{HealthConfig, Limits, ProbeConfig};
pub use listeners::{CertPair, ListenerConfig, TlsMode};
pub(crate) use pins::parse_pin_file;
pub use resumption::ResumptionConfig;
pub use routing::{DomainConfig, RoutingConfig};
pub use websocket::{HOST_META, HOST_META_JSON, WebSocketConfig, WebSocketListener};

pub use crate::route::policy::{PinEntry, RouteKey};

use raw::RawConfig;

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
    /// What every WebSocket listener shares: message bound, keepalive, discovery URLs.
    pub websocket: WebSocketConfig,
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
            let key = position::key_path(text, &span, &message);
            Source { path, text }.err(&span, &key, message)
        })?;
        raw.validate(text, path)
    }
}

/// The text being checked and the file it came from: turns a span of the text into an error
/// at FILE:LINE:COLUMN, and resolves the paths the text names.
struct Source<'a> {
    /// The configuration file: named in errors, and relative paths start from its directory.
    path: &'a Path,
    /// Its text, where spans point.
    text: &'a str,
}

impl Source<'_> {
    /// The error `message` about `key`, at the start of `span`.
    fn err(&self, span: &Range<usize>, key: &str, message: String) -> ConfigError {
        let (line, column) = position::line_col(self.text, span.start);
        ConfigError::Invalid {
            file: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    /// A configured file path, resolved against the configuration's directory; the file must
    /// exist.
    fn resolve(&self, p: &Spanned<PathBuf>, key: &str) -> Result<PathBuf, ConfigError> {
        let full = if p.get_ref().is_absolute() {
            p.get_ref().clone()
        } else {
            self.path
                .parent()
                .unwrap_or(Path::new("."))
                .join(p.get_ref())
        };
        if !full.is_file() {
            return Err(self.err(
                &p.span(),
                key,
                format!("file not found: {}", full.display()),
            ));
        }
        Ok(full)
    }
}

impl RawConfig {
    /// Check every section, always in the same order, and build the checked [`Config`]. The
    /// first error found is returned.
    fn validate(self, text: &str, path: &Path) -> Result<Config, ConfigError> {
        let src = Source { path, text };
        let listeners = listeners::validate_listeners(&src, &self.listener)?;
        let served = routing::validate_served_domains(
            &src,
            self.routing.get_ref(),
            !self.domain.is_empty(),
        )?;
        let mut backends = backends::validate_backends(&src, &self.backend)?;
        let (routing, domains) =
            routing::validate_routing(&src, &self.routing, &self.domain, served, &backends)?;
        let drain = drain::validate_drain(&src, &self.drain)?;
        let admission =
            admission::validate_admission(&src, &self.admission, &self.backend, &mut backends)?;
        let metrics = metrics::validate_metrics(&src, self.metrics.as_ref())?;
        let (limits, probe, health) =
            limits::validate_limits(&src, &self.limits, &self.probe, &self.health)?;
        let resumption = resumption::validate_resumption(&src, &self.resumption)?;
        let websocket = websocket::validate_websocket(&src, &self.websocket, &routing.domains)?;
        Ok(Config {
            source: path.to_path_buf(),
            listeners,
            routing,
            backends,
            metrics_bind: metrics.bind,
            metrics_token_file: metrics.token_file,
            metrics_allowed_hosts: metrics.allowed_hosts,
            log_format: self.log_format,
            log_jids: self.log_jids,
            limits,
            probe,
            domains,
            health,
            drain,
            admission,
            resumption,
            websocket,
        })
    }
}

/// A socket address written as `IP:PORT` (IPv6 in brackets); names are not resolved,
/// so that the same file means the same thing on every proxy of a fleet.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is not an IP:PORT address (IPv6 in brackets, e.g. \"[::1]:5222\")")
    })
}

/// `host:port` as a client would connect to it (a name or an IP; IPv6 in brackets).
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

#[cfg(test)]
mod tests;
