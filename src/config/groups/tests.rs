//! `[[backend_group]]`: what is accepted, what is refused (at FILE:LINE:COLUMN: KEY), and how
//! a group's members are put into a configuration.

use super::*;
use crate::config::Config;

const HEAD: &str = r#"[[listener]]
name = "c2s"
bind = ["127.0.0.1:5222"]
tls = "starttls"
cert = "cert.pem"
key = "cert.key"

[routing]
key = "jid"
domains = ["example.test"]
"#;

/// Load `HEAD` + `rest` from a directory holding the certificate files it names.
fn load(rest: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    for f in ["cert.pem", "cert.key"] {
        std::fs::write(dir.path().join(f), "not read by validation").unwrap();
    }
    let path = dir.path().join("x.toml");
    Config::from_toml(&format!("{HEAD}{rest}"), &path).map_err(|e| {
        e.to_string()
            .replace(&format!("{}/", dir.path().display()), "")
    })
}

fn member(name: &str, port: u16, weight: u32) -> GroupMember {
    GroupMember {
        name: name.into(),
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        weight,
    }
}

#[test]
fn a_group_alone_is_a_valid_configuration_with_defaults() {
    let c = load(
        r#"
[[backend_group]]
name = "xmpp"
srv = "_xmpp-client._tcp.XMPP.example.test."
"#,
    )
    .unwrap();
    assert!(c.backends.is_empty());
    assert_eq!(c.domains[0].backends, ["xmpp"]);
    let g = &c.groups[0];
    assert_eq!(
        g.query,
        GroupQuery::Srv("_xmpp-client._tcp.xmpp.example.test.".into())
    );
    assert!(g.nameservers.is_empty());
    assert_eq!(g.min_interval, Duration::from_secs(5));
    assert_eq!(g.max_interval, Duration::from_secs(300));
}

#[test]
fn a_host_group_takes_a_port_and_a_weight() {
    let c = load(
        r#"
[[backend_group]]
name = "pods"
host = "nodes.xmpp.svc.cluster.local"
port = 5222
weight = 3
nameservers = ["127.0.0.1:5353"]
min_interval = "2s"
max_interval = "1m"
"#,
    )
    .unwrap();
    let g = &c.groups[0];
    assert_eq!(
        g.query,
        GroupQuery::Host {
            host: "nodes.xmpp.svc.cluster.local.".into(),
            port: 5222,
            weight: 3
        }
    );
    assert_eq!(g.nameservers, [SocketAddr::from(([127, 0, 0, 1], 5353))]);
    assert_eq!(g.min_interval, Duration::from_secs(2));
    assert_eq!(g.max_interval, Duration::from_secs(60));
}

#[test]
fn bad_groups_are_refused_at_their_line_and_key() {
    let cases = [
        (
            "[[backend_group]]\nname = \"x y\"\nsrv = \"a.test\"\n",
            "x.toml:12:8: backend_group[0].name: \"x y\": use letters, digits, '-', '_' or '.'",
        ),
        (
            "[[backend]]\nname = \"xmpp\"\naddress = \"127.0.0.1:1\"\n[[backend_group]]\nname = \"xmpp\"\nsrv = \"a.test\"\n",
            "x.toml:15:8: backend_group[0].name: \"xmpp\" is already the name of a backend or a group",
        ),
        (
            "[[backend_group]]\nname = \"g\"\nsrv = \"a.test\"\nhost = \"b.test\"\nport = 1\n",
            "x.toml:12:8: backend_group[0].srv: set `srv`, or `host` and `port` (not both)",
        ),
        (
            "[[backend_group]]\nname = \"g\"\nhost = \"b.test\"\n",
            "x.toml:12:8: backend_group[0].srv: set `srv`, or `host` and `port` (not both)",
        ),
        (
            "[[backend_group]]\nname = \"g\"\nsrv = \"a..test\"\n",
            "x.toml:13:7: backend_group[0].srv: \"a..test\" is not a DNS name",
        ),
        (
            "[[backend_group]]\nname = \"g\"\nsrv = \"a.test\"\nweight = 2\n",
            "x.toml:14:10: backend_group[0].weight: SRV records carry their own weights; `weight` is for `host`",
        ),
        (
            "[[backend_group]]\nname = \"g\"\nhost = \"b.test\"\nport = 5222\nweight = 1001\n",
            "x.toml:15:10: backend_group[0].weight: must be 1..=1000",
        ),
        (
            "[[backend_group]]\nname = \"g\"\nsrv = \"a.test\"\nnameservers = [\"ns.test:53\"]\n",
            "x.toml:14:16: backend_group[0].nameservers: \"ns.test:53\" is not an IP:PORT address (IPv6 in brackets, e.g. \"[::1]:5222\")",
        ),
        (
            "[[backend_group]]\nname = \"g\"\nsrv = \"a.test\"\nmin_interval = \"10m\"\n",
            "x.toml:12:8: backend_group[0].min_interval: need 1s <= min_interval <= max_interval (got 600s and 300s)",
        ),
        (
            "[[domain]]\nname = \"example.test\"\nbackends = [\"nope\"]\n[[backend_group]]\nname = \"g\"\nsrv = \"a.test\"\n",
            "x.toml:13:13: domain[0].backends: no backend or backend_group named \"nope\"",
        ),
    ];
    for (rest, want) in cases {
        assert_eq!(load(rest).unwrap_err(), want, "for:\n{rest}");
    }
}

#[test]
fn expansion_puts_members_in_place_of_the_group() {
    let c = load(
        r#"
[[backend]]
name = "static"
address = "127.0.0.1:5300"

[[backend_group]]
name = "xmpp"
srv = "_xmpp-client._tcp.example.test"

[[domain]]
name = "only.test"
backends = ["xmpp"]
"#,
    )
    .unwrap();
    let mut members = GroupMembers::new();
    members.insert(
        "xmpp".into(),
        vec![member("n1.test", 5301, 10), member("n2.test", 5302, 1)],
    );
    let e = c.expand(&members);
    let names: Vec<&str> = e.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["static", "n1.test", "n2.test"]);
    assert_eq!(e.backends[1].weight, 10);
    let domain = |n: &str| e.domains.iter().find(|d| d.name == n).unwrap();
    assert_eq!(
        domain("example.test").backends,
        ["static", "n1.test", "n2.test"]
    );
    assert_eq!(domain("only.test").backends, ["n1.test", "n2.test"]);
    // The file's configuration is untouched: a later change expands it again.
    assert_eq!(c.domains[0].backends, ["static", "xmpp"]);
    // No members: the group's domains have no node of it.
    let empty = c.expand(&GroupMembers::new());
    assert_eq!(empty.backends.len(), 1);
    assert!(
        empty
            .domains
            .iter()
            .find(|d| d.name == "only.test")
            .unwrap()
            .backends
            .is_empty()
    );
}

#[test]
fn a_member_never_redefines_a_configured_backend() {
    let c = load(
        r#"
[[backend]]
name = "n1.test"
address = "127.0.0.1:5300"

[[backend_group]]
name = "xmpp"
srv = "_xmpp-client._tcp.example.test"
"#,
    )
    .unwrap();
    let mut members = GroupMembers::new();
    members.insert(
        "xmpp".into(),
        vec![member("n1.test", 5999, 5), member("n2.test", 5302, 1)],
    );
    let e = c.expand(&members);
    assert_eq!(e.backends.len(), 2);
    assert_eq!(e.backends[0].address.port(), 5300);
    assert_eq!(e.domains[0].backends, ["n1.test", "n2.test"]);
}
