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

    /// The bytes stopped making sense; no boundary will be reported again.
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
mod tests {
    use super::*;

    /// A recorded event with an owned name, at an offset within the whole stream.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Start(usize),
        Name(usize, Option<Vec<u8>>),
        End(usize),
        StreamEnd(usize),
        Lost(usize),
    }

    /// Feed `input` cut at `cuts` (sorted offsets); return the events at whole-stream offsets,
    /// and after every chunk whether the stream was at a boundary there.
    fn run(input: &[u8], cuts: &[usize]) -> (Vec<Ev>, Vec<(usize, bool)>, Vec<usize>) {
        let mut t = Tracker::new();
        let mut events = Vec::new();
        let mut states = Vec::new();
        let mut boundaries = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&input.len())) {
            let chunk = &input[from..to];
            let feed = t.feed_events(chunk, |e| {
                events.push(match e {
                    Event::Start(o) => Ev::Start(from + o),
                    Event::Name { at, name } => Ev::Name(from + at, name.map(<[u8]>::to_vec)),
                    Event::End(o) => Ev::End(from + o),
                    Event::StreamEnd(o) => Ev::StreamEnd(from + o),
                    Event::Lost(o) => Ev::Lost(from + o),
                })
            });
            assert_eq!(feed.at_boundary, t.at_boundary());
            assert_eq!(feed.at_boundary, feed.last_boundary == Some(chunk.len()));
            assert_eq!(feed.lost, t.is_lost());
            if let Some(o) = feed.last_boundary {
                assert!(o <= chunk.len());
                boundaries.push(from + o);
            }
            if let Some(o) = feed.stream_end {
                assert!(events.contains(&Ev::StreamEnd(from + o)));
            }
            states.push((to, feed.at_boundary));
            from = to;
        }
        (events, states, boundaries)
    }

    /// Top-level pieces of a realistic post-authentication stream, in order.
    const PIECES: &[&str] = &[
        "<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>",
        "\n",
        "<enable xmlns='urn:xmpp:sm:3' resume='true'/>",
        "<presence/>",
        " ",
        "<message to=\"juliet@example.com/balcony\" from='romeo@example.net/orchard' id=\"m'1\" type='chat'><body>Art thou not Romeo, &amp; a Montague? 3 &gt; 2 &lt; 4 &#x263A; a/b></body><thread>e0ffe42b28561960c6b12b944a092794b9683a38</thread></message>",
        "\r\n\t ",
        "<message id='x>y/z' data=\"a'b>c\"><body><![CDATA[<not-a-tag attr='>'/> ]] ]><x> ]]]]></body><x xmlns='jabber:x:data' type='form'/></message>",
        "<r xmlns='urn:xmpp:sm:3'/>",
        "<a xmlns='urn:xmpp:sm:3' h='12' />",
        "<presence from='a@b/c'><show>away</show><status>Out &amp; about</status><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://x/' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>",
        "<iq\ttype = \"result\"\nid='p1' ><query xmlns='jabber:iq:roster'><!-- not shown > -- --><item jid='a@b' subscription='both'><group>Friends</group></item></query></iq >",
        "<!-- a top-level comment with <tags> -->",
        "<?pi stuff > ? ?>",
        "<message><body>é ünïcödé ✓ 😀</body></message   >",
        "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        "  ",
    ];
    const END: &str = "</stream:stream>";

    fn stream() -> (Vec<u8>, Vec<Ev>) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for piece in PIECES {
            let start = input.len();
            input.extend_from_slice(piece.as_bytes());
            if let Some(rest) = piece.strip_prefix('<') {
                expected.push(Ev::Start(start));
                if !rest.starts_with(['!', '?']) {
                    let name_len = rest
                        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                        .unwrap();
                    expected.push(Ev::Name(
                        start + 1 + name_len,
                        Some(rest.as_bytes()[..name_len].to_vec()),
                    ));
                }
                expected.push(Ev::End(input.len()));
            }
        }
        expected.push(Ev::Start(input.len()));
        input.extend_from_slice(END.as_bytes());
        expected.push(Ev::StreamEnd(input.len()));
        input.extend_from_slice(b"\n");
        (input, expected)
    }

    /// Offsets after which the whole stream is at a boundary: the start, every element end,
    /// and every position inside top-level whitespace.
    fn boundary_offsets(input: &[u8]) -> Vec<bool> {
        let mut at = vec![false; input.len() + 1];
        let mut t = Tracker::new();
        at[0] = true;
        for i in 0..input.len() {
            at[i + 1] = t.feed(&input[i..i + 1]).at_boundary;
        }
        at
    }

    #[test]
    fn boundaries_are_exactly_the_element_ends() {
        let (input, expected) = stream();
        let (events, _, _) = run(&input, &[]);
        assert_eq!(events, expected);
        // A boundary before and after every top-level piece and anywhere inside whitespace,
        // up to the stream end tag; none inside an element, none after the stream's end.
        let mut want = vec![false; input.len() + 1];
        let mut off = 0;
        for piece in PIECES {
            let whitespace = !piece.starts_with('<');
            want[off] = true;
            if whitespace {
                want[off..=off + piece.len()].fill(true);
            }
            off += piece.len();
        }
        want[off] = true;
        assert_eq!(boundary_offsets(&input), want);
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let (input, expected) = stream();
        let whole_at = boundary_offsets(&input);
        for cut in 0..=input.len() {
            let (events, states, boundaries) = run(&input, &[cut]);
            assert_eq!(events, expected, "split at {cut}");
            for (to, at) in states {
                assert_eq!(at, whole_at[to], "split at {cut}, boundary after {to}");
            }
            for b in boundaries {
                assert!(whole_at[b], "split at {cut}: claimed boundary {b}");
            }
        }
    }

    #[test]
    fn last_boundary_is_the_last_one_in_the_chunk() {
        let (input, _) = stream();
        let whole_at = boundary_offsets(&input);
        for cut in 0..=input.len() {
            let mut t = Tracker::new();
            t.feed(&input[..cut]);
            let feed = t.feed(&input[cut..]);
            let expected = (cut..=input.len()).rev().find(|&o| whole_at[o]);
            assert_eq!(feed.last_boundary.map(|o| cut + o), expected, "cut {cut}");
        }
    }

    /// Small deterministic generator so the randomized tests replay identically.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_cuts(rng: &mut XorShift, len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..rng.below(12)).map(|_| rng.below(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    #[test]
    fn random_splits_give_the_same_result() {
        let (input, expected) = stream();
        let whole_at = boundary_offsets(&input);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let cuts = random_cuts(&mut rng, input.len());
            let (events, states, boundaries) = run(&input, &cuts);
            assert_eq!(events, expected, "cuts {cuts:?}");
            for (to, at) in states {
                assert_eq!(at, whole_at[to], "cuts {cuts:?}");
            }
            for b in boundaries {
                assert!(whole_at[b], "cuts {cuts:?}: claimed boundary {b}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_do_not_depend_on_splits() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let alphabet = b"<>/!?-[]CDATA'\"= \n:abstream&;x\xc3\xa9\0";
        let (realistic, _) = stream();
        for round in 0..3000 {
            let input: Vec<u8> = if round % 2 == 0 {
                (0..rng.below(200))
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect()
            } else {
                // A realistic stream with a few bytes mangled.
                let mut v = realistic.clone();
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(v.len());
                    v[i] = alphabet[rng.below(alphabet.len())];
                }
                v
            };
            let (whole, whole_states, _) = run(&input, &[]);
            let cuts = random_cuts(&mut rng, input.len());
            let (split, _, _) = run(&input, &cuts);
            assert_eq!(whole, split, "input {input:?} cuts {cuts:?}");
            let at = boundary_offsets(&input);
            assert_eq!(whole_states.last().unwrap().1, at[input.len()]);
        }
    }

    #[test]
    fn stream_end_any_prefix() {
        for (input, end) in [
            (&b"</stream:stream>"[..], 16),
            (b"<presence/></stream>\n", 20),
            (b"</x:stream \n>  ", 13),
        ] {
            let mut t = Tracker::new();
            let feed = t.feed(input);
            assert_eq!(feed.stream_end, Some(end), "{input:?}");
            assert!(t.stream_ended() && !t.at_boundary() && !feed.at_boundary);
            // Whitespace after the end is harmless; anything else is not.
            assert!(!t.feed(b" ").lost);
            assert!(t.feed(b"<presence/>").lost);
        }
        // Split inside the end tag.
        let mut t = Tracker::new();
        assert_eq!(t.feed(b"<r/></str").stream_end, None);
        assert_eq!(t.feed(b"eam:st").stream_end, None);
        assert_eq!(t.feed(b"ream>").stream_end, Some(5));
        assert!(t.stream_ended());
    }

    #[test]
    fn other_top_level_end_tags_are_not_a_stream_end() {
        for input in [
            &b"</message>"[..],
            b"</streams>",
            b"</:stream>",
            b"</a:b:stream-x>",
            b"</aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:stream>",
        ] {
            let mut t = Tracker::new();
            let feed = t.feed(input);
            assert_eq!(feed.stream_end, None, "{input:?}");
            assert!(feed.lost && !t.stream_ended(), "{input:?}");
        }
    }

    #[test]
    fn nonsense_is_never_a_boundary() {
        for input in [
            &b"hello"[..],
            b"<message>hi</presence>",
            b"<message a=b>",
            b"<message a='<'>",
            b"<message a>",
            b"<message a='1'b='2'>",
            b"<![CDATA[x]]>",
            b"<!DOCTYPE x>",
            b"<message/ >",
            b"<1message/>",
            b"</ message>",
            b">",
        ] {
            let mut t = Tracker::new();
            let feed = t.feed(input);
            assert!(feed.lost, "{input:?}");
            assert!(!feed.at_boundary);
            // Lost for good, even after what would otherwise be a clean element.
            let feed = t.feed(b"  <presence/>  ");
            assert!(feed.lost && !feed.at_boundary && feed.last_boundary.is_none());
        }
    }

    #[test]
    fn nested_elements_and_long_names() {
        let mut t = Tracker::new();
        let mut ends = Vec::new();
        let mut names = Vec::new();
        let input = b"<a><b><a/><c>x</c></b></a><averyveryveryveryverylongelementname12345><x/></averyveryveryveryverylongelementname12345>";
        t.feed_events(input, |e| match e {
            Event::End(o) => ends.push(o),
            Event::Name { name, .. } => names.push(name.map(<[u8]>::to_vec)),
            _ => {}
        });
        assert_eq!(ends, vec![26, input.len()]);
        assert_eq!(names, vec![Some(b"a".to_vec()), None]);
        assert!(t.at_boundary());
        // The top-level end tag must match the kept name, even for a prefix of it.
        let mut t = Tracker::new();
        assert!(t.feed(b"<message></messag>").lost);
        let mut t = Tracker::new();
        assert!(t.feed(b"<messag></message>").lost);
    }

    #[test]
    fn ahead_of_element_and_mid_element_chunks() {
        let mut t = Tracker::new();
        let f = t.feed(b"");
        assert_eq!(f.last_boundary, Some(0));
        assert!(f.at_boundary);
        let f = t.feed(b"<message><body>half");
        assert_eq!(f.last_boundary, Some(0));
        assert!(!f.at_boundary);
        let f = t.feed(b" way</body>");
        assert_eq!(f.last_boundary, None);
        let f = t.feed(b"</message><presence");
        assert_eq!(f.last_boundary, Some(10));
        assert!(!f.at_boundary);
        let f = t.feed(b"/>\n");
        assert_eq!(f.last_boundary, Some(3));
        assert!(f.at_boundary);
    }
}
