//! Rewriting a client's `<auth/>` to carry its `<response/>` as the initial response works on
//! the bytes of an element the client sent before authenticating, so it must never panic, and
//! what it produces must be one well-formed element of the same name carrying the response.
//!
//! Input layout: byte 0 picks legacy SASL or SASL2; the rest, split at the first NUL, is the
//! element's bytes and the response text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::xmpp::element::{Element, NsContext};
use xmpp_lb::xmpp::features::{NS_SASL, NS_SASL2};
use xmpp_lb::xmpp::sasl::with_initial_response;

fuzz_target!(|input: &[u8]| {
    let [selector, rest @ ..] = input else {
        return;
    };
    let (ns, name) = if selector & 1 == 0 {
        (NS_SASL, "auth")
    } else {
        (NS_SASL2, "authenticate")
    };
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (raw, response) = rest.split_at(split);
    let Ok(response) = std::str::from_utf8(response.get(1..).unwrap_or_default()) else {
        return;
    };
    // The response is the text of a parsed `<response/>`: base64, maybe with spaces.
    if !response
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+/= \t\r\n".contains(c))
    {
        return;
    }
    let ctx = NsContext {
        default_ns: ns.into(),
        prefixes: vec![],
    };
    let Ok(element) = Element::parse(raw, &ctx) else {
        return;
    };
    if !element.is(name, ns) || !element.text.trim().is_empty() {
        return;
    }
    let out = with_initial_response(raw, &element, ns, response);
    let Ok(rewritten) = Element::parse(&out, &ctx) else {
        panic!("the rewritten element does not parse: {:?}", String::from_utf8_lossy(&out));
    };
    assert!(rewritten.is(name, ns));
    let carried = if ns == NS_SASL {
        rewritten.text.to_string()
    } else {
        rewritten
            .child("initial-response", NS_SASL2)
            .map(|e| e.text.to_string())
            .unwrap_or_default()
    };
    let want = match response.trim() {
        "" => "=",
        t => t,
    };
    assert_eq!(carried, want);
});
