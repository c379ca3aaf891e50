//! What one client connection may make the proxy do before it is logged in, against real
//! Prosody nodes with a raw client over real TLS: logins may not be pipelined across nodes,
//! a connection moves to another node for a retry a few times at most, a stream routed by its
//! header takes no login slot until it starts a login, and the stream restarted after SASL
//! success stays in the domain it authenticated for.

use std::time::Duration;

use testkit::config::TestConfig;
use testkit::env::{DOMAIN, Env, EnvBuilder, accounts};
use testkit::raw::{Raw, header, plain_auth};
const WAIT: Duration = Duration::from_secs(10);

/// `nodes` Prosody nodes with users `u1..u12`, and the proxy (routing by JID) with `edit` made
/// to its configuration.
fn env(nodes: usize, edit: impl FnOnce(TestConfig) -> TestConfig + 'static) -> Env {
    EnvBuilder::new(nodes)
        .users(&accounts("u", 1..=12))
        .config(edit)
        .start()
}

/// Two users whose home nodes differ.
fn users_on_two_nodes(env: &Env) -> (String, String) {
    let home = |u: &str| env.proxy.preference(&format!("{u}@{DOMAIN}"))[0].clone();
    let first = "u1".to_string();
    let second = (2..=12)
        .map(|i| format!("u{i}"))
        .find(|u| home(u) != home(&first))
        .expect("two users on different nodes");
    (first, second)
}

/// Every connection the proxy opened to a node for a client, over all nodes and key sources.
fn routed_total(env: &Env) -> f64 {
    let scrape = env.proxy.scrape();
    scrape
        .lines()
        .filter(|l| l.starts_with("xmpp_lb_routed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn opened(env: &Env) -> Raw {
    let mut raw =
        Raw::direct_tls(env.proxy.addr("direct", false), DOMAIN, &env.pki.ca_path()).await;
    raw.send(&header(DOMAIN, None)).await;
    raw.expect("</stream:features>").await;
    raw.clear();
    raw
}

#[test]
fn logins_pipelined_across_nodes_are_refused() {
    let env = env(3, |c| c);
    let (first, second) = users_on_two_nodes(&env);
    env.proxy.block_on(async {
        let mut raw = opened(&env).await;
        // Two logins in one write: the second names a user on another node before the first
        // node answered. It may not open a second node connection.
        let both = format!(
            "{}{}",
            plain_auth(&first, "wrong"),
            plain_auth(&second, &format!("pw-{second}"))
        );
        raw.send(&both).await;
        let got = raw.read_to_close(WAIT).await;
        assert!(got.contains("<policy-violation"), "{got}");
        assert!(!got.contains("<success"), "{got}");
    });
    assert_eq!(routed_total(&env), 1.0, "one node connection");
    let jid = format!("{second}@{DOMAIN}");
    assert!(
        (0..3).all(|i| !env.cluster.has_session(i, &jid)),
        "the pipelined login reached no node"
    );
}

#[test]
fn a_connection_moves_for_a_retry_as_another_user_three_times_at_most() {
    let env = env(3, |c| c);
    let (a, b) = users_on_two_nodes(&env);
    env.proxy.block_on(async {
        let mut raw = opened(&env).await;
        // The first login is routed; each retry as the other user moves the connection.
        for (n, user) in [&a, &b, &a, &b].into_iter().enumerate() {
            raw.send(&plain_auth(user, "wrong")).await;
            let got = raw.expect("</failure>").await;
            assert!(got.contains("<not-authorized"), "attempt {n}: {got}");
            raw.clear();
        }
        raw.send(&plain_auth(&a, &format!("pw-{a}"))).await;
        let got = raw.read_to_close(WAIT).await;
        assert!(got.contains("<policy-violation"), "{got}");
        assert!(got.contains("too many logins"), "{got}");
    });
    assert_eq!(routed_total(&env), 4.0, "the first node and three moves");
}

#[test]
fn a_stream_routed_by_its_header_takes_no_login_slot_until_it_starts_a_login() {
    // One node, one login at a time, a short queue wait: a client that names itself in its
    // header and then says nothing must not keep everyone else from logging in.
    let env = env(1, |c| {
        c.set("admission.max_negotiations", 1)
            .set("admission.queue_timeout", "3s")
    });
    env.proxy.block_on(async {
        let addr = env.proxy.addr("direct", false);
        let ca = env.pki.ca_path();
        let mut idle = Raw::direct_tls(addr, DOMAIN, &ca).await;
        idle.send(&header(DOMAIN, Some(&format!("u1@{DOMAIN}"))))
            .await;
        idle.expect("</stream:features>").await;
        // Routed at once: the node's own features came back. Now another user logs in.
        let other = tokio::time::timeout(WAIT, Raw::login(addr, DOMAIN, &ca, "u2", "pw-u2"))
            .await
            .expect("u2 logs in while u1 idles");
        drop(other);
        // The idle client's login still works: the slot is taken when it starts.
        idle.clear();
        idle.send(&plain_auth("u1", "pw-u1")).await;
        let got = idle.expect_any(&["<success", "<failure"], WAIT).await;
        assert!(got.contains("<success"), "{got}");
    });
    // Nobody was refused: node1's counter is still at the zero it starts at.
    assert_eq!(
        env.proxy
            .metric("xmpp_lb_admission_refused_total{backend=\"node1\"}"),
        Some(0.0)
    );
}

#[test]
fn the_restarted_stream_stays_in_the_domain_it_authenticated_for() {
    let env = env(1, |c| c);
    env.proxy.block_on(async {
        let mut raw = opened(&env).await;
        raw.send(&plain_auth("u1", "pw-u1")).await;
        raw.expect("<success").await;
        raw.clear();
        raw.send(&header("other.test", None)).await;
        let got = raw.read_to_close(WAIT).await;
        assert!(got.contains("<host-unknown"), "{got}");
    });
    // Refused by the proxy, not merely passed to the node for it to refuse.
    assert_eq!(
        env.proxy
            .metric_value("xmpp_lb_stream_errors_sent_total{condition=\"host-unknown\"}"),
        1.0
    );
}
