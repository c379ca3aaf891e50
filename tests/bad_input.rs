//! Bad input gets the right XMPP stream error and a closed socket — never a panic or a hang —
//! with a real Prosody node behind the proxy and raw clients over real TLS.

use std::time::Duration;

use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::raw::{Raw, header, plain_auth};

/// `limits.prerouting_timeout` of the test configuration.
const PREROUTING_TIMEOUT: Duration = Duration::from_millis(1500);

fn env() -> Env {
    EnvBuilder::new(1)
        .users(&[("alice", "pw-alice")])
        .config(|c| {
            c.set(
                "limits.prerouting_timeout",
                format!("{}ms", PREROUTING_TIMEOUT.as_millis()),
            )
            .set("limits.max_header_bytes", 1024)
            .set("limits.max_prerouting_element_bytes", 2048)
        })
        .start()
}

/// The stream error element of `condition`, as the proxy renders it.
fn cond(condition: &str) -> String {
    format!("<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
}

/// Send `input` on a fresh clear-text connection to the STARTTLS port; expect a header (the
/// proxy's, since the client has none yet), the stream error `condition`, and a closed socket.
fn clear_text_refused(env: &Env, input: &[u8], condition: &str) {
    let addr = env.proxy.addr("starttls", false);
    let got = env.proxy.block_on(async {
        let mut raw = Raw::tcp(addr).await;
        raw.send_bytes(input).await;
        raw.read_to_close(Duration::from_secs(5)).await
    });
    assert!(
        got.contains("<stream:stream"),
        "{condition}: no header before the error: {got:?}"
    );
    assert!(
        got.contains(&cond(condition)),
        "expected {condition} for {:?}, got {got:?}",
        String::from_utf8_lossy(input)
    );
    assert!(
        got.ends_with("</stream:stream>"),
        "stream not closed: {got:?}"
    );
}

/// After TLS (direct), send `input`; expect `condition` and a close.
fn tls_refused(env: &Env, input: &str, condition: &str) -> String {
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    env.proxy.block_on(async {
        let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
        raw.send(input).await;
        let got = raw.read_to_close(Duration::from_secs(5)).await;
        assert!(
            got.contains(&cond(condition)),
            "expected {condition} for {input:?}, got {got:?}"
        );
        assert!(
            got.ends_with("</stream:stream>"),
            "stream not closed: {got:?}"
        );
        got
    })
}

#[test]
fn malformed_and_restricted_xml_get_the_right_stream_error() {
    let env = env();
    let h = header(DOMAIN, None);
    // Before TLS, on the STARTTLS port.
    clear_text_refused(
        &env,
        b"<!-- hi --><stream:stream to='example.test'>",
        "restricted-xml",
    );
    clear_text_refused(
        &env,
        b"<!DOCTYPE foo [<!ENTITY x 'y'>]><stream:stream>",
        "restricted-xml",
    );
    clear_text_refused(
        &env,
        b"<?xml version='1.0'?><?evil pi?><stream:stream>",
        "restricted-xml",
    );
    clear_text_refused(&env, b"<message>hi</message>", "not-well-formed");
    clear_text_refused(
        &env,
        b"<stream:stream to='example.test' <<>",
        "not-well-formed",
    );
    clear_text_refused(
        &env,
        format!("{h}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>&foo;</starttls>").as_bytes(),
        "restricted-xml",
    );
    clear_text_refused(&env, format!("{h}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>").as_bytes(), "policy-violation");
    clear_text_refused(
        &env,
        b"<stream:stream to='example.test' version='1.0' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>",
        "invalid-namespace",
    );
    clear_text_refused(
        &env,
        b"<stream:stream to='example.test' version='1.0' xmlns='jabber:client' xmlns:stream='urn:wrong'>",
        "invalid-namespace",
    );
    clear_text_refused(
        &env,
        header("nowhere.test", None).as_bytes(),
        "host-unknown",
    );
    clear_text_refused(
        &env,
        b"<stream:stream version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        "host-unknown",
    );
    clear_text_refused(
        &env,
        b"<stream:stream to='example.test' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        "unsupported-version",
    );
    let huge = format!("<stream:stream to='example.test' x='{}'", "a".repeat(2000));
    clear_text_refused(&env, huge.as_bytes(), "policy-violation");

    // After TLS: the same checks apply to the restarted stream and to the SASL element.
    tls_refused(&env, &header("nowhere.test", None), "host-unknown");
    tls_refused(
        &env,
        &format!(
            "{h}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>&bad;</auth>"
        ),
        "restricted-xml",
    );
    tls_refused(
        &env,
        &format!("{h}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'><x></auth>"),
        "not-well-formed",
    );
    tls_refused(&env, &format!("{h}<!-- c -->"), "restricted-xml");
    tls_refused(
        &env,
        &format!(
            "{h}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            "A".repeat(4000)
        ),
        "policy-violation",
    );
    let got = tls_refused(&env, "<foo/>", "not-well-formed");
    assert!(
        got.starts_with("<?xml version='1.0'?><stream:stream"),
        "header first: {got:?}"
    );

    // The proxy counted what it sent, by condition.
    let scraped = env.proxy.scrape();
    assert!(
        testkit::proxy::sample(
            &scraped,
            "xmpp_lb_stream_errors_sent_total{condition=\"restricted-xml\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{scraped}"
    );
}

#[test]
fn silent_clients_time_out_with_connection_timeout() {
    let env = env();
    let h = header(DOMAIN, None);
    // Silent from the first byte.
    clear_text_refused(&env, b"", "connection-timeout");
    // A header that never ends.
    clear_text_refused(&env, b"<stream:stream to='exa", "connection-timeout");
    // Silent after the post-TLS header, before any SASL element.
    tls_refused(&env, &h, "connection-timeout");
    // Whitespace keepalives do not extend the pre-routing deadline: a client that sends a
    // space every 250 ms is closed when the deadline set by its header passes, not later.
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    env.proxy.block_on(async {
        let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
        let sent = tokio::time::Instant::now();
        raw.send(&h).await;
        let bound = PREROUTING_TIMEOUT + Duration::from_millis(750);
        while !raw.closed {
            assert!(
                sent.elapsed() < bound,
                "still open {:?} after the header, with keepalives: {:?}",
                sent.elapsed(),
                raw.received
            );
            raw.read_some(tokio::time::Instant::now() + Duration::from_millis(250))
                .await;
            if !raw.closed {
                raw.try_send(" ").await;
            }
        }
        assert!(
            sent.elapsed() >= PREROUTING_TIMEOUT - Duration::from_millis(100),
            "closed before the deadline: {:?}",
            sent.elapsed()
        );
        assert!(
            raw.received.contains(&cond("connection-timeout")),
            "{:?}",
            raw.received
        );
    });
}

#[test]
fn clear_text_after_starttls_never_reaches_the_stream() {
    let env = env();
    let addr = env.proxy.addr("starttls", false);
    let h = header(DOMAIN, None);
    env.proxy.block_on(async {
        // Injected clear text right behind <starttls/> is fed to the TLS handshake, which fails;
        // it is never parsed as XMPP.
        let mut raw = Raw::tcp(addr).await;
        raw.send(&format!(
            "{h}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>{}",
            plain_auth("alice", "pw-alice")
        ))
        .await;
        let got = raw.read_to_close(Duration::from_secs(5)).await;
        assert!(got.contains("<proceed"), "{got:?}");
        assert!(
            !got.contains("success"),
            "injected auth must not be processed: {got:?}"
        );
    });
}

#[test]
fn client_stream_close_before_routing_is_answered() {
    let env = env();
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    let h = header(DOMAIN, None);
    env.proxy.block_on(async {
        let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
        raw.send(&h).await;
        raw.expect("</stream:features>").await;
        raw.send("</stream:stream>").await;
        let got = raw.read_to_close(Duration::from_secs(5)).await;
        assert!(got.ends_with("</stream:stream>"), "{got:?}");
        assert!(!got.contains("stream:error"), "{got:?}");
    });
}
