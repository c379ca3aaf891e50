//! The client's side of the negotiation as an element transport: read one frame, write one
//! element, open or restart the stream.
//!
//! The negotiation ([`super::negotiate`]) and the refusals ([`super::refuse`]) speak to the
//! client only through [`ElementTransport`]. A TCP client (STARTTLS or direct TLS) is a byte
//! stream cut into frames by the scanner ([`ClientStream`]); a front end that is not a byte
//! stream (WebSocket, where every message is one element) is another implementation of the
//! trait, not a fork of the negotiation.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::context::SEND_LIMIT;
use crate::framed::{FrameError, Framed};
use crate::xmpp::scanner::FrameKind;
use crate::xmpp::stream_error::proxy_header;

/// The client could not be written to (gone, or not reading within [`SEND_LIMIT`]).
#[derive(Debug)]
pub(crate) struct ClientGone;

/// What the negotiation needs from the client's connection.
pub(crate) trait ElementTransport {
    /// The next frame that is not a whitespace keepalive, reading until `deadline`.
    async fn next_frame(&mut self, deadline: Instant) -> Result<(FrameKind, Bytes), FrameError>;
    /// A frame already read, if there is one (whitespace included), without reading.
    fn buffered_frame(&mut self) -> Result<Option<(FrameKind, Bytes)>, FrameError>;
    /// Read once more (cancel-safe), so that [`ElementTransport::buffered_frame`] may find
    /// a frame.
    async fn fill(&mut self, deadline: Instant) -> Result<(), FrameError>;
    /// Bound the size of the frames read from now on.
    fn set_max_frame(&mut self, n: usize);
    /// Send elements (or a node's stream close) as they are.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientGone>;
    /// Open the client's stream with the proxy's own header (speaking for `domain`),
    /// followed by `then` (features, or a stream error).
    async fn open(&mut self, domain: &str, then: &[u8]) -> Result<(), ClientGone>;
    /// Relay a node's stream header: the client's stream is open from here on.
    async fn send_header(&mut self, header: &[u8]) -> Result<(), ClientGone>;
    /// Whether the client has a stream header from the proxy or a node on the current stream
    /// (a stream error must be preceded by one otherwise).
    fn is_open(&self) -> bool;
    /// The stream restarts (after STARTTLS or SASL success): a header comes next both ways.
    fn restart(&mut self);
    /// Close the connection (TLS close_notify, then FIN), within [`SEND_LIMIT`].
    async fn close(&mut self);
}

/// A client on a byte stream (TCP, or TLS over TCP), framed by the scanner.
pub(crate) struct ClientStream<S> {
    /// The socket with its frame scanner and the bytes read ahead.
    framed: Framed<S>,
    /// Whether the client has a stream header on the current stream.
    open: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    /// A client whose next bytes start a stream; frames bounded by `max_frame`.
    pub(crate) fn new(io: S, max_frame: usize) -> Self {
        ClientStream {
            framed: Framed::new(io, max_frame),
            open: false,
        }
    }

    /// A client whose stream named `stream_qname` restarts over `io` (TLS after STARTTLS):
    /// its next bytes are a new header, or the old stream's close.
    pub(crate) fn restarting(io: S, max_frame: usize, stream_qname: &[u8]) -> Self {
        ClientStream {
            framed: Framed::restarting(io, max_frame, stream_qname),
            open: false,
        }
    }

    /// A client whose first bytes were already read (`buf`), e.g. to tell XMPP from HTTP.
    pub(crate) fn with_buffer(io: S, buf: BytesMut, max_frame: usize) -> Self {
        ClientStream {
            framed: Framed::with_buffer(io, buf, max_frame),
            open: false,
        }
    }

    /// Give up framing: the socket and every byte read but not consumed (for the relay, or
    /// for the TLS handshake after `<proceed/>`).
    pub(crate) fn into_parts(self) -> (S, BytesMut) {
        self.framed.into_parts()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ElementTransport for ClientStream<S> {
    async fn next_frame(&mut self, deadline: Instant) -> Result<(FrameKind, Bytes), FrameError> {
        self.framed.next_non_ws(deadline).await
    }

    fn buffered_frame(&mut self) -> Result<Option<(FrameKind, Bytes)>, FrameError> {
        self.framed.buffered_frame()
    }

    async fn fill(&mut self, deadline: Instant) -> Result<(), FrameError> {
        self.framed.fill(deadline).await
    }

    fn set_max_frame(&mut self, n: usize) {
        self.framed.set_max_frame(n);
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientGone> {
        self.framed
            .send(bytes, SEND_LIMIT)
            .await
            .map_err(|_| ClientGone)
    }

    async fn open(&mut self, domain: &str, then: &[u8]) -> Result<(), ClientGone> {
        let mut out = proxy_header(domain, &new_stream_id()).into_bytes();
        out.extend_from_slice(then);
        self.open = true;
        self.send(&out).await
    }

    async fn send_header(&mut self, header: &[u8]) -> Result<(), ClientGone> {
        self.open = true;
        self.send(header).await
    }

    fn is_open(&self) -> bool {
        self.open
    }

    fn restart(&mut self) {
        self.framed.restart();
        self.open = false;
    }

    async fn close(&mut self) {
        let _unfinished = tokio::time::timeout(SEND_LIMIT, self.framed.io.shutdown()).await;
    }
}

/// A fresh stream id for headers the proxy itself sends.
fn new_stream_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
