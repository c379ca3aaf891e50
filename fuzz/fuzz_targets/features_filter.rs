//! `features::filter` rewrites a backend's `<stream:features/>` by cutting spans out of the
//! original bytes. Whatever the input, the output must only ever lose bytes (a subsequence
//! of the input: nothing invented, nothing reordered), must itself parse, and must be a fixed
//! point: filtering it again cuts nothing, so no unusable feature or mechanism survived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::xmpp::element::{Element, NsContext};
use xmpp_lb::xmpp::features::{NS_COMPRESS, NS_TLS, filter, mechanism_usable};
use xmpp_lb::xmpp::header::{CLIENT_NS, STREAM_NS};

fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|b| it.any(|c| c == b))
}

fuzz_target!(|frame: &[u8]| {
    // The context of a Prosody stream header.
    let ctx = NsContext {
        default_ns: CLIENT_NS.into(),
        prefixes: vec![("stream".into(), STREAM_NS.into())],
    };
    let Ok(out) = filter(frame, &ctx) else {
        return;
    };
    assert!(out.bytes.len() <= frame.len());
    assert!(
        is_subsequence(&out.bytes, frame),
        "output is not a subsequence of the input"
    );
    assert!(
        out.mechanisms.iter().all(|m| mechanism_usable(m)),
        "unusable mechanism offered: {:?}",
        out.mechanisms
    );

    let again = filter(&out.bytes, &ctx).unwrap_or_else(|e| {
        panic!(
            "filtered output does not re-parse ({e}): {:?}",
            String::from_utf8_lossy(&out.bytes)
        )
    });
    assert_eq!(again.bytes, out.bytes, "filtering is not idempotent");
    assert_eq!(again.mechanisms, out.mechanisms);

    let root = Element::parse(&out.bytes, &ctx).expect("re-parsed above");
    assert!(
        root.child("starttls", NS_TLS).is_none(),
        "STARTTLS survived"
    );
    assert!(
        root.child("compression", NS_COMPRESS).is_none(),
        "compression survived"
    );
});
