//! A tiny DOM for the few top-level elements the proxy has to understand
//! (stream features, SASL, STARTTLS, resource binding).
//!
//! Every element keeps the byte span it came from, because the proxy edits
//! what it forwards by cutting spans out of the original bytes rather than
//! re-serialising: re-serialisation could change prefixes, quoting or
//! whitespace that a peer (or a signature over the content) relies on.

use std::ops::Range;

use quick_xml::XmlVersion;
use quick_xml::errors::Error as QxError;
use quick_xml::escape::EscapeError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::scanner::{FrameKind, ScanError, Scanner};

#[cfg(test)]
mod tests;

/// The namespace the `xml` prefix is bound to by definition.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

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

#[derive(Clone, Debug, PartialEq)]
pub struct Element {
    /// Qualified name as written, e.g. `stream:features`.
    pub name: String,
    /// Resolved namespace URI (`""` for no namespace).
    pub ns: String,
    /// In document order, values unescaped; includes `xmlns` declarations.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Character data directly inside this element (CDATA included),
    /// unescaped and concatenated.
    pub text: String,
    /// Byte range of the element (start tag through end tag) in the buffer
    /// it was parsed from.
    pub span: Range<usize>,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    Restricted(String),
}

impl From<ScanError> for XmlError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::NotWellFormed(why) => XmlError::NotWellFormed(why.to_string()),
            ScanError::Restricted(why) => XmlError::Restricted(why.to_string()),
            ScanError::TooLarge => XmlError::NotWellFormed(e.to_string()),
        }
    }
}

fn nwf(why: impl Into<String>) -> XmlError {
    XmlError::NotWellFormed(why.into())
}

fn from_qx(e: QxError) -> XmlError {
    match e {
        QxError::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            XmlError::Restricted(format!("undeclared entity '{name}'"))
        }
        e => nwf(e.to_string()),
    }
}

fn split_qname(name: &str) -> (&str, &str) {
    match name.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", name),
    }
}

/// Namespace scopes while parsing: declarations of open elements, innermost
/// last, falling back to the stream's context.
struct Scopes<'c> {
    ctx: &'c NsContext,
    decls: Vec<(String, String)>,
}

impl Scopes<'_> {
    fn resolve(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        match self.decls.iter().rev().find(|(p, _)| p == prefix) {
            Some((_, ns)) => Some(ns),
            None => self.ctx.resolve(prefix),
        }
    }
}

/// Builds an element from its start tag, pushing its namespace declarations.
/// The caller pops them (truncating to the returned length) when the element
/// closes.
fn open(
    start: &BytesStart,
    span: Range<usize>,
    scopes: &mut Scopes,
) -> Result<(Element, usize), XmlError> {
    let scope_len = scopes.decls.len();
    let name = start.name().0.to_string();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| nwf(e.to_string()))?;
        let key = attr.key.0.to_string();
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(from_qx)?
            .into_owned();
        if key == "xmlns" {
            scopes.decls.push((String::new(), value.clone()));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            // Namespaces in XML 1.0 forbids undeclaring a prefix and
            // rebinding the reserved ones.
            if value.is_empty() || p == "xmlns" || (p == "xml") != (value == XML_NS) {
                return Err(nwf(format!("illegal namespace declaration '{key}'")));
            }
            scopes.decls.push((p.to_string(), value.clone()));
        }
        attrs.push((key, value));
    }
    for (key, _) in &attrs {
        let (p, _) = split_qname(key);
        if !p.is_empty() && p != "xmlns" && scopes.resolve(p).is_none() {
            return Err(nwf(format!("unbound prefix in attribute '{key}'")));
        }
    }
    let (prefix, _) = split_qname(&name);
    let ns = scopes
        .resolve(prefix)
        .ok_or_else(|| nwf(format!("unbound prefix in element '{name}'")))?
        .to_string();
    Ok((
        Element {
            name,
            ns,
            attrs,
            children: Vec::new(),
            text: String::new(),
            span,
        },
        scope_len,
    ))
}

fn is_xml_char(c: char) -> bool {
    matches!(u32::from(c), 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x1_0000..=0x10_FFFF)
}

impl Element {
    /// Parses exactly one complete top-level element frame.
    ///
    /// The bytes are first run through the stream scanner so that exactly
    /// the same XML is accepted here as on the forwarding path (the scanner
    /// is the stricter of the two about attribute syntax and restricted
    /// constructs); quick-xml then supplies structure and unescaping.
    pub fn parse(bytes: &[u8], ctx: &NsContext) -> Result<Element, XmlError> {
        let text = std::str::from_utf8(bytes).map_err(|_| nwf("invalid UTF-8"))?;
        match Scanner::for_elements(usize::MAX).next(bytes)? {
            Some(f) if f.kind == FrameKind::Element && f.len == bytes.len() => {}
            Some(f) if f.kind == FrameKind::Element => return Err(nwf("data after the element")),
            Some(_) => return Err(nwf("expected an element")),
            None => return Err(nwf("incomplete element")),
        }

        let mut reader = Reader::from_str(text);
        let mut scopes = Scopes {
            ctx,
            decls: Vec::new(),
        };
        let mut open_els: Vec<(Element, usize)> = Vec::new();
        let mut root = None;
        loop {
            let start = reader.buffer_position() as usize;
            let event = reader.read_event().map_err(from_qx)?;
            let end = reader.buffer_position() as usize;
            match event {
                Event::Start(e) => open_els.push(open(&e, start..end, &mut scopes)?),
                Event::Empty(e) => {
                    let (el, scope_len) = open(&e, start..end, &mut scopes)?;
                    scopes.decls.truncate(scope_len);
                    attach(&mut open_els, &mut root, el);
                }
                Event::End(_) => {
                    let (mut el, scope_len) =
                        open_els.pop().ok_or_else(|| nwf("unexpected end tag"))?;
                    scopes.decls.truncate(scope_len);
                    el.span.end = end;
                    attach(&mut open_els, &mut root, el);
                }
                Event::Text(t) => match open_els.last_mut() {
                    Some((el, _)) => el.text.push_str(&t.xml10_content()),
                    None if t.trim_matches(|c| " \t\r\n".contains(c)).is_empty() => {}
                    None => return Err(nwf("text outside the element")),
                },
                Event::CData(c) => match open_els.last_mut() {
                    Some((el, _)) => el.text.push_str(&c.xml10_content()),
                    None => return Err(nwf("CDATA outside the element")),
                },
                Event::GeneralRef(r) => {
                    let ch = match r.resolve_char_ref().map_err(from_qx)? {
                        Some(c) if is_xml_char(c) => c,
                        Some(_) => return Err(nwf("reference to an illegal character")),
                        None => match &*r {
                            "lt" => '<',
                            "gt" => '>',
                            "amp" => '&',
                            "apos" => '\'',
                            "quot" => '"',
                            other => {
                                return Err(XmlError::Restricted(format!(
                                    "undeclared entity '{other}'"
                                )));
                            }
                        },
                    };
                    match open_els.last_mut() {
                        Some((el, _)) => el.text.push(ch),
                        None => return Err(nwf("reference outside the element")),
                    }
                }
                Event::Comment(_) => return Err(XmlError::Restricted("comment".into())),
                Event::PI(_) | Event::Decl(_) => {
                    return Err(XmlError::Restricted("processing instruction".into()));
                }
                Event::DocType(_) => {
                    return Err(XmlError::Restricted("document type declaration".into()));
                }
                Event::Eof => break,
            }
        }
        if !open_els.is_empty() {
            return Err(nwf("unclosed element"));
        }
        root.ok_or_else(|| nwf("no element"))
    }

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

fn attach(open_els: &mut [(Element, usize)], root: &mut Option<Element>, el: Element) {
    match open_els.last_mut() {
        Some((parent, _)) => parent.children.push(el),
        None => *root = Some(el),
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

/// Escapes text for use as character data or a quoted attribute value
/// (either quote style).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}
