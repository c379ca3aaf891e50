//! Differential fuzzing of the incremental scanner: however a peer's bytes are split across
//! reads, the frames and the error must be exactly those of scanning everything at once.
//!
//! The proxy forwards what the scanner frames, so a split-dependent answer would let a peer
//! smuggle bytes past the checks by choosing its TCP segment boundaries.
//!
//! Input layout:
//! - byte 0: the frame size limit (most values: no practical limit; the rest: small limits,
//!   so that `TooLarge` is reached and compared too);
//! - byte 1: how many chunk-size bytes follow (0 means one byte per read);
//! - those bytes: chunk sizes, 1..=256, used in turn and cycled;
//! - the rest: the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::xmpp::scanner::{Frame, FrameKind, ScanError, Scanner};

/// Everything one way of feeding the scanner observed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Frames in order, consecutive whitespace frames merged: a keepalive run may be returned
    /// in pieces when it reaches the end of what has arrived so far (documented behaviour).
    frames: Vec<Frame>,
    error: Option<ScanError>,
    /// Bytes consumed as frames; the rest is an incomplete frame.
    consumed: usize,
}

fn push_merged(frames: &mut Vec<Frame>, f: Frame) {
    if let Some(last) = frames.last_mut()
        && last.kind == FrameKind::Whitespace
        && f.kind == FrameKind::Whitespace
    {
        last.len += f.len;
        return;
    }
    frames.push(f);
}

/// Checks one returned frame against the bytes it claims and the size limit.
fn check_frame(f: Frame, buf: &[u8], max_frame: usize) {
    assert!(f.len > 0, "empty frame {f:?}");
    assert!(
        f.len <= buf.len(),
        "frame {f:?} longer than the buffer ({})",
        buf.len()
    );
    assert!(f.len <= max_frame, "frame {f:?} over the limit {max_frame}");
    let bytes = &buf[..f.len];
    match f.kind {
        FrameKind::Whitespace => assert!(
            bytes
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')),
            "whitespace frame with other bytes: {bytes:?}"
        ),
        FrameKind::Header | FrameKind::Element => {
            assert_eq!(
                bytes.last(),
                Some(&b'>'),
                "{f:?} does not end a tag: {bytes:?}"
            );
            if f.kind == FrameKind::Element {
                assert_eq!(
                    bytes[0], b'<',
                    "element frame does not start a tag: {bytes:?}"
                );
            }
        }
        FrameKind::StreamEnd => {
            assert!(
                bytes.starts_with(b"</"),
                "stream end is not an end tag: {bytes:?}"
            );
            assert_eq!(bytes.last(), Some(&b'>'));
        }
    }
}

/// Calls `next` until it needs more bytes or fails, consuming frames from the front of
/// `buf[*start..end]` the way the proxy's reader does.
fn drain(
    s: &mut Scanner,
    data: &[u8],
    start: &mut usize,
    end: usize,
    max_frame: usize,
    out: &mut Outcome,
) -> bool {
    loop {
        let buf = &data[*start..end];
        match s.next(buf) {
            Ok(Some(f)) => {
                check_frame(f, buf, max_frame);
                push_merged(&mut out.frames, f);
                *start += f.len;
                out.consumed = *start;
            }
            Ok(None) => return true,
            Err(e) => {
                // Errors are sticky: the stream stays rejected.
                assert_eq!(s.next(&data[*start..end]), Err(e.clone()));
                out.error = Some(e);
                return false;
            }
        }
    }
}

fn scan(data: &[u8], max_frame: usize, chunks: &[usize]) -> Outcome {
    let mut s = Scanner::new(max_frame);
    let mut out = Outcome {
        frames: Vec::new(),
        error: None,
        consumed: 0,
    };
    let mut start = 0;
    let mut end = 0;
    let mut sizes = chunks.iter().cycle();
    while end < data.len() {
        end = (end + sizes.next().copied().unwrap_or(data.len())).min(data.len());
        if !drain(&mut s, data, &mut start, end, max_frame, &mut out) {
            return out;
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let [limit, n, rest @ ..] = input else {
        return;
    };
    let max_frame = match *limit {
        0..=191 => 1 << 20,
        small => usize::from(small - 191) * 4,
    };
    let n = usize::from(*n % 32).min(rest.len());
    let (sizes, data) = rest.split_at(n);
    let chunks: Vec<usize> = if sizes.is_empty() {
        vec![1]
    } else {
        sizes.iter().map(|&b| usize::from(b) + 1).collect()
    };

    let whole = scan(data, max_frame, &[]);
    let split = scan(data, max_frame, &chunks);
    assert_eq!(whole, split, "chunk sizes {chunks:?}, limit {max_frame}");

    // Frames tile the consumed input exactly, in order, and the header comes first.
    let total: usize = whole.frames.iter().map(|f| f.len).sum();
    assert_eq!(total, whole.consumed);
    assert!(whole.consumed <= data.len());
    if let Some(first) = whole.frames.first() {
        assert_eq!(first.kind, FrameKind::Header, "first frame {first:?}");
    }
    assert!(
        whole
            .frames
            .iter()
            .skip(1)
            .all(|f| f.kind != FrameKind::Header),
        "a second header without a restart"
    );
    if let Some(i) = whole
        .frames
        .iter()
        .position(|f| f.kind == FrameKind::StreamEnd)
    {
        assert!(
            whole.frames[i + 1..]
                .iter()
                .all(|f| f.kind == FrameKind::Whitespace),
            "frames after the end of the stream"
        );
    }
});
