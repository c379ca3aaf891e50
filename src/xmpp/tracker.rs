//! Where the top-level elements of a relayed stream begin and end.
//!
//! After authentication the proxy relays bytes without parsing them, yet it still needs to know
//! where top-level elements (stanzas, XEP-0198 `<r/>` and `<a/>`, …) begin and end: the proxy's
//! own bytes (a stream error when a node is drained or the proxy stops) may only go in between
//! two of them, and some top-level elements are to be captured or rewritten in flight.
//!
//! [`Tracker`] follows just enough XML to know the nesting depth: tags and their quoted
//! attribute values (which may hold `>` and `/`), self-closing tags, end tags, CDATA sections
//! (which may hold `<` and `>`), comments and processing instructions. It differs from the
//! negotiation [`Scanner`](super::scanner::Scanner) on purpose:
//! - it runs over every relayed byte of every connection for its whole life, so it keeps no
//!   buffer, allocates nothing and holds a few dozen bytes of state; chunks may be split
//!   anywhere and nothing is ever rescanned;
//! - it rejects nothing: judging the XML is the server's job (and a backend is trusted). When the
//!   bytes stop making sense it becomes *lost* for good and never reports a boundary again, so
//!   every mistake errs towards not injecting rather than cutting a stanza in half.
//!
//! Nested end tags are not matched against their start tags (that would need a stack); the
//! top-level element's own end tag is, when its name is short enough to have been kept.

/// Top-level element names up to this length are kept (for [`Event::Name`] and for matching
/// the element's end tag); every XMPP top-level element name is far shorter.
const NAME_CAP: usize = 32;

const CDATA_OPEN: &[u8] = b"[CDATA[";

/// Something that happened at the top level of the stream, at an offset within the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Top-level markup begins with the `<` at this offset: an element, or a comment or
    /// processing instruction (which get no [`Event::Name`]), or the stream end tag.
    /// Reported at the `<` itself so a consumer that wants to hold the element back learns of
    /// it before any of its bytes are passed on.
    Start(usize),
    /// The name of the top-level element begun by the last [`Event::Start`] is complete; `at`
    /// is the offset of the byte that ended it. `name` is the qualified name as written, or
    /// `None` if it was too long to keep.
    Name { at: usize, name: Option<&'a [u8]> },
    /// The top-level construct begun by the last [`Event::Start`] ends just before this
    /// offset (after its `>`): a boundary.
    End(usize),
    /// The stream end tag (`</stream:stream>`, any prefix) ends just before this offset.
    StreamEnd(usize),
    /// The byte at this offset made no sense: the tracker is lost for good.
    Lost(usize),
}

/// What one chunk did to the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Feed {
    /// The largest offset `o` (`0..=chunk.len()`) such that the stream is at a top-level
    /// boundary after `chunk[..o]`: `chunk[..o]` can be delivered and something injected after
    /// it without cutting an element. `Some(0)` when only the chunk's start is one, `None` when
    /// not even that.
    pub last_boundary: Option<usize>,
    /// The stream is at a top-level boundary after the whole chunk
    /// (`last_boundary == Some(chunk.len())`).
    pub at_boundary: bool,
    /// The stream end tag ended in this chunk, just before this offset.
    pub stream_end: Option<usize>,
    /// The tracker is lost (now or since an earlier chunk).
    pub lost: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Depth 0, between top-level constructs (whitespace allowed): the only boundary state.
    Between,
    /// Just after `<`.
    Lt,
    StartName,
    /// Inside a start tag, after whitespace.
    TagSpace,
    AttrName,
    AttrAfterName,
    AttrEq,
    /// Inside an attribute value delimited by this quote.
    AttrValue(u8),
    /// Just after an attribute value's closing quote.
    AfterValue,
    /// `/` in a start tag: `>` must follow.
    EmptySlash,
    /// Character data inside an element (depth ≥ 1).
    Content,
    EndNameStart,
    EndName,
    EndSpace,
    /// After `<!`, with how many bytes of `[CDATA[` matched so far.
    Bang(u8),
    /// After `<!-`.
    BangDash,
    /// Inside a comment, with how many `-` just preceded.
    Comment(u8),
    /// Inside a processing instruction; the flag records a preceding `?`.
    Pi(bool),
    /// Inside a CDATA section, with how many `]` just preceded.
    CData(u8),
    /// After the stream end tag: only whitespace makes sense.
    Ended,
    /// The bytes made no sense; no boundary is ever claimed again.
    Lost,
}

/// What one byte did, for the caller to report.
enum Signal {
    None,
    Start,
    Name,
    End,
    StreamEnd,
    Lost,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Non-ASCII bytes count as name characters: telling which Unicode characters are allowed
/// would need decoding, and only where names end matters here.
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// Streaming top-level boundary tracker for one direction of a stream, positioned inside the
/// stream (after its header) at a boundary.
#[derive(Debug, Clone)]
pub struct Tracker {
    state: State,
    /// Open elements (the stream element itself not counted).
    depth: u32,
    /// The current top-level element's name, or the end tag being read at depth 0.
    name: [u8; NAME_CAP],
    /// Length of that name; bytes past `NAME_CAP` are counted but not kept.
    name_len: usize,
    /// Bytes of the end tag being read at depth 1 (the one that closes a top-level element).
    end_len: usize,
    /// Whether those bytes so far match the kept top-level name.
    end_matches: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    /// A tracker at a top-level boundary of an open stream.
    pub fn new() -> Self {
        Tracker {
            state: State::Between,
            depth: 0,
            name: [0; NAME_CAP],
            name_len: 0,
            end_len: 0,
            end_matches: true,
        }
    }

    /// Between two top-level elements: bytes may be injected here.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Between
    }

    /// The stream end tag was seen: nothing may be injected any more, the stream is over.
    pub fn stream_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// The bytes stopped making sense; no boundary will be reported again (tests compare
    /// it with the model's verdict).
    #[cfg(test)]
    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Track one chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Feed {
        self.feed_events(chunk, |_| {})
    }

    /// Track one chunk, telling `on_event` of every top-level start, name and end in order.
    pub fn feed_events(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) -> Feed {
        let mut feed = Feed::default();
        let len = chunk.len();
        let mut i = 0;
        while i < len {
            // Fast paths: most bytes are character data, attribute values and keepalives,
            // which cannot change the state until one specific byte shows up.
            match self.state {
                State::Between => {
                    while i < len && is_ws(chunk[i]) {
                        i += 1;
                    }
                    feed.last_boundary = Some(i);
                    if i == len {
                        break;
                    }
                }
                State::Content => match chunk[i..].iter().position(|&b| b == b'<') {
                    Some(p) => i += p,
                    None => break,
                },
                State::AttrValue(q) => match chunk[i..].iter().position(|&b| b == q || b == b'<') {
                    Some(p) => i += p,
                    None => break,
                },
                State::CData(0) => match chunk[i..].iter().position(|&b| b == b']') {
                    Some(p) => i += p,
                    None => break,
                },
                State::Lost => break,
                _ => {}
            }
            match self.step(chunk[i]) {
                Signal::None => {}
                Signal::Start => on_event(Event::Start(i)),
                Signal::Name => on_event(Event::Name {
                    at: i,
                    name: (self.name_len <= NAME_CAP).then(|| &self.name[..self.name_len]),
                }),
                Signal::End => on_event(Event::End(i + 1)),
                Signal::StreamEnd => {
                    feed.stream_end = Some(i + 1);
                    on_event(Event::StreamEnd(i + 1));
                }
                Signal::Lost => on_event(Event::Lost(i)),
            }
            i += 1;
            if self.state == State::Between {
                feed.last_boundary = Some(i);
            }
        }
        if self.state == State::Between {
            feed.last_boundary = Some(len);
            feed.at_boundary = true;
        }
        feed.lost = self.state == State::Lost;
        feed
    }

    fn lose(&mut self) -> Signal {
        self.state = State::Lost;
        Signal::Lost
    }

    fn push_name(&mut self, b: u8) {
        if self.name_len < NAME_CAP {
            self.name[self.name_len] = b;
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    fn step(&mut self, b: u8) -> Signal {
        use State as S;
        match self.state {
            S::Between => match b {
                _ if is_ws(b) => {}
                b'<' => {
                    self.state = S::Lt;
                    return Signal::Start;
                }
                // Text at the top level of a stream is not XMPP.
                _ => return self.lose(),
            },
            S::Lt => match b {
                b'/' => self.state = S::EndNameStart,
                b'!' => self.state = S::Bang(0),
                b'?' => self.state = S::Pi(false),
                _ if is_name_start(b) => {
                    if self.depth == 0 {
                        self.name_len = 0;
                        self.push_name(b);
                    }
                    self.state = S::StartName;
                }
                _ => return self.lose(),
            },
            S::StartName => {
                if is_name_char(b) {
                    if self.depth == 0 {
                        self.push_name(b);
                    }
                } else {
                    let top = self.depth == 0;
                    let signal = self.tag_space(b);
                    if top && !matches!(signal, Signal::Lost) {
                        return Signal::Name;
                    }
                    return signal;
                }
            }
            S::TagSpace => {
                if is_name_start(b) {
                    self.state = S::AttrName;
                } else {
                    return self.tag_space(b);
                }
            }
            S::AttrName => match b {
                _ if is_name_char(b) => {}
                _ if is_ws(b) => self.state = S::AttrAfterName,
                b'=' => self.state = S::AttrEq,
                _ => return self.lose(),
            },
            S::AttrAfterName => match b {
                _ if is_ws(b) => {}
                b'=' => self.state = S::AttrEq,
                _ => return self.lose(),
            },
            S::AttrEq => match b {
                _ if is_ws(b) => {}
                b'\'' | b'"' => self.state = S::AttrValue(b),
                _ => return self.lose(),
            },
            S::AttrValue(q) => match b {
                _ if b == q => self.state = S::AfterValue,
                b'<' => return self.lose(),
                _ => {}
            },
            S::AfterValue => return self.tag_space(b),
            S::EmptySlash => {
                if b != b'>' {
                    return self.lose();
                }
                if self.depth == 0 {
                    self.state = S::Between;
                    return Signal::End;
                }
                self.state = S::Content;
            }
            S::Content => {
                if b == b'<' {
                    self.state = S::Lt;
                }
            }
            S::EndNameStart => {
                if !is_name_start(b) {
                    return self.lose();
                }
                self.start_end_name();
                self.end_name_byte(b);
                self.state = S::EndName;
            }
            S::EndName => match b {
                _ if is_name_char(b) => self.end_name_byte(b),
                _ if is_ws(b) => self.state = S::EndSpace,
                b'>' => return self.close_element(),
                _ => return self.lose(),
            },
            S::EndSpace => match b {
                _ if is_ws(b) => {}
                b'>' => return self.close_element(),
                _ => return self.lose(),
            },
            S::Bang(n) => {
                let n = usize::from(n);
                if n == 0 && b == b'-' {
                    self.state = S::BangDash;
                } else if b == CDATA_OPEN[n] && self.depth > 0 {
                    self.state = if n + 1 == CDATA_OPEN.len() {
                        S::CData(0)
                    } else {
                        S::Bang(n as u8 + 1)
                    };
                } else {
                    // A DTD, or CDATA outside any element.
                    return self.lose();
                }
            }
            S::BangDash => {
                if b != b'-' {
                    return self.lose();
                }
                self.state = S::Comment(0);
            }
            S::Comment(dashes) => match b {
                b'-' => self.state = S::Comment((dashes + 1).min(2)),
                b'>' if dashes == 2 => return self.after_misc(),
                _ => self.state = S::Comment(0),
            },
            S::Pi(after_q) => match b {
                b'?' => self.state = S::Pi(true),
                b'>' if after_q => return self.after_misc(),
                _ => self.state = S::Pi(false),
            },
            S::CData(brackets) => match b {
                b']' => self.state = S::CData((brackets + 1).min(2)),
                b'>' if brackets == 2 => self.state = S::Content,
                _ => self.state = S::CData(0),
            },
            S::Ended => {
                if !is_ws(b) {
                    return self.lose();
                }
            }
            S::Lost => {}
        }
        Signal::None
    }

    /// Whitespace, `>` or `/` after a start tag's name or attribute value.
    fn tag_space(&mut self, b: u8) -> Signal {
        match b {
            _ if is_ws(b) => self.state = State::TagSpace,
            b'/' => self.state = State::EmptySlash,
            b'>' => match self.depth.checked_add(1) {
                Some(d) => {
                    self.depth = d;
                    self.state = State::Content;
                }
                None => return self.lose(),
            },
            _ => return self.lose(),
        }
        Signal::None
    }

    fn start_end_name(&mut self) {
        match self.depth {
            // No element is open: this can only be the stream's end tag; read its name.
            0 => self.name_len = 0,
            // Closes the top-level element: compare with its kept name as it goes.
            1 => {
                self.end_len = 0;
                self.end_matches = true;
            }
            _ => {}
        }
    }

    fn end_name_byte(&mut self, b: u8) {
        match self.depth {
            0 => self.push_name(b),
            1 => {
                if self.end_len < NAME_CAP
                    && (self.end_len >= self.name_len || self.name[self.end_len] != b)
                {
                    self.end_matches = false;
                }
                self.end_len = self.end_len.saturating_add(1);
            }
            _ => {}
        }
    }

    /// The `>` of an end tag.
    fn close_element(&mut self) -> Signal {
        match self.depth {
            0 => {
                let name = &self.name[..self.name_len.min(NAME_CAP)];
                let local = match name.iter().position(|&c| c == b':') {
                    Some(p) if p > 0 => &name[p + 1..],
                    Some(_) => return self.lose(),
                    None => name,
                };
                if self.name_len > NAME_CAP || local != b"stream" {
                    return self.lose();
                }
                self.state = State::Ended;
                Signal::StreamEnd
            }
            1 => {
                if !self.end_matches || self.end_len != self.name_len {
                    return self.lose();
                }
                self.depth = 0;
                self.state = State::Between;
                Signal::End
            }
            _ => {
                self.depth -= 1;
                self.state = State::Content;
                Signal::None
            }
        }
    }

    /// The end of a comment or processing instruction: back where it started.
    fn after_misc(&mut self) -> Signal {
        if self.depth == 0 {
            self.state = State::Between;
            Signal::End
        } else {
            self.state = State::Content;
            Signal::None
        }
    }
}

#[cfg(test)]
mod tests;
