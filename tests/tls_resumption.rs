//! Fast reconnect, TLS side: a client that logged in through one proxy reconnects through
//! another proxy of the fleet (its own process state, the same `[resumption]` ticket key files)
//! and its TLS handshake is resumed from the first proxy's session ticket, over direct TLS and
//! STARTTLS alike, with a real login behind it each time on a real Prosody node. A proxy
//! holding other ticket keys falls back to a full handshake, and the login still works.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use testkit::config::{TestConfig, strings};
use testkit::pki::TestPki;
use testkit::prosody::{ProsodyCluster, ProsodyOpts};
use testkit::proxy::Proxy;
use testkit::raw::{Raw, connector_tls13};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::HandshakeKind;

const DOMAIN: &str = "example.test";
const USER: (&str, &str) = ("alice", "pw-alice");

/// One Prosody node, a test PKI, and the key files the proxies are given.
struct Env {
    cluster: ProsodyCluster,
    pki: TestPki,
    keys: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let pki = TestPki::new(&[DOMAIN]);
        let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::default()).expect("prosody");
        cluster.register(USER.0, USER.1);
        let keys = tempfile::tempdir().unwrap();
        Env { cluster, pki, keys }
    }

    /// A key file holding `secret` (as an operator would deploy it to every proxy).
    fn key_file(&self, name: &str, secret: &str) -> PathBuf {
        let path = self.keys.path().join(name);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        path
    }

    /// A proxy in front of the node whose `[resumption]` names `ticket_keys`.
    fn proxy(&self, ticket_keys: &[&Path]) -> Proxy {
        let files: Vec<String> = ticket_keys
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        Proxy::start(
            &TestConfig::for_nodes(&self.pki, &self.cluster)
                .set("resumption.tls_ticket_key_files", strings(&files)),
        )
    }

    /// Connect through `addr` (direct TLS or STARTTLS) with `client`, log in, check the stream
    /// is alive, close; returns the handshake kind the client saw.
    async fn login(
        &self,
        client: &TlsConnector,
        addr: SocketAddr,
        starttls: bool,
        resource: &str,
    ) -> HandshakeKind {
        let raw = if starttls {
            Raw::starttls_via(addr, DOMAIN, client).await
        } else {
            Raw::direct_tls_via(addr, DOMAIN, client).await
        };
        let kind = raw.tls_kind.expect("TLS is up");
        let mut raw = raw.log_in(DOMAIN, USER.0, USER.1, resource).await;
        raw.ping(DOMAIN).await;
        raw.send("</stream:stream>").await;
        raw.read_to_close(std::time::Duration::from_secs(10)).await;
        kind
    }
}

/// `xmpp_lb_tls_handshakes_total` of one listener and kind, as the proxy's scrape shows it;
/// 0 before the first such handshake (every listener's series exist from the start).
fn handshakes(proxy: &Proxy, listener: &str, kind: &str) -> Option<f64> {
    proxy.metric(&format!(
        "xmpp_lb_tls_handshakes_total{{kind=\"{kind}\",listener=\"{listener}\"}}"
    ))
}

const SECRET_A: &str = "dGhlIGZsZWV0J3MgdGlja2V0IHNlY3JldCwgc2hhcmVkIGJ5IGV2ZXJ5IHByb3h5";
const SECRET_B: &str = "YW5vdGhlciBmbGVldCdzIHNlY3JldDogaXRzIHRpY2tldHMgYXJlIG5vdCBvdXJz";

#[test]
fn a_reconnect_through_another_proxy_resumes_the_tls_session_direct_tls() {
    let env = Env::new();
    let key = env.key_file("tickets.key", SECRET_A);
    // Two proxies, as two machines of a fleet would run them: each reads the same file.
    let a = env.proxy(&[&key]);
    let b = env.proxy(&[&key]);
    let (a_addr, b_addr) = (a.addr("direct", false), b.addr("direct", false));
    assert_ne!(a_addr, b_addr);
    let client = connector_tls13(&env.pki.ca_path());

    let first = a.block_on(env.login(&client, a_addr, false, "first"));
    assert_eq!(first, HandshakeKind::Full);
    assert_eq!(handshakes(&a, "direct", "full"), Some(1.0));

    let second = a.block_on(env.login(&client, b_addr, false, "second"));
    assert_eq!(
        second,
        HandshakeKind::Resumed,
        "proxy B opened proxy A's ticket"
    );
    assert_eq!(handshakes(&b, "direct", "resumed"), Some(1.0));
    assert_eq!(handshakes(&b, "direct", "full"), Some(0.0));

    // And back: B's tickets open on A.
    let third = a.block_on(env.login(&client, a_addr, false, "third"));
    assert_eq!(third, HandshakeKind::Resumed);
    assert_eq!(handshakes(&a, "direct", "resumed"), Some(1.0));

    // A reload builds new TLS acceptors; their keys come from the same files and the clock,
    // so tickets issued before it still open.
    a.block_on(a.shared.reload()).expect("reload accepted");
    let fourth = a.block_on(env.login(&client, a_addr, false, "fourth"));
    assert_eq!(fourth, HandshakeKind::Resumed, "after a reload");
    assert_eq!(handshakes(&a, "direct", "resumed"), Some(2.0));
}

#[test]
fn a_reconnect_through_another_proxy_resumes_the_tls_session_starttls() {
    let env = Env::new();
    let key = env.key_file("tickets.key", SECRET_A);
    let a = env.proxy(&[&key]);
    let b = env.proxy(&[&key]);
    let client = connector_tls13(&env.pki.ca_path());

    let first = a.block_on(env.login(&client, a.addr("starttls", false), true, "first"));
    assert_eq!(first, HandshakeKind::Full);
    let second = a.block_on(env.login(&client, b.addr("starttls", false), true, "second"));
    assert_eq!(second, HandshakeKind::Resumed);
    assert_eq!(handshakes(&b, "starttls", "resumed"), Some(1.0));
    // A ticket from a STARTTLS session resumes over direct TLS too: same name, same keys.
    let third = a.block_on(env.login(&client, a.addr("direct", false), false, "third"));
    assert_eq!(third, HandshakeKind::Resumed);
    assert_eq!(handshakes(&a, "direct", "resumed"), Some(1.0));
}

#[test]
fn a_proxy_with_other_ticket_keys_does_a_full_handshake_and_the_login_works() {
    let env = Env::new();
    let key_a = env.key_file("a.key", SECRET_A);
    let key_b = env.key_file("b.key", SECRET_B);
    let a = env.proxy(&[&key_a]);
    let b = env.proxy(&[&key_b]);
    let client = connector_tls13(&env.pki.ca_path());

    let first = a.block_on(env.login(&client, a.addr("direct", false), false, "first"));
    assert_eq!(first, HandshakeKind::Full);
    let second = a.block_on(env.login(&client, b.addr("direct", false), false, "second"));
    assert_eq!(second, HandshakeKind::Full, "B cannot open A's ticket");
    assert_eq!(handshakes(&b, "direct", "full"), Some(1.0));
    assert_eq!(handshakes(&b, "direct", "resumed"), Some(0.0));
    // After a rotation that lists A's secret second, B opens A's tickets again.
    let c = env.proxy(&[&key_b, &key_a]);
    let a_ticket = connector_tls13(&env.pki.ca_path());
    a.block_on(env.login(&a_ticket, a.addr("direct", false), false, "third"));
    let fourth = a.block_on(env.login(&a_ticket, c.addr("direct", false), false, "fourth"));
    assert_eq!(fourth, HandshakeKind::Resumed);
}
