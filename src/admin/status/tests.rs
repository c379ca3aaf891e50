use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::runtime::StateRegistry;

/// A listener name that would be markup if the page ever used it as such.
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// A runtime with two backends and the hostile listener name.
fn runtime(dir: &std::path::Path) -> Runtime {
    let cert = rcgen::generate_simple_self_signed(vec!["example.test".to_string()]).unwrap();
    std::fs::write(dir.join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), cert.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "[[listener]]\nname = {HOSTILE:?}\nbind = [\"127.0.0.1:0\"]\ntls = \"direct\"\ncert = \"c.pem\"\nkey = \"c.key\"\n\n\
         [routing]\ndomains = [\"example.test\"]\nkey = \"jid\"\n\n\
         [[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nweight = 3\n\n\
         [[backend]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\nbackend_tls = \"direct\"\ntls_server_name = \"xmpp.example.test\"\nproxy_protocol = \"v2\"\n"
    );
    let path = dir.join("x.toml");
    let config = Config::from_toml(&text, &path).unwrap();
    Runtime::build(config, &StateRegistry::default()).unwrap()
}

#[test]
fn the_report_reads_the_registry_and_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let m = Metrics::new();
    m.backend_connections_open.with_label_values(&["a"]).set(3);
    m.backend_connections_open.with_label_values(&["b"]).set(1);
    m.backend_logins_total
        .with_label_values(&["a", "success"])
        .inc_by(12);
    m.backend_logins_total
        .with_label_values(&["a", "failure"])
        .inc_by(2);
    m.connections_total
        .with_label_values(&[HOSTILE, "direct"])
        .inc_by(5);
    m.tls_handshakes_total
        .with_label_values(&[HOSTILE, "resumed"])
        .inc();
    m.listener_refusals_total
        .with_label_values(&[HOSTILE, "policy-violation"])
        .inc();
    let b = rt.backends().by_name("b").unwrap();
    b.state.set_draining(true);
    let a = rt.backends().by_name("a").unwrap();
    a.state.record(false, 2, 3);
    a.state.note_check(crate::backend::state::CheckResult {
        ok: false,
        latency: Duration::from_millis(7),
        at: UNIX_EPOCH + Duration::from_secs(1000),
        error: "connection refused".into(),
    });
    let readings = Readings::take(&m);
    let start = UNIX_EPOCH + Duration::from_secs(1000);
    // One sample 60 s ago, when node a had logged in 2 users and failed none.
    let mut old = Sample::read(&readings, ["a", "b"], start);
    old.nodes.get_mut("a").unwrap().logins = 2.0;
    old.nodes.get_mut("a").unwrap().failures = 0.0;
    let at = Clock {
        started: start - Duration::from_secs(3661),
        now: start + Duration::from_secs(60),
    };
    let report = report(&rt, &readings, &[old], at);

    let fleet = &report["fleet"];
    assert_eq!(fleet["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(fleet["uptime_seconds"], 3721);
    assert_eq!(fleet["users"], 4.0);
    assert_eq!(
        fleet["config_file"],
        dir.path().join("x.toml").display().to_string()
    );
    assert_eq!(fleet["domains"], json!(["example.test"]));
    assert_eq!(fleet["token_required"], false);
    assert_eq!(fleet["sm_key_ids"], json!([]));

    let nodes = report["nodes"].as_array().unwrap();
    let (na, nb) = (&nodes[0], &nodes[1]);
    assert_eq!(na["name"], "a");
    assert_eq!(na["state"], "up");
    let fall = rt.config().health.fall;
    assert_eq!(
        na["trend"],
        json!({"word": "falling", "count": 1, "of": fall})
    );
    assert_eq!(na["users"], 3.0);
    assert_eq!(na["user_share"], 0.75);
    assert_eq!(na["logins_total"], 12.0);
    assert_eq!(na["login_failures_total"], 2.0);
    assert_eq!(
        na["recent"],
        json!({"seconds": 60.0, "logins": 10.0, "failures": 2.0, "logins_per_second": 10.0 / 60.0})
    );
    assert_eq!(na["weight"], 3);
    assert_eq!(na["last_check"]["ok"], false);
    assert_eq!(na["last_check"]["latency_ms"], 7.0);
    assert_eq!(na["last_check"]["error"], "connection refused");
    assert_eq!(na["links"][0]["tls"], "none");
    assert_eq!(nb["state"], "draining");
    assert_eq!(nb["trend"], Value::Null);
    assert_eq!(nb["links"][0]["tls"], "direct");
    assert_eq!(nb["links"][0]["proxy_protocol"], "v2");
    assert_eq!(nb["links"][0]["server_name"], "xmpp.example.test");
    assert_eq!(nb["last_check"], Value::Null);
    // Ring shares: weight 3 against 1.
    let share = na["ring_share"]["example.test"].as_f64().unwrap();
    assert!((0.6..0.9).contains(&share), "{share}");

    let l = &report["listeners"][0];
    assert_eq!(l["name"], HOSTILE, "text is data: the page escapes it");
    assert_eq!(l["connections_total"], 5.0);
    assert_eq!(l["tls_handshakes"], json!({"full": 0.0, "resumed": 1.0}));
    assert_eq!(l["refusals"], json!({"policy-violation": 1.0}));

    // The chart ends with the current values.
    let h = &report["history"];
    assert_eq!(h["times"].as_array().unwrap().len(), 2);
    assert_eq!(h["nodes"]["a"]["users"], json!([3.0, 3.0]));
    assert_eq!(
        h["nodes"]["a"]["logins_per_second"],
        json!([null, 10.0 / 60.0])
    );
}

#[test]
fn the_policy_allows_exactly_the_page_s_own_script_and_style() {
    assert_eq!(PAGE.matches("<script>").count(), 1, "one inline script");
    assert_eq!(PAGE.matches("<style>").count(), 1, "one inline style");
    assert!(!PAGE.contains("<script src"), "no external script");
    assert!(!PAGE.contains("innerHTML"), "data never becomes markup");
    let policy = POLICY.as_str();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'sha256-"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    // Only the SVG namespace is a URL in the page: nothing is fetched from elsewhere.
    for (i, _) in PAGE.match_indices("://") {
        assert!(PAGE[i - 4..].starts_with("http://www.w3.org/2000/svg\""));
    }
    let response = page_response(StatusCode::UNAUTHORIZED);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key(WWW_AUTHENTICATE));
}
