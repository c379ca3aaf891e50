use super::pins::PinMatch;
use super::*;
use crate::route::KeySource;
use crate::route::key::{normalize_bare_jid, normalize_domain};

const TENANT: &str = "^(?<tenant>[a-z0-9]+)-";

fn backends() -> Vec<String> {
    ["node1", "node2", "node3"].map(String::from).to_vec()
}

fn pin(pattern: &str, backend: &str) -> PinEntry {
    PinEntry {
        pattern: pattern.into(),
        backend: backend.into(),
    }
}

fn table(entries: &[PinEntry]) -> PinTable {
    PinTable::new(entries, &backends()).unwrap()
}

fn policy(keys: &[RouteKey], tenant: Option<&str>, pins: &[PinEntry]) -> Policy {
    let re = tenant.map(|t| compile_tenant(t).unwrap());
    Policy::new(
        PolicySpec {
            keys,
            tenant: re.as_ref(),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        },
        Arc::new(table(pins)),
    )
    .unwrap()
}

fn policy_err(keys: &[RouteKey], tenant: Option<&Regex>) -> String {
    Policy::new(
        PolicySpec {
            keys,
            tenant,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        },
        Arc::new(table(&[])),
    )
    .unwrap_err()
}

fn ip() -> IpAddr {
    "192.0.2.77".parse().unwrap()
}

fn who(jid: Option<&str>, identity_final: bool) -> Who<'_> {
    Who {
        jid,
        domain: "iot.example",
        ip: ip(),
        identity_final,
    }
}

fn decide(p: &Policy, jid: Option<&str>, identity_final: bool) -> Option<Decision> {
    p.decide(&who(jid, identity_final))
}

fn ring(d: &Decision) -> &str {
    match &d.placement {
        Placement::Ring(k) => k,
        other => panic!("not a ring placement: {other:?}"),
    }
}

use RouteKey::*;

#[test]
fn route_key_names_and_identity() {
    for (k, name, identity) in [
        (Pin, "pin", true),
        (Jid, "jid", true),
        (Domain, "domain", false),
        (Tenant, "tenant", true),
        (Subnet, "subnet", false),
        (Random, "random", false),
    ] {
        assert_eq!(k.as_str(), name);
        assert_eq!(k.to_string(), name);
        assert_eq!(k.needs_identity(), identity, "{name}");
        #[derive(Deserialize)]
        struct K {
            k: RouteKey,
        }
        let parsed: K = toml::from_str(&format!("k = {name:?}")).unwrap();
        assert_eq!(parsed.k, k);
    }
}

#[test]
fn pin_precedence_exact_then_tenant_then_globs_in_order() {
    let re = compile_tenant(TENANT).unwrap();
    let t = table(&[
        pin("*@iot.example", "node3"),
        pin("acme-*@iot.example", "node2"),
        pin("tenant:acme", "node2"),
        pin("acme-7@iot.example", "node1"),
    ]);
    assert_eq!(t.len(), 4);
    assert!(!t.is_empty());
    let look = |jid: &str| t.lookup(jid, tenant_of(&re, jid)).unwrap();

    // The exact JID beats the tenant and both globs, wherever it is in the table.
    let m = look("acme-7@iot.example");
    assert_eq!(
        m,
        PinMatch {
            backend: "node1".into(),
            rule: "acme-7@iot.example".into(),
            kind: "jid",
        }
    );
    // The tenant beats the globs.
    let m = look("acme-1@iot.example");
    assert_eq!((m.backend.as_str(), m.kind), ("node2", "tenant"));
    assert_eq!(m.rule, "tenant:acme");
    // Without a tenant, the first glob in table order wins, even over a narrower one.
    let m = t.lookup("acme-1@iot.example", None).unwrap();
    assert_eq!((m.backend.as_str(), m.kind), ("node3", "glob"));
    assert_eq!(m.rule, "*@iot.example");
    let m = look("globex-1@iot.example");
    assert_eq!((m.backend.as_str(), m.kind), ("node3", "glob"));
    assert_eq!(t.lookup("x@other.example", None), None);
}

#[test]
fn pin_globs_and_no_match() {
    let t = table(&[
        pin("sensor-*@iot.example", "node1"),
        pin("cam-??@iot.example", "node2"),
        pin("*@*.lab.example", "node3"),
    ]);
    let backend = |jid: &str| t.lookup(jid, None).map(|m| m.backend);
    assert_eq!(backend("sensor-17@iot.example").as_deref(), Some("node1"));
    assert_eq!(backend("sensor-@iot.example").as_deref(), Some("node1"));
    assert_eq!(backend("cam-01@iot.example").as_deref(), Some("node2"));
    assert_eq!(backend("cam-001@iot.example"), None);
    assert_eq!(backend("x@a.lab.example").as_deref(), Some("node3"));
    assert_eq!(backend("sensor-1@iot.example.org"), None);
    assert_eq!(backend("juliet@iot.example"), None);
    // A tenant pin needs the tenant the domain's pattern extracted.
    let t = table(&[pin("tenant:acme", "node2")]);
    assert_eq!(t.lookup("acme-1@iot.example", None), None);
    assert_eq!(t.lookup("acme-1@iot.example", Some("globex")), None);
    assert!(t.lookup("acme-1@iot.example", Some("acme")).is_some());
}

#[test]
fn pin_patterns_are_normalized_like_jids() {
    let t = table(&[
        pin("Juliet@Example.TEST", "node1"),
        pin("SENSOR-*@IoT.Example.", "node2"),
        pin("tenant:ACME", "node3"),
    ]);
    let m = t.lookup("juliet@example.test", None).unwrap();
    assert_eq!(
        (m.backend.as_str(), m.rule.as_str()),
        ("node1", "Juliet@Example.TEST")
    );
    assert_eq!(
        t.lookup("sensor-1@iot.example", None).unwrap().backend,
        "node2"
    );
    assert_eq!(t.lookup("x@y", Some("acme")).unwrap().backend, "node3");
}

#[test]
fn pin_unknown_backend_is_an_error_naming_pattern_and_backend() {
    let e = PinTable::new(&[pin("sensor-*@iot.example", "node9")], &backends()).unwrap_err();
    assert!(e.contains("sensor-*@iot.example"), "{e}");
    assert!(e.contains("node9"), "{e}");
    assert!(e.contains("node1, node2, node3"), "{e}");
    let e = PinTable::new(&[pin("tenant:acme", "")], &backends()).unwrap_err();
    assert!(e.contains("tenant:acme"), "{e}");
}

#[test]
fn bad_pin_patterns() {
    for (pattern, why) in [
        ("", "empty"),
        ("   ", "empty"),
        ("sensor-[0-9]*@iot.example", "character classes"),
        ("*@iot.[ab]xample", "character classes"),
        ("{a,b}*@iot.example", "alternatives"),
        ("sensor-[0-9]@iot.example", "character classes"),
        ("{acme,globex}-1@iot.example", "alternatives"),
        ("sensor *@iot.example", "spaces"),
        ("*@*@iot.example", "one `@`"),
        ("@iot.example*", "non-empty"),
        ("sensor-*@", "non-empty"),
        ("sens:or-*@iot.example", "localpart"),
        ("juliet@example.test/phone", "resource"),
        ("sensor-*/x", "resource"),
        ("juliet", "not a valid bare JID"),
        ("jul iet@example.test", "not a valid bare JID"),
        ("tenant:", "tenant name"),
        ("tenant:ac*", "wildcards"),
        ("tenant:a@b", "not a tenant name"),
    ] {
        let e = PinTable::new(&[pin(pattern, "node1")], &backends()).unwrap_err();
        assert!(e.contains(why), "{pattern:?}: {e}");
        assert!(e.contains(&format!("{pattern:?}")), "{pattern:?}: {e}");
    }
    // An IP-literal domain keeps its brackets.
    let t = table(&[
        pin("*@[2001:db8::*]", "node1"),
        pin("y@[2001:DB8::2]", "node2"),
    ]);
    assert_eq!(t.lookup("x@[2001:db8::1]", None).unwrap().kind, "glob");
    assert_eq!(t.lookup("y@[2001:db8::2]", None).unwrap().kind, "jid");
    // A backslash is literal: XEP-0106 escapes are part of real localparts.
    let t = table(&[
        pin(r"d\27artagnan@example.test", "node1"),
        pin(r"*\40*@example.test", "node2"),
    ]);
    assert_eq!(
        t.lookup(r"d\27artagnan@example.test", None).unwrap().kind,
        "jid"
    );
    assert_eq!(t.lookup(r"x\40y@example.test", None).unwrap().kind, "glob");
}

#[test]
fn pin_listed_twice_is_an_error() {
    for (a, b) in [
        ("juliet@example.test", "Juliet@example.test"),
        ("tenant:acme", "tenant:ACME"),
        ("s-*@iot.example", "S-*@iot.example"),
    ] {
        let e = PinTable::new(&[pin(a, "node1"), pin(b, "node2")], &backends()).unwrap_err();
        assert!(e.contains("twice") && e.contains(a) && e.contains(b), "{e}");
    }
}

#[test]
fn empty_pin_table() {
    let t = table(&[]);
    assert!(t.is_empty());
    assert_eq!(t.len(), 0);
    assert_eq!(t.lookup("juliet@example.test", Some("acme")), None);
}

#[test]
fn tenant_capture() {
    let re = compile_tenant(TENANT).unwrap();
    assert_eq!(tenant_of(&re, "acme-1@iot.example"), Some("acme"));
    assert_eq!(tenant_of(&re, "acme-phone-2@iot.example"), Some("acme"));
    assert_eq!(tenant_of(&re, "juliet@iot.example"), None);
    // The pattern sees the localpart only.
    assert_eq!(tenant_of(&re, "juliet@acme-x.example"), None);
    assert_eq!(tenant_of(&re, "no-at-sign"), None);
    // An empty or absent group is no tenant.
    let re = compile_tenant("^(?<tenant>[a-z]*)-").unwrap();
    assert_eq!(tenant_of(&re, "-1@iot.example"), None);
    let re = compile_tenant("^(?:x|(?<tenant>[a-z]+))-").unwrap();
    assert_eq!(tenant_of(&re, "x-1@iot.example"), None);
    assert_eq!(tenant_of(&re, "acme-1@iot.example"), Some("acme"));
}

#[test]
fn bad_tenant_patterns() {
    let e = compile_tenant("^(?<tenant>[a-z+-").unwrap_err();
    assert!(e.starts_with("invalid regular expression"), "{e}");
    let e = compile_tenant("^([a-z]+)-").unwrap_err();
    assert!(e.contains("no named group `tenant`"), "{e}");
    let e = compile_tenant("^(?<customer>[a-z]+)-").unwrap_err();
    assert!(e.contains("no named group `tenant`"), "{e}");
    // A regex compiled elsewhere without the group is refused by the policy too.
    let plain = Regex::new("^([a-z]+)-").unwrap();
    let e = policy_err(&[Tenant, Subnet], Some(&plain));
    assert!(e.contains("no named group `tenant`"), "{e}");
}

#[test]
fn policy_rejects_bad_key_lists() {
    let re = compile_tenant(TENANT).unwrap();
    assert!(policy_err(&[], None).contains("at least one"));
    let e = policy_err(&[Jid, Pin, Jid], None);
    assert!(e.contains("`jid` is listed twice"), "{e}");
    let e = policy_err(&[Pin, Tenant, Subnet], None);
    assert!(e.contains("`tenant` key needs a tenant pattern"), "{e}");
    for k in [Domain, Subnet, Random] {
        let e = policy_err(&[Pin, k, Jid], Some(&re));
        assert!(
            e.contains(&format!("`{k}` always applies")) && e.contains("`jid`"),
            "{e}"
        );
    }
    let e = policy_err(&[Subnet, Jid, Tenant], Some(&re));
    assert!(
        e.contains("`jid`, `tenant` after it") && e.contains("them"),
        "{e}"
    );
    let bad_prefix = |v4, v6| {
        Policy::new(
            PolicySpec {
                keys: &[Subnet],
                tenant: None,
                ipv4_prefix: v4,
                ipv6_prefix: v6,
            },
            Arc::new(table(&[])),
        )
        .unwrap_err()
    };
    assert!(bad_prefix(33, 64).contains("IPv4"));
    assert!(bad_prefix(24, 129).contains("IPv6"));
    // Every key alone, and the full chain ending in one that always applies, are fine.
    let p = policy(&[Pin, Tenant, Jid, Random], Some(TENANT), &[]);
    assert_eq!(p.keys(), &[Pin, Tenant, Jid, Random]);
}

#[test]
fn jid_key_is_the_normalized_bare_jid() {
    let p = policy(&[Jid], None, &[]);
    let bare = normalize_bare_jid("JuLiet@IoT.Example/phone").unwrap();
    let d = decide(&p, Some(&bare), true).unwrap();
    assert_eq!(d.key, Jid);
    assert_eq!(d.placement, Placement::Ring("juliet@iot.example".into()));
    assert_eq!(ring(&d), bare);
    assert_eq!(d.rule, "consistent hash of the bare JID");
    assert!(d.skipped.is_empty());
}

#[test]
fn domain_key_is_the_domain() {
    let p = policy(&[Domain], None, &[]);
    for (jid, fin) in [
        (None, false),
        (None, true),
        (Some("juliet@iot.example"), true),
    ] {
        let d = decide(&p, jid, fin).unwrap();
        assert_eq!(d.key, Domain);
        assert_eq!(ring(&d), normalize_domain("IoT.Example.").unwrap());
        assert_eq!(d.rule, "consistent hash of the domain");
    }
}

#[test]
fn subnet_key_is_subnet_key() {
    let p = policy(&[Subnet], None, &[]);
    let d = decide(&p, None, false).unwrap();
    assert_eq!(d.key, Subnet);
    assert_eq!(ring(&d), subnet_key(ip(), 24, 64));
    assert_eq!(ring(&d), "192.0.2.0/24");
    assert_eq!(d.rule, "consistent hash of the client subnet 192.0.2.0/24");
    assert!(d.skipped.is_empty());
    let v6: IpAddr = "2001:db8:1:2::9".parse().unwrap();
    let w = Who {
        ip: v6,
        ..who(None, true)
    };
    assert_eq!(ring(&p.decide(&w).unwrap()), subnet_key(v6, 24, 64));
}

#[test]
fn random_key() {
    let p = policy(&[Random], None, &[]);
    let d = decide(&p, None, false).unwrap();
    assert_eq!((d.key, d.placement), (Random, Placement::Random));
    assert_eq!(d.rule, "random node");
}

#[test]
fn tenant_key_groups_a_customer() {
    let p = policy(&[Tenant, Jid], Some(TENANT), &[]);
    let key = |jid: &str| {
        let d = decide(&p, Some(jid), true).unwrap();
        (d.key, ring(&d).to_string(), d.rule)
    };
    let a1 = key("acme-1@iot.example");
    let a2 = key("acme-2@iot.example");
    let g1 = key("globex-1@iot.example");
    assert_eq!(
        a1,
        (
            Tenant,
            "tenant:acme@iot.example".into(),
            "tenant acme".into()
        )
    );
    assert_eq!(a1.1, a2.1);
    assert_ne!(a1.1, g1.1);
    assert_eq!(g1.1, "tenant:globex@iot.example");
    // No match: the next key.
    let d = decide(&p, Some("juliet@iot.example"), true).unwrap();
    assert_eq!((d.key, ring(&d)), (Jid, "juliet@iot.example"));
    assert_eq!(d.skipped, vec![(Tenant, "tenant pattern does not match")]);
}

#[test]
fn pin_key_decisions() {
    let pins = [
        pin("sensor-*@iot.example", "node2"),
        pin("tenant:acme", "node3"),
        pin("juliet@iot.example", "node1"),
    ];
    let p = policy(&[Pin, Jid, Subnet], Some(TENANT), &pins);
    let d = decide(&p, Some("sensor-4@iot.example"), true).unwrap();
    assert_eq!(d.key, Pin);
    assert_eq!(d.placement, Placement::Pinned("node2".into()));
    assert_eq!(d.rule, "pin sensor-*@iot.example");
    assert!(d.skipped.is_empty());
    let d = decide(&p, Some("acme-9@iot.example"), true).unwrap();
    assert_eq!(
        (d.placement, d.rule.as_str()),
        (Placement::Pinned("node3".into()), "pin tenant:acme")
    );
    let d = decide(&p, Some("juliet@iot.example"), true).unwrap();
    assert_eq!(d.placement, Placement::Pinned("node1".into()));
    // Tenant pins need the domain's tenant pattern.
    let p = policy(&[Pin, Jid], None, &pins);
    let d = decide(&p, Some("acme-9@iot.example"), true).unwrap();
    assert_eq!((d.key, ring(&d)), (Jid, "acme-9@iot.example"));
}

#[test]
fn fallback_chain_pin_jid_subnet() {
    let p = policy(
        &[Pin, Jid, Subnet],
        None,
        &[pin("sensor-*@iot.example", "node2")],
    );
    // Identity known, no pin: the bare JID.
    let d = decide(&p, Some("juliet@iot.example"), true).unwrap();
    assert_eq!((d.key, ring(&d)), (Jid, "juliet@iot.example"));
    assert_eq!(d.skipped, vec![(Pin, "no pin matches")]);
    // Known from the header already (identity_final false does not matter then), but the
    // key's source says where the JID came from.
    let d2 = decide(&p, Some("juliet@iot.example"), false).unwrap();
    assert_eq!(
        Decision {
            source: KeySource::From,
            ..d.clone()
        },
        d2
    );
    assert_eq!((d.source, d2.source), (KeySource::Sasl, KeySource::From));
    // Not known yet: wait for SASL.
    assert_eq!(decide(&p, None, false), None);
    // Known to be unknown (ANONYMOUS): the subnet, listing what was skipped.
    let d = decide(&p, None, true).unwrap();
    assert_eq!((d.key, ring(&d)), (Subnet, "192.0.2.0/24"));
    assert_eq!(d.skipped, vec![(Pin, "no identity"), (Jid, "no identity")]);
    assert_eq!(d.rule, "consistent hash of the client subnet 192.0.2.0/24");
}

#[test]
fn wait_only_when_the_first_applicable_key_needs_the_identity() {
    for keys in [&[Jid][..], &[Tenant, Jid], &[Pin, Domain]] {
        let p = policy(keys, Some(TENANT), &[]);
        assert_eq!(decide(&p, None, false), None, "{keys:?}");
    }
    // A key that always applies ends the walk before any identity key is reached.
    let p = policy(&[Random], None, &[]);
    assert!(decide(&p, None, false).is_some());
    // A skipped pin with a known JID does not wait either.
    let p = policy(&[Pin, Tenant, Domain], Some(TENANT), &[]);
    let d = decide(&p, Some("juliet@iot.example"), false).unwrap();
    assert_eq!(d.key, Domain);
    assert_eq!(
        d.skipped,
        vec![
            (Pin, "no pin matches"),
            (Tenant, "tenant pattern does not match")
        ]
    );
}

#[test]
fn no_key_applies_falls_back_to_the_subnet() {
    let p = policy(&[Jid], None, &[]);
    let d = decide(&p, None, true).unwrap();
    assert_eq!(d.key, Subnet);
    assert_eq!(ring(&d), subnet_key(ip(), 24, 64));
    assert_eq!(d.rule, "fallback: no configured key applies");
    assert_eq!(d.skipped, vec![(Jid, "no identity")]);

    let p = policy(&[Pin, Tenant], Some(TENANT), &[pin("tenant:acme", "node1")]);
    let d = decide(&p, Some("juliet@iot.example"), true).unwrap();
    assert_eq!(d.key, Subnet);
    assert_eq!(d.rule, "fallback: no configured key applies");
    assert_eq!(
        d.skipped,
        vec![
            (Pin, "no pin matches"),
            (Tenant, "tenant pattern does not match")
        ]
    );
    // Never None once the identity is final, whatever the keys.
    for keys in [&[Pin][..], &[Tenant], &[Jid, Pin, Tenant]] {
        let p = policy(keys, Some(TENANT), &[]);
        assert!(decide(&p, None, true).is_some(), "{keys:?}");
        assert!(
            decide(&p, Some("x@iot.example"), true).is_some(),
            "{keys:?}"
        );
    }
}

#[test]
fn each_decision_says_where_its_key_came_from() {
    let pins = [pin("sensor-*@iot.example", "node2")];
    let source = |keys: &[RouteKey], jid, identity_final| {
        let p = policy(keys, Some(TENANT), &pins);
        decide(&p, jid, identity_final).unwrap().source
    };
    let sensor = Some("sensor-1@iot.example");
    let juliet = Some("juliet@iot.example");
    assert_eq!(source(&[Pin, Jid], sensor, true), KeySource::Pin);
    assert_eq!(source(&[Jid], juliet, false), KeySource::From);
    assert_eq!(source(&[Jid], juliet, true), KeySource::Sasl);
    assert_eq!(
        source(&[Tenant], Some("acme-1@iot.example"), true),
        KeySource::Tenant
    );
    assert_eq!(source(&[Domain], None, false), KeySource::Domain);
    assert_eq!(source(&[Subnet], None, false), KeySource::Subnet);
    assert_eq!(source(&[Random], None, false), KeySource::Random);
    // No configured key applies: the subnet, as a fallback.
    assert_eq!(source(&[Jid], None, true), KeySource::Fallback);
    assert_eq!(source(&[Tenant], juliet, true), KeySource::Fallback);
    // A resume goes where the session is, whatever key applied.
    let p = policy(&[Jid], None, &[]);
    let d = decide(&p, juliet, true)
        .unwrap()
        .resuming_on("node3".into());
    assert_eq!(d.source, KeySource::Resume);
}
