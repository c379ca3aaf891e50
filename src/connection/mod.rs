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
///
/// Each phase before the relay runs in a box of its own, freed when it ends. A future is as
/// large as the largest state it can be in, and the connection's task keeps that size for as
/// long as the connection lives: inline, a TLS handshake's or a negotiation's state would cost
/// every idle connection tens of kilobytes for days (`tests` below bounds the task's size).
async fn drive(
    arrival: &Arrival<'_>,
    tcp: TcpStream,
    counted: &mut Counted,
    trace: &mut Trace,
) -> Result<(), Failure> {
    let prerouting_deadline = arrival.started + arrival.rt.config.limits.prerouting_timeout;
    let front::Accepted { client, origin } = Box::pin(front::accept(
        arrival,
        tcp,
        prerouting_deadline,
        counted,
        trace,
    ))
    .await?;
    match client {
        front::Front::Xmpp(client) => {
            trace.transport = "tcp";
            serve(arrival, origin, client, counted, trace).await
        }
        // A WebSocket stream's state is larger still (its framing over TLS): boxed too, so
        // that TCP clients, most of a population, do not pay for it.
        front::Front::HttpTls(io) => {
            match Box::pin(websocket::web(arrival, *io, origin, trace)).await? {
                Some((client, origin)) => {
                    Box::pin(serve(arrival, origin, client, counted, trace)).await
                }
                None => Ok(()),
            }
        }
        front::Front::HttpPlain(io) => {
            match Box::pin(websocket::web(arrival, io, origin, trace)).await? {
                Some((client, origin)) => {
                    Box::pin(serve(arrival, origin, client, counted, trace)).await
                }
                None => Ok(()),
            }
        }
    }
}

/// One XMPP stream, whatever carries it (`trace.transport`): negotiation, then the relay.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    arrival: &Arrival<'_>,
    origin: Origin,
    client: Box<ClientStream<S>>,
    counted: &mut Counted,
    trace: &mut Trace,
) -> Result<(), Failure> {
    let metrics = &arrival.shared.metrics;
    metrics
        .streams_total
        .with_label_values(&[&arrival.listener.name, trace.transport])
        .inc();
    let _stream_open = GaugeGuard::inc(metrics.streams_open.with_label_values(&[trace.transport]));
    // Scoped so that nothing of the negotiation's result is kept across the relay's await.
    let relaying = {
        let Some(ready) = Box::pin(negotiated(arrival, origin, client, trace)).await? else {
            return Ok(());
        };
        handover::relay_to_end(ready, counted, trace)
    };
    relaying.await;
    Ok(())
}

/// The client's header, then negotiation: `Some` with both streams ready for the relay, or
/// `None` when the node ended the stream during negotiation (its words were relayed).
async fn negotiated<'a, S: AsyncRead + AsyncWrite + Unpin>(
    arrival: &Arrival<'a>,
    origin: Origin,
    mut client: Box<ClientStream<S>>,
    trace: &mut Trace,
) -> Result<Option<handover::Ready<'a, S>>, Failure> {
    let (shared, rt, started) = (arrival.shared, arrival.rt, arrival.started);
    let prerouting_deadline = started + rt.config.limits.prerouting_timeout;
    let metrics = &shared.metrics;
    let at = At {
        shared,
        rt,
        peer: origin.source,
        local: origin.destination,
        started,
        origin,
    };
    let hello = match capture::hello(&rt.config, &mut *client, prerouting_deadline).await {
        Ok(hello) => hello,
        Err(failure) => {
            refuse(&mut *client, rt.default_domain(), &failure, metrics).await;
            return Err(failure);
        }
    };
    let domain = hello.domain.clone();
    trace.domain = Some(domain.clone());
    match negotiate::negotiate(&at, &mut *client, hello, trace).await {
        Ok(Some(routed)) => Ok(Some(handover::Ready {
            at,
            client: (*client).into_parts(),
            routed,
        })),
        Ok(None) => {
            // The node ended the stream; its words were relayed. Bounded: a client that
            // stopped reading must not hold the connection open.
            client.close().await;
            Ok(None)
        }
        Err(failure) => {
            refuse(&mut *client, &domain, &failure, metrics).await;
            Err(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future `f` returns, without calling it.
    fn future_size<F, A, B, C, D, R>(_: &F) -> usize
    where
        F: FnOnce(A, B, C, D) -> R,
    {
        size_of::<R>()
    }

    /// The connection's task lives as long as the connection and is as large as its largest
    /// state, so an idle connection pays for whatever a phase keeps inline. Relaying, it holds
    /// the client's TLS session (about 1.2 KiB of rustls state), the node's socket and the
    /// relay's two directions; every earlier phase is boxed and freed (see `drive`). An inline
    /// TLS handshake or negotiation makes this tens of kilobytes: the bound catches it.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(&super::handle);
        eprintln!("connection future: {size} bytes");
        assert!(size <= 4096, "the connection's future is {size} bytes");
    }
}
