//! What a source is (a client address cut to its network), whether it is allow-listed, and
//! which limit refused it: the vocabulary the table, the login counts and their callers share.

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ipnet::IpNet;

use crate::config::SourceLimits;

/// Which limit refused a connection: the `limit` label of
/// `xmpp_lb_source_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections` open from the source.
    Connections,
    /// `max_unauthenticated` not yet logged in from the source.
    Unauthenticated,
    /// `connections_per_second` exceeded.
    ConnectionRate,
    /// `tls_handshakes_per_second` exceeded.
    TlsHandshakeRate,
    /// The source is banned for failed logins.
    Banned,
}

impl Limit {
    /// Every limit, for metrics exported at zero.
    pub const ALL: [Limit; 5] = [
        Limit::Connections,
        Limit::Unauthenticated,
        Limit::ConnectionRate,
        Limit::TlsHandshakeRate,
        Limit::Banned,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Unauthenticated => "unauthenticated",
            Limit::ConnectionRate => "connection_rate",
            Limit::TlsHandshakeRate => "tls_handshake_rate",
            Limit::Banned => "banned",
        }
    }

    /// What the client is told, where it can be told (a `<policy-violation/>` text).
    pub fn text(self) -> &'static str {
        match self {
            Limit::Connections => "too many connections from your network",
            Limit::Unauthenticated => "too many connections from your network still logging in",
            Limit::ConnectionRate => "too many new connections from your network; slow down",
            Limit::TlsHandshakeRate => "too many TLS handshakes from your network; slow down",
            Limit::Banned => "too many failed logins from your network; try again later",
        }
    }
}

/// A lock that a panicking holder does not poison for everyone else.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The source `ip` belongs to under `limits`: its network, cut to the configured prefix.
pub fn source_of(limits: &SourceLimits, ip: IpAddr) -> IpNet {
    // An IPv4 client reaching an IPv6 socket is still an IPv4 client.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let prefix = match ip {
        IpAddr::V4(_) => limits.ipv4_prefix,
        IpAddr::V6(_) => limits.ipv6_prefix,
    };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// Whether `ip` is on the allow-list (no per-source limit or source ban applies).
pub(super) fn allowed(limits: &SourceLimits, ip: IpAddr) -> bool {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    limits
        .allow
        .iter()
        .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
}
