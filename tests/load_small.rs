//! A small load test: 200 users log in through the proxy, 20 at a time, half over direct TLS
//! and half over STARTTLS, to three real Prosody nodes. Every login succeeds; while all 200 are
//! connected each node is asked which users it holds, and every user is on the node the ring
//! names for it; the proxy's `xmpp_lb_routed_total` per backend agrees; the users spread over
//! all three nodes.
//!
//! The full comparison with HAProxy and with direct connections is `benches/load.sh`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::proxy::sum_where;
use testkit::raw::Raw;

const USERS: usize = 200;
const CONCURRENCY: usize = 20;
/// Bound on the whole login phase.
const LOGIN_PHASE_LIMIT: Duration = Duration::from_secs(25);

fn user(i: usize) -> String {
    format!("load{i}")
}

fn password(i: usize) -> String {
    format!("pw-{i}")
}

/// STARTTLS, SASL PLAIN, restart, bind: the same login as `Raw::login`, over STARTTLS.
async fn login_starttls(addr: SocketAddr, ca: PathBuf, user: String, password: String) -> Raw {
    Raw::starttls(addr, DOMAIN, &ca)
        .await
        .log_in(DOMAIN, &user, &password, "raw")
        .await
}

/// The text of a panic payload (the raw client panics with what it got).
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

#[test]
fn two_hundred_concurrent_logins_land_on_their_ring_nodes() {
    let t0 = Instant::now();
    let accounts: Vec<(String, String)> = (1..=USERS).map(|i| (user(i), password(i))).collect();
    let Env {
        cluster,
        pki,
        proxy,
        ..
    } = EnvBuilder::new(3).users(&accounts).start();
    let direct = proxy.addr("direct", false);
    let starttls = proxy.addr("starttls", false);
    let ca = pki.ca_path();

    // Log everyone in, CONCURRENCY at a time; keep the connections open.
    let started = Instant::now();
    let results: Vec<Result<Raw, String>> = proxy.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let tasks: Vec<_> = (1..=USERS)
            .map(|i| {
                let gate = gate.clone();
                let ca = ca.clone();
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.unwrap();
                    if i % 2 == 0 {
                        Raw::login(direct, DOMAIN, &ca, &user(i), &password(i)).await
                    } else {
                        login_starttls(starttls, ca, user(i), password(i)).await
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(USERS);
        let deadline = tokio::time::Instant::now() + LOGIN_PHASE_LIMIT;
        for (i, t) in tasks.into_iter().enumerate() {
            let abort = t.abort_handle();
            out.push(match tokio::time::timeout_at(deadline, t).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(format!("{}: {}", user(i + 1), panic_text(e))),
                Err(_) => {
                    abort.abort();
                    Err(format!(
                        "{}: not logged in within {LOGIN_PHASE_LIMIT:?}",
                        user(i + 1)
                    ))
                }
            });
        }
        out
    });
    let login_time = started.elapsed();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {USERS} logins failed; first ones: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let held: Vec<Raw> = results.into_iter().map(|r| r.unwrap()).collect();
    eprintln!(
        "{USERS} logins at concurrency {CONCURRENCY} in {login_time:?} ({:.0}/s)",
        USERS as f64 / login_time.as_secs_f64()
    );

    // Where each user is, as the nodes themselves see it (all sessions still connected).
    let mut node_of: BTreeMap<String, String> = BTreeMap::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..cluster.len() {
        let name = cluster.node_name(i).to_string();
        for jid in cluster.sessions(i) {
            let bare = jid.split('/').next().unwrap().to_string();
            if let Some(other) = node_of.insert(bare.clone(), name.clone()) {
                panic!("{bare} has sessions on both {other} and {name}");
            }
            *per_node.entry(name.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        node_of.len(),
        USERS,
        "the nodes hold {} of the {USERS} users: {per_node:?}",
        node_of.len()
    );
    let mut expected_per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 1..=USERS {
        let jid = format!("{}@{DOMAIN}", user(i));
        let home = proxy.preference(&jid)[0].clone();
        assert_eq!(
            node_of.get(&jid),
            Some(&home),
            "{jid} is bound on {:?}, the ring names {home}",
            node_of.get(&jid)
        );
        *expected_per_node.entry(home).or_default() += 1;
    }
    assert_eq!(per_node, expected_per_node);

    // The proxy's own count of routed connections per backend agrees.
    let scrape = proxy.scrape();
    for (name, n) in &per_node {
        let routed = sum_where(&scrape, "xmpp_lb_routed_total", &[("backend", name)]);
        assert_eq!(
            routed, *n as f64,
            "xmpp_lb_routed_total for {name}; nodes hold {per_node:?}"
        );
    }

    // A plausible spread: every node has a fair share (equal weights; 1/3 would be ~67 each).
    eprintln!("users per node: {per_node:?}");
    assert_eq!(per_node.len(), 3, "not every node got users: {per_node:?}");
    for (name, n) in &per_node {
        assert!(
            (USERS / 5..=USERS / 2).contains(n),
            "{name} holds {n} of {USERS} users: {per_node:?}"
        );
    }

    drop(held);
    drop(proxy);
    drop(cluster);
    eprintln!("load_small took {:?}", t0.elapsed());
}
