//! Tests of `route` that mutation testing showed missing: each pins a behaviour no other unit
//! test noticed changing (see docs/testing.md).

use super::KeySource;
use super::key::normalize_domain;
use super::policy::{PinEntry, PinTable, parse_pin_file};

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
    let e = pins("tenant:\u{ad}").err().expect("refused");
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
