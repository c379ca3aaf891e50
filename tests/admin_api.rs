//! The admin HTTP side on the metrics bind, as an operator and a load balancer use it:
//! `/healthz`, `/readyz`, `/backends`, `/route?jid=`, the bearer token on everything but the
//! two probes, and the `xmpp-lb drain` command sending the token.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::pki::TestPki;
use common::process::{free_port, wait_for};
use common::prosody::{ProsodyCluster, ProsodyOpts};
use common::proxy::{Proxy, config_text};
use serde_json::Value;

const DOMAIN: &str = "example.test";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A request to the admin address: (status, body).
fn call(proxy: &Proxy, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("http://{}{path}", proxy.metrics);
    let mut resp = match (method, token) {
        ("GET", Some(t)) => agent()
            .get(&url)
            .header("Authorization", &format!("Bearer {t}"))
            .call(),
        ("GET", None) => agent().get(&url).call(),
        ("POST", Some(t)) => agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {t}"))
            .send_empty(),
        ("POST", None) => agent().post(&url).send_empty(),
        _ => unreachable!(),
    }
    .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

struct Env {
    proxy: Proxy,
    _pki: TestPki,
    cluster: ProsodyCluster,
    token: String,
    token_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// One real Prosody node (`node1`) and a backend nobody listens on (`node2`), health checks
/// every 200 ms, the admin token in a file.
fn env() -> Env {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let dead = format!("127.0.0.1:{}", free_port(false).unwrap())
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_path: PathBuf = dir.path().join("admin.token");
    let token = "admin-token-for-the-test".to_string();
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    let text = config_text(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        "jid",
        &[cluster.addr(0), dead],
        "\n[health]\ninterval = \"200ms\"\ntimeout = \"1s\"\n",
    )
    .replace(
        "[metrics]\nbind = \"127.0.0.1:0\"\n",
        &format!(
            "[metrics]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_path.display()
        ),
    );
    Env {
        proxy: Proxy::start(&text),
        _pki: pki,
        cluster,
        token,
        token_path,
        _dir: dir,
    }
}

#[test]
fn the_token_guards_everything_but_the_probes() {
    let env = env();
    let p = &env.proxy;
    let t = Some(env.token.as_str());
    assert_eq!(call(p, "GET", "/healthz", None), (200, "ok\n".into()));
    assert_eq!(call(p, "GET", "/readyz", None).0, 200);
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/backends"),
        ("GET", "/route?jid=alice@example.test"),
        ("POST", "/backends/node1/drain"),
        ("POST", "/reload"),
    ] {
        let (status, body) = call(p, method, path, None);
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        let (status, _) = call(p, method, path, Some("admin-token-for-the-tesT"));
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    assert!(!p.shared.runtime.load().states[0].is_draining());
    assert_eq!(call(p, "GET", "/metrics", t).0, 200);
    assert_eq!(call(p, "POST", "/reload", t).0, 200);
    // Debug output of the runtime never shows the token.
    let rt = p.shared.runtime.load();
    assert!(!format!("{:?}", rt.admin_token).contains("admin-token"));

    // The CLI sends XMPP_LB_ADMIN_TOKEN; without it the proxy refuses.
    let cli = |token: Option<&str>, cmd: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"));
        c.args([cmd, "--admin", &p.metrics.to_string(), "node1"])
            .env_remove("XMPP_LB_ADMIN_TOKEN");
        if let Some(t) = token {
            c.env("XMPP_LB_ADMIN_TOKEN", t);
        }
        c.output().unwrap()
    };
    let out = cli(None, "drain");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!p.shared.runtime.load().states[0].is_draining());
    let out = cli(t, "drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(p.shared.runtime.load().states[0].is_draining());
    assert!(cli(t, "undrain").status.success());

    // A reload re-reads the token file: the token rotates without a restart.
    std::fs::write(&env.token_path, "rotated-token\n").unwrap();
    assert_eq!(call(p, "POST", "/reload", t).0, 200);
    assert_eq!(call(p, "GET", "/metrics", t).0, 401);
    assert_eq!(call(p, "GET", "/metrics", Some("rotated-token")).0, 200);

    // `xmpp-lb check` refuses a token file that holds no token, naming the key.
    std::fs::write(&env.token_path, "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
        .args(["check", "--config"])
        .arg(&p.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics.token_file") && err.contains("empty"),
        "{err}"
    );
    // A reload with it is refused, and the running token stays.
    assert_eq!(call(p, "POST", "/reload", Some("rotated-token")).0, 422);
    assert_eq!(call(p, "GET", "/metrics", Some("rotated-token")).0, 200);
}

#[test]
fn readyz_follows_listeners_and_backends_and_backends_shows_state_and_share() {
    let mut env = env();
    let p = &env.proxy;
    let t = Some(env.token.as_str());
    // node2 has no server: health checks take it down; node1 keeps the proxy ready.
    let down = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let b = json(&call(p, "GET", "/backends", t).1);
        (b["backends"][1]["state"] == "down").then_some(b)
    })
    .expect("node2 is marked down");
    let node1 = &down["backends"][0];
    assert_eq!(node1["name"], "node1");
    assert_eq!(node1["state"], "up");
    assert_eq!(node1["address"], env.cluster.addr(0).to_string());
    assert_eq!(node1["connections"], 0);
    let share = |b: &Value| b["ring_share"][DOMAIN].as_f64().unwrap();
    let (s1, s2) = (share(node1), share(&down["backends"][1]));
    assert!(s1 > 0.2 && s2 > 0.2, "{down}");
    assert!((s1 + s2 - 1.0).abs() < 1e-9, "{down}");
    // The same shares are exported as a gauge.
    let scrape = call(p, "GET", "/metrics", t).1;
    let gauge = |backend: &str| -> f64 {
        let series =
            format!("xmpp_lb_backend_ring_share{{backend=\"{backend}\",domain=\"{DOMAIN}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("{series} in\n{scrape}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!((gauge("node1") - s1).abs() < 1e-9);
    assert!((gauge("node2") - s2).abs() < 1e-9);

    let (status, body) = call(p, "GET", "/readyz", None);
    assert_eq!(status, 200, "{body}");
    let r = json(&body);
    assert_eq!(r["ready"], true);
    assert_eq!(r["listening"], true);
    assert_eq!(r["backends_healthy"], 1);

    // Draining the only healthy node leaves nowhere for a login: not ready.
    assert_eq!(call(p, "POST", "/backends/node1/drain", t).0, 200);
    let (status, body) = call(p, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(json(&body)["backends_taking_logins"], 0);
    let b = json(&call(p, "GET", "/backends", t).1);
    assert_eq!(b["backends"][0]["state"], "draining");
    assert_eq!(call(p, "POST", "/backends/node1/undrain", t).0, 200);
    assert_eq!(call(p, "GET", "/readyz", None).0, 200);

    // The only real node goes away too: not ready until it is back.
    env.cluster.stop_node(0);
    let p = &env.proxy;
    wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        (call(p, "GET", "/readyz", None).0 == 503).then_some(())
    })
    .expect("not ready without a healthy backend");
    env.cluster.restart_node(0);
    let p = &env.proxy;
    wait_for(Duration::from_secs(15), Duration::from_millis(50), || {
        (call(p, "GET", "/readyz", None).0 == 200).then_some(())
    })
    .expect("ready again once node1 is back");
}

#[test]
fn route_says_where_a_user_goes_and_why() {
    let env = env();
    let p = &env.proxy;
    let t = Some(env.token.as_str());
    for user in ["alice", "bob", "carol", "Juliet"] {
        let jid = format!("{user}@{DOMAIN}");
        let (status, body) = call(p, "GET", &format!("/route?jid={jid}/phone"), t);
        assert_eq!(status, 200, "{body}");
        let r = json(&body);
        assert_eq!(r["jid"], jid.to_lowercase(), "normalized, resource dropped");
        assert_eq!(r["domain"], DOMAIN);
        assert_eq!(r["key"], "jid");
        assert_eq!(r["keys"], serde_json::json!(["jid"]));
        assert!(r["rule"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        assert_eq!(r["skipped"], serde_json::json!([]));
        let home = r["home"].as_str().unwrap();
        assert_eq!(
            home,
            p.route_cli(&jid),
            "home is what `xmpp-lb route` prints"
        );
        let fallback: Vec<&str> = r["fallback"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(fallback.len(), 1, "{r}");
        // Live state: once node2 is down, its users go to node1 now, and the answer says so.
        if r["backend"] == "node2" {
            assert_eq!(fallback, ["node1"]);
        }
    }
    let user_of = |node: &str| {
        ["alice", "bob", "carol", "dave", "erin", "frank"]
            .into_iter()
            .map(|u| format!("{u}@{DOMAIN}"))
            .find(|j| p.route_cli(j) == node)
            .unwrap()
    };
    let on_node2 = user_of("node2");
    wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let r = json(&call(p, "GET", &format!("/route?jid={on_node2}"), t).1);
        (r["backend"] == "node1" && r["home"] == "node2").then_some(())
    })
    .expect("a user of the dead node2 is routed to node1, home still node2");

    for (query, why) in [
        ("/route", "give the user"),
        ("/route?jid=", "give the user"),
        ("/route?jid=not%20a%20jid%40", "not a valid JID"),
        ("/route?jid=alice@elsewhere.test", "not served"),
        ("/route?jid=alice@example.test&ip=nope", "not an IP"),
    ] {
        let (status, body) = call(p, "GET", query, t);
        assert_eq!(status, 400, "{query}: {body}");
        let e = json(&body)["error"].as_str().unwrap().to_string();
        assert!(e.contains(why), "{query}: {e}");
    }
}

#[test]
fn open_connections_are_counted_under_their_tls_style() {
    let env = env();
    let p = &env.proxy;
    let t = Some(env.token.as_str());
    let open = |tls: &str| -> f64 {
        let series = format!("xmpp_lb_connections_open{{listener=\"auto\",tls=\"{tls}\"}} ");
        call(p, "GET", "/metrics", t)
            .1
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    // A client on the auto port that has not sent its first byte is pending.
    let silent = std::net::TcpStream::connect(p.addr("auto", false)).unwrap();
    wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        (open("pending") == 1.0).then_some(())
    })
    .expect("pending while the first byte is awaited");
    // Its first byte says STARTTLS: it moves.
    {
        use std::io::Write;
        let mut s = &silent;
        s.write_all(b"<?xml version='1.0'?>").unwrap();
    }
    wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        (open("pending") == 0.0 && open("starttls") == 1.0).then_some(())
    })
    .expect("counted as starttls once the first byte arrived");
    drop(silent);
    wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        (open("starttls") == 0.0).then_some(())
    })
    .expect("closed connections are not open");
}
