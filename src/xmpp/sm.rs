//! XEP-0198 stream management on the wire: the few elements whose ids the proxy rewrites, and
//! the byte-exact edit of one attribute value.
//!
//! The proxy never re-serialises these elements: it replaces the bytes of one attribute value
//! inside the start tag and keeps every other byte (prefixes, quoting, other attributes,
//! whitespace) as the peer wrote it.

use super::element::{Element, escape};

/// The stream-management namespace (version 3, the only one in use).
pub const NS_SM: &str = "urn:xmpp:sm:3";
/// XEP-0386 Bind 2 (SASL2's inline bind; its `<bound/>` carries an `<enabled/>`).
pub const NS_BIND2: &str = "urn:xmpp:bind:0";

/// Whether an element is `<local xmlns='urn:xmpp:sm:3'/>`.
pub fn is_sm(element: &Element, local: &str) -> bool {
    element.is(local, NS_SM)
}

/// `<enabled/>` that grants resumption: `resume` is `true` or `1` and an `id` is given.
pub fn resumable_id(enabled: &Element) -> Option<&str> {
    let resume = matches!(enabled.attr("resume"), Some("true" | "1"));
    enabled.attr("id").filter(|_| resume)
}

/// `raw` with the value of attribute `name` of the element whose start tag begins at
/// `tag_start` replaced by `value` (escaped for the quote style already in use). `None` if the
/// start tag has no such attribute or is not well-formed. Namespace declarations and prefixed
/// attributes are never matched by an unprefixed `name`.
pub fn set_attr(raw: &[u8], tag_start: usize, name: &str, value: &str) -> Option<Vec<u8>> {
    let (start, end) = attr_value_span(raw, tag_start, name)?;
    let escaped = escape(value);
    let mut out = Vec::with_capacity(raw.len() - (end - start) + escaped.len());
    out.extend_from_slice(&raw[..start]);
    out.extend_from_slice(escaped.as_bytes());
    out.extend_from_slice(&raw[end..]);
    Some(out)
}

/// Byte range of the value (between the quotes) of attribute `name` in the start tag at
/// `tag_start`.
fn attr_value_span(raw: &[u8], tag_start: usize, name: &str) -> Option<(usize, usize)> {
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut i = tag_start;
    if raw.get(i) != Some(&b'<') {
        return None;
    }
    i += 1;
    // The element name.
    while i < raw.len() && !ws(raw[i]) && raw[i] != b'>' && raw[i] != b'/' {
        i += 1;
    }
    loop {
        while i < raw.len() && ws(raw[i]) {
            i += 1;
        }
        match raw.get(i)? {
            b'>' | b'/' => return None,
            _ => {}
        }
        let name_start = i;
        while i < raw.len() && !ws(raw[i]) && raw[i] != b'=' {
            i += 1;
        }
        let attr = &raw[name_start..i];
        while i < raw.len() && ws(raw[i]) {
            i += 1;
        }
        if raw.get(i)? != &b'=' {
            return None;
        }
        i += 1;
        while i < raw.len() && ws(raw[i]) {
            i += 1;
        }
        let quote = *raw.get(i)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let value_start = i + 1;
        let value_end = value_start + raw[value_start..].iter().position(|&b| b == quote)?;
        if attr == name.as_bytes() {
            return Some((value_start, value_end));
        }
        i = value_end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::element::NsContext;

    fn ctx() -> NsContext {
        NsContext {
            default_ns: "jabber:client".into(),
            prefixes: vec![("stream".into(), "http://etherx.jabber.org/streams".into())],
        }
    }

    #[test]
    fn replaces_only_the_value_bytes() {
        let raw = b"<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='600'/>";
        let out = set_attr(raw, 0, "id", "x'y&z").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<enabled xmlns='urn:xmpp:sm:3' id='x&apos;y&amp;z' resume='true' max='600'/>"
        );
        let raw = b"<resume  h = \"3\"\n previd = \"a>b\" xmlns=\"urn:xmpp:sm:3\"></resume>";
        let out = set_attr(raw, 0, "previd", "new").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<resume  h = \"3\"\n previd = \"new\" xmlns=\"urn:xmpp:sm:3\"></resume>"
        );
    }

    #[test]
    fn a_value_with_whitespace_reads_back_exactly() {
        // A node id given as `a&#10;b` is `a\nb`; written literally it would read back as
        // `a b`, and a MAC over the id would no longer match.
        let raw = b"<enabled xmlns='urn:xmpp:sm:3' id='abc'/>";
        let out = set_attr(raw, 0, "id", "a\nb\tc\rd").unwrap();
        let el = Element::parse(&out, &ctx()).unwrap();
        assert_eq!(el.attr("id"), Some("a\nb\tc\rd"));
    }

    #[test]
    fn finds_nested_tags_and_ignores_lookalikes() {
        let raw = b"<success xmlns='urn:xmpp:sasl:2' id='outer'><bound xmlns='urn:xmpp:bind:0'><enabled xmlns='urn:xmpp:sm:3' xmlns:sm='urn:x' sm:id='no' id='inner' resume='1'/></bound></success>";
        let el = Element::parse(raw, &ctx()).unwrap();
        let enabled = el
            .child("bound", NS_BIND2)
            .and_then(|b| b.child("enabled", NS_SM))
            .unwrap();
        assert_eq!(resumable_id(enabled), Some("inner"));
        let out = set_attr(raw, enabled.span.start, "id", "wrapped").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("id='outer'") && text.contains("sm:id='no' id='wrapped'"));
    }

    #[test]
    fn missing_or_malformed_is_none() {
        assert!(set_attr(b"<enabled resume='true'/>", 0, "id", "x").is_none());
        assert!(set_attr(b"<enabled id=abc/>", 0, "id", "x").is_none());
        assert!(set_attr(b"<enabled id='abc", 0, "id", "x").is_none());
        assert!(set_attr(b"enabled id='abc'/>", 0, "id", "x").is_none());
        let el = Element::parse(b"<enabled xmlns='urn:xmpp:sm:3' id='a'/>", &ctx()).unwrap();
        assert_eq!(resumable_id(&el), None);
    }
}
