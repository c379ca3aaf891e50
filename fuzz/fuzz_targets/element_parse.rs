//! Every element frame the stream scanner accepts must go through `Element::parse` without a
//! panic, and a parsed tree's spans must be usable for cutting the original bytes.
//!
//! The input is the body of a client stream that follows a fixed header, so frames are cut
//! and namespaces resolved exactly as on the proxy's negotiation path. The proxy edits what
//! it forwards by removing child spans, so a span outside its parent, overlapping a sibling
//! or not on tag boundaries would corrupt the forwarded bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::xmpp::element::{Element, NsContext};
use xmpp_lb::xmpp::header::StreamHeader;
use xmpp_lb::xmpp::scanner::{FrameKind, Scanner};

/// What slixmpp sends after TLS.
const HEADER: &[u8] = b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>";

/// Frames larger than this are refused by the scanner, as with the proxy's own limit.
const MAX_FRAME: usize = 1 << 16;

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
    if let Ok(root) = Element::parse(frame, ctx) {
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
