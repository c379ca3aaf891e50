//! Negotiation is over: the two streams go to the byte relay ([`crate::relay`]), registered
//! on their backend so that a drain or a shutdown can ask the connection to leave.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Duration;

use super::context::At;
use super::trace::{Counted, GaugeGuard, Trace};
use crate::backend::link::BackendStream;
use crate::backend::record::BackendId;
use crate::backend::state::{ActiveGuard, Command};
use crate::framed::Framed;
use crate::relay::{self, Interrupt};
use crate::resumption;
use crate::route::KeySource;
use crate::xmpp::element::NsContext;
use crate::xmpp::stream_error::{Condition, render};

/// How long an interrupted relay (drain, shutdown) waits for an element boundary before it
/// closes without a word rather than cut a stanza in half.
const BOUNDARY_TIMEOUT: Duration = Duration::from_secs(5);

/// A routed, authenticated connection ready for the relay.
pub(crate) struct Routed {
    /// The node's side, with whatever it read ahead.
    pub(crate) backend: Framed<BackendStream>,
    /// The node.
    pub(crate) id: BackendId,
    /// Keeps the connection counted on that backend until it ends.
    pub(crate) guard: ActiveGuard,
    /// What the routing key came from (a pinned relay stays through a drain).
    pub(crate) source: KeySource,
    /// The domain the client logged in to.
    pub(crate) domain: String,
    /// Namespaces of the client's stream header (to read its top-level elements).
    pub(crate) client_ns: NsContext,
    /// Namespaces of the node's current stream header.
    pub(crate) backend_ns: NsContext,
    /// A client element read during negotiation and not sent yet: it goes first in the relay.
    pub(crate) client_first: Option<Bytes>,
}

/// Relay bytes until the end (bytes read ahead during negotiation first). `client` is the
/// client's socket and the bytes read from it but not consumed.
pub(crate) async fn relay_to_end<S: AsyncRead + AsyncWrite + Unpin>(
    at: &At<'_>,
    client: (S, bytes::BytesMut),
    routed: Routed,
    counted: &mut Counted,
    trace: &mut Trace,
) {
    let Routed {
        backend,
        id,
        guard,
        source,
        domain,
        client_ns,
        backend_ns,
        client_first,
    } = routed;
    let (shared, rt) = (at.shared, at.rt);
    let name = rt.backends.name(id).to_string();
    let m = &shared.metrics;
    let open = m.backend_connections_open.with_label_values(&[&name]);
    let up = m
        .relayed_bytes_total
        .with_label_values(&[&name, "client_to_backend"]);
    let down = m
        .relayed_bytes_total
        .with_label_values(&[&name, "backend_to_client"]);
    let (mut client_io, client_ahead) = client;
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
    let (_registration, commands) = rt.backends[id]
        .state
        .register_relay(source == KeySource::Pin);
    counted.negotiating = None;
    if let Some(ticket) = counted.source.as_mut() {
        ticket.authenticated();
    }
    let redirect_to = rt
        .config
        .drain
        .redirect_to
        .clone()
        .unwrap_or_else(|| format!("{domain}:{}", at.local.port()));
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
            Command::NodeDown => Interrupt {
                to_client: render(
                    &Condition::SeeOtherHost(redirect_to),
                    Some("this server node stopped answering; please reconnect"),
                )
                .into(),
                // Not ended: if the node comes back, the client resumes its session there.
                to_backend: None,
                reason: "node_down",
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
            domain,
            node: name.clone(),
            known_nodes: rt.known_nodes.clone(),
            metrics: shared.metrics.clone(),
        },
        client_ns,
        backend_ns,
    );
    let open = GaugeGuard::inc(open);
    let stats = relay::relay(
        &mut client_io,
        &mut backend_io,
        &client_ahead,
        &backend_ahead,
        relay::Bounds {
            half_close: rt.config.limits.half_close_timeout,
            boundary: BOUNDARY_TIMEOUT,
            write: rt.config.limits.write_timeout,
        },
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
    drop(guard);
}
