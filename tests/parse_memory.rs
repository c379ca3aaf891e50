//! What parsing one element frame may cost in memory: at most a small constant times the
//! frame's size, plus a fixed allowance for the tree's bookkeeping (which the element and
//! attribute caps bound), whatever the frame's shape.
//!
//! Allocation is measured by a counting global allocator, per thread (tests run in parallel),
//! around each `Element::parse`: the peak of live bytes above what was live before, so both
//! the tree handed back and every temporary on the way count. Frames come from a deterministic
//! generator (no extra crate, and the same frames on every run) over the shapes that hurt a
//! tree parser: one long namespace inherited by thousands of children, deep nesting, many
//! attributes, many small children, long text, and random mixtures of all of them; each is
//! checked whether the parser accepts or refuses it, since a refusal must be cheap too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use xmpp_lb::xmpp::element::{Element, NsContext};
use xmpp_lb::xmpp::header::StreamHeader;
use xmpp_lb::xmpp::scanner::{FrameKind, Scanner};

/// Counts the bytes each thread has live, and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + n;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn sub(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the new block arriving before the old one leaves, as it may.
        add(new_size);
        sub(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated per byte of frame, at most (measured: under 2.5 with [`FIXED`]).
const PER_BYTE: usize = 4;
/// Fixed allowance: the tree's bookkeeping for the most elements and attributes a frame may
/// have (about 50 KiB and 100 KiB), and small buffers whatever the frame.
const FIXED: usize = 128 * 1024;

/// Parse `frame` and return (accepted, peak bytes allocated by the parse).
fn measure(frame: &[u8], ctx: &NsContext) -> (bool, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let parsed = Element::parse(frame, ctx);
    let peak = PEAK.with(Cell::get) - before;
    let accepted = parsed.is_ok();
    drop(parsed);
    (accepted, peak)
}

fn ctx_bytes(ctx: &NsContext) -> usize {
    ctx.default_ns.len()
        + ctx
            .prefixes
            .iter()
            .map(|(p, n)| p.len() + n.len())
            .sum::<usize>()
}

/// The bound for one frame; the stream's own namespaces may be copied once.
fn bound(frame: &[u8], ctx: &NsContext) -> usize {
    PER_BYTE * frame.len() + 2 * ctx_bytes(ctx) + FIXED
}

#[track_caller]
fn check(frame: &[u8], ctx: &NsContext) -> bool {
    let (accepted, peak) = measure(frame, ctx);
    let limit = bound(frame, ctx);
    assert!(
        peak <= limit,
        "parsing {} bytes ({}...) allocated {peak} bytes at peak, more than {limit}",
        frame.len(),
        String::from_utf8_lossy(&frame[..frame.len().min(80)])
    );
    accepted
}

/// The namespaces slixmpp declares on its stream header.
fn stream_ctx() -> NsContext {
    StreamHeader::parse(b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>")
        .unwrap()
        .ns
}

/// Small deterministic generator, so that every run checks the same frames.
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
    /// Mostly small, sometimes large: `0..=max` on a log scale.
    fn size(&mut self, max: usize) -> usize {
        let bits = usize::BITS - max.leading_zeros();
        let cap = 1usize << self.below(bits as usize + 1);
        self.below(cap.min(max) + 1)
    }
}

#[test]
fn the_reported_namespace_amplification_is_cheap() {
    // One 30 KB namespace, 8000 children: one frame of 62 KB, just under the default
    // limits.max_negotiation_element_bytes, that cost 240 MB when every child copied it.
    let ns = format!("urn:x:{}", "a".repeat(30_000));
    let frame = format!("<q xmlns='{ns}'>{}</q>", "<a/>".repeat(8000));
    assert!(frame.len() < 64 * 1024);
    check(frame.as_bytes(), &stream_ctx());
    // The same with a namespace under the caps, and a prefix.
    let ns = format!("urn:x:{}", "a".repeat(1000));
    for frame in [
        format!("<q xmlns='{ns}'>{}</q>", "<a/>".repeat(250)),
        format!("<p:q xmlns:p='{ns}'>{}</p:q>", "<p:a/>".repeat(250)),
        format!("<q xmlns='{ns}'>{}</q>", "<a/>".repeat(15_000)),
    ] {
        check(frame.as_bytes(), &stream_ctx());
    }
}

#[test]
fn a_long_namespace_from_the_stream_header_is_shared_too() {
    // The stream header may be up to limits.max_header_bytes; its default namespace is
    // inherited by every element that does not declare one.
    let ctx = NsContext {
        default_ns: format!("urn:x:{}", "h".repeat(3000)),
        prefixes: vec![("p".into(), format!("urn:p:{}", "p".repeat(900)))],
    };
    for frame in [
        format!("<q>{}</q>", "<a/>".repeat(250)),
        format!("<p:q>{}</p:q>", "<p:a/>".repeat(250)),
        format!("<q>{}</q>", "<a/><p:b/>".repeat(8000)),
    ] {
        check(frame.as_bytes(), &ctx);
    }
}

#[test]
fn shapes_at_every_size() {
    let ctx = stream_ctx();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let n = 1 + rng.size(20_000);
        let long = "n".repeat(rng.size(3000));
        let text = "t&amp;".repeat(rng.size(2000));
        let frames = [
            // Deep nesting, under and over the depth cap.
            format!(
                "{}{}",
                "<a>".repeat(n.min(10_000)),
                "</a>".repeat(n.min(10_000))
            ),
            // Many small children, with and without an inherited long namespace.
            format!("<q>{}</q>", "<a/>".repeat(n)),
            format!("<q xmlns='urn:{long}'>{}</q>", "<a/>".repeat(n)),
            format!("<p:q xmlns:p='urn:{long}'>{}</p:q>", "<p:a/>".repeat(n)),
            // Many attributes on one element, and spread over many.
            format!(
                "<q{}/>",
                (0..n.min(8000))
                    .map(|i| format!(" a{i}=''"))
                    .collect::<String>()
            ),
            format!("<q>{}</q>", "<a b='' c='' d=''/>".repeat(n.min(4000))),
            // Many namespace declarations in scope while children resolve names.
            format!(
                "<q{}>{}</q>",
                (0..n.min(4000))
                    .map(|i| format!(" xmlns:p{i}='urn:{i}'"))
                    .collect::<String>(),
                "<p0:a/>".repeat(n.min(2000))
            ),
            // Text, split by children so that it is appended piece by piece.
            format!("<q>{}</q>", format!("{text}<a/>").repeat(n.min(300))),
            format!("<q a='{text}'>{text}</q>"),
        ];
        for frame in frames {
            check(frame.as_bytes(), &ctx);
        }
    }
}

/// A random element: names, prefixes, namespace declarations (some long), attributes, text
/// with references, CDATA and children.
fn random_element(rng: &mut XorShift, depth: usize, budget: &mut usize, out: &mut String) {
    const NAMES: &[&str] = &["a", "b", "message", "x", "features", "mechanism"];
    let prefixed = rng.below(4) == 0;
    let name = NAMES[rng.below(NAMES.len())];
    let qname = if prefixed {
        format!("p:{name}")
    } else {
        name.to_string()
    };
    out.push('<');
    out.push_str(&qname);
    if prefixed || rng.below(3) == 0 {
        let len = rng.size(2000);
        out.push_str(&format!(" xmlns:p='urn:{}'", "n".repeat(len)));
    }
    if rng.below(3) == 0 {
        out.push_str(&format!(" xmlns='urn:{}'", "d".repeat(rng.size(2000))));
    }
    for i in 0..rng.size(12) {
        out.push_str(&format!(" k{i}='{}'", "v&lt;".repeat(rng.size(300))));
    }
    if depth > 200 || *budget == 0 || rng.below(3) == 0 {
        out.push_str("/>");
        *budget = budget.saturating_sub(1);
        return;
    }
    out.push('>');
    let children = rng.size(400);
    for _ in 0..children {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        match rng.below(4) {
            0 => out.push_str(&"text &amp; &#x263A; ".repeat(rng.size(50))),
            1 => out.push_str(&format!("<![CDATA[{}]]>", "<c>".repeat(rng.size(50)))),
            _ => random_element(rng, depth + 1, budget, out),
        }
    }
    out.push_str("</");
    out.push_str(&qname);
    out.push('>');
}

#[test]
fn random_frames() {
    let ctx = stream_ctx();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let (mut accepted, mut total) = (0, 0);
    while total < 3000 {
        let mut frame = String::new();
        let mut budget = rng.size(20_000);
        random_element(&mut rng, 0, &mut budget, &mut frame);
        // Only what the proxy would frame reaches the parser.
        match Scanner::for_elements(usize::MAX).next(frame.as_bytes()) {
            Ok(Some(f)) if f.kind == FrameKind::Element && f.len == frame.len() => {}
            _ => continue,
        }
        total += 1;
        if check(frame.as_bytes(), &ctx) {
            accepted += 1;
        }
    }
    // The generator must not only make frames the caps refuse.
    assert!(accepted > total / 4, "{accepted} of {total} accepted");
}
