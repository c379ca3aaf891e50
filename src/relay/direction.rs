//! One direction of the relay: the bytes it has not delivered yet, the [`Tracker`] that knows
//! where top-level elements start and end, and the watch that may hold one to rewrite it.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::watch::Watch;
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
pub(super) const HOLD_CAP: usize = 16 * 1024;

/// What one chunk comes to once a watch has seen it.
pub(super) enum Filtered {
    /// The chunk as it is.
    Pass,
    /// These bytes instead (fewer while an element is held, a rewritten one once complete).
    Replace(Vec<u8>),
}

/// Bytes of a held top-level element read so far.
pub(super) struct Hold {
    /// From the element's `<` on.
    pub(super) buf: Vec<u8>,
    /// The watch wants it; `false` while its name is still being read.
    pub(super) decided: bool,
}

/// What copying in an open direction came to.
pub(super) enum Copied {
    /// Input ended and the writer was shut down.
    Eof,
    /// Asked to stop, and everything read so far ends at a top-level boundary (or after the
    /// stream's end tag) and was written.
    Boundary,
}

/// Where a direction is in its life.
pub(super) enum Phase {
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
pub(super) struct Direction<'a> {
    /// Bytes read ahead during negotiation, written before anything else; borrowed, not copied.
    pub(super) ahead: &'a [u8],
    /// Bytes read but not yet written, and how far writing got; `None` when idle.
    pub(super) pending: Option<(Vec<u8>, usize)>,
    /// Top-level boundaries of the bytes read so far.
    pub(super) tracker: Tracker,
    /// The reader reached end of input (or failed while lingering).
    pub(super) read_done: bool,
    /// An interrupt came: read no further than the next top-level boundary.
    pub(super) stop_at_boundary: bool,
    /// What to send before shutting the writer down, once stopped at a boundary; what is left
    /// of it while closing.
    pub(super) inject: Option<Bytes>,
    pub(super) phase: Phase,
    /// Bytes written so far (the proxy's own excluded).
    pub(super) bytes: u64,
    /// Elements to hold and rewrite, if any.
    pub(super) watch: Option<&'a mut dyn Watch>,
    /// The element being held, if any (only with a watch); boxed so that an idle direction
    /// stays a few words.
    pub(super) hold: Option<Box<Hold>>,
}

impl<'a> Direction<'a> {
    pub(super) fn new(ahead: &'a [u8], watch: Option<&'a mut dyn Watch>) -> Self {
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
    pub(super) fn filter(&mut self, data: &[u8]) -> Filtered {
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

    pub(super) fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Relaying, with bytes read that the writer has not taken yet.
    pub(super) fn waiting_on_writer(&self) -> bool {
        matches!(self.phase, Phase::Open) && (self.pending.is_some() || !self.ahead.is_empty())
    }

    /// The reader of this direction reached its end (what it read may still be on its way).
    pub(super) fn input_ended(&self) -> bool {
        self.read_done || self.is_done()
    }

    pub(super) fn interrupt(&mut self, inject: Option<Bytes>) {
        self.stop_at_boundary = true;
        self.inject = inject;
    }

    /// Stopped at a boundary: close the writer, with the proxy's bytes unless the peer already
    /// ended its stream (nothing may follow `</stream:stream>`).
    pub(super) fn start_closing(&mut self) {
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
    pub(super) fn poll_copy<R, W>(
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
    pub(super) fn poll_close<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
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
    pub(super) fn poll_discard<R>(&mut self, cx: &mut Context<'_>, mut r: Pin<&mut R>) -> Poll<()>
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
