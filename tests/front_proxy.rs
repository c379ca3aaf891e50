//! A front balancer in front of the proxy: a listener with `accept_proxy_protocol` believes
//! the PROXY header (v1 or v2) of its trusted peers, and the address it learns is what
//! subnet routing, the access log and the metrics go by. Real Prosody nodes behind, a raw
//! client writing the headers itself, and HAProxy (Debian's) as a real front with
//! `send-proxy-v2`. Headers that are missing, malformed or from an untrusted peer get a
//! clean refusal and a log line, and the proxy goes on serving.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::config::strings;
use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::logs::captured_logs;
use testkit::pki::TestPki;
use testkit::process::{free_port, spawn_child, terminate, wait_for};
use testkit::prosody::ProsodyCluster;
use testkit::proxy::Proxy;
use testkit::raw::{Raw, header};
use xmpp_lb::runtime::{Runtime, StateRegistry};
/// Three nodes and a proxy with a `front` listener (`tls = "auto"`) that trusts `trusted`,
/// routing by the client's own address (a /32 each), so that two loopback addresses route
/// differently.
fn env(nodes: usize, trusted: &[&str]) -> (ProsodyCluster, TestPki, Proxy) {
    let trusted = strings(trusted);
    let Env {
        cluster,
        pki,
        proxy,
        ..
    } = EnvBuilder::new(nodes)
        .users(&[("alice", "pw-alice")])
        .config(move |c| {
            let mut front = toml::Table::new();
            front.insert("accept_proxy_protocol".into(), true.into());
            front.insert("trusted_proxies".into(), trusted);
            c.key("subnet")
                .set("routing.ipv4_prefix", 32)
                .set("routing.ipv6_prefix", 128)
                .listener("front", "auto", front)
        })
        .start();
    (cluster, pki, proxy)
}

/// The node subnet routing gives a client at `ip`.
fn node_for(proxy: &Proxy, ip: &str) -> String {
    let rt = Runtime::build(proxy.config.clone(), &StateRegistry::default()).unwrap();
    xmpp_lb::route::explain::route_info(&rt, "alice@example.test", Some(ip.parse().unwrap()))
        .unwrap()
        .backend
}

/// A v2 header from a balancer: the client at `source` reached `destination`.
fn v2(source: &str, destination: &str) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (s, d))
        .build()
        .unwrap()
}

/// After `preamble` (the balancer's header), a STARTTLS or direct-TLS login of alice.
async fn login_after(
    addr: SocketAddr,
    preamble: &[u8],
    starttls: bool,
    ca: &std::path::Path,
) -> Raw {
    let mut raw = Raw::tcp(addr).await;
    raw.send_bytes(preamble).await;
    if starttls {
        raw.send(&header(DOMAIN, None)).await;
        raw.expect("</stream:features>").await;
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        raw.expect("<proceed").await;
    }
    raw.upgrade(DOMAIN, ca).await;
    raw.log_in(DOMAIN, "alice", "pw-alice", "front").await
}

/// The node index ("node2" → 1) holding alice's session.
fn node_of_alice(cluster: &mut ProsodyCluster) -> Vec<String> {
    cluster
        .nodes_with_session("alice@example.test")
        .into_iter()
        .map(|i| cluster.node_name(i).to_string())
        .collect()
}

#[test]
fn learned_addresses_drive_subnet_routing_logs_and_metrics() {
    let logs = captured_logs();
    let (mut cluster, pki, proxy) = env(3, &["127.0.0.1/32", "::1"]);
    let front = proxy.addr("front", false);
    let here = node_for(&proxy, "127.0.0.1");
    // Addresses whose node differs from the balancer's own, so a wrong source shows.
    let pick = |candidates: Vec<String>| {
        candidates
            .into_iter()
            .find(|ip| node_for(&proxy, ip) != here)
            .expect("an address routed elsewhere")
    };
    let v4 = pick((1..60).map(|i| format!("198.51.100.{i}")).collect());
    let v6 = pick((1..60).map(|i| format!("2001:db8::{i:x}")).collect());

    // v1 then STARTTLS; v2 then direct TLS.
    let cases = [
        (
            format!("PROXY TCP4 {v4} 192.0.2.1 40001 5222\r\n").into_bytes(),
            true,
            v4.clone(),
            format!("{v4}:40001"),
        ),
        (
            v2(&format!("[{v6}]:40002"), "[2001:db8::1]:5223"),
            false,
            v6.clone(),
            format!("[{v6}]:40002"),
        ),
    ];
    for (preamble, starttls, ip, client) in cases {
        let raw = proxy.block_on(login_after(front, &preamble, starttls, &pki.ca_path()));
        assert_eq!(
            node_of_alice(&mut cluster),
            vec![node_for(&proxy, &ip)],
            "{ip}"
        );
        proxy.block_on(async { raw.vanish() });
        assert!(
            wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
                (!logs
                    .lines_with(&["xmpp_lb::access", &format!("client={client}")])
                    .is_empty())
                .then_some(())
            })
            .is_some(),
            "no access-log line for {client}: {}",
            logs.text()
        );
        let line = &logs.lines_with(&["xmpp_lb::access", &format!("client={client}")])[0];
        assert!(line.contains("via=127.0.0.1:"), "{line}");
        assert!(
            line.contains("listener=front") && line.contains("subnet"),
            "{line}"
        );
        for i in 0..cluster.len() {
            assert!(
                cluster.wait_session(i, "alice@example.test", false, Duration::from_secs(10)),
                "alice's session on node {i} ended once her client vanished"
            );
        }
    }
    assert_eq!(
        proxy.metric_value(
            "xmpp_lb_proxy_protocol_headers_total{listener=\"front\",result=\"accepted\"}"
        ),
        2.0
    );
    assert_eq!(
        // Only the nodes that were given a connection count one.
        ["node1", "node2", "node3"]
            .iter()
            .filter_map(|n| proxy.metric(&format!(
                "xmpp_lb_routed_total{{backend=\"{n}\",source=\"subnet\"}}"
            )))
            .sum::<f64>(),
        2.0
    );
}

#[test]
fn bad_missing_or_untrusted_headers_are_refused_cleanly() {
    let logs = captured_logs();
    let (_cluster, pki, proxy) = env(1, &["127.0.0.1/32"]);
    let front = proxy.addr("front", false);
    let untrusted: IpAddr = "127.0.0.2".parse().unwrap();
    let closed_silently = |raw: &mut Raw| {
        proxy
            .block_on(async { raw.read_to_close(Duration::from_secs(10)).await })
            .is_empty()
    };

    // Trusted peer: no header, a malformed one, one cut short.
    for (bytes, result) in [
        (header(DOMAIN, None).into_bytes(), "missing"),
        (
            b"PROXY TCP4 999.0.0.1 192.0.2.1 1 2\r\n".to_vec(),
            "invalid",
        ),
        (b"PROXY TCP4 198.51.100.1 19".to_vec(), "incomplete"),
    ] {
        let mut raw = proxy.block_on(Raw::tcp(front));
        proxy.block_on(async {
            raw.send_bytes(&bytes).await;
            if result == "incomplete" {
                // The balancer gives up half-way: the socket closes.
                raw.send_bytes(b"").await;
            }
        });
        if result == "incomplete" {
            proxy.block_on(async { drop(raw) });
        } else {
            assert!(closed_silently(&mut raw), "{result}");
        }
        assert!(
            wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
                (proxy.metric(&format!(
                    "xmpp_lb_proxy_protocol_headers_total{{listener=\"front\",result=\"{result}\"}}"
                )) == Some(1.0))
                .then_some(())
            })
            .is_some(),
            "{result}"
        );
    }
    // An untrusted peer may not send one (it could claim any address) ...
    let mut raw = proxy.block_on(Raw::tcp_from(front, untrusted));
    proxy.block_on(raw.send_bytes(b"PROXY TCP4 198.51.100.1 192.0.2.1 1 2\r\n"));
    assert!(closed_silently(&mut raw));
    assert_eq!(
        proxy.metric_value(
            "xmpp_lb_proxy_protocol_headers_total{listener=\"front\",result=\"untrusted\"}"
        ),
        1.0
    );
    // ... and without one it is served as the client it is.
    let raw = proxy.block_on(async {
        let mut raw = Raw::tcp_from(front, untrusted).await;
        raw.send(&header(DOMAIN, None)).await;
        raw.expect("</stream:features>").await;
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        raw.expect("<proceed").await;
        raw.upgrade(DOMAIN, &pki.ca_path()).await;
        raw.log_in(DOMAIN, "alice", "pw-alice", "direct").await
    });
    proxy.block_on(async { drop(raw) });
    // A balancer's own connection (v2 LOCAL, a health check) is the balancer itself.
    let local = {
        use ppp::v2::{Builder, Command, Version};
        // Family and protocol unspecified (0x00): no addresses follow.
        Builder::new(Version::Two | Command::Local, 0x00)
            .build()
            .unwrap()
    };
    let raw = proxy.block_on(login_after(front, &local, false, &pki.ca_path()));
    proxy.block_on(async { drop(raw) });
    assert_eq!(
        proxy.metric_value(
            "xmpp_lb_proxy_protocol_headers_total{listener=\"front\",result=\"local\"}"
        ),
        1.0
    );
    // Every refusal was logged and counted as the proxy's doing, and nothing crashed.
    for reason in ["missing", "invalid", "incomplete", "untrusted"] {
        assert_eq!(
            proxy.metric_value(&format!(
                "xmpp_lb_connections_closed_total{{reason=\"proxy_protocol_{reason}\",side=\"proxy\"}}"
            )),
            1.0,
            "{reason}"
        );
    }
    let text = logs.text();
    assert_eq!(
        logs.lines_with(&["PROXY protocol header refused"]).len(),
        3,
        "{text}"
    );
    assert_eq!(
        logs.lines_with(&["outside trusted_proxies"]).len(),
        1,
        "{text}"
    );
    let raw = proxy.block_on(Raw::login(
        proxy.addr("direct", false),
        DOMAIN,
        &pki.ca_path(),
        "alice",
        "pw-alice",
    ));
    proxy.block_on(async { drop(raw) });
}

#[test]
fn haproxy_in_front_with_send_proxy_v2() {
    let logs = captured_logs();
    let (mut cluster, pki, proxy) = env(3, &["127.0.0.1/32"]);
    let front = proxy.addr("front", false);
    // A client address routed elsewhere than HAProxy's own 127.0.0.1.
    let here = node_for(&proxy, "127.0.0.1");
    let source = (2..60)
        .map(|i| format!("127.0.0.{i}"))
        .find(|ip| node_for(&proxy, ip) != here)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(false).unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format raw local0 err\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend xmpp\n  bind 127.0.0.1:{port}\n  default_backend lb\n\
             backend lb\n  server lb1 {front} send-proxy-v2\n"
        ),
    )
    .unwrap();
    // Debian puts it in /usr/sbin, which a non-root PATH may lack.
    let binary = if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    };
    let mut cmd = Command::new(binary);
    cmd.arg("-db").arg("-f").arg(&cfg);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut haproxy = spawn_child(cmd).expect("haproxy runs");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            std::net::TcpStream::connect(addr).ok()
        })
        .is_some(),
        "haproxy listens"
    );
    let raw = proxy.block_on(async {
        let mut raw = Raw::tcp_from(addr, source.parse().unwrap()).await;
        raw.upgrade(DOMAIN, &pki.ca_path()).await;
        raw.log_in(DOMAIN, "alice", "pw-alice", "haproxy").await
    });
    let local = raw.local.unwrap();
    assert_eq!(node_of_alice(&mut cluster), vec![node_for(&proxy, &source)]);
    proxy.block_on(async { drop(raw) });
    let client = format!("client={local}");
    assert!(
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            (!logs.lines_with(&["xmpp_lb::access", &client]).is_empty()).then_some(())
        })
        .is_some(),
        "no access line with {client}: {}",
        logs.text()
    );
    // (The readiness check above went through HAProxy too.)
    assert!(
        proxy.metric_value(
            "xmpp_lb_proxy_protocol_headers_total{listener=\"front\",result=\"accepted\"}"
        ) >= 1.0
    );
    let _ = terminate(&mut haproxy, Duration::from_secs(2));
}
