//! XMPP over WebSocket (RFC 7395) through the proxy, against real Prosody nodes that have no
//! WebSocket module: logins land on the node `xmpp-lb route` names; one TLS port serves
//! WebSocket (ALPN `http/1.1`) and XMPP (ALPN `xmpp-client`); discovery files; and bad
//! input (handshakes, messages) gets its HTTP status or close code and never reaches a node.
//! The client is tokio-tungstenite over real TLS, so every message is under the test's
//! control.

use std::time::Duration;

use testkit::client::node_seen;
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
        // No ALPN, an HTTP request first: HTTP.
        let get = format!(
            "GET /.well-known/host-meta.json HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = testkit::ws::http_request_alpn(addr, DOMAIN, &ca, &[], &get).await;
        assert_eq!(status, 200, "{text}");
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
        ("bad_http", 1.0),
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
        // Garbage at the frame level: an unmasked frame (clients must mask) is a protocol error.
        let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        {
            use tokio::io::AsyncWriteExt;
            let raw = ws.ws.get_mut();
            raw.write_all(b"\x81\x05hello").await.unwrap();
            raw.flush().await.unwrap();
        }
        let (_, end) = ws.read_to_end(Duration::from_secs(10)).await;
        assert_eq!(end, End::Code(1002), "an unmasked frame");
        // A text frame that is not UTF-8 (masked with a zero key, so the bytes are as written).
        let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        {
            use tokio::io::AsyncWriteExt;
            let raw = ws.ws.get_mut();
            raw.write_all(b"\x81\x82\x00\x00\x00\x00\xff\xfe")
                .await
                .unwrap();
            raw.flush().await.unwrap();
        }
        let (_, end) = ws.read_to_end(Duration::from_secs(10)).await;
        assert_eq!(end, End::Code(1007), "a text message that is not UTF-8");
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
        ("protocol_error", 1.0),
        ("invalid_utf8", 1.0),
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

#[test]
fn draining_the_node_sends_close_with_see_other_uri() {
    let env = EnvBuilder::new(1)
        .users(USERS)
        .config(|c| {
            let mut wss = Table::new();
            wss.insert("websocket".into(), "/xmpp-websocket".into());
            c.listener("wss", "direct", wss)
                .set("drain.mode", "redirect")
        })
        .start();
    let addr = env.proxy.addr("wss", false);
    let ca = env.ca();
    env.proxy.block_on(async {
        let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        ws.log_in(DOMAIN, None, "alice", "pw-alice").await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
            .args(["drain", "--admin", &env.proxy.metrics.to_string(), "node1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (texts, end) = ws.read_to_end(Duration::from_secs(10)).await;
        assert_eq!(
            texts.last().map(String::as_str),
            Some("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing' see-other-uri='wss://example.test/xmpp-websocket'/>"),
            "RFC 7395 §3.6.1: {texts:?}"
        );
        assert!(
            !texts.iter().any(|t| t.contains("stream:error")),
            "the redirect is the <close/>, not a stream error: {texts:?}"
        );
        assert_eq!(end, End::Code(1000));
    });
    assert!(
        env.cluster
            .wait_session(0, &format!("alice@{DOMAIN}"), false, Duration::from_secs(5)),
        "the session ends on the drained node"
    );
}

#[test]
fn shutdown_sends_system_shutdown_then_close() {
    use testkit::process::sigterm;
    let mut env = EnvBuilder::new(1)
        .users(USERS)
        .config(|c| {
            let mut wss = Table::new();
            wss.insert("websocket".into(), "/xmpp-websocket".into());
            c.listener("wss", "direct", wss)
                .set("limits.shutdown_grace", "4s")
        })
        .start_process();
    let addr = env.proxy.addr("wss");
    let ca = env.ca();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        ws.log_in(DOMAIN, None, "alice", "pw-alice").await;
        sigterm(env.proxy.pid()).unwrap();
        let (texts, end) = ws.read_to_end(Duration::from_secs(10)).await;
        let n = texts.len();
        assert!(n >= 2, "{texts:?}");
        assert!(
            texts[n - 2]
                .starts_with("<stream:error xmlns:stream='http://etherx.jabber.org/streams'>")
                && texts[n - 2].contains("<system-shutdown"),
            "{texts:?}"
        );
        assert_eq!(
            texts[n - 1],
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
        );
        assert_eq!(end, End::Code(1000));
    });
    let status = env.proxy.wait_exit(Duration::from_secs(6)).expect("exited");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn behind_an_http_balancer_the_client_address_comes_from_trusted_forwarded_for_only() {
    let logs = testkit::logs::captured_logs();
    let env = EnvBuilder::new(1)
        .users(USERS)
        .config(|c| {
            let mut web = Table::new();
            web.insert("websocket".into(), "/xmpp-websocket".into());
            web.insert("websocket_plain".into(), true.into());
            web.insert(
                "websocket_forwarded_for".into(),
                toml::Value::Array(vec!["127.0.0.1".into()]),
            );
            c.listener("web", "starttls", web)
        })
        .start();
    let addr = env.proxy.addr("web", false);
    let ca = env.ca();
    env.proxy.block_on(async {
        let mut ws = testkit::ws::open_plain(
            addr,
            DOMAIN,
            &[("x-forwarded-for", "203.0.113.9, 192.0.2.7")],
        )
        .await
        .expect("handshake accepted");
        ws.log_in(DOMAIN, None, "alice", "pw-alice").await;
        ws.send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
            .await;
        ws.read_to_end(Duration::from_secs(10)).await;
        // XMPP clients still use STARTTLS on the same port.
        let raw = Raw::starttls(addr, DOMAIN, &ca).await;
        raw.log_in(DOMAIN, "bob", "pw-bob", "tcp").await;
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let lines = logs.lines_with(&["connection closed", "client=192.0.2.7:0", "websocket"]);
        if let Some(l) = lines.first() {
            break l.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access-log line names the forwarded client:\n{}",
            logs.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains("via=127.0.0.1:"), "{line}");
    assert!(
        line.contains("tls=\"plain\"") || line.contains("tls=plain"),
        "{line}"
    );
}

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let logs = testkit::logs::captured_logs();
    let env = EnvBuilder::new(1)
        .users(USERS)
        .config(|c| {
            let mut web = Table::new();
            web.insert("websocket".into(), "/xmpp-websocket".into());
            web.insert("websocket_plain".into(), true.into());
            web.insert(
                "websocket_forwarded_for".into(),
                toml::Value::Array(vec!["10.9.9.9".into()]),
            );
            c.listener("web", "auto", web)
        })
        .start();
    let addr = env.proxy.addr("web", false);
    env.proxy.block_on(async {
        let mut ws = testkit::ws::open_plain(addr, DOMAIN, &[("x-forwarded-for", "198.51.100.77")])
            .await
            .expect("handshake accepted");
        ws.log_in(DOMAIN, None, "carol", "pw-carol").await;
        ws.send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
            .await;
        ws.read_to_end(Duration::from_secs(10)).await;
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        logs.lines_with(&["198.51.100.77"]).is_empty(),
        "an untrusted X-Forwarded-For was believed"
    );
    assert!(
        !logs
            .lines_with(&["connection closed", "client=127.0.0.1:", "websocket"])
            .is_empty()
    );
}

#[test]
fn a_silent_client_is_pinged_and_closed_when_it_does_not_answer() {
    let env = EnvBuilder::new(1)
        .users(USERS)
        .config(|c| {
            let mut wss = Table::new();
            wss.insert("websocket".into(), "/xmpp-websocket".into());
            c.listener("wss", "direct", wss)
                .set("websocket.ping_interval", "1s")
                .set("websocket.ping_timeout", "1s")
        })
        .start();
    let addr = env.proxy.addr("wss", false);
    let ca = env.ca();
    env.proxy.block_on(async {
        // A client that reads answers pings (tungstenite does) and stays.
        let mut alive = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        alive.log_in(DOMAIN, None, "alice", "pw-alice").await;
        // One that never reads never answers.
        let mut silent = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        silent.log_in(DOMAIN, None, "bob", "pw-bob").await;
        let until = tokio::time::Instant::now() + Duration::from_millis(3500);
        while tokio::time::Instant::now() < until {
            // Reading (and so answering pings) for 3.5 s: more than interval + timeout.
            let _ = alive.next_text(until - tokio::time::Instant::now()).await;
        }
        let (_, end) = silent.read_to_end(Duration::from_secs(5)).await;
        assert_eq!(end, End::Code(1011), "no pong in time");
        alive
            .send("<iq xmlns='jabber:client' type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        alive.expect("id='p2'", Duration::from_secs(5)).await;
    });
    assert_eq!(
        env.proxy
            .metric_value("xmpp_lb_websocket_closes_total{reason=\"ping_timeout\"}"),
        1.0
    );
}

#[test]
fn xmpp_js_logs_in_over_wss_and_lands_where_route_says() {
    let env = env(3);
    let addr = env.proxy.addr("wss", false);
    let service = format!("wss://{DOMAIN}:{}/xmpp-websocket", addr.port());
    let ca = env.ca();
    let ca = ca.to_str().unwrap();
    for (user, password) in USERS {
        for (from, mech, origin) in [
            (false, "SCRAM-SHA-1", None),
            (true, "SCRAM-SHA-1", Some(ORIGIN)),
            (false, "PLAIN", Some(ORIGIN)),
        ] {
            let mut args = vec![
                "--service",
                &service,
                "--connect",
                "127.0.0.1",
                "--ca",
                ca,
                "--user",
                user,
                "--password",
                password,
                "--mech",
                mech,
            ];
            if from {
                args.push("--from");
            }
            if let Some(o) = origin {
                args.extend(["--origin", o]);
            }
            let out = testkit::ws::run_xmpp_js(&args);
            assert_eq!(out["ok"], true, "{user} (from: {from}, {mech}): {out}");
            assert_eq!(out["mech"], mech, "{out}");
            let jid = format!("{user}@{DOMAIN}");
            assert!(
                out["jid"].as_str().unwrap().starts_with(&format!("{jid}/")),
                "{out}"
            );
            assert_eq!(
                node_seen(&out),
                env.proxy.route_cli(&jid),
                "{user} (from: {from}, {mech})"
            );
        }
    }
    // A page from another origin is refused before anything reaches a node.
    let routed_before = routed(&env);
    let out = testkit::ws::run_xmpp_js(&[
        "--service",
        &service,
        "--connect",
        "127.0.0.1",
        "--ca",
        ca,
        "--user",
        "alice",
        "--password",
        "pw-alice",
        "--origin",
        "https://evil.test",
        "--timeout",
        "5",
    ]);
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(routed(&env), routed_before);
    assert!(
        env.proxy.metric_value(
            "xmpp_lb_http_requests_total{listener=\"wss\",result=\"forbidden_origin\"}"
        ) >= 1.0
    );
}

#[test]
fn a_session_resumes_across_transports_both_ways() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("sm.key");
    std::fs::write(
        &key,
        "fleet-shared stream management secret for the ws test\n",
    )
    .unwrap();
    let key = key.display().to_string();
    let env = EnvBuilder::new(3)
        .prosody(testkit::prosody::ProsodyOpts::fast_reconnect())
        .users(USERS)
        .config(move |c| {
            let mut wss = Table::new();
            wss.insert("websocket".into(), "/xmpp-websocket".into());
            c.listener("wss", "direct", wss)
                .set("resumption.sm_key_files", testkit::config::strings(&[&key]))
        })
        .start();
    let wss = env.proxy.addr("wss", false);
    let direct = env.proxy.addr("direct", false);
    let ca = env.ca();
    let limit = Duration::from_secs(10);
    env.proxy.block_on(async {
        // WebSocket first, then TCP.
        let mut ws = open(wss, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        ws.log_in(DOMAIN, None, "alice", "pw-alice").await;
        ws.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let enabled = ws.expect("<enabled", limit).await;
        let previd = testkit::raw::attr(&enabled, "<enabled", "id");
        assert!(
            previd.contains('.') || previd.len() > 20,
            "the id is wrapped: {previd}"
        );
        drop(ws); // gone without <close/>: the node keeps the session for resumption
        let mut raw = Raw::direct_tls(direct, DOMAIN, &ca).await;
        let got = raw
            .resume_sm(DOMAIN, None, ("alice", "pw-alice"), &previd, 0)
            .await;
        assert!(
            got.contains("<resumed"),
            "WebSocket session resumed over TCP: {got}"
        );

        // TCP first, then WebSocket.
        let mut raw = Raw::direct_tls(direct, DOMAIN, &ca)
            .await
            .log_in(DOMAIN, "bob", "pw-bob", "tcp")
            .await;
        let previd = raw.enable_sm().await;
        raw.vanish();
        let mut ws = open(wss, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted");
        ws.send(&open_element(DOMAIN, None)).await;
        ws.expect("mechanisms", limit).await;
        ws.send(&testkit::raw::plain_auth("bob", "pw-bob")).await;
        ws.expect("<success", limit).await;
        ws.send(&open_element(DOMAIN, None)).await;
        ws.expect("urn:xmpp:sm:3", limit).await;
        ws.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>"
        ))
        .await;
        let got = ws.expect("resume", limit).await;
        assert!(
            got.contains("<resumed"),
            "TCP session resumed over WebSocket: {got}"
        );
    });
    assert!(
        env.proxy.metric_value(
            "xmpp_lb_resumes_total{backend=\"node1\",kind=\"legacy\",result=\"resumed\"}"
        ) >= 1.0
    );
}

#[test]
fn websocket_can_be_turned_on_and_off_by_a_reload() {
    let env = EnvBuilder::new(1).users(USERS).start();
    let addr = env.proxy.addr("direct", false);
    let ca = env.ca();
    let plain_get =
        format!("GET /xmpp-websocket HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n");
    env.proxy.block_on(async {
        // Off: the direct-TLS port offers no ALPN http/1.1, so a browser's handshake fails.
        let (status, text) = testkit::ws::http_request(addr, DOMAIN, &ca, &plain_get).await;
        assert_eq!(status, 0, "no HTTP answer while websocket is off: {text}");
        assert!(text.contains("TLS handshake failed"), "{text}");
        let on = env
            .config
            .clone()
            .listener_set("direct", "websocket", "/xmpp-websocket");
        std::fs::write(&env.proxy.config_path, on.render()).unwrap();
        env.proxy.shared.reload().await.expect("reload accepted");
        let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
            .await
            .expect("handshake accepted after the reload");
        ws.log_in(DOMAIN, None, "alice", "pw-alice").await;
        // Off again: the established WebSocket stays, new ones are not served.
        std::fs::write(&env.proxy.config_path, env.config.render()).unwrap();
        env.proxy.shared.reload().await.expect("reload accepted");
        ws.send("<iq xmlns='jabber:client' type='get' id='r1'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        ws.expect("id='r1'", Duration::from_secs(10)).await;
        let (status, text) = testkit::ws::http_request(addr, DOMAIN, &ca, &plain_get).await;
        assert_eq!(
            status, 0,
            "no HTTP answer once websocket is off again: {text}"
        );
    });
}
