//! XMPP over WebSocket (RFC 7395) for web clients: the HTTP side of a listener ([`http`]:
//! the opening handshake and the discovery files) and the upgraded connection seen as an
//! XMPP byte stream ([`io`]), so that the negotiation and the relay serve it as they serve a
//! TCP client. The framing translation itself is pure and lives in [`crate::xmpp::framing`].
//! docs/websocket.md describes the feature and its set-up.

pub mod http;
pub mod io;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as Tuning;

/// The WebSocket library's settings for one connection: messages bounded by `max_message`
/// (whole and per frame), a small read buffer and no write buffering, because most
/// connections are idle most of the time and memory per idle connection is what counts.
pub fn tuning(max_message: usize) -> Tuning {
    Tuning::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .accept_unmasked_frames(false)
}
