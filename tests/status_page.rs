//! The HTML status page (`GET /status`, its data `GET /status.json`) in a real browser:
//! headless Chromium (the Debian package) driven by puppeteer-core opens the page on the
//! admin address while real clients are logged in through the proxy to real Prosody nodes.
//! The operator's token is typed into the page's form; the numbers the DOM shows are those
//! of `/metrics`; a node is drained through its button and confirmation, and the DOM and
//! `/backends` both say so. A listener named like markup shows as text, and nothing it
//! could inject exists. Without the token the page, its data and the buttons answer 401.
//! The screenshots are kept in `target/tmp/status-page/` (paths printed).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::config::strings;
use testkit::env::{DOMAIN, EnvBuilder, accounts};
use testkit::process::{sigterm, spawn_child};
use testkit::proxy::sum_where;
use testkit::raw::{Raw, header, plain_auth};
use toml::Table;

/// A listener name that is markup: if the page ever parsed it, an image would exist and its
/// error handler would set `window.__pwned`. (Backend names cannot carry it: the
/// configuration allows letters, digits, '-', '_' and '.' only; `names_are_checked` below.)
const HOSTILE: &str = "<img src=x onerror=window.__pwned=1>";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// (status, body) of a request to the admin address.
fn call(admin: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("http://{admin}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut resp = match method {
        "GET" => {
            let mut r = agent().get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent().post(&url).header("X-Requested-By", "test");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_empty()
        }
    }
    .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// The status page in Chromium, one command at a time.
struct Page {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Page {
    fn start(url: &str, token: &str) -> Page {
        let web = testkit::ws::node_clients_dir();
        assert!(
            web.join("node_modules/puppeteer-core").is_dir(),
            "puppeteer-core is not installed: run scripts/install-deps.sh"
        );
        let mut cmd = Command::new("node");
        cmd.current_dir(&web)
            .arg(web.join("status.mjs"))
            .args(["--url", url, "--token", token])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_child(cmd).expect("node starts");
        let out = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Page {
            child,
            stdin,
            lines,
        }
    }

    /// Send one command; its answer (which must be `ok` and free of page errors).
    fn ask(&mut self, command: Value) -> Value {
        let stdin = self.stdin.as_mut().expect("open");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no answer to {command} within 30 s"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["ok"], true, "{command}: {v}");
        assert_eq!(
            v["problems"],
            json!([]),
            "{command}: the page reported errors: {v}"
        );
        v
    }

    /// Read the DOM after a refresh later than `after` (refresh count).
    fn read(&mut self, after: u64) -> Value {
        self.ask(json!({"cmd": "read", "after": after}))
    }

    fn finish(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{}", json!({"cmd": "quit"}));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = sigterm(self.child.id());
        std::thread::sleep(Duration::from_secs(1));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A number the page shows (its text, as rendered).
fn shown(v: &Value) -> f64 {
    v.as_str()
        .unwrap_or_else(|| panic!("not text: {v}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[test]
fn the_status_page_shows_the_metrics_drains_a_node_and_escapes_what_it_shows() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: run scripts/install-deps.sh"
    );
    let users = accounts("user", 1..=8);
    // The fleet's keys, whose ids the page shows for comparing proxies by eye.
    let keys = tempfile::tempdir().unwrap();
    let key_file = |name: &str, secret: &str| {
        let path = keys.path().join(name);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        path.display().to_string()
    };
    let sm = key_file("sm.key", "status page test: stream management secret");
    let tickets = [
        key_file("t2.key", "status page test: newest ticket secret"),
        key_file("t1.key", "status page test: older ticket secret"),
    ];
    let id = |path: &str| {
        xmpp_lb::keys::FleetKey::load(std::path::Path::new(path))
            .unwrap()
            .id_hex()
    };
    let (sm_id, ticket_ids) = (id(&sm), format!("{} {}", id(&tickets[0]), id(&tickets[1])));
    // Three Prosody nodes, and node4 where nothing listens: it goes down.
    let env = EnvBuilder::new(3)
        .dead_backend()
        .users(&users)
        .token()
        .config({
            let (sm, tickets) = (sm.clone(), tickets.clone());
            move |c| {
                c.set("resumption.sm_key_files", strings(&[&sm]))
                    .set(
                        "resumption.tls_ticket_key_files",
                        strings(&[&tickets[0], &tickets[1]]),
                    )
                    .set("health.interval", "300ms")
                    .set("health.timeout", "2s")
                    .listener(HOSTILE, "direct", Table::new())
            }
        })
        .start();
    let admin = env.proxy.metrics.to_string();
    let token = env.token().to_string();
    let ca = env.ca();
    let direct = env.proxy.addr("direct", false);
    let hostile = env.proxy.addr(HOSTILE, false);

    // Without the token: the page (its login form, no data), its data and the buttons.
    let (status, body) = call(&admin, "GET", "/status", None);
    assert_eq!(status, 401);
    assert!(
        body.contains("id=\"login\"") && !body.contains("node1"),
        "{body}"
    );
    for (method, path) in [
        ("GET", "/status.json"),
        ("POST", "/backends/node1/drain"),
        ("POST", "/reload"),
    ] {
        assert_eq!(call(&admin, method, path, None).0, 401, "{method} {path}");
        assert_eq!(
            call(&admin, method, path, Some("not-the-token")).0,
            401,
            "{method} {path} with a wrong token"
        );
    }
    assert!(!env.proxy.backend("node1").is_draining());
    let (status, _) = call(&admin, "GET", "/status", Some(&token));
    assert_eq!(status, 200);

    let deadline = Instant::now() + Duration::from_secs(10);
    while env.proxy.backend("node4").is_healthy() {
        assert!(Instant::now() < deadline, "node4 never failed its checks");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Real clients: six users through `direct`, two through the hostile listener, and one
    // failed login; all held open.
    let held: Vec<Raw> = env.proxy.block_on(async {
        let mut held = Vec::new();
        for (i, (user, pw)) in users.iter().enumerate() {
            let addr = if i < 6 { direct } else { hostile };
            held.push(Raw::login(addr, DOMAIN, &ca, user, pw).await);
        }
        let mut wrong = Raw::direct_tls(direct, DOMAIN, &ca).await;
        wrong.send(&header(DOMAIN, None)).await;
        wrong.expect("</stream:features>").await;
        wrong.send(&plain_auth("user1", "not-the-password")).await;
        wrong.expect("<failure").await;
        drop(wrong);
        // And one the proxy refuses itself: a domain it does not serve.
        let mut unknown = Raw::direct_tls(direct, DOMAIN, &ca).await;
        unknown.send(&header("elsewhere.test", None)).await;
        unknown.read_to_close(Duration::from_secs(10)).await;
        held
    });
    assert_eq!(held.len(), 8);

    let mut page = Page::start(&format!("http://{admin}/status"), &token);
    let bare = page.ask(json!({"cmd": "open_without_token"}));
    assert_eq!(bare["status"], 401, "{bare}");
    assert_eq!(bare["login_visible"], true, "{bare}");
    assert_eq!(bare["content_visible"], false, "{bare}");
    assert_eq!(bare["nodes"], 0, "{bare}");
    let opened = page.ask(json!({"cmd": "open"}));
    assert_eq!(opened["stored"], true, "{opened}");

    // What the DOM shows is what /metrics says. Nothing moves meanwhile (the clients idle), so
    // a scrape before and after the read agree, and the page must show exactly that.
    let scrape = || call(&admin, "GET", "/metrics", Some(&token)).1;
    let (dom, before) = {
        let mut tries = 0;
        loop {
            let before = scrape();
            let seen = page.ask(json!({"cmd": "read", "after": 0}))["refreshes"]
                .as_u64()
                .unwrap();
            let dom = page.read(seen);
            let after = scrape();
            let moving = |name: &str| sum_where(&before, name, &[]) != sum_where(&after, name, &[]);
            if ![
                "xmpp_lb_backend_connections_open",
                "xmpp_lb_backend_logins_total",
                "xmpp_lb_connections_total",
                "xmpp_lb_tls_handshakes_total",
            ]
            .iter()
            .any(|n| moving(n))
            {
                break (dom, before);
            }
            tries += 1;
            assert!(tries < 5, "the counters never held still");
        }
    };
    let m = |name: &str, labels: &[(&str, &str)]| sum_where(&before, name, labels);
    let nodes = dom["nodes"].as_object().unwrap();
    assert_eq!(
        nodes.keys().collect::<Vec<_>>(),
        ["node1", "node2", "node3", "node4"],
        "{dom}"
    );
    let mut users_shown = 0.0;
    for (name, n) in nodes {
        let backend = [("backend", name.as_str())];
        let (state, check) = if name == "node4" {
            ("down", "failed in ")
        } else {
            ("up", "ok in ")
        };
        assert_eq!(n["state"], state, "{name}: {n}");
        let last_check = n["last_check"].as_str().unwrap();
        assert!(last_check.starts_with(check), "{name}: {n}");
        // A failed check says why.
        assert_eq!(name == "node4", last_check.contains(" — "), "{name}: {n}");
        users_shown += shown(&n["users"]);
        assert_eq!(
            shown(&n["users"]),
            m("xmpp_lb_backend_connections_open", &backend),
            "{name}: {n}"
        );
        assert_eq!(
            shown(&n["logins_total"]),
            m(
                "xmpp_lb_backend_logins_total",
                &[backend[0], ("result", "success")]
            ),
            "{name}: {n}"
        );
        assert_eq!(
            shown(&n["login_failures_total"]),
            m(
                "xmpp_lb_backend_logins_total",
                &[backend[0], ("result", "failure")]
            ),
            "{name}: {n}"
        );
        assert!(
            n["links"].as_str().unwrap().contains("tls none, PROXY off"),
            "{n}"
        );
        assert_eq!(n["buttons"], json!(["drain"]), "{n}");
        let charts: Vec<&str> = n["charts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["paths"].as_u64() >= Some(1))
            .map(|c| c["chart"].as_str().unwrap())
            .collect();
        assert_eq!(charts, ["users", "logins"], "{name}: charts drawn: {n}");
    }
    assert_eq!(users_shown, 8.0, "every held client is shown: {dom}");
    assert_eq!(
        nodes
            .values()
            .map(|n| shown(&n["login_failures_total"]))
            .sum::<f64>(),
        1.0
    );
    assert_eq!(shown(&dom["fleet"]["users"]), 8.0, "{dom}");
    for (name, connections) in [("direct", 8.0), (HOSTILE, 2.0)] {
        let l = &dom["listeners"][name];
        let me = [("listener", name)];
        assert_eq!(l["name"], name, "shown as text: {dom}");
        assert_eq!(
            shown(&l["connections_total"]),
            m("xmpp_lb_connections_total", &me),
            "{name}: {l}"
        );
        assert_eq!(shown(&l["connections_total"]), connections, "{name}: {l}");
        let (full, resumed) = l["tls_handshakes"]
            .as_str()
            .unwrap()
            .split_once(" / ")
            .unwrap();
        let kind = |k| m("xmpp_lb_tls_handshakes_total", &[me[0], ("kind", k)]);
        assert_eq!(shown(&json!(full)), kind("full"), "{name}: {l}");
        assert_eq!(shown(&json!(resumed)), kind("resumed"), "{name}: {l}");
    }
    let refused = m(
        "xmpp_lb_listener_refusals_total",
        &[("listener", "direct"), ("reason", "host-unknown")],
    );
    assert_eq!(refused, 1.0);
    assert_eq!(
        dom["listeners"]["direct"]["refusals"], "host-unknown 1",
        "{dom}"
    );
    assert_eq!(dom["listeners"][HOSTILE]["refusals"], "none", "{dom}");
    // The hostile name is text: no element came of it, no handler ran.
    assert_eq!(dom["images"], 0, "{dom}");
    assert_eq!(dom["elements_in_listener_names"], 0, "{dom}");
    assert_eq!(dom["pwned"], Value::Null, "{dom}");
    assert!(
        dom["fleet"]["config_file"]
            .as_str()
            .unwrap()
            .ends_with("xmpp-lb.toml"),
        "{dom}"
    );
    assert_eq!(dom["fleet"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(dom["fleet"]["listening"], "yes", "{dom}");
    assert_eq!(dom["fleet"]["sm_key_ids"], sm_id.as_str(), "{dom}");
    assert_eq!(dom["fleet"]["ticket_key_ids"], ticket_ids.as_str(), "{dom}");

    // The charts come from the history: the sampler's first sample (taken at start) and the
    // current values at least.
    let (_, data) = call(&admin, "GET", "/status.json", Some(&token));
    let data: Value = serde_json::from_str(&data).unwrap();
    let times = data["history"]["times"].as_array().unwrap();
    assert!(times.len() >= 2, "{}", data["history"]);
    assert_eq!(data["history"]["interval_seconds"], 10);
    assert!(times.windows(2).all(|w| w[0].as_u64() <= w[1].as_u64()));

    // Where does user3 go? The page's answer is /route's.
    let jid = format!("user3@{DOMAIN}");
    let (_, route) = call(&admin, "GET", &format!("/route?jid={jid}"), Some(&token));
    let route: Value = serde_json::from_str(&route).unwrap();
    let asked = page.ask(json!({"cmd": "route", "jid": jid}));
    assert_eq!(asked["backend"], route["backend"], "{asked} vs {route}");
    assert_eq!(asked["rule"], route["rule"], "{asked} vs {route}");
    assert_eq!(asked["key"], "jid", "{asked}");

    // Drain the node with the most users, through its button and the confirmation.
    let busiest = nodes
        .iter()
        .max_by(|a, b| shown(&a.1["users"]).total_cmp(&shown(&b.1["users"])))
        .unwrap()
        .0
        .clone();
    let refreshes = dom["refreshes"].as_u64().unwrap();
    let drained = page.ask(json!({"cmd": "drain", "node": busiest}));
    assert!(
        drained["confirm_text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Drain {busiest}?")),
        "{drained}"
    );
    assert!(
        drained["action_result"]
            .as_str()
            .unwrap()
            .contains(": 200 "),
        "{drained}"
    );
    assert!(env.proxy.backend(&busiest).is_draining());
    let (_, backends) = call(&admin, "GET", "/backends", Some(&token));
    let backends: Value = serde_json::from_str(&backends).unwrap();
    let listed = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == busiest.as_str())
        .unwrap();
    assert_eq!(listed["state"], "draining", "{backends}");
    let after = page.read(refreshes);
    assert_eq!(
        after["kept"], true,
        "the page refreshed in place, never reloaded: {after}"
    );
    assert!(after["refreshes"].as_u64() > Some(refreshes), "{after}");
    let n = &after["nodes"][&busiest];
    assert_eq!(n["state"], "draining", "{after}");
    assert_eq!(n["buttons"], json!(["undrain"]), "{after}");

    // Screenshots: a desktop window, and a phone's width (nothing wider than the screen).
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    let desktop = dir.join("status.png");
    let phone = dir.join("status-phone.png");
    let shot =
        page.ask(json!({"cmd": "screenshot", "path": desktop, "width": 1280, "height": 900}));
    assert!(
        shot["scroll_width"].as_u64() <= shot["width"].as_u64(),
        "{shot}"
    );
    let shot = page.ask(json!({"cmd": "screenshot", "path": phone, "width": 390, "height": 844}));
    assert!(
        shot["scroll_width"].as_u64() <= shot["width"].as_u64(),
        "the page fits a phone's width: {shot}"
    );
    page.finish();
    for png in [&desktop, &phone] {
        let bytes = std::fs::read(png).expect("the screenshot was written");
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{png:?}"
        );
        println!("screenshot: {}", png.display());
    }
    drop(held);
}

/// Backend names never carry markup: the configuration refuses them, so the listener name
/// (free text) is what the page test injects.
#[test]
fn names_are_checked() {
    let pki = testkit::pki::TestPki::new(&[DOMAIN]);
    let config = testkit::config::TestConfig::new(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        &["127.0.0.1:1".parse().unwrap()],
    )
    .backend(HOSTILE, "127.0.0.1:2".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    std::fs::write(&path, config.render()).unwrap();
    let err = xmpp_lb::Config::load(&path).expect_err("refused");
    assert!(err.to_string().contains("use letters, digits"), "{err}");
}
