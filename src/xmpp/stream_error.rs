//! What the proxy sends when it refuses or ends a client stream itself
//! (RFC 6120 §4.9).
//!
//! Errors are written into the proxy's own stream, whose header
//! ([`proxy_header`]) always binds the `stream` prefix, so the rendered
//! error can use that prefix whatever the client chose for its own stream.

use super::element::{XmlError, escape};
use super::header::HeaderError;
use super::scanner::ScanError;

pub const STREAMS_ERROR_NS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// The stream error conditions the proxy itself sends (RFC 6120 §4.9.3): only those, so a
/// condition no code path writes cannot linger here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    HostUnknown,
    InvalidNamespace,
    NotWellFormed,
    RestrictedXml,
    PolicyViolation,
    ConnectionTimeout,
    RemoteConnectionFailed,
    ResourceConstraint,
    SystemShutdown,
    /// `host:port` of the server to reconnect to, with an IPv6 address in
    /// brackets (RFC 6120 §4.9.3.19).
    SeeOtherHost(String),
    UnsupportedVersion,
}

impl Condition {
    /// The element name of the condition; stable, so it doubles as a
    /// metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Condition::HostUnknown => "host-unknown",
            Condition::InvalidNamespace => "invalid-namespace",
            Condition::NotWellFormed => "not-well-formed",
            Condition::RestrictedXml => "restricted-xml",
            Condition::PolicyViolation => "policy-violation",
            Condition::ConnectionTimeout => "connection-timeout",
            Condition::RemoteConnectionFailed => "remote-connection-failed",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::SystemShutdown => "system-shutdown",
            Condition::SeeOtherHost(_) => "see-other-host",
            Condition::UnsupportedVersion => "unsupported-version",
        }
    }
}

impl From<&ScanError> for Condition {
    /// An oversized or too deeply nested frame is a local policy limit (RFC 6120 §4.9.3.17
    /// gives stanza size as the example of `policy-violation`).
    fn from(e: &ScanError) -> Self {
        match e {
            ScanError::NotWellFormed(_) => Condition::NotWellFormed,
            ScanError::Restricted(_) => Condition::RestrictedXml,
            ScanError::TooLarge | ScanError::TooDeep => Condition::PolicyViolation,
        }
    }
}

impl From<&XmlError> for Condition {
    fn from(e: &XmlError) -> Self {
        match e {
            XmlError::NotWellFormed(_) => Condition::NotWellFormed,
            XmlError::Restricted(_) => Condition::RestrictedXml,
            XmlError::Limit(_) => Condition::PolicyViolation,
        }
    }
}

impl From<&HeaderError> for Condition {
    fn from(e: &HeaderError) -> Self {
        match e {
            HeaderError::NotWellFormed(_) => Condition::NotWellFormed,
            HeaderError::InvalidNamespace(_) => Condition::InvalidNamespace,
            HeaderError::Restricted(_) => Condition::RestrictedXml,
        }
    }
}

/// The proxy's own stream header towards a client. A stream error must be
/// preceded by a header (RFC 6120 §4.9.1.1), so the proxy sends this when it
/// has to refuse a client before any backend has answered.
pub fn proxy_header(domain: &str, id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}' version='1.0' xml:lang='en'>",
        escape(id),
        escape(domain)
    )
}

/// The stream error followed by the closing stream tag.
pub fn render(cond: &Condition, text: Option<&str>) -> Vec<u8> {
    let name = cond.as_str();
    let mut out = String::from("<stream:error>");
    match cond {
        Condition::SeeOtherHost(host) => {
            out.push_str(&format!(
                "<{name} xmlns='{STREAMS_ERROR_NS}'>{}</{name}>",
                escape(host)
            ));
        }
        _ => out.push_str(&format!("<{name} xmlns='{STREAMS_ERROR_NS}'/>")),
    }
    if let Some(text) = text {
        out.push_str(&format!(
            "<text xmlns='{STREAMS_ERROR_NS}'>{}</text>",
            escape(text)
        ));
    }
    out.push_str("</stream:error></stream:stream>");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::element::{Element, NsContext};
    use super::super::header::{STREAM_NS, StreamHeader};
    use super::super::scanner::{FrameKind, Scanner};
    use super::*;

    #[test]
    fn exact_bytes() {
        assert_eq!(
            render(&Condition::HostUnknown, None),
            b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        );
        assert_eq!(
            render(&Condition::PolicyViolation, Some("stanza too big")),
            b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>stanza too big</text></stream:error></stream:stream>"
        );
        assert_eq!(
            render(&Condition::SeeOtherHost("[::1]:5222".into()), None),
            b"<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>[::1]:5222</see-other-host></stream:error></stream:stream>"
        );
    }

    #[test]
    fn text_is_escaped() {
        let out = render(&Condition::PolicyViolation, Some("<a href='x'>&\"</a>"));
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>&lt;a href=&apos;x&apos;&gt;&amp;&quot;&lt;/a&gt;</text>"));
    }

    #[test]
    fn header_and_error_are_a_valid_stream() {
        let header = proxy_header("example.test", "a'b<c");
        assert_eq!(
            header,
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='a&apos;b&lt;c' from='example.test' version='1.0' xml:lang='en'>"
        );
        let parsed = StreamHeader::parse(header.as_bytes()).unwrap();
        assert_eq!(parsed.id.as_deref(), Some("a'b<c"));
        assert_eq!(parsed.from.as_deref(), Some("example.test"));

        let mut bytes = header.into_bytes();
        bytes.extend(render(
            &Condition::SeeOtherHost("[::1]:5222".into()),
            Some("moved & gone"),
        ));
        let mut s = Scanner::new(4096);
        let mut kinds = Vec::new();
        let mut rest = &bytes[..];
        while let Some(f) = s.next(rest).unwrap() {
            if f.kind == FrameKind::Element {
                let ctx = NsContext {
                    default_ns: "jabber:client".into(),
                    prefixes: vec![("stream".into(), STREAM_NS.into())],
                };
                let e = Element::parse(&rest[..f.len], &ctx).unwrap();
                assert!(e.is("error", STREAM_NS));
                assert_eq!(
                    e.child("see-other-host", STREAMS_ERROR_NS).unwrap().text,
                    "[::1]:5222"
                );
                assert_eq!(
                    e.child("text", STREAMS_ERROR_NS).unwrap().text,
                    "moved & gone"
                );
            }
            kinds.push(f.kind);
            rest = &rest[f.len..];
        }
        assert!(rest.is_empty());
        assert_eq!(
            kinds,
            [FrameKind::Header, FrameKind::Element, FrameKind::StreamEnd]
        );
    }

    #[test]
    fn labels_and_mappings() {
        assert_eq!(
            Condition::SeeOtherHost("h:1".into()).as_str(),
            "see-other-host"
        );
        assert_eq!(
            Condition::RemoteConnectionFailed.as_str(),
            "remote-connection-failed"
        );
        assert_eq!(
            Condition::ResourceConstraint.as_str(),
            "resource-constraint"
        );
        assert_eq!(
            Condition::from(&ScanError::TooLarge),
            Condition::PolicyViolation
        );
        assert_eq!(
            Condition::from(&ScanError::Restricted("x")),
            Condition::RestrictedXml
        );
        assert_eq!(
            Condition::from(&HeaderError::InvalidNamespace("x".into())),
            Condition::InvalidNamespace
        );
        assert_eq!(
            Condition::from(&XmlError::NotWellFormed("x".into())),
            Condition::NotWellFormed
        );
        assert_eq!(
            Condition::from(&ScanError::TooDeep),
            Condition::PolicyViolation
        );
        assert_eq!(
            Condition::from(&XmlError::Limit("x".into())),
            Condition::PolicyViolation
        );
    }
}
