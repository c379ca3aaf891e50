//! Slow and stuck peers, against real Prosody nodes: a client that dribbles (or says nothing)
//! at each phase is cut at that phase's bound; a client that stops reading is cut after the
//! write timeout without holding up the other users of its node; a node that stops answering
//! (SIGSTOP: its kernel still accepts and acknowledges) has its sessions closed once the
//! health checks take it out, and its users log in on the next node.

use std::time::Duration;

use testkit::env::{DOMAIN, EnvBuilder, accounts};
use testkit::process::signal_pid;
use testkit::raw::{Raw, connector, header, plain_auth};
use tokio::time::Instant;

const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// Send `bytes` one at a time, `gap` apart, until the peer closes; returns how long after
/// `since` the proxy closed the connection.
async fn dribble(raw: &mut Raw, bytes: &[u8], gap: Duration, since: Instant) -> Duration {
    for b in bytes.iter().cycle().take(10_000) {
        if !raw
            .try_send(std::str::from_utf8(std::slice::from_ref(b)).unwrap())
            .await
        {
            return since.elapsed();
        }
        if raw.read_some(Instant::now() + gap).await && raw.closed {
            return since.elapsed();
        }
    }
    panic!("never cut: {:?}", raw.received);
}

#[test]
fn a_client_dribbling_at_any_phase_is_cut_at_that_phase_bound() {
    let people = accounts("d", 0..1);
    let env = EnvBuilder::new(1)
        .users(&people)
        .config(|c| {
            c.set("limits.tls_handshake_timeout", "1s")
                .set("limits.prerouting_timeout", "3s")
        })
        .start();
    let direct = env.proxy.addr("direct", false);
    let starttls = env.proxy.addr("starttls", false);
    let tls = connector(&env.ca());
    let gap = Duration::from_millis(150);
    let within = |took: Duration, bound: Duration, what: &str| {
        assert!(
            took >= bound - Duration::from_millis(100)
                && took < bound + Duration::from_millis(1500),
            "{what}: cut after {took:?}, bound {bound:?}"
        );
    };
    env.proxy.block_on(async {
        let silent_tcp = async {
            let start = Instant::now();
            let mut raw = Raw::tcp(starttls).await;
            raw.read_to_close(Duration::from_secs(10)).await;
            start.elapsed()
        };
        let silent_tls = async {
            let start = Instant::now();
            let mut raw = Raw::tcp(direct).await;
            raw.read_to_close(Duration::from_secs(10)).await;
            start.elapsed()
        };
        // A TLS record header announcing 512 bytes of handshake, then one byte at a time.
        let tls_dribble = async {
            let start = Instant::now();
            let mut raw = Raw::tcp(direct).await;
            raw.send_bytes(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
            dribble(&mut raw, &[0x01], gap, start).await
        };
        let header_dribble = async {
            let start = Instant::now();
            let mut raw = Raw::direct_tls(direct, DOMAIN, &env.ca()).await;
            let h = header(DOMAIN, None);
            dribble(&mut raw, h.as_bytes(), gap, start).await
        };
        let sasl_dribble = async {
            let start = Instant::now();
            let mut raw = Raw::direct_tls_from(direct, "127.0.0.1".parse().unwrap(), DOMAIN, &tls)
                .await
                .unwrap();
            raw.send(&header(DOMAIN, None)).await;
            raw.expect("</stream:features>").await;
            let (user, password) = &people[0];
            let auth = plain_auth(user, password);
            dribble(&mut raw, auth.as_bytes(), gap, start).await
        };
        let (tcp, tls_silent, tls_slow, head, sasl) = tokio::join!(
            silent_tcp,
            silent_tls,
            tls_dribble,
            header_dribble,
            sasl_dribble
        );
        within(tcp, Duration::from_secs(3), "silent before the header");
        within(
            tls_silent,
            Duration::from_secs(1),
            "silent before the TLS handshake",
        );
        within(tls_slow, Duration::from_secs(1), "TLS handshake dribbled");
        within(head, Duration::from_secs(3), "stream header dribbled");
        within(sasl, Duration::from_secs(3), "SASL message dribbled");
    });
}

#[test]
fn a_client_that_stops_reading_is_cut_and_its_node_keeps_serving_the_others() {
    let people = [
        ("stall", "stall-secret"),
        ("talker", "talker-secret"),
        ("other", "other-secret"),
    ];
    let env = EnvBuilder::new(1)
        .users(&people)
        .config(|c| c.set("limits.write_timeout", "2s"))
        .start();
    let direct = env.proxy.addr("direct", false);
    let tls = connector(&env.ca());
    let cut = "xmpp_lb_connections_closed_total{reason=\"write_timeout\",side=\"client\"}";
    env.proxy.block_on(async {
        let stalled = Raw::direct_tls_small_window(direct, DOMAIN, &tls, 4096).await;
        let stalled = stalled.log_in(DOMAIN, "stall", "stall-secret", "r").await;
        let mut talker = Raw::login(direct, DOMAIN, &env.ca(), "talker", "talker-secret").await;
        let mut other = Raw::login(direct, DOMAIN, &env.ca(), "other", "other-secret").await;
        // The stalled client never reads again; the talker floods it with 8 MB.
        let body = "x".repeat(10_000);
        let flood_started = Instant::now();
        for i in 0..800 {
            talker
                .send(&format!(
                    "<message to='stall@{DOMAIN}/r' id='f{i}' type='chat'><body>{body}</body></message>"
                ))
                .await;
        }
        // Meanwhile another user of the same node is served at once.
        talker
            .send(&format!(
                "<message to='other@{DOMAIN}/raw' id='hello' type='chat'><body>still here</body></message>"
            ))
            .await;
        other
            .expect_within("still here", Duration::from_secs(3))
            .await;
        // The stalled client is cut once it has left bytes unread for the write timeout.
        let deadline = flood_started + Duration::from_secs(20);
        while sample(&env.proxy.scrape(), cut) < 1.0 {
            assert!(Instant::now() < deadline, "the stalled client was never cut");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(flood_started.elapsed() >= Duration::from_secs(2));
        other.ping(DOMAIN).await;
        talker.ping(DOMAIN).await;
        drop(stalled);
    });
}

fn sample(scrape: &str, series: &str) -> f64 {
    testkit::proxy::sample(scrape, series).unwrap_or(0.0)
}

/// Continues a stopped node when dropped, so a failing test never leaves it stopped.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = signal_pid(self.0, SIGCONT);
    }
}

#[test]
fn a_node_that_stops_answering_has_its_sessions_closed_and_its_users_move() {
    let people = accounts("s", 0..12);
    let env = EnvBuilder::new(2)
        .users(&people)
        .config(|c| {
            c.set("health.interval", "300ms")
                .set("health.timeout", "300ms")
                .set("health.fall", 2)
        })
        .start();
    let direct = env.proxy.addr("direct", false);
    // A user whose node is node1.
    let (user, password) = people
        .iter()
        .find(|(u, _)| env.proxy.route_cli(&format!("{u}@{DOMAIN}")) == "node1")
        .expect("someone lives on node1");
    let pid = env.cluster.pid(0).expect("node1 runs");
    env.proxy.block_on(async {
        let mut raw = Raw::login(direct, DOMAIN, &env.ca(), user, password).await;
        raw.ping(DOMAIN).await;
        raw.clear();
        signal_pid(pid, SIGSTOP).unwrap();
        let _continue = Continue(pid);
        let stopped = Instant::now();
        // Health checks take the node out after about fall × (interval + timeout); the
        // session is then closed with a redirect back to the proxy.
        let said = raw.read_to_close(Duration::from_secs(10)).await;
        assert!(said.contains("<see-other-host"), "{said}");
        assert!(
            stopped.elapsed() < Duration::from_secs(6),
            "{:?}",
            stopped.elapsed()
        );
        // The user logs in again, on the other node.
        let mut again = Raw::login(direct, DOMAIN, &env.ca(), user, password).await;
        again.ping(DOMAIN).await;
        assert!(env.cluster.has_session(1, &format!("{user}@{DOMAIN}")));
    });
    // Counted once the relay has wound down (a stopped node never closes its side: bounded
    // by the proxy's wind-down time).
    let series = "xmpp_lb_connections_closed_total{reason=\"node_down\",side=\"proxy\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&env.proxy.scrape(), series) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "never counted: {}",
            env.proxy.scrape()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tcp_keepalive_is_on_for_both_sides_of_a_relayed_connection() {
    let people = accounts("k", 0..1);
    let env = EnvBuilder::new(1).users(&people).start_process();
    let direct = env.proxy.addr("direct");
    let pid = env.proxy.pid();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (user, password) = &people[0];
        let mut raw = Raw::login(direct, DOMAIN, &env.ca(), user, password).await;
        raw.ping(DOMAIN).await;
        // Let the last segments be acknowledged, so no retransmit timer hides the keepalive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // /proc/net/tcp has a timer column: keepalive timers show as "02" on idle sockets.
        let inodes: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
                .collect();
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let keepalive_timers = tcp
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // f[3] = state (01 established), f[5] = timer:when, f[9] = inode.
                f.len() > 9 && f[3] == "01" && inodes.contains(f[9]) && f[5].starts_with("02:")
            })
            .count();
        let ours: Vec<&str> = tcp
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(9)
                    .is_some_and(|i| inodes.contains(i))
            })
            .collect();
        assert!(
            keepalive_timers >= 2,
            "client and backend sockets: {keepalive_timers}: {ours:#?}"
        );
        raw.send("</stream:stream>").await;
        let _ = raw.read_to_close(Duration::from_secs(5)).await;
    });
}
