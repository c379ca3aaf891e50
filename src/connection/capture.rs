//! Who is connecting: the client's stream header, and the first SASL message that names the
//! account, read before any node is chosen.
//!
//! Nothing here verifies anything: a client lying about its name is only routed to a node
//! that then refuses it. What is checked is that the header asks for a served domain, and
//! that what the client sends before routing is the start of a login.

use bytes::Bytes;
use tokio::time::Instant;

use super::refuse::{Failure, client_frame_failure, client_header_failure, client_xml_failure};
use super::transport::ElementTransport;
use crate::config::Config;
use crate::route::key::{normalize_bare_jid, normalize_domain};
use crate::xmpp::element::{Element, NsContext};
use crate::xmpp::features::{NS_SASL, NS_SASL2};
use crate::xmpp::header::StreamHeader;
use crate::xmpp::sasl;
use crate::xmpp::scanner::FrameKind;
use crate::xmpp::stream_error::Condition;

/// A client's stream header, checked.
pub(crate) struct Hello {
    /// The header as parsed (its namespaces read the client's elements).
    pub(crate) header: StreamHeader,
    /// The normalized, served domain it asks for.
    pub(crate) domain: String,
    /// The header byte-exact, replayed to every node the stream is opened on.
    pub(crate) bytes: Bytes,
}

impl Hello {
    /// The header's `from` as a routing key: a valid bare JID of the requested domain. A
    /// `from` naming another domain cannot be the account being logged into: ignored.
    pub(crate) fn bare_from(&self) -> Option<String> {
        let jid = normalize_bare_jid(self.header.from.as_deref()?)?;
        let (_, jid_domain) = jid.rsplit_once('@')?;
        (jid_domain == self.domain).then_some(jid)
    }
}

/// Read and check the client's stream header.
pub(crate) async fn hello<C: ElementTransport>(
    config: &Config,
    client: &mut C,
    deadline: Instant,
) -> Result<Hello, Failure> {
    let (kind, bytes) = client
        .next_frame(deadline)
        .await
        .map_err(client_frame_failure)?;
    if kind == FrameKind::StreamEnd {
        // Over TLS after STARTTLS, the client closed its clear-text stream instead.
        return Err(Failure::ClientClosedStream);
    }
    let (header, domain) = check_header(config, &bytes)?;
    Ok(Hello {
        header,
        domain,
        bytes,
    })
}

/// Check a client's stream header; returns it with the (normalized, served) domain it asks for.
fn check_header(config: &Config, bytes: &[u8]) -> Result<(StreamHeader, String), Failure> {
    let header = StreamHeader::parse(bytes).map_err(client_header_failure)?;
    let Some(to) = header.to.as_deref() else {
        return Err(Failure::Refuse(
            Condition::HostUnknown,
            "the stream header has no 'to'".into(),
        ));
    };
    let domain = match normalize_domain(to) {
        Some(d) if config.routing.domains.contains(&d) => d,
        _ => {
            return Err(Failure::Refuse(
                Condition::HostUnknown,
                "this service does not serve that domain".into(),
            ));
        }
    };
    if header.version.as_deref() != Some("1.0") {
        return Err(Failure::Refuse(
            Condition::UnsupportedVersion,
            "XMPP version 1.0 is required".into(),
        ));
    }
    Ok((header, domain))
}

/// Check the header a client sends when its stream restarts after SASL success: the same
/// checks as the first one, and the same domain. The login was routed (and authenticated) for
/// that domain; a restart naming another would reach a node, over a link, chosen for the first.
pub(crate) fn check_restart(
    config: &Config,
    bytes: &[u8],
    domain: &str,
) -> Result<StreamHeader, Failure> {
    let (header, restarted) = check_header(config, bytes)?;
    if restarted != domain {
        return Err(Failure::Refuse(
            Condition::HostUnknown,
            "a restarted stream must name the domain it authenticated for".into(),
        ));
    }
    Ok(header)
}

/// An element that starts a login (`<auth/>`, SASL2 `<authenticate/>`), read for who it names.
pub(crate) struct SaslStart {
    /// Its namespace: legacy SASL or SASL2.
    pub(crate) ns: &'static str,
    /// The mechanism named (empty if none).
    pub(crate) mechanism: String,
    /// What its initial response says.
    pub(crate) response: Response,
}

/// The initial response of a [`SaslStart`].
pub(crate) enum Response {
    /// There is none.
    Absent,
    /// It is not valid base64: the node will answer `<incorrect-encoding/>`.
    Undecodable,
    /// It decodes; the normalized bare JID it claims, if the mechanism names one.
    Names(Option<String>),
}

impl SaslStart {
    /// `element` read as the start of a login in `domain`; `None` if it is not one.
    pub(crate) fn read(element: &Element, domain: &str) -> Option<SaslStart> {
        let (ns, text) = if element.is("auth", NS_SASL) {
            (NS_SASL, Some(&*element.text))
        } else if element.is("authenticate", NS_SASL2) {
            let child = element.child("initial-response", NS_SASL2);
            (NS_SASL2, child.map(|e| &*e.text))
        } else {
            return None;
        };
        let mechanism = element.attr("mechanism").unwrap_or_default().to_string();
        let response = match text.map(sasl::decode_payload) {
            None | Some(Ok(None)) => Response::Absent,
            Some(Err(_)) => Response::Undecodable,
            Some(Ok(Some(payload))) => Response::Names(claimed_jid(&mechanism, &payload, domain)),
        };
        Some(SaslStart {
            ns,
            mechanism,
            response,
        })
    }

    /// The normalized bare JID the login claims, if it names one.
    pub(crate) fn jid(&self) -> Option<&str> {
        match &self.response {
            Response::Names(jid) => jid.as_deref(),
            Response::Absent | Response::Undecodable => None,
        }
    }
}

/// The account a decoded SASL message names, as a routing key.
fn claimed_jid(mechanism: &str, payload: &[u8], domain: &str) -> Option<String> {
    let identity = sasl::claimed_identity(mechanism, payload, domain).ok()??;
    normalize_bare_jid(&identity)
}

/// The client's first element after the proxy showed the features, held until a node is
/// chosen.
pub(crate) struct Captured {
    /// The `<auth/>` or `<authenticate/>` element (or other first element), byte-exact.
    pub(crate) first: Bytes,
    /// The SASL mechanism named (empty if none).
    pub(crate) mechanism: String,
    /// The normalized bare JID the client claims, if it names one.
    pub(crate) jid: Option<String>,
    /// `first` starts a SASL exchange (`<auth/>`, `<authenticate/>`).
    pub(crate) sasl: bool,
}

/// Read client elements until one says who the client is (or that it never will).
pub(crate) async fn capture_login<C: ElementTransport>(
    client: &mut C,
    ns: &NsContext,
    domain: &str,
    deadline: Instant,
) -> Result<Captured, Failure> {
    loop {
        let bytes = next_element(client, deadline).await?;
        let element = Element::parse(&bytes, ns).map_err(client_xml_failure)?;
        let Some(start) = SaslStart::read(&element, domain) else {
            if element.local_name() == "abort" && (element.ns == NS_SASL || element.ns == NS_SASL2)
            {
                // Nothing started, so nothing to abort; say so as a server would and wait.
                let reply = format!("<failure xmlns='{}'><aborted/></failure>", element.ns);
                client.send(reply.as_bytes()).await?;
                continue;
            }
            // In-band registration names its user in the form; anything else names nobody.
            let jid = registration_username(&element)
                .and_then(|u| normalize_bare_jid(&format!("{u}@{domain}")));
            return Ok(Captured {
                first: bytes,
                mechanism: String::new(),
                jid,
                sasl: false,
            });
        };
        if !matches!(start.response, Response::Absent) || !client_first(&start.mechanism) {
            // A name, an undecodable response (routed by fallback; the node answers
            // <incorrect-encoding/>), or a mechanism where only the node can speak first.
            return Ok(Captured {
                first: bytes,
                jid: start.jid().map(str::to_string),
                mechanism: start.mechanism,
                sasl: true,
            });
        }
        // No initial response in a client-first mechanism: ask for it with an empty challenge,
        // then hand the node one element with the response as its initial response. That is
        // the same SASL exchange (RFC 6120 §6.4.2), and nodes that refuse an empty <auth/>
        // (Prosody answers <malformed-request/>) still accept it.
        let sasl_ns = start.ns;
        let challenge = format!("<challenge xmlns='{sasl_ns}'>=</challenge>");
        client.send(challenge.as_bytes()).await?;
        let response = next_element(client, deadline).await?;
        let answer = Element::parse(&response, ns).map_err(client_xml_failure)?;
        if answer.local_name() == "abort" {
            let reply = format!("<failure xmlns='{sasl_ns}'><aborted/></failure>");
            client.send(reply.as_bytes()).await?;
            continue;
        }
        if !answer.is("response", sasl_ns) {
            return Err(Failure::Refuse(
                Condition::PolicyViolation,
                "expected a SASL <response/>".into(),
            ));
        }
        let jid = sasl::decode_payload(&answer.text)
            .ok()
            .flatten()
            .and_then(|p| claimed_jid(&start.mechanism, &p, domain));
        return Ok(Captured {
            first: sasl::with_initial_response(&bytes, &element, sasl_ns, &answer.text),
            mechanism: start.mechanism,
            jid,
            sasl: true,
        });
    }
}

/// The client's next element; its stream close ends the connection.
async fn next_element<C: ElementTransport>(
    client: &mut C,
    deadline: Instant,
) -> Result<Bytes, Failure> {
    let (kind, bytes) = client
        .next_frame(deadline)
        .await
        .map_err(client_frame_failure)?;
    if kind == FrameKind::StreamEnd {
        return Err(Failure::ClientClosedStream);
    }
    Ok(bytes)
}

/// Mechanisms whose first message comes from the client, so an empty challenge asks for it.
fn client_first(mechanism: &str) -> bool {
    mechanism == "PLAIN" || mechanism.starts_with("SCRAM-") || mechanism.starts_with("HT-")
}

/// The `<username/>` of an XEP-0077 registration form, if this is one.
fn registration_username(element: &Element) -> Option<String> {
    if element.local_name() != "iq" {
        return None;
    }
    let query = element.child("query", "jabber:iq:register")?;
    let user = query.child("username", "jabber:iq:register")?.text.trim();
    (!user.is_empty()).then(|| user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_first_mechanisms_get_an_empty_challenge() {
        assert!(
            client_first("PLAIN")
                && client_first("SCRAM-SHA-256")
                && client_first("HT-SHA-256-NONE")
        );
        assert!(!client_first("DIGEST-MD5") && !client_first("EXTERNAL") && !client_first(""));
    }

    #[test]
    fn a_login_names_its_account_in_either_sasl() {
        let ctx = NsContext {
            default_ns: "jabber:client".into(),
            prefixes: vec![],
        };
        let read = |raw: &str| {
            let el = Element::parse(raw.as_bytes(), &ctx).unwrap();
            SaslStart::read(&el, "example.test")
        };
        // PLAIN "\0Alice\0pw": the name is normalized and gets the stream's domain.
        let legacy = read(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AEFsaWNlAHB3</auth>",
        )
        .unwrap();
        assert_eq!(legacy.jid(), Some("alice@example.test"));
        let sasl2 = read("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AEFsaWNlAHB3</initial-response></authenticate>").unwrap();
        assert_eq!(
            (sasl2.ns, sasl2.jid()),
            (NS_SASL2, Some("alice@example.test"))
        );
        let absent = read("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'/>").unwrap();
        assert!(matches!(absent.response, Response::Absent));
        let bad =
            read("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!</auth>")
                .unwrap();
        assert!(matches!(bad.response, Response::Undecodable));
        assert!(read("<iq type='get' id='1'/>").is_none());
    }
}
