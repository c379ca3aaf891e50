//! Stream-management ids the proxy wraps with the fleet's keys (`route::resume`) and unwraps
//! when a client resumes (`resumption`): the client holds the id and may send anything back.
//!
//! - A made-up previd never panics the check, and whatever the check accepts as valid is
//!   exactly the id the fleet's key would issue for that node and node id: one spelling per
//!   token, so a previd is never unwrapped to a node or id it was not issued for.
//! - Wrapping then checking round-trips; the id is refused under another domain, and unknown
//!   to a proxy without the issuing key; any change to a wrapped id (a byte replaced, removed
//!   or added) makes it invalid.
//! - On the relay: a client's `<resume/>` comes out unchanged, or with exactly its `previd`
//!   replaced by the node's own id of a valid token (every other byte kept), and the node's
//!   `<resumed/>` then shows the client its own id again; a node's `<enabled/>` comes out
//!   unchanged or with its id wrapped so that it checks as valid for this node. A SASL2
//!   `<authenticate/>` with an inline resume is routed only by a valid token.
//!
//! Input layout: byte 0 picks the mode (mod 4):
//! 0. the rest is a previd;
//! 1. the rest, split at NUL bytes: domain, node, id, and three bytes of tampering (where,
//!    what, how);
//! 2. byte 1 picks the direction (even: client, odd: node), the rest is an element; `@T@` in
//!    it stands for a genuine wrapped id;
//! 3. the rest is a SASL2 `<authenticate/>`, with `@T@` as above.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use xmpp_lb::fuzzing::{Checked, MAX_ID_BYTES, NS_SM, SmKeys, SmRelay};
use xmpp_lb::keys::FleetKey;
use xmpp_lb::metrics::Metrics;
use xmpp_lb::xmpp::element::{Element, NsContext};
use xmpp_lb::xmpp::features::NS_SASL2;
use xmpp_lb::xmpp::header::{CLIENT_NS, STREAM_NS};

const DOMAIN: &str = "example.test";
/// The node the fuzzed relay runs to, and the one a genuine token names.
const NODE: &str = "node1";
const TOKEN_NODE: &str = "node2";
const TOKEN_ID: &str = "g2gCZAAR-sess";

struct Fixture {
    /// The fleet: a new key and the one it replaces.
    fleet: Arc<SmKeys>,
    /// The retired key alone (what issued the fleet's older ids).
    old: SmKeys,
    /// Another fleet's key.
    other: SmKeys,
    metrics: Arc<Metrics>,
    /// A genuine id for `TOKEN_NODE`.
    token: String,
}

fn key(secret: &str) -> FleetKey {
    FleetKey::from_secret(secret.as_bytes(), std::path::Path::new("fuzz.key"))
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let new = key("the fleet's newest secret, 0123456789abcdef");
        let old = key("the fleet's retired secret, 0123456789abcdef");
        let fleet = Arc::new(SmKeys::new(&[new, old.clone()]));
        let token = fleet.wrap(DOMAIN, TOKEN_NODE, TOKEN_ID).expect("short id");
        Fixture {
            fleet,
            old: SmKeys::new(&[old]),
            other: SmKeys::new(&[key("another fleet's secret, 0123456789abcdef")]),
            metrics: Arc::new(Metrics::new()),
            token,
        }
    })
}

/// A previd the check accepts must be exactly what its key issues: the fleet's newest key, or
/// the retired one.
fn assert_canonical(f: &Fixture, domain: &str, previd: &str) {
    if let Checked::Valid { node, id } = f.fleet.check(domain, previd) {
        let issued = [
            f.fleet.wrap(domain, &node, id),
            f.old.wrap(domain, &node, id),
        ];
        assert!(
            issued.iter().any(|w| w.as_deref() == Some(previd)),
            "{previd:?} unwraps to {node:?}/{id:?} but is not what the fleet issues for them"
        );
    }
}

fn round_trip(f: &Fixture, rest: &[u8]) {
    let mut parts = rest.split(|&b| b == 0);
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (domain, node, id) = (text(), text(), text());
    let tamper = parts.next().unwrap_or_default();
    let Some(wrapped) = f.fleet.wrap(&domain, &node, &id) else {
        // Only an id that would grow past XEP-0198's bound is left unwrapped.
        let b64 = node.len().div_ceil(3) * 4;
        assert!("xlb1.".len() + 9 + b64 + 1 + 23 + id.len() > MAX_ID_BYTES);
        return;
    };
    assert!(wrapped.len() <= MAX_ID_BYTES);
    assert_eq!(
        f.fleet.check(&domain, &wrapped),
        Checked::Valid {
            node: node.clone(),
            id: &id
        }
    );
    assert_eq!(f.old.check(&domain, &wrapped), Checked::UnknownKey);
    assert_eq!(f.other.check(&domain, &wrapped), Checked::UnknownKey);
    let elsewhere = format!("{domain}x");
    assert_eq!(f.fleet.check(&elsewhere, &wrapped), Checked::BadMac);

    let [at, byte, how, ..] = *tamper else {
        return;
    };
    let mut bytes = wrapped.clone().into_bytes();
    let at = usize::from(at) * bytes.len() / 256;
    match how % 3 {
        0 => bytes[at] = byte,
        1 => {
            bytes.remove(at);
        }
        _ => bytes.insert(at, byte),
    }
    let Ok(tampered) = String::from_utf8(bytes) else {
        return;
    };
    if tampered != wrapped {
        let got = f.fleet.check(&domain, &tampered);
        assert!(
            !matches!(got, Checked::Valid { .. }),
            "{tampered:?} (from {wrapped:?}) unwraps to {got:?}"
        );
    }
}

/// The qualified name of the element `raw` starts with, as the relay's tracker reports it.
fn name_of(raw: &[u8]) -> &[u8] {
    let rest = raw.strip_prefix(b"<").unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>'))
        .unwrap_or(rest.len());
    &rest[..end]
}

fn client_ctx() -> NsContext {
    NsContext {
        default_ns: CLIENT_NS.into(),
        prefixes: vec![("stream".into(), STREAM_NS.into())],
    }
}

/// `a` and `b` differ only in the value of attribute `attr` of the root element.
fn same_but(a: &Element, b: &Element, attr: &str) {
    assert_eq!((&a.name, &a.ns), (&b.name, &b.ns));
    let others = |e: &Element| -> Vec<(String, String)> {
        e.attrs
            .iter()
            .filter(|(k, _)| k.as_str() != attr)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(others(a), others(b));
    assert_eq!(a.children.len(), b.children.len());
}

fn relay(f: &Fixture, from_node: bool, raw: &[u8]) {
    let mut relay = SmRelay::new(
        f.fleet.clone(),
        f.metrics.clone(),
        DOMAIN,
        NODE,
        &[NODE, TOKEN_NODE],
    );
    let ctx = client_ctx();
    let name = name_of(raw).to_vec();
    if !from_node {
        let Some(out) = relay.from_client(&name, raw.to_vec()) else {
            return;
        };
        if out == raw {
            return;
        }
        let before = Element::parse(raw, &ctx).expect("a rewritten element parsed");
        let after = Element::parse(&out, &ctx).expect("the rewritten element parses");
        assert!(before.is("resume", NS_SM));
        same_but(&before, &after, "previd");
        let previd = before.attr("previd").expect("rewritten previd");
        let Checked::Valid { id, .. } = f.fleet.check(DOMAIN, previd) else {
            panic!("previd {previd:?} replaced without a valid token");
        };
        assert_eq!(after.attr("previd"), Some(id));
        // The node's answer shows the client its own id again.
        let answer = format!("<resumed xmlns='{NS_SM}' h='0' previd='{id}'/>");
        let shown = relay
            .from_node(b"resumed", answer.into_bytes())
            .expect("held");
        let shown = Element::parse(&shown, &ctx).expect("the answer parses");
        assert_eq!(shown.attr("previd"), Some(previd));
    } else {
        let Some(out) = relay.from_node(&name, raw.to_vec()) else {
            return;
        };
        if out == raw {
            return;
        }
        let before = Element::parse(raw, &ctx).expect("a rewritten element parsed");
        let after = Element::parse(&out, &ctx).expect("the rewritten element parses");
        assert!(before.is("enabled", NS_SM), "{:?} rewritten", before.name);
        same_but(&before, &after, "id");
        let (Some(id), Some(wrapped)) = (before.attr("id"), after.attr("id")) else {
            panic!("an id appeared or vanished");
        };
        assert_eq!(
            f.fleet.check(DOMAIN, wrapped),
            Checked::Valid {
                node: NODE.into(),
                id
            }
        );
    }
}

fn inline(f: &Fixture, raw: &[u8]) {
    let ctx = NsContext {
        default_ns: NS_SASL2.into(),
        prefixes: vec![],
    };
    let Ok(auth) = Element::parse(raw, &ctx) else {
        return;
    };
    if !auth.is("authenticate", NS_SASL2) {
        return;
    }
    let relay = SmRelay::new(
        f.fleet.clone(),
        f.metrics.clone(),
        DOMAIN,
        "",
        &[NODE, TOKEN_NODE],
    );
    let Some((node, out)) = relay.inline_resume(raw, &auth) else {
        assert!(
            auth.child("resume", NS_SM)
                .is_none_or(|r| r.attr("previd").is_none())
        );
        return;
    };
    let previd = auth
        .child("resume", NS_SM)
        .and_then(|r| r.attr("previd"))
        .expect("an inline resume has a previd");
    match node {
        Some(node) => {
            let Checked::Valid { node: named, id } = f.fleet.check(DOMAIN, previd) else {
                panic!("routed by an invalid previd {previd:?}");
            };
            assert_eq!(node, named);
            let after = Element::parse(&out, &ctx).expect("the rewritten element parses");
            let resume = after.child("resume", NS_SM).expect("resume kept");
            assert_eq!(resume.attr("previd"), Some(id));
        }
        None => assert_eq!(out, raw, "changed without routing"),
    }
}

fuzz_target!(|input: &[u8]| {
    let f = fixture();
    let [mode, rest @ ..] = input else {
        return;
    };
    let with_token = |data: &[u8]| -> Vec<u8> {
        String::from_utf8_lossy(data)
            .replace("@T@", &f.token)
            .into_bytes()
    };
    match mode % 4 {
        0 => {
            let previd = String::from_utf8_lossy(rest);
            for keys in [&*f.fleet, &f.old, &f.other] {
                let _ = keys.check(DOMAIN, &previd);
            }
            assert_canonical(f, DOMAIN, &previd);
            assert_canonical(f, DOMAIN, &previd.replace("@T@", &f.token));
        }
        1 => round_trip(f, rest),
        2 => {
            let [dir, raw @ ..] = rest else {
                return;
            };
            relay(f, dir % 2 == 1, &with_token(raw));
        }
        _ => inline(f, &with_token(rest)),
    }
});
