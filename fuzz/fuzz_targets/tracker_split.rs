//! Differential fuzzing of the relay's boundary tracker (`xmpp::tracker::Tracker`), which
//! follows every byte a client or a node sends after authentication, for the life of the
//! connection. However the bytes are split across reads: the same events at the same stream
//! offsets, the same end state; and each chunk's `last_boundary` is exactly the last offset
//! of that chunk where the stream is between top-level elements (as fed one byte at a time).
//! The proxy injects its own bytes (a stream error when a node drains) only at such a
//! boundary and holds elements by these events, so a split-dependent answer would let a peer
//! choose where the proxy's bytes land by choosing its TCP segments.
//!
//! Input layout: byte 0: how many chunk-size bytes follow (mod 32; 0 means one byte per
//! read); those bytes: chunk sizes, 1..=256, used in turn and cycled; the rest: the stream
//! after its header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::fuzzing::{Event, Tracker};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Start(usize),
    Name(usize, Option<Vec<u8>>),
    End(usize),
    StreamEnd(usize),
    Lost(usize),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Owned>,
    at_boundary: bool,
    ended: bool,
    stream_end: Option<usize>,
    lost: bool,
}

/// Feed `data` in chunks; `boundaries[p]`, when given, says whether the stream is at a
/// boundary after `data[..p]`, and each chunk's `last_boundary` is checked against it.
fn run(data: &[u8], chunks: &[usize], boundaries: Option<&[bool]>) -> (Outcome, Vec<bool>) {
    let mut t = Tracker::new();
    let mut out = Outcome {
        events: Vec::new(),
        at_boundary: true,
        ended: false,
        stream_end: None,
        lost: false,
    };
    let mut after = vec![true];
    let mut start = 0;
    let mut sizes = chunks.iter().cycle();
    while start < data.len() {
        let end = (start + sizes.next().copied().unwrap_or(data.len())).min(data.len());
        let chunk = &data[start..end];
        let feed = t.feed_events(chunk, |e| {
            out.events.push(match e {
                Event::Start(o) => Owned::Start(start + o),
                Event::Name { at, name } => Owned::Name(start + at, name.map(<[u8]>::to_vec)),
                Event::End(o) => Owned::End(start + o),
                Event::StreamEnd(o) => Owned::StreamEnd(start + o),
                Event::Lost(o) => Owned::Lost(start + o),
            })
        });
        assert_eq!(feed.at_boundary, feed.last_boundary == Some(chunk.len()));
        assert_eq!(feed.at_boundary, t.at_boundary());
        if let Some(b) = boundaries {
            let want = (0..=chunk.len()).rev().find(|&o| b[start + o]);
            assert_eq!(feed.last_boundary, want, "chunk {start}..{end}");
        }
        if let Some(o) = feed.stream_end {
            assert!(out.stream_end.is_none(), "two stream ends");
            out.stream_end = Some(start + o);
        }
        assert!(!out.lost || feed.lost, "lost is not sticky");
        out.lost = feed.lost;
        if chunk.len() == 1 {
            after.push(t.at_boundary());
        }
        start = end;
    }
    out.at_boundary = t.at_boundary();
    out.ended = t.stream_ended();
    (out, after)
}

fuzz_target!(|input: &[u8]| {
    let [n, rest @ ..] = input else {
        return;
    };
    let n = usize::from(*n % 32).min(rest.len());
    let (sizes, data) = rest.split_at(n);
    let chunks: Vec<usize> = if sizes.is_empty() {
        vec![1]
    } else {
        sizes.iter().map(|&b| usize::from(b) + 1).collect()
    };
    let (by_byte, boundaries) = run(data, &[1], None);
    assert_eq!(boundaries.len(), data.len() + 1);
    let (whole, _) = run(data, &[], Some(&boundaries));
    let (split, _) = run(data, &chunks, Some(&boundaries));
    assert_eq!(whole, by_byte, "whole vs one byte at a time");
    assert_eq!(whole, split, "whole vs chunks {chunks:?}");
    // Events are in stream order, and a lost tracker reports nothing after.
    let at = |e: &Owned| match e {
        Owned::Start(o)
        | Owned::Name(o, _)
        | Owned::End(o)
        | Owned::StreamEnd(o)
        | Owned::Lost(o) => *o,
    };
    assert!(whole.events.windows(2).all(|w| at(&w[0]) <= at(&w[1])));
    if let Some(i) = whole
        .events
        .iter()
        .position(|e| matches!(e, Owned::Lost(_)))
    {
        assert_eq!(i, whole.events.len() - 1, "events after lost");
        assert!(whole.lost);
    }
});
