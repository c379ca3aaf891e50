//! Every metric the proxy exports, defined in one place on one registry.
//!
//! Labels are bounded sets (listener names, backend names, configured domains, fixed reason
//! words): never a JID or an IP address, so a scrape stays small however many users connect.
//! Every metric is registered through one helper that also records its [`Definition`], so
//! the documentation test (docs/metrics.md) and the dashboard test (grafana/xmpp-lb.json) see
//! every metric, including the labelled ones a fresh process has no series of yet.

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The Prometheus type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum` and `_count` series).
    Histogram,
}

impl Kind {
    /// The word the exposition format's `# TYPE` line uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// What one registered metric is: enough to document it and to check queries against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// The metric family name (without `_bucket`/`_sum`/`_count` for histograms).
    pub name: String,
    /// Its type.
    pub kind: Kind,
    /// Its help text.
    pub help: String,
    /// Its label names, in declaration order.
    pub labels: Vec<String>,
}

/// The proxy's metrics. Cheap to clone handles live inside; share it behind an `Arc`.
pub struct Metrics {
    /// The registry `/metrics` renders; private so nothing registers behind our back.
    registry: Registry,
    /// What was registered, in registration order.
    definitions: Vec<Definition>,
    /// Client connections accepted, by listener and TLS style.
    pub connections_total: IntCounterVec,
    /// Client TLS handshakes completed, by listener and kind (`full` or `resumed`).
    pub tls_handshakes_total: IntCounterVec,
    /// Client connections open now, by listener and TLS style (`pending` on a `tls = "auto"`
    /// listener until the first byte shows which).
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
    /// The same outcomes by the backend that answered (logins per node, for the status page
    /// and per-node alerts).
    pub backend_logins_total: IntCounterVec,
    /// Connections the proxy refused or ended before the relay, by listener and reason.
    pub listener_refusals_total: IntCounterVec,
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
    /// DNS lookups of backend groups, by group and result (`ok`, `failed`).
    pub dns_lookups_total: IntCounterVec,
    /// Members of each backend group in service (the last good DNS answer).
    pub dns_group_members: IntGaugeVec,
    /// Clients asked to move off a draining node, by backend.
    pub drain_redirects_total: IntCounterVec,
    /// PROXY protocol headers from front balancers, by listener and what became of them.
    pub proxy_headers_total: IntCounterVec,
    /// HTTP requests on WebSocket listeners, by listener and result (refusals by reason).
    pub http_requests_total: IntCounterVec,
    /// WebSocket connections the proxy closed for something the client did, by reason.
    pub websocket_closes_total: IntCounterVec,
    /// XMPP streams started (past the front: TLS, or the WebSocket handshake), by transport.
    pub streams_total: IntCounterVec,
    /// XMPP streams open now, by transport (`tcp`, `websocket`).
    pub streams_open: IntGaugeVec,
    /// Stream-management ids wrapped on their way to a client (resumable sessions), by backend.
    pub sm_ids_wrapped_total: IntCounterVec,
    /// Stream-management ids clients sent back to resume, by what checking them showed.
    pub resume_ids_total: IntCounterVec,
    /// Resumption attempts answered by a node, by backend, style and result.
    pub resumes_total: IntCounterVec,
    /// Each backend's share (0..=1) of its domain's ring, i.e. of the users it is home to
    /// when every node is up; set from the running configuration.
    pub backend_ring_share: GaugeVec,
    /// Always 1, labelled with the version, so dashboards can show what runs where.
    pub build_info: IntGaugeVec,
    /// Connections refused by a per-source limit, by limit.
    pub source_refusals_total: IntCounterVec,
    /// Sources (client networks) the per-source table holds now.
    pub sources_tracked: IntGaugeVec,
    /// Login attempts held back because their source or account failed too often.
    pub login_delays_total: IntCounterVec,
    /// Bans started for failed logins, by scope (source, jid).
    pub login_bans_total: IntCounterVec,
    /// Login attempts refused because their source or account is banned, by scope.
    pub login_refusals_total: IntCounterVec,
    /// `accept` failures, by listener and error (emfile, enfile, other).
    pub accept_errors_total: IntCounterVec,
    /// New connections refused while over a budget, by budget (memory, descriptors).
    pub overload_refusals_total: IntCounterVec,
    /// 1 while over the budget, else 0.
    pub overloaded: IntGaugeVec,
    /// Log lines dropped because the log output could not keep up (logging never blocks).
    pub log_lines_dropped_total: IntCounter,
    /// How many dropped lines the counter above already holds (concurrent scrapes must not
    /// add the same drops twice).
    log_lines_dropped_synced: std::sync::atomic::AtomicU64,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let mut definitions = Vec::new();
        let negotiation_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "xmpp_lb_negotiation_duration_seconds",
                "Time from accepting a client to the end of its authentication.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let negotiation_seconds = register(
            &registry,
            &mut definitions,
            Kind::Histogram,
            negotiation_seconds,
        );
        let backend_connect_seconds = HistogramVec::new(
            HistogramOpts::new(
                "xmpp_lb_backend_connect_duration_seconds",
                "Time to open the link to a backend: TCP, then the PROXY header and TLS where configured.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["backend"],
        )
        .expect("valid metric");
        let backend_connect_seconds = register(
            &registry,
            &mut definitions,
            Kind::Histogram,
            backend_connect_seconds,
        );
        let registry_ref = &registry;
        let defs = &mut definitions;
        let mut counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(registry_ref, defs, Kind::Counter, c)
        };
        let connections_total = counter(
            "xmpp_lb_connections_total",
            "Client connections accepted.",
            &["listener", "tls"],
        );
        let tls_handshakes_total = counter(
            "xmpp_lb_tls_handshakes_total",
            "Client TLS handshakes completed, by kind (full, resumed).",
            &["listener", "kind"],
        );
        let routed_total = counter(
            "xmpp_lb_routed_total",
            "Connections routed to a backend, by the source of the routing key.",
            &["backend", "source"],
        );
        let closed_total = counter(
            "xmpp_lb_connections_closed_total",
            "Client connections closed, by reason and the side that ended them.",
            &["reason", "side"],
        );
        let backend_connect_failures_total = counter(
            "xmpp_lb_backend_connect_failures_total",
            "Failed attempts to connect a backend.",
            &["backend"],
        );
        let relayed_bytes_total = counter(
            "xmpp_lb_relayed_bytes_total",
            "Bytes relayed between clients and backends.",
            &["backend", "direction"],
        );
        let stream_errors_total = counter(
            "xmpp_lb_stream_errors_sent_total",
            "Stream errors the proxy sent to clients, by condition.",
            &["condition"],
        );
        let sasl_total = counter(
            "xmpp_lb_sasl_outcomes_total",
            "SASL outcomes seen while relaying authentication, by mechanism.",
            &["mechanism", "outcome"],
        );
        let backend_logins_total = counter(
            "xmpp_lb_backend_logins_total",
            "SASL outcomes answered by each backend during negotiation, by result (success, failure).",
            &["backend", "result"],
        );
        let listener_refusals_total = counter(
            "xmpp_lb_listener_refusals_total",
            "Client connections the proxy refused or ended before the relay, by listener and reason (the proxy-side reasons of xmpp_lb_connections_closed_total, and overload).",
            &["listener", "reason"],
        );
        let probes_total = counter(
            "xmpp_lb_feature_probes_total",
            "Stream-feature probes of backends, by result.",
            &["backend", "result"],
        );
        let feature_mismatch_total = counter(
            "xmpp_lb_feature_mismatch_total",
            "Logins whose backend offered other SASL mechanisms than the client was shown.",
            &["backend"],
        );
        let health_transitions_total = counter(
            "xmpp_lb_backend_health_transitions_total",
            "Backends going up or down, by the state they went to.",
            &["backend", "state"],
        );
        let admission_refused_total = counter(
            "xmpp_lb_admission_refused_total",
            "Logins refused by admission control (queue full or waited too long).",
            &["backend"],
        );
        let config_reloads_total = counter(
            "xmpp_lb_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        );
        let dns_lookups_total = counter(
            "xmpp_lb_dns_lookups_total",
            "DNS lookups of backend groups, by group and result.",
            &["group", "result"],
        );
        let drain_redirects_total = counter(
            "xmpp_lb_drain_redirects_total",
            "Connected clients asked to move off a draining backend.",
            &["backend"],
        );
        let proxy_headers_total = counter(
            "xmpp_lb_proxy_protocol_headers_total",
            "PROXY protocol headers on listeners that accept them, by result (accepted, local, missing, invalid, incomplete, untrusted).",
            &["listener", "result"],
        );
        let http_requests_total = counter(
            "xmpp_lb_http_requests_total",
            "HTTP requests on WebSocket listeners, by result (websocket, host_meta, host_meta_json, cors_preflight, or a refusal: not_found, unknown_host, method_not_allowed, upgrade_required, bad_version, bad_request, forbidden_origin, no_subprotocol, bad_http).",
            &["listener", "result"],
        );
        let websocket_closes_total = counter(
            "xmpp_lb_websocket_closes_total",
            "WebSocket connections closed by the proxy for what the client did, by reason (binary, not_one_element, invalid_utf8, too_large, protocol_error, ping_timeout).",
            &["reason"],
        );
        let streams_total = counter(
            "xmpp_lb_streams_total",
            "XMPP streams started past the front end (TLS up, or WebSocket handshake done), by listener and transport (tcp, websocket).",
            &["listener", "transport"],
        );
        let sm_ids_wrapped_total = counter(
            "xmpp_lb_sm_ids_wrapped_total",
            "Stream-management ids wrapped with their node and a MAC on the way to a client (sessions made resumable through any proxy of the fleet).",
            &["backend"],
        );
        let resume_ids_total = counter(
            "xmpp_lb_resume_ids_total",
            "Stream-management ids clients sent to resume, by check result (valid, other_node, unknown_node, bad_mac, unknown_key, not_wrapped).",
            &["check"],
        );
        let resumes_total = counter(
            "xmpp_lb_resumes_total",
            "Stream resumptions answered by a backend, by style (legacy, inline) and result (resumed, failed).",
            &["backend", "kind", "result"],
        );
        let source_refusals_total = counter(
            "xmpp_lb_source_refusals_total",
            "Connections refused by a per-source limit, by limit (connections, unauthenticated, connection_rate, tls_handshake_rate, banned).",
            &["limit"],
        );
        let login_delays_total = counter(
            "xmpp_lb_login_delays_total",
            "Login attempts held back because their source or account failed too many logins.",
            &[],
        );
        let login_bans_total = counter(
            "xmpp_lb_login_bans_total",
            "Bans started for failed logins, by scope (source, jid).",
            &["scope"],
        );
        let login_refusals_total = counter(
            "xmpp_lb_login_refusals_total",
            "Login attempts refused with <policy-violation/> because their source or account is banned.",
            &[],
        );
        let accept_errors_total = counter(
            "xmpp_lb_accept_errors_total",
            "accept() failures on a listener, by error (emfile, enfile, other); the listener backs off and retries.",
            &["listener", "error"],
        );
        let overload_refusals_total = counter(
            "xmpp_lb_overload_refusals_total",
            "New connections closed at once because the process was over a budget (memory, descriptors).",
            &["budget"],
        );
        let mut gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(registry_ref, defs, Kind::Gauge, g)
        };
        let connections_open = gauge(
            "xmpp_lb_connections_open",
            "Client connections open now (tls is pending until an auto listener has seen the first byte).",
            &["listener", "tls"],
        );
        let backend_connections_open = gauge(
            "xmpp_lb_backend_connections_open",
            "Client connections relayed to each backend now.",
            &["backend"],
        );
        let streams_open = gauge(
            "xmpp_lb_streams_open",
            "XMPP streams open now, from the end of the front end (TLS, WebSocket handshake) to close, by transport (tcp, websocket).",
            &["transport"],
        );
        let dns_group_members = gauge(
            "xmpp_lb_dns_group_members",
            "Members of each backend group in service (the last good DNS answer).",
            &["group"],
        );
        let backend_healthy = gauge(
            "xmpp_lb_backend_healthy",
            "1 while the backend passes its health checks, else 0.",
            &["backend"],
        );
        let backend_draining = gauge(
            "xmpp_lb_backend_draining",
            "1 while the backend is draining, else 0.",
            &["backend"],
        );
        let sources_tracked = gauge(
            "xmpp_lb_sources_tracked",
            "Client networks the per-source table holds now (bounded).",
            &[],
        );
        let overloaded = gauge(
            "xmpp_lb_overloaded",
            "1 while the process is over the budget (memory, descriptors) and refuses new connections, else 0.",
            &["budget"],
        );
        for budget in ["memory", "descriptors"] {
            overload_refusals_total.with_label_values(&[budget]);
            overloaded.with_label_values(&[budget]);
        }
        for scope in ["source", "jid"] {
            login_bans_total.with_label_values(&[scope]);
        }
        login_delays_total.with_label_values::<&str>(&[]);
        login_refusals_total.with_label_values::<&str>(&[]);
        sources_tracked.with_label_values::<&str>(&[]);
        let build_info = gauge(
            "xmpp_lb_build_info",
            "Always 1; the version label says which build is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let backend_ring_share = register(
            registry_ref,
            defs,
            Kind::Gauge,
            GaugeVec::new(
                Opts::new(
                    "xmpp_lb_backend_ring_share",
                    "Share (0 to 1) of the domain's ring a backend owns: the fraction of its users it is home to while every node is up.",
                ),
                &["domain", "backend"],
            )
            .expect("valid metric"),
        );
        let log_lines_dropped_total = register(
            registry_ref,
            defs,
            Kind::Counter,
            IntCounter::new(
                "xmpp_lb_log_lines_dropped_total",
                "Log lines dropped because the log output could not keep up; logging never blocks the proxy.",
            )
            .expect("valid metric"),
        );
        Metrics {
            connections_total,
            tls_handshakes_total,
            connections_open,
            backend_connections_open,
            routed_total,
            closed_total,
            negotiation_seconds,
            backend_connect_seconds,
            backend_connect_failures_total,
            relayed_bytes_total,
            stream_errors_total,
            sasl_total,
            backend_logins_total,
            listener_refusals_total,
            probes_total,
            feature_mismatch_total,
            backend_healthy,
            backend_draining,
            health_transitions_total,
            admission_refused_total,
            config_reloads_total,
            dns_lookups_total,
            dns_group_members,
            drain_redirects_total,
            proxy_headers_total,
            http_requests_total,
            websocket_closes_total,
            streams_total,
            streams_open,
            sm_ids_wrapped_total,
            resume_ids_total,
            resumes_total,
            backend_ring_share,
            build_info,
            source_refusals_total,
            sources_tracked,
            login_delays_total,
            login_bans_total,
            login_refusals_total,
            accept_errors_total,
            overload_refusals_total,
            overloaded,
            log_lines_dropped_total,
            log_lines_dropped_synced: std::sync::atomic::AtomicU64::new(0),
            registry,
            definitions,
        }
    }

    /// Every registered metric, in registration order.
    pub fn definitions(&self) -> &[Definition] {
        &self.definitions
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        // The log writer counts what it had to drop on its own thread, with no access to
        // the metrics; bring the counter up to date at scrape time.
        let dropped = crate::logging::dropped_lines();
        let synced = self
            .log_lines_dropped_synced
            .fetch_max(dropped, std::sync::atomic::Ordering::Relaxed);
        if dropped > synced {
            self.log_lines_dropped_total.inc_by(dropped - synced);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }

    /// Every series now, as the exposition renders them (the status page reads these, so it
    /// shows exactly what a scrape would).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
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

/// Register `collector` and record its definition; the one way a metric gets onto the registry.
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    definitions: &mut Vec<Definition>,
    kind: Kind,
    collector: C,
) -> C {
    for desc in collector.desc() {
        definitions.push(Definition {
            name: desc.fq_name.clone(),
            kind,
            help: desc.help.clone(),
            labels: desc.variable_labels.clone(),
        });
    }
    registry
        .register(Box::new(collector.clone()))
        .expect("unique metric");
    collector
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_rendered_is_defined_with_its_type() {
        let m = Metrics::new();
        m.connections_total
            .with_label_values(&["c2s", "direct"])
            .inc();
        m.backend_ring_share
            .with_label_values(&["example.test", "node1"])
            .set(0.5);
        m.backend_connect_seconds
            .with_label_values(&["node1"])
            .observe(0.01);
        let text = m.render();
        let mut seen = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let d = m
                    .definitions()
                    .iter()
                    .find(|d| d.name == name)
                    .unwrap_or_else(|| panic!("{name} is rendered but not defined"));
                assert_eq!(d.kind.as_str(), kind, "{name}");
                seen += 1;
            }
        }
        // The three touched families, and the three that always have a series: the
        // negotiation histogram, the build info and the dropped log lines.
        assert!(seen >= 6, "{text}");
        assert!(text.contains("xmpp_lb_build_info{version=\""), "{text}");
    }
}
