//! TLS between the proxy and a real Prosody node that requires it: `backend_tls = "starttls"`
//! (the proxy negotiates STARTTLS itself, then replays the client's header) and `"direct"`,
//! both verified against the test CA; a node whose certificate the configured CA did not
//! sign is refused cleanly. The node offers PLAIN only over TLS, so the mechanisms clients
//! are shown prove that the probe went over the same link as the logins.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use testkit::config::TestConfig;
use testkit::env::DOMAIN;
use testkit::logs::captured_logs;
use testkit::pki::TestPki;
use testkit::process::free_port;
use testkit::prosody::{ProsodyCluster, ProsodyOpts};
use testkit::proxy::Proxy;
use testkit::raw::{Raw, header, mechanisms};

/// One Prosody node requiring TLS: STARTTLS on its c2s port, direct TLS on another, both
/// with a certificate from the test CA; PLAIN is offered over TLS only.
fn node(pki: &TestPki) -> (ProsodyCluster, u16) {
    let direct = free_port(false).unwrap();
    let opts = ProsodyOpts {
        extra_modules: vec!["tls".into()],
        extra_config: format!(
            r#"ssl = {{ certificate = "{cert}"; key = "{key}" }}
c2s_require_encryption = true
allow_unencrypted_plain_auth = false
c2s_direct_tls_ports = {{ {direct} }}
c2s_direct_tls_interfaces = {{ "127.0.0.1" }}"#,
            cert = pki.cert_path(DOMAIN).display(),
            key = pki.key_path(DOMAIN).display(),
        ),
        ..ProsodyOpts::default()
    };
    let cluster = ProsodyCluster::start(1, DOMAIN, opts).expect("prosody starts");
    cluster.register("alice", "pw-alice");
    (cluster, direct)
}

/// A proxy with one backend, `node1` at `address`, reached over `backend_tls` (`starttls` or
/// `direct`) and verified against `tls_ca`.
fn proxy(pki: &TestPki, address: SocketAddr, backend_tls: &str, tls_ca: &Path) -> Proxy {
    Proxy::start(
        &TestConfig::new(
            &pki.cert_path(DOMAIN),
            &pki.key_path(DOMAIN),
            DOMAIN,
            &[address],
        )
        .backend_set("node1", "backend_tls", backend_tls)
        .backend_set("node1", "tls_ca", tls_ca.display().to_string()),
    )
}

/// What the node itself offers a client over direct TLS.
fn node_offers_over_tls(proxy: &Proxy, pki: &TestPki, direct: u16) -> BTreeSet<String> {
    proxy.block_on(async {
        let addr = SocketAddr::from(([127, 0, 0, 1], direct));
        let mut raw = Raw::direct_tls(addr, DOMAIN, &pki.ca_path()).await;
        raw.send(&header(DOMAIN, None)).await;
        mechanisms(&raw.expect("</stream:features>").await)
    })
}

#[test]
fn starttls_and_direct_tls_to_the_node_verified_against_the_ca() {
    let logs = captured_logs();
    let pki = TestPki::new(&[DOMAIN]);
    let (node, direct) = node(&pki);
    let ca = pki.ca_path();
    let links = [
        (node.addr(0), "starttls"),
        (SocketAddr::from(([127, 0, 0, 1], direct)), "direct"),
    ];
    for (address, link) in links {
        let p = proxy(&pki, address, link, &ca);
        // Over TLS the node offers PLAIN (and channel-binding -PLUS variants, which cannot
        // survive TLS ending at the proxy); in clear text it offers nothing but STARTTLS.
        let offered = node_offers_over_tls(&p, &pki, direct);
        assert!(offered.contains("PLAIN"), "{offered:?}");
        let expected: BTreeSet<String> = offered
            .into_iter()
            .filter(|m| !m.ends_with("-PLUS"))
            .collect();
        let client = p.block_on(async {
            let addr = p.addr("direct", false);
            let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
            raw.send(&header(DOMAIN, None)).await;
            let shown = mechanisms(&raw.expect("</stream:features>").await);
            assert_eq!(shown, expected, "{link}");
            Raw::login(addr, DOMAIN, &ca, "alice", "pw-alice").await
        });
        let session = node
            .sessions_detail(0)
            .into_iter()
            .find(|s| s.bare() == "alice@example.test")
            .expect("alice's session on the node");
        assert!(
            session.secure,
            "the node sees an encrypted link: {session:?}"
        );
        drop(client);
        assert!(node.wait_session(0, "alice@example.test", false, Duration::from_secs(10)));
        // Routed at the header (`from`): the node's own features come back over the link.
        let answer = p.block_on(async {
            let mut raw = Raw::direct_tls(p.addr("direct", false), DOMAIN, &ca).await;
            raw.send(&header(DOMAIN, Some("alice@example.test"))).await;
            let features = raw.expect("</stream:features>").await;
            assert_eq!(mechanisms(&features), expected, "{link}");
            raw.send(&testkit::raw::plain_auth("alice", "pw-alice"))
                .await;
            raw.expect_any(&["<success", "<failure"], Duration::from_secs(10))
                .await
        });
        assert!(answer.contains("<success"), "{link}: {answer}");
        assert_eq!(
            p.metric_value("xmpp_lb_backend_healthy{backend=\"node1\"}"),
            1.0
        );
    }

    // A CA that did not sign the node's certificate: the node is refused, the client is told
    // <remote-connection-failed/>, and the reason is logged.
    let other = TestPki::new(&[DOMAIN]);
    for tls in ["starttls", "direct"] {
        let address = if tls == "direct" {
            SocketAddr::from(([127, 0, 0, 1], direct))
        } else {
            node.addr(0)
        };
        let p = proxy(&pki, address, tls, &other.ca_path());
        // The log is shared by the passes: only lines this pass adds count.
        let refusals = || {
            logs.lines_with(&["backend connect failed", "TLS handshake"])
                .len()
        };
        let refused_before = refusals();
        let answer = p.block_on(async {
            let mut raw = Raw::direct_tls(p.addr("direct", false), DOMAIN, &ca).await;
            // A `from` routes at the header: the failure is the login's own connect.
            raw.send(&header(DOMAIN, Some("alice@example.test"))).await;
            raw.read_to_close(Duration::from_secs(15)).await
        });
        assert!(
            answer.contains("<remote-connection-failed"),
            "{tls}: {answer}"
        );
        assert!(
            p.metric_value("xmpp_lb_backend_connect_failures_total{backend=\"node1\"}") >= 1.0,
            "{tls}"
        );
        assert!(
            refusals() > refused_before,
            "{tls}: no new refusal logged: {}",
            logs.text()
        );
    }
}

#[test]
fn a_node_whose_mechanisms_change_is_re_probed_over_its_tls_link() {
    let logs = captured_logs();
    let pki = TestPki::new(&[DOMAIN]);
    let (node, direct) = node(&pki);
    let ca = pki.ca_path();
    let p = proxy(&pki, node.addr(0), "starttls", &ca);
    let shown = || {
        p.block_on(async {
            let mut raw = Raw::direct_tls(p.addr("direct", false), DOMAIN, &ca).await;
            raw.send(&header(DOMAIN, None)).await;
            mechanisms(&raw.expect("</stream:features>").await)
        })
    };
    let before = shown();
    assert!(before.contains("SCRAM-SHA-1"), "{before:?}");

    // The operator drops a mechanism and reloads the node.
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(node.config_path(0))
        .unwrap();
    std::io::Write::write_all(
        &mut cfg,
        b"\ndisable_sasl_mechanisms = { \"SCRAM-SHA-1\" }\n",
    )
    .unwrap();
    node.admin(0, "config:reload()").unwrap();
    node.admin(0, "module:reload(\"saslauth\", \"example.test\")")
        .unwrap();
    let after: BTreeSet<String> = node_offers_over_tls(&p, &pki, direct)
        .into_iter()
        .filter(|m| !m.ends_with("-PLUS"))
        .collect();
    assert!(
        !after.contains("SCRAM-SHA-1") && after.contains("PLAIN"),
        "{after:?}"
    );

    // The next client still sees the cached list; its login goes through, the mismatch is
    // counted and logged, and the proxy probes again.
    assert_eq!(shown(), before);
    let client = p.block_on(Raw::login(
        p.addr("direct", false),
        DOMAIN,
        &ca,
        "alice",
        "pw-alice",
    ));
    p.block_on(async { drop(client) });
    assert_eq!(
        p.metric_value("xmpp_lb_feature_mismatch_total{backend=\"node1\"}"),
        1.0
    );
    assert_eq!(
        logs.lines_with(&["offers other SASL mechanisms than the client was shown"])
            .len(),
        1
    );
    assert_eq!(shown(), after);
}
