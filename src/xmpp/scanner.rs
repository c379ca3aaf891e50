//! Incremental framing of an XMPP stream.
//!
//! The proxy forwards bytes verbatim, so it never re-serialises what a peer
//! sent; it only needs to know where each top-level unit ends. The scanner
//! finds those boundaries with a resumable byte state machine: bytes arrive in
//! arbitrary chunks from untrusted peers, and rescanning a growing buffer on
//! every read would make a slow-drip sender cost O(n²) CPU.
//!
//! While framing it also rejects what an XMPP entity must never accept
//! (RFC 6120 §11.1): comments, processing instructions, DTDs and entity
//! references other than the five predefined ones and character references.
//! Doing this here, before anything is forwarded, means restricted XML never
//! reaches a backend even when the proxy does not parse the element.
//!
//! This file is the framing state machine itself. Two pieces it leans on live beside it, each
//! small enough to read and check on its own: the submodule `chars` holds XML's byte classes
//! and qualified-name rules, and `reference` the sub-machine that reads entity and character
//! references (the one construct inside text that must be read to its end to be judged).

use thiserror::Error;

mod chars;
mod reference;
#[cfg(test)]
mod tests;

use self::chars::{is_name_char, is_name_start, is_plain, is_qname, is_ws, local_part};
use self::reference::{RefCtx, RefError, RefState, Reference};

/// What a frame returned by [`Scanner::next`] contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Stream header: any leading whitespace, the optional XML declaration
    /// and the `<stream:stream ...>` start tag.
    Header,
    /// One complete top-level element (a stanza or a negotiation element).
    Element,
    /// A run of whitespace between top-level elements (keepalives).
    Whitespace,
    /// The closing `</stream:stream>` tag.
    StreamEnd,
}

/// One complete unit at the front of the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// The frame is `buf[..len]`.
    pub len: usize,
}

/// Why a stream cannot be framed. Each maps onto a stream error condition
/// (`not-well-formed`, `restricted-xml`, `policy-violation` for the two limits).
#[derive(Error, Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    #[error("not well-formed XML: {0}")]
    NotWellFormed(&'static str),
    #[error("restricted XML: {0}")]
    Restricted(&'static str),
    #[error("frame exceeds the size limit")]
    TooLarge,
    /// More than [`MAX_DEPTH`] elements open at once within one frame.
    #[error("elements nested more than {MAX_DEPTH} deep")]
    TooDeep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the stream header (at start and after a stream restart).
    Header,
    /// Inside the stream: top-level elements and whitespace.
    Body,
    /// `</stream:stream>` was seen; only whitespace may follow.
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a frame boundary (or in leading whitespace before the header).
    Idle,
    /// Inside a top-level whitespace run.
    Ws,
    /// Just after `<`.
    Lt,
    StartName,
    /// Inside a start tag, after whitespace.
    TagSpace,
    /// Just after an attribute value's closing quote; whitespace is required
    /// before another attribute.
    AfterValue,
    AttrName,
    AttrAfterName,
    AttrEq,
    AttrValue(u8),
    /// Saw `/` in a start tag; `>` must follow.
    EmptySlash,
    EndNameStart,
    EndName,
    EndSpace,
    /// Character data; counts trailing `]` to catch a literal `]]>`.
    Text(u8),
    /// Inside an entity or character reference begun in text or an attribute value.
    Ref(RefCtx, RefState),
    /// After `<!`, with how many bytes of `[CDATA[` matched so far.
    Bang(u8),
    CData,
    CDataBr1,
    CDataBr2,
    /// After `<?` before the header, with how many bytes of `xml` matched.
    PiTarget(u8),
    /// Inside the XML declaration; the flag records a preceding `?`.
    Decl(bool),
}

const CDATA_OPEN: &[u8] = b"[CDATA[";
/// The most elements one frame may have open at once, its top-level element included.
///
/// Real XMPP nests shallowly: a forwarded, archived pubsub payload is about a dozen levels.
/// Without a bound, nesting costs memory out of proportion to the bytes (each level is three
/// bytes on the wire, and a parsed tree holds far more per level), and a parsed tree that is
/// dropped, cloned or compared recursively could overflow the stack. `Element::parse` scans
/// every frame first, so this bound holds for every tree the proxy builds.
pub const MAX_DEPTH: usize = 128;

/// Resumable framer for one direction of one XMPP stream.
#[derive(Debug, Clone)]
pub struct Scanner {
    max_frame: usize,
    phase: Phase,
    state: State,
    /// Bytes of the current frame already scanned.
    pos: usize,
    /// Open elements of the current frame as name ranges within the frame.
    /// Ranges, not copies: the caller hands back the same frame prefix on
    /// every call, so the names are still there when the end tag arrives.
    stack: Vec<(usize, usize)>,
    /// Start of the name currently being read (start tag, end tag).
    name_start: usize,
    /// The stream element's qualified name, kept so `</stream:stream>` can
    /// be matched after the header frame has left the caller's buffer.
    header_qname: Vec<u8>,
    /// The qualified name of the stream this one restarts (empty on a new
    /// connection). A peer that closes its stream where a restart is due
    /// (right after SASL `<success/>`, before its new header) is ending the
    /// connection, not sending bad XML: its `</stream:stream>` closes the old
    /// stream, whose header has left the caller's buffer long ago.
    restarts: Vec<u8>,
    decl_seen: bool,
    /// Set while the end tag being read closes the stream itself.
    closing_stream: bool,
    /// What the reference being read has accumulated.
    reference: Reference,
    /// Errors are sticky: a stream that went bad stays bad.
    error: Option<ScanError>,
}

enum Step {
    Continue,
    /// The frame ends with the current byte.
    Emit(FrameKind),
    /// The frame (a whitespace run) ends before the current byte.
    EmitBefore(FrameKind),
}

fn nwf(why: &'static str) -> Result<Step, ScanError> {
    Err(ScanError::NotWellFormed(why))
}

impl Scanner {
    /// A scanner for a new stream: the first frame must be the stream header.
    /// `max_frame` bounds one frame (header or top-level element) in bytes so
    /// that a peer cannot make the proxy buffer without limit.
    pub fn new(max_frame: usize) -> Self {
        Scanner {
            max_frame,
            phase: Phase::Header,
            state: State::Idle,
            pos: 0,
            stack: Vec::new(),
            name_start: 0,
            header_qname: Vec::new(),
            restarts: Vec::new(),
            decl_seen: false,
            closing_stream: false,
            reference: Reference::default(),
            error: None,
        }
    }

    /// A scanner positioned inside a stream whose header it never saw. It
    /// frames top-level elements only; a top-level end tag is rejected since
    /// there is no header to match it against. Used to check a single
    /// element before it is parsed.
    pub fn for_elements(max_frame: usize) -> Self {
        let mut s = Scanner::new(max_frame);
        s.phase = Phase::Body;
        s
    }

    /// A scanner for a stream that restarts one named `stream_qname` on
    /// another scanner (the clear-text stream before STARTTLS's TLS): like
    /// [`Scanner::new`], except that the peer may close the old stream
    /// instead of opening the new one.
    pub fn restarting(max_frame: usize, stream_qname: &[u8]) -> Self {
        let mut s = Scanner::new(max_frame);
        s.restarts = stream_qname.to_vec();
        s
    }

    /// Stream restart (after STARTTLS or SASL success): the peer sends a new
    /// header, and nothing of the old stream carries over but its name, so
    /// that a peer closing the old stream instead is framed as a
    /// [`FrameKind::StreamEnd`] rather than refused as malformed.
    pub fn reset(&mut self) {
        let restarts = if self.header_qname.is_empty() {
            std::mem::take(&mut self.restarts)
        } else {
            std::mem::take(&mut self.header_qname)
        };
        *self = Scanner::restarting(self.max_frame, &restarts);
    }

    /// Limits can differ before and after authentication.
    pub fn set_max_frame(&mut self, n: usize) {
        self.max_frame = n;
    }

    /// True when no frame is partly scanned: the caller's buffer is empty or
    /// starts a new frame, so a restart or a hand-over can happen cleanly.
    pub fn depth_is_top(&self) -> bool {
        self.pos == 0
    }

    /// True until the stream header frame has been returned.
    pub fn expects_header(&self) -> bool {
        self.phase == Phase::Header
    }

    /// True once `</stream:stream>` has been returned.
    pub fn stream_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Finds the next frame at the front of `buf`.
    ///
    /// `buf` holds the not-yet-consumed bytes, starting at a frame boundary.
    /// After `Ok(None)` call again with the same buffer grown by the bytes
    /// that arrived since; progress is kept, so the total work stays linear
    /// however the bytes are split. After `Ok(Some(frame))` the caller must
    /// drop `buf[..frame.len]` before the next call.
    ///
    /// A whitespace run inside the stream is returned as soon as it is
    /// followed by something else or reaches the end of `buf`, so keepalives
    /// are forwarded without waiting; one run may therefore come back as
    /// several `Whitespace` frames.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<Frame>, ScanError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if buf.len() < self.pos {
            // The caller broke the contract (the buffer shrank). Recover
            // by rescanning the frame rather than trusting stale offsets.
            self.restart_frame();
        }
        let r = self.scan(buf);
        if let Err(e) = &r {
            self.error = Some(e.clone());
        }
        r
    }

    fn restart_frame(&mut self) {
        self.pos = 0;
        self.state = State::Idle;
        self.stack.clear();
        self.closing_stream = false;
        if self.phase == Phase::Header {
            self.decl_seen = false;
        }
    }

    fn finish(&mut self, kind: FrameKind, len: usize) -> Option<Frame> {
        self.pos = 0;
        self.state = State::Idle;
        self.stack.clear();
        self.closing_stream = false;
        match kind {
            FrameKind::Header => self.phase = Phase::Body,
            FrameKind::StreamEnd => self.phase = Phase::Ended,
            FrameKind::Element | FrameKind::Whitespace => {}
        }
        Some(Frame { kind, len })
    }

    fn scan(&mut self, buf: &[u8]) -> Result<Option<Frame>, ScanError> {
        let limit = buf.len().min(self.max_frame);
        while self.pos < limit {
            if let State::Text(_) | State::AttrValue(_) | State::CData = self.state {
                // Plain character data dominates real traffic; skip it
                // without going through the full state dispatch.
                let start = self.pos;
                while self.pos < limit && is_plain(buf[self.pos]) {
                    self.pos += 1;
                }
                if self.pos > start {
                    if let State::Text(_) = self.state {
                        self.state = State::Text(0);
                    }
                    continue;
                }
            }
            let b = buf[self.pos];
            // A whitespace run ends before the bad byte, so that the run is
            // framed the same however the bytes were split.
            if b < 0x20 && !is_ws(b) && self.state != State::Ws {
                return Err(ScanError::NotWellFormed("control character"));
            }
            match self.step(buf, b)? {
                Step::Continue => self.pos += 1,
                Step::Emit(kind) => return Ok(self.finish(kind, self.pos + 1)),
                Step::EmitBefore(kind) => return Ok(self.finish(kind, self.pos)),
            }
        }
        if self.state == State::Ws {
            // Forward keepalives now; also splits a run longer than the
            // frame limit instead of treating it as an error.
            return Ok(self.finish(FrameKind::Whitespace, self.pos));
        }
        if self.pos >= self.max_frame && !buf.is_empty() {
            // Completing the frame would need at least one more byte.
            return Err(ScanError::TooLarge);
        }
        Ok(None)
    }

    fn step(&mut self, buf: &[u8], b: u8) -> Result<Step, ScanError> {
        use State as S;
        let header = self.phase == Phase::Header;
        match self.state {
            S::Idle => match self.phase {
                Phase::Header => match b {
                    _ if is_ws(b) => {}
                    b'<' => self.state = S::Lt,
                    _ => return nwf("text before the stream header"),
                },
                Phase::Body => match b {
                    _ if is_ws(b) => self.state = S::Ws,
                    b'<' => self.state = S::Lt,
                    _ => return nwf("text at the top level of the stream"),
                },
                Phase::Ended => match b {
                    _ if is_ws(b) => self.state = S::Ws,
                    _ => return nwf("data after the end of the stream"),
                },
            },
            S::Ws => {
                if !is_ws(b) {
                    return Ok(Step::EmitBefore(FrameKind::Whitespace));
                }
            }
            S::Lt => match b {
                // Only the close of a stream being restarted may come first.
                b'/' if header && (self.restarts.is_empty() || self.decl_seen) => {
                    return nwf("end tag before the stream header");
                }
                b'/' => self.state = S::EndNameStart,
                b'!' if header => {
                    return Err(ScanError::Restricted(
                        "comment or DTD before the stream header",
                    ));
                }
                b'!' => self.state = S::Bang(0),
                b'?' if header && !self.decl_seen => self.state = S::PiTarget(0),
                b'?' => return Err(ScanError::Restricted("processing instruction")),
                _ if is_name_start(b) => {
                    self.name_start = self.pos;
                    self.state = S::StartName;
                }
                _ => return nwf("invalid character after '<'"),
            },
            S::PiTarget(n) => {
                if n < 3 {
                    if b == b"xml"[n as usize] {
                        self.state = S::PiTarget(n + 1);
                    } else {
                        return Err(ScanError::Restricted("processing instruction"));
                    }
                } else if is_ws(b) {
                    self.decl_seen = true;
                    self.state = S::Decl(false);
                } else if is_name_char(b) {
                    return Err(ScanError::Restricted("processing instruction"));
                } else {
                    return nwf("malformed XML declaration");
                }
            }
            S::Decl(after_q) => match b {
                b'?' => self.state = S::Decl(true),
                b'>' if after_q => self.state = S::Idle,
                b'>' | b'<' => return nwf("malformed XML declaration"),
                _ => self.state = S::Decl(false),
            },
            S::StartName => {
                if is_name_char(b) {
                    return Ok(Step::Continue);
                }
                if !(is_ws(b) || b == b'>' || b == b'/') {
                    return nwf("invalid character in element name");
                }
                let name = &buf[self.name_start..self.pos];
                if !is_qname(name) {
                    return nwf("invalid qualified name");
                }
                if header {
                    if local_part(name) != b"stream" {
                        return nwf("expected a stream header");
                    }
                    self.header_qname = name.to_vec();
                } else {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(ScanError::TooDeep);
                    }
                    self.stack.push((self.name_start, self.pos));
                }
                return self.tag_space(b);
            }
            S::TagSpace => {
                if is_name_start(b) {
                    self.state = S::AttrName;
                } else {
                    return self.tag_space(b);
                }
            }
            S::AfterValue => {
                if is_name_start(b) {
                    return nwf("missing whitespace between attributes");
                }
                return self.tag_space(b);
            }
            S::AttrName => match b {
                _ if is_name_char(b) => {}
                _ if is_ws(b) => self.state = S::AttrAfterName,
                b'=' => self.state = S::AttrEq,
                _ => return nwf("invalid character in attribute name"),
            },
            S::AttrAfterName => match b {
                _ if is_ws(b) => {}
                b'=' => self.state = S::AttrEq,
                _ => return nwf("attribute without a value"),
            },
            S::AttrEq => match b {
                _ if is_ws(b) => {}
                b'\'' | b'"' => self.state = S::AttrValue(b),
                _ => return nwf("unquoted attribute value"),
            },
            S::AttrValue(q) => match b {
                _ if b == q => self.state = S::AfterValue,
                b'<' => return nwf("'<' in attribute value"),
                b'&' => self.state = S::Ref(RefCtx::Attr(q), RefState::Start),
                _ => {}
            },
            S::EmptySlash => {
                if b != b'>' {
                    return nwf("expected '>' after '/' in tag");
                }
                self.stack.pop();
                if self.stack.is_empty() {
                    return Ok(Step::Emit(FrameKind::Element));
                }
                self.state = S::Text(0);
            }
            S::EndNameStart => {
                if !is_name_start(b) {
                    return nwf("invalid end tag");
                }
                self.name_start = self.pos;
                self.state = S::EndName;
            }
            S::EndName => {
                if is_name_char(b) {
                    return Ok(Step::Continue);
                }
                if !(is_ws(b) || b == b'>') {
                    return nwf("invalid character in end tag");
                }
                let name = &buf[self.name_start..self.pos];
                match self.stack.last() {
                    Some(&(s, e)) => {
                        if buf[s..e] != *name {
                            return nwf("end tag does not match start tag");
                        }
                    }
                    None => {
                        let open = if header {
                            &self.restarts
                        } else {
                            &self.header_qname
                        };
                        if open.is_empty() || open != name {
                            return nwf("end tag does not match the stream header");
                        }
                        self.closing_stream = true;
                    }
                }
                if b == b'>' {
                    return Ok(self.close_end());
                }
                self.state = S::EndSpace;
            }
            S::EndSpace => match b {
                _ if is_ws(b) => {}
                b'>' => return Ok(self.close_end()),
                _ => return nwf("invalid character in end tag"),
            },
            S::Text(brackets) => match b {
                b'<' => self.state = S::Lt,
                b'&' => self.state = S::Ref(RefCtx::Text, RefState::Start),
                b']' => self.state = S::Text((brackets + 1).min(2)),
                b'>' if brackets == 2 => return nwf("']]>' in character data"),
                _ => self.state = S::Text(0),
            },
            S::Ref(ctx, at) => match self.reference.step(at, b) {
                Ok(Some(next)) => self.state = S::Ref(ctx, next),
                // The `;` ends it: back to where it began.
                Ok(None) => {
                    self.state = match ctx {
                        RefCtx::Text => S::Text(0),
                        RefCtx::Attr(q) => S::AttrValue(q),
                    }
                }
                Err(RefError::Malformed(why)) => return nwf(why),
                Err(RefError::Restricted(why)) => return Err(ScanError::Restricted(why)),
            },
            S::Bang(n) => {
                if n == 0 && b == b'[' && self.stack.is_empty() {
                    return nwf("CDATA section outside an element");
                }
                if b != CDATA_OPEN[n as usize] {
                    return Err(ScanError::Restricted("comment or markup declaration"));
                }
                self.state = if n as usize + 1 == CDATA_OPEN.len() {
                    S::CData
                } else {
                    S::Bang(n + 1)
                };
            }
            S::CData => {
                if b == b']' {
                    self.state = S::CDataBr1;
                }
            }
            S::CDataBr1 => self.state = if b == b']' { S::CDataBr2 } else { S::CData },
            S::CDataBr2 => match b {
                b'>' => self.state = S::Text(0),
                b']' => {}
                _ => self.state = S::CData,
            },
        }
        Ok(Step::Continue)
    }

    /// Whitespace, `>` or `/` inside a start tag.
    fn tag_space(&mut self, b: u8) -> Result<Step, ScanError> {
        let header = self.phase == Phase::Header;
        match b {
            _ if is_ws(b) => self.state = State::TagSpace,
            b'>' if header => return Ok(Step::Emit(FrameKind::Header)),
            b'>' => self.state = State::Text(0),
            b'/' if header => return nwf("self-closed stream header"),
            b'/' => self.state = State::EmptySlash,
            _ => return nwf("invalid character in start tag"),
        }
        Ok(Step::Continue)
    }

    fn close_end(&mut self) -> Step {
        if self.closing_stream {
            return Step::Emit(FrameKind::StreamEnd);
        }
        self.stack.pop();
        if self.stack.is_empty() {
            Step::Emit(FrameKind::Element)
        } else {
            self.state = State::Text(0);
            Step::Continue
        }
    }
}
