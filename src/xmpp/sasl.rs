//! Learning which account a client claims to be from its first SASL message.
//!
//! The proxy has to pick a backend before authentication completes, so it peeks at the
//! client's initial response (RFC 6120 §6.4.2, XEP-0388 `<initial-response>`) and extracts
//! the claimed identity. It never verifies credentials: the backend does that, and a client
//! lying about its name only gets routed to a node that then rejects it.
//!
//! Passwords and HMAC tokens travel in the same messages. This module never copies them
//! into buffers of its own except while base64-decoding, and those buffers are zeroized
//! before they are freed so secrets do not linger in the heap.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::xmpp::features::{NS_SASL, NS_SASL2};

/// Why a SASL message could not be understood.
///
/// The variants carry only static descriptions, never message content, so an error can be
/// logged without leaking credentials.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The element text is not valid base64 (RFC 6120 calls this `<incorrect-encoding/>`).
    #[error("invalid base64")]
    InvalidBase64,
    /// The decoded payload does not follow the mechanism's grammar; fields are the message
    /// kind and what was wrong with it.
    #[error("malformed {0} message: {1}")]
    Malformed(&'static str, &'static str),
}

/// A decoded SASL payload. It may hold a password or an HMAC derived from a token, so it is
/// wiped from memory when dropped, and its `Debug` shows only its length. It reads as `[u8]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Payload(Zeroizing<Vec<u8>>);

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// Decode the base64 text content of `<auth>`, `<response>` or SASL2 `<initial-response>`.
///
/// Whitespace anywhere is ignored because XEP-0388 allows clients to wrap long payloads.
/// Empty text means the client sent no initial response (`Ok(None)`), while a lone `=` is an
/// explicitly empty response (`Ok(Some(vec![]))`, RFC 6120 §6.4.2); the two lead to
/// different server behaviour, so the caller must be able to tell them apart.
///
/// The returned bytes may contain a password: they are wiped when the [`Payload`] is dropped,
/// which the caller should do promptly.
pub fn decode_payload(text: &str) -> Result<Option<Payload>, SaslError> {
    let is_xml_space = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');

    // Base64 of a password is as sensitive as the password, so the whitespace-free copy is
    // wiped on drop. Reserving the full length up front avoids reallocations that would
    // leave unwiped fragments behind.
    let mut compacted = Zeroizing::new(String::new());
    let compact: &str = if text.contains(is_xml_space) {
        compacted.reserve_exact(text.len());
        compacted.extend(text.chars().filter(|&c| !is_xml_space(c)));
        &compacted
    } else {
        text
    };

    if compact.is_empty() {
        return Ok(None);
    }
    if compact == "=" {
        return Ok(Some(Payload::default()));
    }

    let mut decoded = Zeroizing::new(Vec::with_capacity(base64::decoded_len_estimate(
        compact.len(),
    )));
    STANDARD
        .decode_vec(compact, &mut decoded)
        .map_err(|_| SaslError::InvalidBase64)?;
    Ok(Some(Payload(decoded)))
}

/// The bare JID (not yet case-folded; format `local@domain`) the client claims in its first
/// SASL message, or `None` when the mechanism carries no username (ANONYMOUS, EXTERNAL,
/// unknown mechanisms, empty payload).
///
/// `stream_to` is the domain from the stream header, used when the message carries only a
/// localpart; if it is empty such a localpart cannot be placed and `None` is returned.
///
/// When the client names an authorization identity, that is the account the session will
/// act as, so it wins over the authentication identity. A name that already contains `@` is
/// taken as a JID and returned as written (including any resource, which
/// `normalize_bare_jid` strips), because some clients send `user@domain` as the username.
/// Names are otherwise returned exactly as written: case folding is the job of the key
/// normalisation, which mirrors what the server does.
///
/// Mechanism names are matched case-sensitively, as SASL registers them.
pub fn claimed_identity(
    mechanism: &str,
    payload: &[u8],
    stream_to: &str,
) -> Result<Option<String>, SaslError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let name = if mechanism == "PLAIN" {
        plain_identity(payload)?
    } else if mechanism.starts_with("SCRAM-") {
        // Every SCRAM family member (RFC 5802 §4, RFC 7677, and their -PLUS variants)
        // shares the same client-first-message grammar.
        scram_identity(payload)?
    } else if mechanism.starts_with("HT-") {
        ht_identity(payload)?
    } else {
        return Ok(None);
    };
    Ok(with_domain(&name, stream_to))
}

/// Turn a username into a bare JID: `user@domain` stays as is, a lone localpart gets the
/// stream's domain.
fn with_domain(name: &str, stream_to: &str) -> Option<String> {
    if name.contains('@') {
        Some(name.to_owned())
    } else if stream_to.is_empty() {
        None
    } else {
        Some(format!("{name}@{stream_to}"))
    }
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
///
/// Works on borrowed slices only, so the password is never copied.
fn plain_identity(payload: &[u8]) -> Result<Cow<'_, str>, SaslError> {
    const KIND: &str = "PLAIN";
    let mut parts = payload.splitn(3, |&b| b == 0);
    let authzid = parts.next().unwrap_or_default();
    let (Some(authcid), Some(password)) = (parts.next(), parts.next()) else {
        return Err(SaslError::Malformed(KIND, "expected two NUL separators"));
    };
    if password.contains(&0) {
        return Err(SaslError::Malformed(KIND, "expected two NUL separators"));
    }
    if authcid.is_empty() {
        return Err(SaslError::Malformed(KIND, "empty authcid"));
    }
    let chosen = if authzid.is_empty() { authcid } else { authzid };
    std::str::from_utf8(chosen)
        .map(Cow::Borrowed)
        .map_err(|_| SaslError::Malformed(KIND, "identity is not UTF-8"))
}

/// RFC 5802 client-first-message:
/// `gs2-cbind-flag "," [ "a=" saslname ] "," [ "m=" ext "," ] "n=" saslname "," "r=" nonce [ "," ext ]`.
fn scram_identity(payload: &[u8]) -> Result<Cow<'_, str>, SaslError> {
    const KIND: &str = "SCRAM client-first";
    let msg = std::str::from_utf8(payload).map_err(|_| SaslError::Malformed(KIND, "not UTF-8"))?;
    if msg.contains('\0') {
        return Err(SaslError::Malformed(KIND, "contains NUL"));
    }

    let after_flag = if let Some(rest) = msg.strip_prefix("n,").or_else(|| msg.strip_prefix("y,")) {
        rest
    } else if let Some(rest) = msg.strip_prefix("p=") {
        let (cb_name, rest) = rest
            .split_once(',')
            .ok_or(SaslError::Malformed(KIND, "truncated gs2 header"))?;
        let valid_cb_name = !cb_name.is_empty()
            && cb_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid_cb_name {
            return Err(SaslError::Malformed(KIND, "invalid channel binding name"));
        }
        rest
    } else {
        return Err(SaslError::Malformed(
            KIND,
            "invalid gs2 channel binding flag",
        ));
    };

    let (authzid_field, bare) = after_flag
        .split_once(',')
        .ok_or(SaslError::Malformed(KIND, "truncated gs2 header"))?;
    let authzid = if authzid_field.is_empty() {
        None
    } else {
        let raw = authzid_field
            .strip_prefix("a=")
            .ok_or(SaslError::Malformed(KIND, "invalid authzid field"))?;
        Some(decode_saslname(raw, KIND)?)
    };

    let mut attrs = bare.split(',');
    let mut first = attrs.next().unwrap_or_default();
    // A mandatory extension makes the server fail the exchange, but the username that
    // follows is still the name the client claims, so route on it like any other.
    if first.starts_with("m=") {
        first = attrs.next().unwrap_or_default();
    }
    let raw_username = first
        .strip_prefix("n=")
        .ok_or(SaslError::Malformed(KIND, "missing username"))?;
    let username = decode_saslname(raw_username, KIND)?;
    match attrs.next() {
        Some(nonce) if nonce.len() > 2 && nonce.starts_with("r=") => {}
        _ => return Err(SaslError::Malformed(KIND, "missing nonce")),
    }

    Ok(authzid.unwrap_or(username))
}

/// Undo RFC 5802 saslname escaping: `=2C` is `,` and `=3D` is `=`; any other use of `=`
/// must make the server fail, so it is rejected here too.
fn decode_saslname<'a>(raw: &'a str, kind: &'static str) -> Result<Cow<'a, str>, SaslError> {
    if raw.is_empty() {
        return Err(SaslError::Malformed(kind, "empty saslname"));
    }
    if !raw.contains('=') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        let escape = rest.as_bytes().get(pos + 1..pos + 3);
        match escape {
            Some(b"2C") => out.push(','),
            Some(b"3D") => out.push('='),
            _ => return Err(SaslError::Malformed(kind, "invalid '=' escape in saslname")),
        }
        // The escape is three ASCII bytes, so this index is a char boundary.
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// XEP-0484 (FAST) `HT-*` mechanisms: `authcid NUL hmac`.
///
/// Only the part before the NUL is looked at; the token-derived HMAC is never copied.
fn ht_identity(payload: &[u8]) -> Result<Cow<'_, str>, SaslError> {
    const KIND: &str = "HT";
    let nul = payload
        .iter()
        .position(|&b| b == 0)
        .ok_or(SaslError::Malformed(KIND, "missing NUL separator"))?;
    let authcid = &payload[..nul];
    if authcid.is_empty() {
        return Err(SaslError::Malformed(KIND, "empty authcid"));
    }
    std::str::from_utf8(authcid)
        .map(Cow::Borrowed)
        .map_err(|_| SaslError::Malformed(KIND, "authcid is not UTF-8"))
}

/// `auth` (an `<auth/>`, or a SASL2 `<authenticate/>` when `sasl_ns` is [`NS_SASL2`], without
/// an initial response; `raw` its bytes) rewritten to carry `response_text` (the base64 text
/// of the client's `<response/>`) as its initial response. Every other byte and child is
/// kept, so the node sees the element the client would have sent had it put its first message
/// in the `<auth/>` (RFC 6120 §6.4.2): one SASL exchange, not two.
pub fn with_initial_response(
    raw: &[u8],
    auth: &crate::xmpp::element::Element,
    sasl_ns: &str,
    response_text: &str,
) -> bytes::Bytes {
    use crate::xmpp::element::{escape, without_spans};
    let text = match response_text.trim() {
        "" => "=",
        t => t,
    };
    let text = escape(text);
    let inner = if sasl_ns == NS_SASL {
        text
    } else {
        format!("<initial-response>{text}</initial-response>")
    };
    // An empty <initial-response/> child, if any, gives way to the real one.
    let trimmed;
    let raw = match auth.child("initial-response", NS_SASL2) {
        Some(empty) => {
            trimmed = without_spans(raw, std::slice::from_ref(&empty.span));
            &trimmed[..]
        }
        None => raw,
    };
    let start_tag_end = start_tag_len(raw);
    let mut out = Vec::with_capacity(raw.len() + inner.len() + auth.name.len() + 3);
    if raw[..start_tag_end].ends_with(b"/>") {
        out.extend_from_slice(&raw[..start_tag_end - 2]);
        out.push(b'>');
        out.extend_from_slice(inner.as_bytes());
        out.extend_from_slice(format!("</{}>", auth.name).as_bytes());
    } else if sasl_ns == NS_SASL {
        // <auth ...></auth> or <auth ...>=</auth>-like empty forms: replace the content.
        out.extend_from_slice(&raw[..start_tag_end]);
        out.extend_from_slice(inner.as_bytes());
        out.extend_from_slice(format!("</{}>", auth.name).as_bytes());
    } else {
        out.extend_from_slice(&raw[..start_tag_end]);
        out.extend_from_slice(inner.as_bytes());
        out.extend_from_slice(&raw[start_tag_end..]);
    }
    out.into()
}

/// Length of the start tag at the front of `raw` (through its `>`), quotes respected.
fn start_tag_len(raw: &[u8]) -> usize {
    let mut quote = None;
    for (i, &b) in raw.iter().enumerate() {
        match (quote, b) {
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b'>') => return i + 1,
            _ => {}
        }
    }
    raw.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "example.test";

    fn rewrite(raw: &str, ns: &str) -> String {
        let ctx = crate::xmpp::element::NsContext {
            default_ns: "jabber:client".into(),
            prefixes: vec![],
        };
        let el = crate::xmpp::element::Element::parse(raw.as_bytes(), &ctx).unwrap();
        String::from_utf8(with_initial_response(raw.as_bytes(), &el, ns, " AGFsaWNlAHB3 ").to_vec())
            .unwrap()
    }

    #[test]
    fn response_becomes_the_initial_response() {
        assert_eq!(
            rewrite(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>",
                NS_SASL
            ),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>"
        );
        assert_eq!(
            rewrite(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'></auth>",
                NS_SASL
            ),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>"
        );
        assert_eq!(
            rewrite(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><user-agent id='x>y'/></authenticate>",
                NS_SASL2
            ),
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGFsaWNlAHB3</initial-response><user-agent id='x>y'/></authenticate>"
        );
        assert_eq!(
            rewrite(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response/><user-agent/></authenticate>",
                NS_SASL2
            ),
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGFsaWNlAHB3</initial-response><user-agent/></authenticate>"
        );
    }

    fn ident(mech: &str, payload: &[u8]) -> Result<Option<String>, SaslError> {
        claimed_identity(mech, payload, DOMAIN)
    }

    fn some(s: &str) -> Result<Option<String>, SaslError> {
        Ok(Some(s.to_owned()))
    }

    fn malformed(kind: &'static str, why: &'static str) -> Result<Option<String>, SaslError> {
        Err(SaslError::Malformed(kind, why))
    }

    /// [`decode_payload`], with the payload as a plain vector to compare.
    fn decoded(text: &str) -> Result<Option<Vec<u8>>, SaslError> {
        decode_payload(text).map(|p| p.map(|p| p.to_vec()))
    }

    // ---- decode_payload ----

    #[test]
    fn a_decoded_payload_shows_only_its_length() {
        let payload = decode_payload("AGp1bGlldABzZWNyZXQ=").unwrap().unwrap();
        assert_eq!(format!("{payload:?}"), "<14 bytes>");
        assert_eq!(format!("{payload:#?}"), "<14 bytes>");
    }

    #[test]
    fn decode_plain_base64() {
        assert_eq!(
            decoded("AGp1bGlldABzZWNyZXQ="),
            Ok(Some(b"\0juliet\0secret".to_vec()))
        );
    }

    #[test]
    fn decode_ignores_whitespace_anywhere() {
        let wrapped = "  AGp1\nbGll\r\ndABz\tZWNy ZXQ=\n";
        assert_eq!(decoded(wrapped), Ok(Some(b"\0juliet\0secret".to_vec())));
    }

    #[test]
    fn decode_lone_equals_is_empty_response() {
        assert_eq!(decoded("="), Ok(Some(Vec::new())));
        assert_eq!(decoded(" = \n"), Ok(Some(Vec::new())));
    }

    #[test]
    fn decode_empty_is_no_initial_response() {
        assert_eq!(decoded(""), Ok(None));
        assert_eq!(decoded(" \n\t "), Ok(None));
    }

    #[test]
    fn decode_rejects_invalid_base64() {
        assert_eq!(decoded("!!!!"), Err(SaslError::InvalidBase64));
        assert_eq!(decoded("abc"), Err(SaslError::InvalidBase64));
        assert_eq!(decoded("ab=c"), Err(SaslError::InvalidBase64));
        assert_eq!(decoded("=="), Err(SaslError::InvalidBase64));
    }

    // ---- PLAIN ----

    #[test]
    fn plain_without_authzid_appends_stream_domain() {
        assert_eq!(
            ident("PLAIN", b"\0juliet\0secret"),
            some("juliet@example.test")
        );
    }

    #[test]
    fn plain_authcid_with_domain_is_kept() {
        assert_eq!(
            ident("PLAIN", b"\0juliet@other.test\0secret"),
            some("juliet@other.test")
        );
    }

    #[test]
    fn plain_authzid_wins() {
        assert_eq!(
            ident("PLAIN", b"admin@example.test\0juliet\0secret"),
            some("admin@example.test")
        );
    }

    #[test]
    fn plain_authzid_without_at_gets_stream_domain() {
        assert_eq!(
            ident("PLAIN", b"admin\0juliet\0secret"),
            some("admin@example.test")
        );
    }

    #[test]
    fn plain_wrong_nul_count_is_malformed() {
        let why = "expected two NUL separators";
        assert_eq!(ident("PLAIN", b"juliet"), malformed("PLAIN", why));
        assert_eq!(ident("PLAIN", b"\0juliet"), malformed("PLAIN", why));
        assert_eq!(
            ident("PLAIN", b"\0juliet\0sec\0ret"),
            malformed("PLAIN", why)
        );
    }

    #[test]
    fn plain_empty_authcid_is_malformed() {
        assert_eq!(
            ident("PLAIN", b"admin\0\0secret"),
            malformed("PLAIN", "empty authcid")
        );
    }

    #[test]
    fn plain_non_utf8_is_malformed() {
        assert_eq!(
            ident("PLAIN", b"\0jul\xffiet\0secret"),
            malformed("PLAIN", "identity is not UTF-8")
        );
    }

    #[test]
    fn plain_keeps_unicode_and_case() {
        assert_eq!(
            ident("PLAIN", "\0ÄNNE\0pässwörd".as_bytes()),
            some("ÄNNE@example.test")
        );
        assert_eq!(ident("PLAIN", b"\0JuLiet\0x"), some("JuLiet@example.test"));
    }

    #[test]
    fn plain_without_stream_domain_cannot_be_placed() {
        assert_eq!(claimed_identity("PLAIN", b"\0juliet\0secret", ""), Ok(None));
        assert_eq!(
            claimed_identity("PLAIN", b"\0juliet@example.test\0secret", ""),
            some("juliet@example.test")
        );
    }

    #[test]
    fn plain_round_trip_through_base64() {
        let payload = decode_payload("AGp1bGlldABzZWNyZXQ=").unwrap().unwrap();
        assert_eq!(ident("PLAIN", &payload), some("juliet@example.test"));
    }

    // ---- SCRAM ----

    const SCRAM_KIND: &str = "SCRAM client-first";

    #[test]
    fn scram_basic() {
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=juliet,r=abc"),
            some("juliet@example.test")
        );
    }

    #[test]
    fn scram_all_registered_variants() {
        for mech in [
            "SCRAM-SHA-1",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-512",
            "SCRAM-SHA-512-PLUS",
        ] {
            assert_eq!(
                ident(mech, b"n,,n=juliet,r=abc"),
                some("juliet@example.test"),
                "{mech}"
            );
        }
    }

    #[test]
    fn scram_cbind_flag_y() {
        assert_eq!(
            ident("SCRAM-SHA-256", b"y,,n=juliet,r=abc"),
            some("juliet@example.test")
        );
    }

    #[test]
    fn scram_cbind_flag_p() {
        assert_eq!(
            ident("SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=juliet,r=abc"),
            some("juliet@example.test")
        );
        assert_eq!(
            ident("SCRAM-SHA-256-PLUS", b"p=tls-exporter,,n=romeo,r=abc,x=ext"),
            some("romeo@example.test")
        );
    }

    #[test]
    fn scram_authzid_wins() {
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,a=admin@example.test,n=juliet,r=x"),
            some("admin@example.test")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,a=admin,n=juliet,r=x"),
            some("admin@example.test")
        );
    }

    #[test]
    fn scram_username_with_domain_is_kept() {
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=juliet@other.test,r=x"),
            some("juliet@other.test")
        );
    }

    #[test]
    fn scram_saslname_escapes_are_decoded() {
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=a=2Cb=3Dc,r=x"),
            some("a,b=c@example.test")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,a=x=3D=2C,n=juliet,r=x"),
            some("x=,@example.test")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n==3D,r=x"),
            some("=@example.test")
        );
    }

    #[test]
    fn scram_bad_escapes_are_malformed() {
        let why = "invalid '=' escape in saslname";
        for payload in [
            &b"n,,n=ab=41,r=x"[..],
            b"n,,n=ab=,r=x",
            b"n,,n=ab=2,r=x",
            b"n,,n=ab=2c,r=x",
            b"n,,n==,r=x",
            b"n,a=x=,n=juliet,r=x",
        ] {
            assert_eq!(
                ident("SCRAM-SHA-1", payload),
                malformed(SCRAM_KIND, why),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        // A multi-byte character right after '=' must not cause a bad slice.
        assert_eq!(
            ident("SCRAM-SHA-1", "n,,n=a=äb,r=x".as_bytes()),
            malformed(SCRAM_KIND, why)
        );
    }

    #[test]
    fn scram_missing_username_is_malformed() {
        let why = "missing username";
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,r=abc"),
            malformed(SCRAM_KIND, why)
        );
        assert_eq!(ident("SCRAM-SHA-1", b"n,,"), malformed(SCRAM_KIND, why));
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,m=ext"),
            malformed(SCRAM_KIND, why)
        );
    }

    #[test]
    fn scram_empty_username_is_malformed() {
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=,r=abc"),
            malformed(SCRAM_KIND, "empty saslname")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,a=,n=juliet,r=abc"),
            malformed(SCRAM_KIND, "empty saslname")
        );
    }

    #[test]
    fn scram_missing_nonce_is_malformed() {
        let why = "missing nonce";
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=juliet"),
            malformed(SCRAM_KIND, why)
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=juliet,r="),
            malformed(SCRAM_KIND, why)
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=juliet,x=abc"),
            malformed(SCRAM_KIND, why)
        );
    }

    #[test]
    fn scram_mandatory_extension_is_skipped() {
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,m=foo,n=juliet,r=abc"),
            some("juliet@example.test")
        );
    }

    #[test]
    fn scram_bad_gs2_header_is_malformed() {
        assert_eq!(
            ident("SCRAM-SHA-1", b"x,,n=juliet,r=abc"),
            malformed(SCRAM_KIND, "invalid gs2 channel binding flag")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n=juliet,r=abc"),
            malformed(SCRAM_KIND, "invalid gs2 channel binding flag")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,"),
            malformed(SCRAM_KIND, "truncated gs2 header")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"p=tls-unique"),
            malformed(SCRAM_KIND, "truncated gs2 header")
        );
        assert_eq!(
            ident("SCRAM-SHA-1-PLUS", b"p=,,n=juliet,r=abc"),
            malformed(SCRAM_KIND, "invalid channel binding name")
        );
        assert_eq!(
            ident("SCRAM-SHA-1-PLUS", b"p=tls_unique,,n=juliet,r=abc"),
            malformed(SCRAM_KIND, "invalid channel binding name")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,z=admin,n=juliet,r=abc"),
            malformed(SCRAM_KIND, "invalid authzid field")
        );
    }

    #[test]
    fn scram_non_utf8_or_nul_is_malformed() {
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=jul\xffiet,r=abc"),
            malformed(SCRAM_KIND, "not UTF-8")
        );
        assert_eq!(
            ident("SCRAM-SHA-1", b"n,,n=jul\0iet,r=abc"),
            malformed(SCRAM_KIND, "contains NUL")
        );
    }

    #[test]
    fn scram_keeps_unicode_and_case() {
        assert_eq!(
            ident("SCRAM-SHA-256", "n,,n=Ünïcödé,r=abc".as_bytes()),
            some("Ünïcödé@example.test")
        );
        assert_eq!(
            ident("SCRAM-SHA-256", b"n,,n=RoMeo@Example.TEST,r=abc"),
            some("RoMeo@Example.TEST")
        );
    }

    #[test]
    fn scram_never_panics_on_prefixes() {
        let full = b"p=tls-unique,a=ad=2Cmin,n=ju=3Dliet,r=abc,x=y";
        for end in 0..=full.len() {
            let _ = ident("SCRAM-SHA-1-PLUS", &full[..end]);
        }
    }

    // ---- HT (FAST) ----

    #[test]
    fn ht_name_before_nul() {
        assert_eq!(
            ident("HT-SHA-256-NONE", b"juliet\0\x01\x02\x00hmac"),
            some("juliet@example.test")
        );
        assert_eq!(
            ident("HT-SHA-256-NONE", b"juliet@other.test\0hmac"),
            some("juliet@other.test")
        );
        assert_eq!(
            ident("HT-SHA-256-ENDP", "Ĵuliet\0hmac".as_bytes()),
            some("Ĵuliet@example.test")
        );
    }

    #[test]
    fn ht_without_nul_is_malformed() {
        assert_eq!(
            ident("HT-SHA-256-NONE", b"juliet"),
            malformed("HT", "missing NUL separator")
        );
        assert_eq!(
            ident("HT-SHA-256-NONE", b"\0hmac"),
            malformed("HT", "empty authcid")
        );
    }

    // ---- mechanisms without a username ----

    #[test]
    fn mechanisms_without_username() {
        assert_eq!(ident("ANONYMOUS", b"trace"), Ok(None));
        assert_eq!(ident("EXTERNAL", b"juliet@example.test"), Ok(None));
        assert_eq!(ident("X-UNKNOWN", b"\0juliet\0secret"), Ok(None));
    }

    #[test]
    fn mechanism_names_are_case_sensitive() {
        assert_eq!(ident("plain", b"\0juliet\0secret"), Ok(None));
        assert_eq!(ident("scram-sha-1", b"n,,n=juliet,r=abc"), Ok(None));
    }

    #[test]
    fn empty_payload_has_no_identity() {
        for mech in ["PLAIN", "SCRAM-SHA-1", "HT-SHA-256-NONE", "ANONYMOUS"] {
            assert_eq!(ident(mech, b""), Ok(None), "{mech}");
        }
    }

    #[test]
    fn error_messages_do_not_echo_content() {
        let err = ident("PLAIN", b"\0juliet\0sec\0ret").unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed PLAIN message: expected two NUL separators"
        );
        assert!(!err.to_string().contains("sec"));
    }
}
