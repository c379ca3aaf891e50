//! Overload, against real Prosody: past the memory budget new connections are closed at once
//! while logged-in users go on; out of descriptors, `accept` backs off instead of spinning,
//! counts it, and recovers by itself once descriptors are free again.

use std::time::Duration;

use serde_json::Value;
use testkit::client::{Conn, login};
use testkit::env::{DOMAIN, EnvBuilder, accounts};
use testkit::process::signal_pid;
use testkit::proxy::sample;
use testkit::raw::{Raw, connector};
use tokio::time::Instant;

const SIGHUP: i32 = 1;

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn over_the_memory_budget_new_connections_are_shed_and_logged_in_users_stay() {
    let people = accounts("m", 0..2);
    let env = EnvBuilder::new(1).users(&people).start_process();
    let direct = env.proxy.addr("direct");
    let ca = env.ca();
    let config = std::fs::read_to_string(&env.proxy.config_path).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, password) = &people[0];
    let mut inside = rt.block_on(Raw::login(direct, DOMAIN, &ca, user, password));
    // A budget far below what the process uses, applied by a reload.
    std::fs::write(
        &env.proxy.config_path,
        format!("{config}\n[overload]\nmax_memory = \"1 MiB\"\n"),
    )
    .unwrap();
    signal_pid(env.proxy.pid(), SIGHUP).unwrap();
    wait_for("the overload gauge", Duration::from_secs(10), || {
        env.proxy
            .metric("xmpp_lb_overloaded{budget=\"memory\"}")
            .is_some_and(|v| v == 1.0)
    });
    rt.block_on(async {
        let tls = connector(&ca);
        let refused =
            Raw::direct_tls_from(direct, "127.0.0.1".parse().unwrap(), DOMAIN, &tls).await;
        assert!(refused.is_err(), "a new connection must be shed");
        // The logged-in user is served as before.
        inside.ping(DOMAIN).await;
    });
    assert!(
        env.proxy
            .metric_value("xmpp_lb_overload_refusals_total{budget=\"memory\"}")
            >= 1.0
    );
    // Back under budget (the budget removed): logins work again, with a real client.
    std::fs::write(&env.proxy.config_path, &config).unwrap();
    signal_pid(env.proxy.pid(), SIGHUP).unwrap();
    wait_for(
        "the overload gauge to clear",
        Duration::from_secs(10),
        || {
            env.proxy
                .metric("xmpp_lb_overloaded{budget=\"memory\"}")
                .is_some_and(|v| v == 0.0)
        },
    );
    let (user, password) = &people[1];
    let out = login(
        &Conn::direct(direct, &ca),
        &format!("{user}@{DOMAIN}"),
        password,
    );
    assert_eq!(out["ok"], Value::Bool(true), "{out}");
    rt.block_on(inside.ping(DOMAIN));
}

#[test]
fn out_of_descriptors_accept_backs_off_without_spinning_and_recovers() {
    let people = accounts("e", 0..1);
    // 64 descriptors, and no descriptor budget: the accept loop itself meets EMFILE.
    let env = EnvBuilder::new(1)
        .users(&people)
        .config(|c| {
            c.set("overload.max_descriptors", 1_000_000)
                .set("health.interval", "200ms")
        })
        .start_process_limited(64);
    let direct = env.proxy.addr("direct");
    let pid = env.proxy.pid();
    let emfile = "xmpp_lb_accept_errors_total{error=\"emfile\",listener=\"direct\"}";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Idle TCP connections, each holding a descriptor in the proxy until the TLS
        // handshake timeout: more than the process can hold.
        let mut held = Vec::new();
        for _ in 0..80 {
            held.push(Raw::tcp(direct).await);
        }
        let open = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        let deadline = Instant::now() + Duration::from_secs(10);
        while open() < 63 {
            assert!(
                Instant::now() < deadline,
                "the proxy never ran out: {} open",
                open()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let spent = cpu_ticks(pid) - before;
        // A busy loop would burn the whole 2 s (200 ticks at 100 Hz); backing off costs
        // next to nothing.
        assert!(spent < 40, "{spent} ticks in 2 s while out of descriptors");
        drop(held);
    });
    // The metrics endpoint needs a descriptor too: read it once they are free.
    let mut errors = 0.0;
    wait_for("the metrics endpoint", Duration::from_secs(20), || {
        errors = sample(&testkit::proxy::scrape(env.proxy.metrics), emfile).unwrap_or(0.0);
        errors > 0.0
    });
    // Far fewer failures than a spinning loop would make in a few seconds.
    assert!(errors < 100.0, "{errors} accept failures in a few seconds");
    // Descriptors are free again: a real client logs in (the node may need a moment to be
    // seen healthy again, its checks having failed for want of descriptors too).
    let (user, password) = &people[0];
    let ca = env.ca();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = login(
            &Conn::direct(direct, &ca),
            &format!("{user}@{DOMAIN}"),
            password,
        );
        if out["ok"] == Value::Bool(true) {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = env.proxy.stderr();
    assert!(log.contains("accept failed") || log.is_empty(), "{log}");
}

#[test]
fn over_the_descriptor_budget_new_connections_are_shed_before_the_limit_is_reached() {
    let people = accounts("f", 0..1);
    let env = EnvBuilder::new(1).users(&people).start_process();
    let direct = env.proxy.addr("direct");
    let pid = env.proxy.pid();
    let ca = env.ca();
    let config = std::fs::read_to_string(&env.proxy.config_path).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, password) = &people[0];
    let mut inside = rt.block_on(Raw::login(direct, DOMAIN, &ca, user, password));
    // Room for a few more descriptors than are open now.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    std::fs::write(
        &env.proxy.config_path,
        format!("{config}\n[overload]\nmax_descriptors = {}\n", open + 8),
    )
    .unwrap();
    signal_pid(pid, SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let series = "xmpp_lb_overload_refusals_total{budget=\"descriptors\"}";
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..30 {
            held.push(Raw::tcp(direct).await);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // Shed, not stuck in the backlog: the proxy closed some of them at once.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut closed = 0;
        for raw in &mut held {
            if raw
                .read_some(Instant::now() + Duration::from_millis(20))
                .await
                && raw.closed
            {
                closed += 1;
            }
        }
        assert!(closed >= 10, "only {closed} of 30 shed");
        inside.ping(DOMAIN).await;
        drop(held);
    });
    assert!(env.proxy.metric_value(series) >= 10.0);
}
