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

/// A DNS change is applied like a reload: members that stay keep their state (health,
/// connections), only the ring changes, and the gauge follows.
#[tokio::test]
async fn group_members_are_applied_like_a_reload() {
    use crate::config::{GroupMember, GroupMembers};
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["example.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("c.key"), cert.signing_key.serialize_pem()).unwrap();
    let text = "[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:0\"]\ntls = \"direct\"\ncert = \"c.pem\"\nkey = \"c.key\"\n\n\
        [routing]\nkey = \"jid\"\ndomains = [\"example.test\"]\n\n\
        [[backend_group]]\nname = \"xmpp\"\nsrv = \"_xmpp-client._tcp.example.test\"\n";
    let config = Config::from_toml(text, &dir.path().join("x.toml")).unwrap();
    let m = |name: &str, port: u16| GroupMember {
        name: name.into(),
        address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        weight: 1,
    };
    let mut first = GroupMembers::new();
    first.insert("xmpp".into(), vec![m("n1.test", 1), m("n2.test", 2)]);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let shared = Shared::with_members(config, first, metrics.clone()).unwrap();
    let names = |s: &Shared| -> Vec<String> {
        s.runtime
            .load()
            .backends
            .iter()
            .map(|(_, b)| b.name.clone())
            .collect()
    };
    assert_eq!(names(&shared), ["n1.test", "n2.test"]);
    {
        let rt = shared.runtime.load();
        let (_, n1) = rt
            .backends
            .iter()
            .find(|(_, b)| b.name == "n1.test")
            .unwrap();
        n1.state.set_draining(true);
    }

    shared
        .apply_members("xmpp", vec![m("n1.test", 1), m("n3.test", 3)])
        .await
        .unwrap();
    assert_eq!(names(&shared), ["n1.test", "n3.test"]);
    let rt = shared.runtime.load();
    let (_, kept) = rt
        .backends
        .iter()
        .find(|(_, b)| b.name == "n1.test")
        .unwrap();
    assert!(kept.state.is_draining(), "n1.test keeps its state");
    assert_eq!(
        metrics.dns_group_members.with_label_values(&["xmpp"]).get(),
        2
    );
    // The file's configuration is kept unexpanded for the next change.
    let (file, members) = shared.discovered();
    assert!(file.backends.is_empty());
    assert_eq!(members["xmpp"].len(), 2);
}
