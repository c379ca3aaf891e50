//! Idle memory per logged-in connection, WebSocket (over TLS) side by side with direct TLS:
//! two proxy processes from the same configuration in front of the same Prosody node, one
//! holding N TLS logins, the other N WebSocket logins; each proxy's VmRSS is read before and
//! while holding them. A WebSocket connection may cost at most 12 KiB more than a TLS one: its
//! framing state (about 2 KiB inline) and the WebSocket library's buffers (a 4 KiB read buffer,
//! and a write buffer kept at the largest frame sent) on top of the same TLS session.
//!
//! `WS_IDLE_N` sets N (default 300); `bash benches/websocket_idle.sh` runs it with 2000 and
//! prints the table docs/benchmarks.md records.

use std::time::Duration;

use testkit::env::{DOMAIN, EnvBuilder, accounts};
use testkit::proxy::ProxyProcess;
use testkit::raw::Raw;
use testkit::ws::{Handshake, open};
use toml::Table;

/// Logins in flight at once.
const BATCH: usize = 25;
/// Connections held before the baseline is read (warms up the allocator and the caches).
const WARM: usize = 25;

fn n() -> usize {
    std::env::var("WS_IDLE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A logged-in client, held open until dropped.
type Held = Box<dyn std::any::Any + Send>;

/// Log `users` in through `proxy` (over WebSocket or direct TLS), BATCH at a time.
async fn log_in_many(
    proxy: &ProxyProcess,
    ca: &std::path::Path,
    users: &[(String, String)],
    websocket: bool,
) -> Vec<Held> {
    let mut held = Vec::new();
    for batch in users.chunks(BATCH) {
        let mut tasks = Vec::new();
        for (u, p) in batch {
            let (u, p, ca) = (u.clone(), p.clone(), ca.to_path_buf());
            let addr = proxy.addr(if websocket { "wss" } else { "direct" });
            tasks.push(tokio::spawn(async move {
                if websocket {
                    let mut ws = open(addr, DOMAIN, &ca, &Handshake::default())
                        .await
                        .expect("handshake accepted");
                    ws.log_in(DOMAIN, None, &u, &p).await;
                    Box::new(ws) as Held
                } else {
                    let raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
                    Box::new(raw.log_in(DOMAIN, &u, &p, "tcp").await) as Held
                }
            }));
        }
        for t in tasks {
            held.push(t.await.expect("login task"));
        }
    }
    held
}

/// KiB per connection held through `proxy`: (VmRSS holding − VmRSS before) / n.
fn per_connection(
    rt: &tokio::runtime::Runtime,
    proxy: &ProxyProcess,
    ca: &std::path::Path,
    users: &[(String, String)],
    websocket: bool,
) -> (f64, u64, u64) {
    let (warm, measured) = users.split_at(WARM);
    let warm = rt.block_on(log_in_many(proxy, ca, warm, websocket));
    std::thread::sleep(Duration::from_millis(500));
    let before = proxy.rss_bytes();
    let held = rt.block_on(log_in_many(proxy, ca, measured, websocket));
    std::thread::sleep(Duration::from_millis(500));
    let holding = proxy.rss_bytes();
    drop(held);
    drop(warm);
    let kib = (holding.saturating_sub(before)) as f64 / 1024.0 / measured.len() as f64;
    (kib, before / 1024, holding / 1024)
}

#[test]
fn an_idle_websocket_connection_costs_at_most_12_kib_more_than_a_tls_one() {
    let n = n();
    let users = accounts("m", 1..=(n + WARM));
    let env = EnvBuilder::new(1)
        .users(&users)
        .config(|c| {
            let mut wss = Table::new();
            wss.insert("websocket".into(), "/xmpp-websocket".into());
            c.listener("wss", "direct", wss)
        })
        .start_process();
    let ca = env.ca();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tls, tls_before, tls_holding) = per_connection(&rt, &env.proxy, &ca, &users, false);
    let ws_proxy = ProxyProcess::start(&env.config);
    let (ws, ws_before, ws_holding) = per_connection(&rt, &ws_proxy, &ca, &users, true);
    println!("| transport | held | VmRSS before KiB | VmRSS holding KiB | KiB per connection |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!("| direct TLS | {n} | {tls_before} | {tls_holding} | {tls:.1} |");
    println!("| WebSocket over TLS | {n} | {ws_before} | {ws_holding} | {ws:.1} |");
    println!("ratio WebSocket / TLS: {:.2}", ws / tls);
    assert!(
        tls > 1.0,
        "the TLS connections cost nothing measurable: {tls:.1} KiB"
    );
    assert!(
        ws <= tls + 12.0,
        "a WebSocket connection costs {ws:.1} KiB, a TLS one {tls:.1} KiB: more than 12 KiB more"
    );
}

/// Once a population of clients has left, the proxy gives the memory back to the system
/// (`src/trim.rs`): VmRSS falls back towards where it was before they came, instead of
/// staying at its peak (without the trim it stays within a few pages of the peak). Not all the
/// way: what the logins left in caches that outlive them (TLS sessions kept for resumption,
/// per-source tables) stays, and a page with anything alive on it cannot be given back; with
/// 300 connections about half came back here, with 9,000 in the benchmark 93 %.
#[test]
fn memory_goes_back_to_the_system_after_the_clients_leave() {
    let n = n();
    let users = accounts("t", 1..=(n + WARM));
    let env = EnvBuilder::new(1).users(&users).start_process();
    let ca = env.ca();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (warm, measured) = users.split_at(WARM);
    let warm = rt.block_on(log_in_many(&env.proxy, &ca, warm, false));
    std::thread::sleep(Duration::from_millis(500));
    let before = env.proxy.rss_bytes();
    let held = rt.block_on(log_in_many(&env.proxy, &ca, measured, false));
    std::thread::sleep(Duration::from_millis(500));
    let holding = env.proxy.rss_bytes();
    assert!(
        holding > before + (n as u64) * 4096,
        "{n} connections cost less than 4 KiB each ({} KiB in all): nothing to give back",
        holding.saturating_sub(before) / 1024
    );
    drop(held);
    // At least a third of what the connections took.
    let target = holding - (holding - before) / 3;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut after = env.proxy.rss_bytes();
    while after > target && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        after = env.proxy.rss_bytes();
    }
    println!(
        "VmRSS before {} KiB, holding {n}: {} KiB, after they left: {} KiB",
        before / 1024,
        holding / 1024,
        after / 1024
    );
    assert!(
        after <= target,
        "VmRSS stayed at {} KiB after {n} clients left (before {} KiB, holding {} KiB)",
        after / 1024,
        before / 1024,
        holding / 1024
    );
    drop(warm);
}
