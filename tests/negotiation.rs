//! Negotiation details through the proxy, byte by byte, with a raw client over real TLS and
//! three real Prosody nodes: SASL retry as another user, no initial response, SASL2, and how a
//! client's departure reaches the node (vanished vs. explicit stream close).

use std::time::Duration;

use base64::Engine;
use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::prosody::ProsodyOpts;
use testkit::raw::{Raw, header, plain_auth};

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

fn env_with(opts: ProsodyOpts) -> Env {
    EnvBuilder::new(3).prosody(opts).users(USERS).start()
}

fn env() -> Env {
    env_with(ProsodyOpts::default())
}

/// Index of the node `xmpp-lb route` names for a user.
fn home(env: &Env, user: &str) -> usize {
    let node = env.proxy.route_cli(&format!("{user}@{DOMAIN}"));
    node.trim_start_matches("node").parse::<usize>().unwrap() - 1
}

/// Which nodes hold a session of `user`, as the servers say.
fn nodes_holding(env: &Env, user: &str) -> Vec<usize> {
    let jid = format!("{user}@{DOMAIN}");
    (0..3)
        .filter(|&i| env.cluster.sessions(i).iter().any(|s| s.starts_with(&jid)))
        .collect()
}

#[test]
fn a_failed_login_retried_as_another_user_is_rerouted() {
    let env = env();
    let (first, second) = ("bob", "alice");
    assert_ne!(
        home(&env, first),
        home(&env, second),
        "the test needs two users on different nodes"
    );
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    env.proxy.block_on(async {
        let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
        raw.send(&header(DOMAIN, None)).await;
        let features = raw.expect("</stream:features>").await;
        assert!(
            features.contains("<mechanism>PLAIN</mechanism>"),
            "{features}"
        );
        assert!(
            !features.contains("starttls"),
            "the node's STARTTLS offer must not reach a TLS client: {features}"
        );
        raw.send(&plain_auth(first, "wrong password")).await;
        raw.expect("<failure").await;
        raw.clear();
        raw.send(&plain_auth(second, "pw-alice")).await;
        raw.expect("<success").await;
        let bound = raw.restart_and_bind(DOMAIN, "raw").await;
        assert!(bound.contains("alice@example.test/raw"), "{bound}");
        assert_eq!(
            nodes_holding(&env, second),
            vec![home(&env, second)],
            "alice is on her own node"
        );
        assert!(nodes_holding(&env, first).is_empty());
    });
    let failures = env
        .proxy
        .metric_value("xmpp_lb_sasl_outcomes_total{mechanism=\"PLAIN\",outcome=\"failure\"}");
    assert_eq!(failures, 1.0);
}

#[test]
fn a_client_without_initial_response_gets_an_empty_challenge_and_is_routed_by_its_response() {
    let env = env();
    let user = "carol";
    let addr = env.proxy.addr("starttls", false);
    let ca = env.pki.ca_path();
    env.proxy.block_on(async {
        let mut raw = Raw::starttls(addr, DOMAIN, &ca).await;
        raw.send(&header(DOMAIN, None)).await;
        raw.expect("</stream:features>").await;
        raw.clear();
        raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>")
            .await;
        raw.expect("</challenge>").await;
        let payload =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw-carol"));
        raw.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{payload}</response>"
        ))
        .await;
        raw.expect("<success").await;
        raw.restart_and_bind(DOMAIN, "raw").await;
        assert_eq!(nodes_holding(&env, user), vec![home(&env, user)]);
    });
}

#[test]
fn sasl2_authenticate_is_routed_by_its_initial_response() {
    let opts = ProsodyOpts {
        extra_modules: vec!["sasl2".into()],
        ..ProsodyOpts::default()
    };
    let env = env_with(opts);
    let user = "alice";
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    env.proxy.block_on(async {
        let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
        raw.send(&header(DOMAIN, None)).await;
        let features = raw.expect("</stream:features>").await;
        assert!(features.contains("urn:xmpp:sasl:2"), "{features}");
        raw.clear();
        // Whitespace inside the base64 is allowed by SASL2.
        let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw-alice"));
        let (a, b) = payload.split_at(6);
        raw.send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{a}\n  {b}</initial-response>\
             <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>raw</software></user-agent></authenticate>"
        ))
        .await;
        let got = raw.expect("</success>").await;
        assert!(got.contains("alice@example.test"), "{got}");
    });
    let node = env.proxy.route_cli(&format!("{user}@{DOMAIN}"));
    assert_eq!(
        env.proxy.metric_value(&format!(
            "xmpp_lb_routed_total{{backend=\"{node}\",source=\"sasl\"}}"
        )),
        1.0
    );
}

/// Log in (routing by `from`), bind, enable resumable stream management; return the SM id.
async fn login_resumable(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    user: &str,
    pw: &str,
) -> (Raw, String) {
    let mut raw = Raw::direct_tls(addr, DOMAIN, ca)
        .await
        .log_in_from(DOMAIN, user, pw, "raw")
        .await;
    let id = raw.enable_sm().await;
    (raw, id)
}

/// Reconnect (routing by `from`) and try to resume `previd`; returns what the node answered.
async fn try_resume(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    user: &str,
    pw: &str,
    previd: &str,
) -> String {
    let jid = format!("{user}@{DOMAIN}");
    Raw::direct_tls(addr, DOMAIN, ca)
        .await
        .resume_sm(DOMAIN, Some(&jid), (user, pw), previd, 0)
        .await
}

#[test]
fn a_vanished_client_leaves_a_resumable_session_and_an_explicit_close_does_not() {
    let env = env();
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    env.proxy.block_on(async {
        // Vanish: TCP closed with no </stream:stream>; the node must keep the session.
        let (raw, id) = login_resumable(addr, &ca, "alice", "pw-alice").await;
        raw.vanish();
        let answer = try_resume(addr, &ca, "alice", "pw-alice", &id).await;
        assert!(
            answer.contains("<resumed"),
            "session should be resumable: {answer}"
        );

        // Explicit close: forwarded, so the node ends the session for good.
        let (mut raw, id) = login_resumable(addr, &ca, "bob", "pw-bob").await;
        raw.clear();
        raw.send("</stream:stream>").await;
        let got = raw.read_to_close(Duration::from_secs(10)).await;
        assert!(
            got.contains("</stream:stream>"),
            "the node answered the close: {got}"
        );
        let answer = try_resume(addr, &ca, "bob", "pw-bob", &id).await;
        assert!(
            answer.contains("<failed"),
            "a closed session must not resume: {answer}"
        );
    });
}
