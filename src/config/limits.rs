//! `[limits]`, `[probe]` and `[health]`: bounds on time and memory before the relay, and how
//! often nodes are asked what they offer and whether they are up.

use std::time::Duration;

use super::raw::{RawHealth, RawLimits, RawProbe};
use super::source::{ConfigError, Source};

/// The largest `limits.max_header_bytes` accepted. A stream header is one start tag of a few
/// hundred bytes; the proxy keeps its namespaces for as long as the stream lives.
pub(crate) const MAX_HEADER_BYTES_BOUND: usize = 64 * 1024;

/// The largest `limits.max_prerouting_element_bytes` and `limits.max_negotiation_element_bytes`
/// accepted. Every negotiating connection may buffer one such element and parse it (a parse
/// allocates up to a few times the element's size), so the bound caps what a client can make
/// the proxy hold before it has logged in; the largest real negotiation elements (stream
/// features, a SASL2 `<authenticate/>`) are a few kilobytes.
pub(crate) const MAX_ELEMENT_BYTES_BOUND: usize = 1024 * 1024;

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
    /// How long a relayed peer may leave bytes for it unread (it stopped reading, or its
    /// network is gone) before its connection is closed.
    pub write_timeout: Duration,
}

/// Feature probing settings.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// How often the cached stream features of each domain are refreshed.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
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
    /// Whether the sessions relayed to a node are closed when it becomes unhealthy, so that
    /// no client waits on a node that stopped answering (its clients reconnect elsewhere, or
    /// resume on it when it is back).
    pub close_sessions_on_down: bool,
}

/// Check the size bounds; timeouts, counts and the probe and health settings need none (a
/// zero count is taken as one).
pub(super) fn validate_limits(
    src: &Source<'_>,
    l: &RawLimits,
    probe: &RawProbe,
    health: &RawHealth,
) -> Result<(Limits, ProbeConfig, HealthConfig), ConfigError> {
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
            return Err(src.err(&v.span(), name, "must be at least 512 bytes".into()));
        }
        if *v.get_ref() > max {
            let unit = if max >= 1 << 20 {
                format!("{} MiB", max >> 20)
            } else {
                format!("{} KiB", max >> 10)
            };
            return Err(src.err(
                &v.span(),
                name,
                format!("must be at most {max} bytes ({unit})"),
            ));
        }
    }
    let limits = Limits {
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
        write_timeout: l.write_timeout.max(Duration::from_secs(1)),
    };
    let probe = ProbeConfig {
        interval: probe.interval,
        timeout: probe.timeout,
    };
    let health = HealthConfig {
        interval: health.interval,
        timeout: health.timeout,
        rise: health.rise.max(1),
        fall: health.fall.max(1),
        close_sessions_on_down: health.close_sessions_on_down,
    };
    Ok((limits, probe, health))
}
