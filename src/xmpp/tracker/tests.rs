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
