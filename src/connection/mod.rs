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
//! Every refusal is written by [`refuse`]; the one access-log line is written from the
//! record [`trace`] keeps. The negotiation talks to the client through an element transport
//! ([`transport`]), so another front end is another transport, not another negotiation.

mod capture;
mod front;
mod handover;
mod negotiate;
mod refuse;
mod trace;
mod transport;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};
use tracing::Instrument;

use self::refuse::{Failure, refuse};
use self::trace::{Counted, GaugeGuard, NegotiatingGuard, Trace};
use self::transport::ElementTransport;
use crate::config::TlsMode;
use crate::prefixed::Prefixed;
use crate::proxy_protocol::Origin;
use crate::runtime::{Runtime, Shared};

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

/// How long the proxy waits to deliver its own short messages (errors, challenges).
const SEND_LIMIT: Duration = Duration::from_secs(5);

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

/// Where a connection stands: shared state, its runtime snapshot, its addresses and age.
pub(crate) struct At<'a> {
    /// Process-wide state.
    pub(crate) shared: &'a Shared,
    /// The configuration snapshot this connection lives by.
    pub(crate) rt: &'a Runtime,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The proxy's address the client reached (for `<see-other-host/>` back at the proxy).
    pub(crate) local: SocketAddr,
    /// When the connection was accepted.
    pub(crate) started: Instant,
    /// What the PROXY protocol header to a node says about the client.
    pub(crate) origin: Origin,
}

/// A connection as it was accepted: by which listener, from where, when, and the
/// configuration it lives by.
pub(crate) struct Arrival<'a> {
    /// Process-wide state.
    pub(crate) shared: &'a Shared,
    /// The configuration snapshot this connection lives by.
    pub(crate) rt: &'a Runtime,
    /// The listener that accepted it.
    pub(crate) listener: &'a ListenerCtx,
    /// The socket's peer (a front balancer, or the client itself).
    pub(crate) socket_peer: SocketAddr,
    /// When it was accepted.
    pub(crate) started: Instant,
}

/// The phases in order: front (to TLS), the client's header, negotiation, relay.
async fn drive(
    arrival: &Arrival<'_>,
    tcp: TcpStream,
    counted: &mut Counted,
    trace: &mut Trace,
) -> Result<(), Failure> {
    let (shared, rt, started) = (arrival.shared, arrival.rt, arrival.started);
    let prerouting_deadline = started + rt.config.limits.prerouting_timeout;
    let front::Accepted { mut client, origin } =
        front::accept(arrival, tcp, prerouting_deadline, counted, trace).await?;
    let at = At {
        shared,
        rt,
        peer: origin.source,
        local: origin.destination,
        started,
        origin,
    };
    let metrics = &shared.metrics;
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
