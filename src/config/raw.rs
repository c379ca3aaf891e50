//! The file as written: serde structs that reject unknown keys, with the spans of the values
//! later checks may have to point at, and the defaults of every optional table.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::values::{BackendTls, ChannelBinding, DrainMode, LogFormat, ProxyProtocol, TlsMode};
use crate::route::policy::{PinEntry, RouteKey};

/// The file as written (before checks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listener: Vec<RawListener>,
    pub(super) routing: Spanned<RawRouting>,
    #[serde(default)]
    pub(super) backend: Vec<RawBackend>,
    #[serde(default)]
    pub(super) backend_group: Vec<RawBackendGroup>,
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) probe: RawProbe,
    #[serde(default)]
    pub(super) domain: Vec<RawDomain>,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) drain: RawDrain,
    #[serde(default)]
    pub(super) admission: RawAdmission,
    #[serde(default)]
    pub(super) resumption: RawResumption,
    #[serde(default)]
    pub(super) log_format: LogFormat,
    #[serde(default)]
    pub(super) log_jids: bool,
    #[serde(default)]
    pub(super) websocket: RawWebSocket,
    #[serde(default)]
    pub(super) sources: RawSources,
    #[serde(default)]
    pub(super) overload: RawOverload,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Spanned<String>,
    pub(super) bind: Spanned<Vec<Spanned<String>>>,
    pub(super) tls: TlsMode,
    pub(super) cert: Spanned<PathBuf>,
    pub(super) key: Spanned<PathBuf>,
    #[serde(default)]
    pub(super) extra_cert: Vec<RawCertPair>,
    #[serde(default = "off")]
    pub(super) accept_proxy_protocol: Spanned<bool>,
    #[serde(default)]
    pub(super) trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) websocket: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) websocket_origins: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) websocket_plain: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) websocket_forwarded_for: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[websocket]`: what every WebSocket listener shares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWebSocket {
    pub(super) max_message_bytes: Option<Spanned<usize>>,
    pub(super) ping_interval: Option<Spanned<String>>,
    pub(super) ping_timeout: Option<Spanned<String>>,
    pub(super) urls: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertPair {
    pub(super) cert: Spanned<PathBuf>,
    pub(super) key: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    pub(super) key: Option<Spanned<RouteKey>>,
    pub(super) keys: Option<Spanned<Vec<RouteKey>>>,
    #[serde(default = "no_domains")]
    pub(super) domains: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_v4_prefix")]
    pub(super) ipv4_prefix: Spanned<u8>,
    #[serde(default = "default_v6_prefix")]
    pub(super) ipv6_prefix: Spanned<u8>,
    pub(super) tenant_pattern: Option<Spanned<String>>,
    pub(super) balance_factor: Option<Spanned<f64>>,
    pub(super) pins: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) pin: Vec<Spanned<PinEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomain {
    pub(super) name: Spanned<String>,
    pub(super) backends: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) key: Option<Spanned<RouteKey>>,
    pub(super) keys: Option<Spanned<Vec<RouteKey>>>,
    pub(super) tenant_pattern: Option<Spanned<String>>,
    pub(super) balance_factor: Option<Spanned<f64>>,
    pub(super) proxy_protocol: Option<ProxyProtocol>,
    pub(super) backend_tls: Option<BackendTls>,
    pub(super) tls_server_name: Option<Spanned<String>>,
    pub(super) tls_ca: Option<Spanned<PathBuf>>,
    pub(super) tls_verify: Option<bool>,
    pub(super) channel_binding: Option<ChannelBinding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealth {
    #[serde(with = "humantime_serde")]
    pub(super) interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) timeout: Duration,
    pub(super) rise: u32,
    pub(super) fall: u32,
    pub(super) close_sessions_on_down: bool,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 2,
            close_sessions_on_down: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawResumption {
    pub(super) sm_key_files: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    pub(super) tls_ticket_key_files: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    pub(super) tls_ticket_rotation: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDrain {
    pub(super) mode: DrainMode,
    pub(super) rate: Spanned<f64>,
    pub(super) redirect_to: Option<Spanned<String>>,
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
pub(super) struct RawAdmission {
    pub(super) max_negotiations: Option<usize>,
    pub(super) max_logins_per_second: Option<Spanned<f64>>,
    pub(super) queue: usize,
    #[serde(with = "humantime_serde")]
    pub(super) queue_timeout: Duration,
    pub(super) overflow_redirect: Option<Spanned<String>>,
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
pub(super) struct RawBackend {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    #[serde(default = "default_weight")]
    pub(super) weight: Spanned<u32>,
    pub(super) max_negotiations: Option<usize>,
    pub(super) max_logins_per_second: Option<Spanned<f64>>,
    pub(super) proxy_protocol: Option<ProxyProtocol>,
    pub(super) backend_tls: Option<BackendTls>,
    pub(super) tls_server_name: Option<Spanned<String>>,
    pub(super) tls_ca: Option<Spanned<PathBuf>>,
    pub(super) tls_verify: Option<bool>,
    pub(super) channel_binding: Option<ChannelBinding>,
}

/// `[[backend_group]]`: nodes found in DNS (SRV, or A/AAAA of a host name plus a port).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendGroup {
    pub(super) name: Spanned<String>,
    pub(super) srv: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<u16>>,
    pub(super) nameservers: Option<Vec<Spanned<String>>>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) min_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) max_interval: Option<Duration>,
    pub(super) weight: Option<Spanned<u32>>,
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    #[serde(default = "default_metrics_bind")]
    pub(super) bind: Spanned<String>,
    pub(super) token_file: Option<Spanned<PathBuf>>,
    pub(super) allowed_hosts: Option<Vec<Spanned<String>>>,
}

/// Loopback: the admin endpoints can drain nodes and reload the configuration, so they are
/// reachable from elsewhere only when an operator says so.
fn default_metrics_bind() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9464".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    #[serde(with = "humantime_serde")]
    pub(super) prerouting_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) negotiation_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) tls_handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) backend_connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) half_close_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) shutdown_grace: Duration,
    pub(super) max_header_bytes: Spanned<usize>,
    pub(super) max_prerouting_element_bytes: Spanned<usize>,
    pub(super) max_negotiation_element_bytes: Spanned<usize>,
    pub(super) max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub(super) write_timeout: Duration,
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
            write_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProbe {
    #[serde(with = "humantime_serde")]
    pub(super) interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) timeout: Duration,
}

impl Default for RawProbe {
    fn default() -> Self {
        RawProbe {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSources {
    pub(super) ipv4_prefix: Spanned<u8>,
    pub(super) ipv6_prefix: Spanned<u8>,
    pub(super) max_connections: u32,
    pub(super) max_unauthenticated: u32,
    pub(super) connections_per_second: Spanned<f64>,
    pub(super) connections_burst: u32,
    pub(super) tls_handshakes_per_second: Spanned<f64>,
    pub(super) tls_handshakes_burst: u32,
    pub(super) allow: Vec<Spanned<String>>,
    pub(super) max_idle_sources: usize,
    pub(super) logins: RawLogins,
}

impl Default for RawSources {
    fn default() -> Self {
        RawSources {
            ipv4_prefix: Spanned::new(0..0, 24),
            ipv6_prefix: Spanned::new(0..0, 64),
            max_connections: 1000,
            max_unauthenticated: 200,
            connections_per_second: Spanned::new(0..0, 50.0),
            connections_burst: 200,
            tls_handshakes_per_second: Spanned::new(0..0, 50.0),
            tls_handshakes_burst: 200,
            allow: vec![
                Spanned::new(0..0, "127.0.0.0/8".into()),
                Spanned::new(0..0, "::1".into()),
            ],
            max_idle_sources: 65_536,
            logins: RawLogins::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLogins {
    #[serde(with = "humantime_serde")]
    pub(super) window: Duration,
    pub(super) delay_after: u32,
    #[serde(with = "humantime_serde")]
    pub(super) delay: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) max_delay: Duration,
    pub(super) ban_after: u32,
    pub(super) jid_delay_after: u32,
    pub(super) jid_ban_after: u32,
    #[serde(with = "humantime_serde")]
    pub(super) ban_time: Duration,
    pub(super) max_jids: usize,
}

impl Default for RawLogins {
    fn default() -> Self {
        RawLogins {
            window: Duration::from_secs(600),
            delay_after: 5,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            ban_after: 20,
            jid_delay_after: 5,
            jid_ban_after: 0,
            ban_time: Duration::from_secs(900),
            max_jids: 65_536,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOverload {
    pub(super) max_memory: Option<Spanned<String>>,
    pub(super) max_descriptors: Option<usize>,
}
