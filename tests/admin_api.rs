//! The admin HTTP side on the metrics bind, as an operator and a load balancer use it:
//! `/healthz`, `/readyz`, `/backends`, `/route?jid=`, the bearer token on everything but the
//! two probes, and the `xmpp-lb drain` command sending the token; and as an attacker would:
//! a web page posting to it (cross-site request forgery) or reading it through DNS
//! rebinding, and clients that hold connections open without finishing a request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::config::{TestConfig, strings};
use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::pki::TestPki;
use testkit::process::{free_port, wait_for};
use testkit::proxy::Proxy;

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

/// One node and a backend nobody listens on, health checks every 200 ms, an admin token.
fn env() -> Env {
    EnvBuilder::new(1)
        .dead_backend()
        .token()
        .config(|c| {
            c.set("health.interval", "200ms")
                .set("health.timeout", "1s")
        })
        .start()
}

#[test]
fn the_token_guards_everything_but_the_probes() {
    let env = env();
    let p = &env.proxy;
    let t = Some(env.token());
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
    assert!(!p.backend("node1").is_draining());
    assert_eq!(call(p, "GET", "/metrics", t).0, 200);
    assert_eq!(call(p, "POST", "/reload", t).0, 200);
    // Debug output of the runtime never shows the token.
    let rt = p.shared.runtime.load();
    assert!(!format!("{:?}", rt.admin_token()).contains("admin-token"));

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
    assert!(!p.backend("node1").is_draining());
    let out = cli(t, "drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(p.backend("node1").is_draining());
    assert!(cli(t, "undrain").status.success());

    // A reload re-reads the token file: the token rotates without a restart.
    std::fs::write(env.token_path.as_ref().unwrap(), "rotated-token\n").unwrap();
    assert_eq!(call(p, "POST", "/reload", t).0, 200);
    assert_eq!(call(p, "GET", "/metrics", t).0, 401);
    assert_eq!(call(p, "GET", "/metrics", Some("rotated-token")).0, 200);

    // `xmpp-lb check` refuses a token file that holds no token, naming the key.
    std::fs::write(env.token_path.as_ref().unwrap(), "\n").unwrap();
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
    let t = Some(env.token());
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

/// docs/metrics.md's row for `/route` names every field of the answer.
fn assert_route_fields_documented(answer: &Value) {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let row = docs
        .lines()
        .find(|l| l.starts_with("| `GET /route"))
        .expect("a /route row in docs/metrics.md");
    for field in answer.as_object().expect("a JSON object").keys() {
        assert!(
            row.contains(&format!("`{field}`")),
            "/route answers `{field}`, which docs/metrics.md does not list: {row}"
        );
    }
}

#[test]
fn route_says_where_a_user_goes_and_why() {
    let env = env();
    let p = &env.proxy;
    let t = Some(env.token());
    for user in ["alice", "bob", "carol", "Juliet"] {
        let jid = format!("{user}@{DOMAIN}");
        let (status, body) = call(p, "GET", &format!("/route?jid={jid}/phone"), t);
        assert_eq!(status, 200, "{body}");
        let r = json(&body);
        assert_route_fields_documented(&r);
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
    let t = Some(env.token());
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

// ---- attacks -------------------------------------------------------------------------------

/// A proxy with no admin token, in front of a backend nobody listens on (no server needed);
/// `allowed_hosts` set in its [metrics] table, if given.
fn open_proxy(allowed_hosts: Option<&str>) -> (Proxy, TestPki) {
    let pki = TestPki::new(&[DOMAIN]);
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port(false).unwrap()));
    let mut config = TestConfig::new(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        &[dead],
    );
    if let Some(host) = allowed_hosts {
        config = config.set("metrics.allowed_hosts", strings(&[host]));
    }
    (Proxy::start(&config), pki)
}

/// Send `head` (request line and headers, without the blank line) on a new connection,
/// asking it to close after the answer: the status and body.
fn raw_http(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{head}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("{head}: {e}; got {out:?}"));
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{head}: no status in {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

#[test]
fn posts_without_a_token_need_a_header_a_web_page_cannot_send() {
    let (p, _pki) = open_proxy(None);
    let draining = || p.backend("node1").is_draining();
    let host = format!("Host: {}", p.metrics);
    // What a form on any web page can make a browser send: a "simple" cross-origin POST.
    for path in ["/backends/node1/drain", "/reload"] {
        let (status, body) = raw_http(
            p.metrics,
            &format!(
                "POST {path} HTTP/1.1\r\n{host}\r\nOrigin: http://evil.example\r\n\
                 Content-Type: application/x-www-form-urlencoded"
            ),
        );
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("X-Requested-By"), "{body}");
    }
    assert!(!draining());
    // A custom header makes the request one a browser would first ask permission for (and
    // the proxy never grants it); any value will do.
    let (status, body) = raw_http(
        p.metrics,
        &format!("POST /backends/node1/drain HTTP/1.1\r\n{host}\r\nX-Requested-By: curl"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(draining());
    // The command line sends it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
        .args(["undrain", "--admin", &p.metrics.to_string(), "node1"])
        .env_remove("XMPP_LB_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!draining());
    // Reading is not changed by it.
    assert_eq!(
        raw_http(p.metrics, &format!("GET /metrics HTTP/1.1\r\n{host}")).0,
        200
    );
}

#[test]
fn host_names_are_refused_unless_listed_so_dns_rebinding_reads_nothing() {
    let (p, _pki) = open_proxy(Some("metrics.example.internal"));
    let port = p.metrics.port();
    let get = |path: &str, host: &str| {
        raw_http(p.metrics, &format!("GET {path} HTTP/1.1\r\nHost: {host}"))
    };
    // A page on evil.example whose name now resolves to the proxy's address.
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        "localhost.evil.example".to_string(),
        format!("metrics.example.internal.evil.example:{port}"),
    ] {
        for path in ["/metrics", "/backends", "/route?jid=alice@example.test"] {
            let (status, body) = get(path, &host);
            assert_eq!(status, 421, "{path} with Host: {host}: {body}");
            assert!(body.contains("allowed_hosts"), "{body}");
        }
        let (status, _) = raw_http(
            p.metrics,
            &format!("POST /reload HTTP/1.1\r\nHost: {host}\r\nX-Requested-By: x"),
        );
        assert_eq!(status, 421, "POST with Host: {host}");
        // Probes answer whatever the name: orchestrators probe by any name, and they tell
        // nothing but "alive" and "ready".
        assert_eq!(get("/healthz", &host).0, 200);
    }
    // IP literals, localhost and listed names, with or without a port, in any case.
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("[::1]:{port}"),
        "[::1]".to_string(),
        "10.1.2.3:80".to_string(),
        format!("localhost:{port}"),
        "LocalHost".to_string(),
        "metrics.example.internal".to_string(),
        format!("Metrics.Example.Internal.:{port}"),
    ] {
        let (status, body) = get("/metrics", &host);
        assert_eq!(status, 200, "Host: {host}: {body}");
    }
}

#[test]
fn a_client_that_never_finishes_its_request_head_is_closed() {
    let (p, _pki) = open_proxy(None);
    let limit = xmpp_lb::admin::HEADER_READ_TIMEOUT + Duration::from_secs(3);
    let closed_within = |sent: &[u8]| -> Duration {
        let started = Instant::now();
        let mut s = TcpStream::connect(p.metrics).unwrap();
        s.write_all(sent).unwrap();
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => started.elapsed(),
            Err(e) => panic!(
                "still open after {limit:?} ({e}) having sent {:?}",
                String::from_utf8_lossy(sent)
            ),
        }
    };
    // Slowloris: half a request head, then nothing.
    let t = closed_within(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
    assert!(
        t >= xmpp_lb::admin::HEADER_READ_TIMEOUT / 2,
        "closed too early: {t:?}"
    );
    // Nothing at all.
    closed_within(b"");
}

#[test]
fn admin_connections_are_capped() {
    let (p, _pki) = open_proxy(None);
    let cap = xmpp_lb::admin::MAX_CONNECTIONS;
    // Connections that send nothing take every slot (until the header timeout frees them).
    let mut silent: Vec<TcpStream> = (0..cap)
        .map(|_| TcpStream::connect(p.metrics).unwrap())
        .collect();
    let started = Instant::now();
    let mut one_more = TcpStream::connect(p.metrics).unwrap();
    write!(
        one_more,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // It waits, as connections over limits.max_connections wait, in the accept backlog...
    one_more
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 64];
    match one_more.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!(
            "answered past the cap: {other:?} {:?}",
            String::from_utf8_lossy(&buf)
        ),
    }
    assert!(started.elapsed() < xmpp_lb::admin::HEADER_READ_TIMEOUT);
    // ...and is served as soon as a slot is free.
    drop(silent.pop());
    one_more
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut out = String::new();
    one_more.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    assert!(
        started.elapsed() < xmpp_lb::admin::HEADER_READ_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
}
