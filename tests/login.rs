//! Logging in through the proxy with a real client (slixmpp) to three real Prosody nodes:
//! STARTTLS and direct TLS, with and without `from`, PLAIN and SCRAM, IPv4 and IPv6; each user
//! lands on the node `xmpp-lb route` names, which the server itself confirms.

use serde_json::Value;
use testkit::client::{node_seen, run_client};
use testkit::env::{DOMAIN, Env, EnvBuilder};
/// With backends node1..node3 these spread over all three nodes (golden ring placement):
/// alice → node1, bob → node2, carol → node3; juliet and romeo both → node2.
const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
    ("juliet", "pw-juliet"),
    ("romeo", "pw-romeo"),
];

fn env() -> Env {
    EnvBuilder::new(3).users(USERS).start()
}

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

/// Log `user` in through listener `listener` with the given TLS style and options.
fn login(env: &Env, user: &str, listener: &str, tls: &str, ipv6: bool, extra: &[&str]) -> Value {
    let addr = env.proxy.addr(listener, ipv6);
    let jid = format!("{user}@{DOMAIN}");
    let port = addr.port().to_string();
    let host = addr.ip().to_string();
    let ca = env.pki.ca_path();
    let mut args = vec![
        "login",
        "--jid",
        &jid,
        "--password",
        password(user),
        "--host",
        &host,
        "--port",
        &port,
        "--tls",
        tls,
        "--ca",
        ca.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run_client(&args);
    assert_eq!(
        out["ok"],
        Value::Bool(true),
        "login of {user} via {listener}/{tls} failed: {out}"
    );
    out
}

#[test]
fn starttls_logins_land_where_route_says_with_plain_and_scram() {
    let env = env();
    for (user, mech) in [
        ("alice", "PLAIN"),
        ("bob", "SCRAM-SHA-1"),
        ("carol", "PLAIN"),
        ("alice", "SCRAM-SHA-1"),
    ] {
        let out = login(&env, user, "starttls", "starttls", false, &["--mech", mech]);
        assert_eq!(out["mech"], mech, "{out}");
        let expected = env.proxy.route_cli(&format!("{user}@{DOMAIN}"));
        assert_eq!(node_seen(&out), expected, "{user} via STARTTLS/{mech}");
    }
    // Three users, three different nodes: the routing really spreads.
    let nodes: std::collections::HashSet<_> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| env.proxy.route_cli(&format!("{u}@{DOMAIN}")))
        .collect();
    assert_eq!(nodes.len(), 3);
    assert!(
        env.proxy
            .metric_value("xmpp_lb_routed_total{backend=\"node1\",source=\"sasl\"}")
            >= 2.0
    );
}

#[test]
fn direct_tls_logins_land_where_route_says() {
    let env = env();
    for (user, mech) in [
        ("alice", "SCRAM-SHA-1"),
        ("bob", "PLAIN"),
        ("carol", "SCRAM-SHA-1"),
    ] {
        let out = login(&env, user, "direct", "direct", false, &["--mech", mech]);
        assert_eq!(
            node_seen(&out),
            env.proxy.route_cli(&format!("{user}@{DOMAIN}")),
            "{user}"
        );
    }
    let direct = env
        .proxy
        .metric_value("xmpp_lb_connections_total{listener=\"direct\",tls=\"direct\"}");
    assert_eq!(direct, 3.0);
}

#[test]
fn from_attribute_routes_at_the_header_over_both_tls_styles() {
    let env = env();
    for (user, listener, tls) in [
        ("alice", "starttls", "starttls"),
        ("carol", "direct", "direct"),
        ("bob", "starttls", "starttls"),
    ] {
        let out = login(
            &env,
            user,
            listener,
            tls,
            false,
            &["--send-from", "--mech", "SCRAM-SHA-1"],
        );
        assert_eq!(
            node_seen(&out),
            env.proxy.route_cli(&format!("{user}@{DOMAIN}")),
            "{user}"
        );
    }
    // Each node counts the connections of each source it was given (from zero).
    let routed = |n: &str, source: &str| {
        env.proxy.metric(&format!(
            "xmpp_lb_routed_total{{backend=\"{n}\",source=\"{source}\"}}"
        ))
    };
    let nodes = ["node1", "node2", "node3"];
    let from: f64 = nodes.iter().filter_map(|n| routed(n, "from")).sum();
    assert_eq!(from, 3.0, "all three were routed by the header's from");
    for n in nodes {
        assert_eq!(routed(n, "sasl"), Some(0.0), "nobody was routed by SASL");
    }
}

#[test]
fn auto_port_serves_starttls_and_direct_tls() {
    let env = env();
    let a = login(&env, "alice", "auto", "starttls", false, &[]);
    let b = login(&env, "bob", "auto", "direct", false, &[]);
    assert_eq!(
        node_seen(&a),
        env.proxy.route_cli(&format!("alice@{DOMAIN}"))
    );
    assert_eq!(node_seen(&b), env.proxy.route_cli(&format!("bob@{DOMAIN}")));
    assert_eq!(
        env.proxy
            .metric_value("xmpp_lb_connections_total{listener=\"auto\",tls=\"starttls\"}"),
        1.0
    );
    assert_eq!(
        env.proxy
            .metric_value("xmpp_lb_connections_total{listener=\"auto\",tls=\"direct\"}"),
        1.0
    );
}

#[test]
fn ipv6_clients_are_served() {
    let env = env();
    let out = login(&env, "carol", "starttls", "starttls", true, &[]);
    assert_eq!(
        node_seen(&out),
        env.proxy.route_cli(&format!("carol@{DOMAIN}"))
    );
}

#[test]
fn the_server_itself_holds_each_session_on_the_routed_node() {
    let env = env();
    for user in ["alice", "bob", "carol"] {
        let expected = env.proxy.route_cli(&format!("{user}@{DOMAIN}"));
        let idx: usize = expected
            .trim_start_matches("node")
            .parse::<usize>()
            .unwrap()
            - 1;
        let addr = env.proxy.addr("starttls", false);
        let held = testkit::client::hold(
            &format!("{user}@{DOMAIN}"),
            password(user),
            addr,
            "starttls",
            &env.pki.ca_path(),
            5,
        );
        let jid = format!("{user}@{DOMAIN}");
        for i in 0..3 {
            let sessions = env.cluster.sessions(i);
            let has = sessions.iter().any(|s| s.starts_with(&jid));
            assert_eq!(
                has,
                i == idx,
                "node{} sessions {sessions:?} (expected {user} on {expected})",
                i + 1
            );
        }
        drop(held);
    }
}

#[test]
fn two_users_on_one_node_chat_through_the_proxy() {
    let env = env();
    assert_eq!(
        env.proxy.route_cli(&format!("juliet@{DOMAIN}")),
        env.proxy.route_cli(&format!("romeo@{DOMAIN}"))
    );
    let addr = env.proxy.addr("starttls", false);
    let port = addr.port().to_string();
    let ca = env.pki.ca_path();
    let out = run_client(&[
        "chat",
        "--a",
        &format!("juliet@{DOMAIN}"),
        "--pa",
        password("juliet"),
        "--b",
        &format!("romeo@{DOMAIN}"),
        "--pb",
        password("romeo"),
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "starttls",
        "--ca",
        ca.to_str().unwrap(),
        "--body",
        "Wherefore art thou? <&> ünïcödé",
    ]);
    assert_eq!(out["ok"], Value::Bool(true), "{out}");
    assert_eq!(out["received_by_b"], "Wherefore art thou? <&> ünïcödé");
}

#[test]
fn a_dead_home_node_sends_its_users_to_the_next_node_on_the_ring() {
    let mut env = env();
    let jid = format!("alice@{DOMAIN}");
    let preference = env.proxy.preference(&jid);
    let home: usize = preference[0]
        .trim_start_matches("node")
        .parse::<usize>()
        .unwrap()
        - 1;
    env.cluster.stop_node(home);
    let out = login(&env, "alice", "starttls", "starttls", false, &[]);
    assert_eq!(
        node_seen(&out),
        preference[1],
        "alice falls over to her second node"
    );
    // Users of other nodes do not move.
    let bob_home = env.proxy.route_cli(&format!("bob@{DOMAIN}"));
    if bob_home != preference[0] {
        let out = login(&env, "bob", "direct", "direct", false, &[]);
        assert_eq!(node_seen(&out), bob_home);
    }
    assert!(
        env.proxy.metric_value(&format!(
            "xmpp_lb_backend_connect_failures_total{{backend=\"{}\"}}",
            preference[0]
        )) >= 1.0
    );
    // Back up: once health checks see it again (rise), alice goes home again.
    env.cluster.restart_node(home);
    let series = format!("xmpp_lb_backend_healthy{{backend=\"{}\"}}", preference[0]);
    let t0 = std::time::Instant::now();
    while env.proxy.metric(&series) != Some(1.0) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(15),
            "{} never came back",
            preference[0]
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = login(&env, "alice", "starttls", "starttls", false, &[]);
    assert_eq!(node_seen(&out), preference[0]);
}
