//! A tiny DOM for the few top-level elements the proxy has to understand
//! (stream features, SASL, STARTTLS, resource binding).
//!
//! Every element keeps the byte span it came from, because the proxy edits
//! what it forwards by cutting spans out of the original bytes rather than
//! re-serialising: re-serialisation could change prefixes, quoting or
//! whitespace that a peer (or a signature over the content) relies on.
//!
//! The parser that builds a tree from a frame's bytes is in the submodule `parse`, so that the
//! types here read on their own; [`Element::parse`] is its entry point.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::scanner::ScanError;

mod parse;
#[cfg(test)]
mod tests;

/// The namespace the `xml` prefix is bound to by definition.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// The longest namespace name or attribute value accepted, in bytes (after unescaping).
///
/// XMPP namespaces are short URNs and URLs (the longest registered ones are under 60 bytes),
/// and the attributes of negotiation elements are short tokens: mechanism names, ids, a
/// stream-management `previd` or `location`, a FAST token. Anything near this bound is an
/// attack or a bug, and refusing it keeps a frame from carrying one huge value that each
/// element of the tree would refer to.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The most elements one parsed frame may hold, itself included.
///
/// A parsed element costs a fixed amount of bookkeeping (about 130 bytes, up to 200 while its
/// parent's list of children grows) however few bytes it took on the wire (`<a/>` is four), so
/// without a bound a frame full of tiny children would cost fifty times its size.
/// The largest real frames the proxy parses are a node's `<stream:features/>`: Prosody with
/// SASL2, Bind 2, FAST and a dozen modules announces about 40 elements, ejabberd fewer, and
/// a SASL2 `<authenticate/>` has under 20. 256 leaves that more than six times over while
/// keeping the bookkeeping of one parse (about 50 KiB at most) below the default
/// `limits.max_negotiation_element_bytes`.
pub const MAX_ELEMENTS: usize = 256;

/// The most attributes one parsed frame may hold, namespace declarations included.
///
/// Each costs about 100 bytes of bookkeeping (with the growth of the lists that hold them) for
/// as few as five bytes on the wire (` a=''`). Real negotiation elements carry one to four
/// each (about 60 in the largest stream features); 1024 is far above that and bounds the
/// bookkeeping at about 100 KiB.
pub const MAX_ATTRIBUTES: usize = 1024;

/// A namespace name, shared: every element in the scope of one declaration (or inheriting
/// one from the stream header) holds the same allocation, so a long namespace costs its
/// length once per frame rather than once per element.
///
/// It reads as a `str` (`&*ns`, [`Ns::as_str`]) and compares with one (`el.ns == NS_SASL`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ns(Arc<str>);

impl Ns {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Ns {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Ns {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Ns {
    fn from(s: &str) -> Ns {
        Ns(Arc::from(s))
    }
}

impl From<String> for Ns {
    fn from(s: String) -> Ns {
        Ns(Arc::from(s))
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for Ns {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Ns {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Ns {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Ns> for str {
    fn eq(&self, other: &Ns) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Ns> for &str {
    fn eq(&self, other: &Ns) -> bool {
        **self == *other.0
    }
}

/// Namespace declarations in scope at the top level of a stream, i.e. those
/// made on the stream header; top-level elements inherit them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsContext {
    pub default_ns: String,
    pub prefixes: Vec<(String, String)>,
}

impl NsContext {
    /// The namespace bound to `prefix` (`""` meaning the default namespace).
    /// Later declarations win, as they would in nested scopes.
    pub fn resolve(&self, prefix: &str) -> Option<&str> {
        if prefix.is_empty() {
            return Some(&self.default_ns);
        }
        if prefix == "xml" {
            return Some(XML_NS);
        }
        self.prefixes
            .iter()
            .rev()
            .find(|(p, _)| p == prefix)
            .map(|(_, ns)| ns.as_str())
    }
}

/// Character data of an element. It may be a SASL payload (a password in base64), so it is
/// wiped from memory when dropped and whenever it grows into a larger buffer, and its `Debug`
/// shows only its length. It reads as a `str` (`&*text`, [`Text::as_str`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Text(Zeroizing<String>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Append, moving to a larger buffer by hand so that the old one is wiped first (a
    /// `String` that grows by itself frees its old buffer as it was).
    fn push_str(&mut self, s: &str) {
        let needed = self.0.len() + s.len();
        if needed > self.0.capacity() {
            let mut grown = String::with_capacity(needed.max(2 * self.0.capacity()));
            grown.push_str(&self.0);
            self.0.zeroize();
            *self.0 = grown;
        }
        self.0.push_str(s);
    }

    fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        **self.0 == *other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        **self.0 == **other
    }
}

#[derive(Clone, PartialEq)]
pub struct Element {
    /// Qualified name as written, e.g. `stream:features`.
    pub name: String,
    /// Resolved namespace URI (`""` for no namespace), shared with the other elements in the
    /// scope of the same declaration.
    pub ns: Ns,
    /// In document order, values unescaped; includes `xmlns` declarations. Values are wiped
    /// when dropped: some are credentials (a FAST token, a resumption id).
    pub attrs: Vec<(String, Zeroizing<String>)>,
    pub children: Vec<Element>,
    /// Character data directly inside this element (CDATA included),
    /// unescaped and concatenated.
    pub text: Text,
    /// Byte range of the element (start tag through end tag) in the buffer
    /// it was parsed from.
    pub span: Range<usize>,
}

/// Names, namespaces, structure and spans, but no text and no attribute value other than a
/// namespace declaration's: an element may carry a SASL payload, a token or a resumption id,
/// and `Debug` output ends up in logs and test failures.
impl fmt::Debug for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Attrs<'a>(&'a [(String, Zeroizing<String>)]);
        impl fmt::Debug for Attrs<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut map = f.debug_map();
                for (key, value) in self.0 {
                    if key == "xmlns" || key.starts_with("xmlns:") {
                        map.entry(key, &value.as_str());
                    } else {
                        map.entry(key, &format_args!("<{} bytes>", value.len()));
                    }
                }
                map.finish()
            }
        }
        f.debug_struct("Element")
            .field("name", &self.name)
            .field("ns", &self.ns)
            .field("attrs", &Attrs(&self.attrs))
            .field("children", &self.children)
            .field("text", &self.text)
            .field("span", &self.span)
            .finish()
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    Restricted(String),
    /// Well-formed, but over one of the parser's bounds ([`MAX_VALUE_BYTES`],
    /// [`MAX_ELEMENTS`], [`MAX_ATTRIBUTES`], the scanner's nesting depth): a
    /// `policy-violation`.
    #[error("over a limit: {0}")]
    Limit(String),
}

impl From<ScanError> for XmlError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::NotWellFormed(why) => XmlError::NotWellFormed(why.to_string()),
            ScanError::Restricted(why) => XmlError::Restricted(why.to_string()),
            ScanError::TooLarge | ScanError::TooDeep => XmlError::Limit(e.to_string()),
        }
    }
}

fn nwf(why: impl Into<String>) -> XmlError {
    XmlError::NotWellFormed(why.into())
}

fn split_qname(name: &str) -> (&str, &str) {
    match name.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", name),
    }
}

impl Element {
    /// The name without its prefix.
    pub fn local_name(&self) -> &str {
        split_qname(&self.name).1
    }

    /// Attribute value by its name as written (e.g. `xml:lang`).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is(&self, local: &str, ns: &str) -> bool {
        self.local_name() == local && self.ns == ns
    }

    /// First child with this local name and namespace.
    pub fn child(&self, local: &str, ns: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(local, ns))
    }

    pub fn children_named<'a>(
        &'a self,
        local: &'a str,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.is(local, ns))
    }
}

/// Copy of `bytes` with the given ranges removed, every other byte kept
/// exactly. Ranges are expected sorted and non-overlapping; out-of-order or
/// out-of-bounds ranges are clamped rather than trusted.
pub fn without_spans(bytes: &[u8], spans: &[Range<usize>]) -> Vec<u8> {
    let removed: usize = spans.iter().map(|r| r.end.saturating_sub(r.start)).sum();
    let mut out = Vec::with_capacity(bytes.len().saturating_sub(removed));
    let mut cur = 0;
    for r in spans {
        let start = r.start.clamp(cur, bytes.len());
        let end = r.end.clamp(start, bytes.len());
        out.extend_from_slice(&bytes[cur..start]);
        cur = end;
    }
    out.extend_from_slice(&bytes[cur..]);
    out
}

/// Escapes text for a quoted attribute value (either quote style) or character data so that it
/// reads back exactly, whitespace included: a literal tab or line break in an attribute is
/// read back as a space (attribute-value normalization), and a carriage return anywhere as a
/// line feed (end-of-line handling), so those are written as character references. Without
/// that, a parser that normalizes and one that does not would read different values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}
