//! [`handle`]: the one top-to-bottom driver of a client connection.
//!
//! accept → (a front balancer's PROXY header) → (direct TLS | clear-text header → STARTTLS →
//! TLS) → post-TLS stream header → learn the routing key (`from`, else the first SASL message,
//! else the subnet) → open the link to the node the ring picks (PROXY header, TLS; next node if
//! it fails) → replay the client's header (and SASL element),
//! swallowing the node's duplicate preamble → keep parsing until authentication ends (a failed
//! login retried as another user is re-routed) → byte relay until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

use crate::backend::admission::Permit;
use crate::backend::connect::connect;
use crate::backend::link::BackendStream;
use crate::backend::probe::read_preamble;
use crate::backend::state::{ActiveGuard, Command};
use crate::config::{Config, TlsMode};
use crate::framed::{FrameError, Framed};
use crate::metrics::Metrics;
use crate::prefixed::Prefixed;
use crate::proxy_protocol::{self, Origin};
use crate::relay::{self, Interrupt, RelayStats};
use crate::resumption;
use crate::route::KeySource;
use crate::route::key::{normalize_bare_jid, normalize_domain};
use crate::route::policy::{Decision, Placement};
use crate::route::resume::Checked;
use crate::runtime::{Runtime, Shared};
use crate::xmpp::element::{Element, NsContext, XmlError};
use crate::xmpp::features::{self, NS_SASL, NS_SASL2, NS_TLS};
use crate::xmpp::header::{HeaderError, STREAM_NS, StreamHeader};
use crate::xmpp::sasl;
use crate::xmpp::scanner::{FrameKind, ScanError};
use crate::xmpp::sm::NS_SM;
use crate::xmpp::stream_error::{Condition, proxy_header, render};

/// What a connection needs to know about the listener that accepted it (its PROXY protocol
/// settings are read from the runtime snapshot, so that a reload can change the trusted
/// networks).
pub struct ListenerCtx {
    /// Listener name (logs, metric labels, and the key of its TLS acceptor in the runtime).
    pub name: String,
    /// How TLS starts on it.
    pub tls: TlsMode,
}

/// The client side once TLS is up.
type ClientTls = tokio_rustls::server::TlsStream<Prefixed<TcpStream>>;

const FEATURES_STARTTLS: &str = "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";
const PROCEED: &[u8] = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
/// How long the proxy waits to deliver its own short messages (errors, challenges).
const SEND_LIMIT: Duration = Duration::from_secs(5);

/// How a connection ends before (or instead of) the relay.
#[derive(Debug)]
enum Failure {
    /// Tell the client with a stream error, then close.
    Refuse(Condition, String),
    /// The client closed its stream (`</stream:stream>`) before routing: close ours too.
    ClientClosedStream,
    /// The transport is gone or broken: close without a word.
    Quiet(&'static str),
    /// The proxy refuses the connection before any XMPP (a PROXY protocol header that is
    /// missing, invalid or not allowed): close without a word, counted under `reason`.
    Reject(&'static str, String),
}

/// What one connection did, for the access log.
#[derive(Default)]
struct Trace {
    /// "starttls" or "direct", once known.
    tls: &'static str,
    /// The client's address as a front balancer's PROXY header gave it (else the socket's).
    client: Option<SocketAddr>,
    /// The front balancer the connection came through, if it sent a PROXY header.
    via: Option<SocketAddr>,
    /// The domain the client asked for, once known (also the `from` of any header we send).
    domain: Option<String>,
    /// Backend name, once routed.
    backend: Option<String>,
    /// What the routing key came from.
    source: Option<KeySource>,
    /// The user's normalized bare JID, once the client names one (header `from` or SASL).
    /// Logged only with `log_jids = true`: a JID is personal data.
    jid: Option<String>,
    /// Relay counters, if the relay ran.
    relay: Option<RelayStats>,
    /// Keeps the connection counted in `Shared::negotiating` until the relay starts.
    negotiating: Option<NegotiatingGuard>,
    /// Keeps the connection counted in `xmpp_lb_connections_open` under its TLS style.
    open: Option<GaugeGuard>,
}

/// Counts a connection as negotiating until dropped, so even a panicking connection task
/// cannot leave shutdown waiting for a login that will never finish.
struct NegotiatingGuard(Arc<Shared>);

impl NegotiatingGuard {
    fn new(shared: &Arc<Shared>) -> NegotiatingGuard {
        shared
            .negotiating
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        NegotiatingGuard(shared.clone())
    }
}

impl Drop for NegotiatingGuard {
    fn drop(&mut self) {
        self.0
            .negotiating
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Decrements a gauge when dropped (panic-safe open-connection counts).
struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    /// Count one more on `gauge` until the guard drops.
    fn inc(gauge: prometheus::IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Drive one accepted client connection to its end. Never panics on client input; every
/// failure is a stream error or a quiet close, logged once.
///
/// The access-log line (target `xmpp_lb::access`) is the one record of a connection: who
/// connected from where, how it was routed, for how long, how many bytes, and how it ended.
/// It never holds a password, a SASL payload or a stanza, and names the user only with
/// `log_jids = true`.
pub async fn handle(
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let started = Instant::now();
    let m = shared.metrics.clone();
    // An auto listener learns the TLS style from the first byte; until then it is pending.
    let tls = match listener.tls {
        TlsMode::Starttls => "starttls",
        TlsMode::Direct => "direct",
        TlsMode::Auto => "pending",
    };
    let mut trace = Trace {
        negotiating: Some(NegotiatingGuard::new(&shared)),
        open: Some(GaugeGuard::inc(
            m.connections_open.with_label_values(&[&listener.name, tls]),
        )),
        ..Trace::default()
    };
    // One snapshot for the whole connection: a reload never changes rules mid-login.
    let rt = shared.runtime.load_full();
    let result = drive(&shared, &rt, &listener, tcp, peer, started, &mut trace).await;
    trace.negotiating = None;
    trace.open = None;
    let (reason, side) = match (&result, &trace.relay) {
        (Ok(()), Some(stats)) => (stats.reason.reason(), stats.reason.side()),
        (Ok(()), None) => ("closed_in_negotiation", "backend"),
        (Err(Failure::Refuse(c, _)), _) => (c.as_str(), "proxy"),
        (Err(Failure::ClientClosedStream), _) => ("closed_in_negotiation", "client"),
        (Err(Failure::Quiet(_)), _) => ("client_gone", "client"),
        (Err(Failure::Reject(reason, _)), _) => (*reason, "proxy"),
    };
    m.closed_total.with_label_values(&[reason, side]).inc();
    let (up, down) = trace
        .relay
        .map_or((0, 0), |s| (s.client_to_backend, s.backend_to_client));
    let detail = match &result {
        Err(Failure::Refuse(_, text)) => text.as_str(),
        Err(Failure::Quiet(why)) => why,
        Err(Failure::Reject(_, text)) => text.as_str(),
        _ => "",
    };
    tracing::info!(
        target: "xmpp_lb::access",
        client = %trace.client.unwrap_or(peer),
        via = %trace.via.map_or_else(|| "-".to_string(), |v| v.to_string()),
        listener = %listener.name,
        tls = trace.tls,
        domain = trace.domain.as_deref().unwrap_or("-"),
        key_source = trace.source.map_or("-", |s| s.as_str()),
        backend = trace.backend.as_deref().unwrap_or("-"),
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_up = up,
        bytes_down = down,
        close_reason = reason,
        closed_by = side,
        detail,
        jid = if rt.config.log_jids {
            trace.jid.as_deref()
        } else {
            None
        },
        "connection closed"
    );
}

async fn drive(
    shared: &Shared,
    rt: &Runtime,
    listener: &ListenerCtx,
    mut tcp: TcpStream,
    socket_peer: SocketAddr,
    started: Instant,
    trace: &mut Trace,
) -> Result<(), Failure> {
    let limits = &rt.config.limits;
    let socket_local = tcp
        .local_addr()
        .map_err(|_| Failure::Quiet("socket gone"))?;
    let prerouting_deadline = started + limits.prerouting_timeout;
    // Behind a front balancer, the client is who its PROXY header says, from here on.
    let learned = front_header(
        shared,
        rt,
        listener,
        &mut tcp,
        socket_peer,
        prerouting_deadline,
    )
    .await?;
    let (peer, local) = match learned {
        Some((client, destination)) => {
            trace.client = Some(client);
            trace.via = Some(socket_peer);
            (client, destination)
        }
        None => (socket_peer, socket_local),
    };
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let direct = match listener.tls {
        TlsMode::Direct => true,
        TlsMode::Starttls => false,
        TlsMode::Auto => sniff_tls(&tcp, prerouting_deadline).await?,
    };
    trace.tls = if direct { "direct" } else { "starttls" };
    shared
        .metrics
        .connections_total
        .with_label_values(&[&listener.name, trace.tls])
        .inc();
    if listener.tls == TlsMode::Auto {
        // Move the connection from `pending` to the style the first byte showed.
        trace.open = Some(GaugeGuard::inc(
            shared
                .metrics
                .connections_open
                .with_label_values(&[&listener.name, trace.tls]),
        ));
    }

    let prefixed = if direct {
        Prefixed::new(tcp, Default::default())
    } else {
        let mut plain = Framed::new(tcp, limits.max_header_bytes);
        match Box::pin(starttls(rt, &mut plain, prerouting_deadline, trace)).await {
            Ok(()) => {}
            Err(failure) => {
                refuse(shared, rt, &mut plain, trace, &failure).await;
                return Err(failure);
            }
        }
        let (tcp, read_ahead) = plain.into_parts();
        // Usually nothing was read past <starttls/>: drop the buffer's capacity with it.
        let read_ahead = if read_ahead.is_empty() {
            Default::default()
        } else {
            read_ahead
        };
        Prefixed::new(tcp, read_ahead)
    };

    let acceptor = rt
        .acceptors
        .get(&listener.name)
        .ok_or(Failure::Quiet("listener removed by a reload"))?;
    let accept = acceptor.accept(prefixed);
    let tls = match tokio::time::timeout(limits.tls_handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return Err(Failure::Quiet("TLS handshake failed"));
        }
        Err(_) => return Err(Failure::Quiet("TLS handshake timed out")),
    };
    ack_now(tls.get_ref().0.get_ref());
    // What the node's PROXY header says about the client, TLS facts included.
    let session = tls.get_ref().1;
    shared
        .metrics
        .tls_handshakes_total
        .with_label_values(&[&listener.name, handshake_label(session.handshake_kind())])
        .inc();
    let origin = Origin {
        source: peer,
        destination: local,
        alpn: session
            .alpn_protocol()
            .filter(|p| *p == crate::tls::ALPN_XMPP_CLIENT)
            .map(|_| crate::tls::ALPN_XMPP_CLIENT),
        sni: session.server_name().map(str::to_string),
        tls_version: session.protocol_version().and_then(|v| v.as_str()),
    };
    let mut client = Framed::new(tls, limits.max_header_bytes);
    let at = At {
        shared,
        rt,
        peer,
        local,
        started,
        origin,
    };
    // Boxed: the negotiation's state is large and only needed until the relay starts; a
    // connection task that lives for days should not carry it.
    match Box::pin(serve(&at, &mut client, trace)).await {
        Ok(Some(routed)) => {
            let guard = relay_to_end(&at, client, routed, trace).await;
            drop(guard);
            Ok(())
        }
        Ok(None) => {
            // Bounded: a client that stopped reading must not hold the connection open.
            let _shut = tokio::time::timeout(SEND_LIMIT, client.io.shutdown()).await;
            Ok(())
        }
        Err(failure) => {
            refuse(shared, rt, &mut client, trace, &failure).await;
            Err(failure)
        }
    }
}

/// Where a connection stands: shared state, its runtime snapshot, its addresses and age.
struct At<'a> {
    /// Process-wide state.
    shared: &'a Shared,
    /// The configuration snapshot this connection lives by.
    rt: &'a Runtime,
    /// The client's address.
    peer: SocketAddr,
    /// The proxy's address the client reached (for `<see-other-host/>` back at the proxy).
    local: SocketAddr,
    /// When the connection was accepted.
    started: Instant,
    /// What the PROXY protocol header to a node says about the client.
    origin: Origin,
}

/// The `kind` label of `xmpp_lb_tls_handshakes_total`: `resumed`, or `full` (a
/// HelloRetryRequest round trip is still a full handshake).
fn handshake_label(kind: Option<rustls::HandshakeKind>) -> &'static str {
    match kind {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    }
}

/// A listener with `accept_proxy_protocol`: a peer in its trusted networks must open with a
/// PROXY header, which gives the client's address and the one it reached; anyone else must
/// not send one. Returns those two addresses when a header gave them (`None`: the socket's
/// own stand). A refusal is logged and the connection closed without a word: before the
/// header nothing is known of the protocol that follows, so there is no stream to send an
/// error on.
async fn front_header(
    shared: &Shared,
    rt: &Runtime,
    listener: &ListenerCtx,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<proxy_protocol::Learned, Failure> {
    let trusted = rt
        .config
        .listeners
        .iter()
        .find(|l| l.name == listener.name)
        .map_or(&[][..], |l| &l.trusted_proxies[..]);
    if trusted.is_empty() {
        return Ok(None);
    }
    let count = |result: &str| {
        shared
            .metrics
            .proxy_headers_total
            .with_label_values(&[&listener.name, result])
            .inc();
    };
    if !proxy_protocol::trusted(trusted, peer.ip()) {
        if proxy_protocol::starts_with_header(tcp, deadline).await {
            count("untrusted");
            tracing::warn!(listener = %listener.name, peer = %peer, "PROXY protocol header from a peer outside trusted_proxies; refused");
            return Err(Failure::Reject(
                "proxy_protocol_untrusted",
                "PROXY protocol header from an untrusted peer".into(),
            ));
        }
        return Ok(None);
    }
    match proxy_protocol::read_header(tcp, deadline).await {
        Ok(Some(addresses)) => {
            count("accepted");
            Ok(Some(addresses))
        }
        // The balancer's own connection (a health check): it is the client.
        Ok(None) => {
            count("local");
            Ok(None)
        }
        Err(e) => {
            let (result, reason) = match e {
                proxy_protocol::HeaderError::Missing => ("missing", "proxy_protocol_missing"),
                proxy_protocol::HeaderError::Invalid(_) => ("invalid", "proxy_protocol_invalid"),
                proxy_protocol::HeaderError::Timeout | proxy_protocol::HeaderError::Io(_) => {
                    ("incomplete", "proxy_protocol_incomplete")
                }
            };
            count(result);
            tracing::warn!(listener = %listener.name, peer = %peer, error = %e, "PROXY protocol header refused");
            Err(Failure::Reject(reason, e.to_string()))
        }
    }
}

/// Send the ACK of the client's last handshake flight now instead of up to 40 ms later.
///
/// A TLS 1.3 client that offers no session resumption (Erlang's `ssl` by default, so tsung,
/// and others) gets no session tickets, so after its `Finished` the server has nothing to
/// send until the client's stream header arrives. Linux then delays its ACK of `Finished`
/// (the connection looks interactive), and a client with Nagle's algorithm on (the default in
/// Erlang and Java) holds its header back until that ACK comes: 40 ms on every login. Forcing
/// quick-ACK mode once the handshake is done sends the pending ACK at once.
fn ack_now(tcp: &TcpStream) {
    #[cfg(target_os = "linux")]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_quickack(true) {
        tracing::debug!(error = %e, "TCP_QUICKACK failed");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = tcp;
}

/// `tls = "auto"`: a TLS handshake record starts with 0x16; an XML stream never does.
async fn sniff_tls(tcp: &TcpStream, deadline: Instant) -> Result<bool, Failure> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Err(_) => Err(Failure::Quiet("silent client")),
        Ok(Err(_)) | Ok(Ok(0)) => Err(Failure::Quiet("client closed before sending")),
        Ok(Ok(_)) => Ok(first[0] == 0x16),
    }
}

/// The clear-text part of a STARTTLS connection, up to `<proceed/>`.
async fn starttls(
    rt: &Runtime,
    plain: &mut Framed<TcpStream>,
    deadline: Instant,
    trace: &mut Trace,
) -> Result<(), Failure> {
    let (_, header_bytes) = plain
        .next_non_ws(deadline)
        .await
        .map_err(client_frame_failure)?;
    let (header, domain) = check_header(&rt.config, &header_bytes)?;
    trace.domain = Some(domain.clone());
    let greeting = format!(
        "{}{FEATURES_STARTTLS}",
        proxy_header(&domain, &new_stream_id())
    );
    plain
        .send(greeting.as_bytes(), SEND_LIMIT)
        .await
        .map_err(|_| Failure::Quiet("client write failed"))?;
    plain.header_sent = true;
    plain.set_max_frame(rt.config.limits.max_prerouting_element_bytes);
    let (kind, bytes) = plain
        .next_non_ws(deadline)
        .await
        .map_err(client_frame_failure)?;
    if kind == FrameKind::StreamEnd {
        return Err(Failure::ClientClosedStream);
    }
    let element = Element::parse(&bytes, &header.ns).map_err(client_xml_failure)?;
    if !element.is("starttls", NS_TLS) {
        return Err(Failure::Refuse(
            Condition::PolicyViolation,
            "this port requires STARTTLS before anything else".into(),
        ));
    }
    plain
        .send(PROCEED, SEND_LIMIT)
        .await
        .map_err(|_| Failure::Quiet("client write failed"))?;
    Ok(())
}

/// Check a client's stream header; returns it with the (normalized, served) domain it asks for.
fn check_header(config: &Config, bytes: &[u8]) -> Result<(StreamHeader, String), Failure> {
    let header = StreamHeader::parse(bytes).map_err(|e| match e {
        HeaderError::InvalidNamespace(why) => Failure::Refuse(Condition::InvalidNamespace, why),
        HeaderError::Restricted(why) => Failure::Refuse(Condition::RestrictedXml, why),
        HeaderError::NotWellFormed(why) => Failure::Refuse(Condition::NotWellFormed, why),
    })?;
    let Some(to) = header.to.as_deref() else {
        return Err(Failure::Refuse(
            Condition::HostUnknown,
            "the stream header has no 'to'".into(),
        ));
    };
    let domain = match normalize_domain(to) {
        Some(d) if config.routing.domains.contains(&d) => d,
        _ => {
            return Err(Failure::Refuse(
                Condition::HostUnknown,
                "this service does not serve that domain".into(),
            ));
        }
    };
    if header.version.as_deref() != Some("1.0") {
        return Err(Failure::Refuse(
            Condition::UnsupportedVersion,
            "XMPP version 1.0 is required".into(),
        ));
    }
    Ok((header, domain))
}

/// Check the header a client sends when its stream restarts after SASL success: the same
/// checks as the first one, and the same domain. The login was routed (and authenticated) for
/// that domain; a restart naming another would reach a node, over a link, chosen for the first.
fn check_restart(config: &Config, bytes: &[u8], domain: &str) -> Result<StreamHeader, Failure> {
    let (header, restarted) = check_header(config, bytes)?;
    if restarted != domain {
        return Err(Failure::Refuse(
            Condition::HostUnknown,
            "a restarted stream must name the domain it authenticated for".into(),
        ));
    }
    Ok(header)
}

/// A routed connection ready for the relay.
struct Routed {
    /// The node's side, with whatever it read ahead.
    backend: Framed<BackendStream>,
    /// The node's index.
    idx: usize,
    /// Keeps the connection counted on that backend until it ends.
    guard: ActiveGuard,
    /// Namespaces of the client's stream header (to read its top-level elements).
    client_ns: NsContext,
    /// Namespaces of the node's current stream header.
    backend_ns: NsContext,
    /// A client element read during negotiation and not sent yet: it goes first in the relay.
    client_first: Option<Bytes>,
}

/// Everything after TLS up to the end of authentication. `Ok(None)` means the backend ended
/// the stream during negotiation (its words were already relayed).
async fn serve(
    at: &At<'_>,
    client: &mut Framed<ClientTls>,
    trace: &mut Trace,
) -> Result<Option<Routed>, Failure> {
    let (shared, rt) = (at.shared, at.rt);
    let limits = &rt.config.limits;
    let prerouting_deadline = at.started + limits.prerouting_timeout;
    let (_, header_bytes) = client
        .next_non_ws(prerouting_deadline)
        .await
        .map_err(client_frame_failure)?;
    let (header, domain) = check_header(&rt.config, &header_bytes)?;
    trace.domain = Some(domain.clone());
    client.set_max_frame(limits.max_prerouting_element_bytes);

    let from = bare_from(&header, &domain);
    trace.jid = from.clone();
    let immediate = rt.decide(&domain, from.as_deref(), at.peer.ip(), false);
    let mut n = Negotiation {
        at,
        header_bytes,
        client_ns: header.ns.clone(),
        backend_ns: NsContext::default(),
        domain: domain.clone(),
        mechanism: String::new(),
        authenticated: false,
        placement: None,
        guard: None,
        permit: None,
        inline: None,
        replay: None,
        restart_header: None,
        awaiting_first: false,
        first_after_auth: None,
        sasl_in_flight: false,
        reroutes: 0,
    };
    let (backend, idx) = match immediate {
        Some(decision) => {
            // The node answers the client directly: its header and features are relayed.
            let source = source_of(&decision, from.is_some());
            // No admission yet: a login slot is taken when the client starts a login (its
            // first SASL element), not for a stream that has sent no credentials.
            let (idx, tcp) = n
                .open_backend(&decision, source, Admit::AtFirstSasl, trace)
                .await?;
            let mut backend = Framed::new(tcp, limits.max_negotiation_element_bytes);
            backend
                .send(&n.header_bytes, SEND_LIMIT)
                .await
                .map_err(|_| backend_lost())?;
            (backend, idx)
        }
        None => {
            let members = rt.members_of(&domain);
            // A cold cache probes the nodes (one probe per domain at a time, however many
            // clients wait for it); the client waits no longer than its pre-routing deadline.
            let probed = tokio::time::timeout_at(
                prerouting_deadline,
                shared
                    .features
                    .get(&members, &domain, rt.config.probe.timeout, &shared.metrics),
            )
            .await;
            let shown = probed.ok().flatten().ok_or_else(|| {
                Failure::Refuse(
                    Condition::RemoteConnectionFailed,
                    "no server node is reachable".into(),
                )
            })?;
            let mut greeting = proxy_header(&domain, &new_stream_id()).into_bytes();
            greeting.extend_from_slice(&shown.bytes);
            client
                .send(&greeting, SEND_LIMIT)
                .await
                .map_err(|_| Failure::Quiet("client write failed"))?;
            client.header_sent = true;
            let captured = capture_auth(client, &header.ns, &domain, prerouting_deadline).await?;
            n.mechanism = captured.mechanism.clone();
            let jid = captured.identity.as_deref().and_then(normalize_bare_jid);
            if jid.is_some() {
                trace.jid = jid.clone();
            }
            let mut decision = rt
                .decide(&domain, jid.as_deref(), at.peer.ip(), true)
                .ok_or(Failure::Quiet("no routing policy for the domain"))?;
            let mut source = source_of(&decision, false);
            // A SASL2 login that resumes inline goes to the node holding the session.
            let (first, resume_node) = match Element::parse(&captured.first, &header.ns) {
                Ok(el) => n.sasl_attempt(&captured.first, &el),
                Err(_) => (captured.first.clone(), None),
            };
            if let Some(node) = resume_node {
                decision = decision.resuming_on(node);
                source = KeySource::Resume;
            }
            let (idx, mut backend) = n
                .open_and_swallow(&decision, source, Some(&shown.mechanisms), trace)
                .await?;
            backend
                .send(&first, SEND_LIMIT)
                .await
                .map_err(|_| backend_lost())?;
            n.sasl_in_flight = captured.sasl;
            (backend, idx)
        }
    };
    n.run(client, backend, idx, trace).await
}

/// The metric label for how a decision was reached.
fn source_of(decision: &Decision, _identity_from_header: bool) -> KeySource {
    decision.source
}

/// The `from` of a post-TLS header as a routing key: a valid bare JID of the requested domain.
/// A `from` naming another domain cannot be the account being logged into, so it is ignored.
fn bare_from(header: &StreamHeader, domain: &str) -> Option<String> {
    let jid = normalize_bare_jid(header.from.as_deref()?)?;
    let (_, jid_domain) = jid.rsplit_once('@')?;
    (jid_domain == domain).then_some(jid)
}

/// The client's first SASL exchange, held until a node is chosen.
struct Captured {
    /// The `<auth/>` or `<authenticate/>` element (or other first element), byte-exact.
    first: Bytes,
    /// The SASL mechanism named (empty if none).
    mechanism: String,
    /// The JID the client claims, if it names one.
    identity: Option<String>,
    /// `first` starts a SASL exchange (`<auth/>`, `<authenticate/>`).
    sasl: bool,
}

/// Read client elements until one says who the client is (or that it never will).
async fn capture_auth(
    client: &mut Framed<ClientTls>,
    ns: &NsContext,
    domain: &str,
    deadline: Instant,
) -> Result<Captured, Failure> {
    loop {
        let (kind, bytes) = client
            .next_non_ws(deadline)
            .await
            .map_err(client_frame_failure)?;
        if kind == FrameKind::StreamEnd {
            return Err(Failure::ClientClosedStream);
        }
        let element = Element::parse(&bytes, ns).map_err(client_xml_failure)?;
        let sasl_ns = if element.is("auth", NS_SASL) {
            NS_SASL
        } else if element.is("authenticate", NS_SASL2) {
            NS_SASL2
        } else if element.local_name() == "abort"
            && (element.ns == NS_SASL || element.ns == NS_SASL2)
        {
            // Nothing started, so nothing to abort; say so as a server would and keep waiting.
            let reply = format!("<failure xmlns='{}'><aborted/></failure>", element.ns);
            client
                .send(reply.as_bytes(), SEND_LIMIT)
                .await
                .map_err(|_| Failure::Quiet("client write failed"))?;
            continue;
        } else {
            // In-band registration names its user in the form; anything else names nobody.
            let identity = registration_username(&element).map(|u| format!("{u}@{domain}"));
            return Ok(Captured {
                first: bytes,
                mechanism: String::new(),
                identity,
                sasl: false,
            });
        };
        let mechanism = element.attr("mechanism").unwrap_or_default().to_string();
        let payload_text = if sasl_ns == NS_SASL {
            Some(element.text.as_str())
        } else {
            element
                .child("initial-response", NS_SASL2)
                .map(|e| e.text.as_str())
        };
        let payload = match payload_text.map(sasl::decode_payload) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(p))) => Some(p),
            // Undecodable: the node will answer <incorrect-encoding/>; route by fallback.
            Some(Err(_)) => {
                return Ok(Captured {
                    first: bytes,
                    mechanism,
                    identity: None,
                    sasl: true,
                });
            }
        };
        if let Some(payload) = payload {
            let identity = sasl::claimed_identity(&mechanism, &payload, domain)
                .ok()
                .flatten();
            return Ok(Captured {
                first: bytes,
                mechanism,
                identity,
                sasl: true,
            });
        }
        if !client_first(&mechanism) {
            // The node speaks first in this mechanism: only it can; route without a name.
            return Ok(Captured {
                first: bytes,
                mechanism,
                identity: None,
                sasl: true,
            });
        }
        // No initial response in a client-first mechanism: ask for it with an empty challenge,
        // then hand the node one element with the response as its initial response. That is
        // the same SASL exchange (RFC 6120 §6.4.2), and nodes that refuse an empty <auth/>
        // (Prosody answers <malformed-request/>) still accept it.
        let challenge = format!("<challenge xmlns='{sasl_ns}'>=</challenge>");
        client
            .send(challenge.as_bytes(), SEND_LIMIT)
            .await
            .map_err(|_| Failure::Quiet("client write failed"))?;
        let (kind, response) = client
            .next_non_ws(deadline)
            .await
            .map_err(client_frame_failure)?;
        if kind == FrameKind::StreamEnd {
            return Err(Failure::ClientClosedStream);
        }
        let answer = Element::parse(&response, ns).map_err(client_xml_failure)?;
        if answer.local_name() == "abort" {
            let reply = format!("<failure xmlns='{sasl_ns}'><aborted/></failure>");
            client
                .send(reply.as_bytes(), SEND_LIMIT)
                .await
                .map_err(|_| Failure::Quiet("client write failed"))?;
            continue;
        }
        if !answer.is("response", sasl_ns) {
            return Err(Failure::Refuse(
                Condition::PolicyViolation,
                "expected a SASL <response/>".into(),
            ));
        }
        let identity = sasl::decode_payload(&answer.text)
            .ok()
            .flatten()
            .and_then(|p| {
                sasl::claimed_identity(&mechanism, &p, domain)
                    .ok()
                    .flatten()
            });
        return Ok(Captured {
            first: with_initial_response(&bytes, &element, sasl_ns, &answer.text),
            mechanism,
            identity,
            sasl: true,
        });
    }
}

/// Whether two mechanism lists name the same mechanisms, in any order.
fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    b.sort();
    a == b
}

/// Mechanisms whose first message comes from the client, so an empty challenge asks for it.
fn client_first(mechanism: &str) -> bool {
    mechanism == "PLAIN" || mechanism.starts_with("SCRAM-") || mechanism.starts_with("HT-")
}

/// `auth` (an `<auth/>` or SASL2 `<authenticate/>` without initial response) rewritten to
/// carry `response_text` as its initial response; every other byte and child is kept.
fn with_initial_response(raw: &[u8], auth: &Element, sasl_ns: &str, response_text: &str) -> Bytes {
    let text = match response_text.trim() {
        "" => "=",
        t => t,
    };
    let text = crate::xmpp::element::escape(text);
    let inner = if sasl_ns == NS_SASL {
        text
    } else {
        format!("<initial-response>{text}</initial-response>")
    };
    // An empty <initial-response/> child, if any, gives way to the real one.
    let trimmed;
    let raw = match auth.child("initial-response", NS_SASL2) {
        Some(empty) => {
            trimmed = crate::xmpp::element::without_spans(raw, std::slice::from_ref(&empty.span));
            &trimmed[..]
        }
        None => raw,
    };
    let start_tag_end = start_tag_len(raw);
    let mut out = Vec::with_capacity(raw.len() + inner.len() + auth.name.len() + 3);
    if raw[..start_tag_end].ends_with(b"/>") {
        out.extend_from_slice(&raw[..start_tag_end - 2]);
        out.push(b'>');
        out.extend_from_slice(inner.as_bytes());
        out.extend_from_slice(format!("</{}>", auth.name).as_bytes());
    } else if sasl_ns == NS_SASL {
        // <auth ...></auth> or <auth ...>=</auth>-like empty forms: replace the content.
        out.extend_from_slice(&raw[..start_tag_end]);
        out.extend_from_slice(inner.as_bytes());
        out.extend_from_slice(format!("</{}>", auth.name).as_bytes());
    } else {
        out.extend_from_slice(&raw[..start_tag_end]);
        out.extend_from_slice(inner.as_bytes());
        out.extend_from_slice(&raw[start_tag_end..]);
    }
    out.into()
}

/// Length of the start tag at the front of `raw` (through its `>`), quotes respected.
fn start_tag_len(raw: &[u8]) -> usize {
    let mut quote = None;
    for (i, &b) in raw.iter().enumerate() {
        match (quote, b) {
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b'>') => return i + 1,
            _ => {}
        }
    }
    raw.len()
}

/// The `<username/>` of an XEP-0077 registration form, if this is one.
fn registration_username(element: &Element) -> Option<String> {
    if element.local_name() != "iq" {
        return None;
    }
    let query = element.child("query", "jabber:iq:register")?;
    let user = query.child("username", "jabber:iq:register")?.text.trim();
    (!user.is_empty()).then(|| user.to_string())
}

/// State of the negotiation after routing, until authentication ends.
struct Negotiation<'a> {
    /// The connection's context.
    at: &'a At<'a>,
    /// The client's post-TLS stream header, replayed byte-exact to every node tried.
    header_bytes: Bytes,
    /// Namespaces declared by the client's header.
    client_ns: NsContext,
    /// Namespaces declared by the node's current header.
    backend_ns: NsContext,
    /// The domain the client asked for.
    domain: String,
    /// The SASL mechanism of the latest attempt (metric label).
    mechanism: String,
    /// Legacy SASL succeeded; waiting for the restarted stream's features.
    authenticated: bool,
    /// Where the current backend was chosen by (a retry with another placement moves).
    placement: Option<crate::route::policy::Placement>,
    /// Keeps the connection counted on its current backend (bounded load).
    guard: Option<ActiveGuard>,
    /// The admission slot held while authenticating (login-storm shaping).
    permit: Option<Permit>,
    /// The SASL2 inline resume of the latest attempt, if it asked for one.
    inline: Option<resumption::Inline>,
    /// A legacy SASL PLAIN `<auth/>` as the node got it, kept until the client's first element
    /// after authentication: if that is a `<resume/>` whose session lives on another node, the
    /// same login is replayed there (PLAIN, unlike SCRAM, can be). Zeroized when dropped.
    replay: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The client's stream header after legacy SASL success (replayed with `replay`).
    restart_header: Option<Bytes>,
    /// Authenticated with `replay` kept: the client's next element decides where it goes.
    awaiting_first: bool,
    /// The client's first element after authentication, held back for the relay (whose watch
    /// rewrites a `<resume/>`): negotiation is over.
    first_after_auth: Option<Bytes>,
    /// A SASL attempt went to the node and it has not answered `<success/>` or `<failure/>`
    /// yet. A retry as another user may only move the connection once the node has failed the
    /// attempt before it: a client may not pipeline logins across nodes.
    sasl_in_flight: bool,
    /// How many times a SASL retry moved this connection to another node.
    reroutes: u8,
}

/// How many times one connection may move to another node for a SASL retry as another user.
/// A person who mistyped their name needs one or two; a password guesser wants hundreds, each
/// a new connection to some node.
const MAX_REROUTES: u8 = 3;

/// When [`Negotiation::open_backend`] takes the node's admission slot (login-storm shaping).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Before connecting: the client's SASL element is in hand.
    Now,
    /// When the client sends its first SASL element (the stream was routed by its header).
    AtFirstSasl,
}

impl Negotiation<'_> {
    /// What rewriting stream-management ids needs to know on `node`.
    fn sm_context(&self, node: &str) -> resumption::Context {
        let rt = self.at.rt;
        resumption::Context {
            keys: rt.sm_keys.clone(),
            domain: self.domain.clone(),
            node: node.to_string(),
            known_nodes: rt.known_nodes.clone(),
            metrics: self.at.shared.metrics.clone(),
        }
    }

    /// A SASL attempt (`bytes`, parsed as `el`) on its way to a node. A legacy PLAIN `<auth/>`
    /// is kept for a possible replay (see [`Negotiation::replay`]). A SASL2 `<authenticate/>`
    /// that resumes inline has its id checked and remembered for the node's answer. Returns
    /// the bytes to send (the node's own id in place of the client's) and the node the id
    /// names, if it is valid.
    fn sasl_attempt(&mut self, bytes: &Bytes, el: &Element) -> (Bytes, Option<String>) {
        self.inline = None;
        self.replay = None;
        if el.is("auth", NS_SASL) {
            if self.at.rt.sm_keys.enabled() && el.attr("mechanism") == Some("PLAIN") {
                self.replay = Some(zeroize::Zeroizing::new(bytes.to_vec()));
            }
            return (bytes.clone(), None);
        }
        if !el.is("authenticate", NS_SASL2) {
            return (bytes.clone(), None);
        }
        match resumption::inline_resume(&self.sm_context(""), bytes, el) {
            Some(inline) => {
                let out = (inline.element.clone(), inline.node.clone());
                self.inline = Some(inline);
                out
            }
            None => (bytes.clone(), None),
        }
    }

    /// Connect the node the policy and the pool pick for `decision`: admission first (a node
    /// under a login storm makes clients wait, never overloads), then its link for this domain
    /// (TCP, PROXY header, TLS: `backend::connect`); a node whose link fails is marked
    /// (passive health) and the next candidate tried.
    async fn open_backend(
        &mut self,
        decision: &Decision,
        source: KeySource,
        admit: Admit,
        trace: &mut Trace,
    ) -> Result<(usize, BackendStream), Failure> {
        let (shared, rt) = (self.at.shared, self.at.rt);
        let health = &rt.config.health;
        let mut tried = Vec::new();
        // Release what the previous backend held before asking for more.
        self.guard = None;
        self.permit = None;
        while let Some((idx, guard)) = rt.pick(&self.domain, decision, &tried) {
            tried.push(idx);
            let state = &rt.states[idx];
            // Routing only picks members of the domain, which all have a link; never fall back
            // to an unconfigured one (see `Runtime::link`).
            let Some(link) = rt.link(&self.domain, idx) else {
                tracing::warn!(backend = %rt.names[idx], domain = %self.domain, "no link to this node for the domain; skipped");
                continue;
            };
            let permit = match admit {
                Admit::Now => Some(self.admit(idx).await?),
                Admit::AtFirstSasl => None,
            };
            match connect(
                &rt.config.backends[idx],
                &link,
                &self.domain,
                &self.at.origin,
                rt.config.limits.backend_connect_timeout,
                &shared.metrics,
            )
            .await
            {
                Ok(stream) => {
                    // An open link proves little about an XMPP node, so only the active
                    // checks count successes; a failed link does count as a failure.
                    let name = &rt.names[idx];
                    shared
                        .metrics
                        .routed_total
                        .with_label_values(&[name, source.as_str()])
                        .inc();
                    trace.backend = Some(name.clone());
                    trace.source = Some(source);
                    self.guard = Some(guard);
                    self.permit = permit;
                    self.placement = Some(decision.placement.clone());
                    return Ok((idx, stream));
                }
                Err(e) => {
                    tracing::warn!(backend = %rt.names[idx], error = %e, "backend connect failed; trying the next node");
                    if let Some(t) = state.record(false, health.rise, health.fall) {
                        shared.note_transition(&rt.names[idx], t);
                    }
                }
            }
        }
        Err(Failure::Refuse(
            Condition::RemoteConnectionFailed,
            "no server node is reachable".into(),
        ))
    }

    /// The admission slot of node `idx` for one login (it waits in the node's queue under a
    /// login storm); a refusal becomes the client's stream error.
    async fn admit(&self, idx: usize) -> Result<Permit, Failure> {
        let (shared, rt) = (self.at.shared, self.at.rt);
        match rt.states[idx].admission.admit().await {
            Ok(p) => Ok(p),
            Err(refused) => {
                shared
                    .metrics
                    .admission_refused_total
                    .with_label_values(&[&rt.names[idx]])
                    .inc();
                tracing::warn!(backend = %rt.names[idx], reason = %refused, "login refused by admission control");
                Err(match &rt.config.admission.overflow_redirect {
                    Some(other) => Failure::Refuse(
                        Condition::SeeOtherHost(other.clone()),
                        "this node is busy; try the other proxy".into(),
                    ),
                    None => Failure::Refuse(
                        Condition::ResourceConstraint,
                        "too many logins at once; try again shortly".into(),
                    ),
                })
            }
        }
    }

    /// Connect a node, replay the client's header, and swallow the node's header and features
    /// (the client already has the proxy's). A node offering other mechanisms than the client
    /// was shown is counted and the cache refreshed; the login goes on regardless.
    async fn open_and_swallow(
        &mut self,
        decision: &Decision,
        source: KeySource,
        shown: Option<&[String]>,
        trace: &mut Trace,
    ) -> Result<(usize, Framed<BackendStream>), Failure> {
        let (idx, tcp) = self
            .open_backend(decision, source, Admit::Now, trace)
            .await?;
        let (shared, rt) = (self.at.shared, self.at.rt);
        let limits = &rt.config.limits;
        let mut backend = Framed::new(tcp, limits.max_negotiation_element_bytes);
        backend
            .send(&self.header_bytes, SEND_LIMIT)
            .await
            .map_err(|_| backend_lost())?;
        let deadline = self.at.started + limits.negotiation_timeout;
        let (header, features) = read_preamble(&mut backend, deadline).await.map_err(|e| {
            tracing::warn!(backend = %rt.names[idx], error = %e, "backend preamble unusable");
            backend_lost()
        })?;
        self.backend_ns = header.ns;
        // Order is not significant (Prosody shuffles it per stream; XEP-0474 hashes a sorted
        // list): only a different set of mechanisms is a mismatch.
        if let Some(shown) = shown
            && !same_set(shown, &features.mechanisms)
        {
            let name = &rt.names[idx];
            shared
                .metrics
                .feature_mismatch_total
                .with_label_values(&[name])
                .inc();
            tracing::warn!(backend = %name, shown = ?shown, offered = ?features.mechanisms, "backend offers other SASL mechanisms than the client was shown; refreshing");
            shared
                .features
                .refresh(
                    &rt.members_of(&self.domain),
                    &self.domain,
                    rt.config.probe.timeout,
                    &shared.metrics,
                )
                .await;
        }
        Ok((idx, backend))
    }

    /// Relay, parsing both ways, until authentication ends. Returns the backend to relay with,
    /// or `None` if the node closed the stream first.
    async fn run(
        mut self,
        client: &mut Framed<ClientTls>,
        mut backend: Framed<BackendStream>,
        mut idx: usize,
        trace: &mut Trace,
    ) -> Result<Option<Routed>, Failure> {
        let limits = &self.at.rt.config.limits;
        let deadline = self.at.started + limits.negotiation_timeout;
        client.set_max_frame(limits.max_negotiation_element_bytes);
        loop {
            while let Some((kind, bytes)) =
                backend.buffered_frame().map_err(backend_frame_failure)?
            {
                if self
                    .on_backend_frame(client, &mut backend, idx, kind, bytes)
                    .await?
                {
                    return Ok(Some(self.finish(backend, idx)));
                }
            }
            while let Some((kind, bytes)) = client.buffered_frame().map_err(client_frame_failure)? {
                if let Some((new_idx, new_backend)) = self
                    .on_client_frame(&mut backend, idx, kind, bytes, trace)
                    .await?
                {
                    idx = new_idx;
                    backend = new_backend;
                }
                if self.first_after_auth.is_some() {
                    // What follows stays in the client's buffer, behind it, for the relay.
                    return Ok(Some(self.finish(backend, idx)));
                }
            }
            tokio::select! {
                r = client.fill(deadline) => match r {
                    Ok(()) => {}
                    // The client vanished: drop the node's socket without a stream close.
                    Err(FrameError::Eof) | Err(FrameError::Io(_)) => return Err(Failure::Quiet("client gone during authentication")),
                    Err(e) => return Err(client_frame_failure(e)),
                },
                r = backend.fill(deadline) => match r {
                    Ok(()) => {}
                    Err(FrameError::Eof) => return Ok(None),
                    Err(FrameError::Timeout) => return Err(client_frame_failure(FrameError::Timeout)),
                    Err(_) => return Err(backend_lost()),
                },
            }
        }
    }

    /// Authentication is over: count it, free the admission slot, hand over to the relay.
    fn finish(&mut self, backend: Framed<BackendStream>, idx: usize) -> Routed {
        self.at
            .shared
            .metrics
            .negotiation_seconds
            .observe(self.at.started.elapsed().as_secs_f64());
        // The admission slot goes to the next login.
        self.permit = None;
        self.replay = None;
        let guard = self
            .guard
            .take()
            .expect("a routed negotiation holds a guard");
        Routed {
            backend,
            idx,
            guard,
            client_ns: std::mem::take(&mut self.client_ns),
            backend_ns: std::mem::take(&mut self.backend_ns),
            client_first: self.first_after_auth.take(),
        }
    }

    /// The client's first element after a legacy login with `replay` kept. A `<resume/>` whose
    /// verified id names another node (the ring changed since the session began, or the node
    /// drains) moves the stream there: the same PLAIN login is replayed on that node, then the
    /// stream restarted, and the `<resume/>` goes to it through the relay. If anything fails on
    /// the way, the stream stays where it is (the node will answer `<failed/>`).
    async fn first_after_auth(
        &mut self,
        idx: usize,
        bytes: Bytes,
        trace: &mut Trace,
    ) -> Option<(usize, Framed<BackendStream>)> {
        self.awaiting_first = false;
        self.first_after_auth = Some(bytes.clone());
        let replay = self.replay.take()?;
        let rt = self.at.rt;
        let el = Element::parse(&bytes, &self.client_ns).ok()?;
        let previd = el.attr("previd").filter(|_| el.is("resume", NS_SM))?;
        let node = match rt.sm_keys.check(&self.domain, previd) {
            Checked::Valid { node, .. } if node != rt.names[idx] => node,
            _ => return None,
        };
        let target = rt.index_of(&node)?;
        let base = rt.decide(&self.domain, trace.jid.as_deref(), self.at.peer.ip(), true)?;
        // Only the session's node will do: elsewhere the resume fails anyway.
        let decision = Decision {
            placement: Placement::Pinned(node.clone()),
            ..base.resuming_on(node.clone())
        };
        let kept = (
            self.guard.take(),
            self.permit.take(),
            self.placement.clone(),
            trace.backend.clone(),
            trace.source,
            self.backend_ns.clone(),
        );
        match self.replay_on(&decision, target, &replay, trace).await {
            Some(moved) => {
                tracing::debug!(from = %rt.names[idx], to = %node, "legacy resume moved to the session's node");
                Some(moved)
            }
            None => {
                tracing::info!(from = %rt.names[idx], to = %node, "legacy resume could not move to the session's node; left where it is");
                (
                    self.guard,
                    self.permit,
                    self.placement,
                    trace.backend,
                    trace.source,
                    self.backend_ns,
                ) = kept;
                None
            }
        }
    }

    /// Open `target` for `decision`, replay the login `auth` and the client's restart header,
    /// and swallow the node's answers: a stream on `target` in the state the client's is in.
    async fn replay_on(
        &mut self,
        decision: &Decision,
        target: usize,
        auth: &[u8],
        trace: &mut Trace,
    ) -> Option<(usize, Framed<BackendStream>)> {
        let restart = self.restart_header.clone()?;
        let (idx, mut backend) = self
            .open_and_swallow(decision, KeySource::Resume, None, trace)
            .await
            .ok()?;
        if idx != target {
            return None;
        }
        let deadline = self.at.started + self.at.rt.config.limits.negotiation_timeout;
        backend.send(auth, SEND_LIMIT).await.ok()?;
        loop {
            let (kind, frame) = backend.next_non_ws(deadline).await.ok()?;
            if kind != FrameKind::Element {
                return None;
            }
            let el = Element::parse(&frame, &self.backend_ns).ok()?;
            if el.is("success", NS_SASL) {
                break;
            }
            if !el.is("challenge", NS_SASL) {
                return None;
            }
        }
        backend.restart();
        backend.send(&restart, SEND_LIMIT).await.ok()?;
        let (header, _features) = read_preamble(&mut backend, deadline).await.ok()?;
        self.backend_ns = header.ns;
        Some((idx, backend))
    }

    /// One frame from the node. Returns true when authentication is complete.
    async fn on_backend_frame(
        &mut self,
        client: &mut Framed<ClientTls>,
        backend: &mut Framed<BackendStream>,
        idx: usize,
        kind: FrameKind,
        bytes: Bytes,
    ) -> Result<bool, Failure> {
        let mut out = bytes.clone();
        let mut done = false;
        match kind {
            FrameKind::Header => {
                let header = StreamHeader::parse(&bytes).map_err(|_| backend_lost())?;
                self.backend_ns = header.ns;
                client.header_sent = true;
            }
            FrameKind::Element => {
                let element =
                    Element::parse(&bytes, &self.backend_ns).map_err(|_| backend_lost())?;
                let metrics = &self.at.shared.metrics;
                let mech = Metrics::mechanism_label(&self.mechanism);
                if element.is("features", STREAM_NS) {
                    out = features::filter(&bytes, &self.backend_ns)
                        .map_err(|_| backend_lost())?
                        .bytes
                        .into();
                    // With a PLAIN login kept for replay, the client's first element decides
                    // (a resume may have to move); otherwise authentication is over.
                    if self.authenticated
                        && self.replay.is_some()
                        && element.child("sm", NS_SM).is_some()
                    {
                        self.awaiting_first = true;
                    } else {
                        done = self.authenticated;
                    }
                } else if element.is("success", NS_SASL) {
                    metrics
                        .sasl_total
                        .with_label_values(&[mech, "success"])
                        .inc();
                    // Both streams restart after legacy SASL success (RFC 6120 §6.4.6).
                    self.authenticated = true;
                    client.restart();
                    backend.restart();
                } else if element.is("success", NS_SASL2) {
                    metrics
                        .sasl_total
                        .with_label_values(&[mech, "success"])
                        .inc();
                    // Bind 2's session id goes out wrapped; an inline resume is answered here.
                    let node = &self.at.rt.names[idx];
                    out = resumption::rewrite_sasl2_success(
                        &self.sm_context(node),
                        &bytes,
                        &element,
                        self.inline.as_ref(),
                    );
                    done = true;
                } else if element.local_name() == "failure"
                    && (element.ns == NS_SASL || element.ns == NS_SASL2)
                {
                    self.sasl_in_flight = false;
                    metrics
                        .sasl_total
                        .with_label_values(&[mech, "failure"])
                        .inc();
                }
            }
            FrameKind::Whitespace | FrameKind::StreamEnd => {}
        }
        client
            .send(&out, SEND_LIMIT)
            .await
            .map_err(|_| Failure::Quiet("client write failed"))?;
        Ok(done)
    }

    /// One frame from the client. A SASL attempt naming a user who belongs on another node
    /// moves the connection there; returns the new node if so.
    async fn on_client_frame(
        &mut self,
        backend: &mut Framed<BackendStream>,
        idx: usize,
        kind: FrameKind,
        mut bytes: Bytes,
        trace: &mut Trace,
    ) -> Result<Option<(usize, Framed<BackendStream>)>, Failure> {
        if kind == FrameKind::Element && self.awaiting_first {
            return Ok(self.first_after_auth(idx, bytes, trace).await);
        }
        if kind == FrameKind::Header && self.authenticated {
            let header = check_restart(&self.at.rt.config, &bytes, &self.domain)?;
            self.client_ns = header.ns;
            self.restart_header = Some(bytes.clone());
        }
        if kind == FrameKind::Element && !self.authenticated {
            let element = Element::parse(&bytes, &self.client_ns).map_err(client_xml_failure)?;
            let payload = if element.is("auth", NS_SASL) {
                Some(element.text.clone())
            } else if element.is("authenticate", NS_SASL2) {
                Some(
                    element
                        .child("initial-response", NS_SASL2)
                        .map(|e| e.text.clone())
                        .unwrap_or_default(),
                )
            } else {
                None
            };
            // A SASL2 attempt that resumes inline is routed to the session's node.
            let resume_node = match payload {
                Some(_) => {
                    let (rewritten, node) = self.sasl_attempt(&bytes, &element);
                    bytes = rewritten;
                    node
                }
                None => None,
            };
            if let Some(text) = payload {
                self.mechanism = element.attr("mechanism").unwrap_or_default().to_string();
                let key = sasl::decode_payload(&text)
                    .ok()
                    .flatten()
                    .and_then(|p| {
                        sasl::claimed_identity(&self.mechanism, &p, &self.domain)
                            .ok()
                            .flatten()
                    })
                    .and_then(|j| normalize_bare_jid(&j));
                if key.is_some() {
                    // A retry as another user: the access log names who tried last.
                    trace.jid = key.clone();
                }
                let rt = self.at.rt;
                let ip = self.at.peer.ip();
                let decision = match &resume_node {
                    Some(node) => rt
                        .decide(&self.domain, key.as_deref(), ip, true)
                        .map(|d| d.resuming_on(node.clone())),
                    None => key
                        .as_deref()
                        .and_then(|jid| rt.decide(&self.domain, Some(jid), ip, true)),
                };
                // Only a different placement moves the client: the same user (or a key that
                // does not depend on the user) stays where it is, whatever the load is now,
                // and so does a resume whose session is on this very node.
                if let Some(decision) = decision
                    && self.placement.as_ref() != Some(&decision.placement)
                    && resume_node.as_deref() != Some(rt.names[idx].as_str())
                {
                    if self.sasl_in_flight {
                        return Err(Failure::Refuse(
                            Condition::PolicyViolation,
                            "a new login before the server answered the last one".into(),
                        ));
                    }
                    if self.reroutes >= MAX_REROUTES {
                        return Err(Failure::Refuse(
                            Condition::PolicyViolation,
                            "too many logins as other users on one connection".into(),
                        ));
                    }
                    self.reroutes += 1;
                    self.sasl_in_flight = true;
                    let source = if resume_node.is_some() {
                        KeySource::Resume
                    } else {
                        source_of(&decision, false)
                    };
                    let (new_idx, mut new_backend) = self
                        .open_and_swallow(&decision, source, None, trace)
                        .await?;
                    new_backend
                        .send(&bytes, SEND_LIMIT)
                        .await
                        .map_err(|_| backend_lost())?;
                    tracing::debug!(from = %rt.names[idx], to = %rt.names[new_idx], "SASL retry re-routed");
                    return Ok(Some((new_idx, new_backend)));
                }
                // A login starts on this node: its admission slot, if the stream was routed
                // before any login (by its header) and holds none yet.
                if self.permit.is_none() {
                    self.permit = Some(self.admit(idx).await?);
                }
                self.sasl_in_flight = true;
            }
        }
        backend
            .send(&bytes, SEND_LIMIT)
            .await
            .map_err(|_| backend_lost())?;
        Ok(None)
    }
}

/// How long an interrupted relay (drain, shutdown) waits for an element boundary before it
/// closes without a word rather than cut a stanza in half.
const BOUNDARY_TIMEOUT: Duration = Duration::from_secs(5);

/// After negotiation: relay bytes until the end (bytes read ahead during negotiation first).
/// The relay is registered on its backend so that draining or shutdown can ask it to leave.
async fn relay_to_end(
    at: &At<'_>,
    client: Framed<ClientTls>,
    routed: Routed,
    trace: &mut Trace,
) -> ActiveGuard {
    let Routed {
        backend,
        idx,
        guard,
        client_ns,
        backend_ns,
        client_first,
    } = routed;
    let (shared, rt) = (at.shared, at.rt);
    let name = rt.names[idx].clone();
    let m = &shared.metrics;
    let open = m.backend_connections_open.with_label_values(&[&name]);
    let up = m
        .relayed_bytes_total
        .with_label_values(&[&name, "client_to_backend"]);
    let down = m
        .relayed_bytes_total
        .with_label_values(&[&name, "backend_to_client"]);
    let (mut client_io, client_ahead) = client.into_parts();
    let (mut backend_io, backend_ahead) = backend.into_parts();
    // Keep only the bytes read ahead (exact size, usually none), not the negotiation buffers'
    // capacity: the relay may live for days.
    let (client_ahead, backend_ahead) = {
        // Moved in here so the original buffers are dropped now, not when the relay ends.
        let (client, backend) = (client_ahead, backend_ahead);
        // An element negotiation held back goes first, then what the client sent after it.
        let mut up = client_first.map(|b| b.to_vec()).unwrap_or_default();
        up.extend_from_slice(&client);
        (up, backend.to_vec())
    };
    let pinned = trace.source == Some(KeySource::Pin);
    let (_registration, commands) = rt.states[idx].register_relay(pinned);
    trace.negotiating = None;
    let redirect_to = rt.config.drain.redirect_to.clone().unwrap_or_else(|| {
        let domain = trace.domain.clone().unwrap_or_default();
        format!("{domain}:{}", at.local.port())
    });
    let everyone_out = shared.interrupt_all.clone();
    let interrupt = async move {
        let command = tokio::select! {
            c = commands => match c {
                Ok(c) => c,
                // Unregistered without a command: nothing will ever interrupt this relay.
                Err(_) => std::future::pending().await,
            },
            _ = everyone_out.cancelled() => Command::Shutdown,
        };
        match command {
            Command::Drain => Interrupt {
                to_client: render(
                    &Condition::SeeOtherHost(redirect_to),
                    Some("this server node is being drained; please reconnect"),
                )
                .into(),
                // The session ends on the node: the client starts afresh on another one.
                to_backend: Some(Bytes::from_static(b"</stream:stream>")),
                reason: "drain",
            },
            Command::Shutdown => Interrupt {
                to_client: render(&Condition::SystemShutdown, Some("the proxy is restarting"))
                    .into(),
                // No stream close: an XEP-0198 session stays resumable through another proxy.
                to_backend: None,
                reason: "shutdown",
            },
        }
    };
    // XEP-0198 ids are rewritten in flight and resumption outcomes counted.
    let (mut to_backend, mut to_client) = resumption::watches(
        resumption::Context {
            keys: rt.sm_keys.clone(),
            domain: trace.domain.clone().unwrap_or_default(),
            node: name.clone(),
            known_nodes: rt.known_nodes.clone(),
            metrics: shared.metrics.clone(),
        },
        client_ns,
        backend_ns,
    );
    open.inc();
    let open = GaugeGuard(open);
    let stats = relay::relay(
        &mut client_io,
        &mut backend_io,
        &client_ahead,
        &backend_ahead,
        rt.config.limits.half_close_timeout,
        BOUNDARY_TIMEOUT,
        |n| up.inc_by(n),
        |n| down.inc_by(n),
        relay::Watches {
            up: Some(&mut to_backend),
            down: Some(&mut to_client),
        },
        interrupt,
    )
    .await;
    drop(open);
    trace.relay = Some(stats);
    guard
}

/// Send a stream error (preceded by a header if the client has none yet) and close.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    rt: &Runtime,
    client: &mut Framed<S>,
    trace: &Trace,
    failure: &Failure,
) {
    let mut out = Vec::new();
    if !client.header_sent && !matches!(failure, Failure::Quiet(_) | Failure::Reject(..)) {
        let domain = trace.domain.clone().unwrap_or_else(|| {
            rt.config
                .routing
                .domains
                .first()
                .cloned()
                .unwrap_or_default()
        });
        out.extend_from_slice(proxy_header(&domain, &new_stream_id()).as_bytes());
    }
    match failure {
        Failure::Refuse(condition, text) => {
            shared
                .metrics
                .stream_errors_total
                .with_label_values(&[condition.as_str()])
                .inc();
            out.extend_from_slice(&render(condition, Some(text)));
        }
        Failure::ClientClosedStream => out.extend_from_slice(b"</stream:stream>"),
        Failure::Quiet(_) | Failure::Reject(..) => {}
    }
    if !out.is_empty() {
        let _unsent = client.send(&out, SEND_LIMIT).await;
    }
    let _shut = tokio::time::timeout(SEND_LIMIT, client.io.shutdown()).await;
}

fn client_frame_failure(e: FrameError) -> Failure {
    match e {
        FrameError::Eof => Failure::Quiet("client closed"),
        FrameError::Io(_) => Failure::Quiet("client i/o error"),
        FrameError::Timeout => Failure::Refuse(
            Condition::ConnectionTimeout,
            "too slow to negotiate the stream".into(),
        ),
        FrameError::Scan(ScanError::TooLarge) => Failure::Refuse(
            Condition::PolicyViolation,
            "element too large at this stage".into(),
        ),
        FrameError::Scan(ScanError::TooDeep) => Failure::Refuse(
            Condition::PolicyViolation,
            "elements nested too deeply".into(),
        ),
        FrameError::Scan(ScanError::Restricted(why)) => {
            Failure::Refuse(Condition::RestrictedXml, why.into())
        }
        FrameError::Scan(ScanError::NotWellFormed(why)) => {
            Failure::Refuse(Condition::NotWellFormed, why.into())
        }
    }
}

fn client_xml_failure(e: XmlError) -> Failure {
    match e {
        XmlError::Restricted(why) => Failure::Refuse(Condition::RestrictedXml, why),
        XmlError::Limit(why) => Failure::Refuse(Condition::PolicyViolation, why),
        other => Failure::Refuse(Condition::NotWellFormed, other.to_string()),
    }
}

fn backend_frame_failure(e: FrameError) -> Failure {
    match e {
        FrameError::Timeout => Failure::Refuse(
            Condition::ConnectionTimeout,
            "the server node did not answer in time".into(),
        ),
        _ => backend_lost(),
    }
}

fn backend_lost() -> Failure {
    Failure::Refuse(
        Condition::RemoteConnectionFailed,
        "lost the connection to the server node".into(),
    )
}

/// A fresh stream id for headers the proxy itself sends.
fn new_stream_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(raw: &str, ns: &str) -> String {
        let ctx = NsContext {
            default_ns: "jabber:client".into(),
            prefixes: vec![],
        };
        let el = Element::parse(raw.as_bytes(), &ctx).unwrap();
        String::from_utf8(with_initial_response(raw.as_bytes(), &el, ns, " AGFsaWNlAHB3 ").to_vec())
            .unwrap()
    }

    #[test]
    fn response_becomes_the_initial_response() {
        assert_eq!(
            rewrite(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>",
                NS_SASL
            ),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>"
        );
        assert_eq!(
            rewrite(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'></auth>",
                NS_SASL
            ),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>"
        );
        assert_eq!(
            rewrite(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><user-agent id='x>y'/></authenticate>",
                NS_SASL2
            ),
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGFsaWNlAHB3</initial-response><user-agent id='x>y'/></authenticate>"
        );
        assert_eq!(
            rewrite(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response/><user-agent/></authenticate>",
                NS_SASL2
            ),
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGFsaWNlAHB3</initial-response><user-agent/></authenticate>"
        );
    }

    #[test]
    fn mechanism_order_is_not_a_mismatch() {
        let s = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        assert!(same_set(
            &s(&["PLAIN", "SCRAM-SHA-1"]),
            &s(&["SCRAM-SHA-1", "PLAIN"])
        ));
        assert!(!same_set(&s(&["PLAIN", "SCRAM-SHA-1"]), &s(&["PLAIN"])));
        assert!(!same_set(&s(&["PLAIN"]), &s(&["SCRAM-SHA-1"])));
    }

    #[test]
    fn only_client_first_mechanisms_get_an_empty_challenge() {
        assert!(
            client_first("PLAIN")
                && client_first("SCRAM-SHA-256")
                && client_first("HT-SHA-256-NONE")
        );
        assert!(!client_first("DIGEST-MD5") && !client_first("EXTERNAL") && !client_first(""));
    }
}
