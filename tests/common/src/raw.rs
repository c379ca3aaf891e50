//! A raw XMPP client over real TLS, for tests that must control every byte a client sends:
//! malformed input, SASL retries as another user, dropping a connection without a stream close.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};

/// Any transport the raw client can speak over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client connection: what it received so far is kept as text for assertions.
pub struct Raw {
    io: Box<dyn Io>,
    /// Every byte received since the last `clear()`.
    pub received: String,
    /// Whether the peer closed.
    pub closed: bool,
    /// The client's own address (its source address and port).
    pub local: Option<SocketAddr>,
    /// What the client saw of its TLS handshake (full or resumed), once TLS is up.
    pub tls_kind: Option<rustls::HandshakeKind>,
    /// The channel-binding data of the client's own TLS session, once TLS is up.
    pub bindings: crate::scram::ClientBindings,
    /// Bytes sent and received over the XMPP stream (inside TLS) since the connection opened.
    pub bytes: Bytes,
    /// [`bytes`](Self::bytes) when the restarted stream's features arrived after SASL: the
    /// proxy relays the connection from there on, and counts what it relays from there on.
    relay_mark: Option<Bytes>,
}

/// Byte counts of one connection, as the client counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bytes {
    /// Client to server.
    pub sent: u64,
    /// Server to client.
    pub received: u64,
}

/// A TLS connector trusting only the test CA, offering ALPN `xmpp-client`.
pub fn connector(ca: &Path) -> TlsConnector {
    connector_with_versions(ca, rustls::DEFAULT_VERSIONS)
}

/// Like [`connector`], TLS 1.3 only. Connections made through one connector share its session
/// store (rustls' default, in memory, by server name): reuse it and reconnects resume.
pub fn connector_tls13(ca: &Path) -> TlsConnector {
    connector_with_versions(ca, &[&rustls::version::TLS13])
}

/// Like [`connector`], TLS 1.2 only (no `tls-exporter` channel binding).
pub fn connector_tls12(ca: &Path) -> TlsConnector {
    connector_with_versions(ca, &[&rustls::version::TLS12])
}

/// A TLS connector trusting only the test CA, offering the ALPN protocols `alpn` (none if
/// empty), as a browser (`h2`, `http/1.1`) or a client without ALPN would.
pub fn connector_alpn(ca: &Path, alpn: &[&[u8]]) -> TlsConnector {
    let mut config = (*connector_config(ca, rustls::DEFAULT_VERSIONS)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

fn connector_with_versions(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    TlsConnector::from(connector_config(ca, versions))
}

fn connector_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("CA cert accepted");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Arc::new(config)
}

/// A client stream header (no XML declaration), with an optional `from`.
pub fn header(to: &str, from: Option<&str>) -> String {
    let from = from.map(|f| format!(" from='{f}'")).unwrap_or_default();
    format!(
        "<stream:stream to='{to}'{from} version='1.0' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

/// A SASL PLAIN `<auth/>` for `user` (a localpart) with `password`.
pub fn plain_auth(user: &str, password: &str) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>")
}

impl Raw {
    /// Plain TCP, nothing sent yet.
    pub async fn tcp(addr: SocketAddr) -> Raw {
        Raw::over(TcpStream::connect(addr).await.expect("connect proxy"))
    }

    /// A client over a connected socket, nothing sent yet.
    fn over(tcp: TcpStream) -> Raw {
        tcp.set_nodelay(true).unwrap();
        Raw {
            local: tcp.local_addr().ok(),
            io: Box::new(tcp),
            received: String::new(),
            closed: false,
            tls_kind: None,
            bindings: Default::default(),
            bytes: Bytes::default(),
            relay_mark: None,
        }
    }

    /// Plain TCP from a chosen source address (any of 127.0.0.0/8 works on loopback), nothing
    /// sent yet.
    pub async fn tcp_from(addr: SocketAddr, source: std::net::IpAddr) -> Raw {
        let socket = if addr.is_ipv6() {
            tokio::net::TcpSocket::new_v6()
        } else {
            tokio::net::TcpSocket::new_v4()
        }
        .expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind the source address");
        Raw::over(socket.connect(addr).await.expect("connect proxy"))
    }

    /// Direct TLS from a chosen source address through `connector`; the handshake's error
    /// if the proxy closes the connection instead (a per-source limit).
    pub async fn direct_tls_from(
        addr: SocketAddr,
        source: std::net::IpAddr,
        domain: &str,
        connector: &TlsConnector,
    ) -> std::io::Result<Raw> {
        let mut raw = Raw::tcp_from(addr, source).await;
        let io = std::mem::replace(&mut raw.io, Box::new(tokio::io::duplex(1).0));
        let name = ServerName::try_from(domain.to_string()).unwrap();
        let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, io))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        raw.tls_kind = tls.get_ref().1.handshake_kind();
        raw.bindings = crate::scram::ClientBindings::of(tls.get_ref().1);
        raw.io = Box::new(tls);
        Ok(raw)
    }

    /// Direct TLS over a socket whose receive buffer is `recv_buffer` bytes: a client that
    /// stops reading fills it (and the proxy's side) quickly.
    pub async fn direct_tls_small_window(
        addr: SocketAddr,
        domain: &str,
        connector: &TlsConnector,
        recv_buffer: u32,
    ) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("connect proxy");
        let local = tcp.local_addr().ok();
        let name = ServerName::try_from(domain.to_string()).unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        Raw::over_tls(tls, local)
    }

    /// On a connection whose TLS is up: stream header and one SASL PLAIN attempt as
    /// `user@domain`; returns what came back (`<success`, `<failure`, or a stream error) and
    /// how long the answer took after the attempt was sent.
    pub async fn try_plain(
        &mut self,
        domain: &str,
        user: &str,
        password: &str,
    ) -> (String, Duration) {
        self.send(&header(domain, None)).await;
        self.expect("</stream:features>").await;
        self.clear();
        let sent = Instant::now();
        self.send(&plain_auth(user, password)).await;
        let deadline = sent + Duration::from_secs(15);
        while !["<success", "<failure", "</stream:stream>"]
            .iter()
            .any(|n| self.received.contains(n))
            && !self.closed
        {
            if !self.read_some(deadline).await {
                panic!("no answer to a login attempt; got {:?}", self.received);
            }
        }
        (self.received.clone(), sent.elapsed())
    }

    /// A client whose TLS is up on a fresh TCP connection from `local`.
    fn over_tls(tls: tokio_rustls::client::TlsStream<TcpStream>, local: Option<SocketAddr>) -> Raw {
        Raw {
            tls_kind: tls.get_ref().1.handshake_kind(),
            bindings: crate::scram::ClientBindings::of(tls.get_ref().1),
            io: Box::new(tls),
            received: String::new(),
            closed: false,
            local,
            bytes: Bytes::default(),
            relay_mark: None,
        }
    }

    /// Direct TLS (XEP-0368) with SNI = `domain`.
    pub async fn direct_tls(addr: SocketAddr, domain: &str, ca: &Path) -> Raw {
        Raw::direct_tls_via(addr, domain, &connector(ca)).await
    }

    /// Direct TLS through a given connector (one that may hold sessions to resume).
    pub async fn direct_tls_via(addr: SocketAddr, domain: &str, connector: &TlsConnector) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect proxy");
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from(domain.to_string()).unwrap();
        let local = tcp.local_addr().ok();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        Raw::over_tls(tls, local)
    }

    /// STARTTLS: clear-text header, `<starttls/>`, `<proceed/>`, TLS. Returns the client ready
    /// to send its post-TLS header.
    pub async fn starttls(addr: SocketAddr, domain: &str, ca: &Path) -> Raw {
        Raw::starttls_via(addr, domain, &connector(ca)).await
    }

    /// STARTTLS through a given connector (one that may hold sessions to resume).
    pub async fn starttls_via(addr: SocketAddr, domain: &str, connector: &TlsConnector) -> Raw {
        let mut raw = Raw::tcp(addr).await;
        raw.send(&header(domain, None)).await;
        raw.expect("</stream:features>").await;
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        raw.expect("<proceed").await;
        raw.upgrade_via(domain, connector).await;
        raw
    }

    /// Switch this connection to TLS (after `<proceed/>`).
    pub async fn upgrade(&mut self, domain: &str, ca: &Path) {
        self.upgrade_via(domain, &connector(ca)).await;
    }

    /// Switch this connection to TLS through a given connector.
    pub async fn upgrade_via(&mut self, domain: &str, connector: &TlsConnector) {
        let io = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        let name = ServerName::try_from(domain.to_string()).unwrap();
        let tls = connector.connect(name, io).await.expect("TLS handshake");
        self.tls_kind = tls.get_ref().1.handshake_kind();
        self.bindings = crate::scram::ClientBindings::of(tls.get_ref().1);
        self.io = Box::new(tls);
        self.received.clear();
    }

    /// Send text as is.
    pub async fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes()).await;
    }

    /// Send text as is, if the peer still takes it; false if the write failed (the peer
    /// closed), for keepalives that race with the peer's close.
    pub async fn try_send(&mut self, text: &str) -> bool {
        let sent =
            self.io.write_all(text.as_bytes()).await.is_ok() && self.io.flush().await.is_ok();
        if sent {
            self.bytes.sent += text.len() as u64;
        }
        sent
    }

    /// Send bytes as is.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("send");
        self.io.flush().await.expect("flush");
        self.bytes.sent += bytes.len() as u64;
    }

    /// Note that the restarted stream's features after SASL have just been read: the proxy
    /// relays from here on ([`relayed`](Self::relayed)).
    pub fn mark_relay_start(&mut self) {
        self.relay_mark = Some(self.bytes);
    }

    /// The bytes of this connection the proxy relayed (what `xmpp_lb_relayed_bytes_total`
    /// counts for it): those sent and received since the stream restarted after SASL, or
    /// `None` before that. A relay that ended normally delivered exactly these.
    pub fn relayed(&self) -> Option<Bytes> {
        self.relay_mark.map(|m| Bytes {
            sent: self.bytes.sent - m.sent,
            received: self.bytes.received - m.received,
        })
    }

    /// Read until `needle` has been received (returns everything received), or panic after 10 s.
    pub async fn expect(&mut self, needle: &str) -> String {
        self.expect_within(needle, Duration::from_secs(10)).await
    }

    /// Read until `needle` has been received, or panic after `limit`.
    pub async fn expect_within(&mut self, needle: &str, limit: Duration) -> String {
        self.expect_any(&[needle], limit).await
    }

    /// Read until one of `needles` has been received, or panic after `limit`.
    pub async fn expect_any(&mut self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while !needles.iter().any(|n| self.received.contains(n)) {
            assert!(
                !self.closed,
                "peer closed before any of {needles:?}; got {:?}",
                self.received
            );
            if !self.read_some(deadline).await {
                panic!("timed out waiting for {needles:?}; got {:?}", self.received);
            }
        }
        self.received.clone()
    }

    /// One read into `received` (or `closed` set when the peer is gone); false if `deadline`
    /// passed first.
    pub async fn read_some(&mut self, deadline: Instant) -> bool {
        let mut buf = [0u8; 8192];
        match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
            Ok(Ok(n)) => {
                self.bytes.received += n as u64;
                self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        true
    }

    /// Read until the peer closes (or `limit` passes); returns everything received.
    pub async fn read_to_close(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while !self.closed {
            if !self.read_some(deadline).await {
                panic!(
                    "peer did not close within {limit:?}; got {:?}",
                    self.received
                );
            }
        }
        self.received.clone()
    }

    /// Forget what was received so far.
    pub fn clear(&mut self) {
        self.received.clear();
    }

    /// Direct TLS, SASL PLAIN as `user@domain`, restart, bind: a logged-in client.
    pub async fn login(
        addr: SocketAddr,
        domain: &str,
        ca: &Path,
        user: &str,
        password: &str,
    ) -> Raw {
        Raw::direct_tls(addr, domain, ca)
            .await
            .log_in(domain, user, password, "raw")
            .await
    }

    /// On a connection whose TLS is up: stream header, SASL PLAIN as `user@domain`, restart,
    /// bind `resource`.
    pub async fn log_in(self, domain: &str, user: &str, password: &str, resource: &str) -> Raw {
        self.log_in_with(domain, None, user, password, resource)
            .await
    }

    /// Like [`log_in`](Self::log_in), with `from='user@domain'` in the first stream header,
    /// so that the proxy routes by it instead of waiting for SASL.
    pub async fn log_in_from(
        self,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Raw {
        let from = format!("{user}@{domain}");
        self.log_in_with(domain, Some(&from), user, password, resource)
            .await
    }

    async fn log_in_with(
        mut self,
        domain: &str,
        from: Option<&str>,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Raw {
        self.authenticate(domain, from, user, password).await;
        self.restart_and_bind(domain, resource).await;
        self
    }

    /// On a connection whose TLS is up: stream header (with `from`, if given) and SASL PLAIN
    /// as `user@domain`; panics unless it succeeds.
    pub async fn authenticate(
        &mut self,
        domain: &str,
        from: Option<&str>,
        user: &str,
        password: &str,
    ) {
        self.send(&header(domain, from)).await;
        self.expect("</stream:features>").await;
        self.clear();
        self.send(&plain_auth(user, password)).await;
        self.expect_any(&["<success", "<failure"], Duration::from_secs(15))
            .await;
        assert!(
            self.received.contains("<success"),
            "login of {user} failed: {}",
            self.received
        );
        self.clear();
    }

    /// After SASL success: restart the stream and bind `resource`; panics unless the server
    /// answers with a bound JID. Returns the answer.
    pub async fn restart_and_bind(&mut self, domain: &str, resource: &str) -> String {
        self.clear();
        self.send(&header(domain, None)).await;
        self.expect("</stream:features>").await;
        self.mark_relay_start();
        self.clear();
        self.send(&format!("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
        self.expect("</iq>").await;
        assert_bound(&self.received, resource);
        std::mem::take(&mut self.received)
    }

    /// On a connection whose TLS is up: authenticate as [`authenticate`](Self::authenticate)
    /// does, restart, and ask to resume the stream-management session `previd` having
    /// received `h` stanzas (no bind). Panics unless the restarted stream offers stream
    /// management; returns everything received after `<resume/>` up to `<resumed/>` or
    /// `<failed/>`.
    pub async fn resume_sm(
        &mut self,
        domain: &str,
        from: Option<&str>,
        (user, password): (&str, &str),
        previd: &str,
        h: u32,
    ) -> String {
        self.authenticate(domain, from, user, password).await;
        self.send(&header(domain, None)).await;
        let features = self.expect("</stream:features>").await;
        assert!(features.contains("urn:xmpp:sm:3"), "{features}");
        self.mark_relay_start();
        self.clear();
        self.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>"
        ))
        .await;
        self.expect_any(&["<resumed", "<failed"], Duration::from_secs(10))
            .await
    }

    /// Enable resumable stream management (XEP-0198) on a bound session; returns the id the
    /// server gave, and panics if it refused.
    pub async fn enable_sm(&mut self) -> String {
        self.clear();
        self.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let got = self
            .expect_any(&["<enabled", "<failed"], Duration::from_secs(10))
            .await;
        assert!(got.contains("<enabled"), "{got}");
        self.expect("/>").await;
        let id = attr(&self.received, "<enabled", "id");
        self.clear();
        id
    }

    /// Ask the server for a ping (XEP-0199) and wait for its answer: the stream is alive.
    pub async fn ping(&mut self, domain: &str) {
        let id = format!("ping{}", rand_id());
        self.send(&format!(
            "<iq type='get' id='{id}' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        self.expect(&format!("id='{id}'")).await;
    }

    /// Drop the connection without a stream close or TLS close_notify: a vanished client.
    pub fn vanish(self) {
        drop(self);
    }

    /// Like [`vanish`](Self::vanish), keeping this value (and its byte counts): the
    /// connection is dropped now and the client counts as closed.
    pub fn cut(&mut self) {
        self.io = Box::new(tokio::io::duplex(1).0);
        self.closed = true;
    }
}

/// The SASL mechanisms a `<stream:features>` text offers.
pub fn mechanisms(features: &str) -> std::collections::BTreeSet<String> {
    features
        .split("<mechanism>")
        .skip(1)
        .filter_map(|s| s.split_once("</mechanism>").map(|(m, _)| m.to_string()))
        .collect()
}

/// The value of attribute `name` of the first element of `text` that starts with `start`
/// (e.g. `attr(text, "<enabled", "id")`), whichever quote it uses; panics if there is none.
pub fn attr(text: &str, start: &str, name: &str) -> String {
    let el = &text[text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))..];
    let el = &el[..el.find('>').unwrap_or(el.len())];
    for q in ['\'', '"'] {
        if let Some(i) = el.find(&format!(" {name}={q}")) {
            let v = &el[i + name.len() + 3..];
            return v[..v.find(q).unwrap()].to_string();
        }
    }
    panic!("no {name} in {el}")
}

/// The answer to a bind request is a result holding the full JID, not an error.
pub fn assert_bound(answer: &str, user: &str) {
    let is_result = answer.contains("type='result'") || answer.contains("type=\"result\"");
    assert!(
        is_result && answer.contains("<jid>"),
        "bind of {user} failed: {answer}"
    );
}

/// A short unique-enough id for stanzas.
fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
