//! Cost of choosing a backend: building the ring (on start and on every config reload), and
//! the per-login work of extracting the claimed identity, normalising it into a key and
//! walking the ring for the preference list.
//!
//! Inputs are built before timing starts; lookups cycle through many distinct keys so the
//! figures are not those of one lucky cache-resident path.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use xmpp_lb::route::key::normalize_bare_jid;
use xmpp_lb::route::ring::Ring;
use xmpp_lb::xmpp::sasl::{claimed_identity, decode_payload};

/// Distinct keys to cycle through; a power of two so the index wraps with a mask.
const KEYS: usize = 1024;

fn backends(n: usize) -> Vec<(String, u32)> {
    (1..=n).map(|i| (format!("node{i}"), 1)).collect()
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user{i}@example.test")).collect()
}

fn ring_new(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_new");
    for n in [3, 20] {
        let set = backends(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
            b.iter(|| Ring::new(black_box(set)))
        });
    }
    g.finish();
}

fn preference(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("ring_preference");
    for n in [3, 20] {
        let ring = Ring::new(&backends(n));
        assert_eq!(ring.preference(&keys[0]).len(), n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                ring.preference(black_box(&keys[i]))
            })
        });
    }
    g.finish();
}

fn normalize(c: &mut Criterion) {
    let cases: [(&str, Vec<String>); 3] = [
        ("ascii_lower", keys()),
        (
            "ascii_mixed_resource",
            (0..KEYS)
                .map(|i| format!("User{i}@Example.TEST/phone"))
                .collect(),
        ),
        (
            "unicode",
            (0..KEYS)
                .map(|i| format!("ÄNNE{i}@ÉXAMPLE.test/Telefon"))
                .collect(),
        ),
    ];
    let mut g = c.benchmark_group("normalize_bare_jid");
    for (name, jids) in &cases {
        assert!(jids.iter().all(|j| normalize_bare_jid(j).is_some()));
        g.bench_with_input(BenchmarkId::from_parameter(name), jids, |b, jids| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                normalize_bare_jid(black_box(&jids[i]))
            })
        });
    }
    g.finish();
}

fn sasl(c: &mut Criterion) {
    // What slixmpp sends as its initial response, decoded, and the base64 text it came in.
    let plain = b"\0juliet\0correct horse battery staple".as_slice();
    let plain_b64 = "AGp1bGlldABjb3JyZWN0IGhvcnNlIGJhdHRlcnkgc3RhcGxl";
    let scram = b"n,,n=juliet,r=fyko+d2lbbFgONRv9qkxdawL".as_slice();
    assert_eq!(decode_payload(plain_b64).unwrap().as_deref(), Some(plain));
    for (mech, payload) in [("PLAIN", plain), ("SCRAM-SHA-1", scram)] {
        assert_eq!(
            claimed_identity(mech, payload, "example.test")
                .unwrap()
                .as_deref(),
            Some("juliet@example.test")
        );
    }

    let mut g = c.benchmark_group("claimed_identity");
    for (mech, payload) in [("PLAIN", plain), ("SCRAM-SHA-1", scram)] {
        g.bench_with_input(BenchmarkId::from_parameter(mech), &payload, |b, p| {
            b.iter(|| claimed_identity(mech, black_box(p), "example.test"))
        });
    }
    g.finish();

    // The whole per-login routing path: base64 text of <auth/> to the preference list.
    let ring = Ring::new(&backends(3));
    c.bench_function("route_login/PLAIN_3_backends", |b| {
        b.iter(|| {
            let payload = decode_payload(black_box(plain_b64)).unwrap().unwrap();
            let id = claimed_identity("PLAIN", &payload, "example.test")
                .unwrap()
                .unwrap();
            ring.preference(&normalize_bare_jid(&id).unwrap())
        })
    });
}

criterion_group!(benches, ring_new, preference, normalize, sasl);
criterion_main!(benches);
