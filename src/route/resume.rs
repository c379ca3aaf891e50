//! Stream-management ids that say which node holds the session, verifiable by any proxy of a
//! fleet without shared state.
//!
//! A node's XEP-0198 id is opaque to the client (at most 4000 bytes), so on its way to the
//! client the proxy wraps it:
//!
//! ```text
//! xlb1.<key id: 8 hex>.<node name: base64url>.<MAC: base64url of 16 bytes>.<node's own id>
//! ```
//!
//! The MAC is HMAC-SHA-256 (truncated to 128 bits) under a key derived from the fleet's
//! `sm_key_files` secret, over the domain, the node's name and the node's id. When the client
//! resumes, any proxy holding the key recomputes it: a valid id names the node to route to and
//! gives back the node's own id; anything else is passed on untouched and counted. The node's
//! id stays readable inside the wrapper on purpose: it is no secret (the client holds it), and
//! an operator can match ids between proxy and node logs.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::keys::FleetKey;

/// The wrapper's version tag.
const PREFIX: &str = "xlb1.";
/// The longest wrapped id issued: the proxy's own bound on an attribute value, so that the
/// `<resume previd/>` a client sends back can be parsed (XEP-0198 allows ids up to 4000
/// bytes; node ids are far shorter, and a node id too long to wrap goes out untouched).
pub const MAX_ID_BYTES: usize = crate::xmpp::element::MAX_VALUE_BYTES;
/// Bytes of MAC kept (128 bits: forging needs 2^128 tries against a proxy that counts them).
const MAC_BYTES: usize = 16;
/// HKDF label of the MAC key.
const LABEL: &[u8] = b"xmpp-lb sm id v1";

/// The fleet's MAC keys, newest first.
#[derive(Clone, Default)]
pub struct SmKeys {
    keys: Vec<([u8; 4], hmac::Key)>,
}

impl std::fmt::Debug for SmKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// What a previd turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked<'a> {
    /// Issued by a proxy of this fleet: the node that holds the session and its own id.
    Valid { node: String, id: &'a str },
    /// Looks like a wrapped id but its MAC is wrong, or it is mangled: forged or corrupted.
    BadMac,
    /// Wrapped under a key this proxy does not have (retired, or another fleet's).
    UnknownKey,
    /// Not a wrapped id at all (issued before keys were configured, or by a node directly).
    NotWrapped,
}

impl Checked<'_> {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Checked::Valid { .. } => "valid",
            Checked::BadMac => "bad_mac",
            Checked::UnknownKey => "unknown_key",
            Checked::NotWrapped => "not_wrapped",
        }
    }
}

impl SmKeys {
    /// Keys from the configured secrets (newest first). No keys: nothing is wrapped.
    pub fn new(secrets: &[FleetKey]) -> SmKeys {
        let keys = secrets
            .iter()
            .map(|k| {
                let mut material = zeroize::Zeroizing::new([0u8; 32]);
                k.derive(LABEL, &mut material[..]);
                (k.id(), hmac::Key::new(hmac::HMAC_SHA256, &material[..]))
            })
            .collect();
        SmKeys { keys }
    }

    /// Whether ids are wrapped at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id to give the client for `node`'s id `id` in `domain`; `None` when there is no key
    /// or the result would exceed [`MAX_ID_BYTES`] (the node's id then goes out untouched).
    pub fn wrap(&self, domain: &str, node: &str, id: &str) -> Option<String> {
        let (key_id, key) = self.keys.first()?;
        let mac = mac(key, domain, node, id);
        let wrapped = format!(
            "{PREFIX}{}.{}.{}.{id}",
            hex(key_id),
            URL_SAFE_NO_PAD.encode(node),
            URL_SAFE_NO_PAD.encode(&mac.as_ref()[..MAC_BYTES]),
        );
        (wrapped.len() <= MAX_ID_BYTES).then_some(wrapped)
    }

    /// Verify a previd the client sent for `domain`.
    pub fn check<'a>(&self, domain: &str, previd: &'a str) -> Checked<'a> {
        let Some(rest) = previd.strip_prefix(PREFIX) else {
            return Checked::NotWrapped;
        };
        let mut parts = rest.splitn(4, '.');
        let (Some(key_hex), Some(node_b64), Some(mac_b64), Some(id)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Checked::BadMac;
        };
        let Some(key_id) = unhex(key_hex) else {
            return Checked::BadMac;
        };
        let Some((_, key)) = self.keys.iter().find(|(k, _)| *k == key_id) else {
            return Checked::UnknownKey;
        };
        let (Ok(node), Ok(given)) = (
            URL_SAFE_NO_PAD.decode(node_b64),
            URL_SAFE_NO_PAD.decode(mac_b64),
        ) else {
            return Checked::BadMac;
        };
        let Ok(node) = String::from_utf8(node) else {
            return Checked::BadMac;
        };
        let expected = mac(key, domain, &node, id);
        if given.len() != MAC_BYTES || !same(&expected.as_ref()[..MAC_BYTES], &given) {
            return Checked::BadMac;
        }
        Checked::Valid { node, id }
    }
}

fn mac(key: &hmac::Key, domain: &str, node: &str, id: &str) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    // Lengths first, so that no two (domain, node, id) triples feed the same bytes.
    for part in [domain, node, id] {
        ctx.update(&(part.len() as u32).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.sign()
}

/// Constant-time comparison of equal-length slices (no early exit on the first difference).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(id: &[u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key id as [`hex`] writes it: 8 lowercase hex digits and no other spelling (no
/// uppercase, no sign), so that a wrapped id has exactly one form that checks as valid.
fn unhex(s: &str) -> Option<[u8; 4]> {
    if s.len() != 8 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 4];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn key(secret: &str) -> FleetKey {
        FleetKey::from_secret(secret.as_bytes(), Path::new("test.key"))
    }

    fn keys(secrets: &[&str]) -> SmKeys {
        SmKeys::new(&secrets.iter().map(|s| key(s)).collect::<Vec<_>>())
    }

    const A: &str = "secret-a-0123456789abcdef0123456789";
    const B: &str = "secret-b-0123456789abcdef0123456789";

    #[test]
    fn round_trip_through_another_proxy_of_the_fleet() {
        let issued = keys(&[A])
            .wrap("example.test", "node2", "g2gCZAAR.x")
            .unwrap();
        assert!(issued.starts_with("xlb1.") && issued.ends_with(".g2gCZAAR.x"));
        // Another process with the same key file.
        assert_eq!(
            keys(&[A]).check("example.test", &issued),
            Checked::Valid {
                node: "node2".into(),
                id: "g2gCZAAR.x"
            }
        );
    }

    #[test]
    fn rotation_accepts_old_issues_new() {
        let old = keys(&[A]).wrap("d.test", "n1", "id1").unwrap();
        let rotated = keys(&[B, A]);
        assert!(matches!(
            rotated.check("d.test", &old),
            Checked::Valid { .. }
        ));
        let new = rotated.wrap("d.test", "n1", "id1").unwrap();
        assert_ne!(new, old);
        assert_eq!(keys(&[A]).check("d.test", &new), Checked::UnknownKey);
        assert!(matches!(
            keys(&[B]).check("d.test", &new),
            Checked::Valid { .. }
        ));
    }

    #[test]
    fn forgeries_are_caught() {
        let k = keys(&[A]);
        let good = k.wrap("d.test", "n1", "id1").unwrap();
        // Another node's name with the same MAC.
        let parts: Vec<&str> = good.splitn(5, '.').collect();
        let moved = format!(
            "xlb1.{}.{}.{}.{}",
            parts[1],
            URL_SAFE_NO_PAD.encode("n2"),
            parts[3],
            parts[4]
        );
        assert_eq!(k.check("d.test", &moved), Checked::BadMac);
        // Another id, another domain.
        assert_eq!(k.check("d.test", &format!("{good}x")), Checked::BadMac);
        assert_eq!(k.check("other.test", &good), Checked::BadMac);
        for junk in [
            "xlb1.",
            "xlb1.zz.yy",
            "xlb1.0000000g.bjE.AAAA.id",
            &format!("xlb1.{}.!!!.AAAA.id", parts[1]),
            &format!("xlb1.{}.bjE.AAAA.id", parts[1]),
        ] {
            assert_eq!(k.check("d.test", junk), Checked::BadMac, "{junk}");
        }
        assert_eq!(k.check("d.test", "g2gCZAAR"), Checked::NotWrapped);
    }

    /// `u8::from_str_radix` also reads `+a` and `A`, so other spellings of an issued id's key
    /// were accepted as valid. Found by the canonical-spelling property of
    /// `fuzz/fuzz_targets/sm_id.rs` (every accepted id is exactly what the fleet issues).
    #[test]
    fn an_issued_id_has_one_spelling() {
        assert_eq!(unhex("0a0b0c0d"), Some([10, 11, 12, 13]));
        for other in ["0A0B0C0D", "+a0b0c0d", "0a+b0c0d", "0a0b0c0 ", "0a0b0c0"] {
            assert_eq!(unhex(other), None, "{other}");
        }
        let k = keys(&[A]);
        let good = k.wrap("d.test", "n1", "id1").unwrap();
        let key_hex = &good[5..13];
        for spelled in [
            good.replacen(key_hex, &key_hex.to_ascii_uppercase(), 1),
            good.replacen(key_hex, &key_hex.replacen('0', "+", 1), 1),
        ] {
            if spelled != good {
                assert!(
                    !matches!(k.check("d.test", &spelled), Checked::Valid { .. }),
                    "{spelled}"
                );
            }
        }
    }

    #[test]
    fn no_keys_no_wrapping_and_no_oversized_ids() {
        assert_eq!(SmKeys::default().wrap("d", "n", "i"), None);
        assert!(!SmKeys::default().enabled());
        let long = "x".repeat(MAX_ID_BYTES - 20);
        assert_eq!(keys(&[A]).wrap("d", "n", &long), None);
        // Every id issued can come back in a `<resume previd/>` the proxy parses.
        let longest = "x".repeat(MAX_ID_BYTES - 60);
        let wrapped = keys(&[A]).wrap("d", "n", &longest).unwrap();
        let resume = format!("<resume xmlns='urn:xmpp:sm:3' previd='{wrapped}' h='1'/>");
        let ctx = crate::xmpp::element::NsContext {
            default_ns: "jabber:client".into(),
            prefixes: vec![],
        };
        let el = crate::xmpp::element::Element::parse(resume.as_bytes(), &ctx).unwrap();
        assert!(matches!(
            keys(&[A]).check("d", el.attr("previd").unwrap()),
            Checked::Valid { .. }
        ));
    }
}
