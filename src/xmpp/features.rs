//! Stream features as the proxy passes them on.
//!
//! The client must see the backend's own feature list (XEP-0474 downgrade protection hashes
//! the mechanism list the client saw), minus what cannot work once TLS ends at the proxy:
//! STARTTLS (the client already has TLS), stream compression (it would hide later traffic from
//! the proxy), channel-binding mechanisms (`-PLUS`, HT-*-ENDP/UNIQ/EXPR: the binding would be
//! of the proxy's TLS, not the server's) and EXTERNAL (the client certificate ends at the proxy).
//! Every other byte is kept exactly as the backend sent it.
//!
//! Where the proxy hands the client's channel binding to the node ([`filter_bound`] with the
//! binding types it passed), the node can verify a `-PLUS` login against the client's own TLS
//! session: SCRAM `-PLUS` mechanisms then stay, and so do the XEP-0440 binding types the
//! proxy passed, so the client sees what the node offered on its connection.

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

/// With channel binding passed to the node: can the client use this mechanism? SCRAM `-PLUS`
/// can, the node verifying the binding; EXTERNAL and the bound FAST mechanisms still cannot.
fn bound_mechanism_usable(name: &str) -> bool {
    let name = name.trim();
    (name.starts_with("SCRAM-") && name.ends_with("-PLUS")) || mechanism_usable(name)
}

/// Filter a `<stream:features/>` frame (see the module doc for what goes).
pub fn filter(frame: &[u8], ctx: &NsContext) -> Result<FilteredFeatures, XmlError> {
    filter_bound(frame, ctx, &[])
}

/// [`filter`] for a client whose channel binding of the types `bound` (`tls-exporter`,
/// `tls-server-end-point`) the node got: SCRAM `-PLUS` mechanisms stay, and the XEP-0440
/// `<sasl-channel-binding/>` keeps those of its types (and goes if none is left). With
/// `bound` empty, this is [`filter`].
pub fn filter_bound(
    frame: &[u8],
    ctx: &NsContext,
    bound: &[&str],
) -> Result<FilteredFeatures, XmlError> {
    let root = Element::parse(frame, ctx)?;
    let mut cut: Vec<Range<usize>> = Vec::new();
    let mut mechanisms = Vec::new();
    let usable: fn(&str) -> bool = if bound.is_empty() {
        mechanism_usable
    } else {
        bound_mechanism_usable
    };
    for child in &root.children {
        if child.is("starttls", NS_TLS) || child.is("compression", NS_COMPRESS) {
            cut.push(child.span.clone());
        } else if child.is("sasl-channel-binding", NS_SASL_CB) {
            let types: Vec<&Element> = child
                .children_named("channel-binding", NS_SASL_CB)
                .collect();
            let kept = |t: &&Element| t.attr("type").is_some_and(|n| bound.contains(&n));
            if !types.iter().any(kept) {
                cut.push(child.span.clone());
            } else {
                cut.extend(types.iter().filter(|t| !kept(t)).map(|t| t.span.clone()));
            }
        } else if child.is("mechanisms", NS_SASL) {
            collect_mechanisms(child, NS_SASL, usable, &mut cut, &mut mechanisms);
        } else if child.is("authentication", NS_SASL2) {
            collect_mechanisms(child, NS_SASL2, usable, &mut cut, &mut mechanisms);
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
    usable: fn(&str) -> bool,
    cut: &mut Vec<Range<usize>>,
    mechanisms: &mut Vec<String>,
) {
    for m in parent.children_named("mechanism", ns) {
        let name = m.text.trim();
        if usable(name) {
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
    fn with_channel_binding_passed_plus_mechanisms_and_passed_types_stay() {
        let frame = b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
<mechanism>EXTERNAL</mechanism></mechanisms>\
<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>\
<channel-binding type='tls-server-end-point'/></sasl-channel-binding>\
<authentication xmlns='urn:xmpp:sasl:2'><mechanism>SCRAM-SHA-256-PLUS</mechanism>\
<inline><fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-EXPR</mechanism></fast></inline>\
</authentication></stream:features>";
        let both = filter_bound(frame, &ctx(), &["tls-exporter", "tls-server-end-point"]).unwrap();
        assert_eq!(
            std::str::from_utf8(&both.bytes).unwrap(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
</mechanisms>\
<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>\
<channel-binding type='tls-server-end-point'/></sasl-channel-binding>\
<authentication xmlns='urn:xmpp:sasl:2'><mechanism>SCRAM-SHA-256-PLUS</mechanism>\
<inline><fast xmlns='urn:xmpp:fast:0'></fast></inline>\
</authentication></stream:features>"
        );
        assert_eq!(
            both.mechanisms,
            vec!["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "SCRAM-SHA-256-PLUS"]
        );
        // A TLS 1.2 client has no tls-exporter: that type goes, the other stays.
        let one = filter_bound(frame, &ctx(), &["tls-server-end-point"]).unwrap();
        let text = std::str::from_utf8(&one.bytes).unwrap();
        assert!(!text.contains("tls-exporter"), "{text}");
        assert!(
            text.contains("<channel-binding type='tls-server-end-point'/>"),
            "{text}"
        );
        // Nothing passed: today's filter, which removes all of it.
        assert_eq!(
            filter_bound(frame, &ctx(), &[]).unwrap(),
            filter(frame, &ctx()).unwrap()
        );
        assert!(
            !filter(frame, &ctx())
                .unwrap()
                .bytes
                .windows(5)
                .any(|w| w == b"-PLUS")
        );
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
