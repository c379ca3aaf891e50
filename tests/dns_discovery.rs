//! Backends from DNS: a `[[backend_group]]` names real Prosody nodes through SRV records
//! served by a real DNS server (dnsmasq) on loopback, whose records change while users log
//! in through the proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use testkit::config::{TestConfig, strings};
use testkit::env::{DOMAIN, accounts};
use testkit::pki::TestPki;
use testkit::process::{free_port, spawn_child, terminate};
use testkit::prosody::{ProsodyCluster, ProsodyOpts};
use testkit::proxy::{Proxy, preference};
use testkit::raw::Raw;

const SRV: &str = "_xmpp-client._tcp.xmpp.test";

/// A running dnsmasq, stopped by pid when dropped (also when a test fails).
struct Dns(Child);

impl Drop for Dns {
    fn drop(&mut self) {
        let _exited = terminate(&mut self.0, Duration::from_secs(2));
    }
}

/// A dnsmasq on `port` answering only for the given nodes: `n{i}.xmpp.test` at 127.0.0.1,
/// with an SRV record each on node `i`'s port (weight 10). TTL 1 s.
fn dnsmasq(port: u16, cluster: &ProsodyCluster, nodes: &[usize]) -> Dns {
    let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("dnsmasq is installed (scripts/install-deps.sh installs dnsmasq-base)");
    let mut cmd = Command::new(bin);
    cmd.args([
        "--no-daemon",
        "--keep-in-foreground",
        &format!("--port={port}"),
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--local-ttl=1",
        "--user=root",
        "--pid-file=",
    ]);
    for &i in nodes {
        let target = format!("n{i}.xmpp.test");
        cmd.arg(format!("--host-record={target},127.0.0.1"));
        cmd.arg(format!(
            "--srv-host={SRV},{target},{},0,10",
            cluster.addr(i).port()
        ));
    }
    cmd.stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::null());
    let dns = Dns(spawn_child(cmd).expect("dnsmasq starts"));
    // Ready when it answers the SRV query with every node.
    let group = group_config(port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = rt.block_on(xmpp_lb::discovery::resolve(&group));
        if found.as_ref().is_ok_and(|a| a.members.len() == nodes.len()) {
            return dns;
        }
        assert!(Instant::now() < deadline, "dnsmasq answers: {found:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The group as the proxy checks it, for the readiness probe above.
fn group_config(port: u16) -> xmpp_lb::config::BackendGroupConfig {
    xmpp_lb::config::BackendGroupConfig {
        name: "xmpp".into(),
        query: xmpp_lb::config::GroupQuery::Srv(format!("{SRV}.")),
        nameservers: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        min_interval: Duration::from_secs(1),
        max_interval: Duration::from_secs(2),
    }
}

/// The backend names of the configuration in service.
fn members(proxy: &Proxy) -> Vec<String> {
    let mut names: Vec<String> = proxy
        .shared
        .runtime
        .load()
        .config()
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    names.sort();
    names
}

fn wait_members(proxy: &Proxy, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while members(proxy) != want {
        assert!(
            Instant::now() < deadline,
            "members {:?}, want {want:?}",
            members(proxy)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each user's home node under the configuration in service.
fn homes(proxy: &Proxy, users: &[(String, String)]) -> HashMap<String, String> {
    let config = proxy.shared.runtime.load().config().clone();
    users
        .iter()
        .map(|(u, _)| {
            (
                u.clone(),
                preference(&config, &format!("{u}@{DOMAIN}"))[0].clone(),
            )
        })
        .collect()
}

/// Node index of a member name `n{i}.xmpp.test`.
fn index(name: &str) -> usize {
    name.trim_start_matches('n')
        .split('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("member name {name}"))
}

/// Log every user in through the proxy and check the session is on its home node.
fn log_in_all(
    proxy: &Proxy,
    cluster: &ProsodyCluster,
    ca: &std::path::Path,
    users: &[(String, String)],
    home: &HashMap<String, String>,
) {
    let addr = proxy.addr("direct", false);
    proxy.block_on(async {
        for (u, pw) in users {
            let mut raw = Raw::login(addr, DOMAIN, ca, u, pw).await;
            raw.ping(DOMAIN).await;
            let jid = format!("{u}@{DOMAIN}");
            let node = index(&home[u]);
            assert!(
                cluster.wait_session(node, &jid, true, Duration::from_secs(5)),
                "{u} is on {} as the ring says",
                home[u]
            );
            drop(raw);
            assert!(
                cluster.wait_session(node, &jid, false, Duration::from_secs(5)),
                "{u}'s session ends with its connection"
            );
        }
    });
}

/// `nodes` Prosody nodes with the accounts `PREFIX0..PREFIXcount` on each.
fn nodes_with_users(
    nodes: usize,
    prefix: &str,
    count: usize,
) -> (ProsodyCluster, Vec<(String, String)>) {
    let cluster = ProsodyCluster::start(nodes, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let users = accounts(prefix, 0..count);
    let pairs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    cluster.register_many(&pairs);
    (cluster, users)
}

#[test]
fn a_group_follows_its_srv_records_moving_only_the_users_of_changed_nodes() {
    let pki = TestPki::new(&[DOMAIN]);
    let (cluster, users) = nodes_with_users(3, "d", 18);
    let ca = pki.ca_path();
    let port = free_port(false).unwrap();
    let dns = dnsmasq(port, &cluster, &[0, 1]);

    let mut group = toml::Table::new();
    group.insert("name".into(), "xmpp".into());
    group.insert("srv".into(), SRV.into());
    group.insert(
        "nameservers".into(),
        strings(&[&format!("127.0.0.1:{port}")]),
    );
    group.insert("min_interval".into(), "1s".into());
    group.insert("max_interval".into(), "2s".into());
    let config = TestConfig::new(&pki.cert_path(DOMAIN), &pki.key_path(DOMAIN), DOMAIN, &[])
        .push("backend_group", group)
        .set("health.interval", "300ms");
    let proxy = Proxy::start(&config);

    // First answer, taken before the listeners served.
    assert_eq!(members(&proxy), ["n0.xmpp.test", "n1.xmpp.test"]);
    let home2 = homes(&proxy, &users);
    log_in_all(&proxy, &cluster, &ca, &users, &home2);

    // A node is added: only users moving to it move.
    drop(dns);
    let dns = dnsmasq(port, &cluster, &[0, 1, 2]);
    let t = Instant::now();
    wait_members(&proxy, &["n0.xmpp.test", "n1.xmpp.test", "n2.xmpp.test"]);
    eprintln!("added node in service after {:?}", t.elapsed());
    let home3 = homes(&proxy, &users);
    let moved: Vec<&String> = users
        .iter()
        .map(|(u, _)| u)
        .filter(|u| home2[*u] != home3[*u])
        .collect();
    assert!(!moved.is_empty(), "the new node takes a share");
    for u in &moved {
        assert_eq!(home3[*u], "n2.xmpp.test", "{u} moves only to the new node");
    }
    log_in_all(&proxy, &cluster, &ca, &users, &home3);

    // The same answer gives a second proxy the same names and placement.
    let other = Proxy::start(&config);
    assert_eq!(members(&other), members(&proxy));
    assert_eq!(homes(&other, &users), home3);
    drop(other);

    // A node is removed: only its users move.
    drop(dns);
    let dns = dnsmasq(port, &cluster, &[0, 2]);
    wait_members(&proxy, &["n0.xmpp.test", "n2.xmpp.test"]);
    let home4 = homes(&proxy, &users);
    for (u, _) in &users {
        if home3[u] != "n1.xmpp.test" {
            assert_eq!(home4[u], home3[u], "{u} was not on the removed node");
        }
    }
    log_in_all(&proxy, &cluster, &ca, &users, &home4);

    // DNS goes away: the last good members stay, and the failures are counted.
    let failed = r#"xmpp_lb_dns_lookups_total{group="xmpp",result="failed"}"#;
    let before = proxy.metric_value(failed);
    drop(dns);
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy.metric_value(failed) < before + 2.0 {
        assert!(Instant::now() < deadline, "failed lookups are counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(members(&proxy), ["n0.xmpp.test", "n2.xmpp.test"]);
    assert_eq!(
        proxy.metric_value(r#"xmpp_lb_dns_group_members{group="xmpp"}"#),
        2.0
    );
    assert!(proxy.metric_value(r#"xmpp_lb_dns_lookups_total{group="xmpp",result="ok"}"#) >= 3.0);
    log_in_all(&proxy, &cluster, &ca, &users[..6], &home4);
}

/// GET `path` from the proxy's admin address: the status code.
fn status(proxy: &Proxy, path: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(&format!("http://{}{path}", proxy.metrics))
        .call()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .status()
        .as_u16()
}

#[test]
fn a_group_whose_first_lookup_fails_starts_empty_and_fills_when_dns_answers() {
    let pki = TestPki::new(&[DOMAIN]);
    let (cluster, users) = nodes_with_users(2, "e", 4);
    let port = free_port(false).unwrap();
    let mut group = toml::Table::new();
    group.insert("name".into(), "xmpp".into());
    group.insert("srv".into(), SRV.into());
    group.insert(
        "nameservers".into(),
        strings(&[&format!("127.0.0.1:{port}")]),
    );
    group.insert("min_interval".into(), "1s".into());
    let config = TestConfig::new(&pki.cert_path(DOMAIN), &pki.key_path(DOMAIN), DOMAIN, &[])
        .push("backend_group", group)
        .set("health.interval", "300ms");
    // Nothing answers on the name server's port: the proxy starts with the group empty.
    let proxy = Proxy::start(&config);
    assert!(members(&proxy).is_empty());
    assert_eq!(status(&proxy, "/readyz"), 503, "no backend takes logins");
    assert_eq!(
        proxy.metric_value(r#"xmpp_lb_dns_group_members{group="xmpp"}"#),
        0.0
    );
    assert!(
        proxy.metric_value(r#"xmpp_lb_dns_lookups_total{group="xmpp",result="failed"}"#) >= 1.0
    );

    let dns = dnsmasq(port, &cluster, &[0, 1]);
    wait_members(&proxy, &["n0.xmpp.test", "n1.xmpp.test"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&proxy, "/readyz") != 200 {
        assert!(
            Instant::now() < deadline,
            "ready once the group has members"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let home = homes(&proxy, &users);
    log_in_all(&proxy, &cluster, &pki.ca_path(), &users, &home);

    // The A/AAAA form against the same server: one member per address, named after it.
    let mut by_host = group_config(port);
    by_host.query = xmpp_lb::config::GroupQuery::Host {
        host: "n0.xmpp.test.".into(),
        port: 5222,
        weight: 2,
    };
    let answer = proxy
        .block_on(xmpp_lb::discovery::resolve(&by_host))
        .expect("an A answer");
    assert_eq!(answer.members.len(), 1);
    assert_eq!(answer.members[0].name, "xmpp-127.0.0.1");
    assert_eq!(answer.members[0].address, "127.0.0.1:5222".parse().unwrap());
    assert_eq!(answer.members[0].weight, 2);
    assert!(
        answer.ttl <= Duration::from_secs(1),
        "dnsmasq's TTL: {:?}",
        answer.ttl
    );
    drop(dns);
}
