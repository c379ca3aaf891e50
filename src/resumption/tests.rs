//! Rewriting ids both ways, and what gets counted.

use std::path::Path;

use super::*;
use crate::keys::FleetKey;

const SECRET: &str = "resumption-test-secret-0123456789abcdef";

fn ctx(node: &str) -> Context {
    Context {
        keys: Arc::new(SmKeys::new(&[FleetKey::from_secret(
            SECRET.as_bytes(),
            Path::new("t.key"),
        )])),
        domain: "example.test".into(),
        node: node.into(),
        known_nodes: vec!["node1".to_string(), "node2".into(), "node3".into()].into(),
        metrics: Arc::new(Metrics::new()),
    }
}

fn ns() -> NsContext {
    NsContext {
        default_ns: "jabber:client".into(),
        prefixes: vec![("stream".into(), "http://etherx.jabber.org/streams".into())],
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

fn count(m: &Metrics, metric: &str, labels: &[(&str, &str)]) -> u64 {
    let rendered = m.render();
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    rendered
        .lines()
        .filter(|l| l.starts_with(metric) && want.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn legacy_enable_then_resume_through_another_proxy() {
    let a = ctx("node2");
    let (_, mut down) = watches(a.clone(), ns(), ns());
    let enabled = b"<enabled xmlns='urn:xmpp:sm:3' id='6a2f-11' resume='true' max='300'/>".to_vec();
    let out = text(&down.rewrite(enabled));
    let wrapped = out
        .split("id='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap()
        .to_string();
    assert!(
        wrapped.starts_with("xlb1.") && wrapped.ends_with(".6a2f-11"),
        "{out}"
    );
    assert!(out.ends_with("' resume='true' max='300'/>"));
    assert_eq!(
        count(
            &a.metrics,
            "xmpp_lb_sm_ids_wrapped_total",
            &[("backend", "node2")]
        ),
        1
    );

    // Another proxy (same key), same node: the node gets its own id, the client sees its own.
    let b = ctx("node2");
    let (mut up, mut down) = watches(b.clone(), ns(), ns());
    let resume = format!("<resume xmlns='urn:xmpp:sm:3' previd='{wrapped}' h='4'/>");
    assert_eq!(
        text(&up.rewrite(resume.into_bytes())),
        "<resume xmlns='urn:xmpp:sm:3' previd='6a2f-11' h='4'/>"
    );
    let resumed = b"<resumed xmlns='urn:xmpp:sm:3' h='7' previd='6a2f-11'/>".to_vec();
    assert_eq!(
        text(&down.rewrite(resumed)),
        format!("<resumed xmlns='urn:xmpp:sm:3' h='7' previd='{wrapped}'/>")
    );
    assert_eq!(
        count(
            &b.metrics,
            "xmpp_lb_resume_ids_total",
            &[("check", "valid")]
        ),
        1
    );
    assert_eq!(
        count(
            &b.metrics,
            "xmpp_lb_resumes_total",
            &[
                ("backend", "node2"),
                ("kind", "legacy"),
                ("result", "resumed")
            ]
        ),
        1
    );
}

#[test]
fn forged_and_foreign_ids_pass_untouched_and_are_counted() {
    let c = ctx("node1");
    let (mut up, mut down) = watches(c.clone(), ns(), ns());
    for (previd, check) in [
        (
            "xlb1.00000000.bm9kZTE.AAAAAAAAAAAAAAAAAAAAAA.x",
            "unknown_key",
        ),
        ("plain-node-id", "not_wrapped"),
    ] {
        let resume = format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>");
        assert_eq!(text(&up.rewrite(resume.clone().into_bytes())), resume);
        assert_eq!(
            count(&c.metrics, "xmpp_lb_resume_ids_total", &[("check", check)]),
            1
        );
    }
    // A real id with its node swapped for another: bad MAC.
    let good = c.keys.wrap("example.test", "node3", "id9").unwrap();
    let forged = good.replacen("bm9kZTM", "bm9kZTE", 1);
    let resume = format!("<resume xmlns='urn:xmpp:sm:3' previd='{forged}' h='0'/>");
    assert_eq!(text(&up.rewrite(resume.clone().into_bytes())), resume);
    assert_eq!(
        count(
            &c.metrics,
            "xmpp_lb_resume_ids_total",
            &[("check", "bad_mac")]
        ),
        1
    );
    // The node's refusal is counted as a failed legacy resume.
    let failed = b"<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>".to_vec();
    assert_eq!(down.rewrite(failed.clone()), failed);
    assert_eq!(
        count(&c.metrics, "xmpp_lb_resumes_total", &[("result", "failed")]),
        1
    );
    // A valid id for another node (the ring changed since): unwrapped, counted as other_node.
    let resume = format!("<resume xmlns='urn:xmpp:sm:3' previd='{good}' h='0'/>");
    assert_eq!(
        text(&up.rewrite(resume.into_bytes())),
        "<resume xmlns='urn:xmpp:sm:3' previd='id9' h='0'/>"
    );
    assert_eq!(
        count(
            &c.metrics,
            "xmpp_lb_resume_ids_total",
            &[("check", "other_node")]
        ),
        1
    );
}

#[test]
fn other_elements_and_namespaces_are_left_alone() {
    let c = ctx("node1");
    let (mut up, mut down) = watches(c.clone(), ns(), ns());
    for raw in [
        "<enabled xmlns='urn:xmpp:sm:3' id='x'/>",
        "<enabled xmlns='urn:example' id='x' resume='true'/>",
        "<failed xmlns='urn:xmpp:sm:3'/>",
        "<enabled xmlns='urn:xmpp:sm:3' id='x' resume='true'",
    ] {
        assert_eq!(text(&down.rewrite(raw.as_bytes().to_vec())), raw);
    }
    let resume = "<resume xmlns='urn:example' previd='a' h='1'/>";
    assert_eq!(text(&up.rewrite(resume.as_bytes().to_vec())), resume);
    assert!(!up.wants(b"message") && up.wants(b"resume") && up.wants(b"sm:resume"));
    assert!(down.wants(b"enabled") && down.wants(b"x:failed") && !down.wants(b"enable"));
    assert_eq!(count(&c.metrics, "xmpp_lb_resumes_total", &[]), 0);
    assert_eq!(count(&c.metrics, "xmpp_lb_sm_ids_wrapped_total", &[]), 0);
}

#[test]
fn no_keys_no_rewriting_but_outcomes_are_counted() {
    let mut c = ctx("node1");
    c.keys = Arc::new(SmKeys::default());
    let (mut up, mut down) = watches(c.clone(), ns(), ns());
    let enabled = "<enabled xmlns='urn:xmpp:sm:3' id='x' resume='true'/>";
    assert_eq!(text(&down.rewrite(enabled.as_bytes().to_vec())), enabled);
    let resume = "<resume xmlns='urn:xmpp:sm:3' previd='x' h='1'/>";
    assert_eq!(text(&up.rewrite(resume.as_bytes().to_vec())), resume);
    let resumed = "<resumed xmlns='urn:xmpp:sm:3' previd='x' h='1'/>";
    assert_eq!(text(&down.rewrite(resumed.as_bytes().to_vec())), resumed);
    assert_eq!(
        count(
            &c.metrics,
            "xmpp_lb_resumes_total",
            &[("result", "resumed")]
        ),
        1
    );
}

#[test]
fn sasl2_inline_resume_routes_and_success_is_rewritten() {
    let c = ctx("node3");
    let wrapped = c.keys.wrap("example.test", "node3", "sess-1").unwrap();
    let auth = format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>dXNlcgBhYmM=</initial-response><resume xmlns='urn:xmpp:sm:3' previd='{wrapped}' h='3'/></authenticate>"
    );
    let raw = Bytes::from(auth);
    let el = Element::parse(&raw, &ns()).unwrap();
    let inline = inline_resume(&c, &raw, &el).unwrap();
    assert_eq!(inline.node.as_deref(), Some("node3"));
    assert!(text(&inline.element).contains("previd='sess-1' h='3'/></authenticate>"));

    let success = Bytes::from_static(b"<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>u@example.test/r</authorization-identifier><resumed xmlns='urn:xmpp:sm:3' h='5' previd='sess-1'/></success>");
    let el = Element::parse(&success, &ns()).unwrap();
    let out = text(&rewrite_sasl2_success(&c, &success, &el, Some(&inline)));
    assert!(
        out.contains(&format!("previd='{wrapped}'/></success>")),
        "{out}"
    );
    assert_eq!(
        count(
            &c.metrics,
            "xmpp_lb_resumes_total",
            &[("kind", "inline"), ("result", "resumed")]
        ),
        1
    );

    // A fresh SASL2 login with Bind 2 and inline enable: the id inside <bound/> is wrapped.
    let success = Bytes::from_static(b"<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>u@example.test/r</authorization-identifier><bound xmlns='urn:xmpp:bind:0'><enabled xmlns='urn:xmpp:sm:3' resume='1' id='sess-2'/></bound><token xmlns='urn:xmpp:fast:0' token='t' expiry='2026-12-01T00:00:00Z'/></success>");
    let el = Element::parse(&success, &ns()).unwrap();
    let out = text(&rewrite_sasl2_success(&c, &success, &el, None));
    let expected = c.keys.wrap("example.test", "node3", "sess-2").unwrap();
    assert!(
        out.contains(&format!("resume='1' id='{expected}'/></bound><token")),
        "{out}"
    );

    // Forged: no routing, nothing replaced.
    let forged = Bytes::from(raw_with_previd(
        "xlb1.00000000.bm9kZTM.AAAAAAAAAAAAAAAAAAAAAA.s",
    ));
    let el = Element::parse(&forged, &ns()).unwrap();
    let inline = inline_resume(&c, &forged, &el).unwrap();
    assert_eq!((inline.node, inline.element), (None, forged));
    // No resume inside: nothing to do.
    let plain = Bytes::from_static(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'/>");
    let el = Element::parse(&plain, &ns()).unwrap();
    assert!(inline_resume(&c, &plain, &el).is_none());
}

fn raw_with_previd(previd: &str) -> String {
    format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/></authenticate>"
    )
}

#[test]
fn a_stream_that_declares_its_own_prefixes_is_still_understood() {
    let c = ctx("node1");
    let mut declared = ns();
    declared.prefixes.push(("sm".into(), NS_SM.into()));
    let (_, mut down) = watches(c.clone(), ns(), declared);
    let out = text(&down.rewrite(b"<sm:enabled id='x' resume='true'/>".to_vec()));
    assert!(out.starts_with("<sm:enabled id='xlb1."), "{out}");
    assert!(
        unusual(ns()).is_none(),
        "the usual namespaces are not stored"
    );
}

#[test]
fn debug_output_never_shows_resumption_ids_or_credentials() {
    let inline = Inline {
        node: Some("node1".into()),
        client_previd: Some("xlb1.client-previd-value".into()),
        element: Bytes::from_static(
            b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGp1bGlldABzZWNyZXQ=</initial-response><resume xmlns='urn:xmpp:sm:3' previd='node-own-id' h='1'/></authenticate>",
        ),
    };
    let pending = Pending {
        client_previd: Some("xlb1.client-previd-value".into()),
    };
    for shown in [
        format!("{inline:?}"),
        format!("{inline:#?}"),
        format!("{pending:?}"),
    ] {
        for secret in ["client-previd-value", "AGp1bGlldABzZWNyZXQ=", "node-own-id"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    // What is not secret still shows: where it goes.
    assert!(format!("{inline:?}").contains("node1"));
}
