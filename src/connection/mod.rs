//! The life of one client connection, top to bottom; each phase lives in its own file.
//!
//! 1. [`front`]: a front balancer's PROXY header, the TLS style (`auto` listeners sniff it),
//!    STARTTLS, the TLS handshake.
//! 2. [`capture`]: the client's stream header, checked; later, the first SASL message and who
//!    it names.
//! 3. [`negotiate`]: route (by the header's `from`, else by the login), open the node
//!    ([`upstream`]: admit, connect, next node on failure), and relay element by element
//!    until authentication ends, in one explicit phase at a time.
//! 4. [`handover`]: the two streams go to the byte relay until either side closes.
//!
//! On a listener that serves WebSocket, [`websocket`] takes over after the front when the
//! client speaks HTTP: discovery files, the WebSocket handshake, then the same phases 2 to 4
//! over the WebSocket seen as an XMPP byte stream.
//!
//! Every refusal is written by [`refuse`]; the one access-log line is written from the
//! record [`trace`] keeps. The negotiation talks to the client through an element transport
//! ([`transport`]), so another front end is another transport, not another negotiation.

mod attempt;
mod capture;
mod context;
mod front;
mod handover;
mod logins;
mod negotiate;
mod refuse;
mod trace;
mod transport;
mod upstream;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

pub use self::context::ListenerCtx;
use self::context::{Arrival, At};
use self::refuse::{Failure, refuse};
use self::trace::{Counted, GaugeGuard, NegotiatingGuard, Trace};
use self::transport::{ClientStream, ElementTransport};
use crate::config::TlsMode;
use crate::proxy_protocol::Origin;
use crate::runtime::Shared;

/// Numbers connections in this process, for the span every log line of one connection
/// carries.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Drive one accepted client connection to its end. Never panics on client input; every
/// failure is a stream error or a quiet close, logged once, in the access log.
pub async fn handle(
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", id, listener = %listener.name, peer = %peer);
    async move {
        let started = Instant::now();
        // An auto listener learns the TLS style from the first byte; until then it is pending.
        let tls = match listener.tls {
            TlsMode::Starttls => "starttls",
            TlsMode::Direct => "direct",
            TlsMode::Auto => "pending",
        };
        let m = &shared.metrics;
        let mut counted = Counted {
            negotiating: Some(NegotiatingGuard::new(&shared)),
            open: GaugeGuard::inc(m.connections_open.with_label_values(&[&listener.name, tls])),
            source: None,
        };
        let mut trace = Trace::default();
        // One snapshot for the whole connection: a reload never changes rules mid-login.
        let rt = shared.runtime.load_full();
        let arrival = Arrival {
            shared: &shared,
            rt: &rt,
            listener: &listener,
            socket_peer: peer,
            started,
        };
        let result = drive(&arrival, tcp, &mut counted, &mut trace).await;
        drop(counted);
        trace.log(
            m,
            &listener.name,
            peer,
            started,
            &result,
            rt.config.log_jids,
        );
    }
    .instrument(span)
    .await
}

/// The phases in order: front (to TLS, or HTTP and WebSocket), then the XMPP stream.
async fn drive(
    arrival: &Arrival<'_>,
    tcp: TcpStream,
    counted: &mut Counted,
    trace: &mut Trace,
) -> Result<(), Failure> {
    let prerouting_deadline = arrival.started + arrival.rt.config.limits.prerouting_timeout;
    let front::Accepted { client, origin } =
        front::accept(arrival, tcp, prerouting_deadline, counted, trace).await?;
    match client {
        front::Front::Xmpp(client) => {
            trace.transport = "tcp";
            serve(arrival, origin, client, counted, trace).await
        }
        front::Front::HttpTls(io) => match websocket::web(arrival, io, origin, trace).await? {
            Some((client, origin)) => serve(arrival, origin, client, counted, trace).await,
            None => Ok(()),
        },
        front::Front::HttpPlain(io) => match websocket::web(arrival, io, origin, trace).await? {
            Some((client, origin)) => serve(arrival, origin, client, counted, trace).await,
            None => Ok(()),
        },
    }
}

/// One XMPP stream, whatever carries it (`trace.transport`): the client's header,
/// negotiation, relay.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    arrival: &Arrival<'_>,
    origin: Origin,
    mut client: ClientStream<S>,
    counted: &mut Counted,
    trace: &mut Trace,
) -> Result<(), Failure> {
    let (shared, rt, started) = (arrival.shared, arrival.rt, arrival.started);
    let prerouting_deadline = started + rt.config.limits.prerouting_timeout;
    let metrics = &shared.metrics;
    metrics
        .streams_total
        .with_label_values(&[&arrival.listener.name, trace.transport])
        .inc();
    let _stream_open = GaugeGuard::inc(metrics.streams_open.with_label_values(&[trace.transport]));
    let at = At {
        shared,
        rt,
        peer: origin.source,
        local: origin.destination,
        started,
        origin,
    };
    let hello = match capture::hello(&rt.config, &mut client, prerouting_deadline).await {
        Ok(hello) => hello,
        Err(failure) => {
            refuse(&mut client, rt.default_domain(), &failure, metrics).await;
            return Err(failure);
        }
    };
    let domain = hello.domain.clone();
    trace.domain = Some(domain.clone());
    // Boxed: the negotiation's state is large and only needed until the relay starts; a
    // connection task that lives for days should not carry it.
    match Box::pin(negotiate::negotiate(&at, &mut client, hello, trace)).await {
        Ok(Some(routed)) => {
            handover::relay_to_end(&at, client.into_parts(), routed, counted, trace).await;
            Ok(())
        }
        Ok(None) => {
            // The node ended the stream; its words were relayed. Bounded: a client that
            // stopped reading must not hold the connection open.
            client.close().await;
            Ok(())
        }
        Err(failure) => {
            refuse(&mut client, &domain, &failure, metrics).await;
            Err(failure)
        }
    }
}
