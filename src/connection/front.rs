//! The front of a connection, up to TLS: a front balancer's PROXY header, the TLS style of an
//! `auto` listener, STARTTLS, and the TLS handshake. What comes out is a client on TLS and
//! what the node's PROXY header will say about it.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::capture;
use super::context::{Arrival, ClientTls, ListenerCtx};
use super::refuse::{Failure, client_frame_failure, client_xml_failure, refuse};
use super::trace::{Counted, GaugeGuard, Trace};
use super::transport::{ClientStream, ElementTransport};
use crate::config::TlsMode;
use crate::prefixed::Prefixed;
use crate::proxy_protocol::{self, Origin};
use crate::runtime::{Runtime, Shared};
use crate::xmpp::element::Element;
use crate::xmpp::features::NS_TLS;
use crate::xmpp::scanner::FrameKind;
use crate::xmpp::stream_error::Condition;

const FEATURES_STARTTLS: &str = "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";
const PROCEED: &[u8] = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// What the client speaks once the front is done. The TLS streams are boxed (a TLS session is
/// over a kilobyte): the connection's task keeps a slot for every value it holds across an
/// await, for as long as the connection lives, so it holds pointers to them instead.
pub(crate) enum Front {
    /// XMPP over TLS.
    Xmpp(Box<ClientStream<ClientTls>>),
    /// HTTP over TLS (ALPN `http/1.1`, or a request without ALPN), with the bytes read to
    /// tell it from XMPP, on a listener that serves WebSocket.
    HttpTls(Box<Prefixed<ClientTls>>),
    /// HTTP without TLS, on a listener with `websocket_plain` (behind an HTTP balancer).
    HttpPlain(TcpStream),
}

/// A client past the front: TLS up, or HTTP on a WebSocket listener.
pub(crate) struct Accepted {
    /// The client's connection.
    pub(crate) client: Front,
    /// What the PROXY protocol header to a node says about the client (its address, the
    /// address it reached, TLS facts).
    pub(crate) origin: Origin,
}

/// From the accepted socket to TLS, whichever way TLS starts on this listener.
pub(crate) async fn accept(
    arrival: &Arrival<'_>,
    mut tcp: TcpStream,
    deadline: Instant,
    counted: &mut Counted,
    trace: &mut Trace,
) -> Result<Accepted, Failure> {
    let (shared, rt, listener) = (arrival.shared, arrival.rt, arrival.listener);
    let socket_peer = arrival.socket_peer;
    let limits = &rt.config.limits;
    let socket_local = tcp
        .local_addr()
        .map_err(|_| Failure::Quiet("socket gone"))?;
    // Behind a front balancer, the client is who its PROXY header says, from here on.
    let (peer, local) =
        match front_header(shared, rt, listener, &mut tcp, socket_peer, deadline).await? {
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
    crate::socket::keepalive(&tcp);
    let websocket = rt
        .config
        .listeners
        .iter()
        .find(|l| l.name == listener.name)
        .and_then(|l| l.websocket.as_ref());
    let plain_http = websocket.is_some_and(|w| w.plain);
    let first = match listener.tls {
        TlsMode::Direct => TLS_RECORD,
        TlsMode::Starttls if !plain_http => b'<',
        TlsMode::Starttls | TlsMode::Auto => sniff_first(&tcp, deadline).await?,
    };
    // An HTTP request line starts with its method in capitals; an XML stream never does.
    let http = plain_http && first.is_ascii_uppercase();
    let direct = first == TLS_RECORD && listener.tls != TlsMode::Starttls;
    trace.tls = match (direct, http) {
        (true, _) => "direct",
        (false, true) => "plain",
        (false, false) => "starttls",
    };
    let metrics = &shared.metrics;
    metrics
        .connections_total
        .with_label_values(&[&listener.name, trace.tls])
        .inc();
    if listener.tls == TlsMode::Auto {
        // Move the connection from `pending` to the style the first byte showed.
        counted.open = GaugeGuard::inc(
            metrics
                .connections_open
                .with_label_values(&[&listener.name, trace.tls]),
        );
    }

    // Per-source limits, before anything costly (the TLS handshake above all).
    match shared
        .sources
        .admit(&rt.config.sources, peer.ip(), !http, Instant::now())
    {
        Ok(ticket) => counted.source = ticket,
        Err(limit) => {
            return Err(
                refuse_limited(arrival, tcp, peer, limit, !direct && !http, deadline).await,
            );
        }
    }
    if http {
        return Ok(Accepted {
            client: Front::HttpPlain(tcp),
            origin: Origin {
                source: peer,
                destination: local,
                alpn: None,
                sni: None,
                tls_version: None,
                channel_binding: None,
            },
        });
    }
    // After STARTTLS: the name of the clear-text stream, which the client may close over TLS.
    let (prefixed, restarts) = if direct {
        (Prefixed::new(tcp, Default::default()), None)
    } else {
        let mut plain = ClientStream::new(tcp, limits.max_header_bytes);
        let hello = match capture::hello(&rt.config, &mut plain, deadline).await {
            Ok(hello) => hello,
            Err(failure) => {
                refuse(&mut plain, rt.default_domain(), &failure, metrics).await;
                return Err(failure);
            }
        };
        trace.domain = Some(hello.domain.clone());
        if let Err(failure) =
            starttls(rt, &mut plain, &hello.domain, &hello.header.ns, deadline).await
        {
            refuse(&mut plain, &hello.domain, &failure, metrics).await;
            return Err(failure);
        }
        let (tcp, read_ahead) = plain.into_parts();
        // Usually nothing was read past <starttls/>: drop the buffer's capacity with it.
        let read_ahead = if read_ahead.is_empty() {
            Default::default()
        } else {
            read_ahead
        };
        let qname = match hello.header.stream_prefix.as_str() {
            "" => "stream".to_string(),
            prefix => format!("{prefix}:stream"),
        };
        (Prefixed::new(tcp, read_ahead), Some(qname))
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
    let session = tls.get_ref().1;
    if let Some(ticket) = &mut counted.source {
        ticket.handshook(
            &rt.config.sources,
            session.handshake_kind() != Some(rustls::HandshakeKind::Resumed),
        );
    }
    metrics
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
        channel_binding: channel_binding(rt, &listener.name, session),
    };
    let client = match restarts {
        Some(qname) => Front::Xmpp(Box::new(ClientStream::restarting(
            tls,
            limits.max_header_bytes,
            qname.as_bytes(),
        ))),
        None if websocket.is_none() => {
            Front::Xmpp(Box::new(ClientStream::new(tls, limits.max_header_bytes)))
        }
        // Only direct TLS gets here: a STARTTLS client has already spoken XMPP.
        None => xmpp_or_http(tls, limits.max_header_bytes, deadline).await?,
    };
    Ok(Accepted { client, origin })
}

/// How long a refused STARTTLS client gets to send its stream header, so that it can be
/// told why: short, because the refused connection is not counted against its source.
const REFUSAL_HEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Refuse a connection over a per-source limit as cheaply as possible: count it, log it
/// (rate-limited), and close. A client that speaks XMPP in clear first (`stream`: STARTTLS)
/// is told why with `<policy-violation/>` once its header is in; TLS and HTTP clients are
/// closed before their handshake, which is the cost a rate limit is there to avoid.
async fn refuse_limited(
    arrival: &Arrival<'_>,
    tcp: TcpStream,
    peer: SocketAddr,
    limit: crate::sources::Limit,
    stream: bool,
    deadline: Instant,
) -> Failure {
    let (shared, rt) = (arrival.shared, arrival.rt);
    let metrics = &shared.metrics;
    metrics
        .source_refusals_total
        .with_label_values(&[limit.as_str()])
        .inc();
    shared.sources.report(limit, peer.ip(), &rt.config.sources);
    if stream {
        let mut plain = ClientStream::new(tcp, rt.config.limits.max_header_bytes);
        let wait = deadline.min(Instant::now() + REFUSAL_HEADER_WAIT);
        if let Ok(hello) = capture::hello(&rt.config, &mut plain, wait).await {
            let words = Failure::Refuse(Condition::PolicyViolation, limit.text().into());
            refuse(&mut plain, &hello.domain, &words, metrics).await;
        }
    }
    Failure::Limited(limit.as_str())
}

/// The channel-binding data of the client's TLS session, when some node's link passes them
/// (computing them costs a key export per connection, which nobody else needs).
fn channel_binding(
    rt: &Runtime,
    listener: &str,
    session: &rustls::ServerConnection,
) -> Option<Box<crate::channel_binding::Bindings>> {
    if !rt.passes_channel_binding {
        return None;
    }
    let end_point = rt
        .resolvers
        .get(listener)
        .and_then(|r| r.end_point(session.server_name()));
    crate::channel_binding::Bindings::of_session(session, end_point).map(Box::new)
}

/// The first byte of a TLS handshake record.
const TLS_RECORD: u8 = 0x16;

/// On a WebSocket listener: ALPN `http/1.1` is HTTP, `xmpp-client` is XMPP, and without
/// ALPN the first bytes decide (a request line starts with a method in capitals).
async fn xmpp_or_http(
    mut tls: ClientTls,
    max_header: usize,
    deadline: Instant,
) -> Result<Front, Failure> {
    match tls.get_ref().1.alpn_protocol() {
        Some(crate::tls::ALPN_HTTP1) => {
            return Ok(Front::HttpTls(Box::new(Prefixed::new(
                tls,
                Default::default(),
            ))));
        }
        Some(_) => return Ok(Front::Xmpp(Box::new(ClientStream::new(tls, max_header)))),
        None => {}
    }
    let mut first = bytes::BytesMut::with_capacity(512);
    match tokio::time::timeout_at(
        deadline,
        tokio::io::AsyncReadExt::read_buf(&mut tls, &mut first),
    )
    .await
    {
        Err(_) => return Err(Failure::Quiet("silent client")),
        Ok(Err(_)) | Ok(Ok(0)) => return Err(Failure::Quiet("client closed before sending")),
        Ok(Ok(_)) => {}
    }
    if first[0].is_ascii_uppercase() {
        Ok(Front::HttpTls(Box::new(Prefixed::new(tls, first))))
    } else {
        Ok(Front::Xmpp(Box::new(ClientStream::with_buffer(
            tls, first, max_header,
        ))))
    }
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

/// `tls = "auto"` (and a listener with `websocket_plain`): the first byte, left unread. A TLS
/// handshake record starts with 0x16; an XML stream never does.
async fn sniff_first(tcp: &TcpStream, deadline: Instant) -> Result<u8, Failure> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Err(_) => Err(Failure::Quiet("silent client")),
        Ok(Err(_)) | Ok(Ok(0)) => Err(Failure::Quiet("client closed before sending")),
        Ok(Ok(_)) => Ok(first[0]),
    }
}

/// The clear-text part of a STARTTLS connection after its header, up to `<proceed/>`.
async fn starttls(
    rt: &Runtime,
    plain: &mut ClientStream<TcpStream>,
    domain: &str,
    ns: &crate::xmpp::element::NsContext,
    deadline: Instant,
) -> Result<(), Failure> {
    plain.open(domain, FEATURES_STARTTLS.as_bytes()).await?;
    plain.set_max_frame(rt.config.limits.max_prerouting_element_bytes);
    let (kind, bytes) = plain
        .next_frame(deadline)
        .await
        .map_err(client_frame_failure)?;
    if kind == FrameKind::StreamEnd {
        return Err(Failure::ClientClosedStream);
    }
    let element = Element::parse(&bytes, ns).map_err(client_xml_failure)?;
    if !element.is("starttls", NS_TLS) {
        return Err(Failure::Refuse(
            Condition::PolicyViolation,
            "this port requires STARTTLS before anything else".into(),
        ));
    }
    plain.send(PROCEED).await?;
    Ok(())
}
