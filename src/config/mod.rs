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
use std::path::{Path, PathBuf};

mod admission;
mod backends;
mod channel_binding;
mod drain;
mod groups;
mod limits;
mod listeners;
mod metrics;
mod pins;
mod position;
mod raw;
mod resumption;
mod routing;
mod source;
mod sources;
mod values;
mod websocket;

pub use admission::AdmissionDefaults;
pub use backends::{BackendConfig, LinkConfig, LinkOverrides};
pub use drain::DrainConfig;
pub use groups::{BackendGroupConfig, GroupMember, GroupMembers, GroupQuery};
pub use limits::{HealthConfig, Limits, ProbeConfig};
pub use listeners::{CertPair, ListenerConfig};
pub(crate) use pins::parse_pin_file;
pub use resumption::ResumptionConfig;
pub use routing::{DomainConfig, RoutingConfig};
pub use source::ConfigError;
use source::Source;
pub use sources::{LoginLimits, OverloadConfig, SourceLimits};
pub use values::{BackendTls, ChannelBinding, DrainMode, LogFormat, ProxyProtocol, TlsMode};
pub use websocket::{HOST_META, HOST_META_JSON, WebSocketConfig, WebSocketListener};

pub use crate::route::policy::{PinEntry, RouteKey};

use raw::RawConfig;

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
    /// Groups of nodes found in DNS. Each domain's `backends` may name a group; the
    /// configuration in service has them replaced by their members ([`Config::expand`]).
    pub groups: Vec<BackendGroupConfig>,
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
    /// What one client address or network may open and how failed logins are throttled.
    pub sources: SourceLimits,
    /// The process-wide budget past which new unauthenticated connections are refused.
    pub overload: OverloadConfig,
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

impl Config {
    /// The configuration in service: this file's configuration with each group replaced by
    /// its members (appended to the backends, and in place of the group's name in every
    /// domain's list). The file's configuration itself is kept, for the next change.
    pub fn expand(&self, members: &GroupMembers) -> Config {
        let mut config = self.clone();
        let lists = config.domains.iter_mut().map(|d| &mut d.backends);
        groups::expand(&mut config.backends, lists, &self.groups, members);
        config
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
        let mut backends =
            backends::validate_backends(&src, &self.backend, !self.backend_group.is_empty())?;
        let groups = groups::validate_groups(&src, &self.backend_group, &backends)?;
        let (routing, domains) = routing::validate_routing(
            &src,
            &self.routing,
            &self.domain,
            served,
            &backends,
            &groups,
        )?;
        channel_binding::validate_channel_binding(&src, &domains, &backends, &self.backend)?;
        let drain = drain::validate_drain(&src, &self.drain)?;
        let admission =
            admission::validate_admission(&src, &self.admission, &self.backend, &mut backends)?;
        let metrics = metrics::validate_metrics(&src, self.metrics.as_ref())?;
        let (limits, probe, health) =
            limits::validate_limits(&src, &self.limits, &self.probe, &self.health)?;
        let resumption = resumption::validate_resumption(&src, &self.resumption)?;
        let websocket = websocket::validate_websocket(&src, &self.websocket, &routing.domains)?;
        let sources = sources::validate_sources(&src, &self.sources)?;
        let overload = sources::validate_overload(&src, &self.overload)?;
        Ok(Config {
            source: path.to_path_buf(),
            listeners,
            routing,
            backends,
            groups,
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
            sources,
            overload,
        })
    }
}

#[cfg(test)]
mod tests;
