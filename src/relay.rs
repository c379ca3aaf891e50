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

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::xmpp::tracker::{Event, Tracker};

/// Size of the per-thread scratch buffer: one TLS record's worth of plaintext.
const SCRATCH: usize = 16 * 1024;
/// Reads per direction per poll before yielding, so one busy connection cannot starve others.
const BUDGET: usize = 32;

thread_local! {
    /// Reads land here; a connection only owns bytes its peer has not yet accepted.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// A held element larger than this is let through as it is: XEP-0198 elements are a few hundred
/// bytes, and a relay must not buffer without bound for a peer that never ends an element.
const HOLD_CAP: usize = 16 * 1024;

/// Top-level elements one direction of the relay holds back until they are complete, to
/// rewrite them (XEP-0198 ids, which must be changed in flight). Everything else streams
/// through untouched, so a watch costs nothing but the name check at each top-level start.
pub trait Watch: Send {
    /// Whether to hold the top-level element whose qualified name (as written) is `name`.
    fn wants(&self, name: &[u8]) -> bool;
    /// A complete held element; returns the bytes to send in its place.
    fn rewrite(&mut self, element: Vec<u8>) -> Vec<u8>;
}

/// The watches of the two directions (either may be absent).
#[derive(Default)]
pub struct Watches<'w> {
    /// Client → backend.
    pub up: Option<&'w mut dyn Watch>,
    /// Backend → client.
    pub down: Option<&'w mut dyn Watch>,
}

/// What one chunk comes to once a watch has seen it.
enum Filtered {
    /// The chunk as it is.
    Pass,
    /// These bytes instead (fewer while an element is held, a rewritten one once complete).
    Replace(Vec<u8>),
}

/// Bytes of a held top-level element read so far.
struct Hold {
    /// From the element's `<` on.
    buf: Vec<u8>,
    /// The watch wants it; `false` while its name is still being read.
    decided: bool,
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
    /// The proxy asked the relay to end ([`Interrupt::reason`]), whatever happened after.
    Interrupted(&'static str),
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
    /// A bounded metric label for the reason (an interrupt's reason comes from a fixed set in
    /// code, so it is bounded too).
    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Closed(_) => "closed",
            CloseReason::Error(_) => "io_error",
            CloseReason::HalfCloseTimeout => "half_close_timeout",
            CloseReason::Interrupted(reason) => reason,
        }
    }
    /// The side that ended the connection, as a metric label.
    pub fn side(self) -> &'static str {
        match self {
            CloseReason::Closed(s) | CloseReason::Error(s) => s.as_str(),
            CloseReason::HalfCloseTimeout | CloseReason::Interrupted(_) => "proxy",
        }
    }
}

/// Counters of one finished relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayStats {
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
pub struct Interrupt {
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

/// What copying in an open direction came to.
enum Copied {
    /// Input ended and the writer was shut down.
    Eof,
    /// Asked to stop, and everything read so far ends at a top-level boundary (or after the
    /// stream's end tag) and was written.
    Boundary,
}

/// Where a direction is in its life.
enum Phase {
    /// Relaying.
    Open,
    /// Stopped at a boundary after an interrupt; waits for its turn to close the writer.
    Held,
    /// Writing the proxy's own bytes ([`Direction::inject`]), if any, then shutting the writer
    /// down.
    Closing,
    /// The writer is shut down.
    Done,
}

/// One direction's state: at most the bytes the writer has not taken yet.
struct Direction<'a> {
    /// Bytes read ahead during negotiation, written before anything else; borrowed, not copied.
    ahead: &'a [u8],
    /// Bytes read but not yet written, and how far writing got; `None` when idle.
    pending: Option<(Vec<u8>, usize)>,
    /// Top-level boundaries of the bytes read so far.
    tracker: Tracker,
    /// The reader reached end of input (or failed while lingering).
    read_done: bool,
    /// An interrupt came: read no further than the next top-level boundary.
    stop_at_boundary: bool,
    /// What to send before shutting the writer down, once stopped at a boundary; what is left
    /// of it while closing.
    inject: Option<Bytes>,
    phase: Phase,
    /// Bytes written so far (the proxy's own excluded).
    bytes: u64,
    /// Elements to hold and rewrite, if any.
    watch: Option<&'a mut dyn Watch>,
    /// The element being held, if any (only with a watch); boxed so that an idle direction
    /// stays a few words.
    hold: Option<Box<Hold>>,
}

impl<'a> Direction<'a> {
    fn new(ahead: &'a [u8], watch: Option<&'a mut dyn Watch>) -> Self {
        let mut d = Direction {
            ahead: &[],
            pending: None,
            // Negotiation hands over at a frame boundary, so the ahead bytes start at one too.
            tracker: Tracker::new(),
            read_done: false,
            stop_at_boundary: false,
            inject: None,
            phase: Phase::Open,
            bytes: 0,
            watch,
            hold: None,
        };
        match d.filter(ahead) {
            Filtered::Pass => d.ahead = ahead,
            Filtered::Replace(bytes) => d.pending = Some((bytes, 0)),
        }
        d
    }

    /// Track a chunk that was read, and let the watch (if any) hold or rewrite its elements.
    ///
    /// Invariant: `data[..done]` is accounted for, in `out` or in the hold. An element is
    /// known to be wanted only once its name is complete, so a chunk that ends inside a
    /// top-level name keeps the bytes from that `<` on as an undecided hold until the next
    /// chunk tells.
    fn filter(&mut self, data: &[u8]) -> Filtered {
        let Some(watch) = self.watch.as_deref_mut() else {
            self.tracker.feed(data);
            return Filtered::Pass;
        };
        let mut out: Option<Vec<u8>> = None;
        let mut done = 0;
        let mut hold = self.hold.take();
        // Where the hold's bytes begin in this chunk (0 for a hold carried from before).
        let mut hold_from = 0;
        // A top-level start in this chunk whose name has not ended yet.
        let mut start: Option<usize> = None;
        self.tracker.feed_events(data, |event| match event {
            Event::Start(at) => start = Some(at),
            Event::Name { name, .. } => {
                let wanted = name.is_some_and(|n| watch.wants(n));
                if let Some(at) = start.take() {
                    if wanted {
                        out.get_or_insert_with(Vec::new)
                            .extend_from_slice(&data[done..at]);
                        done = at;
                        hold_from = at;
                        hold = Some(Box::new(Hold {
                            buf: Vec::new(),
                            decided: true,
                        }));
                    }
                } else if let Some(h) = hold.as_mut().filter(|h| !h.decided) {
                    if wanted {
                        h.decided = true;
                    } else if let Some(h) = hold.take() {
                        out.get_or_insert_with(Vec::new).extend_from_slice(&h.buf);
                    }
                }
            }
            Event::End(at) => {
                start = None;
                if let Some(h) = hold.take() {
                    let o = out.get_or_insert_with(Vec::new);
                    if h.decided {
                        let mut element = h.buf;
                        element.extend_from_slice(&data[hold_from..at]);
                        o.extend_from_slice(&watch.rewrite(element));
                        done = at;
                    } else {
                        // A comment or processing instruction: nothing to hold.
                        o.extend_from_slice(&h.buf);
                    }
                }
            }
            Event::StreamEnd(_) | Event::Lost(_) => {
                start = None;
                // The element will never be complete: let it through as it is.
                if let Some(h) = hold.take() {
                    out.get_or_insert_with(Vec::new).extend_from_slice(&h.buf);
                }
            }
        });
        if let Some(mut h) = hold {
            let mut o = out.unwrap_or_default();
            o.extend_from_slice(&data[done..hold_from]);
            h.buf.extend_from_slice(&data[hold_from..]);
            if h.buf.len() > HOLD_CAP {
                o.extend_from_slice(&h.buf);
            } else {
                self.hold = Some(h);
            }
            return Filtered::Replace(o);
        }
        if let Some(at) = start {
            let mut o = out.unwrap_or_default();
            o.extend_from_slice(&data[done..at]);
            self.hold = Some(Box::new(Hold {
                buf: data[at..].to_vec(),
                decided: false,
            }));
            return Filtered::Replace(o);
        }
        match out {
            None => Filtered::Pass,
            Some(mut o) => {
                o.extend_from_slice(&data[done..]);
                Filtered::Replace(o)
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The reader of this direction reached its end (what it read may still be on its way).
    fn input_ended(&self) -> bool {
        self.read_done || self.is_done()
    }

    fn interrupt(&mut self, inject: Option<Bytes>) {
        self.stop_at_boundary = true;
        self.inject = inject;
    }

    /// Stopped at a boundary: close the writer, with the proxy's bytes unless the peer already
    /// ended its stream (nothing may follow `</stream:stream>`).
    fn start_closing(&mut self) {
        if self.tracker.stream_ended() {
            self.inject = None;
        }
        self.phase = Phase::Closing;
    }

    fn count(&mut self, n: usize, on_bytes: &mut dyn FnMut(u64)) {
        self.bytes += n as u64;
        on_bytes(n as u64);
    }

    /// Move bytes from `r` to `w` until `r` has nothing ready, `w` pushes back, input ends, or
    /// (once interrupted) the stream is at a top-level boundary.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Poll<Result<Copied, (io::Error, bool)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        // Error flag: true = the writer failed, false = the reader failed.
        for _ in 0..BUDGET {
            while !self.ahead.is_empty() {
                match w.as_mut().poll_write(cx, self.ahead) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err((io::ErrorKind::WriteZero.into(), true)));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.ahead = &self.ahead[n.min(self.ahead.len())..];
                        self.count(n, on_bytes);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((e, true))),
                    Poll::Pending => return Poll::Pending,
                }
            }
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
                return match w.as_mut().poll_shutdown(cx) {
                    // A peer that is already gone cannot be shut down; that is the goal anyway.
                    Poll::Ready(_) => Poll::Ready(Ok(Copied::Eof)),
                    Poll::Pending => Poll::Pending,
                };
            }
            if self.stop_at_boundary && (self.tracker.at_boundary() || self.tracker.stream_ended())
            {
                // Everything read was written; make sure it left before anything else follows.
                return match w.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(Copied::Boundary)),
                    Poll::Ready(Err(e)) => Poll::Ready(Err((e, true))),
                    Poll::Pending => Poll::Pending,
                };
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
                            // An element held when input ended goes out as it is.
                            if let Some(h) = self.hold.take() {
                                self.pending = Some((h.buf, 0));
                            }
                            return Poll::Ready(Ok(()));
                        }
                        // Every byte read will be written (or its rewrite), so it is tracked now.
                        let filtered = self.filter(data);
                        let bytes: &[u8] = match &filtered {
                            Filtered::Pass => data,
                            Filtered::Replace(v) => v,
                        };
                        // Write straight from the scratch buffer; keep only what the peer refused.
                        let mut written = 0;
                        while written < bytes.len() {
                            match w.as_mut().poll_write(cx, &bytes[written..]) {
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
                            self.count(written, on_bytes);
                        }
                        if written < bytes.len() {
                            self.pending = Some(match filtered {
                                Filtered::Pass => (data[written..].to_vec(), 0),
                                Filtered::Replace(v) => (v, written),
                            });
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

    /// In [`Phase::Closing`]: write the proxy's bytes, then shut the writer down.
    fn poll_close<W>(&mut self, cx: &mut Context<'_>, mut w: Pin<&mut W>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + ?Sized,
    {
        if let Some(bytes) = &mut self.inject {
            while !bytes.is_empty() {
                match w.as_mut().poll_write(cx, bytes) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => bytes.advance(n.min(bytes.len())),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.inject = None;
        }
        match w.as_mut().poll_shutdown(cx) {
            // As in `poll_copy`: a peer already gone is as closed as it gets.
            Poll::Ready(_) => {
                self.phase = Phase::Done;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// After an interrupt, read and drop what `r` still sends until it closes. Closing a socket
    /// with unread bytes makes the kernel send a reset, which may destroy what the proxy just
    /// sent (the stream error, the stream end) before the peer reads it.
    fn poll_discard<R>(&mut self, cx: &mut Context<'_>, mut r: Pin<&mut R>) -> Poll<()>
    where
        R: AsyncRead + ?Sized,
    {
        if self.read_done {
            return Poll::Ready(());
        }
        for _ in 0..BUDGET {
            let step = SCRATCH_BUF.with(|cell| {
                let mut scratch = cell.borrow_mut();
                let mut rb = ReadBuf::new(&mut scratch[..]);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if !rb.filled().is_empty() => Poll::Ready(false),
                    Poll::Ready(_) => Poll::Ready(true),
                    Poll::Pending => Poll::Pending,
                }
            });
            match step {
                Poll::Ready(false) => continue,
                Poll::Ready(true) => {
                    self.read_done = true;
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
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
pub async fn relay<'a, C, B, I>(
    client: &mut C,
    backend: &mut B,
    client_ahead: &'a [u8],
    backend_ahead: &'a [u8],
    half_close_timeout: Duration,
    boundary_timeout: Duration,
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
                deadline = Some(Box::pin(tokio::time::sleep(boundary_timeout)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio::sync::oneshot;

    /// An interrupt that never comes.
    fn never() -> std::future::Pending<Interrupt> {
        std::future::pending()
    }

    /// An interrupt that comes when `rx` fires (never if its sender is dropped).
    async fn on_signal(rx: oneshot::Receiver<()>, order: Interrupt) -> Interrupt {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        order
    }

    const TO_CLIENT: &[u8] = b"<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>b.example:5222</see-other-host></stream:error></stream:stream>";
    const TO_BACKEND: &[u8] = b"</stream:stream>";

    fn drain_order() -> Interrupt {
        Interrupt {
            to_client: Bytes::from_static(TO_CLIENT),
            to_backend: Some(Bytes::from_static(TO_BACKEND)),
            reason: "drain",
        }
    }

    /// The test's ends of a relay: the client app, the backend app, the trigger and the task.
    struct Harness {
        client: DuplexStream,
        backend: DuplexStream,
        trigger: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<RelayStats>,
    }

    fn start(
        order: Interrupt,
        client_ahead: &'static [u8],
        backend_ahead: &'static [u8],
        boundary_timeout: Duration,
    ) -> Harness {
        let (client, mut client_proxy) = duplex(64);
        let (mut backend_proxy, backend) = duplex(64);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            relay(
                &mut client_proxy,
                &mut backend_proxy,
                client_ahead,
                backend_ahead,
                Duration::from_secs(5),
                boundary_timeout,
                |_| {},
                |_| {},
                Watches::default(),
                on_signal(rx, order),
            )
            .await
        });
        Harness {
            client,
            backend,
            trigger: Some(tx),
            task,
        }
    }

    impl Harness {
        fn interrupt(&mut self) {
            self.trigger.take().unwrap().send(()).unwrap();
        }
    }

    async fn read_n(s: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await.unwrap();
        buf
    }

    /// Read to EOF, then close our side so the relay's lingering ends.
    async fn read_all_and_close(mut s: DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.shutdown().await.unwrap();
        got
    }

    /// Nothing arrives on `s` within a short while.
    async fn silent(s: &mut DuplexStream) -> bool {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(50), s.read(&mut b))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn relays_every_byte_in_order_both_ways_and_half_closes() {
        let (mut client_app, mut client_proxy) = duplex(64);
        let (mut backend_proxy, mut backend_app) = duplex(64);
        let relay_task = tokio::spawn(async move {
            relay(
                &mut client_proxy,
                &mut backend_proxy,
                &[],
                &[],
                Duration::from_secs(5),
                Duration::from_secs(5),
                |_| {},
                |_| {},
                Watches::default(),
                never(),
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
        let stats = relay(
            &mut client_proxy,
            &mut backend_proxy,
            &[],
            &[],
            Duration::from_millis(50),
            Duration::from_secs(5),
            |_| {},
            |_| {},
            Watches::default(),
            never(),
        )
        .await;
        assert_eq!(stats.reason, CloseReason::HalfCloseTimeout);
    }

    /// A peer that takes what is written but never lets a close through (as a TLS peer that
    /// stopped reading blocks the `close_notify`), and never sends.
    struct NeverCloses;

    impl AsyncRead for NeverCloses {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for NeverCloses {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn half_close_towards_a_peer_that_never_reads_is_cut_too() {
        // The client closes; the backend never takes the close and never sends. The relay
        // must still end within the half-close timeout, not live on with both sockets.
        let (mut client_app, mut client_proxy) = duplex(64);
        let mut backend = NeverCloses;
        client_app.write_all(b"<presence/>").await.unwrap();
        client_app.shutdown().await.unwrap();
        let relay = relay(
            &mut client_proxy,
            &mut backend,
            &[],
            &[],
            Duration::from_millis(50),
            Duration::from_secs(5),
            |_| {},
            |_| {},
            Watches::default(),
            never(),
        );
        let stats = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay ended");
        assert_eq!(stats.reason, CloseReason::HalfCloseTimeout);
        assert_eq!(stats.client_to_backend, 11);
    }

    #[tokio::test]
    async fn idle_relay_owns_no_buffer() {
        let mut d = Direction::new(&[], None);
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

    #[tokio::test]
    async fn idle_tracked_direction_owns_no_buffer_even_mid_stanza() {
        // Read-ahead bytes ending mid-stanza, then more of it, then silence: the tracker keeps
        // its place without keeping any of the bytes.
        let ahead = b"<presence/><message to='a@b'><body>hal";
        let mut d = Direction::new(ahead, None);
        let (mut a, mut b) = duplex(64);
        let (mut c, mut e) = duplex(128);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        a.write_all(b"f of it").await.unwrap();
        assert!(
            d.poll_copy(&mut cx, Pin::new(&mut b), Pin::new(&mut c), &mut |_| {})
                .is_pending()
        );
        assert!(d.ahead.is_empty() && d.pending.is_none() && d.inject.is_none());
        assert!(!d.tracker.at_boundary(), "still inside the message");
        let got = read_n(&mut e, ahead.len() + 7).await;
        assert_eq!(&got[..ahead.len()], ahead);
        // The per-connection state is a handful of words: no buffer hides in it.
        let size = std::mem::size_of::<Direction<'_>>();
        assert!(size <= 192, "{size} bytes");
        a.write_all(b"</body></message>").await.unwrap();
        assert!(
            d.poll_copy(&mut cx, Pin::new(&mut b), Pin::new(&mut c), &mut |_| {})
                .is_pending()
        );
        assert!(d.pending.is_none() && d.tracker.at_boundary());
    }

    #[tokio::test]
    async fn interrupt_while_idle_injects_after_everything_relayed() {
        let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
        h.client.write_all(b"<presence/>").await.unwrap();
        assert_eq!(read_n(&mut h.backend, 11).await, b"<presence/>");
        let msg = b"<message from='a@b'><body>x &gt; y</body></message> ";
        h.backend.write_all(msg).await.unwrap();
        assert_eq!(read_n(&mut h.client, msg.len()).await, msg);
        h.interrupt();
        let client = read_all_and_close(h.client);
        let backend = read_all_and_close(h.backend);
        let (client, backend) = tokio::join!(client, backend);
        assert_eq!(client, TO_CLIENT, "exactly the proxy's bytes, then the end");
        assert_eq!(backend, TO_BACKEND);
        let stats = h.task.await.unwrap();
        assert_eq!(stats.reason, CloseReason::Interrupted("drain"));
        assert_eq!(stats.reason.reason(), "drain");
        assert_eq!(stats.reason.side(), "proxy");
        assert_eq!(stats.client_to_backend, 11);
        assert_eq!(stats.backend_to_client, msg.len() as u64);
    }

    #[tokio::test]
    async fn interrupt_mid_stanza_lets_it_finish_first() {
        let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
        let first = b"<message to='c@d'><body>it's \"half";
        h.backend.write_all(first).await.unwrap();
        assert_eq!(read_n(&mut h.client, first.len()).await, first);
        h.interrupt();
        assert!(
            silent(&mut h.client).await,
            "nothing injected inside the message"
        );
        // The rest of the message, and the start of another one in the same chunk.
        let second = b"</body></message><presence from='e@f/g'";
        h.backend.write_all(second).await.unwrap();
        assert_eq!(read_n(&mut h.client, second.len()).await, second);
        assert!(
            silent(&mut h.client).await,
            "nothing injected inside the presence"
        );
        h.backend.write_all(b"/>").await.unwrap();
        let client = read_all_and_close(h.client).await;
        let mut want = b"/>".to_vec();
        want.extend_from_slice(TO_CLIENT);
        assert_eq!(client, want, "the whole presence, then the stream error");
        assert_eq!(read_all_and_close(h.backend).await, TO_BACKEND);
        let stats = h.task.await.unwrap();
        assert_eq!(stats.reason, CloseReason::Interrupted("drain"));
        assert_eq!(
            stats.backend_to_client,
            (first.len() + second.len() + 2) as u64
        );
    }

    #[tokio::test]
    async fn client_stanza_in_flight_is_finished_before_the_stream_end() {
        let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
        h.client
            .write_all(b"<iq type='get' id='1'><ping")
            .await
            .unwrap();
        assert_eq!(
            read_n(&mut h.backend, 27).await,
            b"<iq type='get' id='1'><ping"
        );
        h.interrupt();
        // The client side is told at once: it was idle.
        let mut client = Vec::new();
        h.client.read_to_end(&mut client).await.unwrap();
        assert_eq!(client, TO_CLIENT);
        assert!(silent(&mut h.backend).await);
        h.client
            .write_all(b" xmlns='urn:xmpp:ping'/></iq>")
            .await
            .unwrap();
        h.client.shutdown().await.unwrap();
        let backend = read_all_and_close(h.backend).await;
        let mut want = b" xmlns='urn:xmpp:ping'/></iq>".to_vec();
        want.extend_from_slice(TO_BACKEND);
        assert_eq!(backend, want);
        assert_eq!(
            h.task.await.unwrap().reason,
            CloseReason::Interrupted("drain")
        );
    }

    #[tokio::test]
    async fn no_stream_end_for_the_backend_leaves_it_a_bare_close() {
        let order = Interrupt {
            to_client: Bytes::from_static(b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"),
            to_backend: None,
            reason: "shutdown",
        };
        let to_client = order.to_client.clone();
        let mut h = start(order, b"", b"", Duration::from_secs(5));
        h.client
            .write_all(b"<r xmlns='urn:xmpp:sm:3'/>")
            .await
            .unwrap();
        assert_eq!(
            read_n(&mut h.backend, 26).await,
            b"<r xmlns='urn:xmpp:sm:3'/>"
        );
        h.interrupt();
        let (client, backend) =
            tokio::join!(read_all_and_close(h.client), read_all_and_close(h.backend));
        assert_eq!(client, to_client);
        assert_eq!(backend, b"", "EOF and not a byte more");
        assert_eq!(
            h.task.await.unwrap().reason,
            CloseReason::Interrupted("shutdown")
        );
    }

    #[tokio::test]
    async fn no_boundary_in_time_closes_both_without_a_word() {
        let mut h = start(drain_order(), b"", b"", Duration::from_millis(100));
        let half = b"<message><body>never fin";
        h.backend.write_all(half).await.unwrap();
        assert_eq!(read_n(&mut h.client, half.len()).await, half);
        h.interrupt();
        let started = std::time::Instant::now();
        let stats = h.task.await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert_eq!(stats.reason, CloseReason::Interrupted("drain"));
        // The relay task is over and its ends are dropped: both apps see the end, and nothing
        // of the proxy's.
        let mut client = Vec::new();
        h.client.read_to_end(&mut client).await.unwrap();
        assert_eq!(client, b"");
        let mut backend = Vec::new();
        h.backend.read_to_end(&mut backend).await.unwrap();
        assert_eq!(backend, b"");
    }

    #[tokio::test]
    async fn ahead_bytes_go_first_in_order_and_are_tracked() {
        let client_ahead: &'static [u8] = b"<presence/><message><body>hi";
        let backend_ahead: &'static [u8] = b"<iq type='result' id='bind'/>\n";
        let (mut client_app, mut client_proxy) = duplex(16);
        let (mut backend_proxy, mut backend_app) = duplex(16);
        let (tx, rx) = oneshot::channel();
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (up_count, down_count) = (counted.clone(), counted.clone());
        let task = tokio::spawn(async move {
            relay(
                &mut client_proxy,
                &mut backend_proxy,
                client_ahead,
                backend_ahead,
                Duration::from_secs(5),
                Duration::from_secs(5),
                move |n| {
                    up_count.fetch_add(n << 32, std::sync::atomic::Ordering::Relaxed);
                },
                move |n| {
                    down_count.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                },
                Watches::default(),
                on_signal(rx, drain_order()),
            )
            .await
        });
        // Both directions write their ahead bytes without waiting for the peer to speak.
        assert_eq!(
            read_n(&mut client_app, backend_ahead.len()).await,
            backend_ahead
        );
        assert_eq!(
            read_n(&mut backend_app, client_ahead.len()).await,
            client_ahead
        );
        client_app.write_all(b"!</body></message>").await.unwrap();
        backend_app.write_all(b"<message/>").await.unwrap();
        assert_eq!(read_n(&mut backend_app, 18).await, b"!</body></message>");
        assert_eq!(read_n(&mut client_app, 10).await, b"<message/>");
        tx.send(()).unwrap();
        let (client, backend) = tokio::join!(
            read_all_and_close(client_app),
            read_all_and_close(backend_app)
        );
        assert_eq!(client, TO_CLIENT);
        assert_eq!(backend, TO_BACKEND);
        let stats = task.await.unwrap();
        let up = (client_ahead.len() + 18) as u64;
        let down = (backend_ahead.len() + 10) as u64;
        assert_eq!(stats.client_to_backend, up);
        assert_eq!(stats.backend_to_client, down);
        assert_eq!(
            counted.load(std::sync::atomic::Ordering::Relaxed),
            (up << 32) + down,
            "callbacks saw the ahead bytes too"
        );
    }

    #[tokio::test]
    async fn ahead_bytes_ending_mid_stanza_hold_the_interrupt_back() {
        let mut h = start(
            drain_order(),
            b"<message><body>from the client",
            b"<message><body>from the server",
            Duration::from_secs(5),
        );
        h.interrupt();
        assert_eq!(
            read_n(&mut h.client, 30).await,
            b"<message><body>from the server"
        );
        assert_eq!(
            read_n(&mut h.backend, 30).await,
            b"<message><body>from the client"
        );
        assert!(silent(&mut h.client).await && silent(&mut h.backend).await);
        h.backend.write_all(b"</body></message>").await.unwrap();
        h.client.write_all(b"</body></message>").await.unwrap();
        let (client, backend) =
            tokio::join!(read_all_and_close(h.client), read_all_and_close(h.backend));
        assert_eq!(client, [&b"</body></message>"[..], TO_CLIENT].concat());
        assert_eq!(backend, [&b"</body></message>"[..], TO_BACKEND].concat());
        assert_eq!(
            h.task.await.unwrap().reason,
            CloseReason::Interrupted("drain")
        );
    }

    #[tokio::test]
    async fn interrupt_still_works_after_the_other_direction_ended() {
        let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
        // The backend half-closes: the client sees the end, nothing may follow it.
        h.backend.shutdown().await.unwrap();
        let mut client = Vec::new();
        h.client.read_to_end(&mut client).await.unwrap();
        assert_eq!(client, b"");
        h.client.write_all(b"<presence/>").await.unwrap();
        assert_eq!(read_n(&mut h.backend, 11).await, b"<presence/>");
        h.interrupt();
        let mut backend = Vec::new();
        h.backend.read_to_end(&mut backend).await.unwrap();
        assert_eq!(backend, TO_BACKEND);
        h.client.shutdown().await.unwrap();
        let stats = h.task.await.unwrap();
        assert_eq!(stats.reason, CloseReason::Interrupted("drain"));
        assert_eq!(stats.client_to_backend, 11);
    }

    #[tokio::test]
    async fn nothing_is_added_after_a_peer_ended_its_stream() {
        let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
        h.backend
            .write_all(b"<message/></stream:stream>")
            .await
            .unwrap();
        assert_eq!(
            read_n(&mut h.client, 26).await,
            b"<message/></stream:stream>"
        );
        h.client.write_all(b"</stream:stream>").await.unwrap();
        assert_eq!(read_n(&mut h.backend, 16).await, b"</stream:stream>");
        h.interrupt();
        let (client, backend) =
            tokio::join!(read_all_and_close(h.client), read_all_and_close(h.backend));
        assert_eq!(client, b"", "no stream error after the server's stream end");
        assert_eq!(backend, b"", "no second stream end");
        assert_eq!(
            h.task.await.unwrap().reason,
            CloseReason::Interrupted("drain")
        );
    }

    /// Holds `<enabled>` and `<sm:resumed>` and writes them back marked, so tests can see that
    /// exactly those elements, whole, went through the watch.
    struct Marker {
        seen: Vec<String>,
    }

    impl Watch for Marker {
        fn wants(&self, name: &[u8]) -> bool {
            name == b"enabled" || name == b"sm:resumed"
        }
        fn rewrite(&mut self, element: Vec<u8>) -> Vec<u8> {
            let text = String::from_utf8(element).unwrap();
            self.seen.push(text.clone());
            format!("[{text}]").into_bytes()
        }
    }

    const WATCHED: &str = "<r xmlns='urn:xmpp:sm:3'/><enabled xmlns='urn:xmpp:sm:3' id='a>b' resume='true'/><!-- c --><message to='x'><body>enabled</body></message><enabledx/><sm:resumed xmlns:sm='urn:xmpp:sm:3' previd='p' h='1'></sm:resumed> <iq/>";
    const MARKED: &str = "<r xmlns='urn:xmpp:sm:3'/>[<enabled xmlns='urn:xmpp:sm:3' id='a>b' resume='true'/>]<!-- c --><message to='x'><body>enabled</body></message><enabledx/>[<sm:resumed xmlns:sm='urn:xmpp:sm:3' previd='p' h='1'></sm:resumed>] <iq/>";

    /// Run `chunks` through a watching direction as the relay would, end of input included.
    fn filtered(chunks: &[&[u8]]) -> (String, Vec<String>) {
        let mut marker = Marker { seen: Vec::new() };
        let mut out = Vec::new();
        {
            let mut d = Direction::new(chunks[0], Some(&mut marker));
            out.extend_from_slice(d.ahead);
            if let Some((p, _)) = d.pending.take() {
                out.extend_from_slice(&p);
            }
            for chunk in &chunks[1..] {
                match d.filter(chunk) {
                    Filtered::Pass => out.extend_from_slice(chunk),
                    Filtered::Replace(v) => out.extend_from_slice(&v),
                }
            }
            if let Some(h) = d.hold.take() {
                out.extend_from_slice(&h.buf);
            }
        }
        (String::from_utf8(out).unwrap(), marker.seen)
    }

    #[test]
    fn a_watch_sees_exactly_its_elements_whatever_the_chunking() {
        let bytes = WATCHED.as_bytes();
        let (whole, seen) = filtered(&[bytes]);
        assert_eq!(whole, MARKED);
        assert_eq!(seen.len(), 2);
        for i in 0..=bytes.len() {
            let (out, seen) = filtered(&[&bytes[..i], &bytes[i..]]);
            assert_eq!(out, MARKED, "split at {i}");
            assert_eq!(seen.len(), 2, "split at {i}");
        }
        // Three chunks, the middle one short: names split across three reads.
        for i in 0..bytes.len() {
            for len in 1..4 {
                let j = (i + len).min(bytes.len());
                let (out, _) = filtered(&[b"", &bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(out, MARKED, "chunks at {i}, {j}");
            }
        }
    }

    #[test]
    fn a_held_element_is_let_through_when_it_cannot_complete() {
        // Input ends inside a watched element: its bytes still go out, unchanged.
        let (out, seen) = filtered(&[b"", b"<iq/><enabled id='x", b"y'"]);
        assert_eq!(out, "<iq/><enabled id='xy'");
        assert!(seen.is_empty());
        // An element larger than the cap is not held without bound.
        let big = format!("<enabled>{}</enabled><iq/>", "x".repeat(HOLD_CAP + 10));
        let (head, tail) = big.as_bytes().split_at(HOLD_CAP + 5);
        let (out, seen) = filtered(&[b"", head, tail]);
        assert_eq!(out, big);
        assert!(seen.is_empty());
    }

    #[tokio::test]
    async fn watches_rewrite_in_a_live_relay_and_count_the_new_bytes() {
        let (mut client_app, mut client_proxy) = duplex(64);
        let (mut backend_proxy, mut backend_app) = duplex(64);
        let task = tokio::spawn(async move {
            let mut down = Marker { seen: Vec::new() };
            let mut up = Marker { seen: Vec::new() };
            let stats = relay(
                &mut client_proxy,
                &mut backend_proxy,
                b"<enab",
                b"",
                Duration::from_secs(5),
                Duration::from_secs(5),
                |_| {},
                |_| {},
                Watches {
                    up: Some(&mut up),
                    down: Some(&mut down),
                },
                never(),
            )
            .await;
            (stats, up.seen.len(), down.seen.len())
        });
        let client_side = async {
            client_app.write_all(b"led/><message/>").await.unwrap();
            client_app.shutdown().await.unwrap();
            let mut to_client = Vec::new();
            client_app.read_to_end(&mut to_client).await.unwrap();
            to_client
        };
        let backend_side = async {
            backend_app.write_all(WATCHED.as_bytes()).await.unwrap();
            backend_app.shutdown().await.unwrap();
            let mut to_backend = Vec::new();
            backend_app.read_to_end(&mut to_backend).await.unwrap();
            to_backend
        };
        let (to_client, to_backend) = tokio::join!(client_side, backend_side);
        let (stats, up, down) = task.await.unwrap();
        assert_eq!(to_backend, b"[<enabled/>]<message/>");
        assert_eq!(String::from_utf8(to_client).unwrap(), MARKED);
        assert_eq!((up, down), (1, 2));
        assert_eq!(stats.client_to_backend, 22);
        assert_eq!(stats.backend_to_client, MARKED.len() as u64);
    }
}
