//! A socket read as XMPP frames, during negotiation only.
//!
//! Until a connection is authenticated the proxy must see element boundaries (stream headers,
//! `<starttls/>`, SASL elements, features). [`Framed`] keeps the bytes read but not yet consumed
//! in one buffer and lets the incremental [`Scanner`] cut frames off its front, so elements split
//! across reads or TLS records are handled, and bytes beyond the last frame are never lost: when
//! negotiation ends, [`Framed::into_parts`] hands them to the relay.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::xmpp::scanner::{FrameKind, ScanError, Scanner};

/// Read size while negotiating: small, because negotiation elements are small.
const READ_CHUNK: usize = 4096;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection.
    #[error("peer closed the connection")]
    Eof,
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not acceptable XMPP.
    #[error("{0:?}")]
    Scan(ScanError),
    /// The deadline passed before a whole frame arrived.
    #[error("timed out")]
    Timeout,
}

/// A socket plus the frame scanner and the bytes read ahead.
pub struct Framed<S> {
    /// The transport.
    pub io: S,
    /// Bytes read but not yet consumed as frames.
    buf: BytesMut,
    /// Finds frame boundaries in `buf`.
    scanner: Scanner,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Wrap a transport whose next bytes start a stream; frames are bounded by `max_frame`.
    pub fn new(io: S, max_frame: usize) -> Self {
        Framed {
            io,
            buf: BytesMut::new(),
            scanner: Scanner::new(max_frame),
        }
    }

    /// Wrap a transport whose first bytes were already read (kept in `buf`).
    pub fn with_buffer(io: S, buf: BytesMut, max_frame: usize) -> Self {
        Framed {
            io,
            buf,
            scanner: Scanner::new(max_frame),
        }
    }

    /// Wrap a transport over which a stream named `stream_qname` restarts (TLS after
    /// STARTTLS): a header comes next, or the old stream's close.
    pub fn restarting(io: S, max_frame: usize, stream_qname: &[u8]) -> Self {
        Framed {
            io,
            buf: BytesMut::new(),
            scanner: Scanner::restarting(max_frame, stream_qname),
        }
    }

    /// Change the frame size bound (e.g. the header bound, then the element bound).
    pub fn set_max_frame(&mut self, n: usize) {
        self.scanner.set_max_frame(n);
    }

    /// The stream restarts (after STARTTLS or SASL success): expect a header next.
    pub fn restart(&mut self) {
        self.scanner.reset();
    }

    /// The next frame, reading more bytes as needed, until `deadline`.
    pub async fn next_frame(
        &mut self,
        deadline: Instant,
    ) -> Result<(FrameKind, Bytes), FrameError> {
        loop {
            if let Some(frame) = self.scanner.next(&self.buf).map_err(FrameError::Scan)? {
                let bytes = self.buf.split_to(frame.len).freeze();
                return Ok((frame.kind, bytes));
            }
            self.fill(deadline).await?;
        }
    }

    /// The next frame that is not a whitespace keepalive.
    pub async fn next_non_ws(
        &mut self,
        deadline: Instant,
    ) -> Result<(FrameKind, Bytes), FrameError> {
        loop {
            let (kind, bytes) = self.next_frame(deadline).await?;
            if kind != FrameKind::Whitespace {
                return Ok((kind, bytes));
            }
        }
    }

    /// A frame if one is already buffered, without reading.
    pub fn buffered_frame(&mut self) -> Result<Option<(FrameKind, Bytes)>, FrameError> {
        match self.scanner.next(&self.buf).map_err(FrameError::Scan)? {
            Some(frame) => Ok(Some((frame.kind, self.buf.split_to(frame.len).freeze()))),
            None => Ok(None),
        }
    }

    /// Read once more into the buffer (cancel-safe: bytes are appended only when read).
    pub async fn fill(&mut self, deadline: Instant) -> Result<(), FrameError> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
            Err(_) => Err(FrameError::Timeout),
            Ok(Ok(0)) => Err(FrameError::Eof),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(FrameError::Io(e)),
        }
    }

    /// Write all of `bytes` and flush, within `limit`.
    pub async fn send(&mut self, bytes: &[u8], limit: Duration) -> io::Result<()> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        tokio::time::timeout(limit, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// Give up framing: the transport and every byte read but not consumed.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.io, self.buf)
    }
}
