//! `StreamHeader::parse` sees the first bytes any client sends, before authentication, so it
//! must never panic. Checked both on raw bytes and on the header frame the scanner cuts from
//! them (the proxy's own path), and an accepted header must leave a namespace context in
//! which the stream element really is in the streams namespace.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::xmpp::header::{STREAM_NS, StreamHeader};
use xmpp_lb::xmpp::scanner::{FrameKind, Scanner};

fn check(frame: &[u8]) {
    if let Ok(h) = StreamHeader::parse(frame) {
        assert_eq!(
            h.ns.resolve(&h.stream_prefix),
            Some(STREAM_NS),
            "accepted header's prefix {:?} is not the streams namespace",
            h.stream_prefix
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(Some(f)) = Scanner::new(1 << 16).next(data)
        && f.kind == FrameKind::Header
    {
        let frame = &data[..f.len];
        check(frame);
        // What the scanner accepted as a header, the parser accepts as exactly one header:
        // it may still refuse its namespaces or values, but never as incomplete.
        if let Err(e) = StreamHeader::parse(frame) {
            let msg = e.to_string();
            assert!(
                !msg.contains("incomplete") && !msg.contains("data after"),
                "scanner and header parser disagree on the frame: {msg}"
            );
        }
    }
});
