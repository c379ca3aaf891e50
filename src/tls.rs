//! TLS on the client side: certificates loaded from PEM, picked by SNI, ALPN `xmpp-client`.
//!
//! The proxy terminates TLS so that it can read the stream and learn who connects. Certificates
//! are chosen by the SNI name the client sends (XEP-0368 clients send the JID's domain; STARTTLS
//! clients usually do too); a client that sends no SNI, or a name we hold no certificate for,
//! gets the listener's default certificate, which is what a plain TLS server would do.
//!
//! Reconnects resume the TLS session where they can (no certificate, no signature): with
//! `[resumption] tls_ticket_key_files`, through session tickets every proxy of the fleet can
//! open ([`tickets`]); without, through this process's own session cache.

pub mod tickets;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertPair, ResumptionConfig};

/// ALPN protocol id of XMPP client-to-server over direct TLS (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// One certificate the listener may present.
#[derive(Debug)]
struct Served {
    /// The chain and its signing key.
    key: Arc<CertifiedKey>,
    /// Its `tls-server-end-point` channel binding, computed once at load (None: undefined
    /// for its signature algorithm).
    end_point: Option<Box<[u8]>>,
}

/// Picks a certificate by SNI: exact name, then wildcard, then the default.
#[derive(Debug)]
pub struct SniResolver {
    /// The first pair of the listener: used when nothing else matches.
    default: Arc<Served>,
    /// Exact DNS names (lower-case) from every certificate's subjectAltName.
    by_name: HashMap<String, Arc<Served>>,
    /// Wildcard certificates by the suffix after `*.` (lower-case).
    by_wildcard: HashMap<String, Arc<Served>>,
}

impl SniResolver {
    /// Load every pair; names come from the certificates themselves, so adding a domain is
    /// a matter of adding its certificate, with nothing to repeat in the config.
    pub fn load(pairs: &[CertPair], provider: &CryptoProvider) -> Result<SniResolver, TlsError> {
        let mut default = None;
        let mut by_name = HashMap::new();
        let mut by_wildcard = HashMap::new();
        for pair in pairs {
            let (key, names) = load_pair(pair, provider)?;
            let end_point = crate::channel_binding::end_point_hash(key.end_entity_cert()?.as_ref())
                .map(Box::from);
            let key = Arc::new(Served { key, end_point });
            for name in names {
                let name = name.to_ascii_lowercase();
                if let Some(suffix) = name.strip_prefix("*.") {
                    by_wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| key.clone());
                } else {
                    by_name.entry(name).or_insert_with(|| key.clone());
                }
            }
            default.get_or_insert(key);
        }
        let default = default.ok_or_else(|| TlsError::Pem {
            path: PathBuf::from("-"),
            message: "no certificate configured".into(),
        })?;
        Ok(SniResolver {
            default,
            by_name,
            by_wildcard,
        })
    }
}

impl SniResolver {
    /// The certificate presented for the SNI name `sni`.
    fn pick(&self, sni: Option<&str>) -> &Served {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.by_name.get(&name) {
            return k;
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.by_wildcard.get(parent)
        {
            return k;
        }
        &self.default
    }

    /// The `tls-server-end-point` channel binding of the certificate presented for `sni`
    /// (the same choice as the handshake's, from the same resolver).
    pub fn end_point(&self, sni: Option<&str>) -> Option<&[u8]> {
        self.pick(sni).end_point.as_deref()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).key.clone())
    }
}

fn load_pair(
    pair: &CertPair,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let pem_err = |path: &Path, message: String| TlsError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| pem_err(&pair.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&pair.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(&pair.cert, "no CERTIFICATE block".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| pem_err(&pair.key, e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| pem_err(&pair.key, e.to_string()))?;
    let names = dns_names(&chain[0]).map_err(|m| pem_err(&pair.cert, m))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        pem_err(
            &pair.key,
            format!("does not match {}: {e}", pair.cert.display()),
        )
    })?;
    Ok((Arc::new(certified), names))
}

/// DNS names of a certificate: subjectAltName entries, or the subject CN if it has none.
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) = parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_string());
            }
        }
    }
    Ok(names)
}

/// The crypto provider used everywhere (ring: no C toolchain beyond cc needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 tickets sent after each handshake: each is good for one resumption, and a resumed
/// handshake brings new ones, so two let a client race two connections (IPv4 and IPv6) and
/// still resume both.
pub const TLS13_TICKETS: usize = 2;

/// The TLS server configuration of one listener: TLS 1.2 and 1.3, ALPN `xmpp-client` offered,
/// session resumption by fleet tickets (with `tls_ticket_keys`) or by this process's own cache,
/// never 0-RTT early data.
#[cfg(test)]
pub fn server_config(
    pairs: &[CertPair],
    resumption: &ResumptionConfig,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let resolver = Arc::new(SniResolver::load(pairs, &provider)?);
    config_with(provider, resolver, resumption)
}

/// [`server_config`] around a resolver already loaded.
fn config_with(
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    resumption: &ResumptionConfig,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    if !resumption.tls_ticket_keys.is_empty() {
        // Stateless tickets, TLS 1.3 and 1.2 alike: any proxy holding the same key files
        // opens them, and so does this one after a reload (the keys come from the files and
        // the clock, not from this configuration object).
        config.ticketer = Arc::new(tickets::FleetTicketer::new(
            &resumption.tls_ticket_keys,
            resumption.tls_ticket_rotation,
        ));
    }
    // Otherwise rustls' default stays: a session cache in memory, per listener and per
    // configuration, that TLS 1.3 stateful tickets and TLS 1.2 session ids point into.
    config.send_tls13_tickets = TLS13_TICKETS;
    // Early data would let a network attacker replay a client's first flight; keep it off.
    // (rustls never offers it with stateless tickets either.)
    config.max_early_data_size = 0;
    Ok(config)
}

/// A TLS acceptor for certificates alone (tests of resumption and certificate loading).
#[cfg(test)]
pub(crate) fn acceptor(
    pairs: &[CertPair],
    resumption: &ResumptionConfig,
) -> Result<TlsAcceptor, TlsError> {
    let config = server_config(pairs, resumption)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The ALPN protocol of HTTP/1.1, offered on listeners that serve WebSocket.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS acceptor for one listener (see [`server_config`]), offering ALPN `http/1.1` after
/// `xmpp-client` where the listener serves WebSocket, so that browsers (which offer `h2` and
/// `http/1.1`) complete the handshake on the same port as XMPP clients.
///
/// The resolver comes back too: it knows which certificate each handshake presented, which
/// the `tls-server-end-point` channel binding needs.
pub fn listener_acceptor(
    listener: &crate::config::ListenerConfig,
    resumption: &ResumptionConfig,
) -> Result<(TlsAcceptor, Arc<SniResolver>), TlsError> {
    let provider = provider();
    let resolver = Arc::new(SniResolver::load(&listener.certs, &provider)?);
    let mut config = config_with(provider, resolver.clone(), resumption)?;
    if listener.websocket.is_some() {
        config.alpn_protocols.push(ALPN_HTTP1.to_vec());
    }
    Ok((TlsAcceptor::from(Arc::new(config)), resolver))
}

/// A TLS connector toward the nodes: trusting the CA certificates in `ca` (a PEM file), or
/// the Mozilla roots compiled in when `None`; offering `alpn`; verifying the node's
/// certificate unless `verify` is false.
pub fn connector(
    ca: Option<&Path>,
    verify: bool,
    alpn: Option<&[u8]>,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if verify {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let pem_err = |message: String| TlsError::Pem {
                    path: path.to_path_buf(),
                    message,
                };
                for cert in
                    CertificateDer::pem_file_iter(path).map_err(|e| pem_err(e.to_string()))?
                {
                    roots
                        .add(cert.map_err(|e| pem_err(e.to_string()))?)
                        .map_err(|e| pem_err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(pem_err("no CERTIFICATE block".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    };
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `tls_verify = false`: any certificate is accepted (the handshake signatures are still
/// checked, so the session key is the certificate holder's, whoever that is).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::HandshakeKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::keys::FleetKey;

    const SNI: &str = "example.test";

    fn pairs() -> Vec<CertPair> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/certs");
        vec![CertPair {
            cert: dir.join("example.test.pem"),
            key: dir.join("example.test.key"),
        }]
    }

    fn key(name: &str) -> FleetKey {
        let secret = format!("a ticket secret for the unit tests: {name:>8}");
        FleetKey::from_secret(secret.as_bytes(), Path::new(name))
    }

    fn resumption(keys: &[FleetKey]) -> ResumptionConfig {
        ResumptionConfig {
            sm_keys: Vec::new(),
            tls_ticket_keys: keys.to_vec(),
            tls_ticket_rotation: Duration::from_secs(3600),
        }
    }

    /// A client config trusting any certificate, limited to `versions`, with rustls' default
    /// session store (shared by every connection made with it).
    fn client(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        let provider = provider();
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
        config.enable_early_data = true;
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// One connection over an in-memory pipe; the server writes a line the client reads (so
    /// the client takes in the tickets sent after the handshake). Returns what each side saw.
    async fn connect(
        client: &tokio_rustls::TlsConnector,
        server: &TlsAcceptor,
    ) -> (HandshakeKind, HandshakeKind, bool) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from(SNI).unwrap();
        let serve = async {
            let mut tls = server.accept(s).await.expect("server handshake");
            let kind = tls.get_ref().1.handshake_kind().unwrap();
            tls.write_all(b"hello\n").await.unwrap();
            tls.flush().await.unwrap();
            let mut rest = Vec::new();
            let _ = tls.read_to_end(&mut rest).await;
            kind
        };
        let talk = async {
            let mut tls = client.connect(name, c).await.expect("client handshake");
            let mut line = [0u8; 6];
            tls.read_exact(&mut line).await.unwrap();
            let kind = tls.get_ref().1.handshake_kind().unwrap();
            let early = tls.get_ref().1.is_early_data_accepted();
            tls.shutdown().await.unwrap();
            (kind, early)
        };
        let (server_kind, (client_kind, early)) = tokio::join!(serve, talk);
        (client_kind, server_kind, early)
    }

    #[test]
    fn ticket_keys_turn_stateless_tickets_on_and_early_data_stays_off() {
        for keys in [vec![], vec![key("a")], vec![key("b"), key("a")]] {
            let config = server_config(&pairs(), &resumption(&keys)).unwrap();
            assert_eq!(config.max_early_data_size, 0, "{keys:?}");
            assert_eq!(config.ticketer.enabled(), !keys.is_empty(), "{keys:?}");
            assert_eq!(config.send_tls13_tickets, TLS13_TICKETS);
            assert!(config.session_storage.can_cache(), "{keys:?}");
        }
    }

    #[tokio::test]
    async fn a_session_begun_on_one_proxy_resumes_on_another_with_the_same_keys() {
        let fleet = resumption(&[key("a")]);
        let one = acceptor(&pairs(), &fleet).unwrap();
        let two = acceptor(&pairs(), &fleet).unwrap();
        let client = client(&[&rustls::version::TLS13]);
        assert_eq!(
            connect(&client, &one).await,
            (HandshakeKind::Full, HandshakeKind::Full, false)
        );
        assert_eq!(
            connect(&client, &two).await,
            (HandshakeKind::Resumed, HandshakeKind::Resumed, false),
            "no early data either, though the client would send it"
        );
        // Each resumption brings new tickets: the client goes on resuming.
        for server in [&one, &two, &one] {
            let (c, s, _) = connect(&client, server).await;
            assert_eq!((c, s), (HandshakeKind::Resumed, HandshakeKind::Resumed));
        }
        // A proxy after a secret rotation (new key first) still opens the old tickets.
        let rotated = acceptor(&pairs(), &resumption(&[key("b"), key("a")])).unwrap();
        assert_eq!(connect(&client, &rotated).await.1, HandshakeKind::Resumed);
        // A proxy with other keys cannot: a full handshake, which works as always.
        let stranger = acceptor(&pairs(), &resumption(&[key("c")])).unwrap();
        assert_eq!(connect(&client, &stranger).await.1, HandshakeKind::Full);
    }

    #[tokio::test]
    async fn tls12_clients_resume_across_proxies_with_the_same_tickets() {
        let fleet = resumption(&[key("a")]);
        let one = acceptor(&pairs(), &fleet).unwrap();
        let two = acceptor(&pairs(), &fleet).unwrap();
        let client = client(&[&rustls::version::TLS12]);
        assert_eq!(connect(&client, &one).await.1, HandshakeKind::Full);
        assert_eq!(connect(&client, &two).await.1, HandshakeKind::Resumed);
    }

    #[tokio::test]
    async fn without_ticket_keys_sessions_resume_on_the_same_proxy_only() {
        let none = resumption(&[]);
        let one = acceptor(&pairs(), &none).unwrap();
        let two = acceptor(&pairs(), &none).unwrap();
        let client = client(&[&rustls::version::TLS13]);
        assert_eq!(connect(&client, &one).await.1, HandshakeKind::Full);
        assert_eq!(connect(&client, &one).await.1, HandshakeKind::Resumed);
        assert_eq!(connect(&client, &two).await.1, HandshakeKind::Full);
    }
}
