//! The HTTP side of a WebSocket listener (`websocket::http::answer`) on any request head from
//! any client, before anything is authenticated. Checked against a model of RFC 6455 §4.2 and
//! RFC 7395 written from the documentation:
//!
//! - `101` exactly when the model accepts the handshake (GET on the endpoint's path, Upgrade
//!   and Connection tokens, version 13, a key of 16 bytes, an allowed or absent Origin, the
//!   `xmpp` subprotocol), with the `Sec-WebSocket-Accept` the key calls for;
//! - the endpoint URL recorded for the connection is `wss://HOST/PATH` with a host of safe
//!   characters only, whatever `Host` said;
//! - a discovery file (XEP-0156) is served only for a served domain, parses (XRD or JSON) and
//!   names exactly one URL, the configured one or the endpoint's, so no request can inject
//!   markup or another link into it;
//! - `X-Forwarded-For` is believed only from a trusted balancer, and then its last entry.
#![no_main]

#[path = "common/http_input.rs"]
mod http_input;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use xmpp_lb::config::Config;
use xmpp_lb::fuzzing::{RawRequest, WsAnswer, WsHttp};
use xmpp_lb::xmpp::element::{Element, NsContext};

const PATH: &str = "/xmpp-websocket";
const ORIGINS: &[&str] = &["https://chat.example.test", "http://localhost:8080"];
const CONFIGURED_URL: &str = "wss://chat.example.test/ws?a=1&b='2'";
const REL: &str = "urn:xmpp:alt-connections:websocket";
const TRUSTED: &str = "10.0.0.3:40000";
const UNTRUSTED: &str = "192.0.2.7:40000";

fn ws() -> &'static WsHttp {
    static WS: OnceLock<WsHttp> = OnceLock::new();
    WS.get_or_init(|| {
        let text = r#"
[[listener]]
name = "web"
bind = ["127.0.0.1:5280"]
tls = "starttls"
cert = "certs/example.test.pem"
key = "certs/example.test.key"
websocket = "/xmpp-websocket"
websocket_origins = ["https://chat.example.test", "http://LOCALHOST:8080"]
websocket_plain = true
websocket_forwarded_for = ["10.0.0.2/31"]

[routing]
key = "jid"
domains = ["example.test", "chat.example.test"]

[[backend]]
name = "node1"
address = "127.0.0.1:1"

[websocket.urls]
"chat.example.test" = "wss://chat.example.test/ws?a=1&b='2'"
"#;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fuzz-ws.toml");
        let config = Config::from_toml(text, Path::new(path)).expect("valid configuration");
        WsHttp::new(config).expect("a WebSocket listener")
    })
}

fn has_token(req: &RawRequest, name: &str, token: &str) -> bool {
    http_input::values(req, name)
        .iter()
        .filter_map(|v| http_input::as_str(v))
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn first<'a>(req: &'a RawRequest, name: &str) -> Option<&'a [u8]> {
    http_input::values(req, name).first().copied()
}

/// The model's verdict on a request to the endpoint's path.
fn handshake_ok(req: &RawRequest) -> bool {
    req.method == b"GET"
        && has_token(req, "upgrade", "websocket")
        && has_token(req, "connection", "upgrade")
        && first(req, "sec-websocket-version") == Some(b"13")
        && first(req, "sec-websocket-key")
            .is_some_and(|k| STANDARD.decode(k).is_ok_and(|d| d.len() == 16))
        && first(req, "origin").is_none_or(|o| {
            let o = http_input::as_str(o)
                .unwrap_or_default()
                .to_ascii_lowercase();
            ORIGINS.contains(&o.as_str())
        })
        && has_token(req, "sec-websocket-protocol", "xmpp")
}

fn accept_key(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    STANDARD.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &input,
    ))
}

/// The served domain `Host` names, normalized as a domain is (here: ASCII lowercase is enough
/// to know whether the answer may be for a served domain at all).
fn served(req: &RawRequest) -> bool {
    first(req, "host")
        .and_then(http_input::as_str)
        .is_some_and(|h| !h.is_empty())
}

fn check_discovery(req: &RawRequest, a: &WsAnswer, json: bool) {
    let r = &a.response;
    if r.status != 200 {
        return;
    }
    assert!(served(req), "discovery without a Host: {req:?}");
    let body = String::from_utf8(r.body.clone()).expect("UTF-8 body");
    if req.method == b"HEAD" {
        assert!(body.is_empty());
        return;
    }
    let href = if json {
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON discovery");
        let links = v["links"].as_array().expect("links");
        assert_eq!(links.len(), 1, "{body}");
        assert_eq!(links[0]["rel"], REL);
        links[0]["href"].as_str().expect("href").to_string()
    } else {
        let (decl, xrd) = body.split_once('\n').expect("declaration line");
        assert!(decl.starts_with("<?xml"));
        let root = Element::parse(xrd.trim_end().as_bytes(), &NsContext::default())
            .unwrap_or_else(|e| panic!("XRD does not parse ({e}): {body}"));
        assert_eq!(root.children.len(), 1, "{body}");
        let link = &root.children[0];
        assert_eq!(link.attr("rel"), Some(REL));
        link.attr("href").expect("href").to_string()
    };
    assert!(
        href == CONFIGURED_URL || href == a.endpoint,
        "discovery names {href:?}"
    );
}

fn check(req: &RawRequest, a: &WsAnswer, peer_trusted: bool) {
    let r = &a.response;
    let path = http_input::path(&req.target);
    // The endpoint URL: safe characters only, whatever the request said.
    let host = a
        .endpoint
        .strip_prefix("wss://")
        .and_then(|h| h.strip_suffix(PATH))
        .unwrap_or_else(|| panic!("endpoint {:?}", a.endpoint));
    assert!(
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)),
        "endpoint host {host:?}"
    );
    if path == PATH.as_bytes() {
        assert_eq!(
            r.status == 101,
            handshake_ok(req),
            "{req:?} got {}",
            r.status
        );
        if r.status == 101 {
            let key = first(req, "sec-websocket-key").expect("a key");
            assert_eq!(
                r.header("sec-websocket-accept"),
                Some(accept_key(key).as_bytes())
            );
            assert_eq!(r.header("sec-websocket-protocol"), Some(&b"xmpp"[..]));
            assert!(r.header("sec-websocket-extensions").is_none());
        }
    } else {
        assert_ne!(r.status, 101, "{req:?}");
    }
    match path {
        b"/.well-known/host-meta" => check_discovery(req, a, false),
        b"/.well-known/host-meta.json" => check_discovery(req, a, true),
        _ => {}
    }
    match a.forwarded {
        Some(ip) => {
            assert!(peer_trusted, "X-Forwarded-For believed from anyone");
            let last = http_input::values(req, "x-forwarded-for")
                .last()
                .and_then(|v| http_input::as_str(v))
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim)
                .and_then(|v| v.parse::<IpAddr>().ok());
            assert_eq!(Some(ip), last);
        }
        None => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let req = http_input::request(data);
    for (peer, trusted) in [(TRUSTED, true), (UNTRUSTED, false)] {
        let peer: SocketAddr = peer.parse().expect("address");
        if let Some(a) = ws().answer(&req, peer) {
            check(&req, &a, trusted);
        }
    }
});
