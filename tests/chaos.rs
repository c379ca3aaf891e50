//! Chaos with byte accounting: clients exchange sequence-numbered messages through the proxy
//! (the real binary, a process of its own) with three real Prosody nodes, while one node is
//! stopped (SIGSTOP) and continued (SIGCONT) and another is killed (SIGKILL) and restarted.
//!
//! - Sessions on the stopped node stall while it is stopped and then lose and reorder nothing.
//! - Sessions on the killed node see their connection closed within [`CUT_SEEN_WITHIN`], log in
//!   again on the next node of their ring order and carry on; what was in flight when the node
//!   died is given up explicitly, never more than the window.
//! - Sessions on the surviving node never notice.
//! - The proxy's counters (connections, logins, routed connections per node, relayed bytes per
//!   node and direction, closed connections) agree with what the clients counted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::env::{DOMAIN, EnvBuilder, accounts};
use testkit::process::{signal_pid, wait_for};
use testkit::proxy::{ProxyProcess, scrape, sum_where};
use testkit::raw::{Bytes, Raw};
use testkit::sasl2::Client;
use testkit::seq::{Pace, SeqClient};

/// Clients, one per account.
const CLIENTS: usize = 45;
/// Each client sends a message every 150 ms, with at most 8 unanswered: about 300 messages a
/// second each way through the proxy, and at most 8 per client lost with a killed node.
const PACE: Pace = Pace {
    every: Duration::from_millis(150),
    window: 8,
};
/// How long the stopped node stays stopped: shorter than any timeout on the way (the proxy
/// has no idle timeout on relays; Prosody's c2s has none without mod_pinger), so its sessions
/// must come back whole.
const STOPPED_FOR: Duration = Duration::from_secs(3);
/// A session on the killed node must see its connection closed within this: the kernel
/// closes the node's sockets at once, and the relay passes the end on to the client.
const CUT_SEEN_WITHIN: Duration = Duration::from_secs(2);
/// How long the clients run, from the start of the logins.
const TRAFFIC: Duration = Duration::from_secs(24);
/// No message is larger than this (`<message/>` to a full JID with a number, and the node's
/// copy with `from` and `xmlns` added): bounds the bytes in flight when a node dies.
const MAX_MESSAGE_BYTES: u64 = 256;

const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// What one client did, as it counted it.
struct Report {
    user: String,
    /// Bytes relayed on each of its connections, in order.
    connections: Vec<Bytes>,
    /// When it saw a connection cut under it.
    cuts: Vec<Instant>,
    /// Numbers sent, received in order, and given up with a cut connection.
    sent: u64,
    delivered: u64,
    given_up: u64,
    /// Loss, reordering or duplication seen.
    violations: Vec<String>,
    /// Everything sent came back before the end (after the last cut).
    settled: bool,
}

/// Shared progress the test watches while the clients run.
#[derive(Default)]
struct Progress {
    logged_in: AtomicUsize,
    logged_in_again: AtomicUsize,
}

async fn login(addr: std::net::SocketAddr, ca: &std::path::Path, user: &str, pw: &str) -> Client {
    let raw = Raw::direct_tls(addr, DOMAIN, ca).await;
    Client::legacy_login(raw, DOMAIN, user, pw, Some("chaos")).await
}

/// Log in, message itself at [`PACE`] until `until`, logging in again whenever the connection
/// is cut; then wait for the last answers and close the stream.
async fn client(
    addr: std::net::SocketAddr,
    ca: PathBuf,
    (user, pw): (String, String),
    delivered: Arc<AtomicU64>,
    progress: Arc<Progress>,
    until: tokio::time::Instant,
) -> Report {
    let mut seq = SeqClient::new(login(addr, &ca, &user, &pw).await);
    seq.delivered = delivered;
    progress.logged_in.fetch_add(1, Ordering::SeqCst);
    let (mut connections, mut cuts) = (Vec::new(), Vec::new());
    loop {
        seq.run(PACE, until).await;
        if !seq.ended() {
            break;
        }
        cuts.push(Instant::now());
        seq.give_up_in_flight();
        let old = seq.switch_to(login(addr, &ca, &user, &pw).await);
        connections.push(old.raw.relayed().expect("a relayed connection"));
        progress.logged_in_again.fetch_add(1, Ordering::SeqCst);
    }
    let settled = seq.settle(Duration::from_secs(10)).await;
    let raw = &mut seq.client.raw;
    raw.send("</stream:stream>").await;
    raw.read_to_close(Duration::from_secs(10)).await;
    connections.push(raw.relayed().expect("a relayed connection"));
    Report {
        user,
        connections,
        cuts,
        sent: seq.next_send - 1,
        delivered: seq.delivered.load(Ordering::SeqCst),
        given_up: seq.given_up.iter().map(|r| r.end - r.start).sum(),
        violations: seq.violations,
        settled,
    }
}

fn node_index(name: &str) -> usize {
    name.trim_start_matches("node").parse::<usize>().unwrap() - 1
}

fn wait_healthy(proxy: &ProxyProcess, node: usize, healthy: bool) {
    let series = format!("xmpp_lb_backend_healthy{{backend=\"node{}\"}}", node + 1);
    let want = if healthy { 1.0 } else { 0.0 };
    let ok = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        (proxy.metric(&series) == Some(want)).then_some(())
    });
    assert!(ok.is_some(), "{series} never became {want}");
}

/// The sum of the delivered counters of the clients at `idx`.
fn delivered(counters: &[Arc<AtomicU64>], idx: &[usize]) -> u64 {
    idx.iter()
        .map(|&i| counters[i].load(Ordering::SeqCst))
        .sum()
}

#[test]
fn stopped_and_killed_nodes_lose_nothing_on_the_survivors_and_the_counters_agree() {
    let people = accounts("c", 0..CLIENTS);
    let mut env = EnvBuilder::new(3)
        .users(&people)
        .config(|c| {
            c.set("health.interval", "300ms")
                .set("health.timeout", "1s")
                .set("health.rise", 2)
                .set("health.fall", 2)
                // The stopped node is marked down while it is stopped; its sessions are
                // kept here, to show they come back whole (tests/slow_peers.rs covers the
                // default, which moves them off a node marked down).
                .set("health.close_sessions_on_down", false)
        })
        .start_process();
    let addr = env.proxy.addr("direct");
    let ca = env.ca();
    let (survivor, stopped, killed) = (0usize, 2usize, 1usize);
    // Each client's ring order, as node indexes.
    let order: Vec<Vec<usize>> = people
        .iter()
        .map(|(u, _)| {
            let pref = env.proxy.preference(&format!("{u}@{DOMAIN}"));
            pref.iter().map(|n| node_index(n)).collect()
        })
        .collect();
    let on =
        |node: usize| -> Vec<usize> { (0..CLIENTS).filter(|&i| order[i][0] == node).collect() };
    let (on_survivor, on_stopped, on_killed) = (on(survivor), on(stopped), on(killed));
    for (name, group) in [("1", &on_survivor), ("3", &on_stopped), ("2", &on_killed)] {
        assert!(
            group.len() >= 5,
            "node{name} is home to {} clients only",
            group.len()
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Counters start from here: the proxy's own readiness connections came before.
    let before = scrape(env.proxy.metrics);
    let counters: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let progress = Arc::new(Progress::default());
    let until = tokio::time::Instant::now() + TRAFFIC;
    let tasks: Vec<_> = people
        .iter()
        .zip(&counters)
        .map(|(account, counter)| {
            rt.spawn(client(
                addr,
                ca.clone(),
                account.clone(),
                counter.clone(),
                progress.clone(),
                until,
            ))
        })
        .collect();
    let all_in = wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
        (progress.logged_in.load(Ordering::SeqCst) == CLIENTS).then_some(())
    });
    assert!(all_in.is_some(), "not every client logged in within 15 s");
    std::thread::sleep(Duration::from_secs(2));

    // Stop node3: its sessions stall, the others go on.
    let pid = env.cluster.pid(stopped).expect("node3 runs");
    signal_pid(pid, SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (stalled_at, others_at) = (
        delivered(&counters, &on_stopped),
        delivered(&counters, &on_survivor),
    );
    std::thread::sleep(STOPPED_FOR - Duration::from_millis(500));
    let (stalled_now, others_now) = (
        delivered(&counters, &on_stopped),
        delivered(&counters, &on_survivor),
    );
    signal_pid(pid, SIGCONT).unwrap();
    assert_eq!(
        stalled_now, stalled_at,
        "no answer comes from a stopped node"
    );
    assert!(
        others_now > others_at + on_survivor.len() as u64 * 5,
        "the survivor's sessions went on meanwhile ({others_at} -> {others_now})"
    );
    let resumed = wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        (delivered(&counters, &on_stopped) > stalled_now).then_some(())
    });
    assert!(resumed.is_some(), "node3's sessions carry on after SIGCONT");
    wait_healthy(&env.proxy, stopped, true);

    // Kill node2: its sessions are cut, log in again elsewhere and carry on.
    env.cluster.kill_node(killed);
    let killed_at = Instant::now();
    let moved = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        (progress.logged_in_again.load(Ordering::SeqCst) == on_killed.len()).then_some(())
    });
    assert!(
        moved.is_some(),
        "{} of {} clients of the killed node logged in again within 10 s",
        progress.logged_in_again.load(Ordering::SeqCst),
        on_killed.len()
    );
    for &i in &on_killed {
        let (user, next) = (&people[i].0, order[i][1]);
        let jid = format!("{user}@{DOMAIN}/chaos");
        assert!(
            env.cluster.sessions(next).contains(&jid),
            "{user} logged in again on node{}, the next on its ring",
            next + 1
        );
    }
    env.cluster.start_node(killed).expect("node2 starts again");
    wait_healthy(&env.proxy, killed, true);

    let reports: Vec<Report> = rt.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("a client ran to its end"));
        }
        out
    });
    check_clients(&reports, &on_killed, killed_at);
    check_counters(&env.proxy, &before, &reports, &order, &on_killed, killed);
}

/// End to end, by sequence number.
fn check_clients(reports: &[Report], on_killed: &[usize], killed_at: Instant) {
    let (mut sent, mut given_up, mut slowest_cut) = (0, 0, Duration::ZERO);
    for (i, r) in reports.iter().enumerate() {
        assert!(r.violations.is_empty(), "{}: {:?}", r.user, r.violations);
        assert!(r.settled, "{}: every message sent came back", r.user);
        assert_eq!(r.sent, r.delivered + r.given_up, "{}", r.user);
        sent += r.sent;
        given_up += r.given_up;
        if !on_killed.contains(&i) {
            assert!(r.cuts.is_empty(), "{} lost its connection", r.user);
            assert_eq!(r.given_up, 0, "{} lost messages", r.user);
            continue;
        }
        assert_eq!(r.cuts.len(), 1, "{}: one cut", r.user);
        let seen = r.cuts[0].saturating_duration_since(killed_at);
        assert!(
            seen <= CUT_SEEN_WITHIN,
            "{} saw its node's death after {seen:?}",
            r.user
        );
        assert!(
            r.given_up <= PACE.window,
            "{} gave up {}",
            r.user,
            r.given_up
        );
        slowest_cut = slowest_cut.max(seen);
    }
    eprintln!(
        "{} clients: {sent} messages sent, {given_up} given up with the killed node ({} \
         clients, the last saw the cut {slowest_cut:?} after the kill)",
        reports.len(),
        on_killed.len()
    );
}

/// The proxy's counters (their growth since `before`) against the clients' own.
fn check_counters(
    proxy: &ProxyProcess,
    before: &str,
    reports: &[Report],
    order: &[Vec<usize>],
    on_killed: &[usize],
    killed: usize,
) {
    let closed = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let s = scrape(proxy.metrics);
        (sum_where(&s, "xmpp_lb_connections_open", &[]) == 0.0).then_some(s)
    });
    let s = closed.expect("every connection through the proxy closed");
    // Where each connection went: the home node, and the next one after a cut.
    let mut per_node: BTreeMap<usize, (u64, Bytes)> = BTreeMap::new();
    for (i, r) in reports.iter().enumerate() {
        for (k, bytes) in r.connections.iter().enumerate() {
            let (n, b) = per_node.entry(order[i][k]).or_default();
            *n += 1;
            b.sent += bytes.sent;
            b.received += bytes.received;
        }
    }
    let connections: u64 = reports.iter().map(|r| r.connections.len() as u64).sum();
    assert_eq!(connections, (reports.len() + on_killed.len()) as u64);
    let total = |name: &str, labels: &[(&str, &str)]| {
        (sum_where(&s, name, labels) - sum_where(before, name, labels)) as u64
    };
    assert_eq!(total("xmpp_lb_connections_total", &[]), connections);
    assert_eq!(
        total("xmpp_lb_sasl_outcomes_total", &[("outcome", "success")]),
        connections,
        "one login per connection"
    );
    assert_eq!(
        total("xmpp_lb_sasl_outcomes_total", &[("outcome", "failure")]),
        0
    );
    assert_eq!(total("xmpp_lb_connections_closed_total", &[]), connections);
    assert_eq!(total("xmpp_lb_backend_connections_open", &[]), 0);
    // Bytes cut off in flight when the node died: at most a window of messages per client
    // each way (the proxy counts what it handed to a socket, the client what it wrote or read).
    let slack = on_killed.len() as u64 * PACE.window * MAX_MESSAGE_BYTES;
    for (node, (n, clients)) in &per_node {
        let name = format!("node{}", node + 1);
        let routed = total("xmpp_lb_routed_total", &[("backend", &name)]);
        assert_eq!(routed, *n, "connections routed to {name}");
        let dir = |d: &str| {
            total(
                "xmpp_lb_relayed_bytes_total",
                &[("backend", &name), ("direction", d)],
            )
        };
        let (up, down) = (dir("client_to_backend"), dir("backend_to_client"));
        eprintln!(
            "{name}: {n} connections; up: proxy {up} clients {}; down: proxy {down} clients {}",
            clients.sent, clients.received
        );
        if *node != killed {
            assert_eq!(up, clients.sent, "bytes relayed to {name}");
            assert_eq!(down, clients.received, "bytes relayed from {name}");
        } else {
            assert!(
                up <= clients.sent && clients.sent - up <= slack,
                "bytes relayed to the killed {name}: proxy {up}, clients {}",
                clients.sent
            );
            assert!(
                down >= clients.received && down - clients.received <= slack,
                "bytes relayed from the killed {name}: proxy {down}, clients {}",
                clients.received
            );
        }
    }
}
