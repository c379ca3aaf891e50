//! Every metric the proxy exports, defined in one place on one registry.
//!
//! Labels are bounded sets (listener names, backend names, fixed reason words): never a JID
//! or an IP address, so a scrape stays small however many users connect.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The proxy's metrics. Cheap to clone handles live inside; share it behind an `Arc`.
pub struct Metrics {
    /// The registry `/metrics` renders; private so nothing registers behind our back.
    registry: Registry,
    /// Client connections accepted, by listener and TLS style.
    pub connections_total: IntCounterVec,
    /// Client connections open now, by listener.
    pub connections_open: IntGaugeVec,
    /// Relayed connections open now, by backend.
    pub backend_connections_open: IntGaugeVec,
    /// Connections routed, by backend and by what the key came from.
    pub routed_total: IntCounterVec,
    /// Connections closed, by reason and by the side that ended them.
    pub closed_total: IntCounterVec,
    /// Time from accept to the end of authentication (when the byte relay takes over).
    pub negotiation_seconds: Histogram,
    /// Time to open a TCP connection to a backend.
    pub backend_connect_seconds: HistogramVec,
    /// Backend connection attempts that failed, by backend.
    pub backend_connect_failures_total: IntCounterVec,
    /// Bytes relayed, by backend and direction.
    pub relayed_bytes_total: IntCounterVec,
    /// Stream errors the proxy itself sent to clients, by condition.
    pub stream_errors_total: IntCounterVec,
    /// SASL outcomes seen during negotiation, by mechanism and outcome.
    pub sasl_total: IntCounterVec,
    /// Stream-feature probes, by backend and result.
    pub probes_total: IntCounterVec,
    /// Logins whose backend offered other SASL mechanisms than the ones the client was shown.
    pub feature_mismatch_total: IntCounterVec,
    /// 1 while a backend passes its health checks, else 0.
    pub backend_healthy: IntGaugeVec,
    /// 1 while a backend is draining, else 0.
    pub backend_draining: IntGaugeVec,
    /// Health transitions, by backend and new state.
    pub health_transitions_total: IntCounterVec,
    /// Logins refused by admission control (queue full or waited too long), by backend.
    pub admission_refused_total: IntCounterVec,
    /// Configuration reloads, by result.
    pub config_reloads_total: IntCounterVec,
    /// Clients asked to move off a draining node, by backend.
    pub drain_redirects_total: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        }
        let negotiation_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "xmpp_lb_negotiation_duration_seconds",
                "Time from accepting a client to the end of its authentication.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(negotiation_seconds.clone()))
            .expect("unique metric");
        let backend_connect_seconds = HistogramVec::new(
            HistogramOpts::new(
                "xmpp_lb_backend_connect_duration_seconds",
                "Time to open a TCP connection to a backend.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["backend"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(backend_connect_seconds.clone()))
            .expect("unique metric");
        Metrics {
            connections_total: counter(
                &registry,
                "xmpp_lb_connections_total",
                "Client connections accepted.",
                &["listener", "tls"],
            ),
            connections_open: gauge(
                &registry,
                "xmpp_lb_connections_open",
                "Client connections open now.",
                &["listener"],
            ),
            backend_connections_open: gauge(
                &registry,
                "xmpp_lb_backend_connections_open",
                "Client connections relayed to each backend now.",
                &["backend"],
            ),
            routed_total: counter(
                &registry,
                "xmpp_lb_routed_total",
                "Connections routed to a backend, by the source of the routing key.",
                &["backend", "source"],
            ),
            closed_total: counter(
                &registry,
                "xmpp_lb_connections_closed_total",
                "Client connections closed, by reason and the side that ended them.",
                &["reason", "side"],
            ),
            negotiation_seconds,
            backend_connect_seconds,
            backend_connect_failures_total: counter(
                &registry,
                "xmpp_lb_backend_connect_failures_total",
                "Failed attempts to connect a backend.",
                &["backend"],
            ),
            relayed_bytes_total: counter(
                &registry,
                "xmpp_lb_relayed_bytes_total",
                "Bytes relayed between clients and backends.",
                &["backend", "direction"],
            ),
            stream_errors_total: counter(
                &registry,
                "xmpp_lb_stream_errors_sent_total",
                "Stream errors the proxy sent to clients, by condition.",
                &["condition"],
            ),
            sasl_total: counter(
                &registry,
                "xmpp_lb_sasl_outcomes_total",
                "SASL outcomes seen while relaying authentication, by mechanism.",
                &["mechanism", "outcome"],
            ),
            probes_total: counter(
                &registry,
                "xmpp_lb_feature_probes_total",
                "Stream-feature probes of backends, by result.",
                &["backend", "result"],
            ),
            feature_mismatch_total: counter(
                &registry,
                "xmpp_lb_feature_mismatch_total",
                "Logins whose backend offered other SASL mechanisms than the client was shown.",
                &["backend"],
            ),
            backend_healthy: gauge(
                &registry,
                "xmpp_lb_backend_healthy",
                "1 while the backend passes its health checks, else 0.",
                &["backend"],
            ),
            backend_draining: gauge(
                &registry,
                "xmpp_lb_backend_draining",
                "1 while the backend is draining, else 0.",
                &["backend"],
            ),
            health_transitions_total: counter(
                &registry,
                "xmpp_lb_backend_health_transitions_total",
                "Backends going up or down, by the state they went to.",
                &["backend", "state"],
            ),
            admission_refused_total: counter(
                &registry,
                "xmpp_lb_admission_refused_total",
                "Logins refused by admission control (queue full or waited too long).",
                &["backend"],
            ),
            config_reloads_total: counter(
                &registry,
                "xmpp_lb_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            ),
            drain_redirects_total: counter(
                &registry,
                "xmpp_lb_drain_redirects_total",
                "Connected clients asked to move off a draining backend.",
                &["backend"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }

    /// A SASL mechanism name as a bounded label: known families, everything else "other".
    pub fn mechanism_label(mechanism: &str) -> &'static str {
        match mechanism {
            "PLAIN" => "PLAIN",
            "SCRAM-SHA-1" => "SCRAM-SHA-1",
            "SCRAM-SHA-256" => "SCRAM-SHA-256",
            "SCRAM-SHA-512" => "SCRAM-SHA-512",
            "ANONYMOUS" => "ANONYMOUS",
            m if m.starts_with("HT-") => "HT",
            _ => "other",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
