//! The byte relay between a client and its backend once negotiation is over.
//!
//! Design constraints, and how they are met:
//! - **No byte lost or reordered**: each direction is one loop that writes every byte it read,
//!   in order, before it reads again. Bytes read ahead during negotiation go first.
//! - **Idle connections hold no buffers**: a proxy in front of 100,000 idle IoT devices must not
//!   spend 2 × 8 KiB each as `tokio::io::copy_bidirectional` would. Reads go into one scratch
//!   buffer per worker thread; bytes are written straight from it, and only bytes a slow peer
//!   cannot take right now are copied into a buffer owned by the connection, freed once written.
//! - **Half-close**: end of input on one side becomes a write shutdown (FIN, or TLS
//!   `close_notify` + FIN) on the other; the other direction keeps flowing until it ends too,
//!   bounded by `half_close_timeout`. The proxy never invents a `</stream:stream>`: a client that
//!   vanishes leaves its session on the server resumable (XEP-0198).
//! - **Errors end both directions at once**: a reset on one side drops the other.
//! - **Interruptible at element boundaries**: to drain a node or stop, the proxy tells the
//!   client why (a stream error) with bytes of its own, which must never land inside a stanza.
//!   Each direction runs a [`Tracker`] over every byte it relays (a few dozen bytes of state, no
//!   buffer), so when asked to stop it knows whether it is between two top-level elements, and
//!   if not keeps relaying until it is.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use direction::{Copied, Direction, Phase};

mod direction;
mod watch;

pub(crate) use watch::Watch;

/// The watches of the two directions (either may be absent).
#[derive(Default)]
pub(crate) struct Watches<'w> {
    /// Client → backend.
    pub up: Option<&'w mut dyn Watch>,
    /// Backend → client.
    pub down: Option<&'w mut dyn Watch>,
}

/// Which side ended the relay first, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Both sides closed cleanly; the first to close is named.
    Closed(Side),
    /// One side failed with an I/O error (reset, broken pipe).
    Error(Side),
    /// One side closed and the other did not follow within the half-close timeout.
    HalfCloseTimeout,
    /// The proxy asked the relay to end ([`Interrupt::reason`]), whatever happened after.
    Interrupted(&'static str),
    /// The named side left bytes for it unread for longer than the write timeout.
    WriteTimeout(Side),
}

/// A side of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The XMPP client.
    Client,
    /// The XMPP server node.
    Backend,
}

impl Side {
    /// A metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

impl CloseReason {
    /// A bounded metric label for the reason (an interrupt's reason comes from a fixed set in
    /// code, so it is bounded too).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            CloseReason::Closed(_) => "closed",
            CloseReason::Error(_) => "io_error",
            CloseReason::HalfCloseTimeout => "half_close_timeout",
            CloseReason::Interrupted(reason) => reason,
            CloseReason::WriteTimeout(_) => "write_timeout",
        }
    }
    /// The side that ended the connection, as a metric label.
    pub(crate) fn side(self) -> &'static str {
        match self {
            CloseReason::Closed(s) | CloseReason::Error(s) | CloseReason::WriteTimeout(s) => {
                s.as_str()
            }
            CloseReason::HalfCloseTimeout | CloseReason::Interrupted(_) => "proxy",
        }
    }
}

/// The relay's time bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// After one side's input ends, how long the other may go on.
    pub half_close: Duration,
    /// Once interrupted, how long winding down may take.
    pub boundary: Duration,
    /// How long a side may leave bytes for it unread before the relay ends: a client that
    /// stops reading (or vanished without a reset) must not hold its node's output, nor its
    /// connection, forever.
    pub write: Duration,
}

/// A direction's writer stall: the bytes written when the wait began, and its end.
type Stall = Option<(u64, Pin<Box<tokio::time::Sleep>>)>;

/// Whether `dir`'s writer has taken nothing of what is waiting for it for `limit`. Starts
/// (or restarts, after progress) the wait as needed; an idle direction holds no timer.
fn stalled(dir: &Direction<'_>, stall: &mut Stall, limit: Duration, cx: &mut Context<'_>) -> bool {
    if !dir.waiting_on_writer() {
        *stall = None;
        return false;
    }
    match stall {
        Some((seen, sleep)) if *seen == dir.bytes => sleep.as_mut().poll(cx).is_ready(),
        _ => {
            let mut sleep = Box::pin(tokio::time::sleep(limit));
            let over = sleep.as_mut().poll(cx).is_ready();
            *stall = Some((dir.bytes, sleep));
            over
        }
    }
}

/// Counters of one finished relay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayStats {
    /// Bytes from client to backend, including those read ahead during negotiation.
    pub client_to_backend: u64,
    /// Bytes from backend to client, including those read ahead during negotiation.
    pub backend_to_client: u64,
    /// How it ended.
    pub reason: CloseReason,
}

/// How the proxy ends a live relay. The bytes are the proxy's own: they are not counted as
/// relayed.
#[derive(Debug, Clone)]
pub(crate) struct Interrupt {
    /// Sent to the client once the backend→client stream is between two top-level elements,
    /// before the client side is shut down: a stream error and the stream's end tag.
    pub to_client: Bytes,
    /// Sent to the backend once the client→backend stream is between two top-level elements,
    /// before the backend side is shut down (`</stream:stream>` ends the session there).
    /// `None` closes the backend connection without ending the stream, so the server keeps an
    /// XEP-0198 session resumable.
    pub to_backend: Option<Bytes>,
    /// Why, as a metric label ([`CloseReason::Interrupted`]).
    pub reason: &'static str,
}

/// Relay bytes both ways until both directions end, one side fails, a half-close lingers, or
/// `interrupt` completes and the relay is wound down.
///
/// `client_ahead` / `backend_ahead` are bytes read during negotiation and not yet delivered;
/// they start at a top-level boundary and go first (to the backend and to the client). They are
/// borrowed for the relay's whole life, so whatever allocation holds them stays alive as long:
/// a caller that wants idle connections to own no buffer passes exact-size copies. `on_up` /
/// `on_down` are told of every chunk of bytes delivered client→backend and backend→client, so
/// metrics move while a long-lived connection is still open.
///
/// When `interrupt` completes: the backend→client direction keeps relaying until what it has
/// read ends at a top-level boundary (a chunk ending mid-element is followed to the element's
/// end, never cut), then stops reading, sends [`Interrupt::to_client`] and shuts the client
/// down. The client→backend direction likewise stops at its next boundary; once the client side
/// is done it sends [`Interrupt::to_backend`], if any, and shuts the backend down. Sending to the
/// backend waits for the client side because a backend told the stream is over, or seeing FIN,
/// may close its stream before the element the client still awaits is complete. Then both
/// peers are given the chance to close first, so that unread input does not turn the close
/// into a reset. All of it is bounded by `boundary_timeout`; past it the relay returns without
/// injecting anything more and the caller drops both connections.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay<'a, C, B, I>(
    client: &mut C,
    backend: &mut B,
    client_ahead: &'a [u8],
    backend_ahead: &'a [u8],
    bounds: Bounds,
    mut on_up: impl FnMut(u64),
    mut on_down: impl FnMut(u64),
    watches: Watches<'a>,
    interrupt: I,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    I: Future<Output = Interrupt>,
{
    let mut up = Direction::new(client_ahead, watches.up);
    let mut down = Direction::new(backend_ahead, watches.down);
    let mut interrupt = pin!(interrupt);
    let mut interrupted: Option<&'static str> = None;
    let mut first_closed: Option<Side> = None;
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let (mut up_stall, mut down_stall): (Stall, Stall) = (None, None);
    // Once interrupted, whatever goes wrong is part of winding down: the interrupt is the cause.
    let ended = |interrupted: Option<&'static str>, other: CloseReason| match interrupted {
        Some(reason) => CloseReason::Interrupted(reason),
        None => other,
    };
    let reason = std::future::poll_fn(|cx| {
        loop {
            let mut progressed = false;
            if interrupted.is_none()
                && let Poll::Ready(order) = interrupt.as_mut().poll(cx)
            {
                interrupted = Some(order.reason);
                down.interrupt(Some(order.to_client));
                up.interrupt(order.to_backend);
                deadline = Some(Box::pin(tokio::time::sleep(bounds.boundary)));
            }

            // Backend → client.
            match down.phase {
                Phase::Open => match down.poll_copy(
                    cx,
                    Pin::new(&mut *backend),
                    Pin::new(&mut *client),
                    &mut on_down,
                ) {
                    Poll::Ready(Ok(Copied::Eof)) => {
                        first_closed.get_or_insert(Side::Backend);
                        down.phase = Phase::Done;
                        progressed = true;
                    }
                    Poll::Ready(Ok(Copied::Boundary)) => {
                        down.start_closing();
                        progressed = true;
                    }
                    Poll::Ready(Err((_, writer_failed))) => {
                        let side = if writer_failed {
                            Side::Client
                        } else {
                            Side::Backend
                        };
                        return Poll::Ready(ended(interrupted, CloseReason::Error(side)));
                    }
                    Poll::Pending => {}
                },
                Phase::Closing => match down.poll_close(cx, Pin::new(&mut *client)) {
                    Poll::Ready(Ok(())) => progressed = true,
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(ended(interrupted, CloseReason::Error(Side::Client)));
                    }
                    Poll::Pending => {}
                },
                // Only the client→backend direction waits its turn in `Held`.
                Phase::Held | Phase::Done => {}
            }

            // Client → backend.
            match up.phase {
                Phase::Open => match up.poll_copy(
                    cx,
                    Pin::new(&mut *client),
                    Pin::new(&mut *backend),
                    &mut on_up,
                ) {
                    Poll::Ready(Ok(Copied::Eof)) => {
                        first_closed.get_or_insert(Side::Client);
                        up.phase = Phase::Done;
                        progressed = true;
                    }
                    Poll::Ready(Ok(Copied::Boundary)) => {
                        up.phase = Phase::Held;
                        progressed = true;
                    }
                    Poll::Ready(Err((_, writer_failed))) => {
                        let side = if writer_failed {
                            Side::Backend
                        } else {
                            Side::Client
                        };
                        return Poll::Ready(ended(interrupted, CloseReason::Error(side)));
                    }
                    Poll::Pending => {}
                },
                Phase::Held => {
                    if down.is_done() {
                        up.start_closing();
                        progressed = true;
                    }
                }
                Phase::Closing => match up.poll_close(cx, Pin::new(&mut *backend)) {
                    Poll::Ready(Ok(())) => progressed = true,
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(ended(interrupted, CloseReason::Error(Side::Backend)));
                    }
                    Poll::Pending => {}
                },
                Phase::Done => {}
            }

            if interrupted.is_none() {
                if stalled(&down, &mut down_stall, bounds.write, cx) {
                    return Poll::Ready(CloseReason::WriteTimeout(Side::Client));
                }
                if stalled(&up, &mut up_stall, bounds.write, cx) {
                    return Poll::Ready(CloseReason::WriteTimeout(Side::Backend));
                }
            }
            if up.is_done() && down.is_done() {
                let Some(reason) = interrupted else {
                    return Poll::Ready(CloseReason::Closed(first_closed.unwrap_or(Side::Client)));
                };
                let client_closed = up.poll_discard(cx, Pin::new(&mut *client)).is_ready();
                let backend_closed = down.poll_discard(cx, Pin::new(&mut *backend)).is_ready();
                if client_closed && backend_closed {
                    return Poll::Ready(CloseReason::Interrupted(reason));
                }
            }
            if let (Some(deadline), Some(reason)) = (deadline.as_mut(), interrupted) {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(CloseReason::Interrupted(reason));
                }
            } else if up.input_ended() || down.input_ended() {
                // From the moment one side's input ends, not once its last bytes are
                // delivered: a peer that never reads would otherwise keep both directions
                // (and the connection) alive forever.
                let sleep =
                    linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(bounds.half_close)));
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

#[cfg(test)]
mod tests;
