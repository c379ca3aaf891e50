//! A real browser through the proxy: Converse.js (npm) in headless Chromium (the Debian
//! package), served as a page of https://chat.example.test, discovers the WebSocket endpoint
//! through the proxy's host-meta, logs in over wss:// and exchanges a message with a TCP
//! client (slixmpp) of a user on the same node. The same user's browser and TCP sessions land
//! on the same node. The screenshot of the logged-in page is kept in
//! `target/tmp/websocket-browser/converse.png`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use testkit::client::{python, run_client, script_path};
use testkit::env::{DOMAIN, EnvBuilder};
use testkit::process::{sigterm, spawn_child};
use toml::Table;

/// juliet and romeo share a node (node2) with three nodes (golden ring placement).
const USERS: &[(&str, &str)] = &[
    ("juliet", "pw-juliet"),
    ("romeo", "pw-romeo"),
    ("alice", "pw-alice"),
];

/// A child process whose standard output is read line by line on a thread.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_child(cmd).expect("spawn");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next JSON line within `limit`.
    fn json(&mut self, limit: Duration, what: &str) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
                        return v;
                    }
                }
                Err(_) => {
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    panic!("{what}: no result within {limit:?}; stderr: {err}");
                }
            }
        }
    }

    /// Close its standard input, wait up to `limit`, then stop it by pid.
    fn finish(mut self, limit: Duration) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = sigterm(self.child.id());
        std::thread::sleep(Duration::from_secs(2));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn converse_js_in_chromium_discovers_the_endpoint_logs_in_and_chats_with_a_tcp_client() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: run scripts/install-deps.sh"
    );
    let web = testkit::ws::node_clients_dir();
    assert!(
        web.join("node_modules/converse.js/dist/converse.min.js")
            .exists()
            && web.join("node_modules/puppeteer-core").is_dir(),
        "converse.js and puppeteer-core are not installed: run scripts/install-deps.sh"
    );
    let env = EnvBuilder::new(3)
        .users(USERS)
        .config(|c| {
            let mut wss = Table::new();
            wss.insert("websocket".into(), "/xmpp-websocket".into());
            wss.insert(
                "websocket_origins".into(),
                toml::Value::Array(vec!["https://chat.example.test".into()]),
            );
            c.listener("wss", "direct", wss)
        })
        .start();
    let wss = env.proxy.addr("wss", false);
    let direct = env.proxy.addr("direct", false);
    let ca = env.ca();
    let juliet_node = env.proxy.route_cli(&format!("juliet@{DOMAIN}"));
    assert_eq!(env.proxy.route_cli(&format!("romeo@{DOMAIN}")), juliet_node);

    // romeo, over TCP (slixmpp), answers the first message he gets.
    let port = direct.port().to_string();
    let mut romeo = Command::new(python());
    romeo.arg(script_path()).args([
        "reply",
        "--jid",
        &format!("romeo@{DOMAIN}"),
        "--password",
        "pw-romeo",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "direct",
        "--ca",
        ca.to_str().unwrap(),
        "--wait",
        "60",
    ]);
    let mut romeo = Proc::spawn(romeo);
    let login = romeo.json(Duration::from_secs(20), "romeo's login");
    assert_eq!(login["ok"], true, "{login}");
    assert_eq!(login["node"], juliet_node.as_str(), "{login}");

    // juliet, in Converse.js in Chromium.
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("websocket-browser");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("converse.png");
    let _ = std::fs::remove_file(&shot);
    let mut browser = Command::new("node");
    browser
        .current_dir(&web)
        .arg(web.join("converse.mjs"))
        .args([
            "--domain",
            DOMAIN,
            "--port",
            &wss.port().to_string(),
            "--cert",
            env.pki.cert_path(DOMAIN).to_str().unwrap(),
            "--jid",
            &format!("juliet@{DOMAIN}"),
            "--password",
            "pw-juliet",
            "--to",
            &format!("romeo@{DOMAIN}"),
            "--screenshot",
            shot.to_str().unwrap(),
        ]);
    let mut browser = Proc::spawn(browser);
    let got = browser.json(Duration::from_secs(60), "Converse.js");
    assert_eq!(got["ok"], true, "{got}");
    assert!(
        got["jid"]
            .as_str()
            .unwrap()
            .starts_with(&format!("juliet@{DOMAIN}/")),
        "{got}"
    );
    assert_eq!(got["reply"], "reply: hello from the browser", "{got}");
    assert!(
        !got["host_meta"].as_array().unwrap().is_empty(),
        "the endpoint was discovered through host-meta: {got}"
    );
    assert!(
        got["service"]
            .as_str()
            .unwrap_or_default()
            .starts_with("wss://"),
        "{got}"
    );
    let heard = romeo.json(Duration::from_secs(20), "romeo's message");
    assert_eq!(heard["ok"], true, "{heard}");
    assert_eq!(heard["received"], "hello from the browser", "{heard}");

    // The browser session is on juliet's node, and so is her TCP session.
    let i: usize = juliet_node
        .trim_start_matches("node")
        .parse::<usize>()
        .unwrap()
        - 1;
    assert!(env.cluster.has_session(i, &format!("juliet@{DOMAIN}")));
    let tcp = run_client(&[
        "login",
        "--jid",
        &format!("juliet@{DOMAIN}"),
        "--password",
        "pw-juliet",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "direct",
        "--ca",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(tcp["ok"], true, "{tcp}");
    assert_eq!(tcp["node"], juliet_node.as_str(), "{tcp}");
    assert!(
        env.proxy
            .metric_value("xmpp_lb_http_requests_total{listener=\"wss\",result=\"host_meta\"}")
            + env
                .proxy
                .metric("xmpp_lb_http_requests_total{listener=\"wss\",result=\"host_meta_json\"}")
                .unwrap_or(0.0)
            >= 1.0
    );
    browser.finish(Duration::from_secs(10));
    romeo.finish(Duration::from_secs(5));
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    let _ = std::io::stdout().flush();
    println!("screenshot: {}", shot.display());
}
