use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::{Duration, Instant};

use super::*;
use crate::config::LoginLimits;

fn limits() -> SourceLimits {
    SourceLimits {
        ipv4_prefix: 24,
        ipv6_prefix: 64,
        max_connections: 3,
        max_unauthenticated: 2,
        connections_per_second: 0.0,
        connections_burst: 10,
        tls_handshakes_per_second: 0.0,
        tls_handshakes_burst: 10,
        allow: vec!["192.0.2.7/32".parse().unwrap()],
        max_idle_sources: 16,
        logins: LoginLimits {
            window: Duration::from_secs(60),
            delay_after: 2,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3),
            ban_after: 4,
            jid_delay_after: 3,
            jid_ban_after: 5,
            ban_time: Duration::from_secs(600),
            max_jids: 16,
        },
    }
}

fn sources() -> Arc<Sources> {
    Arc::new(Sources::new(prometheus::IntGauge::new("t", "t").unwrap()))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn sources_are_networks_and_ipv4_mapped_addresses_are_ipv4() {
    let l = limits();
    assert_eq!(
        source_of(&l, ip("198.51.100.77")).to_string(),
        "198.51.100.0/24"
    );
    assert_eq!(
        source_of(&l, ip("::ffff:198.51.100.77")).to_string(),
        "198.51.100.0/24"
    );
    assert_eq!(
        source_of(&l, ip("2001:db8:1:2:3::4")).to_string(),
        "2001:db8:1:2::/64"
    );
}

#[test]
fn concurrent_and_unauthenticated_counts_are_per_network_and_given_back() {
    let (s, l, now) = (sources(), limits(), Instant::now());
    let mut a = s.admit(&l, ip("198.51.100.1"), true, now).unwrap().unwrap();
    let _b = s.admit(&l, ip("198.51.100.2"), true, now).unwrap().unwrap();
    // Two not logged in from the /24: a third waits for one of them to log in.
    assert_eq!(
        s.admit(&l, ip("198.51.100.3"), true, now).err(),
        Some(Limit::Unauthenticated)
    );
    a.authenticated();
    let c = s.admit(&l, ip("198.51.100.3"), true, now).unwrap();
    assert!(c.is_some());
    assert_eq!(
        s.admit(&l, ip("198.51.100.4"), true, now).err(),
        Some(Limit::Connections)
    );
    // Another network is another source; the allow-listed address has no limit at all.
    assert!(s.admit(&l, ip("203.0.113.1"), true, now).unwrap().is_some());
    let allowed: Vec<_> = (0..10)
        .map(|_| s.admit(&l, ip("192.0.2.7"), true, now).unwrap())
        .collect();
    assert!(allowed.iter().all(Option::is_none));
    drop(c);
    assert!(s.admit(&l, ip("198.51.100.4"), true, now).is_ok());
}

#[test]
fn connection_and_full_handshake_rates_refill_over_time() {
    let (s, mut l, t0) = (sources(), limits(), Instant::now());
    l.max_connections = 0;
    l.max_unauthenticated = 0;
    l.connections_per_second = 1.0;
    l.connections_burst = 2;
    let two: Vec<_> = (0..2)
        .map(|_| s.admit(&l, ip("198.51.100.1"), false, t0).unwrap())
        .collect();
    assert_eq!(
        s.admit(&l, ip("198.51.100.9"), false, t0).err(),
        Some(Limit::ConnectionRate)
    );
    assert!(
        s.admit(&l, ip("198.51.100.9"), false, t0 + Duration::from_secs(1))
            .is_ok()
    );
    drop(two);

    let (s, mut l) = (sources(), limits());
    l.max_connections = 0;
    l.max_unauthenticated = 0;
    l.tls_handshakes_per_second = 0.5;
    l.tls_handshakes_burst = 1;
    // The token is taken at admission: a second connection arriving before the first one's
    // handshake is over is refused (parallel connections cannot all pass one check).
    let mut t = s.admit(&l, ip("198.51.100.1"), true, t0).unwrap().unwrap();
    assert_eq!(
        s.admit(&l, ip("198.51.100.1"), true, t0).err(),
        Some(Limit::TlsHandshakeRate)
    );
    // A resumed handshake gives it back; a full one keeps it spent.
    t.handshook(&l, false);
    let mut again = s.admit(&l, ip("198.51.100.1"), true, t0).unwrap().unwrap();
    again.handshook(&l, true);
    assert_eq!(
        s.admit(&l, ip("198.51.100.1"), true, t0).err(),
        Some(Limit::TlsHandshakeRate)
    );
    // Only once: a second report of the same handshake gives nothing back.
    t.handshook(&l, false);
    assert_eq!(
        s.admit(&l, ip("198.51.100.1"), true, t0).err(),
        Some(Limit::TlsHandshakeRate)
    );
    // Without TLS (plain HTTP behind a balancer) the handshake bucket does not matter.
    assert!(s.admit(&l, ip("198.51.100.1"), false, t0).is_ok());
}

#[test]
fn failed_logins_delay_then_ban_the_source_and_success_resets() {
    let (s, l, now) = (sources(), limits(), Instant::now());
    let from = ip("198.51.100.1");
    assert_eq!(s.login_attempt(&l, from, None, now), Verdict::Go);
    assert!(s.login_failed(&l, from, None, now).is_empty());
    assert_eq!(s.login_attempt(&l, from, None, now), Verdict::Go);
    s.login_failed(&l, from, None, now);
    assert_eq!(
        s.login_attempt(&l, from, None, now),
        Verdict::Wait(Duration::from_secs(1))
    );
    s.login_failed(&l, from, None, now);
    assert_eq!(
        s.login_attempt(&l, from, None, now),
        Verdict::Wait(Duration::from_secs(2))
    );
    // A success forgets the failures.
    s.login_succeeded(&l, from, None);
    assert_eq!(s.login_attempt(&l, from, None, now), Verdict::Go);
    for _ in 0..3 {
        assert!(s.login_failed(&l, from, None, now).is_empty());
    }
    assert_eq!(s.login_failed(&l, from, None, now), vec![BanScope::Source]);
    assert_eq!(
        s.login_attempt(&l, ip("198.51.100.200"), None, now),
        Verdict::Banned
    );
    assert_eq!(
        s.admit(&l, ip("198.51.100.5"), true, now).err(),
        Some(Limit::Banned)
    );
    // The ban ends.
    let later = now + Duration::from_secs(601);
    assert!(s.admit(&l, ip("198.51.100.5"), true, later).is_ok());
    assert_eq!(s.login_attempt(&l, from, None, later), Verdict::Go);
}

#[test]
fn failures_on_one_account_from_many_networks_slow_and_ban_that_account_only() {
    let (s, l, now) = (sources(), limits(), Instant::now());
    let jid = Some("juliet@example.test");
    for i in 0..4 {
        s.login_failed(&l, ip(&format!("203.0.{i}.1")), jid, now);
    }
    assert_eq!(
        s.login_attempt(&l, ip("203.0.99.1"), jid, now),
        Verdict::Wait(Duration::from_secs(2))
    );
    assert_eq!(
        s.login_attempt(&l, ip("203.0.99.1"), Some("romeo@example.test"), now),
        Verdict::Go
    );
    assert_eq!(
        s.login_failed(&l, ip("203.0.5.1"), jid, now),
        vec![BanScope::Jid]
    );
    assert_eq!(
        s.login_attempt(&l, ip("203.0.99.1"), jid, now),
        Verdict::Banned
    );
    // The allow-listed address counts against the account, not as a source.
    assert_eq!(
        s.login_attempt(&l, ip("192.0.2.7"), jid, now),
        Verdict::Banned
    );
}

#[test]
fn the_table_stays_bounded_whatever_the_number_of_sources() {
    let (s, mut l, now) = (sources(), limits(), Instant::now());
    l.connections_per_second = 1.0;
    l.ipv4_prefix = 32;
    l.logins.max_jids = 16;
    // 1,000 sources connect once each and leave; each leaves a bucket worth remembering.
    for i in 0..1000u32 {
        let a = std::net::Ipv4Addr::from(0xC633_0000 + i);
        drop(s.admit(&l, IpAddr::V4(a), true, now).unwrap());
        s.login_failed(&l, IpAddr::V4(a), Some(&format!("u{i}@example.test")), now);
    }
    assert!(lock(&s.table).len() <= l.max_idle_sources + 1);
    assert!(lock(&s.jids).entries_len() <= l.logins.max_jids);
    // Sources with open connections are never forgotten.
    let held: Vec<_> = (0..40u32)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0xCB00_7100 + i);
            s.admit(&l, IpAddr::V4(a), true, now).unwrap().unwrap()
        })
        .collect();
    for i in 0..100u32 {
        let a = std::net::Ipv4Addr::from(0xC633_1000 + i);
        drop(s.admit(&l, IpAddr::V4(a), true, now).unwrap());
    }
    assert!(lock(&s.table).len() >= 40);
    assert!(lock(&s.table).len() <= 40 + l.max_idle_sources + 1);
    drop(held);
}

#[test]
fn a_remembered_source_costs_under_two_hundred_bytes() {
    // A hashbrown table holds (key, value) pairs inline plus one control byte per slot, at
    // most 8/7 slots per entry: the bound docs/security.md gives for the tables.
    let pair = std::mem::size_of::<(ipnet::IpNet, super::table::Entry)>();
    let per_entry = (pair + 1) * 8 / 7;
    assert!(
        per_entry < 200,
        "{pair} bytes per pair, {per_entry} per entry"
    );
    let jid = std::mem::size_of::<(u64, super::jids::JidEntry)>();
    let per_jid = (jid + 1) * 8 / 7;
    assert!(per_jid < 100, "{jid} bytes per pair, {per_jid} per account");
    eprintln!("per source: {per_entry} bytes; per account: {per_jid} bytes");
}
