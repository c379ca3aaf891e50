//! `[sources]`, `[sources.logins]` and `[overload]`: what one client address (or network) may
//! make the proxy spend, how failed logins slow and then ban their source, and the process-wide
//! budget past which new unauthenticated connections are shed.

use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawOverload, RawSources};
use super::source::{ConfigError, Source, parse_net};

/// Per-source limits. A source is the client's address (after a trusted PROXY header) cut to
/// its network (`ipv4_prefix`, `ipv6_prefix`). A limit of 0 is off.
#[derive(Clone, Debug)]
pub struct SourceLimits {
    /// Bits of an IPv4 address that make one source (32: every address on its own).
    pub ipv4_prefix: u8,
    /// Bits of an IPv6 address that make one source (64: one subscriber's network).
    pub ipv6_prefix: u8,
    /// Connections open at once from one source.
    pub max_connections: u32,
    /// Connections from one source that have not finished logging in.
    pub max_unauthenticated: u32,
    /// New connections per second from one source (token bucket), and its burst.
    pub connections_per_second: f64,
    /// Tokens the connection bucket holds when full.
    pub connections_burst: u32,
    /// Full TLS handshakes per second from one source (resumed ones are free), and its burst.
    pub tls_handshakes_per_second: f64,
    /// Tokens the handshake bucket holds when full.
    pub tls_handshakes_burst: u32,
    /// Sources no per-source limit or source ban applies to (monitoring, NAT gateways).
    pub allow: Vec<IpNet>,
    /// Sources remembered while they have no open connection (their rates, failures and
    /// bans); past it the least recently seen are forgotten.
    pub max_idle_sources: usize,
    /// What failed logins cost their source and their account.
    pub logins: LoginLimits,
}

/// Failed-login throttling. Counts are kept per source and per claimed account (bare JID,
/// kept only as a keyed hash) over `window`; a success resets both. A threshold of 0 is off.
#[derive(Clone, Debug)]
pub struct LoginLimits {
    /// How long a failure counts.
    pub window: Duration,
    /// Failures from one source after which each further attempt waits.
    pub delay_after: u32,
    /// The wait for the first attempt past a threshold; each further failure adds as much.
    pub delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Failures from one source after which it is banned for `ban_time`.
    pub ban_after: u32,
    /// Failures naming one account after which each further attempt on it waits.
    pub jid_delay_after: u32,
    /// Failures naming one account after which it is refused for `ban_time` (off by default:
    /// anyone could lock a user out by guessing wrong on purpose).
    pub jid_ban_after: u32,
    /// How long a ban lasts.
    pub ban_time: Duration,
    /// Accounts remembered at once; past it the least recently failed are forgotten.
    pub max_jids: usize,
}

/// The process-wide budget past which new unauthenticated connections are refused (logged-in
/// ones go on).
#[derive(Clone, Debug, Default)]
pub struct OverloadConfig {
    /// Resident memory, in bytes (None: no memory budget).
    pub max_memory: Option<u64>,
    /// Open descriptors (None: 90% of the open-file limit the process runs with).
    pub max_descriptors: Option<usize>,
}

/// Check the prefixes, rates and the allow-list.
pub(super) fn validate_sources(
    src: &Source<'_>,
    s: &RawSources,
) -> Result<SourceLimits, ConfigError> {
    for (key, v, max) in [
        ("sources.ipv4_prefix", &s.ipv4_prefix, 32),
        ("sources.ipv6_prefix", &s.ipv6_prefix, 128),
    ] {
        if *v.get_ref() > max {
            return Err(src.err(&v.span(), key, format!("must be at most {max} bits")));
        }
    }
    for (key, v) in [
        ("sources.connections_per_second", &s.connections_per_second),
        (
            "sources.tls_handshakes_per_second",
            &s.tls_handshakes_per_second,
        ),
    ] {
        let r = *v.get_ref();
        if !(r.is_finite() && r >= 0.0) {
            return Err(src.err(
                &v.span(),
                key,
                "must be a number of connections per second, 0 for no limit".into(),
            ));
        }
    }
    let allow = s
        .allow
        .iter()
        .map(|a| parse_net(a.get_ref()).map_err(|m| src.err(&a.span(), "sources.allow", m)))
        .collect::<Result<Vec<_>, _>>()?;
    let l = &s.logins;
    Ok(SourceLimits {
        ipv4_prefix: *s.ipv4_prefix.get_ref(),
        ipv6_prefix: *s.ipv6_prefix.get_ref(),
        max_connections: s.max_connections,
        max_unauthenticated: s.max_unauthenticated,
        connections_per_second: *s.connections_per_second.get_ref(),
        connections_burst: s.connections_burst.max(1),
        tls_handshakes_per_second: *s.tls_handshakes_per_second.get_ref(),
        tls_handshakes_burst: s.tls_handshakes_burst.max(1),
        allow,
        max_idle_sources: s.max_idle_sources.max(16),
        logins: LoginLimits {
            window: l.window.max(Duration::from_secs(1)),
            delay_after: l.delay_after,
            delay: l.delay,
            max_delay: l.max_delay.max(l.delay),
            ban_after: l.ban_after,
            jid_delay_after: l.jid_delay_after,
            jid_ban_after: l.jid_ban_after,
            ban_time: l.ban_time,
            max_jids: l.max_jids.max(16),
        },
    })
}

/// Check the memory budget's size syntax ("512 MiB", "2GiB", a number of bytes).
pub(super) fn validate_overload(
    src: &Source<'_>,
    o: &RawOverload,
) -> Result<OverloadConfig, ConfigError> {
    let max_memory = match &o.max_memory {
        Some(m) => Some(
            m.get_ref()
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|_| {
                    src.err(
                        &m.span(),
                        "overload.max_memory",
                        format!("{:?} is not a size (\"512 MiB\", \"2 GiB\")", m.get_ref()),
                    )
                })?,
        ),
        None => None,
    };
    Ok(OverloadConfig {
        max_memory,
        max_descriptors: o.max_descriptors,
    })
}
