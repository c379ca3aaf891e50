//! The admin endpoints (`admin::router`, its guard included) on any request head: no panic,
//! and the guard lets nothing through that it should not. Every request goes to two proxies,
//! one with a token and one without, and the answers are checked against a model of the
//! guard written from its documentation:
//!
//! - a protected endpoint answers (its own 200, 400, 404 or 422) only if every `Host` header,
//!   and the authority of an absolute request target, is an IP literal, `localhost` or a
//!   listed name (with or without a port and a final dot); with a token, only if
//!   `Authorization` is `Bearer TOKEN`; without one, a POST only with `X-Requested-By`;
//! - each refusal (421, 401, 403) happens only when its model says so;
//! - `/backends/NAME/drain` and `undrain` succeed only for a configured backend and refuse
//!   only names that are not; `/route` names a configured backend in a served domain.
#![no_main]

#[path = "common/http_input.rs"]
mod http_input;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xmpp_lb::config::Config;
use xmpp_lb::fuzzing::{AdminApp, RawRequest, RawResponse};

const TOKEN: &str = "fuzz-admin-token-3f9c2a7d1e";
const ALLOWED: &[&str] = &["metrics.example.test"];
const BACKENDS: &[&str] = &["node1", "node2", "node3", "iot1"];
const DOMAINS: &[&str] = &["example.test", "iot.example.test"];

/// Nodes nobody listens on: nothing here connects to them.
fn config(token: bool) -> Config {
    let mut text = String::from(
        r#"
[[listener]]
name = "c2s"
bind = ["127.0.0.1:5222"]
tls = "starttls"
cert = "certs/example.test.pem"
key = "certs/example.test.key"

[routing]
keys = ["pin", "jid"]
domains = ["example.test", "iot.example.test"]

[[routing.pin]]
match = "pinned@example.test"
backend = "node3"

[[backend]]
name = "node1"
address = "127.0.0.1:1"
[[backend]]
name = "node2"
address = "127.0.0.1:2"
[[backend]]
name = "node3"
address = "127.0.0.1:3"
[[backend]]
name = "iot1"
address = "127.0.0.1:4"

[[domain]]
name = "example.test"
backends = ["node1", "node2", "node3"]
keys = ["pin", "jid"]
[[domain]]
name = "iot.example.test"
backends = ["iot1"]
keys = ["subnet"]

[metrics]
bind = "127.0.0.1:9464"
allowed_hosts = ["metrics.example.test"]
"#,
    );
    if token {
        text.push_str("token_file = \"../fuzz/fixtures/admin.token\"\n");
    }
    // A file that does not exist: /reload is refused rather than read anything.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fuzz-admin.toml");
    Config::from_toml(&text, Path::new(path)).expect("the fuzz configuration is valid")
}

fn apps() -> &'static (AdminApp, AdminApp) {
    static APPS: OnceLock<(AdminApp, AdminApp)> = OnceLock::new();
    APPS.get_or_init(|| {
        (
            AdminApp::new(config(true)).expect("runtime with a token"),
            AdminApp::new(config(false)).expect("runtime without a token"),
        )
    })
}

/// The model of an acceptable host: `[IPv6]` or `[IPv6]:PORT`, else `NAME` or `NAME:PORT`
/// with a port of 1 to 5 digits, where NAME is an IPv4 address or (without one final dot)
/// `localhost` or a listed name, in any case.
fn host_ok(value: &[u8]) -> bool {
    let Some(host) = http_input::as_str(value) else {
        return false;
    };
    let port_ok = |p: &str| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return false;
        };
        let after = &rest[close + 1..];
        return rest[..close].parse::<Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    let name = match host.rfind(':') {
        Some(i) if port_ok(&host[i + 1..]) => &host[..i],
        Some(_) => return false,
        None => host,
    };
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && std::iter::once("localhost")
            .chain(ALLOWED.iter().copied())
            .any(|a| a.eq_ignore_ascii_case(name))
}

fn hosts_ok(req: &RawRequest) -> bool {
    http_input::values(req, "host").iter().all(|h| host_ok(h))
        && http_input::target_authority(&req.target).is_none_or(host_ok)
}

fn token_ok(req: &RawRequest) -> bool {
    let Some(value) = http_input::values(req, "authorization").first().copied() else {
        return false;
    };
    let Some(value) = http_input::as_str(value) else {
        return false;
    };
    value
        .split_once(' ')
        .is_some_and(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && t.trim() == TOKEN)
}

fn body(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn check(req: &RawRequest, with_token: bool, r: &RawResponse) {
    let text = body(r);
    let probe = matches!(http_input::path(&req.target), b"/healthz" | b"/readyz");
    let post = req.method == b"POST";
    let requested_by = !http_input::values(req, "x-requested-by").is_empty();
    let reached = !probe
        && match r.status {
            200 => true,
            400 => text.contains("\"error\""),
            404 => text.starts_with("no backend named"),
            422 => text.starts_with("reload refused"),
            _ => false,
        };
    if reached {
        assert!(hosts_ok(req), "a refused host reached an endpoint: {req:?}");
        if with_token {
            assert!(token_ok(req), "reached without the token: {req:?}");
        } else if post {
            assert!(requested_by, "a POST without X-Requested-By: {req:?}");
        }
    }
    match r.status {
        421 => assert!(!hosts_ok(req), "a good host refused: {req:?}"),
        401 => {
            assert!(r.header("www-authenticate").is_some());
            assert!(
                with_token && !token_ok(req),
                "refused with the token: {req:?}"
            );
        }
        403 => assert!(
            !with_token && post && !requested_by,
            "refused as a web page: {req:?}"
        ),
        _ => {}
    }
    if reached && r.status == 200 && post && text.contains(": ") {
        // drain / undrain: "NAME: draining" names a configured backend.
        if let Some((name, _)) = text.rsplit_once(": ") {
            assert!(BACKENDS.contains(&name), "drained {name:?}");
        }
    }
    if r.status == 404
        && let Some(rest) = text.strip_prefix("no backend named ")
    {
        let name: String = serde_json::from_str(rest.trim()).unwrap_or_else(|_| rest.into());
        assert!(
            !BACKENDS.contains(&name.as_str()),
            "{name:?} exists: {text}"
        );
    }
    if reached && r.status == 200 && http_input::path(&req.target) == b"/route" {
        let v: serde_json::Value = serde_json::from_str(&text).expect("/route answers JSON");
        let backend = v["backend"].as_str().expect("a backend");
        let domain = v["domain"].as_str().expect("a domain");
        assert!(
            BACKENDS.contains(&backend) && DOMAINS.contains(&domain),
            "{v}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let req = http_input::request(data);
    let (with, without) = apps();
    for (app, token) in [(with, true), (without, false)] {
        if let Some(r) = app.call(&req) {
            check(&req, token, &r);
        }
    }
});
