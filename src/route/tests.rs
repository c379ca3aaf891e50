//! Tests of `route` that mutation testing showed missing: each pins a behaviour no other unit
//! test noticed changing (see docs/testing.md).

use super::KeySource;
use super::key::normalize_domain;
use super::policy::{PinEntry, PinTable};
use crate::config::parse_pin_file;

fn pin(pattern: &str) -> PinEntry {
    PinEntry {
        pattern: pattern.into(),
        backend: "node1".into(),
    }
}

fn pins(pattern: &str) -> Result<PinTable, String> {
    PinTable::new(&[pin(pattern)], &["node1".to_string()])
}

#[test]
fn key_sources_are_the_documented_metric_labels() {
    // `xmpp_lb_routed_total{source}` (docs/metrics.md) and the access log use these.
    let all = [
        (KeySource::From, "from"),
        (KeySource::Sasl, "sasl"),
        (KeySource::Domain, "domain"),
        (KeySource::Subnet, "subnet"),
        (KeySource::Pin, "pin"),
        (KeySource::Tenant, "tenant"),
        (KeySource::Random, "random"),
        (KeySource::Fallback, "fallback"),
        (KeySource::Resume, "resume"),
    ];
    for (source, label) in all {
        assert_eq!(source.as_str(), label);
    }
}

#[test]
fn a_domainpart_may_be_as_long_as_the_jid_rules_allow_and_no_longer() {
    let label = "a".repeat(63);
    let longest = [label.as_str(); 16].join(".")[..1023].to_string();
    assert_eq!(longest.len(), 1023);
    assert_eq!(
        normalize_domain(&longest).as_deref(),
        Some(longest.as_str())
    );
    let too_long = format!("{longest}a");
    assert_eq!(normalize_domain(&too_long), None);
}

#[test]
fn a_bracket_only_at_one_end_of_the_domain_is_no_ip_literal() {
    // `[...]` around the whole domain is an IP literal; one bracket is a glob mistake.
    assert!(pins("device@[2001:db8::1]").is_ok());
    for pattern in ["device@[2001:db8::1", "device@2001:db8::1]"] {
        let e = pins(pattern)
            .err()
            .unwrap_or_else(|| panic!("{pattern} accepted"));
        assert!(e.contains("character classes"), "{pattern}: {e}");
    }
}

#[test]
fn a_tenant_name_that_nodeprep_maps_to_nothing_is_refused() {
    // U+00AD SOFT HYPHEN is mapped to nothing by nodeprep.
    let Err(e) = pins("tenant:\u{ad}") else {
        panic!("refused")
    };
    assert!(e.contains("is not a tenant name"), "{e}");
    assert!(pins("tenant:acme").is_ok());
}

#[test]
fn a_pin_file_error_in_a_middle_table_names_that_table() {
    let text = "[[pin]]\nmatch = \"a@example.test\"\nbackend = \"node1\"\n\n\
                [[pin]]\nmatch = \"b@example.test\"\n\n\
                [[pin]]\nmatch = \"c@example.test\"\nbackend = \"node1\"\n";
    let e = parse_pin_file(text).unwrap_err();
    assert_eq!(e.key, "pin[1].backend", "{e:?}");
    assert!(e.message.contains("missing field `backend`"), "{e:?}");
}

use crate::backend::record::tests::{backends, ids};

#[test]
fn a_pool_reports_its_members_factor_and_weighted_shares() {
    use super::pool::DomainPool;
    let b = backends(&[5, 1, 3]);
    let all = ids(&b);
    // Members 1 and 2 of three backends, weighted 1 and 3: the domain's own slice of the list.
    let pool = DomainPool::new(all[1..].to_vec(), &b, Some(1.25));
    assert_eq!(pool.members(), &all[1..]);
    assert_eq!(pool.balance_factor(), Some(1.25));
    let shares = pool.ring_shares();
    assert_eq!(
        shares.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        &all[1..]
    );
    let total: f64 = shares.iter().map(|(_, s)| s).sum();
    assert!((total - 1.0).abs() < 1e-9, "{shares:?}");
    assert!(
        (0.15..0.35).contains(&shares[0].1),
        "weight 1 of 4: {shares:?}"
    );
    assert!(
        (0.65..0.85).contains(&shares[1].1),
        "weight 3 of 4: {shares:?}"
    );
}

#[test]
fn bounded_load_follows_each_members_weight() {
    use super::policy::Placement;
    use super::pool::DomainPool;
    let b = backends(&[5, 1, 3]);
    // Members 1 (weight 1) and 2 (weight 3); member 0 of the list is not in the domain.
    let pool = DomainPool::new(ids(&b)[1..].to_vec(), &b, Some(1.25));
    let hot = Placement::Ring("hot@example.test".into());
    let guards: Vec<_> = (0..400)
        .map(|_| pool.pick(&hot, &b, &[]).unwrap().1)
        .collect();
    let loads: Vec<usize> = b.iter().map(|(_, n)| n.state.active()).collect();
    assert_eq!(loads[0], 0, "{loads:?}");
    // The key's home (the weight-3 member) fills up to its own bound, ceil(1.25 × (total + 1)
    // × 3 / 4), about 375 of 400; the rest spill to the weight-1 member.
    assert!((360..=376).contains(&loads[2]), "weight 3: {loads:?}");
    assert_eq!(loads[1] + loads[2], 400, "{loads:?}");
    drop(guards);
}
