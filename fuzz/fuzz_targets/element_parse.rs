//! Every element frame the stream scanner accepts must go through `Element::parse` without a
//! panic, a parsed tree's spans must be usable for cutting the original bytes, and the parse
//! must allocate no more than a small multiple of the frame's size plus a fixed allowance
//! (the bound tests/parse_memory.rs checks on generated frames).
//!
//! The input is the body of a client stream that follows a fixed header, so frames are cut
//! and namespaces resolved exactly as on the proxy's negotiation path. The proxy edits what
//! it forwards by removing child spans, so a span outside its parent, overlapping a sibling
//! or not on tag boundaries would corrupt the forwarded bytes.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use libfuzzer_sys::fuzz_target;
use xmpp_lb::xmpp::element::{Element, NsContext};
use xmpp_lb::xmpp::header::StreamHeader;
use xmpp_lb::xmpp::scanner::{FrameKind, Scanner};

/// What slixmpp sends after TLS.
const HEADER: &[u8] = b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>";

/// Frames larger than this are refused by the scanner, as with the proxy's own limit.
const MAX_FRAME: usize = 1 << 16;

/// What a parse may allocate at its peak: this many bytes per byte of frame...
const PER_BYTE: usize = 4;
/// ...plus this, for the tree's bookkeeping (bounded by the element and attribute caps).
const FIXED: usize = 128 * 1024;

/// Counts the bytes each thread has live, and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size);
        shrink(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn grow(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + n;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrink(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `Element::parse`, with the peak of bytes it allocated.
fn parse_measured(frame: &[u8], ctx: &NsContext) -> (Option<Element>, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let parsed = Element::parse(frame, ctx).ok();
    (parsed, PEAK.with(Cell::get) - before)
}

fn check_spans(el: &Element, frame: &[u8]) {
    let span = &el.span;
    assert!(
        span.start < span.end && span.end <= frame.len(),
        "span {span:?} of {}",
        el.name
    );
    let bytes = &frame[span.clone()];
    assert_eq!(bytes[0], b'<', "span of {} does not start a tag", el.name);
    assert_eq!(
        bytes[bytes.len() - 1],
        b'>',
        "span of {} does not end a tag",
        el.name
    );
    let mut prev_end = span.start;
    for child in &el.children {
        let c = &child.span;
        assert!(
            span.start < c.start && c.end < span.end,
            "child {} {c:?} outside parent {} {span:?}",
            child.name,
            el.name
        );
        assert!(
            c.start >= prev_end,
            "child {} {c:?} overlaps its previous sibling",
            child.name
        );
        prev_end = c.end;
        check_spans(child, frame);
    }
}

fn check(frame: &[u8], ctx: &NsContext) {
    // The element-only scanner that `Element::parse` runs first must agree with the stream
    // scanner about where this element ends.
    let alone = Scanner::for_elements(usize::MAX).next(frame);
    assert!(
        matches!(alone, Ok(Some(f)) if f.kind == FrameKind::Element && f.len == frame.len()),
        "stream scanner and element scanner disagree: {alone:?}"
    );
    let (parsed, peak) = parse_measured(frame, ctx);
    let bound = PER_BYTE * frame.len() + FIXED;
    assert!(
        peak <= bound,
        "a parse of {} bytes allocated {peak} bytes, more than {bound}",
        frame.len()
    );
    if let Some(root) = parsed {
        assert_eq!(root.span, 0..frame.len(), "root span of {}", root.name);
        check_spans(&root, frame);
    }
}

fuzz_target!(|body: &[u8]| {
    let ctx = StreamHeader::parse(HEADER).expect("fixed header").ns;
    let mut data = HEADER.to_vec();
    data.extend_from_slice(body);
    let mut scanner = Scanner::new(MAX_FRAME);
    let mut rest = &data[..];
    while let Ok(Some(frame)) = scanner.next(rest) {
        if frame.kind == FrameKind::Element {
            check(&rest[..frame.len], &ctx);
        }
        rest = &rest[frame.len..];
    }
});
