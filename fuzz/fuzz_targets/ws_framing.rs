//! The WebSocket framing translation (RFC 7395) on untrusted input, both ways.
//!
//! Client messages ([`inbound`]): never a panic; what is accepted as an element is exactly one
//! element as the stream scanner frames it, and an accepted `<open/>` becomes a stream header
//! the proxy's own header parser reads back with the same `to` and `from` (values survive
//! re-escaping, so a crafted attribute cannot inject another attribute or a tag).
//!
//! A node's stream ([`Outbound`]): never a panic, and the messages do not depend on how the
//! bytes were split across writes (the relay writes whatever chunks it read).
//!
//! Input layout: byte 0 chooses the direction (even: client message, odd: node stream) and,
//! for the node stream, byte 1 is the chunk size (1..=256); the rest is the data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::xmpp::element::{Element, NsContext};
use xmpp_lb::xmpp::framing::{Inbound, Outbound, inbound};
use xmpp_lb::xmpp::header::StreamHeader;
use xmpp_lb::xmpp::scanner::{FrameKind, Scanner};

/// Every message of `data` fed in chunks of `chunk` bytes, and whether it ended in an error.
fn messages(data: &[u8], chunk: usize) -> (Vec<String>, bool) {
    let mut out = Outbound::new(4096, "wss://example.test/ws".into());
    let mut got = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        out.push(piece);
        loop {
            match out.next_message() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(_) => return (got, true),
            }
        }
    }
    (got, false)
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        match inbound(text) {
            Ok(Inbound::Element(bytes)) => {
                let frame = Scanner::for_elements(usize::MAX)
                    .next(&bytes)
                    .expect("accepted elements scan")
                    .expect("accepted elements are whole");
                assert_eq!(frame.kind, FrameKind::Element);
                assert_eq!(frame.len, bytes.len());
            }
            Ok(Inbound::Header(bytes)) => {
                let header = StreamHeader::parse(&bytes).expect("translated headers parse");
                let open = Element::parse(text.trim().as_bytes(), &NsContext::default())
                    .expect("an accepted <open/> parses");
                assert_eq!(header.to.as_deref(), open.attr("to"));
                assert_eq!(header.from.as_deref(), open.attr("from"));
            }
            Ok(Inbound::Close) | Err(_) => {}
        }
    } else {
        let Some((&chunk, data)) = rest.split_first() else {
            return;
        };
        let whole = messages(data, data.len());
        let split = messages(data, usize::from(chunk) + 1);
        assert_eq!(whole, split, "messages depend on how the stream was split");
    }
});
