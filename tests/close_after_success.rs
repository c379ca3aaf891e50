//! A client that closes its stream where a restart is due is ending the session, not sending
//! bad XML: tsung's warm-up sessions log in and send `</stream:stream>` right after SASL
//! `<success/>`, before any new stream header. Through the proxy to a real Prosody node, with a
//! raw client over real TLS, such a client gets the stream's close back and a closed
//! connection, never a stream error. The same holds for a close sent over TLS right after
//! STARTTLS.

use std::time::{Duration, Instant};

use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::raw::{Raw, header, plain_auth};

const USERS: &[(&str, &str)] = &[("alice", "pw-alice")];

/// The client's whole view after its close: exactly the proxy's `</stream:stream>`, then the
/// connection's end.
fn assert_clean_close(received: &str) {
    assert!(
        !received.contains("stream:error") && !received.contains("<stream:stream"),
        "a stream error or a new stream instead of a close: {received:?}"
    );
    assert_eq!(received.trim(), "</stream:stream>");
}

/// The proxy counted the connection as closed by the client and sent no stream error.
fn assert_counted_as_client_close(env: &Env, closes: f64) {
    let series =
        "xmpp_lb_connections_closed_total{reason=\"closed_in_negotiation\",side=\"client\"}";
    // The count follows the socket's close by a moment: the connection's task ends after it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.proxy.metric(series).unwrap_or(0.0) < closes && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(env.proxy.metric(series), Some(closes));
    let scrape = env.proxy.scrape();
    assert_eq!(
        testkit::proxy::sum_where(&scrape, "xmpp_lb_stream_errors_sent_total", &[]),
        0.0,
        "no stream error may be sent:\n{scrape}"
    );
}

#[test]
fn a_client_closing_its_stream_right_after_sasl_success_gets_a_clean_close() {
    let env = EnvBuilder::new(1).users(USERS).start();
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    // Without `from` the proxy routes by the login; with it, at the header: both paths.
    for from in [None, Some("alice@example.test")] {
        let received = env.proxy.block_on(async {
            let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
            raw.send(&header(DOMAIN, from)).await;
            raw.expect("</stream:features>").await;
            raw.clear();
            raw.send(&plain_auth("alice", "pw-alice")).await;
            raw.expect("<success").await;
            raw.expect("/>").await;
            raw.clear();
            raw.send("</stream:stream>").await;
            raw.read_to_close(Duration::from_secs(10)).await
        });
        assert_clean_close(&received);
    }
    assert_counted_as_client_close(&env, 2.0);
}

#[test]
fn a_client_closing_its_stream_over_tls_right_after_starttls_gets_a_clean_close() {
    let env = EnvBuilder::new(1).users(USERS).start();
    let addr = env.proxy.addr("starttls", false);
    let ca = env.pki.ca_path();
    let received = env.proxy.block_on(async {
        let mut raw = Raw::starttls(addr, DOMAIN, &ca).await;
        raw.send("</stream:stream>").await;
        raw.read_to_close(Duration::from_secs(10)).await
    });
    assert_clean_close(&received);
    assert_counted_as_client_close(&env, 1.0);
}
