//! `[[listener]]`: the client-facing sockets, how TLS starts on each, their certificates, and
//! the front balancers whose PROXY protocol header they believe.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::raw::RawListener;
use super::source::{ConfigError, Source, parse_addr, parse_net};
use super::values::TlsMode;
use super::websocket::WebSocketListener;

/// One client-facing listener.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// A short name used in logs and metric labels.
    pub name: String,
    /// Every address to bind (IPv4 and IPv6 alike).
    pub bind: Vec<SocketAddr>,
    /// How TLS starts on this listener.
    pub tls: TlsMode,
    /// The default certificate chain and key; extra pairs are chosen by SNI.
    pub certs: Vec<CertPair>,
    /// Networks of the front balancers whose PROXY protocol header is required and believed;
    /// empty: no header is accepted (and one sent is refused).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// XMPP over WebSocket (RFC 7395) on this listener, if configured.
    pub websocket: Option<WebSocketListener>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// PEM file holding the leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file holding the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Check the listeners: at least one, unique names, addresses bound once, certificate files
/// present, and trusted networks exactly when the PROXY protocol is accepted.
pub(super) fn validate_listeners(
    src: &Source<'_>,
    raw: &[RawListener],
) -> Result<Vec<ListenerConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(src.err(
            &(0..0),
            "listener",
            "at least one [[listener]] is required".into(),
        ));
    }
    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    let mut listeners = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let key = |k: &str| format!("listener[{i}].{k}");
        if l.name.get_ref().is_empty() || !names.insert(l.name.get_ref().clone()) {
            return Err(src.err(
                &l.name.span(),
                &key("name"),
                format!(
                    "listener name {:?} is empty or used twice",
                    l.name.get_ref()
                ),
            ));
        }
        if l.bind.get_ref().is_empty() {
            return Err(src.err(&l.bind.span(), &key("bind"), "no address to bind".into()));
        }
        let mut addrs = Vec::new();
        for b in l.bind.get_ref() {
            let addr = parse_addr(b.get_ref()).map_err(|m| src.err(&b.span(), &key("bind"), m))?;
            // Port 0 asks the OS for a free port: never a clash, used by tests.
            if addr.port() != 0 && !binds.insert(addr) {
                return Err(src.err(&b.span(), &key("bind"), format!("{addr} is bound twice")));
            }
            addrs.push(addr);
        }
        let mut certs = vec![CertPair {
            cert: src.resolve(&l.cert, &key("cert"))?,
            key: src.resolve(&l.key, &key("key"))?,
        }];
        for (j, pair) in l.extra_cert.iter().enumerate() {
            certs.push(CertPair {
                cert: src.resolve(&pair.cert, &key(&format!("extra_cert[{j}].cert")))?,
                key: src.resolve(&pair.key, &key(&format!("extra_cert[{j}].key")))?,
            });
        }
        let trusted_proxies = match (*l.accept_proxy_protocol.get_ref(), &l.trusted_proxies) {
            (false, None) => Vec::new(),
            (false, Some(list)) => {
                return Err(src.err(
                    &list.span(),
                    &key("trusted_proxies"),
                    "set accept_proxy_protocol = true, or remove this list".into(),
                ));
            }
            (true, None) => {
                return Err(src.err(
                    &l.accept_proxy_protocol.span(),
                    &key("trusted_proxies"),
                    "list the networks of the front balancers (e.g. [\"10.0.0.0/24\"])".into(),
                ));
            }
            (true, Some(list)) => {
                let mut nets = Vec::new();
                for n in list.get_ref() {
                    nets.push(
                        parse_net(n.get_ref())
                            .map_err(|m| src.err(&n.span(), &key("trusted_proxies"), m))?,
                    );
                }
                if nets.is_empty() {
                    return Err(src.err(
                        &list.span(),
                        &key("trusted_proxies"),
                        "list at least one network".into(),
                    ));
                }
                nets
            }
        };
        let websocket = super::websocket::validate_listener(src, l, i)?;
        listeners.push(ListenerConfig {
            name: l.name.get_ref().clone(),
            bind: addrs,
            tls: l.tls,
            certs,
            trusted_proxies,
            websocket,
        });
    }
    Ok(listeners)
}
