//! Fast reconnect through a fleet of proxies, against real Prosody nodes with mod_smacks and the
//! community SASL2, Bind 2, FAST and inline-SM modules: stream-management ids wrapped by one
//! proxy are verified and unwrapped by another (a separate process with the same keys), the
//! session's node holds the session while the client is away, and what was sent to it meanwhile
//! arrives after the resume with the right `h` counters. After the ring changed, a SASL2 inline
//! resume follows its id to the old node, and so does a legacy one after a PLAIN login (the
//! login is replayed there).

use std::time::Duration;

use testkit::config::{TestConfig, strings};
use testkit::env::accounts;
use testkit::pki::TestPki;
use testkit::prosody::{ProsodyCluster, ProsodyOpts};
use testkit::proxy::{Proxy, ProxyProcess};
use testkit::raw::{Raw, attr};
use testkit::sasl2::{Authenticate, Client, HT_SHA_256_NONE, NS_CLIENT, new_user_agent_id};

const DOMAIN: &str = "example.test";
const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
    ("dave", "pw-dave"),
];
const WAIT: Duration = Duration::from_secs(10);

/// Three Prosody nodes, and the fleet's key files.
struct Fleet {
    pki: TestPki,
    cluster: ProsodyCluster,
    keys: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let pki = TestPki::new(&[DOMAIN]);
        let cluster = ProsodyCluster::start(3, DOMAIN, ProsodyOpts::fast_reconnect())
            .expect("prosody nodes start");
        cluster.register_many(USERS);
        let many = accounts("u", 1..=24);
        let many: Vec<(&str, &str)> = many.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
        cluster.register_many(&many);
        let keys = tempfile::tempdir().unwrap();
        std::fs::write(
            keys.path().join("sm.key"),
            "fleet-shared stream management secret, 2026-11\n",
        )
        .unwrap();
        std::fs::write(
            keys.path().join("other.key"),
            "some other fleet's secret, not shared with ours\n",
        )
        .unwrap();
        Fleet { pki, cluster, keys }
    }

    /// The configuration every proxy of the fleet runs (with `key` as its SM key file).
    fn config(&self, key: &str) -> TestConfig {
        self.config_with(key, 3)
    }

    /// The same with only the first `nodes` nodes.
    fn config_with(&self, key: &str, nodes: usize) -> TestConfig {
        let backends: Vec<_> = (0..nodes).map(|i| self.cluster.addr(i)).collect();
        let key_file = self.keys.path().join(key).display().to_string();
        TestConfig::new(
            &self.pki.cert_path(DOMAIN),
            &self.pki.key_path(DOMAIN),
            DOMAIN,
            &backends,
        )
        .set("resumption.sm_key_files", strings(&[&key_file]))
    }

    /// The node that holds a session of `user` (hibernating or not), if exactly one does.
    fn holder(&mut self, user: &str) -> Option<usize> {
        let nodes = self.cluster.nodes_with_session(&format!("{user}@{DOMAIN}"));
        (nodes.len() == 1).then(|| nodes[0])
    }

    fn wait_hibernating(&self, node: usize, user: &str) {
        let jid = format!("{user}@{DOMAIN}");
        let ok = testkit::process::wait_for(WAIT, Duration::from_millis(50), || {
            self.cluster
                .sessions_detail(node)
                .iter()
                .any(|s| s.bare() == jid && s.hibernating)
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "{user}'s session never hibernated on node {}",
            node + 1
        );
    }
}

/// Log in through `addr` (direct TLS), enable resumable stream management, and exchange two
/// pings after it (so both sides' `h` are 2). Returns the client and the id it was given.
async fn login_resumable_h2(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    user: &str,
    pw: &str,
) -> (Raw, String) {
    let mut raw = Raw::login(addr, DOMAIN, ca, user, pw).await;
    let id = raw.enable_sm().await;
    raw.ping(DOMAIN).await;
    raw.ping(DOMAIN).await;
    (raw, id)
}

/// A fresh connection through `addr`: log in as `user` (no bind), then ask to resume `previd`
/// having received `h` stanzas. Returns the client and everything received after `<resume/>`
/// up to `<resumed/>` or `<failed/>`.
async fn resume(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    user: &str,
    pw: &str,
    previd: &str,
    h: u32,
) -> (Raw, String) {
    let mut raw = Raw::direct_tls(addr, DOMAIN, ca).await;
    let got = raw.resume_sm(DOMAIN, None, (user, pw), previd, h).await;
    (raw, got)
}

/// Send `n` chat messages from `from` to the full JID `to`, logged in directly on the node at
/// `node` (the nodes are not clustered: only a sender on the session's node reaches it).
async fn send_messages(node: std::net::SocketAddr, from: (&str, &str), to: &str, n: usize) {
    let mut raw = Raw::tcp(node)
        .await
        .log_in(DOMAIN, from.0, from.1, "sender")
        .await;
    for i in 1..=n {
        raw.send(&format!(
            "<message to='{to}' type='chat' id='m{i}'><body>while away {i}</body></message>"
        ))
        .await;
    }
    raw.ping(DOMAIN).await;
    raw.send("</stream:stream>").await;
    raw.read_to_close(WAIT).await;
}

#[test]
fn a_session_enabled_through_one_proxy_resumes_through_another_process() {
    let mut fleet = Fleet::new();
    let a = Proxy::start(&fleet.config("sm.key"));
    let b = ProxyProcess::start(&fleet.config("sm.key"));
    let ca = fleet.pki.ca_path();
    let (away, id) = a.block_on(login_resumable_h2(
        a.addr("direct", false),
        &ca,
        "alice",
        "pw-alice",
    ));
    assert!(id.starts_with("xlb1."), "the id is wrapped: {id}");
    let node = fleet.holder("alice").expect("alice has one session");
    let name = format!("node{}", node + 1);
    assert!(
        id.contains(&format!(".{}.", base64url(&name))),
        "{id} names {name}"
    );
    assert_eq!(
        a.metric_value(&format!(
            "xmpp_lb_sm_ids_wrapped_total{{backend=\"{name}\"}}"
        )),
        1.0
    );

    // The connection is cut: no stream close reaches the node, which keeps the session.
    away.vanish();
    fleet.wait_hibernating(node, "alice");
    a.block_on(send_messages(
        fleet.cluster.addr(node),
        ("bob", "pw-bob"),
        &format!("alice@{DOMAIN}/raw"),
        3,
    ));

    // Back through the other proxy process.
    let (mut back, got) = a.block_on(resume(b.addr("direct"), &ca, "alice", "pw-alice", &id, 2));
    assert!(got.contains("<resumed"), "resumed: {got}");
    assert_eq!(
        attr(&got, "<resumed", "previd"),
        id,
        "the client sees its own id again"
    );
    assert_eq!(
        attr(&got, "<resumed", "h"),
        "2",
        "the node handled both pings"
    );
    a.block_on(async {
        for i in 1..=3 {
            back.expect(&format!("while away {i}")).await;
        }
        back.ping(DOMAIN).await;
    });
    assert_eq!(fleet.holder("alice"), Some(node), "same node, one session");
    assert_eq!(
        b.metric_value("xmpp_lb_resume_ids_total{check=\"valid\"}"),
        1.0
    );
    assert_eq!(
        b.metric_value(&format!(
            "xmpp_lb_resumes_total{{backend=\"{name}\",kind=\"legacy\",result=\"resumed\"}}"
        )),
        1.0
    );
}

#[test]
fn forged_and_foreign_ids_reach_the_node_untouched_and_fail() {
    let mut fleet = Fleet::new();
    let a = Proxy::start(&fleet.config("sm.key"));
    // A proxy of another fleet: it cannot verify our ids.
    let stranger = Proxy::start(&fleet.config("other.key"));
    let ca = fleet.pki.ca_path();
    let addr = a.addr("direct", false);
    let (away, id) = a.block_on(login_resumable_h2(addr, &ca, "carol", "pw-carol"));
    away.vanish();
    let node = fleet.holder("carol").expect("one session");
    fleet.wait_hibernating(node, "carol");

    // The same id with its node swapped for another: the MAC does not match.
    let parts: Vec<&str> = id.splitn(5, '.').collect();
    let other = format!("node{}", (node + 1) % 3 + 1);
    let forged = format!(
        "xlb1.{}.{}.{}.{}",
        parts[1],
        base64url(&other),
        parts[3],
        parts[4]
    );
    let (_, got) = a.block_on(resume(addr, &ca, "carol", "pw-carol", &forged, 2));
    assert!(got.contains("<failed"), "a forged id fails: {got}");
    assert_eq!(
        a.metric_value("xmpp_lb_resume_ids_total{check=\"bad_mac\"}"),
        1.0
    );
    let failed = format!(
        "xmpp_lb_resumes_total{{backend=\"node{}\",kind=\"legacy\",result=\"failed\"}}",
        node + 1
    );
    assert_eq!(a.metric_value(&failed), 1.0);

    // A proxy without our key passes the id on as it is: the node does not know it.
    let (_, got) = a.block_on(resume(
        stranger.addr("direct", false),
        &ca,
        "carol",
        "pw-carol",
        &id,
        2,
    ));
    assert!(got.contains("<failed"), "{got}");
    assert_eq!(
        stranger.metric_value("xmpp_lb_resume_ids_total{check=\"unknown_key\"}"),
        1.0
    );

    // The real id still works (a failed attempt does not end the hibernating session).
    let (_, got) = a.block_on(resume(addr, &ca, "carol", "pw-carol", &id, 2));
    assert!(got.contains("<resumed"), "{got}");
    assert_eq!(fleet.holder("carol"), Some(node));
}

#[test]
fn an_explicit_close_ends_the_session_and_is_not_resumable() {
    let mut fleet = Fleet::new();
    let a = Proxy::start(&fleet.config("sm.key"));
    let ca = fleet.pki.ca_path();
    let addr = a.addr("direct", false);
    let (mut leaving, id) = a.block_on(login_resumable_h2(addr, &ca, "dave", "pw-dave"));
    let node = fleet.holder("dave").expect("one session");
    a.block_on(async {
        leaving.send("</stream:stream>").await;
        leaving.read_to_close(WAIT).await;
    });
    assert!(
        fleet
            .cluster
            .wait_session(node, &format!("dave@{DOMAIN}"), false, WAIT),
        "the close reached the node, which ended the session"
    );
    let (_, got) = a.block_on(resume(addr, &ca, "dave", "pw-dave", &id, 2));
    assert!(got.contains("<failed"), "{got}");
    assert_eq!(
        a.metric_value(&format!(
            "xmpp_lb_resumes_total{{backend=\"node{}\",kind=\"legacy\",result=\"failed\"}}",
            node + 1
        )),
        1.0
    );
}

fn base64url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// What a SASL2 client keeps to come back: its wrapped id, FAST token, user agent and h.
struct Away {
    id: String,
    token: String,
    agent: String,
    h: u32,
    jid: String,
}

/// SASL2 PLAIN with Bind 2, inline enable and a FAST token request through `addr`; two pings
/// each way; then the connection is cut.
async fn sasl2_login_and_vanish(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    user: &str,
    pw: &str,
) -> Away {
    let bare = format!("{user}@{DOMAIN}");
    let agent = new_user_agent_id();
    let mut c = Client::open(Raw::direct_tls(addr, DOMAIN, ca).await, DOMAIN, Some(&bare)).await;
    assert_eq!(
        c.features.fast_mechanisms,
        vec![HT_SHA_256_NONE.to_string()],
        "FAST offered through the proxy"
    );
    let auth = Authenticate::plain(user, pw)
        .user_agent(&agent)
        .bind("phone")
        .enable_sm()
        .request_token(HT_SHA_256_NONE);
    let ok = c.authenticate(&auth).await.expect("SASL2 success");
    let id = ok.enabled.expect("inline enable").id.expect("resumable");
    assert!(
        id.starts_with("xlb1."),
        "the id inside <bound/> is wrapped: {id}"
    );
    let token = ok.token.expect("FAST token").token;
    let jid = ok.jid.expect("JID");
    for id in ["p1", "p2"] {
        c.send_stanza(&format!(
            "<iq type='get' id='{id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        c.expect("pong", |e| {
            e.is("iq", NS_CLIENT) && e.attr("id") == Some(id)
        })
        .await;
    }
    assert_eq!(c.request_ack().await, 2);
    let h = c.h_in;
    c.vanish();
    Away {
        id,
        token,
        agent,
        h,
        jid,
    }
}

/// FAST (`HT-SHA-256-NONE`) with an inline resume through `addr`; the success's `<resumed/>`.
async fn fast_resume(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    user: &str,
    away: &Away,
) -> (Client, testkit::sasl2::Success) {
    let bare = format!("{user}@{DOMAIN}");
    let mut c = Client::open(Raw::direct_tls(addr, DOMAIN, ca).await, DOMAIN, Some(&bare)).await;
    let auth = Authenticate::fast(user, &away.token)
        .user_agent(&away.agent)
        .resume(&away.id, away.h);
    let ok = c.authenticate(&auth).await.expect("FAST success");
    (c, ok)
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("bounded in time")
}

#[test]
fn fast_with_inline_resume_comes_back_through_another_proxy_process() {
    let mut fleet = Fleet::new();
    let a = Proxy::start(&fleet.config("sm.key"));
    let b = ProxyProcess::start(&fleet.config("sm.key"));
    let ca = fleet.pki.ca_path();
    let away = a.block_on(within(sasl2_login_and_vanish(
        a.addr("direct", false),
        &ca,
        "bob",
        "pw-bob",
    )));
    let node = fleet.holder("bob").expect("one session");
    let name = format!("node{}", node + 1);
    fleet.wait_hibernating(node, "bob");
    a.block_on(send_messages(
        fleet.cluster.addr(node),
        ("carol", "pw-carol"),
        &away.jid,
        2,
    ));

    let (mut c, ok) = a.block_on(within(fast_resume(b.addr("direct"), &ca, "bob", &away)));
    let resumed = ok.resumed.expect("<resumed/> inside <success/>");
    assert_eq!(resumed.previd, away.id, "the client sees its own id again");
    assert_eq!(resumed.h, 2, "the node handled both pings");
    a.block_on(within(async {
        for i in 1..=2 {
            let m = c.expect_message().await;
            assert_eq!(
                m.child_text("body", NS_CLIENT),
                Some(format!("while away {i}").as_str())
            );
        }
        assert_eq!(
            c.h_in,
            away.h + 2,
            "the client counts what it got after the resume"
        );
    }));
    assert_eq!(fleet.holder("bob"), Some(node), "same node, one session");
    assert_eq!(
        a.metric_value(&format!(
            "xmpp_lb_sm_ids_wrapped_total{{backend=\"{name}\"}}"
        )),
        1.0
    );
    assert_eq!(
        b.metric_value("xmpp_lb_resume_ids_total{check=\"valid\"}"),
        1.0
    );
    assert_eq!(
        b.metric_value(&format!(
            "xmpp_lb_resumes_total{{backend=\"{name}\",kind=\"inline\",result=\"resumed\"}}"
        )),
        1.0
    );
}

/// `b` moved one client to node `old` by its id, where its `kind` resume succeeded.
fn moved_and_resumed(b: &Proxy, old: usize, kind: &str) {
    let old_name = format!("node{}", old + 1);
    let routed = format!("xmpp_lb_routed_total{{backend=\"{old_name}\",source=\"resume\"}}");
    assert_eq!(b.metric_value(&routed), 1.0);
    let resumed = format!(
        "xmpp_lb_resumes_total{{backend=\"{old_name}\",kind=\"{kind}\",result=\"resumed\"}}"
    );
    assert_eq!(b.metric_value(&resumed), 1.0);
}

/// A user the ring sends to node3 once a third node joins (it was elsewhere with two).
fn moved_user(small: &Proxy, big: &Proxy) -> (String, String, usize) {
    (1..=24)
        .map(|i| (format!("u{i}"), format!("pw-u{i}")))
        .find_map(|(u, p)| {
            let jid = format!("{u}@{DOMAIN}");
            let before = small.preference(&jid)[0].clone();
            (big.preference(&jid)[0] == "node3" && before != "node3").then(|| {
                let old = before.trim_start_matches("node").parse::<usize>().unwrap() - 1;
                (u, p, old)
            })
        })
        .expect("some user moves to the new node")
}

#[test]
fn after_a_node_is_added_an_inline_resume_still_lands_on_the_old_node() {
    let mut fleet = Fleet::new();
    // Proxy A knows two nodes; B runs the configuration after a third node was added.
    let a = Proxy::start(&fleet.config_with("sm.key", 2));
    let b = Proxy::start(&fleet.config_with("sm.key", 3));
    let ca = fleet.pki.ca_path();
    let (user, pw, old) = moved_user(&a, &b);
    let away = a.block_on(within(sasl2_login_and_vanish(
        a.addr("direct", false),
        &ca,
        &user,
        &pw,
    )));
    assert_eq!(fleet.holder(&user), Some(old));
    fleet.wait_hibernating(old, &user);
    a.block_on(send_messages(
        fleet.cluster.addr(old),
        ("carol", "pw-carol"),
        &away.jid,
        1,
    ));

    // B hashes the user to node3, but the verified id names the node holding the session.
    let (mut c, ok) = b.block_on(within(fast_resume(
        b.addr("direct", false),
        &ca,
        &user,
        &away,
    )));
    assert!(
        ok.resumed.is_some(),
        "resumed on the old node: {}",
        ok.xml()
    );
    b.block_on(within(async {
        let m = c.expect_message().await;
        assert_eq!(m.child_text("body", NS_CLIENT), Some("while away 1"));
    }));
    assert_eq!(
        fleet.holder(&user),
        Some(old),
        "still one session, on the old node"
    );
    moved_and_resumed(&b, old, "inline");
}

#[test]
fn after_a_node_is_added_a_legacy_plain_resume_is_replayed_on_the_old_node() {
    let mut fleet = Fleet::new();
    let a = Proxy::start(&fleet.config_with("sm.key", 2));
    let b = Proxy::start(&fleet.config_with("sm.key", 3));
    let ca = fleet.pki.ca_path();
    let (user, pw, old) = moved_user(&a, &b);
    let (away, id) = a.block_on(login_resumable_h2(a.addr("direct", false), &ca, &user, &pw));
    away.vanish();
    fleet.wait_hibernating(old, &user);
    a.block_on(send_messages(
        fleet.cluster.addr(old),
        ("carol", "pw-carol"),
        &format!("{user}@{DOMAIN}/raw"),
        1,
    ));
    // The login is routed by its username, to node3, before the <resume/> names the old node.
    // A PLAIN login can be replayed: the proxy logs in again on the old node and resumes there.
    let (mut back, got) = b.block_on(resume(b.addr("direct", false), &ca, &user, &pw, &id, 2));
    assert!(got.contains("<resumed"), "{got}");
    assert_eq!(attr(&got, "<resumed", "previd"), id);
    b.block_on(back.expect("while away 1"));
    assert_eq!(
        fleet.holder(&user),
        Some(old),
        "one session, on the old node"
    );
    assert_eq!(
        b.metric_value("xmpp_lb_resume_ids_total{check=\"valid\"}"),
        1.0
    );
    moved_and_resumed(&b, old, "legacy");
}

#[test]
fn an_inline_resume_reaches_its_node_while_that_node_drains() {
    let mut fleet = Fleet::new();
    let a = Proxy::start(&fleet.config("sm.key").set("drain.mode", "wait"));
    let ca = fleet.pki.ca_path();
    let addr = a.addr("direct", false);
    let away = a.block_on(within(sasl2_login_and_vanish(addr, &ca, "dave", "pw-dave")));
    let node = fleet.holder("dave").expect("one session");
    let name = format!("node{}", node + 1);
    fleet.wait_hibernating(node, "dave");
    a.block_on(async { xmpp_lb::backend::drain::set_draining(&a.shared, &name, true) })
        .unwrap();
    // New logins avoid the draining node; the session that lives there is resumed there.
    let rt = a.shared.runtime.load_full();
    let decision = rt
        .decide(
            DOMAIN,
            Some("dave@example.test"),
            "127.0.0.1".parse().unwrap(),
            true,
        )
        .unwrap();
    let order: Vec<&str> = rt
        .order(DOMAIN, &decision)
        .into_iter()
        .map(|id| rt.backends().name(id))
        .collect();
    assert!(!order.contains(&name.as_str()), "{order:?}");
    let (_, ok) = a.block_on(within(fast_resume(addr, &ca, "dave", &away)));
    assert!(ok.resumed.is_some(), "{}", ok.xml());
    assert_eq!(fleet.holder("dave"), Some(node));
    assert_eq!(
        a.metric_value(&format!(
            "xmpp_lb_resumes_total{{backend=\"{name}\",kind=\"inline\",result=\"resumed\"}}"
        )),
        1.0
    );
}

/// A real client library (slixmpp: SCRAM, legacy XEP-0198) resumes through the other proxy
/// process of the fleet. Node contacts (XEP-0157) tell which node it was on before and after.
#[test]
fn slixmpp_resumes_its_stream_through_the_other_proxy() {
    let fleet = Fleet::new();
    let a = Proxy::start(&fleet.config("sm.key"));
    let b = ProxyProcess::start(&fleet.config("sm.key"));
    let ca = fleet.pki.ca_path();
    let conn = testkit::client::Conn::direct(a.addr("direct", false), &ca).sm();
    let got = testkit::client::expect_ok(
        testkit::client::resume(
            &conn,
            &format!("alice@{DOMAIN}"),
            "pw-alice",
            b.addr("direct").port(),
        ),
        "slixmpp resume",
    );
    assert_eq!(got["outcome"], "resumed", "{got}");
    assert!(got["sm_id"].as_str().unwrap().starts_with("xlb1."), "{got}");
    // Both sides named a node (a null on each side would compare equal, too).
    let before = got["node_before"].as_str().expect("the node before");
    assert!(
        (0..fleet.cluster.len()).any(|i| before == fleet.cluster.node_name(i)),
        "{got}"
    );
    assert_eq!(got["node_after"].as_str(), Some(before), "{got}");
    assert!(got["mech"].as_str().unwrap().starts_with("SCRAM"), "{got}");
    assert_eq!(
        b.metric_value("xmpp_lb_resume_ids_total{check=\"valid\"}"),
        1.0
    );
}

/// A session's node that no longer serves the session's domain is not sent its clients: a
/// MAC-valid id names the node, but the domain's own members decide (and only their links,
/// with their TLS and PROXY settings, are ever used for its clients).
#[test]
fn a_legacy_resume_never_follows_its_id_to_a_node_that_left_the_domain() {
    let mut fleet = Fleet::new();
    let a = Proxy::start(&fleet.config("sm.key"));
    let ca = fleet.pki.ca_path();
    let (away, id) = a.block_on(login_resumable_h2(
        a.addr("direct", false),
        &ca,
        "bob",
        "pw-bob",
    ));
    away.vanish();
    let old = fleet.holder("bob").expect("one session");
    fleet.wait_hibernating(old, "bob");
    // The fleet's configuration now: the old node serves another domain only.
    let old_name = format!("node{}", old + 1);
    let others: Vec<String> = (1..=3)
        .map(|i| format!("\"node{i}\""))
        .filter(|n| *n != format!("\"{old_name}\""))
        .collect();
    let b = Proxy::start(&fleet.config("sm.key").merge(&format!(
        "[[domain]]\nname = \"{DOMAIN}\"\nbackends = [{}]\n\n[[domain]]\nname = \"other.test\"\nbackends = [\"{old_name}\"]\n",
        others.join(", ")
    )));
    let (_back, got) = b.block_on(resume(
        b.addr("direct", false),
        &ca,
        "bob",
        "pw-bob",
        &id,
        2,
    ));
    assert!(got.contains("<failed"), "{got}");
    assert_eq!(
        b.metric(&format!(
            "xmpp_lb_routed_total{{backend=\"{old_name}\",source=\"resume\"}}"
        ))
        .unwrap_or(0.0),
        0.0,
        "nothing was sent to the node that left the domain"
    );
    // The id was genuine; it went, unwrapped, to the node the client is on, which failed it.
    assert_eq!(
        b.metric_value("xmpp_lb_resume_ids_total{check=\"other_node\"}"),
        1.0
    );
}
