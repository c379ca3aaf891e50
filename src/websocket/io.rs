//! A WebSocket client connection seen as the byte stream a TCP client would send and
//! receive, so that the negotiation (through [`crate::connection`]'s element transport) and
//! the byte relay serve it unchanged.
//!
//! Reading yields the client's messages translated by [`framing::inbound`]: each message
//! must be exactly one element, `<open/>` becomes the stream header and `<close/>`
//! `</stream:stream>`. Writing takes the node's bytes in any chunks and sends one text
//! message per complete element ([`framing::Outbound`]). Messages are read one at a time and
//! each is delivered whole before the next is read, so no byte is lost or reordered.
//!
//! What the client does wrong at the WebSocket level ends the connection with a close code
//! at once, counted in `xmpp_lb_websocket_closes_total` and logged: a binary message (1003),
//! a message that is not exactly one element or not UTF-8 (1007), one over the size bound
//! (1009), a protocol error (1002), silence after a ping (1011). The read then fails, so
//! nothing of that message, or after it, reaches a node.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::xmpp::framing::{self, Outbound};

/// The largest element a node may send to a WebSocket client: the nodes enforce their own
/// stanza limits; this only bounds what the proxy buffers for one message.
pub const MAX_OUTBOUND_ELEMENT: usize = 16 * 1024 * 1024;

/// The WebSocket settings of one connection.
pub struct WsSettings {
    /// The WebSocket URL the client reached (named in a redirect's `<close see-other-uri/>`).
    pub endpoint: String,
    /// Silence after which the client is pinged.
    pub ping_interval: Duration,
    /// How long a ping may go unanswered.
    pub ping_timeout: Duration,
    /// `xmpp_lb_websocket_closes_total`, by reason.
    pub closes: IntCounterVec,
}

/// The keepalive: a ping after `interval` of silence, the end after `timeout` more.
struct Keepalive {
    /// Silence before a ping.
    interval: Duration,
    /// Time a ping may go unanswered.
    timeout: Duration,
    /// When the next ping (or, after one, the end) is due.
    timer: Pin<Box<Sleep>>,
    /// A ping is out and nothing came back yet.
    pinged: bool,
}

impl Keepalive {
    /// Anything from the client shows it is alive.
    fn seen(&mut self) {
        self.pinged = false;
        self.timer.as_mut().reset(Instant::now() + self.interval);
    }
}

/// A WebSocket connection as an XMPP byte stream (see the module doc).
pub struct WsIo<S> {
    /// The WebSocket.
    ws: WebSocketStream<S>,
    /// Translated client bytes not yet read.
    inbound: Bytes,
    /// The node's bytes, cut into messages.
    outbound: Outbound,
    /// Messages cut and not yet taken by the WebSocket (at most what one write held).
    queued: VecDeque<String>,
    /// Pings the client when it is silent.
    keepalive: Keepalive,
    /// A close frame was sent: nothing more is read or written.
    closed: bool,
    /// Why the proxy ends the connection, if it does (the close frame's code and reason).
    ending: Option<(CloseCode, String)>,
    /// The connection's settings.
    settings: WsSettings,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Wrap an upgraded WebSocket.
    pub fn new(ws: WebSocketStream<S>, settings: WsSettings) -> WsIo<S> {
        WsIo {
            ws,
            inbound: Bytes::new(),
            outbound: Outbound::new(MAX_OUTBOUND_ELEMENT, settings.endpoint.clone()),
            queued: VecDeque::new(),
            keepalive: Keepalive {
                interval: settings.ping_interval,
                timeout: settings.ping_timeout,
                timer: Box::pin(tokio::time::sleep(settings.ping_interval)),
                pinged: false,
            },
            closed: false,
            ending: None,
            settings,
        }
    }

    /// The client broke a rule: count it, log it, send the close frame (best effort; the
    /// shutdown sends it otherwise), and fail the read.
    fn violation(
        &mut self,
        cx: &mut Context<'_>,
        code: CloseCode,
        reason: &'static str,
        detail: String,
    ) -> io::Error {
        self.settings.closes.with_label_values(&[reason]).inc();
        tracing::info!(reason, detail = %detail, code = u16::from(code), "WebSocket closed by the proxy");
        let mut text = detail.clone();
        // A close frame's reason is at most 123 bytes.
        while text.len() > 120 {
            text.pop();
        }
        self.ending = Some((code, text));
        let _pending = self.send_close(cx);
        io::Error::new(io::ErrorKind::InvalidData, detail)
    }

    /// Send the close frame once, then flush.
    fn send_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
            let (code, reason) = self
                .ending
                .clone()
                .unwrap_or((CloseCode::Normal, String::new()));
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            Pin::new(&mut self.ws)
                .start_send(Message::Close(Some(frame)))
                .map_err(to_io)?;
            self.closed = true;
        }
        match ready!(Pin::new(&mut self.ws).poll_flush(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }

    /// Hand the queued messages to the WebSocket.
    fn drain_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(message) = self.queued.pop_front() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Poll::Pending => {
                    self.queued.push_front(message);
                    return Poll::Pending;
                }
            }
            Pin::new(&mut self.ws)
                .start_send(Message::Text(message.into()))
                .map_err(to_io)?;
        }
        if self.queued.capacity() > 0 {
            // Idle connections keep no queue.
            self.queued = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// The ping timer fired: ping, or give up on a client that did not answer the last one.
    fn on_timer(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.keepalive.pinged {
            let timeout = self.keepalive.timeout;
            return Err(self.violation(
                cx,
                CloseCode::Error,
                "ping_timeout",
                format!("no answer to a ping within {timeout:?}"),
            ));
        }
        self.keepalive.pinged = true;
        let due = Instant::now() + self.keepalive.timeout;
        self.keepalive.timer.as_mut().reset(due);
        if let Poll::Ready(Ok(())) = Pin::new(&mut self.ws).poll_ready(cx) {
            Pin::new(&mut self.ws)
                .start_send(Message::Ping(Bytes::new()))
                .map_err(to_io)?;
            // Flushed now if the socket takes it, otherwise by the next read or write.
            let _pending = Pin::new(&mut self.ws).poll_flush(cx);
        }
        Ok(())
    }
}

/// A WebSocket error as an I/O error.
fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.inbound.is_empty() {
                let n = buf.remaining().min(this.inbound.len());
                buf.put_slice(&this.inbound[..n]);
                this.inbound.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.ending.is_some() {
                // The proxy closed it: a read after that is the end.
                return Poll::Ready(Ok(()));
            }
            let message = match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => message,
                Poll::Ready(None)
                | Poll::Ready(Some(Err(WsError::ConnectionClosed)))
                | Poll::Ready(Some(Err(WsError::AlreadyClosed))) => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => {
                    let (code, reason) = match &e {
                        WsError::Capacity(_) => (CloseCode::Size, "too_large"),
                        WsError::Utf8(_) => (CloseCode::Invalid, "invalid_utf8"),
                        WsError::Protocol(_) => (CloseCode::Protocol, "protocol_error"),
                        _ => return Poll::Ready(Err(to_io(e))),
                    };
                    return Poll::Ready(Err(this.violation(cx, code, reason, e.to_string())));
                }
                Poll::Pending => {
                    if this.keepalive.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.on_timer(cx)?;
                    continue;
                }
            };
            this.keepalive.seen();
            match message {
                Message::Text(text) => match framing::inbound(text.as_str()) {
                    Ok(inbound) => this.inbound = Bytes::from(inbound.into_bytes()),
                    Err(v) => {
                        return Poll::Ready(Err(this.violation(
                            cx,
                            CloseCode::Invalid,
                            "not_one_element",
                            v.to_string(),
                        )));
                    }
                },
                Message::Binary(_) => {
                    return Poll::Ready(Err(this.violation(
                        cx,
                        CloseCode::Unsupported,
                        "binary",
                        "XMPP over WebSocket uses text messages only".into(),
                    )));
                }
                // The client's close: answered by the WebSocket itself; the stream ends.
                Message::Close(_) => {
                    this.closed = true;
                    return Poll::Ready(Ok(()));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(this.drain_queue(cx))?;
        this.outbound.push(buf);
        loop {
            match this.outbound.next_message() {
                Ok(Some(message)) => this.queued.push_back(message),
                Ok(None) => break,
                Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
        }
        // The bytes are taken; what the WebSocket cannot take yet goes with the next call.
        if let Poll::Ready(Err(e)) = this.drain_queue(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain_queue(cx))?;
        match ready!(Pin::new(&mut this.ws).poll_flush(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            // What the node said last goes before the close frame.
            if let Err(e) = ready!(this.drain_queue(cx)) {
                tracing::debug!(error = %e, "WebSocket gone before its close frame");
                this.queued.clear();
            }
        }
        if let Err(e) = ready!(this.send_close(cx)) {
            tracing::debug!(error = %e, "WebSocket close frame not sent");
        }
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A proxy-side `WsIo` and a client WebSocket joined by an in-memory pipe.
    async fn pair() -> (
        WsIo<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server =
            WebSocketStream::from_raw_socket(a, Role::Server, Some(super::super::tuning(4096)))
                .await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let closes = IntCounterVec::new(prometheus::Opts::new("c", "c"), &["reason"]).unwrap();
        let io = WsIo::new(
            server,
            WsSettings {
                endpoint: "wss://example.test/ws".into(),
                ping_interval: Duration::from_secs(30),
                ping_timeout: Duration::from_secs(30),
                closes,
            },
        );
        (io, client)
    }

    #[tokio::test]
    async fn client_messages_arrive_whole_and_in_order() {
        let (mut io, mut client) = pair().await;
        let sent = [
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' version='1.0'/>",
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
            "<message xmlns='jabber:client'><body>1</body></message>",
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        ];
        for m in sent {
            client.send(Message::Text(m.into())).await.unwrap();
        }
        client.close(None).await.unwrap();
        let mut got = Vec::new();
        // Small reads: a message is handed out across several of them.
        let mut buf = [0u8; 7];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let expected: Vec<u8> = sent
            .iter()
            .flat_map(|m| framing::inbound(m).unwrap().into_bytes())
            .collect();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(expected).unwrap()
        );
    }

    #[tokio::test]
    async fn node_bytes_written_one_at_a_time_make_one_message_per_element() {
        let (mut io, mut client) = pair().await;
        let stream = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='i' version='1.0'><message><body>a</body></message> <iq type='result' id='1'/></stream:stream>";
        for b in stream.chunks(1) {
            io.write_all(b).await.unwrap();
        }
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        while let Some(Ok(m)) = client.next().await {
            match m {
                Message::Text(t) => got.push(t.to_string()),
                Message::Close(f) => {
                    assert_eq!(f.map(|f| u16::from(f.code)), Some(1000));
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(
            got,
            [
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='i' version='1.0'/>",
                "<message xmlns='jabber:client'><body>a</body></message>",
                "<iq xmlns='jabber:client' type='result' id='1'/>",
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
            ]
        );
    }

    #[tokio::test]
    async fn two_elements_in_one_message_fail_the_read_and_close_with_1007() {
        let (mut io, mut client) = pair().await;
        client.send(Message::Text("<a/><b/>".into())).await.unwrap();
        let mut buf = [0u8; 64];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            io.settings
                .closes
                .with_label_values(&["not_one_element"])
                .get(),
            1
        );
        match client.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1007),
            other => panic!("expected a close frame, got {other:?}"),
        }
        // Nothing more is read after a violation.
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
    }
}
