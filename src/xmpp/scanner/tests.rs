use super::*;

const MAX: usize = 64 * 1024;

// Stream headers as real clients and servers send them.
const SLIXMPP: &[u8] = b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>";
const SLIXMPP_DECL: &[u8] = b"<?xml version='1.0'?><stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>";
const PROSODY: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' id='4f1c2b0e-9a3d-4c6e-8b1f-2d7e5a9c0b13' from='example.test' version='1.0'>";
const CONVERSATIONS: &[u8] = b"<?xml version='1.0'?><stream:stream from='alice@example.test' to='example.test' version='1.0' xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
const DOUBLE_QUOTED: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\" to=\"example.test\" version=\"1.0\" xml:lang=\"en\">";

const FEATURES: &[u8] = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>";
const AUTH: &[u8] =
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>";
const MESSAGE: &[u8] = b"<message to='bob@example.test' type='chat' id='m1&amp;x&#x22;' xmlns='jabber:client'><body>1 &lt; 2 &amp;&amp; 3 &gt; 2 &#x263A; &#9731; &quot;q&apos; a>b ]</body><x xmlns='urn:x'><![CDATA[<not>&markup;]]]]></x></message>";
const BIND: &[u8] = b"<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>";
const SPACY: &[u8] =
    b"<presence\n  xml:lang = \"en\"\t><show >away</show ><status a='/>' b=\"'\"/></presence >";
const STARTTLS: &[u8] = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

const HEADERS: &[&[u8]] = &[SLIXMPP, SLIXMPP_DECL, PROSODY, CONVERSATIONS, DOUBLE_QUOTED];
const ELEMENTS: &[&[u8]] = &[FEATURES, AUTH, MESSAGE, BIND, SPACY, STARTTLS];

fn after_header(max: usize) -> Scanner {
    let mut s = Scanner::new(max);
    let f = s.next(SLIXMPP).unwrap().unwrap();
    assert_eq!(
        f,
        Frame {
            kind: FrameKind::Header,
            len: SLIXMPP.len()
        }
    );
    s
}

/// Frames `data` with a fresh scanner, removing each frame as a caller would.
fn frames(mut s: Scanner, data: &[u8]) -> Result<Vec<(FrameKind, Vec<u8>)>, ScanError> {
    let mut buf = data.to_vec();
    let mut out = Vec::new();
    while let Some(f) = s.next(&buf)? {
        out.push((f.kind, buf.drain(..f.len).collect()));
    }
    assert!(buf.is_empty() || s.next(&buf)?.is_none());
    Ok(out)
}

fn first_error(mut s: Scanner, data: &[u8]) -> ScanError {
    let mut buf = data.to_vec();
    loop {
        match s.next(&buf) {
            Ok(Some(f)) => drop(buf.drain(..f.len)),
            Ok(None) => panic!("no error for {:?}", String::from_utf8_lossy(data)),
            Err(e) => return e,
        }
    }
}

/// Every proper prefix is incomplete and the whole is exactly one frame,
/// whether each prefix is scanned from scratch or the same scanner sees the
/// buffer grow one byte at a time.
fn check_prefixes(make: impl Fn() -> Scanner, data: &[u8], kind: FrameKind) {
    for n in 0..data.len() {
        assert_eq!(
            make().next(&data[..n]),
            Ok(None),
            "fresh prefix {n} of {}",
            String::from_utf8_lossy(data)
        );
    }
    assert_eq!(
        make().next(data),
        Ok(Some(Frame {
            kind,
            len: data.len()
        }))
    );
    let mut s = make();
    for n in 0..data.len() {
        assert_eq!(s.next(&data[..n]), Ok(None), "drip prefix {n}");
    }
    assert_eq!(
        s.next(data),
        Ok(Some(Frame {
            kind,
            len: data.len()
        }))
    );
    assert!(s.depth_is_top());
}

#[test]
fn captured_headers_every_prefix() {
    for h in HEADERS {
        check_prefixes(|| Scanner::new(MAX), h, FrameKind::Header);
    }
}

#[test]
fn captured_elements_every_prefix() {
    for e in ELEMENTS {
        check_prefixes(|| after_header(MAX), e, FrameKind::Element);
    }
}

#[test]
fn header_followed_by_more_data_stops_at_its_end() {
    let mut data = PROSODY.to_vec();
    data.extend_from_slice(FEATURES);
    let mut s = Scanner::new(MAX);
    assert_eq!(
        s.next(&data),
        Ok(Some(Frame {
            kind: FrameKind::Header,
            len: PROSODY.len()
        }))
    );
    assert!(!s.expects_header());
}

#[test]
fn two_frames_in_one_buffer() {
    let mut data = AUTH.to_vec();
    data.extend_from_slice(MESSAGE);
    let got = frames(after_header(MAX), &data).unwrap();
    assert_eq!(
        got,
        vec![
            (FrameKind::Element, AUTH.to_vec()),
            (FrameKind::Element, MESSAGE.to_vec())
        ]
    );
}

#[test]
fn header_features_and_keepalive_in_one_read() {
    let mut data = PROSODY.to_vec();
    data.extend_from_slice(FEATURES);
    data.extend_from_slice(b" \n\t ");
    let got = frames(Scanner::new(MAX), &data).unwrap();
    assert_eq!(
        got,
        vec![
            (FrameKind::Header, PROSODY.to_vec()),
            (FrameKind::Element, FEATURES.to_vec()),
            (FrameKind::Whitespace, b" \n\t ".to_vec()),
        ]
    );
}

#[test]
fn whitespace_before_element_is_its_own_frame() {
    let mut s = after_header(MAX);
    let data = b"  <a/>";
    assert_eq!(
        s.next(data),
        Ok(Some(Frame {
            kind: FrameKind::Whitespace,
            len: 2
        }))
    );
    assert_eq!(
        s.next(&data[2..]),
        Ok(Some(Frame {
            kind: FrameKind::Element,
            len: 4
        }))
    );
    // A lone keepalive is returned at once, without waiting for more bytes.
    assert_eq!(
        s.next(b" "),
        Ok(Some(Frame {
            kind: FrameKind::Whitespace,
            len: 1
        }))
    );
}

#[test]
fn leading_whitespace_belongs_to_the_header() {
    let data = b"\r\n <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let mut s = Scanner::new(MAX);
    assert_eq!(s.next(&data[..2]), Ok(None));
    assert_eq!(
        s.next(data),
        Ok(Some(Frame {
            kind: FrameKind::Header,
            len: data.len()
        }))
    );
}

#[test]
fn stream_end_and_after() {
    let mut s = after_header(MAX);
    assert_eq!(s.next(b"</stream:stream"), Ok(None));
    assert_eq!(
        s.next(b"</stream:stream>"),
        Ok(Some(Frame {
            kind: FrameKind::StreamEnd,
            len: 16
        }))
    );
    assert!(s.stream_ended());
    assert_eq!(
        s.next(b"\n"),
        Ok(Some(Frame {
            kind: FrameKind::Whitespace,
            len: 1
        }))
    );
    assert_eq!(
        s.next(b"<a/>"),
        Err(ScanError::NotWellFormed("data after the end of the stream"))
    );

    let mut s = after_header(MAX);
    assert_eq!(
        s.next(b"</stream:stream \n>"),
        Ok(Some(Frame {
            kind: FrameKind::StreamEnd,
            len: 18
        }))
    );
    assert!(matches!(
        after_header(MAX).next(b"</stream>"),
        Err(ScanError::NotWellFormed(_))
    ));
    assert!(matches!(
        after_header(MAX).next(b"</a>"),
        Err(ScanError::NotWellFormed(_))
    ));
}

#[test]
fn other_stream_prefix() {
    let h = b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'>";
    let mut data = h.to_vec();
    data.extend_from_slice(b"<s:features/></s:stream>");
    let got = frames(Scanner::new(MAX), &data).unwrap();
    assert_eq!(got[2], (FrameKind::StreamEnd, b"</s:stream>".to_vec()));
    let h = b"<stream xmlns='http://etherx.jabber.org/streams'>";
    let mut data = h.to_vec();
    data.extend_from_slice(b"<features/></stream>");
    assert_eq!(frames(Scanner::new(MAX), &data).unwrap().len(), 3);
}

#[test]
fn reset_after_restart() {
    let mut s = after_header(MAX);
    assert_eq!(
        s.next(STARTTLS),
        Ok(Some(Frame {
            kind: FrameKind::Element,
            len: STARTTLS.len()
        }))
    );
    s.reset();
    assert!(s.expects_header());
    assert_eq!(
        s.next(PROSODY),
        Ok(Some(Frame {
            kind: FrameKind::Header,
            len: PROSODY.len()
        }))
    );
    assert_eq!(
        s.next(AUTH),
        Ok(Some(Frame {
            kind: FrameKind::Element,
            len: AUTH.len()
        }))
    );
    s.reset();
    assert!(matches!(s.next(AUTH), Err(ScanError::NotWellFormed(_))));
    // Reset also clears a failure, since it starts a new stream.
    s.reset();
    assert_eq!(s.next(SLIXMPP).unwrap().unwrap().kind, FrameKind::Header);
}

#[test]
fn max_frame_is_inclusive() {
    let n = MESSAGE.len();
    assert_eq!(after_header(MAX).next(MESSAGE).unwrap().unwrap().len, n);
    let mut s = after_header(MAX);
    s.set_max_frame(n);
    assert_eq!(
        s.next(MESSAGE),
        Ok(Some(Frame {
            kind: FrameKind::Element,
            len: n
        }))
    );
    let mut s = after_header(MAX);
    s.set_max_frame(n - 1);
    assert_eq!(s.next(MESSAGE), Err(ScanError::TooLarge));
    // Dripped: the error comes as soon as the limit is reached without the end.
    let mut s = after_header(MAX);
    s.set_max_frame(n - 1);
    for i in 0..n - 1 {
        assert_eq!(s.next(&MESSAGE[..i]), Ok(None));
    }
    assert_eq!(s.next(&MESSAGE[..n - 1]), Err(ScanError::TooLarge));
    // Errors are sticky.
    assert_eq!(s.next(b"<a/>"), Err(ScanError::TooLarge));
    // The header is bounded too.
    assert_eq!(
        Scanner::new(PROSODY.len())
            .next(PROSODY)
            .unwrap()
            .unwrap()
            .len,
        PROSODY.len()
    );
    assert_eq!(
        Scanner::new(PROSODY.len() - 1).next(PROSODY),
        Err(ScanError::TooLarge)
    );
}

#[test]
fn long_whitespace_run_is_split_not_rejected() {
    let mut s = after_header(MAX);
    s.set_max_frame(8);
    let ws = [b' '; 20];
    assert_eq!(
        s.next(&ws),
        Ok(Some(Frame {
            kind: FrameKind::Whitespace,
            len: 8
        }))
    );
}

fn nwf(data: &[u8]) {
    match first_error(after_header(MAX), data) {
        ScanError::NotWellFormed(_) => {}
        e => panic!(
            "{:?}: expected not-well-formed, got {e:?}",
            String::from_utf8_lossy(data)
        ),
    }
}

fn restricted(data: &[u8]) {
    match first_error(after_header(MAX), data) {
        ScanError::Restricted(_) => {}
        e => panic!(
            "{:?}: expected restricted, got {e:?}",
            String::from_utf8_lossy(data)
        ),
    }
}

#[test]
fn restricted_xml_is_rejected() {
    restricted(b"<!-- hi -->");
    restricted(b"<a><!-- hi --></a>");
    restricted(b"<?php x?>");
    restricted(b"<a><?pi x?></a>");
    restricted(b"<!DOCTYPE a>");
    restricted(b"<a><!DOCTYPE a></a>");
    restricted(b"<a><![INCLUDE[x]]></a>");
    restricted(b"<a>&foo;</a>");
    restricted(b"<a>&ltx;</a>");
    restricted(b"<a>&quotes;</a>");
    restricted(b"<a b='&foo;'/>");
    // Before the header too: nothing but the XML declaration may precede it.
    for pre in [
        &b"<!-- x -->"[..],
        b"<!DOCTYPE stream>",
        b"<?xml-stylesheet href='x'?>",
        b"<?foo?>",
    ] {
        let mut data = pre.to_vec();
        data.extend_from_slice(SLIXMPP);
        assert!(
            matches!(
                first_error(Scanner::new(MAX), &data),
                ScanError::Restricted(_)
            ),
            "{pre:?}"
        );
    }
    let mut data = SLIXMPP_DECL[..21].to_vec();
    data.extend_from_slice(SLIXMPP_DECL);
    assert!(matches!(
        first_error(Scanner::new(MAX), &data),
        ScanError::Restricted(_)
    ));
}

#[test]
fn not_well_formed_is_rejected() {
    nwf(b"<a>& </a>");
    nwf(b"<a>&amp</a>");
    nwf(b"<a>&#;</a>");
    nwf(b"<a>&#x;</a>");
    nwf(b"<a>&#12a;</a>");
    nwf(b"<a>&#0;</a>");
    nwf(b"<a>&#x110000;</a>");
    nwf(b"<a>&#00000000065;</a>");
    nwf(b"<a b='x & y'/>");
    nwf(b"<a></b>");
    nwf(b"<a><b></a></b>");
    nwf(b"<a><b></bb></a>");
    nwf(b"hello");
    nwf(b"  hello");
    nwf(b"<a b='<'/>");
    nwf(b"<a b=c/>");
    nwf(b"<a b='1'c='2'/>");
    nwf(b"<a b/>");
    nwf(b"<a / >");
    nwf(b"<1a/>");
    nwf(b"<a:b:c/>");
    nwf(b"<:a/>");
    nwf(b"< a/>");
    nwf(b"<a>]]></a>");
    nwf(b"<![CDATA[x]]>");
    nwf(b"<a>\x01</a>");
    nwf(b"<a>\0</a>");
    nwf(b"</ a>");
    // Character references are checked for legal characters.
    let mut s = after_header(MAX);
    assert!(
        s.next(b"<a>&#x9;&#65;&#x10FFFF;&#0000065;</a>")
            .unwrap()
            .is_some()
    );
}

#[test]
fn bad_headers() {
    for h in [
        &b"<foo>"[..],
        b"</x>",
        b"<stream:stream/>",
        b"<stream:stream xmlns='jabber:client' />",
        b"<stream:streamx>",
        b"text<stream:stream>",
        b"<?xml?><stream:stream>",
        b"<?xml version='1.0'><stream:stream>",
        b"\xef\xbb\xbf<stream:stream>",
    ] {
        assert!(
            matches!(
                first_error(Scanner::new(MAX), h),
                ScanError::NotWellFormed(_)
            ),
            "{:?}",
            String::from_utf8_lossy(h)
        );
    }
}

#[test]
fn split_anywhere_inside_tricky_constructs() {
    // Each boundary lands inside a different construct: entity, quote,
    // CDATA terminator, end tag name.
    let data = b"<m a='x&amp;y' b=\"&#x41;\"><![CDATA[a]]b]]]></m>";
    for i in 0..data.len() {
        let mut s = after_header(MAX);
        assert_eq!(s.next(&data[..i]), Ok(None));
        assert_eq!(
            s.next(data),
            Ok(Some(Frame {
                kind: FrameKind::Element,
                len: data.len()
            }))
        );
    }
}

#[test]
fn does_not_panic_on_any_byte() {
    for b in 0..=255u8 {
        for prefix in [
            &b""[..],
            b"<",
            b"<a",
            b"<a ",
            b"<a b",
            b"<a b=",
            b"<a b='",
            b"<a>",
            b"<a>&",
            b"<a>&#",
            b"<a>&#x",
            b"<a></",
            b"<a><!",
            b"<a><![CDATA[]",
        ] {
            let mut data = prefix.to_vec();
            data.push(b);
            let _ = after_header(MAX).next(&data);
            let _ = Scanner::new(MAX).next(&data);
        }
    }
}

#[test]
fn shrinking_buffer_is_rescanned_not_trusted() {
    let mut s = after_header(MAX);
    assert_eq!(s.next(&AUTH[..20]), Ok(None));
    assert_eq!(s.next(&BIND[..5]), Ok(None));
    assert_eq!(
        s.next(BIND),
        Ok(Some(Frame {
            kind: FrameKind::Element,
            len: BIND.len()
        }))
    );
}

#[test]
fn drip_feed_is_linear() {
    // A 200 KB element delivered one byte per call; quadratic rescanning
    // would take minutes here.
    let mut data = b"<message><body>".to_vec();
    data.extend(std::iter::repeat_n(b'x', 200_000));
    data.extend_from_slice(b"</body></message>");
    let mut s = after_header(usize::MAX);
    for n in 1..data.len() {
        assert_eq!(s.next(&data[..n]), Ok(None));
    }
    assert_eq!(s.next(&data).unwrap().unwrap().len, data.len());
}

#[test]
fn deep_nesting_is_bounded_by_the_frame_limit() {
    // Under the depth cap, the frame limit still applies.
    let mut s = after_header(300);
    let data = b"<a>".repeat(120);
    assert_eq!(s.next(&data), Err(ScanError::TooLarge));
}

#[test]
fn for_elements_frames_without_a_header() {
    let mut s = Scanner::for_elements(MAX);
    assert_eq!(
        s.next(AUTH),
        Ok(Some(Frame {
            kind: FrameKind::Element,
            len: AUTH.len()
        }))
    );
    assert!(matches!(
        s.next(b"</stream:stream>"),
        Err(ScanError::NotWellFormed(_))
    ));
}

/// Small deterministic generator so the randomized test needs no extra crate
/// and always exercises the same splits.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn long_stream() -> Vec<u8> {
    let mut data = PROSODY.to_vec();
    data.extend_from_slice(FEATURES);
    for i in 0..200 {
        data.extend_from_slice(ELEMENTS[i % ELEMENTS.len()]);
        if i % 3 == 0 {
            data.extend_from_slice(b"\n ");
        }
        data.extend_from_slice(
            format!(
                "<message id='{i}' to='u{i}@example.test'><body>n&#{};&lt;</body></message>",
                65 + i % 26
            )
            .as_bytes(),
        );
    }
    data.extend_from_slice(b"</stream:stream>\n");
    data
}

/// Whitespace runs may be returned in pieces depending on how bytes arrive,
/// so compare with adjacent whitespace frames merged.
fn merge_ws(frames: Vec<(FrameKind, Vec<u8>)>) -> Vec<(FrameKind, Vec<u8>)> {
    let mut out: Vec<(FrameKind, Vec<u8>)> = Vec::new();
    for (k, b) in frames {
        match out.last_mut() {
            Some((FrameKind::Whitespace, prev)) if k == FrameKind::Whitespace => prev.extend(b),
            _ => out.push((k, b)),
        }
    }
    out
}

#[test]
fn random_splits_match_one_shot() {
    let data = long_stream();
    let expected = frames(Scanner::new(MAX), &data).unwrap();
    assert_eq!(
        expected
            .iter()
            .filter(|(k, _)| *k == FrameKind::Element)
            .count(),
        401
    );
    assert_eq!(expected.last().unwrap().0, FrameKind::Whitespace);
    assert_eq!(
        expected.iter().map(|(_, b)| b.len()).sum::<usize>(),
        data.len()
    );
    let expected = merge_ws(expected);

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..50 {
        let max_chunk = [1, 2, 7, 64, 1500][round % 5];
        let mut s = Scanner::new(MAX);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut fed = 0;
        while fed < data.len() {
            let n = (1 + rng.next() as usize % max_chunk).min(data.len() - fed);
            buf.extend_from_slice(&data[fed..fed + n]);
            fed += n;
            while let Some(f) = s.next(&buf).unwrap() {
                got.push((f.kind, buf.drain(..f.len).collect::<Vec<u8>>()));
            }
        }
        assert!(buf.is_empty());
        assert_eq!(merge_ws(got), expected, "round {round}");
    }
}

/// Outcome of framing `data` fed in chunks of at most `chunk` bytes:
/// the frames (whitespace merged) and the error, if any.
fn outcome(data: &[u8], chunk: usize) -> (Vec<(FrameKind, Vec<u8>)>, Option<ScanError>) {
    let mut s = Scanner::new(MAX);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match s.next(&buf) {
                Ok(Some(f)) => got.push((f.kind, buf.drain(..f.len).collect())),
                Ok(None) => break,
                Err(e) => return (merge_ws(got), Some(e)),
            }
        }
    }
    (merge_ws(got), None)
}

#[test]
fn random_garbage_same_outcome_however_split() {
    // Inputs built from XML-significant tokens so that many get deep into
    // the state machine before failing (or succeed).
    const TOKENS: &[&[u8]] = &[
        b"<",
        b">",
        b"/",
        b"=",
        b"'",
        b"\"",
        b"&",
        b";",
        b"#",
        b"x",
        b"!",
        b"[",
        b"]",
        b"?",
        b"-",
        b" ",
        b"\n",
        b"a",
        b"b:c",
        b"stream:stream",
        b"&amp;",
        b"&#65;",
        b"<![CDATA[",
        b"]]>",
        b"<a>",
        b"</a>",
        b"<b/>",
        b"\xc3\xa9",
        b"\x00",
        b"\xff",
        b"1",
    ];
    let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
    let mut completed = 0;
    for _ in 0..3000 {
        let mut data = SLIXMPP.to_vec();
        for _ in 0..(rng.next() % 24) {
            data.extend_from_slice(TOKENS[rng.next() as usize % TOKENS.len()]);
        }
        let whole = outcome(&data, data.len());
        assert_eq!(
            outcome(&data, 1),
            whole,
            "{:?}",
            String::from_utf8_lossy(&data)
        );
        assert_eq!(
            outcome(&data, 3),
            whole,
            "{:?}",
            String::from_utf8_lossy(&data)
        );
        if whole.1.is_none() && whole.0.len() > 1 {
            completed += 1;
        }
        // Whatever the scanner accepts, the element parser must cope with
        // without panicking.
        for (kind, bytes) in &whole.0 {
            if *kind == FrameKind::Element {
                let _ = super::super::element::Element::parse(bytes, &Default::default());
            }
        }
    }
    assert!(
        completed > 10,
        "the generator should also produce valid frames"
    );
}

#[test]
fn depth_is_top_only_between_frames() {
    let mut s = Scanner::new(MAX);
    assert!(s.depth_is_top());
    assert_eq!(s.next(&SLIXMPP[..10]), Ok(None));
    assert!(!s.depth_is_top());
    assert!(s.next(SLIXMPP).unwrap().is_some());
    assert!(s.depth_is_top());
    assert_eq!(s.next(b"<a><b/>"), Ok(None));
    assert!(!s.depth_is_top());
}

#[test]
fn nesting_over_the_cap_is_refused_long_before_the_frame_limit() {
    use crate::xmpp::stream_error::Condition;
    // 128 open elements is the most a frame may have, on any path.
    let ok = format!("{}{}", "<a>".repeat(128), "</a>".repeat(128));
    let mut s = after_header(MAX);
    assert_eq!(s.next(ok.as_bytes()).unwrap().unwrap().len, ok.len());
    let mut s = Scanner::for_elements(usize::MAX);
    assert_eq!(s.next(ok.as_bytes()).unwrap().unwrap().len, ok.len());

    // One more is refused as soon as its start tag's name ends, however it is split.
    let deep = "<a>".repeat(129);
    for make in [|| after_header(MAX), || Scanner::for_elements(usize::MAX)] {
        let mut s = make();
        let e = s.next(deep.as_bytes()).unwrap_err();
        assert_eq!(e, ScanError::TooDeep);
        assert_eq!(Condition::from(&e), Condition::PolicyViolation, "{e}");
        let mut s = make();
        for n in 1..deep.len() {
            assert_eq!(s.next(&deep.as_bytes()[..n]), Ok(None), "{n}");
        }
        assert!(s.next(deep.as_bytes()).is_err());
    }
    // Siblings do not add up: depth is what is open at once.
    let wide = format!("<q>{}</q>", "<a><b/></a>".repeat(1000));
    let mut s = after_header(MAX);
    assert_eq!(s.next(wide.as_bytes()).unwrap().unwrap().len, wide.len());
}

#[test]
fn closing_the_stream_where_a_restart_is_due_is_a_stream_end() {
    // After SASL success a client may close its stream instead of restarting it.
    for close in [&b"</stream:stream>"[..], b"\n </stream:stream \n>"] {
        let mut s = after_header(MAX);
        assert_eq!(s.next(AUTH).unwrap().unwrap().kind, FrameKind::Element);
        s.reset();
        assert!(s.expects_header());
        check_prefixes(
            || {
                let mut s = after_header(MAX);
                s.reset();
                s
            },
            close,
            FrameKind::StreamEnd,
        );
        assert_eq!(
            s.next(close),
            Ok(Some(Frame {
                kind: FrameKind::StreamEnd,
                len: close.len()
            }))
        );
        assert!(s.stream_ended() && !s.expects_header());
        assert_eq!(
            s.next(b"\r\n").unwrap().unwrap().kind,
            FrameKind::Whitespace
        );
        assert!(matches!(s.next(SLIXMPP), Err(ScanError::NotWellFormed(_))));
    }
    // Another prefix closes a stream opened with it; a restart after a restart still knows it.
    let h = b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'>";
    let mut s = Scanner::new(MAX);
    assert_eq!(s.next(h).unwrap().unwrap().kind, FrameKind::Header);
    s.reset();
    s.reset();
    assert_eq!(
        s.next(b"</s:stream>").unwrap().unwrap().kind,
        FrameKind::StreamEnd
    );
    // The restarted stream's own header is accepted as usual, and its close then matches it.
    let mut s = after_header(MAX);
    s.reset();
    let mut data = h.to_vec();
    data.extend_from_slice(b"</s:stream>");
    let got = frames(s, &data).unwrap();
    assert_eq!(got[1], (FrameKind::StreamEnd, b"</s:stream>".to_vec()));
}

#[test]
fn a_stream_end_before_any_header_is_still_malformed() {
    for (mut s, data) in [
        // A new connection has no stream to close.
        (Scanner::new(MAX), &b"</stream:stream>"[..]),
        // The close must name the stream being restarted.
        (restarted(), b"</s:stream>"),
        (restarted(), b"</stream>"),
        (restarted(), b"</a>"),
        // An XML declaration starts a new document: nothing of the old one may follow.
        (restarted(), b"<?xml version='1.0'?></stream:stream>"),
    ] {
        let got = first_error(s.clone(), data);
        assert!(
            matches!(got, ScanError::NotWellFormed(_)),
            "{:?}: {got:?}",
            String::from_utf8_lossy(data)
        );
        assert!(s.next(data).is_err());
    }
}

#[test]
fn a_scanner_restarting_a_named_stream_frames_its_close() {
    let mut s = Scanner::restarting(MAX, b"stream:stream");
    assert!(s.expects_header());
    assert_eq!(
        s.next(b"</stream:stream>").unwrap().unwrap().kind,
        FrameKind::StreamEnd
    );
    let mut s = Scanner::restarting(MAX, b"stream:stream");
    assert_eq!(s.next(SLIXMPP).unwrap().unwrap().kind, FrameKind::Header);
}

fn restarted() -> Scanner {
    let mut s = after_header(MAX);
    s.reset();
    s
}
