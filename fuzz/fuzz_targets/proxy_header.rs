//! `proxy_protocol::parse` reads what a front balancer sends before anything else, on a
//! listener with `accept_proxy_protocol`, so it must never panic. Whatever it accepts as a
//! client address must also survive the way back: the header the proxy then writes to a
//! node (v1 and v2) reads back as the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::config::ProxyProtocol;
use xmpp_lb::proxy_protocol::{Origin, encode, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((source, destination))) = parse(data) else {
        return;
    };
    let canonical = |s: std::net::SocketAddr| (s.ip().to_canonical(), s.port());
    let origin = Origin {
        source,
        destination,
        alpn: Some(b"xmpp-client"),
        sni: Some("example.test".into()),
        tls_version: Some("TLSv1.3"),
        channel_binding: None,
    };
    for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
        let header = encode(version, &origin)
            .expect("an accepted address pair encodes")
            .expect("a header");
        let (s, d) = parse(&header)
            .expect("what the proxy writes, it reads")
            .expect("with addresses");
        assert_eq!(
            (canonical(s), canonical(d)),
            (canonical(source), canonical(destination)),
            "{version:?}"
        );
    }
});
