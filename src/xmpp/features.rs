//! Stream features as the proxy passes them on.
//!
//! The client must see the backend's own feature list (XEP-0474 downgrade protection hashes
//! the mechanism list the client saw), minus what cannot work once TLS ends at the proxy:
//! STARTTLS (the client already has TLS), stream compression (it would hide later traffic from
//! the proxy), channel-binding mechanisms (`-PLUS`, HT-*-ENDP/UNIQ/EXPR: the binding would be
//! of the proxy's TLS, not the server's) and EXTERNAL (the client certificate ends at the proxy).
//! Every other byte is kept exactly as the backend sent it.

use std::ops::Range;

use super::element::{Element, NsContext, XmlError, without_spans};

/// Namespace of STARTTLS (RFC 6120).
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// Namespace of legacy SASL (RFC 6120).
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Namespace of SASL2 (XEP-0388).
pub const NS_SASL2: &str = "urn:xmpp:sasl:2";
/// Namespace of FAST (XEP-0484).
pub const NS_FAST: &str = "urn:xmpp:fast:0";
/// Namespace of stream compression (XEP-0138).
pub const NS_COMPRESS: &str = "http://jabber.org/features/compress";
/// Namespace of channel-binding type advertisement (XEP-0440).
pub const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";

/// A features element made fit for a client whose TLS ends at the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct FilteredFeatures {
    /// The backend's bytes with the unusable parts cut out.
    pub bytes: Vec<u8>,
    /// The SASL mechanisms left (legacy SASL, then SASL2), in the backend's order.
    pub mechanisms: Vec<String>,
}

/// Can a client whose TLS ends at the proxy use this mechanism?
pub fn mechanism_usable(name: &str) -> bool {
    let name = name.trim();
    if name.ends_with("-PLUS") || name == "EXTERNAL" {
        return false;
    }
    if let Some(rest) = name.strip_prefix("HT-") {
        // HT-<hash>-<channel binding>: only the unbound variant survives TLS termination.
        return rest.ends_with("-NONE");
    }
    true
}

/// Filter a `<stream:features/>` frame (see the module doc for what goes).
pub fn filter(frame: &[u8], ctx: &NsContext) -> Result<FilteredFeatures, XmlError> {
    let root = Element::parse(frame, ctx)?;
    let mut cut: Vec<Range<usize>> = Vec::new();
    let mut mechanisms = Vec::new();
    for child in &root.children {
        if child.is("starttls", NS_TLS)
            || child.is("compression", NS_COMPRESS)
            || child.is("sasl-channel-binding", NS_SASL_CB)
        {
            cut.push(child.span.clone());
        } else if child.is("mechanisms", NS_SASL) {
            collect_mechanisms(child, NS_SASL, &mut cut, &mut mechanisms);
        } else if child.is("authentication", NS_SASL2) {
            collect_mechanisms(child, NS_SASL2, &mut cut, &mut mechanisms);
            // FAST mechanisms sit inside SASL2's <inline><fast>…</fast></inline>.
            for inline in child.children_named("inline", NS_SASL2) {
                for fast in inline.children_named("fast", NS_FAST) {
                    for m in fast.children_named("mechanism", NS_FAST) {
                        if !mechanism_usable(&m.text) {
                            cut.push(m.span.clone());
                        }
                    }
                }
            }
        }
    }
    cut.sort_by_key(|r| r.start);
    Ok(FilteredFeatures {
        bytes: without_spans(frame, &cut),
        mechanisms,
    })
}

fn collect_mechanisms(
    parent: &Element,
    ns: &str,
    cut: &mut Vec<Range<usize>>,
    mechanisms: &mut Vec<String>,
) {
    for m in parent.children_named("mechanism", ns) {
        let name = m.text.trim();
        if mechanism_usable(name) {
            mechanisms.push(name.to_string());
        } else {
            cut.push(m.span.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> NsContext {
        NsContext {
            default_ns: "jabber:client".into(),
            prefixes: vec![("stream".into(), "http://etherx.jabber.org/streams".into())],
        }
    }

    #[test]
    fn prosody_features_lose_starttls_and_plus_only() {
        let frame = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1-PLUS</mechanism>\
<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism><mechanism>EXTERNAL</mechanism></mechanisms>\
<register xmlns='http://jabber.org/features/iq-register'/></stream:features>";
        let f = filter(frame, &ctx()).unwrap();
        assert_eq!(
            std::str::from_utf8(&f.bytes).unwrap(),
            "<stream:features>\
<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
<register xmlns='http://jabber.org/features/iq-register'/></stream:features>"
        );
        assert_eq!(f.mechanisms, vec!["SCRAM-SHA-1", "PLAIN"]);
    }

    #[test]
    fn sasl2_and_fast_mechanisms_filtered() {
        let frame = b"<stream:features><authentication xmlns='urn:xmpp:sasl:2'>\
<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>\
<inline><fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-ENDP</mechanism>\
<mechanism>HT-SHA-256-NONE</mechanism></fast></inline></authentication>\
<compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
</stream:features>";
        let f = filter(frame, &ctx()).unwrap();
        assert_eq!(
            std::str::from_utf8(&f.bytes).unwrap(),
            "<stream:features><authentication xmlns='urn:xmpp:sasl:2'>\
<mechanism>SCRAM-SHA-256</mechanism>\
<inline><fast xmlns='urn:xmpp:fast:0'>\
<mechanism>HT-SHA-256-NONE</mechanism></fast></inline></authentication>\
</stream:features>"
        );
        assert_eq!(f.mechanisms, vec!["SCRAM-SHA-256"]);
    }

    #[test]
    fn post_auth_features_pass_unchanged() {
        let frame = b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind>\
<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session><sm xmlns='urn:xmpp:sm:3'/></stream:features>";
        let f = filter(frame, &ctx()).unwrap();
        assert_eq!(f.bytes, frame.to_vec());
        assert!(f.mechanisms.is_empty());
    }

    #[test]
    fn usable_mechanisms() {
        for m in [
            "PLAIN",
            "SCRAM-SHA-1",
            "SCRAM-SHA-512",
            "HT-SHA-256-NONE",
            "ANONYMOUS",
        ] {
            assert!(mechanism_usable(m), "{m}");
        }
        for m in [
            "SCRAM-SHA-1-PLUS",
            "EXTERNAL",
            "HT-SHA-256-UNIQ",
            "HT-SHA-256-ENDP",
            "HT-SHA-256-EXPR",
        ] {
            assert!(!mechanism_usable(m), "{m}");
        }
    }
}
