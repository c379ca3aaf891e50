use std::net::IpAddr;

use super::*;
use crate::config::Config;

/// A runtime from `body` (listener and certificate added), or its build error.
fn build(body: &str) -> Result<Runtime, String> {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["example.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("c.key"), cert.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:0\"]\ntls = \"direct\"\ncert = \"c.pem\"\nkey = \"c.key\"\n\n{body}\n\
         [[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n\n\
         [[backend]]\nname = \"iot\"\naddress = \"127.0.0.1:3\"\n"
    );
    let path = dir.path().join("x.toml");
    let config = Config::from_toml(&text, &path).map_err(|e| e.to_string())?;
    Runtime::build(config, &StateRegistry::default()).map_err(|e| e.to_string())
}

const DOMAINS: &str = "[routing]\nkeys = [\"pin\", \"tenant\", \"jid\"]\ndomains = [\"example.test\"]\n\
    tenant_pattern = \"^(?<tenant>[a-z]+)-\"\n";

#[test]
fn pins_only_apply_in_domains_served_by_the_pinned_node() {
    let body = format!(
        "{DOMAINS}[[routing.pin]]\nmatch = \"tenant:acme\"\nbackend = \"iot\"\n\n\
         [[domain]]\nname = \"example.test\"\nbackends = [\"a\", \"b\"]\n\n\
         [[domain]]\nname = \"iot.test\"\nbackends = [\"iot\"]\n"
    );
    let rt = build(&body).unwrap();
    let ip = IpAddr::from([192, 0, 2, 1]);
    let iot = rt
        .decide("iot.test", Some("acme-1@iot.test"), ip, true)
        .unwrap();
    assert_eq!(iot.key, crate::route::policy::RouteKey::Pin);
    let other = rt
        .decide("example.test", Some("acme-1@example.test"), ip, true)
        .unwrap();
    assert_ne!(
        other.key,
        crate::route::policy::RouteKey::Pin,
        "the iot pin does not reach example.test: {other:?}"
    );
    let first = rt.order("example.test", &other)[0];
    assert!(["a", "b"].contains(&rt.backends[first].name.as_str()));
}

#[test]
fn a_jid_pin_to_a_node_outside_its_domain_is_refused() {
    let body = format!(
        "{DOMAINS}[[routing.pin]]\nmatch = \"sensor@example.test\"\nbackend = \"iot\"\n\n\
         [[domain]]\nname = \"example.test\"\nbackends = [\"a\", \"b\"]\n"
    );
    let err = build(&body).err().expect("refused");
    assert!(err.contains("does not serve example.test"), "{err}");
}
