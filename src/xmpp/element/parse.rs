//! Building an [`Element`] from the bytes of one frame.
//!
//! Kept apart from the tree's types because the two are read for different reasons: a caller
//! of the DOM wants to know what an element holds (its names, namespaces, text and spans),
//! while this file is about accepting untrusted bytes: running the scanner first so that the
//! parse accepts exactly what forwarding accepts, resolving namespace scopes, and the bounds
//! ([`MAX_ELEMENTS`], [`MAX_ATTRIBUTES`], [`MAX_VALUE_BYTES`]) that keep one parse's memory
//! proportional to its frame.

use std::ops::Range;

use quick_xml::XmlVersion;
use quick_xml::errors::Error as QxError;
use quick_xml::escape::EscapeError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use zeroize::Zeroizing;

use super::{
    Element, MAX_ATTRIBUTES, MAX_ELEMENTS, MAX_VALUE_BYTES, Ns, NsContext, Text, XML_NS, XmlError,
    nwf, split_qname,
};
use crate::xmpp::scanner::{FrameKind, Scanner};

impl Element {
    /// Parses exactly one complete top-level element frame.
    ///
    /// The bytes are first run through the stream scanner so that exactly
    /// the same XML is accepted here as on the forwarding path (the scanner
    /// is the stricter of the two about attribute syntax and restricted
    /// constructs, and bounds the nesting depth); quick-xml then supplies
    /// structure and unescaping.
    ///
    /// What a parse allocates is bounded by a small multiple of the frame's
    /// size plus the bookkeeping [`MAX_ELEMENTS`] and [`MAX_ATTRIBUTES`]
    /// allow: namespaces are shared, not copied per element, and a frame
    /// over a bound is refused with [`XmlError::Limit`].
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
            inherited: Vec::new(),
        };
        let mut budget = Budget::default();
        let mut open_els: Vec<(Element, usize)> = Vec::new();
        let mut root = None;
        loop {
            let start = reader.buffer_position() as usize;
            let event = reader.read_event().map_err(from_qx)?;
            let end = reader.buffer_position() as usize;
            match event {
                Event::Start(e) => {
                    open_els.push(open(&e, start..end, &mut scopes, &mut budget)?);
                }
                Event::Empty(e) => {
                    let (el, scope_len) = open(&e, start..end, &mut scopes, &mut budget)?;
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
                    Some((el, _)) => append_wiped(&mut el.text, t.xml10_content()),
                    None if t.trim_matches(|c| " \t\r\n".contains(c)).is_empty() => {}
                    None => return Err(nwf("text outside the element")),
                },
                Event::CData(c) => match open_els.last_mut() {
                    Some((el, _)) => append_wiped(&mut el.text, c.xml10_content()),
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
}

/// Namespace scopes while parsing: declarations of open elements, innermost
/// last, falling back to the stream's context.
struct Scopes<'c> {
    ctx: &'c NsContext,
    decls: Vec<(String, Ns)>,
    /// Namespaces taken from `ctx` (and `xml`), each made shareable once per parse.
    inherited: Vec<(String, Ns)>,
}

impl Scopes<'_> {
    /// The namespace bound to `prefix`, shared with every other use of the same binding.
    fn resolve(&mut self, prefix: &str) -> Option<Ns> {
        if prefix != "xml"
            && let Some((_, ns)) = self.decls.iter().rev().find(|(p, _)| p == prefix)
        {
            return Some(ns.clone());
        }
        if let Some((_, ns)) = self.inherited.iter().find(|(p, _)| p == prefix) {
            return Some(ns.clone());
        }
        let ns = Ns::from(self.ctx.resolve(prefix)?);
        self.inherited.push((prefix.to_string(), ns.clone()));
        Some(ns)
    }

    fn is_bound(&self, prefix: &str) -> bool {
        self.decls.iter().any(|(p, _)| p == prefix) || self.ctx.resolve(prefix).is_some()
    }
}

/// What one frame has used of the parser's bounds so far.
#[derive(Default)]
struct Budget {
    elements: usize,
    attributes: usize,
}

fn limit(why: String) -> XmlError {
    XmlError::Limit(why)
}

/// Builds an element from its start tag, pushing its namespace declarations.
/// The caller pops them (truncating to the returned length) when the element
/// closes.
fn open(
    start: &BytesStart,
    span: Range<usize>,
    scopes: &mut Scopes,
    budget: &mut Budget,
) -> Result<(Element, usize), XmlError> {
    budget.elements += 1;
    if budget.elements > MAX_ELEMENTS {
        return Err(limit(format!("more than {MAX_ELEMENTS} elements")));
    }
    let scope_len = scopes.decls.len();
    let name = start.name().0.to_string();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| nwf(e.to_string()))?;
        budget.attributes += 1;
        if budget.attributes > MAX_ATTRIBUTES {
            return Err(limit(format!("more than {MAX_ATTRIBUTES} attributes")));
        }
        let key = attr.key.0.to_string();
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(from_qx)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(limit(format!(
                "value of '{key}' longer than {MAX_VALUE_BYTES} bytes"
            )));
        }
        let value = Zeroizing::new(value.into_owned());
        if key == "xmlns" {
            scopes.decls.push((String::new(), Ns::from(value.as_str())));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            // Namespaces in XML 1.0 forbids undeclaring a prefix and
            // rebinding the reserved ones.
            if value.is_empty() || p == "xmlns" || (p == "xml") != (value.as_str() == XML_NS) {
                return Err(nwf(format!("illegal namespace declaration '{key}'")));
            }
            scopes.decls.push((p.to_string(), Ns::from(value.as_str())));
        }
        attrs.push((key, value));
    }
    for (key, _) in &attrs {
        let (p, _) = split_qname(key);
        if !p.is_empty() && p != "xmlns" && !scopes.is_bound(p) {
            return Err(nwf(format!("unbound prefix in attribute '{key}'")));
        }
    }
    let (prefix, _) = split_qname(&name);
    let ns = scopes
        .resolve(prefix)
        .ok_or_else(|| nwf(format!("unbound prefix in element '{name}'")))?;
    Ok((
        Element {
            name,
            ns,
            attrs,
            children: Vec::new(),
            text: Text::default(),
            span,
        },
        scope_len,
    ))
}

fn is_xml_char(c: char) -> bool {
    matches!(u32::from(c), 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x1_0000..=0x10_FFFF)
}

fn attach(open_els: &mut [(Element, usize)], root: &mut Option<Element>, el: Element) {
    match open_els.last_mut() {
        Some((parent, _)) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn from_qx(e: QxError) -> XmlError {
    match e {
        QxError::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            XmlError::Restricted(format!("undeclared entity '{name}'"))
        }
        e => nwf(e.to_string()),
    }
}

/// Unescaped text that quick-xml had to copy, wiped once appended.
fn append_wiped(text: &mut Text, content: std::borrow::Cow<'_, str>) {
    text.push_str(&content);
    if let std::borrow::Cow::Owned(copy) = content {
        drop(Zeroizing::new(copy));
    }
}
