//! The stream header (RFC 6120 §4.7): the routing information (`to`) the
//! proxy balances on, and the namespace context every later top-level
//! element of the stream is parsed in.

use quick_xml::XmlVersion;
use quick_xml::errors::Error as QxError;
use quick_xml::escape::EscapeError;
use quick_xml::events::{BytesDecl, BytesStart, Event};
use quick_xml::reader::Reader;

use super::element::NsContext;
use super::scanner::{FrameKind, ScanError, Scanner};

pub const STREAM_NS: &str = "http://etherx.jabber.org/streams";
pub const CLIENT_NS: &str = "jabber:client";

#[derive(Clone, Debug, PartialEq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// Prefix of the stream element as written: usually `stream`, `""` when
    /// the stream namespace is the default one.
    pub stream_prefix: String,
    /// Declarations made on the header, inherited by top-level elements.
    pub ns: NsContext,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not well-formed stream header: {0}")]
    NotWellFormed(String),
    #[error("invalid namespace in stream header: {0}")]
    InvalidNamespace(String),
    #[error("restricted XML in stream header: {0}")]
    Restricted(String),
}

fn nwf(why: impl Into<String>) -> HeaderError {
    HeaderError::NotWellFormed(why.into())
}

fn from_qx(e: QxError) -> HeaderError {
    match e {
        QxError::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            HeaderError::Restricted(format!("undeclared entity '{name}'"))
        }
        e => nwf(e.to_string()),
    }
}

impl From<ScanError> for HeaderError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Restricted(why) => HeaderError::Restricted(why.to_string()),
            ScanError::NotWellFormed(why) => nwf(why),
            // A header is one start tag, so it never nests; both read as a broken header.
            ScanError::TooLarge | ScanError::TooDeep => nwf(e.to_string()),
        }
    }
}

/// RFC 6120 §11.6 allows only UTF-8, and the proxy speaks XML 1.0 only.
fn check_decl(decl: &BytesDecl) -> Result<(), HeaderError> {
    let version = decl.version().map_err(from_qx)?;
    if &*version != "1.0" {
        return Err(nwf(format!("unsupported XML version '{version}'")));
    }
    if let Some(enc) = decl.encoding() {
        let enc = enc.map_err(|e| nwf(e.to_string()))?;
        if !enc.eq_ignore_ascii_case("utf-8") {
            return Err(nwf(format!("unsupported encoding '{enc}'")));
        }
    }
    Ok(())
}

impl StreamHeader {
    /// Parses a header frame as returned by the scanner (leading whitespace
    /// and an XML declaration allowed). The stream element is never closed
    /// within the frame, so only its start tag is read.
    ///
    /// A missing `to` or `version` is not an error here: what to answer then
    /// is the caller's policy.
    pub fn parse(frame: &[u8]) -> Result<StreamHeader, HeaderError> {
        let text = std::str::from_utf8(frame).map_err(|_| nwf("invalid UTF-8"))?;
        // Same acceptance rules as the forwarding path, and it guarantees
        // the frame is exactly one header.
        match Scanner::new(usize::MAX).next(frame)? {
            Some(f) if f.kind == FrameKind::Header && f.len == frame.len() => {}
            Some(_) => return Err(nwf("data after the stream header")),
            None => return Err(nwf("incomplete stream header")),
        }
        let mut reader = Reader::from_str(text);
        loop {
            match reader.read_event().map_err(from_qx)? {
                Event::Decl(d) => check_decl(&d)?,
                Event::Text(t) if t.trim_matches(|c| " \t\r\n".contains(c)).is_empty() => {}
                Event::Start(e) => return Self::from_start(&e),
                Event::Empty(_) => return Err(nwf("self-closed stream header")),
                Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {
                    return Err(HeaderError::Restricted(
                        "markup before the stream header".into(),
                    ));
                }
                Event::Eof => return Err(nwf("no stream header")),
                _ => return Err(nwf("unexpected content before the stream header")),
            }
        }
    }

    fn from_start(start: &BytesStart) -> Result<StreamHeader, HeaderError> {
        let mut h = StreamHeader {
            to: None,
            from: None,
            id: None,
            version: None,
            lang: None,
            stream_prefix: String::new(),
            ns: NsContext::default(),
        };
        let mut default_ns = None;
        for attr in start.attributes() {
            let attr = attr.map_err(|e| nwf(e.to_string()))?;
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(from_qx)?
                .into_owned();
            let key = attr.key.0;
            match key {
                "to" => h.to = Some(value),
                "from" => h.from = Some(value),
                "id" => h.id = Some(value),
                "version" => h.version = Some(value),
                "xml:lang" => h.lang = Some(value),
                "xmlns" => default_ns = Some(value),
                _ => {
                    if let Some(p) = key.strip_prefix("xmlns:") {
                        if value.is_empty() {
                            return Err(nwf(format!("illegal namespace declaration '{key}'")));
                        }
                        h.ns.prefixes.push((p.to_string(), value));
                    }
                }
            }
        }
        let name = start.name().0;
        let prefix = name.split_once(':').map_or("", |(p, _)| p);
        h.stream_prefix = prefix.to_string();
        h.ns.default_ns = default_ns.unwrap_or_default();
        let stream_ns = h.ns.resolve(prefix).ok_or_else(|| {
            HeaderError::InvalidNamespace(format!("prefix '{prefix}' is not declared"))
        })?;
        if stream_ns != STREAM_NS {
            return Err(HeaderError::InvalidNamespace(format!(
                "stream element in namespace '{stream_ns}'"
            )));
        }
        // With a prefixed stream element the default namespace is the
        // content namespace, and this proxy serves clients only. An
        // unprefixed stream element makes the stream namespace the default,
        // leaving stanzas to declare their own namespace.
        if !prefix.is_empty() && h.ns.default_ns != CLIENT_NS {
            return Err(HeaderError::InvalidNamespace(format!(
                "content namespace '{}' is not '{CLIENT_NS}'",
                h.ns.default_ns
            )));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLIXMPP: &[u8] = b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>";
    const PROSODY: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' id='4f1c2b0e-9a3d-4c6e-8b1f-2d7e5a9c0b13' from='example.test' version='1.0'>";
    const CONVERSATIONS: &[u8] = b"<?xml version='1.0'?><stream:stream from='alice@example.test' to='example.test' version='1.0' xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    const DOUBLE_QUOTED: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\" to=\"example.test\" version=\"1.0\" xml:lang=\"en\">";

    #[test]
    fn client_header() {
        let h = StreamHeader::parse(SLIXMPP).unwrap();
        assert_eq!(h.to.as_deref(), Some("example.test"));
        assert_eq!(h.from, None);
        assert_eq!(h.id, None);
        assert_eq!(h.version.as_deref(), Some("1.0"));
        assert_eq!(h.lang.as_deref(), Some("en"));
        assert_eq!(h.stream_prefix, "stream");
        assert_eq!(h.ns.default_ns, CLIENT_NS);
        assert_eq!(
            h.ns.prefixes,
            vec![("stream".to_string(), STREAM_NS.to_string())]
        );

        let mut with_decl = b"<?xml version='1.0'?>".to_vec();
        with_decl.extend_from_slice(SLIXMPP);
        assert_eq!(StreamHeader::parse(&with_decl).unwrap(), h);
    }

    #[test]
    fn server_header() {
        let h = StreamHeader::parse(PROSODY).unwrap();
        assert_eq!(h.to, None);
        assert_eq!(h.from.as_deref(), Some("example.test"));
        assert_eq!(
            h.id.as_deref(),
            Some("4f1c2b0e-9a3d-4c6e-8b1f-2d7e5a9c0b13")
        );
        assert_eq!(h.version.as_deref(), Some("1.0"));
    }

    #[test]
    fn other_clients() {
        let h = StreamHeader::parse(CONVERSATIONS).unwrap();
        assert_eq!(h.from.as_deref(), Some("alice@example.test"));
        assert_eq!(h.to.as_deref(), Some("example.test"));
        let h = StreamHeader::parse(DOUBLE_QUOTED).unwrap();
        assert_eq!(h.to.as_deref(), Some("example.test"));
        assert_eq!(h.lang.as_deref(), Some("en"));
        // Missing to/version is for the caller to judge.
        let h = StreamHeader::parse(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").unwrap();
        assert_eq!((h.to, h.version), (None, None));
        // Values are unescaped.
        let h = StreamHeader::parse(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='a&amp;b&#x2E;'>").unwrap();
        assert_eq!(h.to.as_deref(), Some("a&b."));
    }

    #[test]
    fn other_prefixes() {
        let h = StreamHeader::parse(b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client' to='example.test'>").unwrap();
        assert_eq!(h.stream_prefix, "s");
        assert_eq!(h.ns.resolve("s"), Some(STREAM_NS));
        let h = StreamHeader::parse(
            b"<stream xmlns='http://etherx.jabber.org/streams' to='example.test'>",
        )
        .unwrap();
        assert_eq!(h.stream_prefix, "");
        assert_eq!(h.ns.default_ns, STREAM_NS);
    }

    #[test]
    fn wrong_namespaces() {
        let invalid = |b: &[u8]| {
            assert!(
                matches!(
                    StreamHeader::parse(b),
                    Err(HeaderError::InvalidNamespace(_))
                ),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        };
        invalid(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://wrong.example/streams'>",
        );
        invalid(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>");
        invalid(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
        invalid(b"<stream:stream xmlns='jabber:client'>");
        invalid(b"<stream xmlns='jabber:client'>");
        invalid(b"<stream>");
        invalid(
            b"<s:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'>",
        );
    }

    #[test]
    fn malformed_headers() {
        let nwf = |b: &[u8]| {
            assert!(
                matches!(StreamHeader::parse(b), Err(HeaderError::NotWellFormed(_))),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        };
        nwf(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'",
        );
        nwf(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'/>");
        nwf(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'><a/>");
        nwf(b"<stream:stream to='a' to='b' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
        nwf(b"<stream:stream to='\xff' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
        nwf(b"<?xml version='1.1'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
        nwf(b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
        nwf(b"<foo>");
        assert!(matches!(
            StreamHeader::parse(b"<!-- x --><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"),
            Err(HeaderError::Restricted(_))
        ));
        assert!(matches!(
            StreamHeader::parse(b"<stream:stream to='&x;' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"),
            Err(HeaderError::Restricted(_))
        ));
    }
}
