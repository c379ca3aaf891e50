//! XMPP over WebSocket (RFC 7395) through the proxy, against real Prosody nodes that have no
//! WebSocket module: logins land on the node `xmpp-lb route` names; one TLS port serves
//! WebSocket (ALPN `http/1.1`) and XMPP (ALPN `xmpp-client`); discovery files; and bad
//! input (handshakes, messages) gets its HTTP status or close code and never reaches a node.
//! The client is tokio-tungstenite over real TLS, so every message is under the test's
//! control.

use std::time::Duration;

use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::raw::Raw;
use testkit::ws::{End, Handshake, Message, open, open_element};
use toml::Table;

/// With backends node1..node3 (golden ring placement): alice → node1, bob → node2,
/// carol → node3.
const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

/// `limits.prerouting_timeout` of these tests.
const PREROUTING: Duration = Duration::from_millis(1500);
/// `[websocket] max_message_bytes` of these tests.
const MAX_MESSAGE: usize = 4096;
const ORIGIN: &str = "https://chat.example.test";

fn env(nodes: usize) -> Env {
    EnvBuilder::new(nodes)
        .users(USERS)
        .config(|c| {
            let mut wss = Table::new();
            wss.insert("websocket".into(), "/xmpp-websocket".into());
            wss.insert(
                "websocket_origins".into(),
                toml::Value::Array(vec![ORIGIN.into()]),
            );
            c.listener("wss", "direct", wss)
                .set(
                    "limits.prerouting_timeout",
                    format!("{}ms", PREROUTING.as_millis()),
                )
                .set("websocket.max_message_bytes", MAX_MESSAGE as i64)
        })
        .start()
}

/// Connections routed to any node so far (`xmpp_lb_routed_total`, all series).
fn routed(env: &Env) -> f64 {
    env.proxy
        .scrape()
        .lines()
        .filter(|l| l.starts_with("xmpp_lb_routed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Nothing of the client's reached a node: nothing routed, no session on any node.
fn assert_nothing_reached_a_node(env: &Env, what: &str) {
    assert_eq!(routed(env), 0.0, "{what}: a connection was routed");
    for i in 0..env.cluster.len() {
        assert!(
            env.cluster.sessions(i).is_empty(),
            "{what}: node {i} has sessions"
        );
    }
}

#[test]
fn websocket_logins_land_where_route_says_with_and_without_from() {
    let env = env(3);
    let addr = env.proxy.addr("wss", false);
    let ca = env.ca();
    for (user, password) in USERS {
        for from in [false, true] {
            let jid = format!("{user}@{DOMAIN}");
            let bound = env.proxy.block_on(async {
                let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
                    .await
                    .expect("handshake accepted");
                let bound = ws
                    .log_in(DOMAIN, from.then_some(jid.as_str()), user, password)
                    .await;
                // The stream is live: a round trip through the node.
                ws.send("<iq xmlns='jabber:client' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>").await;
                ws.expect("id='p1'", Duration::from_secs(10)).await;
                let node = env.proxy.route_cli(&jid);
                let i: usize = node.trim_start_matches("node").parse::<usize>().unwrap() - 1;
                assert!(
                    env.cluster.has_session(i, &jid),
                    "{jid} (from: {from}) is not on {node}, where route says"
                );
                ws.send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
                    .await;
                let (texts, end) = ws.read_to_end(Duration::from_secs(10)).await;
                assert!(
                    texts.iter().any(|t| t.starts_with("<close ")),
                    "the node's stream close comes back as <close/>: {texts:?}"
                );
                assert_eq!(end, End::Code(1000));
                bound
            });
            assert!(bound.contains(&format!("{jid}/")), "{bound}");
        }
    }
    assert!(
        env.proxy
            .metric_value("xmpp_lb_streams_total{listener=\"wss\",transport=\"websocket\"}")
            >= 6.0
    );
}

#[test]
fn one_tls_port_serves_xmpp_clients_and_web_clients() {
    let env = env(1);
    let addr = env.proxy.addr("wss", false);
    let ca = env.ca();
    env.proxy.block_on(async {
        // ALPN xmpp-client: an ordinary direct-TLS XMPP login.
        let raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
        let raw = raw.log_in(DOMAIN, "alice", "pw-alice", "tcp").await;
        drop(raw);
        // No ALPN at all, XMPP first: still XMPP.
        let connector = testkit::raw::connector_alpn(&ca, &[]);
        let raw = Raw::direct_tls_via(addr, DOMAIN, &connector).await;
        let raw = raw.log_in(DOMAIN, "bob", "pw-bob", "tcp").await;
        drop(raw);
        // ALPN http/1.1: a WebSocket.
        let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        ws.log_in(DOMAIN, None, "carol", "pw-carol").await;
    });
    assert!(
        env.proxy
            .metric_value("xmpp_lb_streams_total{listener=\"wss\",transport=\"tcp\"}")
            >= 2.0
    );
}

#[test]
fn bad_handshakes_get_their_http_status_and_never_reach_a_node() {
    let env = env(1);
    let addr = env.proxy.addr("wss", false);
    let ca = env.ca();
    let hs = |protocol, origin, path| Handshake {
        path,
        protocol,
        origin,
    };
    env.proxy.block_on(async {
        for (what, h, status) in [
            ("no subprotocol", hs(None, None, "/xmpp-websocket"), 400),
            ("another subprotocol", hs(Some("mqtt"), None, "/xmpp-websocket"), 400),
            ("a foreign origin", hs(Some("xmpp"), Some("https://evil.test"), "/xmpp-websocket"), 403),
            ("another path", hs(Some("xmpp"), None, "/other"), 404),
        ] {
            match open(addr, DOMAIN, &ca, &h).await {
                Ok(_) => panic!("{what}: handshake accepted"),
                Err(got) => assert_eq!(got, status, "{what}"),
            }
        }
        // The allowed origin opens.
        assert!(open(addr, DOMAIN, &ca, &hs(Some("xmpp"), Some(ORIGIN), "/xmpp-websocket")).await.is_ok());
        let plain_get = format!(
            "GET /xmpp-websocket HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = testkit::ws::http_request(addr, DOMAIN, &ca, &plain_get).await;
        assert_eq!(status, 426, "{text}");
        let post = format!(
            "POST /xmpp-websocket HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = testkit::ws::http_request(addr, DOMAIN, &ca, &post).await;
        assert_eq!(status, 405, "{text}");
        let old_version = format!(
            "GET /xmpp-websocket HTTP/1.1\r\nHost: {DOMAIN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n"
        );
        let (status, text) = testkit::ws::http_request(addr, DOMAIN, &ca, &old_version).await;
        assert_eq!(status, 426, "{text}");
        let (status, _) =
            testkit::ws::http_request(addr, DOMAIN, &ca, "garbage\r\n\r\n").await;
        assert_eq!(status, 400, "a request that is not HTTP");
    });
    for (result, n) in [
        ("no_subprotocol", 2.0),
        ("forbidden_origin", 1.0),
        ("not_found", 1.0),
        ("upgrade_required", 1.0),
        ("method_not_allowed", 1.0),
        ("bad_version", 1.0),
        ("websocket", 1.0),
    ] {
        assert_eq!(
            env.proxy.metric_value(&format!(
                "xmpp_lb_http_requests_total{{listener=\"wss\",result=\"{result}\"}}"
            )),
            n,
            "{result}"
        );
    }
    assert_nothing_reached_a_node(&env, "bad handshakes");
}

#[test]
fn bad_messages_close_the_websocket_with_their_code_and_never_reach_a_node() {
    let env = env(1);
    let addr = env.proxy.addr("wss", false);
    let ca = env.ca();
    let open_msg = open_element(DOMAIN, None);
    let cases: Vec<(&str, Vec<Message>, u16)> = vec![
        ("a binary message", vec![Message::Binary(open_msg.clone().into_bytes().into())], 1003),
        ("garbage", vec![Message::Text("hello, server".into())], 1007),
        ("two elements in one message", vec![Message::Text(format!("{open_msg}{open_msg}").into())], 1007),
        ("a comment", vec![Message::Text("<!-- x --><open/>".into())], 1007),
        (
            "an oversized message",
            vec![Message::Text(format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{}'/>", "x".repeat(MAX_MESSAGE)).into())],
            1009,
        ),
        (
            "a binary message after <open/>",
            vec![Message::Text(open_msg.clone().into()), Message::Binary(vec![1, 2, 3].into())],
            1003,
        ),
        (
            "two elements after <open/>",
            vec![
                Message::Text(open_msg.clone().into()),
                Message::Text("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3LWFsaWNl</auth><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3LWFsaWNl</auth>".into()),
            ],
            1007,
        ),
    ];
    env.proxy.block_on(async {
        for (what, messages, code) in cases {
            let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
                .await
                .expect("handshake accepted");
            for m in messages {
                ws.send_message(m).await;
            }
            let (texts, end) = ws.read_to_end(Duration::from_secs(10)).await;
            assert_eq!(end, End::Code(code), "{what}: {texts:?}");
        }
        // A client that never sends <open/>: the pre-routing deadline, as for TCP clients,
        // with the stream error framed as RFC 7395 says.
        let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        let started = std::time::Instant::now();
        let (texts, end) = ws.read_to_end(PREROUTING * 4).await;
        assert!(started.elapsed() >= PREROUTING - Duration::from_millis(100));
        assert!(
            texts[0].starts_with("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'"),
            "{texts:?}"
        );
        assert!(
            texts[1].starts_with("<stream:error xmlns:stream='http://etherx.jabber.org/streams'>")
                && texts[1].contains("connection-timeout"),
            "{texts:?}"
        );
        assert_eq!(
            texts[2],
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
        );
        assert_eq!(end, End::Code(1000));
    });
    for (reason, n) in [
        ("binary", 2.0),
        ("not_one_element", 4.0),
        ("too_large", 1.0),
    ] {
        assert_eq!(
            env.proxy.metric_value(&format!(
                "xmpp_lb_websocket_closes_total{{reason=\"{reason}\"}}"
            )),
            n,
            "{reason}"
        );
    }
    assert_nothing_reached_a_node(&env, "bad messages");
}

#[test]
fn discovery_files_name_the_endpoint_with_cors() {
    let env = env(1);
    let addr = env.proxy.addr("wss", false);
    let ca = env.ca();
    env.proxy.block_on(async {
        let get = |path: &str, host: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: https://web.test\r\nConnection: close\r\n\r\n")
        };
        let (status, text) = testkit::ws::http_request(addr, DOMAIN, &ca, &get("/.well-known/host-meta", DOMAIN)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.to_ascii_lowercase().contains("access-control-allow-origin: *"), "{text}");
        assert!(
            text.contains("<Link rel='urn:xmpp:alt-connections:websocket' href='wss://example.test/xmpp-websocket'/>"),
            "{text}"
        );
        let (status, text) = testkit::ws::http_request(addr, DOMAIN, &ca, &get("/.well-known/host-meta.json", DOMAIN)).await;
        assert_eq!(status, 200, "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON body");
        assert_eq!(json["links"][0]["rel"], "urn:xmpp:alt-connections:websocket");
        assert_eq!(json["links"][0]["href"], "wss://example.test/xmpp-websocket");
        let (status, _) = testkit::ws::http_request(addr, DOMAIN, &ca, &get("/.well-known/host-meta", "other.test")).await;
        assert_eq!(status, 404, "a domain not served");
    });
    assert_eq!(
        env.proxy
            .metric_value("xmpp_lb_http_requests_total{listener=\"wss\",result=\"unknown_host\"}"),
        1.0
    );
}
