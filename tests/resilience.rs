//! Losing, draining, adding and reconfiguring nodes while users stay online, login storms,
//! tenants and pins — against real Prosody nodes, with raw XMPP clients over real TLS.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::pki::TestPki;
use common::prosody::{ProsodyCluster, ProsodyOpts};
use common::proxy::{Proxy, config_text};
use common::raw::Raw;

const DOMAIN: &str = "example.test";

fn users(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}{i}"), format!("pw-{prefix}{i}")))
        .collect()
}

fn register(cluster: &ProsodyCluster, list: &[(String, String)]) {
    let refs: Vec<(&str, &str)> = list.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    cluster.register_many(&refs);
}

/// Index of the node holding `user`'s session, as the servers say (None: nowhere). A node
/// that cannot answer (killed) holds nobody.
fn holder(cluster: &ProsodyCluster, user: &str) -> Option<usize> {
    let jid = format!("{user}@{DOMAIN}");
    (0..cluster.len()).find(|&i| {
        cluster
            .try_sessions_detail(i)
            .map(|list| list.iter().any(|s| s.jid.starts_with(&jid)))
            .unwrap_or(false)
    })
}

fn node_index(name: &str) -> usize {
    name.trim_start_matches("node").parse::<usize>().unwrap() - 1
}

#[test]
fn a_killed_node_moves_only_its_users_and_takes_logins_again_when_back() {
    let pki = TestPki::new(&[DOMAIN]);
    let mut cluster = ProsodyCluster::start(3, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let people = users("u", 24);
    register(&cluster, &people);
    let backends: Vec<_> = (0..3).map(|i| cluster.addr(i)).collect();
    let health = "\n[health]\ninterval = \"300ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\n";
    let proxy = Proxy::start(&config_text(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        "jid",
        &backends,
        health,
    ));
    let addr = proxy.addr("direct", false);
    let ca = pki.ca_path();
    let home: HashMap<String, usize> = people
        .iter()
        .map(|(u, _)| {
            (
                u.clone(),
                node_index(&proxy.preference(&format!("{u}@{DOMAIN}"))[0]),
            )
        })
        .collect();
    let victim = 1usize;
    let victims: Vec<&String> = home
        .iter()
        .filter(|(_, n)| **n == victim)
        .map(|(u, _)| u)
        .collect();
    assert!(!victims.is_empty(), "some users live on the victim node");

    cluster.kill_node(victim);
    let killed_at = Instant::now();
    proxy.block_on(async {
        for (u, pw) in &people {
            let mut raw = Raw::login(addr, DOMAIN, &ca, u, pw).await;
            raw.ping(DOMAIN).await;
            let on = holder(&cluster, u).expect("a session somewhere");
            if home[u] == victim {
                let second = node_index(&proxy.preference(&format!("{u}@{DOMAIN}"))[1]);
                assert_eq!(on, second, "{u} falls over to the next node on the ring");
            } else {
                assert_eq!(
                    on, home[u],
                    "{u} did not live on the dead node and must not move"
                );
            }
        }
    });
    assert!(
        killed_at.elapsed() < Duration::from_secs(3 + people.len() as u64),
        "logins kept working"
    );
    // Health checks notice the death too.
    let t0 = Instant::now();
    while proxy.metric("xmpp_lb_backend_healthy{backend=\"node2\"}") != 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "health checks never marked node2 down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    cluster.restart_node(victim);
    let t0 = Instant::now();
    while proxy.metric("xmpp_lb_backend_healthy{backend=\"node2\"}") != 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "health checks never marked node2 up again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.block_on(async {
        let (u, pw) = people.iter().find(|(u, _)| home[u] == victim).unwrap();
        let mut raw = Raw::login(addr, DOMAIN, &ca, u, pw).await;
        raw.ping(DOMAIN).await;
        assert_eq!(holder(&cluster, u), Some(victim), "{u} is home again");
    });
}

#[test]
fn draining_a_node_moves_its_clients_and_undrain_restores_it() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(3, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let people = users("d", 18);
    register(&cluster, &people);
    let backends: Vec<_> = (0..3).map(|i| cluster.addr(i)).collect();
    let drain = "\n[drain]\nmode = \"redirect\"\nrate = 50\n";
    let proxy = Proxy::start(&config_text(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        "jid",
        &backends,
        drain,
    ));
    let addr = proxy.addr("direct", false);
    let ca = pki.ca_path();
    let target = 0usize;
    let on_target: Vec<&(String, String)> = people
        .iter()
        .filter(|(u, _)| node_index(&proxy.preference(&format!("{u}@{DOMAIN}"))[0]) == target)
        .collect();
    assert!(on_target.len() >= 2, "the test needs clients on node1");
    proxy.block_on(async {
        let mut held = Vec::new();
        for (u, pw) in &on_target {
            held.push((u.clone(), pw.clone(), Raw::login(addr, DOMAIN, &ca, u, pw).await));
        }
        // Drain through the CLI, as an operator would.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
            .args(["drain", "--admin", &proxy.metrics.to_string(), "node1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for (u, pw, raw) in &mut held {
            let got = raw.read_to_close(Duration::from_secs(10)).await;
            let expected = format!("<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{DOMAIN}:{}</see-other-host>", addr.port());
            assert!(got.contains(&expected), "{u} was asked to move back through the proxy: {got}");
            // Its session on the drained node ended (the proxy closed the stream there).
            let bare = format!("{u}@{DOMAIN}");
            assert!(
                cluster.wait_session(target, &bare, false, Duration::from_secs(5)),
                "{u}'s session must end on the drained node"
            );
            // It follows the redirect (back to the proxy) and lands elsewhere.
            let mut again = Raw::login(addr, DOMAIN, &ca, u, pw).await;
            again.ping(DOMAIN).await;
            let on = holder(&cluster, u).expect("logged in again");
            assert_ne!(on, target, "{u} must not land on the draining node");
        }
        assert!(proxy.metric("xmpp_lb_drain_redirects_total{backend=\"node1\"}") >= held.len() as f64);

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
            .args(["undrain", "--admin", &proxy.metrics.to_string(), "node1"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let (u, pw) = on_target[0];
        drop(held);
        // Wait until the old sessions are gone from the servers, then log in again: home.
        let mut fresh = Raw::login(addr, DOMAIN, &ca, u, pw).await;
        fresh.ping(DOMAIN).await;
        let jid = format!("{u}@{DOMAIN}");
        assert!(cluster.sessions(target).iter().any(|s| s.starts_with(&jid)), "undrained node takes logins again");
    });
}

#[test]
fn draining_in_wait_mode_keeps_connected_clients_and_sends_new_logins_elsewhere() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(3, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let people = users("w", 12);
    register(&cluster, &people);
    let backends: Vec<_> = (0..3).map(|i| cluster.addr(i)).collect();
    let proxy = Proxy::start(&config_text(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        "jid",
        &backends,
        "\n[drain]\nmode = \"wait\"\n",
    ));
    let addr = proxy.addr("direct", false);
    let ca = pki.ca_path();
    let on_node1: Vec<&(String, String)> = people
        .iter()
        .filter(|(u, _)| proxy.preference(&format!("{u}@{DOMAIN}"))[0] == "node1")
        .collect();
    assert!(on_node1.len() >= 2, "the test needs two users on node1");
    proxy.block_on(async {
        let (u0, p0) = on_node1[0];
        let mut staying = Raw::login(addr, DOMAIN, &ca, u0, p0).await;
        proxy.shared.set_draining("node1", true).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        staying.ping(DOMAIN).await;
        assert_eq!(
            holder(&cluster, u0),
            Some(0),
            "wait mode leaves connected clients alone"
        );
        let (u1, p1) = on_node1[1];
        let mut newcomer = Raw::login(addr, DOMAIN, &ca, u1, p1).await;
        newcomer.ping(DOMAIN).await;
        let on = holder(&cluster, u1).unwrap();
        assert_ne!(on, 0, "no new login goes to a draining node");
        assert_eq!(
            proxy.preference(&format!("{u1}@{DOMAIN}"))[1],
            format!("node{}", on + 1),
            "it goes to its next ring node"
        );
    });
}

#[test]
fn a_reload_adding_a_node_moves_a_quarter_of_keys_and_drops_nobody() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(4, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let people = users("r", 12);
    register(&cluster, &people);
    let three: Vec<_> = (0..3).map(|i| cluster.addr(i)).collect();
    let four: Vec<_> = (0..4).map(|i| cluster.addr(i)).collect();
    let cert = pki.cert_path(DOMAIN);
    let key = pki.key_path(DOMAIN);
    let proxy = Proxy::start(&config_text(&cert, &key, DOMAIN, "jid", &three, ""));
    let addr = proxy.addr("direct", false);
    let ca = pki.ca_path();
    let before: Vec<String> = (0..2000)
        .map(|i| proxy.preference(&format!("k{i}@{DOMAIN}"))[0].clone())
        .collect();
    proxy.block_on(async {
        let mut held = Vec::new();
        for (u, pw) in &people {
            held.push(Raw::login(addr, DOMAIN, &ca, u, pw).await);
        }
        // Rewrite the file with a fourth node (same listeners: bound ports stay) and reload.
        let text = std::fs::read_to_string(&proxy.config_path).unwrap();
        let added = format!(
            "{text}\n[[backend]]\nname = \"node4\"\naddress = \"{}\"\n",
            four[3]
        );
        std::fs::write(&proxy.config_path, added).unwrap();
        proxy.shared.reload().await.expect("reload accepted");
        // Nobody established was dropped.
        for raw in &mut held {
            raw.ping(DOMAIN).await;
        }
        // A bad file is refused and counted; the running configuration stays.
        let good = std::fs::read_to_string(&proxy.config_path).unwrap();
        std::fs::write(&proxy.config_path, "this is not toml [").unwrap();
        assert!(proxy.shared.reload().await.is_err());
        // So is a change of listeners, which needs a restart to re-bind.
        std::fs::write(
            &proxy.config_path,
            good.replacen("name = \"auto\"", "name = \"renamed\"", 1),
        )
        .unwrap();
        let refused = proxy.shared.reload().await.unwrap_err().to_string();
        assert!(refused.contains("restart"), "{refused}");
        for raw in &mut held {
            raw.ping(DOMAIN).await;
        }
    });
    assert_eq!(
        proxy.metric("xmpp_lb_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        proxy.metric("xmpp_lb_config_reloads_total{result=\"failed\"}"),
        2.0,
        "the bad file and the listener change were both refused"
    );
    let rt = proxy.shared.runtime.load();
    let pool = &rt.domains[DOMAIN].pool;
    let mut moved = 0;
    for (i, old) in before.iter().enumerate() {
        let now = &rt.names[pool.ring_order(&format!("k{i}@{DOMAIN}"))[0]];
        if now != old {
            assert_eq!(now, "node4", "keys only move to the new node");
            moved += 1;
        }
    }
    let share = moved as f64 / before.len() as f64;
    assert!(
        (0.17..=0.33).contains(&share),
        "about 1/4 of keys move, got {share}"
    );
    // A new login of a user whose home moved lands on node4.
    let (u, pw) = people
        .iter()
        .find(|(u, _)| rt.names[pool.ring_order(&format!("{u}@{DOMAIN}"))[0]] == "node4")
        .cloned()
        .unwrap_or_else(|| ("r-missing".into(), String::new()));
    if !pw.is_empty() {
        proxy.block_on(async {
            let mut raw = Raw::login(addr, DOMAIN, &ca, &u, &pw).await;
            raw.ping(DOMAIN).await;
            let jid = format!("{u}@{DOMAIN}");
            let on_node4 = cluster.sessions(3);
            assert!(
                on_node4.iter().any(|s| s.starts_with(&jid)),
                "{u} now logs in on node4: {on_node4:?}"
            );
        });
    }
}

#[test]
fn a_login_storm_waits_its_turn_and_every_login_succeeds() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let people = users("s", 500);
    register(&cluster, &people);
    let limits = "\n[admission]\nmax_negotiations = 50\nqueue = 1000\nqueue_timeout = \"60s\"\n";
    let proxy = Proxy::start(&config_text(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        "jid",
        &[cluster.addr(0)],
        limits,
    ));
    let addr = proxy.addr("direct", false);
    let ca = pki.ca_path();
    let shared = proxy.shared.clone();
    let peak = proxy.block_on(async move {
        let watcher = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut peak = 0;
                loop {
                    let rt = shared.runtime.load();
                    peak = peak.max(rt.states[0].admission.negotiating());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if peak > 0
                        && rt.states[0].admission.negotiating() == 0
                        && rt.states[0].admission.waiting() == 0
                    {
                        return peak;
                    }
                }
            })
        };
        let mut tasks = Vec::new();
        for (u, pw) in people.clone() {
            let ca = ca.clone();
            tasks.push(tokio::spawn(async move {
                let mut raw = Raw::login(addr, DOMAIN, &ca, &u, &pw).await;
                raw.send("</stream:stream>").await;
            }));
        }
        for t in tasks {
            t.await.expect("every login of the storm succeeds");
        }
        watcher.await.unwrap()
    });
    assert!(
        peak <= 50,
        "never more than 50 logins negotiating at once on the node, saw {peak}"
    );
    assert!(
        peak >= 10,
        "the limit was actually reached under the storm, saw {peak}"
    );
    assert_eq!(
        proxy.metric("xmpp_lb_admission_refused_total{backend=\"node1\"}"),
        0.0
    );
}

#[test]
fn tenants_and_pins_put_the_expected_devices_together() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(3, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let devices: Vec<(String, String)> = [
        "acme-1",
        "acme-2",
        "acme-3",
        "acme-4",
        "globex-1",
        "globex-2",
        "sensor-9",
        "initech-7",
    ]
    .iter()
    .map(|d| (d.to_string(), format!("pw-{d}")))
    .collect();
    register(&cluster, &devices);
    let backends: Vec<_> = (0..3).map(|i| cluster.addr(i)).collect();
    let routing = "keys = [\"pin\", \"tenant\", \"jid\"]\ntenant_pattern = \"^(?<tenant>[a-z]+)-\"\n\
                   [[routing.pin]]\nmatch = \"sensor-9@example.test\"\nbackend = \"node3\"\n\
                   [[routing.pin]]\nmatch = \"tenant:initech\"\nbackend = \"node1\"\n";
    let proxy = Proxy::start(&config_text(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        routing,
        &backends,
        "",
    ));
    let addr = proxy.addr("direct", false);
    let ca = pki.ca_path();
    proxy.block_on(async {
        let mut held = Vec::new();
        for (u, pw) in &devices {
            held.push(Raw::login(addr, DOMAIN, &ca, u, pw).await);
        }
        let on = |u: &str| holder(&cluster, u).unwrap_or_else(|| panic!("{u} has no session"));
        let acme = on("acme-1");
        for d in ["acme-2", "acme-3", "acme-4"] {
            assert_eq!(on(d), acme, "every acme device shares a node");
        }
        assert_eq!(
            on("globex-1"),
            on("globex-2"),
            "every globex device shares a node"
        );
        assert_eq!(on("sensor-9"), 2, "a JID pin wins");
        assert_eq!(on("initech-7"), 0, "a tenant pin wins");
        drop(held);
    });
    // `route` explains the pin.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
        .args(["route", "--config"])
        .arg(&proxy.config_path)
        .arg("sensor-9@example.test")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().next(), Some("node3"), "{text}");
    assert!(text.contains("pin"), "{text}");
    let pins = proxy.metric("xmpp_lb_routed_total{backend=\"node3\",source=\"pin\"}");
    assert_eq!(pins, 1.0);
}

#[test]
fn bounded_load_spreads_a_hot_key_over_the_nodes() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(3, DOMAIN, ProsodyOpts::default()).expect("prosody");
    let people = users("b", 30);
    register(&cluster, &people);
    let backends: Vec<_> = (0..3).map(|i| cluster.addr(i)).collect();
    // Routing by domain puts everyone on one key: the most skewed key set there is.
    let routing = "key = \"domain\"\nbalance_factor = 1.25\n";
    let proxy = Proxy::start(&config_text(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        routing,
        &backends,
        "",
    ));
    let addr = proxy.addr("direct", false);
    let ca = pki.ca_path();
    proxy.block_on(async {
        let mut held = Vec::new();
        for (u, pw) in &people {
            held.push(Raw::login(addr, DOMAIN, &ca, u, pw).await);
        }
        let counts: Vec<usize> = (0..3).map(|i| cluster.sessions(i).len()).collect();
        let total: usize = counts.iter().sum();
        assert_eq!(total, people.len(), "{counts:?}");
        let cap = (1.25 * total as f64 / 3.0).ceil() as usize;
        assert!(
            counts.iter().all(|&c| c <= cap),
            "no node above 1.25 × average ({cap}): {counts:?}"
        );
        drop(held);
    });
}

#[test]
fn sigterm_moves_clients_off_with_system_shutdown_and_exits_zero() {
    use common::process::{free_port, sigterm, spawn_child, wait_timeout};
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::default()).expect("prosody");
    cluster.register("alice", "pw-alice");
    let port = free_port(false).unwrap();
    let metrics = free_port(false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xmpp-lb.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:{port}\"]\ntls = \"direct\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [routing]\nkey = \"jid\"\ndomains = [\"{DOMAIN}\"]\n\n[[backend]]\nname = \"node1\"\naddress = \"{}\"\n\n\
             [metrics]\nbind = \"127.0.0.1:{metrics}\"\n\n[limits]\nshutdown_grace = \"4s\"\n",
            pki.cert_path(DOMAIN).display(),
            pki.key_path(DOMAIN).display(),
            cluster.addr(0)
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"));
    cmd.arg("--config").arg(&config).arg("--log").arg("warn");
    let mut child = spawn_child(cmd).expect("start xmpp-lb");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "proxy never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = pki.ca_path();
        let mut raw = Raw::login(addr, DOMAIN, &ca, "alice", "pw-alice").await;
        raw.ping(DOMAIN).await;
        let stopped_at = Instant::now();
        sigterm(child.id()).unwrap();
        // A real client closes its side once the server closed the stream.
        let got = raw.expect("</stream:stream>").await;
        assert!(
            got.contains("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
            "{got}"
        );
        drop(raw);
        let status = wait_timeout(&mut child, Duration::from_secs(6))
            .unwrap()
            .expect("exited");
        assert!(status.success(), "exit status {status:?}");
        assert!(
            stopped_at.elapsed() < Duration::from_secs(5),
            "within the grace"
        );
        // New connections are refused once it stopped.
        assert!(std::net::TcpStream::connect(addr).is_err());
    });
}
