//! Every series whose labels are known before anything happens, created at zero.
//!
//! A Prometheus counter that was never incremented has no series at all, so a dashboard panel
//! over a quiet proxy shows "no data" and an alert on `rate(x{result="failed"}[5m])` cannot
//! tell "never failed" from "not scraped". The label values of most series are known at
//! start: the listeners and backends of the configuration, and the fixed words the code uses
//! for reasons, results and limits. They are all created here, at zero, when a configuration
//! is put into service (at start, and for new backends on reload).
//!
//! The lists below repeat words the code counts with; where the code has an enum
//! ([`Condition`], [`KeySource`]) the list is checked against it at compile time. The ring
//! shares, health and drain gauges are set from the configuration in `shared.rs`.

use crate::config::{Config, TlsMode};
use crate::metrics::Metrics;
use crate::route::KeySource;
use crate::xmpp::stream_error::Condition;

/// SASL mechanism labels ([`Metrics::mechanism_label`]).
const MECHANISMS: &[&str] = &[
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "ANONYMOUS",
    "HT",
    "other",
];
/// How a SASL exchange ended (`connection::negotiate`).
const SASL_OUTCOMES: &[&str] = &["success", "failure"];
/// Why and by whom a connection closed, besides a stream error's condition
/// (`relay::CloseReason` with the relay's interrupts, `connection::refuse::Failure::labels`,
/// `connection::trace`).
const CLOSES: &[(&str, &str)] = &[
    ("closed", "client"),
    ("closed", "backend"),
    ("io_error", "client"),
    ("io_error", "backend"),
    ("write_timeout", "client"),
    ("write_timeout", "backend"),
    ("half_close_timeout", "proxy"),
    ("closed_in_negotiation", "client"),
    ("closed_in_negotiation", "backend"),
    ("client_gone", "client"),
    ("source_limit", "proxy"),
    ("drain", "proxy"),
    ("node_down", "proxy"),
    ("shutdown", "proxy"),
    ("http", "client"),
    ("proxy_protocol_missing", "proxy"),
    ("proxy_protocol_invalid", "proxy"),
    ("proxy_protocol_incomplete", "proxy"),
    ("proxy_protocol_untrusted", "proxy"),
];
/// `accept()` failures (`server`).
const ACCEPT_ERRORS: &[&str] = &["emfile", "enfile", "other"];
/// What became of a front balancer's PROXY header (`connection::front`).
const PROXY_HEADER_RESULTS: &[&str] = &[
    "accepted",
    "local",
    "missing",
    "invalid",
    "incomplete",
    "untrusted",
];
/// Answers to HTTP requests on a WebSocket listener (`websocket::http`).
const HTTP_RESULTS: &[&str] = &[
    "websocket",
    "host_meta",
    "host_meta_json",
    "cors_preflight",
    "not_found",
    "unknown_host",
    "method_not_allowed",
    "upgrade_required",
    "bad_version",
    "bad_request",
    "forbidden_origin",
    "no_subprotocol",
    "bad_http",
];
/// Why the proxy closed a WebSocket (`websocket::io`).
const WEBSOCKET_CLOSES: &[&str] = &[
    "binary",
    "not_one_element",
    "invalid_utf8",
    "too_large",
    "protocol_error",
    "ping_timeout",
];
/// What checking a stream-management id a client sent back showed (`resumption`).
const RESUME_CHECKS: &[&str] = &[
    "valid",
    "other_node",
    "unknown_node",
    "bad_mac",
    "unknown_key",
    "not_wrapped",
];

/// Every stream error the proxy sends. The match fails to compile when a condition is added,
/// so this list cannot fall behind [`Condition`].
fn conditions() -> [&'static str; 11] {
    match Condition::HostUnknown {
        Condition::HostUnknown
        | Condition::InvalidNamespace
        | Condition::NotWellFormed
        | Condition::RestrictedXml
        | Condition::PolicyViolation
        | Condition::ConnectionTimeout
        | Condition::RemoteConnectionFailed
        | Condition::ResourceConstraint
        | Condition::SystemShutdown
        | Condition::SeeOtherHost(_)
        | Condition::UnsupportedVersion => {}
    }
    [
        Condition::HostUnknown,
        Condition::InvalidNamespace,
        Condition::NotWellFormed,
        Condition::RestrictedXml,
        Condition::PolicyViolation,
        Condition::ConnectionTimeout,
        Condition::RemoteConnectionFailed,
        Condition::ResourceConstraint,
        Condition::SystemShutdown,
        Condition::SeeOtherHost(String::new()),
        Condition::UnsupportedVersion,
    ]
    .map(|c| c.as_str())
}

/// Every source of a routing key, as [`conditions`] does for conditions.
fn key_sources() -> [&'static str; 9] {
    match KeySource::From {
        KeySource::From
        | KeySource::Sasl
        | KeySource::Domain
        | KeySource::Subnet
        | KeySource::Pin
        | KeySource::Tenant
        | KeySource::Random
        | KeySource::Fallback
        | KeySource::Resume => {}
    }
    [
        KeySource::From,
        KeySource::Sasl,
        KeySource::Domain,
        KeySource::Subnet,
        KeySource::Pin,
        KeySource::Tenant,
        KeySource::Random,
        KeySource::Fallback,
        KeySource::Resume,
    ]
    .map(KeySource::as_str)
}

/// The series of the listeners and of the fixed words: once, at start (listeners never change
/// on reload).
pub(crate) fn preset_start(m: &Metrics, config: &Config) {
    for l in &config.listeners {
        let name = l.name.as_str();
        let mut tls: Vec<&str> = match l.tls {
            TlsMode::Starttls => vec!["starttls"],
            TlsMode::Direct => vec!["direct"],
            TlsMode::Auto => vec!["starttls", "direct"],
        };
        if l.websocket.as_ref().is_some_and(|ws| ws.plain) {
            tls.push("plain");
        }
        for t in &tls {
            m.connections_total.with_label_values(&[name, t]);
            m.connections_open.with_label_values(&[name, t]);
        }
        if l.tls == TlsMode::Auto {
            m.connections_open.with_label_values(&[name, "pending"]);
        }
        for kind in ["full", "resumed"] {
            m.tls_handshakes_total.with_label_values(&[name, kind]);
        }
        m.streams_total.with_label_values(&[name, "tcp"]);
        if l.websocket.is_some() {
            m.streams_total.with_label_values(&[name, "websocket"]);
            for result in HTTP_RESULTS {
                m.http_requests_total.with_label_values(&[name, result]);
            }
        }
        if !l.trusted_proxies.is_empty() {
            for result in PROXY_HEADER_RESULTS {
                m.proxy_headers_total.with_label_values(&[name, result]);
            }
        }
        for error in ACCEPT_ERRORS {
            m.accept_errors_total.with_label_values(&[name, error]);
        }
    }
    for transport in ["tcp", "websocket"] {
        m.streams_open.with_label_values(&[transport]);
    }
    for mechanism in MECHANISMS {
        for outcome in SASL_OUTCOMES {
            m.sasl_total.with_label_values(&[mechanism, outcome]);
        }
    }
    for condition in conditions() {
        m.stream_errors_total.with_label_values(&[condition]);
        m.closed_total.with_label_values(&[condition, "proxy"]);
    }
    for (reason, side) in CLOSES {
        m.closed_total.with_label_values(&[reason, side]);
    }
    for reason in WEBSOCKET_CLOSES {
        m.websocket_closes_total.with_label_values(&[reason]);
    }
    for check in RESUME_CHECKS {
        m.resume_ids_total.with_label_values(&[check]);
    }
    for result in ["ok", "failed"] {
        m.config_reloads_total.with_label_values(&[result]);
    }
    for scope in [
        crate::sources::BanScope::Source,
        crate::sources::BanScope::Jid,
    ] {
        m.login_bans_total.with_label_values(&[scope.as_str()]);
    }
    for budget in [
        crate::overload::Budget::Memory,
        crate::overload::Budget::Descriptors,
    ] {
        m.overload_refusals_total
            .with_label_values(&[budget.as_str()]);
        m.overloaded.with_label_values(&[budget.as_str()]);
    }
}

/// The series of each backend of `config` (at start and after every reload, so a backend
/// added by a reload has them too; a removed backend keeps what it counted).
pub(crate) fn preset_backends(m: &Metrics, config: &Config) {
    for b in &config.backends {
        let name = b.name.as_str();
        m.backend_connections_open.with_label_values(&[name]);
        m.backend_connect_seconds.with_label_values(&[name]);
        m.backend_connect_failures_total.with_label_values(&[name]);
        m.feature_mismatch_total.with_label_values(&[name]);
        m.admission_refused_total.with_label_values(&[name]);
        m.drain_redirects_total.with_label_values(&[name]);
        m.sm_ids_wrapped_total.with_label_values(&[name]);
        for result in SASL_OUTCOMES {
            m.backend_logins_total.with_label_values(&[name, result]);
        }
        for source in key_sources() {
            m.routed_total.with_label_values(&[name, source]);
        }
        for direction in ["client_to_backend", "backend_to_client"] {
            m.relayed_bytes_total.with_label_values(&[name, direction]);
        }
        for result in ["ok", "failed"] {
            m.probes_total.with_label_values(&[name, result]);
        }
        for state in ["up", "down"] {
            m.health_transitions_total.with_label_values(&[name, state]);
        }
        for kind in ["legacy", "inline"] {
            for result in ["resumed", "failed"] {
                m.resumes_total.with_label_values(&[name, kind, result]);
            }
        }
    }
}
