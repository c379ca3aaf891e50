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

/// Negotiation is over: where the connection stands, the client's socket with the bytes read
/// from it but not consumed, and the node's side.
pub(crate) struct Ready<'a, S> {
    /// The connection's addresses and runtime.
    pub(crate) at: At<'a>,
    /// The client's socket and its bytes read ahead.
    pub(crate) client: (S, bytes::BytesMut),
    /// The node's side.
    pub(crate) routed: Routed,
}

/// Relay bytes until the end (bytes read ahead during negotiation first).
///
/// Everything the relay needs is prepared here, before the future exists, and the future
/// keeps only that: it lives as long as the connection, inside the connection's task, so it
/// is kept small on purpose (no copy of the negotiation's values, no buffer of its own).
pub(crate) fn relay_to_end<'a, S: AsyncRead + AsyncWrite + Unpin + 'a>(
    ready: Ready<'a, S>,
    counted: &'a mut Counted,
    trace: &'a mut Trace,
) -> impl std::future::Future<Output = ()> + 'a {
    let Ready { at, client, routed } = ready;
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
    // capacity: the relay may live for days. An element negotiation held back goes first,
    // then what the client sent after it.
    let client_ahead = {
        let mut up = client_first.map(|b| b.to_vec()).unwrap_or_default();
        up.extend_from_slice(&client_ahead);
        up.into_boxed_slice()
    };
    let backend_ahead = backend_ahead.to_vec().into_boxed_slice();
    let (registration, commands) = rt.backends[id]
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
        interrupt_for(command, redirect_to)
    };
    // XEP-0198 ids are rewritten in flight and resumption outcomes counted.
    let (mut to_backend, mut to_client) = resumption::watches(
        resumption::Context {
            keys: rt.sm_keys.clone(),
            domain,
            node: name,
            known_nodes: rt.known_nodes.clone(),
            metrics: shared.metrics.clone(),
        },
        client_ns,
        backend_ns,
    );
    let bounds = relay::Bounds {
        half_close: rt.config.limits.half_close_timeout,
        boundary: BOUNDARY_TIMEOUT,
        write: rt.config.limits.write_timeout,
    };
    let open = GaugeGuard::inc(open);
    async move {
        let stats = relay::relay(
            &mut client_io,
            &mut backend_io,
            &client_ahead,
            &backend_ahead,
            bounds,
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
        drop(registration);
        trace.relay = Some(stats);
        drop(guard);
    }
}

/// What the proxy tells both sides when `command` ends a live relay.
fn interrupt_for(command: Command, redirect_to: String) -> Interrupt {
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
            to_client: render(&Condition::SystemShutdown, Some("the proxy is restarting")).into(),
            // No stream close: an XEP-0198 session stays resumable through another proxy.
            to_backend: None,
            reason: "shutdown",
        },
    }
}
