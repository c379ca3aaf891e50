//! What one connection did, for its access-log line, and the counts it is kept in while it
//! lives.
//!
//! [`Trace`] only records: the phases write into it as they learn things, and only
//! [`Trace::log`] reads it, once, when the connection ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::refuse::Failure;
use crate::metrics::Metrics;
use crate::relay::RelayStats;
use crate::route::KeySource;
use crate::runtime::Shared;

/// The access-log record of one connection.
#[derive(Default)]
pub(crate) struct Trace {
    /// "starttls" or "direct", once known ("plain" for HTTP without TLS).
    pub(crate) tls: &'static str,
    /// How the client speaks XMPP: "tcp" or "websocket", or "http" for a connection that
    /// only made HTTP requests (discovery, refused handshakes). Empty until known.
    pub(crate) transport: &'static str,
    /// The client's address as a front balancer's PROXY header gave it (else the socket's).
    pub(crate) client: Option<SocketAddr>,
    /// The front balancer the connection came through, if it sent a PROXY header.
    pub(crate) via: Option<SocketAddr>,
    /// The domain the client asked for, once known.
    pub(crate) domain: Option<String>,
    /// Backend name, once routed.
    pub(crate) backend: Option<String>,
    /// What the routing key came from.
    pub(crate) source: Option<KeySource>,
    /// The user's normalized bare JID, once the client names one (header `from` or SASL).
    /// Logged only with `log_jids = true`: a JID is personal data.
    pub(crate) jid: Option<String>,
    /// Relay counters, if the relay ran.
    pub(crate) relay: Option<RelayStats>,
}

impl Trace {
    /// Count the connection's end and write its access-log line (target `xmpp_lb::access`):
    /// who connected from where, how it was routed, for how long, how many bytes, and how it
    /// ended. It never holds a password, a SASL payload or a stanza, and names the user only
    /// with `log_jids`.
    pub(crate) fn log(
        self,
        metrics: &Metrics,
        listener: &str,
        peer: SocketAddr,
        started: Instant,
        result: &Result<(), Failure>,
        log_jids: bool,
    ) {
        let (reason, side) = match (result, &self.relay) {
            (Ok(()), Some(stats)) => (stats.reason.reason(), stats.reason.side()),
            (Ok(()), None) if self.transport == "http" => ("http", "client"),
            (Ok(()), None) => ("closed_in_negotiation", "backend"),
            (Err(failure), _) => failure.labels(),
        };
        metrics
            .closed_total
            .with_label_values(&[reason, side])
            .inc();
        if result.is_err() && side == "proxy" {
            metrics
                .listener_refusals_total
                .with_label_values(&[listener, reason])
                .inc();
        }
        let (up, down) = self
            .relay
            .map_or((0, 0), |s| (s.client_to_backend, s.backend_to_client));
        // A connection refused by a per-source limit is counted, not logged: a flood of them
        // is what the limit is for, and the per-source table logs them rate-limited.
        if matches!(result, Err(Failure::Limited(_))) {
            return;
        }
        let detail = result.as_ref().err().map_or("", Failure::detail);
        tracing::info!(
            target: "xmpp_lb::access",
            client = %self.client.unwrap_or(peer),
            via = %self.via.map_or_else(|| "-".to_string(), |v| v.to_string()),
            listener = %listener,
            tls = self.tls,
            transport = if self.transport.is_empty() { "-" } else { self.transport },
            domain = self.domain.as_deref().unwrap_or("-"),
            key_source = self.source.map_or("-", |s| s.as_str()),
            backend = self.backend.as_deref().unwrap_or("-"),
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_up = up,
            bytes_down = down,
            close_reason = reason,
            closed_by = side,
            detail,
            jid = if log_jids { self.jid.as_deref() } else { None },
            "connection closed"
        );
    }
}

/// The counts a live connection is kept in. Guards, so that even a panicking connection task
/// leaves them right.
pub(crate) struct Counted {
    /// In `Shared::negotiating` until the relay starts (shutdown waits for logins under way).
    pub(crate) negotiating: Option<NegotiatingGuard>,
    /// In `xmpp_lb_connections_open` under its listener and TLS style.
    pub(crate) open: GaugeGuard,
    /// In its source's counts (none for an allow-listed source), until it ends; counted as
    /// not logged in until the relay starts.
    pub(crate) source: Option<crate::sources::SourceTicket>,
}

/// Counts a connection as negotiating until dropped.
pub(crate) struct NegotiatingGuard(Arc<Shared>);

impl NegotiatingGuard {
    pub(crate) fn new(shared: &Arc<Shared>) -> NegotiatingGuard {
        shared.negotiating.fetch_add(1, Ordering::Relaxed);
        NegotiatingGuard(shared.clone())
    }
}

impl Drop for NegotiatingGuard {
    fn drop(&mut self) {
        self.0.negotiating.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements a gauge when dropped (panic-safe open-connection counts).
pub(crate) struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    /// Count one more on `gauge` until the guard drops.
    pub(crate) fn inc(gauge: prometheus::IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
