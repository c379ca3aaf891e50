//! Losing, draining, adding and reconfiguring nodes while users stay online, login storms,
//! tenants and pins — against real Prosody nodes, with raw XMPP clients over real TLS.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use testkit::env::{DOMAIN, Env, EnvBuilder, accounts};
use testkit::prosody::ProsodyCluster;
use testkit::raw::Raw;

fn users(prefix: &str, n: usize) -> Vec<(String, String)> {
    accounts(prefix, 0..n)
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
    let people = users("u", 24);
    let Env {
        mut cluster,
        pki,
        proxy,
        ..
    } = EnvBuilder::new(3)
        .users(&people)
        .config(|c| {
            c.set("health.interval", "300ms")
                .set("health.timeout", "1s")
                .set("health.rise", 2)
                .set("health.fall", 2)
        })
        .start();
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
    while proxy.metric_value("xmpp_lb_backend_healthy{backend=\"node2\"}") != 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "health checks never marked node2 down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    cluster.restart_node(victim);
    let t0 = Instant::now();
    while proxy.metric_value("xmpp_lb_backend_healthy{backend=\"node2\"}") != 1.0 {
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
    let people = users("d", 18);
    let Env {
        cluster,
        pki,
        proxy,
        ..
    } = EnvBuilder::new(3)
        .users(&people)
        .config(|c| c.set("drain.mode", "redirect").set("drain.rate", 50))
        .start();
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
        assert!(proxy.metric_value("xmpp_lb_drain_redirects_total{backend=\"node1\"}") >= held.len() as f64);

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
    let people = users("w", 12);
    let Env {
        cluster,
        pki,
        proxy,
        ..
    } = EnvBuilder::new(3)
        .users(&people)
        .config(|c| c.set("drain.mode", "wait"))
        .start();
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
        xmpp_lb::backend::drain::set_draining(&proxy.shared, "node1", true).unwrap();
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
    let people = users("r", 12);
    let Env {
        cluster,
        pki,
        config,
        proxy,
        ..
    } = EnvBuilder::new(4).backends(3).users(&people).start();
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
        let four = config.clone().backend("node4", cluster.addr(3));
        std::fs::write(&proxy.config_path, four.render()).unwrap();
        proxy.shared.reload().await.expect("reload accepted");
        // Nobody established was dropped.
        for raw in &mut held {
            raw.ping(DOMAIN).await;
        }
        // A bad file is refused and counted; the running configuration stays.
        std::fs::write(&proxy.config_path, "this is not toml [").unwrap();
        assert!(proxy.shared.reload().await.is_err());
        // So is a change of listeners, which needs a restart to re-bind.
        let renamed = four.listener_set("auto", "name", "renamed");
        std::fs::write(&proxy.config_path, renamed.render()).unwrap();
        let refused = proxy.shared.reload().await.unwrap_err().to_string();
        assert!(refused.contains("restart"), "{refused}");
        for raw in &mut held {
            raw.ping(DOMAIN).await;
        }
    });
    assert_eq!(
        proxy.metric_value("xmpp_lb_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        proxy.metric_value("xmpp_lb_config_reloads_total{result=\"failed\"}"),
        2.0,
        "the bad file and the listener change were both refused"
    );
    let rt = proxy.shared.runtime.load();
    let pool = &rt.domain(DOMAIN).expect("served").pool;
    let mut moved = 0;
    for (i, old) in before.iter().enumerate() {
        let now = rt
            .backends()
            .name(pool.ring_order(&format!("k{i}@{DOMAIN}"))[0]);
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
    // Placement is a pure function of the names and keys, so which of `people` moved is
    // fixed: at least one did.
    let (u, pw) = people
        .iter()
        .find(|(u, _)| {
            rt.backends()
                .name(pool.ring_order(&format!("{u}@{DOMAIN}"))[0])
                == "node4"
        })
        .expect("one of the users' homes moved to node4");
    proxy.block_on(async {
        let mut raw = Raw::login(addr, DOMAIN, &ca, u, pw).await;
        raw.ping(DOMAIN).await;
        let jid = format!("{u}@{DOMAIN}");
        let on_node4 = cluster.sessions(3);
        assert!(
            on_node4.iter().any(|s| s.starts_with(&jid)),
            "{u} now logs in on node4: {on_node4:?}"
        );
    });
}

#[test]
fn a_login_storm_waits_its_turn_and_every_login_succeeds() {
    let people = users("s", 500);
    // Bound whole: the nodes live as long as the proxy.
    let env = EnvBuilder::new(1)
        .users(&people)
        .config(|c| {
            c.set("admission.max_negotiations", 50)
                .set("admission.queue", 1000)
                .set("admission.queue_timeout", "60s")
        })
        .start();
    let (proxy, pki) = (&env.proxy, &env.pki);
    let addr = proxy.addr("direct", false);
    let ca = pki.ca_path();
    let node1 = proxy.backend("node1");
    let peak = proxy.block_on(async move {
        let watcher = {
            tokio::spawn(async move {
                let mut peak = 0;
                loop {
                    peak = peak.max(node1.admission.negotiating());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if peak > 0
                        && node1.admission.negotiating() == 0
                        && node1.admission.waiting() == 0
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
    // Nobody was refused: node1's counter is still at the zero it starts at.
    assert_eq!(
        proxy.metric("xmpp_lb_admission_refused_total{backend=\"node1\"}"),
        Some(0.0)
    );
}

#[test]
fn tenants_and_pins_put_the_expected_devices_together() {
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
    let Env {
        cluster,
        pki,
        proxy,
        ..
    } = EnvBuilder::new(3)
        .users(&devices)
        .config(|c| {
            c.keys(&["pin", "tenant", "jid"])
                .set("routing.tenant_pattern", "^(?<tenant>[a-z]+)-")
                .push("routing.pin", pin("sensor-9@example.test", "node3"))
                .push("routing.pin", pin("tenant:initech", "node1"))
        })
        .start();
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
    let pins = proxy.metric_value("xmpp_lb_routed_total{backend=\"node3\",source=\"pin\"}");
    assert_eq!(pins, 1.0);
}

#[test]
fn bounded_load_spreads_a_hot_key_over_the_nodes() {
    let people = users("b", 30);
    // Routing by domain puts everyone on one key: the most skewed key set there is.
    let Env {
        cluster,
        pki,
        proxy,
        ..
    } = EnvBuilder::new(3)
        .users(&people)
        .config(|c| c.key("domain").set("routing.balance_factor", 1.25))
        .start();
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
    use testkit::process::sigterm;
    let mut env = EnvBuilder::new(1)
        .users(&[("alice", "pw-alice")])
        .config(|c| c.set("limits.shutdown_grace", "4s"))
        .start_process();
    let (child, pki) = (&mut env.proxy, &env.pki);
    let addr = child.addr("direct");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = pki.ca_path();
        let mut raw = Raw::login(addr, DOMAIN, &ca, "alice", "pw-alice").await;
        raw.ping(DOMAIN).await;
        let stopped_at = Instant::now();
        sigterm(child.pid()).unwrap();
        let got = raw.expect("</stream:stream>").await;
        assert!(
            got.contains("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
            "{got}"
        );
        // Still in its grace (this client has not closed its side yet, so the process waits
        // for it): new connections are refused already.
        assert!(
            child.exited().is_none(),
            "the proxy waits for its clients within the grace"
        );
        let refused =
            testkit::process::wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
                std::net::TcpStream::connect(addr).is_err().then_some(())
            });
        assert!(
            refused.is_some(),
            "a new connection during the grace is refused"
        );
        assert!(
            child.exited().is_none(),
            "refused while the proxy still waits for its clients"
        );
        // A real client closes its side once the server closed the stream.
        drop(raw);
        let status = child.wait_exit(Duration::from_secs(6)).expect("exited");
        assert!(status.success(), "exit status {status:?}");
        assert!(
            stopped_at.elapsed() < Duration::from_secs(5),
            "within the grace"
        );
    });
}

/// A TOML `[[routing.pin]]` table.
fn pin(pattern: &str, backend: &str) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("match".into(), pattern.into());
    t.insert("backend".into(), backend.into());
    t
}

#[test]
fn logins_count_failed_connects_but_never_successes() {
    // Passive health: a refused connect is a failed check, and a login that connects is no
    // passed check. With one node, fall = rise = 1 and active checks an hour apart, only
    // logins can change the node's state after the first round.
    let mut env = EnvBuilder::new(1)
        .users(&[("alice", "pw-alice")])
        .config(|c| {
            c.set("health.interval", "1h")
                .set("health.rise", 1)
                .set("health.fall", 1)
        })
        .start();
    let healthy = "xmpp_lb_backend_healthy{backend=\"node1\"}";
    // The first round of active checks passed.
    assert_eq!(env.proxy.metric_value(healthy), 1.0);
    let addr = env.proxy.addr("direct", false);
    let ca = env.ca();
    env.cluster.kill_node(0);
    let answer = env.proxy.block_on(async {
        let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
        raw.send(&testkit::raw::header(DOMAIN, Some("alice@example.test")))
            .await;
        raw.read_to_close(Duration::from_secs(15)).await
    });
    assert!(answer.contains("<remote-connection-failed"), "{answer}");
    assert_eq!(
        env.proxy.metric_value(healthy),
        0.0,
        "one failed connect (fall = 1) marks the node down"
    );
    env.cluster.start_node(0).expect("node1 starts again");
    // Every node of the domain is down, so logins still try it, and now get through ...
    env.proxy.block_on(async {
        let mut raw = Raw::login(addr, DOMAIN, &ca, "alice", "pw-alice").await;
        raw.ping(DOMAIN).await;
    });
    // ... yet the successful connect counted for nothing: only an active check brings the
    // node back.
    assert_eq!(
        env.proxy.metric_value(healthy),
        0.0,
        "a successful login connect is no passed check (rise = 1)"
    );
}
