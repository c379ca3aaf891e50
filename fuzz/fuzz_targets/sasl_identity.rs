//! The first SASL message is read before the client has proven anything, so extracting the
//! claimed identity must never panic, whatever the mechanism and payload.
//!
//! Input layout: byte 0 picks the mechanism from a fixed list (its top bit: whether the
//! stream header named a domain); the rest is used twice, as a decoded payload and as the
//! base64 text of an `<auth>` element, which then goes down the proxy's real path: decode,
//! extract the identity, normalise it into a routing key.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use xmpp_lb::route::key::normalize_bare_jid;
use xmpp_lb::xmpp::sasl::{claimed_identity, decode_payload};

const MECHANISMS: &[&str] = &[
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-512",
    "HT-SHA-256-NONE",
    "HT-SHA-256-ENDP",
    "ANONYMOUS",
    "EXTERNAL",
    "X-OAUTH2",
    "plain",
];

fn identity(mechanism: &str, payload: &[u8], stream_to: &str) {
    let Ok(claimed) = claimed_identity(mechanism, payload, stream_to) else {
        return;
    };
    if payload.is_empty() {
        assert_eq!(claimed, None, "identity from an empty payload");
    }
    if let Some(id) = claimed {
        // Either the name carried a domain or the stream's domain was added.
        assert!(id.contains('@'), "identity without a domain: {id:?}");
        let _ = normalize_bare_jid(&id);
    }
}

fuzz_target!(|input: &[u8]| {
    let [selector, rest @ ..] = input else {
        return;
    };
    let mechanism = MECHANISMS[usize::from(selector & 0x7f) % MECHANISMS.len()];
    let stream_to = if selector & 0x80 == 0 {
        "example.test"
    } else {
        ""
    };

    identity(mechanism, rest, stream_to);

    let text = String::from_utf8_lossy(rest);
    match decode_payload(&text) {
        Ok(Some(decoded)) => {
            // Decoding is strict (canonical padding, no stray bits), so the text without its
            // whitespace is exactly the encoding of what was decoded.
            let compact: String = text
                .chars()
                .filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\n'))
                .collect();
            if decoded.is_empty() {
                assert_eq!(compact, "=");
            } else {
                assert_eq!(STANDARD.encode(&decoded), compact);
            }
            identity(mechanism, &decoded, stream_to);
        }
        Ok(None) => assert!(
            text.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')),
            "no payload reported for non-blank text"
        ),
        Err(_) => {}
    }
});
