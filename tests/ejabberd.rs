//! ejabberd as a backend family: two real ejabberd nodes (Debian's package) joined in one
//! cluster on loopback, behind the proxy over the PROXY protocol.
//!
//! One test function on purpose: an ejabberd node takes several seconds to boot and the
//! cluster more to form, so every check below shares one cluster, in order:
//! 1. the node reports each client's real address and port (not the proxy's), with PROXY
//!    protocol v1 and v2, from IPv4 and IPv6 clients;
//! 2. a client behind a front balancer (a PROXY header to the proxy) reaches the node with
//!    the address the balancer gave, and so does a WebSocket client whose address an HTTP
//!    balancer gave in `X-Forwarded-For`;
//! 3. users homed on different nodes message each other through the proxy;
//! 4. the SASL mechanisms shown before routing are the ones the node offers on that link;
//!    after the nodes' mechanisms change (`reload_config`), a login that finds the stale
//!    list still succeeds and is counted, and both the mismatch and the periodic probe make
//!    the proxy show the new list.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use testkit::config::TestConfig;
use testkit::ejabberd::EjabberdCluster;
use testkit::pki::TestPki;
use testkit::process::wait_for;
use testkit::proxy::Proxy;
use testkit::raw::{Raw, header, mechanisms};

const DOMAIN: &str = "example.test";

/// A proxy in front of the two nodes' PROXY-protocol listeners: `version` set on the pool
/// (`[[domain]]`) or on each `[[backend]]`, features re-probed every `probe_interval`.
fn config(
    pki: &TestPki,
    ej: &EjabberdCluster,
    version: &str,
    on_backends: bool,
    probe_interval: &str,
) -> TestConfig {
    let (cert, key) = (pki.cert_path(DOMAIN), pki.key_path(DOMAIN));
    let per_backend = if on_backends {
        format!("proxy_protocol = \"{version}\"")
    } else {
        String::new()
    };
    let per_pool = if on_backends {
        String::new()
    } else {
        format!("proxy_protocol = \"{version}\"")
    };
    TestConfig::parse(&format!(
        r#"
[[listener]]
name = "direct"
bind = ["127.0.0.1:0", "[::1]:0"]
tls = "direct"
cert = "{cert}"
key = "{key}"

[[listener]]
name = "front"
bind = ["127.0.0.1:0"]
tls = "direct"
cert = "{cert}"
key = "{key}"
accept_proxy_protocol = true
trusted_proxies = ["127.0.0.0/8", "::1"]

[[listener]]
name = "web"
bind = ["127.0.0.1:0"]
tls = "starttls"
cert = "{cert}"
key = "{key}"
websocket = "/xmpp-websocket"
websocket_plain = true
websocket_forwarded_for = ["127.0.0.0/8"]

[routing]
domains = ["{DOMAIN}"]
key = "jid"

[metrics]
bind = "127.0.0.1:0"

[probe]
interval = "{probe_interval}"

[health]
interval = "1s"

[[backend]]
name = "node1"
address = "{a1}"
{per_backend}

[[backend]]
name = "node2"
address = "{a2}"
{per_backend}

[[domain]]
name = "{DOMAIN}"
{per_pool}
"#,
        cert = cert.display(),
        key = key.display(),
        a1 = ej.proxied_addr(0),
        a2 = ej.proxied_addr(1),
    ))
}

/// What the node at `addr` offers a client that opens with `preamble` (a PROXY header).
fn node_offers(addr: SocketAddr, preamble: &[u8]) -> BTreeSet<String> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(preamble).unwrap();
    s.write_all(header(DOMAIN, None).as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("</stream:features>") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "node closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    mechanisms(&String::from_utf8_lossy(&got))
}

/// What the proxy shows a client before routing (no `from`, so before any node is chosen).
fn shown(proxy: &Proxy, pki: &TestPki) -> BTreeSet<String> {
    let addr = proxy.addr("direct", false);
    proxy.block_on(async {
        let mut raw = Raw::direct_tls(addr, DOMAIN, &pki.ca_path()).await;
        raw.send(&header(DOMAIN, None)).await;
        mechanisms(&raw.expect("</stream:features>").await)
    })
}

/// Log `user` in through `proxy`'s listener `listener` from `source`, optionally behind a
/// front balancer's `preamble`; returns the client and its own address.
fn login(
    proxy: &Proxy,
    pki: &TestPki,
    listener: &str,
    source: &str,
    preamble: &[u8],
    user: &str,
    resource: &str,
) -> (Raw, SocketAddr) {
    let ipv6 = source.contains(':');
    let addr = proxy.addr(listener, ipv6);
    proxy.block_on(async {
        let mut raw = Raw::tcp_from(addr, source.parse().unwrap()).await;
        let local = raw.local.unwrap();
        raw.send_bytes(preamble).await;
        raw.upgrade(DOMAIN, &pki.ca_path()).await;
        (
            raw.log_in(DOMAIN, user, &format!("pw-{user}"), resource)
                .await,
            local,
        )
    })
}

#[test]
fn ejabberd_cluster_behind_the_proxy_protocol() {
    let started = Instant::now();
    let mut ej = EjabberdCluster::start(2, DOMAIN).expect("ejabberd nodes start");
    let booted = started.elapsed();
    ej.join_all();
    let clustered = started.elapsed();
    let pki = TestPki::new(&[DOMAIN]);
    let v1 = Proxy::start(&config(&pki, &ej, "v1", false, "1h"));
    let v2 = Proxy::start(&config(&pki, &ej, "v2", true, "1s"));

    // One user homed on each node (the ring places users by name; both proxies agree).
    let home = |u: &str| v1.preference(&format!("{u}@{DOMAIN}"))[0].clone();
    let user_on = |node: &str| {
        (0..50)
            .map(|i| format!("user{i}"))
            .find(|u| home(u) == node)
            .expect("a user for each node")
    };
    let (alice, bob) = (user_on("node1"), user_on("node2"));
    for u in [&alice, &bob] {
        // Accounts live in the cluster's shared Mnesia: registered once, known everywhere.
        ej.register(0, u, &format!("pw-{u}"));
    }

    // 1. The node sees the client's own address and port, for both header versions and both
    //    IP families. IPv4 clients come from 127.0.0.2, the proxy's links from 127.0.0.1.
    for (proxy, version) in [(&v1, "v1"), (&v2, "v2")] {
        for source in ["127.0.0.2", "::1"] {
            let resource = format!("{version}-{}", source.replace([':', '.'], "_"));
            let (client, local) = login(proxy, &pki, "direct", source, b"", &alice, &resource);
            let session = ej.wait_session(0, &format!("{alice}@{DOMAIN}/{resource}"));
            assert_eq!(
                session.ip,
                local.ip().to_string(),
                "{version} from {source}"
            );
            assert_eq!(session.port, local.port(), "{version} from {source}");
            assert_ne!(session.ip, "127.0.0.1");
            assert_eq!(session.node, ej.node_name(0), "{alice} lives on node1");
            drop(client);
        }
    }

    // 2. Behind a front balancer: the address its PROXY header names goes on to the node.
    let front = b"PROXY TCP4 203.0.113.7 192.0.2.1 4711 5223\r\n";
    let (client, _) = login(&v2, &pki, "front", "127.0.0.1", front, &alice, "front");
    let session = ej.wait_session(0, &format!("{alice}@{DOMAIN}/front"));
    assert_eq!((session.ip.as_str(), session.port), ("203.0.113.7", 4711));
    drop(client);
    assert_eq!(
        v2.metric_value(
            "xmpp_lb_proxy_protocol_headers_total{listener=\"front\",result=\"accepted\"}"
        ),
        1.0
    );

    // 2b. A web client behind an HTTP balancer: the address its X-Forwarded-For names goes
    //     on to the node in the PROXY header, as for TCP clients.
    let web = v2.addr("web", false);
    let ws = v2.block_on(async {
        let mut ws = testkit::ws::open_plain(web, DOMAIN, &[("x-forwarded-for", "198.51.100.4")])
            .await
            .expect("handshake accepted");
        ws.log_in(DOMAIN, None, &alice, &format!("pw-{alice}"))
            .await;
        ws
    });
    let session = ej.wait_session(0, &format!("{alice}@{DOMAIN}/ws"));
    assert_eq!(session.ip, "198.51.100.4", "the WebSocket client's address");
    drop(ws);

    // 3. Users on different nodes of the cluster talk through the proxy.
    let (mut a, _) = login(&v2, &pki, "direct", "127.0.0.2", b"", &alice, "chat");
    let (mut b, _) = login(&v1, &pki, "direct", "::1", b"", &bob, "chat");
    let sessions = ej.sessions(0);
    let node_of = |jid: &str| {
        sessions
            .iter()
            .find(|s| s.jid == jid)
            .map(|s| s.node.clone())
            .unwrap_or_else(|| panic!("no session {jid}: {sessions:?}"))
    };
    assert_eq!(node_of(&format!("{alice}@{DOMAIN}/chat")), ej.node_name(0));
    assert_eq!(node_of(&format!("{bob}@{DOMAIN}/chat")), ej.node_name(1));
    v1.block_on(async {
        a.send(&format!(
            "<message to='{bob}@{DOMAIN}/chat' type='chat' id='m1'><body>hello from node1</body></message>"
        ))
        .await;
        b.expect("hello from node1").await;
        b.send(&format!(
            "<message to='{alice}@{DOMAIN}/chat' type='chat' id='m2'><body>hello from node2</body></message>"
        ))
        .await;
        a.expect("hello from node2").await;
    });
    drop((a, b));

    // 4. Features: what the proxy shows is what the node offers on that link (the PROXY
    //    listener, which refuses a connection without a header).
    let proxy_v1_header = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 5222\r\n";
    let before = node_offers(ej.proxied_addr(0), proxy_v1_header);
    assert_eq!(node_offers(ej.plain_addr(0), b""), before);
    assert!(
        before.contains("PLAIN") && before.contains("SCRAM-SHA-1"),
        "{before:?}"
    );
    assert_eq!(shown(&v1, &pki), before);
    assert_eq!(shown(&v2, &pki), before);

    // The nodes change their mechanisms under the running proxies.
    ej.disable_mechanisms(&["x-oauth2", "scram-sha-512", "digest-md5"]);
    let after = node_offers(ej.proxied_addr(0), proxy_v1_header);
    assert_ne!(after, before, "the reload changed what the nodes offer");
    assert!(after.contains("PLAIN"));

    // v1 re-probes only hourly: the next client still sees the old list, logs in anyway,
    // and the mismatch is counted and makes the proxy re-probe.
    assert_eq!(shown(&v1, &pki), before);
    let (client, _) = login(&v1, &pki, "direct", "127.0.0.2", b"", &alice, "stale");
    drop(client);
    assert_eq!(
        v1.metric_value("xmpp_lb_feature_mismatch_total{backend=\"node1\"}"),
        1.0
    );
    assert_eq!(shown(&v1, &pki), after, "the mismatch refreshed the cache");
    // v2 re-probes every second: it notices without any login.
    let noticed = wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        (shown(&v2, &pki) == after).then_some(())
    });
    assert!(noticed.is_some(), "the periodic probe never saw the change");

    // The proxy's own connections (probes, health checks) speak the PROXY protocol too.
    for p in [&v1, &v2] {
        assert_eq!(
            p.metric_value("xmpp_lb_backend_healthy{backend=\"node1\"}"),
            1.0
        );
        assert_eq!(
            p.metric_value("xmpp_lb_backend_healthy{backend=\"node2\"}"),
            1.0
        );
        // Probes succeeded, and none failed: the failure series is made by the first failure.
        assert!(
            p.metric_value("xmpp_lb_feature_probes_total{backend=\"node1\",result=\"ok\"}") >= 1.0
        );
        assert_eq!(
            p.metric("xmpp_lb_feature_probes_total{backend=\"node1\",result=\"failed\"}"),
            Some(0.0)
        );
    }
    eprintln!(
        "timings: 2 ejabberd nodes booted in {booted:?}, clustered at {clustered:?}, test done at {:?}",
        started.elapsed()
    );
}
