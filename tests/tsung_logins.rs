//! Logins by tsung, an independent load tester (Erlang/OTP's TLS client with Nagle on, as many
//! real clients), through xmpp-lb, through HAProxy and directly to the same Prosody node, in one
//! run: a bounded `benches/tsung.sh`. Every login must succeed (warm-up sessions that close
//! their stream right after SASL success included, with no stream error from the proxy), and
//! the login median through xmpp-lb must stay within three times HAProxy's: a coarse guard
//! against a delayed-ACK stall (40 ms on Linux, against a few ms through HAProxy) coming back.
//!
//! Everything runs on free loopback ports; the script stops every process it starts by pid.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn tsung_logs_in_through_xmpp_lb_as_fast_as_through_haproxy() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/tsung.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script)
        .env("LOGINS", "45")
        .env("RATE", "30")
        .env("WARMUP", "6")
        .env("XMPP_LB_BIN", env!("CARGO_BIN_EXE_xmpp-lb"))
        .env("TSUNG_WORK", work.path())
        .output()
        .expect("bash runs benches/tsung.sh (tsung from scripts/install-deps.sh)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    let results = std::fs::read_to_string(work.path().join("results.json"))
        .unwrap_or_else(|e| panic!("no results ({e}):\n{report}"));
    let r: Value = serde_json::from_str(&results).expect("results are JSON");
    assert!(out.status.success(), "{report}");
    assert_eq!(r["all_ok"], Value::Bool(true), "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert_eq!(r["xmpp_lb_stream_errors"], 0, "{r}");
    let lb = &r["paths"]["xmpp-lb"];
    let haproxy = &r["paths"]["haproxy"];
    assert!(
        lb["logins"].as_u64().unwrap() >= 5,
        "too few logins through xmpp-lb: {r}"
    );
    assert!(
        haproxy["logins"].as_u64().unwrap() >= 5,
        "too few logins through HAProxy: {r}"
    );
    let (lb_median, haproxy_median) = (
        lb["median_ms"].as_f64().unwrap(),
        haproxy["median_ms"].as_f64().unwrap(),
    );
    assert!(
        lb_median <= 3.0 * haproxy_median,
        "login median through xmpp-lb {lb_median:.1} ms against {haproxy_median:.1} ms through HAProxy"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the bounded run took {:?}",
        started.elapsed()
    );
}
