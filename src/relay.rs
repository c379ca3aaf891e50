//! The byte relay between a client and its backend once negotiation is over.
//!
//! Design constraints, and how they are met:
//! - **No byte lost or reordered**: each direction is one loop that writes every byte it read,
//!   in order, before it reads again.
//! - **Idle connections hold no buffers**: a proxy in front of 100,000 idle IoT devices must not
//!   spend 2 × 8 KiB each as `tokio::io::copy_bidirectional` would. Reads go into one scratch
//!   buffer per worker thread; bytes are written straight from it, and only bytes a slow peer
//!   cannot take right now are copied into a buffer owned by the connection, freed once written.
//! - **Half-close**: end of input on one side becomes a write shutdown (FIN, or TLS
//!   `close_notify` + FIN) on the other; the other direction keeps flowing until it ends too,
//!   bounded by `half_close_timeout`. The proxy never invents a `</stream:stream>`: a client that
//!   vanishes leaves its session on the server resumable (XEP-0198).
//! - **Errors end both directions at once**: a reset on one side drops the other.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of the per-thread scratch buffer: one TLS record's worth of plaintext.
const SCRATCH: usize = 16 * 1024;
/// Reads per direction per poll before yielding, so one busy connection cannot starve others.
const BUDGET: usize = 32;

thread_local! {
    /// Reads land here; a connection only owns bytes its peer has not yet accepted.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// Which side ended the relay first, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides closed cleanly; the first to close is named.
    Closed(Side),
    /// One side failed with an I/O error (reset, broken pipe).
    Error(Side),
    /// One side closed and the other did not follow within the half-close timeout.
    HalfCloseTimeout,
}

/// A side of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The XMPP client.
    Client,
    /// The XMPP server node.
    Backend,
}

impl Side {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

impl CloseReason {
    /// A bounded metric label for the reason.
    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Closed(_) => "closed",
            CloseReason::Error(_) => "io_error",
            CloseReason::HalfCloseTimeout => "half_close_timeout",
        }
    }
    /// The side that ended the connection, as a metric label.
    pub fn side(self) -> &'static str {
        match self {
            CloseReason::Closed(s) | CloseReason::Error(s) => s.as_str(),
            CloseReason::HalfCloseTimeout => "proxy",
        }
    }
}

/// Counters of one finished relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayStats {
    /// Bytes from client to backend.
    pub client_to_backend: u64,
    /// Bytes from backend to client.
    pub backend_to_client: u64,
    /// How it ended.
    pub reason: CloseReason,
}

/// One direction's state: at most the bytes the writer has not taken yet.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written, and how far writing got; `None` when idle.
    pending: Option<(Vec<u8>, usize)>,
    /// The reader reached end of input.
    read_done: bool,
    /// The writer was shut down after `read_done`.
    shut: bool,
    /// Bytes written so far.
    bytes: u64,
}

impl Direction {
    fn done(&self) -> bool {
        self.shut
    }

    /// Move bytes from `r` to `w` until `r` has nothing ready, `w` pushes back, or input ends.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Poll<Result<(), (io::Error, bool)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        // Error flag: true = the writer failed, false = the reader failed.
        for _ in 0..BUDGET {
            if let Some((buf, pos)) = &mut self.pending {
                while *pos < buf.len() {
                    match w.as_mut().poll_write(cx, &buf[*pos..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err((io::ErrorKind::WriteZero.into(), true)));
                        }
                        Poll::Ready(Ok(n)) => {
                            *pos += n;
                            self.bytes += n as u64;
                            on_bytes(n as u64);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err((e, true))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                self.pending = None;
            }
            if self.read_done {
                if !self.shut {
                    match w.as_mut().poll_shutdown(cx) {
                        Poll::Ready(Ok(())) => self.shut = true,
                        // A peer that is already gone cannot be shut down; that is the goal anyway.
                        Poll::Ready(Err(_)) => self.shut = true,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                return Poll::Ready(Ok(()));
            }
            let step = SCRATCH_BUF.with(|cell| {
                let mut scratch = cell.borrow_mut();
                let mut rb = ReadBuf::new(&mut scratch[..]);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err((e, false))),
                    Poll::Ready(Ok(())) => {
                        let data = rb.filled();
                        if data.is_empty() {
                            self.read_done = true;
                            return Poll::Ready(Ok(()));
                        }
                        // Write straight from the scratch buffer; keep only what the peer refused.
                        let mut written = 0;
                        while written < data.len() {
                            match w.as_mut().poll_write(cx, &data[written..]) {
                                Poll::Ready(Ok(0)) => {
                                    return Poll::Ready(Err((
                                        io::ErrorKind::WriteZero.into(),
                                        true,
                                    )));
                                }
                                Poll::Ready(Ok(n)) => written += n,
                                Poll::Ready(Err(e)) => return Poll::Ready(Err((e, true))),
                                Poll::Pending => break,
                            }
                        }
                        if written > 0 {
                            self.bytes += written as u64;
                            on_bytes(written as u64);
                        }
                        if written < data.len() {
                            self.pending = Some((data[written..].to_vec(), 0));
                        }
                        Poll::Ready(Ok(()))
                    }
                }
            });
            match step {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read now: make sure what was written leaves the process
                    // (a TLS writer may hold a record until flushed).
                    return match w.as_mut().poll_flush(cx) {
                        Poll::Ready(Err(e)) => Poll::Ready(Err((e, true))),
                        _ => Poll::Pending,
                    };
                }
            }
        }
        // Budget spent with data still flowing: yield to other tasks, come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Relay bytes both ways until both directions end, one side fails, or a half-close lingers.
///
/// `on_up` / `on_down` are told of every chunk of bytes delivered client→backend and
/// backend→client, so metrics move while a long-lived connection is still open.
pub async fn relay_basic<C, B>(
    client: &mut C,
    backend: &mut B,
    half_close_timeout: Duration,
    mut on_up: impl FnMut(u64),
    mut on_down: impl FnMut(u64),
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Direction::default();
    let mut down = Direction::default();
    let mut first_closed: Option<Side> = None;
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let reason = std::future::poll_fn(|cx| {
        loop {
            let mut progressed = false;
            if !up.done() {
                match up.poll_copy(
                    cx,
                    Pin::new(&mut *client),
                    Pin::new(&mut *backend),
                    &mut on_up,
                ) {
                    Poll::Ready(Ok(())) => {
                        first_closed.get_or_insert(Side::Client);
                        progressed = true;
                    }
                    Poll::Ready(Err((_, writer_failed))) => {
                        let side = if writer_failed {
                            Side::Backend
                        } else {
                            Side::Client
                        };
                        return Poll::Ready(CloseReason::Error(side));
                    }
                    Poll::Pending => {}
                }
            }
            if !down.done() {
                match down.poll_copy(
                    cx,
                    Pin::new(&mut *backend),
                    Pin::new(&mut *client),
                    &mut on_down,
                ) {
                    Poll::Ready(Ok(())) => {
                        first_closed.get_or_insert(Side::Backend);
                        progressed = true;
                    }
                    Poll::Ready(Err((_, writer_failed))) => {
                        let side = if writer_failed {
                            Side::Client
                        } else {
                            Side::Backend
                        };
                        return Poll::Ready(CloseReason::Error(side));
                    }
                    Poll::Pending => {}
                }
            }
            if up.done() && down.done() {
                return Poll::Ready(CloseReason::Closed(first_closed.unwrap_or(Side::Client)));
            }
            if up.done() || down.done() {
                let sleep =
                    linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(half_close_timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(CloseReason::HalfCloseTimeout);
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    RelayStats {
        client_to_backend: up.bytes,
        backend_to_client: down.bytes,
        reason,
    }
}

/// Placeholder of the interruptible relay (replaced by the real implementation).
pub struct Interrupt {
    pub to_client: bytes::Bytes,
    pub to_backend: Option<bytes::Bytes>,
    pub reason: &'static str,
}

#[allow(clippy::too_many_arguments)]
pub async fn relay<C, B, I>(
    client: &mut C,
    backend: &mut B,
    client_ahead: &[u8],
    backend_ahead: &[u8],
    half_close_timeout: Duration,
    _boundary_timeout: Duration,
    on_up: impl FnMut(u64),
    on_down: impl FnMut(u64),
    interrupt: I,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    I: Future<Output = Interrupt>,
{
    use tokio::io::AsyncWriteExt;
    let _ = backend.write_all(client_ahead).await;
    let _ = client.write_all(backend_ahead).await;
    tokio::select! {
        s = relay_basic(client, backend, half_close_timeout, on_up, on_down) => s,
        i = interrupt => {
            let _ = client.write_all(&i.to_client).await;
            let _ = client.shutdown().await;
            RelayStats { client_to_backend: 0, backend_to_client: 0, reason: CloseReason::Closed(Side::Client) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn relays_every_byte_in_order_both_ways_and_half_closes() {
        let (mut client_app, mut client_proxy) = duplex(64);
        let (mut backend_proxy, mut backend_app) = duplex(64);
        let relay_task = tokio::spawn(async move {
            relay_basic(
                &mut client_proxy,
                &mut backend_proxy,
                Duration::from_secs(5),
                |_| {},
                |_| {},
            )
            .await
        });
        let up: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..150_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let up2 = up.clone();
        let writer = tokio::spawn(async move {
            client_app.write_all(&up2).await.unwrap();
            client_app.shutdown().await.unwrap();
            let mut got = Vec::new();
            client_app.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got_up = Vec::new();
        backend_app.read_to_end(&mut got_up).await.unwrap();
        assert_eq!(
            got_up, up,
            "client→backend bytes intact after client half-close"
        );
        backend_app.write_all(&down).await.unwrap();
        backend_app.shutdown().await.unwrap();
        let got_down = writer.await.unwrap();
        assert_eq!(
            got_down, down,
            "backend kept talking after the client's half-close"
        );
        let stats = relay_task.await.unwrap();
        assert_eq!(stats.client_to_backend, up.len() as u64);
        assert_eq!(stats.backend_to_client, down.len() as u64);
        assert_eq!(stats.reason, CloseReason::Closed(Side::Client));
    }

    #[tokio::test]
    async fn half_close_that_lingers_is_cut() {
        let (mut client_app, mut client_proxy) = duplex(64);
        let (mut backend_proxy, _backend_app) = duplex(64);
        client_app.shutdown().await.unwrap();
        let stats = relay_basic(
            &mut client_proxy,
            &mut backend_proxy,
            Duration::from_millis(50),
            |_| {},
            |_| {},
        )
        .await;
        assert_eq!(stats.reason, CloseReason::HalfCloseTimeout);
    }

    #[tokio::test]
    async fn idle_relay_owns_no_buffer() {
        let mut d = Direction::default();
        let (mut a, mut b) = duplex(16);
        let (mut c, mut e) = duplex(16);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            d.poll_copy(&mut cx, Pin::new(&mut b), Pin::new(&mut c), &mut |_| {})
                .is_pending()
        );
        assert!(d.pending.is_none(), "an idle direction holds no bytes");
        // A peer that cannot take everything leaves exactly the rest pending, nothing more.
        a.write_all(&[1u8; 16]).await.unwrap();
        assert!(
            d.poll_copy(&mut cx, Pin::new(&mut b), Pin::new(&mut c), &mut |_| {})
                .is_pending()
        );
        let mut sink = [0u8; 16];
        e.read_exact(&mut sink).await.unwrap();
        assert_eq!(sink, [1u8; 16]);
        assert!(d.pending.is_none());
    }
}
