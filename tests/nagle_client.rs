//! Logins as clients that keep Nagle's algorithm on, as Erlang's and Java's TLS clients do
//! (tsung, ejabberd's own client side, Smack and many Android and IoT clients): nothing the
//! proxy does may leave such a client waiting for a delayed ACK. The client here is Erlang/OTP's
//! `ssl` (from Debian's Erlang, which ejabberd brings): TLS 1.3 without session tickets (its
//! default, so the proxy sends it none), Nagle on, the stream header written as soon as the
//! handshake completes, as tsung does.

use std::process::Command;
use std::time::Duration;

use testkit::env::{DOMAIN, EnvBuilder};

/// Microseconds from each header sent to the features received, as the Erlang client measured.
fn erlang_header_to_features(mode: &str, addr: std::net::SocketAddr, n: usize) -> Vec<Duration> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/nagle_login.escript"
    );
    let out = Command::new("escript")
        .args([
            script,
            mode,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            DOMAIN,
            &n.to_string(),
        ])
        .output()
        .expect("escript runs (Debian's erlang-base, installed with ejabberd)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|t| Duration::from_micros(t.trim().parse().expect("a number of microseconds")))
        .collect()
}

#[test]
fn an_erlang_client_with_nagle_on_gets_its_features_without_a_delayed_ack_stall() {
    let env = EnvBuilder::new(1).start();
    let proxy = &env.proxy;
    for (mode, listener) in [("direct", "direct"), ("starttls", "starttls")] {
        let mut times = erlang_header_to_features(mode, proxy.addr(listener, false), 9);
        times.sort();
        eprintln!("{mode}: header to features: {times:?}");
        // A delayed ACK costs 40 ms on Linux; loopback without one takes well under 1 ms.
        assert!(
            times[4] < Duration::from_millis(20),
            "{mode}: median {:?}",
            times[4]
        );
    }
}
