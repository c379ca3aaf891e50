//! XMPP over WebSocket framing (RFC 7395), translated to and from an XMPP byte stream.
//!
//! A WebSocket client sends one element per text message, opens its stream with
//! `<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>` and ends it with `<close/>`. The
//! nodes only speak the ordinary TCP stream. [`inbound`] turns one client message into the
//! bytes a TCP client would have sent (a stream header, an element, `</stream:stream>`);
//! [`Outbound`] cuts a node's byte stream into elements and turns each into one message
//! (the stream header into `<open/>`, `</stream:stream>` into `<close/>`), declaring on each
//! element the namespaces it inherited from the stream header, since every message stands
//! alone (RFC 7395 §3.3.3). Pure code, no I/O: the fuzz target `ws_framing` drives both.

use bytes::BytesMut;

use super::element::{Element, NsContext, escape_exact};
use super::features::NS_SASL;
use super::header::{CLIENT_NS, STREAM_NS, StreamHeader};
use super::scanner::{FrameKind, ScanError, Scanner};

/// The framing namespace of `<open/>` and `<close/>`.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// What one client message is, as TCP stream bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `<open/>`: the stream header a TCP client would send.
    Header(Vec<u8>),
    /// One element, as sent (XML whitespace around it removed).
    Element(Vec<u8>),
    /// `<close/>`: `</stream:stream>`.
    Close,
}

impl Inbound {
    /// The bytes this message stands for on a TCP stream.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Inbound::Header(b) | Inbound::Element(b) => b,
            Inbound::Close => b"</stream:stream>".to_vec(),
        }
    }
}

/// Why a client message is refused: it is not exactly one acceptable element.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Empty, text, or more than one element.
    #[error("a message must hold exactly one element: {0}")]
    NotOneElement(&'static str),
    /// Not well-formed, or restricted XML (comments, PIs, DTDs, entities).
    #[error("{0}")]
    Xml(ScanError),
    /// An `<open/>` or `<close/>` that cannot be read.
    #[error("bad framing element: {0}")]
    Framing(String),
}

/// XML whitespace (the only characters allowed around the element).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Translate one client text message.
pub fn inbound(text: &str) -> Result<Inbound, Violation> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|b| !is_ws(*b));
    let end = bytes.iter().rposition(|b| !is_ws(*b)).map(|e| e + 1);
    let (Some(start), Some(end)) = (start, end) else {
        return Err(Violation::NotOneElement("empty"));
    };
    let body = &bytes[start..end];
    match Scanner::for_elements(usize::MAX)
        .next(body)
        .map_err(Violation::Xml)?
    {
        Some(f) if f.kind == FrameKind::Element && f.len == body.len() => {}
        Some(f) if f.kind == FrameKind::Element => {
            return Err(Violation::NotOneElement("more after the first element"));
        }
        Some(_) => return Err(Violation::NotOneElement("not an element")),
        None => return Err(Violation::NotOneElement("incomplete element")),
    }
    let local = local_name(tag_name(body));
    if local != "open" && local != "close" {
        return Ok(Inbound::Element(body.to_vec()));
    }
    let el = Element::parse(body, &NsContext::default())
        .map_err(|e| Violation::Framing(e.to_string()))?;
    if el.ns != NS_FRAMING {
        // An `open` or `close` of some other namespace is just an element.
        return Ok(Inbound::Element(body.to_vec()));
    }
    if local == "close" {
        return Ok(Inbound::Close);
    }
    let mut header = format!("<stream:stream xmlns='{CLIENT_NS}' xmlns:stream='{STREAM_NS}'");
    for (name, attr) in [
        ("to", "to"),
        ("from", "from"),
        ("id", "id"),
        ("version", "version"),
        ("xml:lang", "xml:lang"),
    ] {
        if let Some(v) = el.attr(attr) {
            header.push_str(&format!(" {name}='{}'", escape_exact(v)));
        }
    }
    header.push('>');
    Ok(Inbound::Header(header.into_bytes()))
}

/// A node's (or the proxy's own) stream, cut into WebSocket messages.
pub struct Outbound {
    /// Finds frame boundaries in `buf`.
    scanner: Scanner,
    /// Bytes written but not yet a whole frame.
    buf: BytesMut,
    /// Namespaces of the current stream header, declared on each element sent.
    ns: NsContext,
    /// Where the client is sent when the stream ends with `<see-other-host/>`.
    endpoint: String,
    /// A `<see-other-host/>` stream error was swallowed: `<close/>` carries the URI.
    redirect: bool,
}

impl Outbound {
    /// A translator for a stream whose header comes first; elements bounded by `max_frame`;
    /// `endpoint` is the WebSocket URL a redirect names (RFC 7395 §3.6.1).
    pub fn new(max_frame: usize, endpoint: String) -> Outbound {
        Outbound {
            scanner: Scanner::new(max_frame),
            buf: BytesMut::new(),
            ns: NsContext::default(),
            endpoint,
            redirect: false,
        }
    }

    /// Bytes of the stream, in any chunks.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes pushed but not yet part of a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, if the bytes pushed hold one. Whitespace keepalives make no
    /// message (RFC 7395 §3.4: the WebSocket's own pings keep a connection alive).
    pub fn next_message(&mut self) -> Result<Option<String>, ScanError> {
        loop {
            let Some(frame) = self.scanner.next(&self.buf)? else {
                if self.buf.is_empty() {
                    // Keep no capacity while idle: the connection may live for days.
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            let bytes = self.buf.split_to(frame.len);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ScanError::NotWellFormed("invalid UTF-8"))?;
            match frame.kind {
                FrameKind::Whitespace => continue,
                FrameKind::Header => {
                    let header = StreamHeader::parse(&bytes)
                        .map_err(|_| ScanError::NotWellFormed("unreadable stream header"))?;
                    self.ns = header.ns.clone();
                    return Ok(Some(open_element(&header)));
                }
                FrameKind::StreamEnd => {
                    let mut close = format!("<close xmlns='{NS_FRAMING}'");
                    if self.redirect {
                        close.push_str(&format!(
                            " see-other-uri='{}'",
                            escape_exact(&self.endpoint)
                        ));
                    }
                    close.push_str("/>");
                    return Ok(Some(close));
                }
                FrameKind::Element => {
                    let tag = StartTag::read(text);
                    if local_name(tag.name) == "error"
                        && prefix(tag.name).is_some_and(|p| self.ns.resolve(p) == Some(STREAM_NS))
                        && is_see_other_host(&bytes, &self.ns)
                    {
                        // RFC 7395 §3.6.1: a redirect is a `<close see-other-uri/>`.
                        self.redirect = true;
                        continue;
                    }
                    let message = self.declare(text, &tag);
                    if local_name(tag.name) == "success"
                        && prefix(tag.name).is_none()
                        && tag.default_ns == Some(NS_SASL)
                    {
                        // Legacy SASL success: the stream restarts, a header comes next.
                        self.scanner.reset();
                    }
                    return Ok(Some(message));
                }
            }
        }
    }

    /// `text` (one element) with the namespaces it inherits from the stream header declared
    /// on it.
    fn declare(&self, text: &str, tag: &StartTag<'_>) -> String {
        let mut decls = String::new();
        match prefix(tag.name) {
            None if tag.default_ns.is_none() => {
                decls.push_str(&format!(" xmlns='{}'", escape_exact(&self.ns.default_ns)));
            }
            Some(p) if !tag.prefixes.contains(&p) => {
                if let Some(ns) = self.ns.resolve(p) {
                    decls.push_str(&format!(" xmlns:{p}='{}'", escape_exact(ns)));
                }
            }
            _ => {}
        }
        let at = 1 + tag.name.len();
        let mut out = String::with_capacity(text.len() + decls.len());
        out.push_str(&text[..at]);
        out.push_str(&decls);
        out.push_str(&text[at..]);
        out
    }
}

/// Whether a stream error element says `<see-other-host/>`.
fn is_see_other_host(bytes: &[u8], ns: &NsContext) -> bool {
    Element::parse(bytes, ns).is_ok_and(|el| {
        el.child(
            "see-other-host",
            crate::xmpp::stream_error::STREAMS_ERROR_NS,
        )
        .is_some()
    })
}

/// `<open/>` for a stream header.
fn open_element(header: &StreamHeader) -> String {
    let mut out = format!("<open xmlns='{NS_FRAMING}'");
    for (name, value) in [
        ("from", &header.from),
        ("to", &header.to),
        ("id", &header.id),
        ("version", &header.version),
        ("xml:lang", &header.lang),
    ] {
        if let Some(v) = value {
            out.push_str(&format!(" {name}='{}'", escape_exact(v)));
        }
    }
    out.push_str("/>");
    out
}

/// What the start tag of a (scanner-checked, well-formed) element declares.
struct StartTag<'a> {
    /// The qualified name.
    name: &'a str,
    /// The value of an `xmlns` attribute, if any (as written: namespaces of the framing and
    /// SASL kind hold no characters that need escaping).
    default_ns: Option<&'a str>,
    /// Prefixes declared with `xmlns:p`.
    prefixes: Vec<&'a str>,
}

impl<'a> StartTag<'a> {
    /// Read the start tag at the front of `text`, which the scanner has checked.
    fn read(text: &'a str) -> StartTag<'a> {
        let b = text.as_bytes();
        let name = tag_name(b);
        let mut tag = StartTag {
            name: &text[1..1 + name.len()],
            default_ns: None,
            prefixes: Vec::new(),
        };
        let mut i = 1 + name.len();
        loop {
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i >= b.len() || b[i] == b'>' || b[i] == b'/' {
                return tag;
            }
            let key_start = i;
            while i < b.len() && b[i] != b'=' && !is_ws(b[i]) {
                i += 1;
            }
            let key = &text[key_start..i];
            while i < b.len() && b[i] != b'\'' && b[i] != b'"' {
                i += 1;
            }
            let Some(&quote) = b.get(i) else {
                return tag;
            };
            let value_start = i + 1;
            let Some(len) = b[value_start..].iter().position(|c| *c == quote) else {
                return tag;
            };
            let value = &text[value_start..value_start + len];
            i = value_start + len + 1;
            if key == "xmlns" {
                tag.default_ns = Some(value);
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                tag.prefixes.push(p);
            }
        }
    }
}

/// The qualified name of the element starting at `b[0] == b'<'`.
fn tag_name(b: &[u8]) -> &str {
    let end = b
        .iter()
        .skip(1)
        .position(|c| is_ws(*c) || *c == b'/' || *c == b'>')
        .map_or(b.len(), |p| p + 1);
    std::str::from_utf8(&b[1.min(end)..end]).unwrap_or("")
}

/// `p` of `p:name`.
fn prefix(qname: &str) -> Option<&str> {
    qname.split_once(':').map(|(p, _)| p)
}

/// `name` of `p:name`.
fn local_name(qname: &str) -> &str {
    qname.split_once(':').map_or(qname, |(_, l)| l)
}

#[cfg(test)]
mod tests;
