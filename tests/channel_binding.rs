//! Channel binding through the proxy (docs/channel-binding.md): with `channel_binding = "pass"`
//! the proxy hands the binding data of the client's TLS session to real Prosody nodes running
//! `contrib/prosody/mod_proxy_channel_binding.lua`, which check SCRAM `-PLUS` logins against
//! them. The client computes its binding data from its own end of the TLS session (rustls'
//! keying-material export, the certificate it received), independently of the proxy.
//!
//! A SCRAM library that is not ours (`scramp`, over Python's OpenSSL-based TLS, through
//! `tests/clients/scram_plus.py`) logs in bound with `tls-server-end-point`, over direct TLS
//! and STARTTLS.
//!
//! A second TLS terminator between client and proxy (HAProxy with another certificate of the
//! same CA: a man in the middle with a valid certificate) makes the client's data differ
//! from the proxy's, and the node refuses the login. A PROXY header with binding data from
//! an address the node does not trust is not believed.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::pki::TestPki;
use testkit::process::{free_port, spawn_child, terminate, wait_for};
use testkit::prosody::{ProsodyCluster, ProsodyOpts};
use testkit::proxy::Proxy;
use testkit::raw::{Raw, connector_tls12, mechanisms};
use testkit::sasl2::{Authenticate, Client, HT_SHA_256_NONE, new_user_agent_id};
use testkit::scram::{self, Hash, Scram};
use xmpp_lb::runtime::{Runtime, StateRegistry};

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
    ("dave", "pw-dave"),
];
const NODES: usize = 2;
const TLS_EXPORTER: &str = "tls-exporter";
const END_POINT: &str = "tls-server-end-point";

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

/// Every backend gets the PROXY v2 header with the client's channel binding.
fn pass(mut c: testkit::config::TestConfig) -> testkit::config::TestConfig {
    for i in 1..=NODES {
        let name = format!("node{i}");
        c = c.backend_set(&name, "proxy_protocol", "v2").backend_set(
            &name,
            "channel_binding",
            "pass",
        );
    }
    c
}

/// Two nodes with the module, trusting the proxy's 127.0.0.1 only, behind a proxy that
/// passes channel binding.
fn env(opts: ProsodyOpts) -> Env {
    EnvBuilder::new(NODES)
        .prosody(opts.with_channel_binding(&["127.0.0.1"]))
        .users(USERS)
        .config(pass)
        .start()
}

/// The node `xmpp-lb route` names for `user`.
fn route(proxy: &Proxy, user: &str) -> String {
    let rt = Runtime::build(proxy.config.clone(), &StateRegistry::default()).unwrap();
    xmpp_lb::route::explain::route_info(&rt, &format!("{user}@{DOMAIN}"), None)
        .unwrap()
        .backend
}

/// The node holding `user`'s session, by the node's own account.
fn landed(cluster: &mut ProsodyCluster, user: &str) -> String {
    let nodes = cluster.nodes_with_session(&format!("{user}@{DOMAIN}"));
    assert_eq!(nodes.len(), 1, "{user} has one session: {nodes:?}");
    cluster.node_name(nodes[0]).to_string()
}

/// The XEP-0440 binding types a features element offers.
fn cb_types(features: &str) -> Vec<String> {
    features
        .split("<channel-binding ")
        .skip(1)
        .map(|s| testkit::raw::attr(&format!("<x {s}"), "<x", "type"))
        .collect()
}

/// A SCRAM login through `raw` bound by `kind` to the client's own data (`None`: unbound).
async fn scram_login(
    raw: &mut Raw,
    user: &str,
    from: bool,
    hash: Hash,
    kind: Option<&str>,
) -> scram::Outcome {
    let data = kind.map(|k| {
        (
            k,
            raw.bindings
                .get(k)
                .unwrap_or_else(|| panic!("the client's TLS has no {k}"))
                .to_vec(),
        )
    });
    let s = Scram::new(
        hash,
        user,
        password(user),
        data.as_ref().map(|(k, d)| (*k, d.as_slice())),
    );
    let bare = format!("{user}@{DOMAIN}");
    scram::log_in(raw, DOMAIN, from.then_some(bare.as_str()), s).await
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("bounded in time")
}

#[test]
fn plus_logins_through_the_proxy_land_on_their_nodes() {
    let Env {
        proxy,
        mut cluster,
        pki,
        ..
    } = env(ProsodyOpts::default());
    let ca = pki.ca_path();
    let direct = proxy.addr("direct", false);
    // TLS 1.3: both binding types, both SCRAM hashes, routed by SASL and by `from`.
    let cases = [
        ("alice", false, Hash::Sha256, TLS_EXPORTER),
        ("bob", false, Hash::Sha1, END_POINT),
        ("carol", true, Hash::Sha256, END_POINT),
        ("dave", true, Hash::Sha1, TLS_EXPORTER),
    ];
    let mut raws = Vec::new();
    for (user, from, hash, kind) in cases {
        let raw = proxy.block_on(within(async {
            let mut raw = Raw::direct_tls(direct, DOMAIN, &ca).await;
            let out = scram_login(&mut raw, user, from, hash, Some(kind)).await;
            let shown = mechanisms(&out.features);
            for m in ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1"] {
                assert!(shown.contains(m), "{m} shown to {user}: {shown:?}");
            }
            assert_eq!(
                cb_types(&out.features),
                vec![TLS_EXPORTER, END_POINT],
                "XEP-0440 types shown to {user}: {}",
                out.features
            );
            out.result
                .unwrap_or_else(|e| panic!("{user} {kind} login refused: {e}"));
            raw.restart_and_bind(DOMAIN, "cb").await;
            raw
        }));
        raws.push(raw);
        assert_eq!(
            landed(&mut cluster, user),
            route(&proxy, user),
            "{user} lands where route says"
        );
    }
    // The nodes offered each client what it was shown.
    for i in 1..=NODES {
        let mismatches = proxy
            .metric(&format!(
                "xmpp_lb_feature_mismatch_total{{backend=\"node{i}\"}}"
            ))
            .unwrap_or(0.0);
        assert_eq!(mismatches, 0.0, "no mismatch on node{i}");
    }
    proxy.block_on(async { drop(raws) });

    // TLS 1.2: no tls-exporter; tls-server-end-point still binds, and is all that is shown.
    proxy.block_on(within(async {
        let mut raw = Raw::direct_tls_via(direct, DOMAIN, &connector_tls12(&ca)).await;
        assert_eq!(raw.bindings.exporter, None);
        let out = scram_login(&mut raw, "alice", false, Hash::Sha256, Some(END_POINT)).await;
        assert_eq!(cb_types(&out.features), vec![END_POINT], "{}", out.features);
        assert!(mechanisms(&out.features).contains("SCRAM-SHA-256-PLUS"));
        out.result.expect("TLS 1.2 tls-server-end-point login");
    }));

    // Binding data that are not the client's session's are refused by the node.
    proxy.block_on(within(async {
        let mut raw = Raw::direct_tls(direct, DOMAIN, &ca).await;
        let s = Scram::new(
            Hash::Sha256,
            "bob",
            password("bob"),
            Some((TLS_EXPORTER, &[0x42; 32])),
        );
        let out = scram::log_in(&mut raw, DOMAIN, None, s).await;
        let refused = out.result.expect_err("forged binding data refused");
        assert!(refused.contains("<failure"), "{refused}");
    }));
}

/// HAProxy terminating TLS with a certificate of its own (same CA, so the client trusts it)
/// and opening a new TLS session to the proxy: a man in the middle.
struct Mitm {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mitm {
    fn start(pki: &mut TestPki, upstream: SocketAddr) -> Mitm {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = pki.issue("mitm", &[DOMAIN]);
        let pem = dir.path().join("mitm.pem");
        let mut both = std::fs::read(&chain).unwrap();
        both.extend(std::fs::read(&key).unwrap());
        std::fs::write(&pem, both).unwrap();
        let port = free_port(false).unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  log stderr format raw local0 err\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend mitm\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend lb\n\
                 backend lb\n  server lb1 {upstream} ssl verify none sni str({DOMAIN})\n",
                pem.display()
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
        let child = spawn_child(cmd).expect("haproxy runs");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
                std::net::TcpStream::connect(addr).ok()
            })
            .is_some(),
            "haproxy listens"
        );
        Mitm {
            child,
            addr,
            _dir: dir,
        }
    }
}

#[test]
fn a_second_tls_terminator_in_between_is_refused_by_the_node() {
    let Env {
        proxy,
        mut cluster,
        mut pki,
        ..
    } = env(ProsodyOpts::default());
    let ca = pki.ca_path();
    let mut mitm = Mitm::start(&mut pki, proxy.addr("direct", false));
    for kind in [TLS_EXPORTER, END_POINT] {
        proxy.block_on(within(async {
            let mut raw = Raw::direct_tls(mitm.addr, DOMAIN, &ca).await;
            let out = scram_login(&mut raw, "alice", false, Hash::Sha256, Some(kind)).await;
            assert!(
                mechanisms(&out.features).contains("SCRAM-SHA-256-PLUS"),
                "the client is offered -PLUS through the man in the middle too"
            );
            let refused = out
                .result
                .expect_err("a login bound to the man in the middle's TLS is refused");
            assert!(refused.contains("<failure"), "{kind}: {refused}");
        }));
    }
    assert!(
        cluster
            .nodes_with_session(&format!("alice@{DOMAIN}"))
            .is_empty(),
        "no session for alice"
    );
    // The same client unbound gets in: the refusal was the binding's.
    proxy.block_on(within(async {
        let mut raw = Raw::direct_tls(mitm.addr, DOMAIN, &ca).await;
        let out = scram_login(&mut raw, "alice", false, Hash::Sha256, None).await;
        out.result.expect("an unbound login through the same path");
    }));
    // And directly to the proxy, the bound login succeeds.
    proxy.block_on(within(async {
        let mut raw = Raw::direct_tls(proxy.addr("direct", false), DOMAIN, &ca).await;
        let out = scram_login(&mut raw, "bob", false, Hash::Sha256, Some(TLS_EXPORTER)).await;
        out.result
            .expect("bound login without the man in the middle");
    }));
    let _ = terminate(&mut mitm.child, Duration::from_secs(2));
}

/// `scram_plus.py`: a SCRAM -PLUS login computed by the `scramp` library over Python's TLS.
fn scramp_login(
    port: u16,
    ca: &std::path::Path,
    user: &str,
    tls: &str,
    mechanism: &str,
) -> serde_json::Value {
    let port = port.to_string();
    testkit::client::run_other(
        "scram_plus.py",
        &[
            "--port",
            &port,
            "--domain",
            DOMAIN,
            "--user",
            user,
            "--password",
            password(user),
            "--ca",
            ca.to_str().unwrap(),
            "--tls",
            tls,
            "--mechanism",
            mechanism,
        ],
    )
}

#[test]
fn an_independent_scram_library_logs_in_bound_over_starttls_and_direct_tls_not_through_a_mitm() {
    let Env {
        proxy,
        mut cluster,
        mut pki,
        ..
    } = env(ProsodyOpts::default());
    let ca = pki.ca_path();
    let cases = [
        ("alice", "direct", "SCRAM-SHA-256-PLUS"),
        ("bob", "starttls", "SCRAM-SHA-256-PLUS"),
        ("carol", "direct", "SCRAM-SHA-1-PLUS"),
        ("dave", "starttls", "SCRAM-SHA-1-PLUS"),
    ];
    for (user, tls, mechanism) in cases {
        let port = proxy.addr(tls, false).port();
        let out = scramp_login(port, &ca, user, tls, mechanism);
        assert_eq!(out["ok"], true, "{user} over {tls} with {mechanism}: {out}");
        assert_eq!(out["mechanism"], mechanism);
        assert_eq!(
            out["node"].as_str().unwrap(),
            route(&proxy, user),
            "{user} lands where route says"
        );
    }
    // The same library through a second TLS terminator: it binds to that one's certificate,
    // and the node, which has the proxy's, refuses.
    let mut mitm = Mitm::start(&mut pki, proxy.addr("direct", false));
    let out = scramp_login(
        mitm.addr.port(),
        &ca,
        "alice",
        "direct",
        "SCRAM-SHA-256-PLUS",
    );
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["stage"], "sasl", "{out}");
    // Prosody says so: `<malformed-request/>` "Invalid channel binding value."
    let error = out["error"].as_str().unwrap();
    assert!(
        error.contains("<failure") && error.contains("channel binding"),
        "{out}"
    );
    assert!(
        cluster
            .nodes_with_session(&format!("alice@{DOMAIN}"))
            .is_empty()
    );
    let _ = terminate(&mut mitm.child, Duration::from_secs(2));
}

/// A v2 header from `source` with binding TLVs (0xE0, 0xE1) of the given data.
fn forged_header(data: &[u8]) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let (s, d): (SocketAddr, SocketAddr) = (
        "198.51.100.7:40000".parse().unwrap(),
        "127.0.0.1:5222".parse().unwrap(),
    );
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (s, d))
        .write_tlv(0xE0, data)
        .unwrap()
        .write_tlv(0xE1, data)
        .unwrap()
        .build()
        .unwrap()
}

#[test]
fn binding_data_from_an_address_the_node_does_not_trust_are_not_believed() {
    let cluster = ProsodyCluster::start(
        1,
        DOMAIN,
        ProsodyOpts::default().with_channel_binding(&["127.0.0.1"]),
    )
    .expect("prosody starts");
    cluster.register_many(USERS);
    let node = cluster.addr(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(within(async {
        // From the trusted address, a header with binding data: -PLUS is offered.
        let mut trusted = Raw::tcp_from(node, "127.0.0.1".parse().unwrap()).await;
        trusted.send_bytes(&forged_header(&[7; 32])).await;
        trusted.send(&testkit::raw::header(DOMAIN, None)).await;
        let features = trusted.expect("</stream:features>").await;
        assert!(
            mechanisms(&features).contains("SCRAM-SHA-1-PLUS"),
            "{features}"
        );
        assert_eq!(cb_types(&features), vec![TLS_EXPORTER, END_POINT]);

        // From 127.0.0.2, not configured: the header is not taken off, the stream is refused.
        let mut forger = Raw::tcp_from(node, "127.0.0.2".parse().unwrap()).await;
        forger.send_bytes(&forged_header(&[7; 32])).await;
        forger.send(&testkit::raw::header(DOMAIN, None)).await;
        let answer = forger.read_to_close(Duration::from_secs(10)).await;
        assert!(
            !answer.contains("-PLUS") && !answer.contains("sasl-channel-binding"),
            "{answer}"
        );
        assert!(answer.contains("not-well-formed"), "{answer}");

        // And without a header, the untrusted peer gets no -PLUS either.
        let mut plain = Raw::tcp_from(node, "127.0.0.2".parse().unwrap()).await;
        plain.send(&testkit::raw::header(DOMAIN, None)).await;
        let features = plain.expect("</stream:features>").await;
        let shown = mechanisms(&features);
        assert!(shown.contains("SCRAM-SHA-1"), "{features}");
        assert!(!shown.iter().any(|m| m.ends_with("-PLUS")), "{features}");
    }));
}

#[test]
fn resumption_and_sasl2_inline_resume_work_with_channel_binding_on() {
    let pki = TestPki::new(&[DOMAIN]);
    let mut cluster = ProsodyCluster::start(
        NODES,
        DOMAIN,
        ProsodyOpts::fast_reconnect().with_channel_binding(&["127.0.0.1"]),
    )
    .expect("prosody nodes start");
    cluster.register_many(USERS);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("sm.key");
    std::fs::write(&key, "channel binding test fleet secret\n").unwrap();
    let config = pass(
        testkit::config::TestConfig::new(
            &pki.cert_path(DOMAIN),
            &pki.key_path(DOMAIN),
            DOMAIN,
            &cluster.addrs(),
        )
        .set(
            "resumption.sm_key_files",
            testkit::config::strings(&[&key.display().to_string()]),
        ),
    );
    let proxy = Proxy::start(&config);
    let ca = pki.ca_path();
    let direct = proxy.addr("direct", false);
    // SCRAM-SHA-256-PLUS inside a SASL2 <authenticate/>, bound with tls-exporter; the
    // server's final message (in <additional-data/>) proves the node used the same data.
    let plus = proxy.block_on(within(async {
        let raw = Raw::direct_tls(direct, DOMAIN, &ca).await;
        let bindings = raw.bindings.clone();
        let mut c = Client::open(raw, DOMAIN, None).await;
        let exporter = bindings.get(TLS_EXPORTER).expect("TLS 1.3 exporter");
        let mut s = Scram::new(
            Hash::Sha256,
            "alice",
            password("alice"),
            Some((TLS_EXPORTER, exporter)),
        );
        let auth = Authenticate::mechanism(&s.mechanism(), s.first().as_bytes())
            .user_agent(&new_user_agent_id())
            .bind("plus");
        let ok = c
            .authenticate_with(&auth, |server_first| {
                s.final_message(std::str::from_utf8(server_first).unwrap())
                    .into_bytes()
            })
            .await
            .expect("SASL2 SCRAM-SHA-256-PLUS login");
        let server_final = String::from_utf8(ok.additional_data.expect("server final")).unwrap();
        assert!(s.verify(&server_final), "server signature: {server_final}");
        assert!(ok.bound, "inline bind");
        c
    }));
    assert_eq!(landed(&mut cluster, "alice"), route(&proxy, "alice"));
    proxy.block_on(async { drop(plus) });

    let bare = format!("carol@{DOMAIN}");
    let agent = new_user_agent_id();
    let (id, token, h) = proxy.block_on(within(async {
        let mut c = Client::open(
            Raw::direct_tls(direct, DOMAIN, &ca).await,
            DOMAIN,
            Some(&bare),
        )
        .await;
        assert!(
            c.features
                .sasl2_mechanisms
                .contains(&"SCRAM-SHA-256-PLUS".to_string()),
            "SASL2 offers -PLUS through the proxy: {:?}",
            c.features.sasl2_mechanisms
        );
        let auth = Authenticate::plain("carol", password("carol"))
            .user_agent(&agent)
            .bind("phone")
            .enable_sm()
            .request_token(HT_SHA_256_NONE);
        let ok = c.authenticate(&auth).await.expect("SASL2 success");
        let id = ok.enabled.expect("inline enable").id.expect("resumable");
        assert!(id.starts_with("xlb1."), "wrapped id: {id}");
        let token = ok.token.expect("FAST token").token;
        let h = c.h_in;
        c.vanish();
        (id, token, h)
    }));
    let holder = cluster.nodes_with_session(&bare);
    assert_eq!(holder.len(), 1);
    assert_eq!(cluster.node_name(holder[0]), route(&proxy, "carol"));
    let resumed = proxy.block_on(within(async {
        // Wait for the node to notice the vanished client; then resume inline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if cluster
                .sessions_detail(holder[0])
                .iter()
                .any(|s| s.bare() == bare && s.hibernating)
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never hibernated");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = Client::open(
            Raw::direct_tls(direct, DOMAIN, &ca).await,
            DOMAIN,
            Some(&bare),
        )
        .await;
        let auth = Authenticate::fast("carol", &token)
            .user_agent(&agent)
            .resume(&id, h);
        let ok = c.authenticate(&auth).await.expect("FAST success");
        ok.resumed.expect("<resumed/> inside <success/>").previd
    }));
    assert_eq!(resumed, id, "the client sees its own id again");
    assert_eq!(cluster.nodes_with_session(&bare), holder, "same node");

    // A legacy SCRAM-SHA-256-PLUS login on the same nodes, then stream management.
    proxy.block_on(within(async {
        let mut raw = Raw::direct_tls(direct, DOMAIN, &ca).await;
        let out = scram_login(&mut raw, "dave", false, Hash::Sha256, Some(TLS_EXPORTER)).await;
        out.result.expect("legacy -PLUS login with SASL2 loaded");
        raw.restart_and_bind(DOMAIN, "cb").await;
        let enabled = raw.enable_sm().await;
        assert!(enabled.contains("xlb1."), "{enabled}");
    }));
}
