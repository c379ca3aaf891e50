//! Per-source limits and failed-login throttling, against real Prosody nodes: concurrent
//! connections, connections not yet logged in, new connections and full TLS handshakes per
//! second, and bans for failed logins (per network and per account). Loopback source
//! addresses (127.0.0.0/8) stand in for many clients; loopback is taken off the allow-list.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use testkit::client::{Conn, login};
use testkit::config::{TestConfig, strings};
use testkit::env::{DOMAIN, Env, EnvBuilder, accounts};
use testkit::raw::{Raw, connector, connector_tls13, header};
use tokio_rustls::TlsConnector;

fn from(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Every per-source limit off, loopback not allowed, one address per source: each test turns
/// on what it checks.
fn base(c: TestConfig) -> TestConfig {
    c.set("sources.allow", strings(&[]))
        .set("sources.ipv4_prefix", 32)
        .set("sources.max_connections", 0)
        .set("sources.max_unauthenticated", 0)
        .set("sources.connections_per_second", 0.0)
        .set("sources.tls_handshakes_per_second", 0.0)
}

/// Whether a direct TLS connection from `127.0.0.LAST` gets through its handshake.
async fn handshakes(direct: SocketAddr, last: u8, tls: &TlsConnector) -> bool {
    Raw::direct_tls_from(direct, from(last), DOMAIN, tls)
        .await
        .is_ok()
}

fn refusals(env: &Env, limit: &str) -> f64 {
    env.proxy.metric_value(&format!(
        "xmpp_lb_source_refusals_total{{limit=\"{limit}\"}}"
    ))
}

#[test]
fn concurrent_connections_per_source_are_refused_before_tls_and_other_sources_go_on() {
    let people = accounts("c", 0..4);
    let env = EnvBuilder::new(2)
        .users(&people)
        .config(|c| base(c).set("sources.max_connections", 3))
        .start();
    let direct = env.proxy.addr("direct", false);
    let starttls = env.proxy.addr("starttls", false);
    let tls = connector(&env.ca());
    env.proxy.block_on(async {
        let mut held = Vec::new();
        for (user, password) in &people[..3] {
            let raw = Raw::direct_tls_from(direct, from(2), DOMAIN, &tls)
                .await
                .expect("under the limit");
            held.push(raw.log_in(DOMAIN, user, password, "held").await);
        }
        // A fourth from the same address: closed before the TLS handshake.
        assert!(
            Raw::direct_tls_from(direct, from(2), DOMAIN, &tls)
                .await
                .is_err(),
            "the fourth TLS connection from one source must be refused"
        );
        // Where a stream exists before TLS, the client is told why.
        let mut plain = Raw::tcp_from(starttls, from(2)).await;
        plain.send(&header(DOMAIN, None)).await;
        let said = plain.read_to_close(Duration::from_secs(5)).await;
        assert!(said.contains("<policy-violation"), "{said}");
        assert!(said.contains("too many connections"), "{said}");
        assert!(
            !said.contains("starttls"),
            "no features for a refused client: {said}"
        );
        // Another source is not affected.
        let (user, password) = &people[3];
        let other = Raw::direct_tls_from(direct, from(3), DOMAIN, &tls)
            .await
            .expect("another source");
        let mut other = other.log_in(DOMAIN, user, password, "other").await;
        other.ping(DOMAIN).await;
        // One leaves: its place is free again (once the proxy has seen the close).
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if Raw::direct_tls_from(direct, from(2), DOMAIN, &tls)
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the place never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The held sessions still work.
        for raw in &mut held {
            raw.ping(DOMAIN).await;
        }
    });
    assert!(refusals(&env, "connections") >= 2.0);
    assert_eq!(refusals(&env, "connection_rate"), 0.0);
    // The real client logs in from 127.0.0.1, its own source.
    let ca = env.ca();
    let (user, password) = &people[0];
    let out = login(
        &Conn::direct(direct, &ca),
        &format!("{user}@{DOMAIN}"),
        password,
    );
    assert_eq!(out["ok"], Value::Bool(true), "{out}");
}

#[test]
fn connections_not_yet_logged_in_are_bounded_per_source() {
    let people = accounts("u", 0..2);
    let env = EnvBuilder::new(1)
        .users(&people)
        .config(|c| base(c).set("sources.max_unauthenticated", 2))
        .start();
    let direct = env.proxy.addr("direct", false);
    let tls = connector(&env.ca());
    env.proxy.block_on(async {
        let first = Raw::direct_tls_from(direct, from(7), DOMAIN, &tls)
            .await
            .unwrap();
        let _second = Raw::direct_tls_from(direct, from(7), DOMAIN, &tls)
            .await
            .unwrap();
        assert!(!handshakes(direct, 7, &tls).await);
        // Once one of them has logged in, it no longer counts.
        let (user, password) = &people[0];
        let mut first = first.log_in(DOMAIN, user, password, "in").await;
        first.ping(DOMAIN).await;
        assert!(handshakes(direct, 7, &tls).await);
    });
    assert!(refusals(&env, "unauthenticated") >= 1.0);
}

#[test]
fn new_connections_and_full_handshakes_per_second_are_rate_limited_per_source() {
    let env = EnvBuilder::new(1)
        .config(|c| {
            base(c)
                .set("sources.connections_per_second", 1.0)
                .set("sources.connections_burst", 3)
        })
        .start();
    let direct = env.proxy.addr("direct", false);
    let tls = connector(&env.ca());
    env.proxy.block_on(async {
        for _ in 0..3 {
            Raw::direct_tls_from(direct, from(4), DOMAIN, &tls)
                .await
                .expect("within the burst");
        }
        assert!(!handshakes(direct, 4, &tls).await);
        assert!(handshakes(direct, 5, &tls).await);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(handshakes(direct, 4, &tls).await);
    });
    assert!(refusals(&env, "connection_rate") >= 1.0);

    // Full handshakes: resumed ones are free.
    let env = EnvBuilder::new(1)
        .config(|c| {
            base(c)
                .set("sources.tls_handshakes_per_second", 0.05)
                .set("sources.tls_handshakes_burst", 2)
        })
        .start();
    let direct = env.proxy.addr("direct", false);
    let resuming = connector_tls13(&env.ca());
    env.proxy.block_on(async {
        let full = Raw::direct_tls_from(direct, from(6), DOMAIN, &resuming)
            .await
            .unwrap();
        assert_eq!(
            full.tls_kind,
            Some(tokio_rustls::rustls::HandshakeKind::Full)
        );
        // The session ticket arrives after the handshake: read a little so it is stored.
        let mut full = full;
        full.send(&header(DOMAIN, None)).await;
        full.expect("</stream:features>").await;
        for _ in 0..3 {
            let mut again = Raw::direct_tls_from(direct, from(6), DOMAIN, &resuming)
                .await
                .expect("a resumed handshake costs nothing");
            assert_eq!(
                again.tls_kind,
                Some(tokio_rustls::rustls::HandshakeKind::Resumed)
            );
            again.send(&header(DOMAIN, None)).await;
            again.expect("</stream:features>").await;
        }
        // One full handshake is left in the bucket, then none.
        let fresh = connector(&env.ca());
        assert!(handshakes(direct, 6, &fresh).await);
        assert!(!handshakes(direct, 6, &fresh).await);
        // Ten at once from a fresh source: the burst (2) and no more get a handshake, however
        // the connections interleave.
        let tries = (0..10).map(|_| Raw::direct_tls_from(direct, from(8), DOMAIN, &fresh));
        let made = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count();
        assert_eq!(
            made, 2,
            "full handshakes let through from one source at once"
        );
    });
    assert!(refusals(&env, "tls_handshake_rate") >= 9.0);
}

#[test]
fn failed_logins_slow_then_ban_their_source_and_the_jid_is_never_logged() {
    let people = [("juliet", "capulet-secret"), ("nurse", "nurse-secret")];
    let logs = testkit::logs::captured_logs();
    let env = EnvBuilder::new(1)
        .users(&people)
        .config(|c| {
            base(c)
                .set("sources.logins.delay_after", 2)
                .set("sources.logins.delay", "700ms")
                .set("sources.logins.max_delay", "700ms")
                .set("sources.logins.ban_after", 4)
                .set("sources.logins.ban_time", "60s")
        })
        .start();
    let starttls = env.proxy.addr("starttls", false);
    let ca = env.ca();
    let slixmpp = |password: &str| {
        login(
            &Conn::starttls(starttls, &ca),
            &format!("juliet@{DOMAIN}"),
            password,
        )
    };
    // A real client guessing from 127.0.0.1: four wrong passwords.
    for _ in 0..4 {
        let out = slixmpp("wrong-guess");
        assert_eq!(out["ok"], Value::Bool(false), "{out}");
    }
    let delayed = env.proxy.metric_value("xmpp_lb_login_delays_total");
    assert!(
        delayed >= 2.0,
        "the third and fourth attempts wait: {delayed}"
    );
    assert_eq!(
        env.proxy
            .metric_value("xmpp_lb_login_bans_total{scope=\"source\"}"),
        1.0
    );
    // Banned: even the right password is refused, with a reason.
    let out = slixmpp("capulet-secret");
    assert_eq!(out["ok"], Value::Bool(false), "{out}");
    assert_eq!(
        out["stream_error"]["condition"], "policy-violation",
        "{out}"
    );
    // Another source is not banned.
    let direct = env.proxy.addr("direct", false);
    env.proxy.block_on(async {
        let tls = connector(&ca);
        let raw = Raw::direct_tls_from(direct, from(8), DOMAIN, &tls)
            .await
            .unwrap();
        let mut raw = raw.log_in(DOMAIN, "nurse", "nurse-secret", "r").await;
        raw.ping(DOMAIN).await;
        // The delay is real: measured on a source of its own.
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut raw = Raw::direct_tls_from(direct, from(9), DOMAIN, &tls)
                .await
                .unwrap();
            let (answer, took) = raw.try_plain(DOMAIN, "nurse", "wrong").await;
            assert!(answer.contains("<failure"), "{answer}");
            times.push(took);
        }
        assert!(times[0] < Duration::from_millis(600), "{times:?}");
        assert!(times[2] >= Duration::from_millis(700), "{times:?}");
    });
    let log = logs.text();
    assert!(log.contains("banned for failed logins"), "{log}");
    assert!(!log.contains("juliet"), "the JID must not be logged: {log}");
}

#[test]
fn failures_naming_one_account_from_many_sources_ban_that_account_only() {
    let people = [("romeo", "montague-secret"), ("tybalt", "tybalt-secret")];
    let env = EnvBuilder::new(1)
        .users(&people)
        .config(|c| {
            base(c)
                .set("sources.logins.ban_after", 0)
                .set("sources.logins.jid_delay_after", 0)
                .set("sources.logins.jid_ban_after", 3)
        })
        .start();
    let direct = env.proxy.addr("direct", false);
    let tls = connector(&env.ca());
    env.proxy.block_on(async {
        for last in 10..13 {
            let mut raw = Raw::direct_tls_from(direct, from(last), DOMAIN, &tls)
                .await
                .unwrap();
            let (answer, _) = raw.try_plain(DOMAIN, "romeo", "wrong").await;
            assert!(answer.contains("<failure"), "{answer}");
        }
        let mut raw = Raw::direct_tls_from(direct, from(13), DOMAIN, &tls)
            .await
            .unwrap();
        let (answer, _) = raw.try_plain(DOMAIN, "romeo", "montague-secret").await;
        assert!(answer.contains("<policy-violation"), "{answer}");
        let raw = Raw::direct_tls_from(direct, from(13), DOMAIN, &tls)
            .await
            .unwrap();
        let mut raw = raw.log_in(DOMAIN, "tybalt", "tybalt-secret", "t").await;
        raw.ping(DOMAIN).await;
    });
    assert_eq!(
        env.proxy
            .metric_value("xmpp_lb_login_bans_total{scope=\"jid\"}"),
        1.0
    );
    assert_eq!(env.proxy.metric_value("xmpp_lb_login_refusals_total"), 1.0);
}
