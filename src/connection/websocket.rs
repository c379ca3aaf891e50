//! A client that speaks HTTP on a WebSocket listener: the HTTP side answers discovery and
//! refuses bad handshakes ([`crate::websocket::http`]); an accepted handshake becomes an
//! XMPP stream over the WebSocket ([`crate::websocket::io::WsIo`]), which `connection/mod.rs`
//! serves with the same phases as a TCP client: the WebSocket client is one more element
//! transport, not another negotiation.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::context::Arrival;
use super::refuse::Failure;
use super::trace::Trace;
use super::transport::ClientStream;
use crate::prefixed::Prefixed;
use crate::proxy_protocol::Origin;
use crate::websocket::http::{self, HttpCtx};
use crate::websocket::io::{WsIo, WsSettings};

/// A client on a WebSocket as the negotiation sees it: the element transport of a byte-stream
/// client over [`WsIo`], which turns each message into stream bytes (`<open/>` into a stream
/// header) and cuts what is sent to it into one message per element.
pub(super) type WsClient<S> = ClientStream<WsIo<S>>;

/// Serve HTTP on `io` until a WebSocket is open: then the XMPP client on it, and the client's
/// origin (the balancer's `X-Forwarded-For` applied); `None` when HTTP alone was asked.
pub(super) async fn web<S>(
    arrival: &Arrival<'_>,
    io: S,
    mut origin: Origin,
    trace: &mut Trace,
) -> Result<Option<(Box<WsClient<Prefixed<S>>>, Origin)>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (shared, rt) = (arrival.shared, arrival.rt);
    let config = &rt.config;
    let listener = config
        .listeners
        .iter()
        .find(|l| l.name == arrival.listener.name)
        .and_then(|l| l.websocket.as_ref())
        .ok_or(Failure::Quiet("listener changed by a reload"))?;
    trace.transport = "http";
    let ctx = HttpCtx {
        listener: &arrival.listener.name,
        ws: listener,
        config,
        metrics: &shared.metrics,
        peer: origin.source,
    };
    let deadline = arrival.started + config.limits.prerouting_timeout;
    let Some(upgrade) = http::serve(io, &ctx, deadline).await else {
        return Ok(None);
    };
    if let Some(ip) = upgrade.forwarded {
        // The balancer that terminated TLS named the client.
        trace.via = Some(origin.source);
        origin.source = SocketAddr::new(ip, 0);
        trace.client = Some(origin.source);
    }
    let ws = WebSocketStream::from_raw_socket(
        upgrade.io,
        Role::Server,
        Some(crate::websocket::tuning(config.websocket.max_message_bytes)),
    )
    .await;
    let io = WsIo::new(
        ws,
        WsSettings {
            endpoint: upgrade.endpoint,
            ping_interval: config.websocket.ping_interval,
            ping_timeout: config.websocket.ping_timeout,
            closes: shared.metrics.websocket_closes_total.clone(),
        },
    );
    trace.transport = "websocket";
    // Boxed, like every client stream (see `Front`).
    let client: WsClient<_> = ClientStream::new(io, config.limits.max_header_bytes);
    Ok(Some((Box::new(client), origin)))
}
