//! Opening a connection to one node, as its link says: TCP, then the PROXY protocol header,
//! then TLS (direct, or STARTTLS negotiated by the proxy itself). What comes back is ready
//! for the client's stream header.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::backend::link::{BackendStream, Link};
use crate::backend::record::Backend;
use crate::channel_binding::Bindings;
use crate::config::{BackendTls, ChannelBinding};
use crate::framed::Framed;
use crate::metrics::Metrics;
use crate::proxy_protocol::{self, Origin};
use crate::xmpp::element::{Element, NsContext};
use crate::xmpp::features::NS_TLS;
use crate::xmpp::header::StreamHeader;
use crate::xmpp::scanner::FrameKind;

/// Why a node could not be reached over its link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// TCP failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The whole link was not up within the connect timeout.
    #[error("timed out")]
    Timeout,
    /// The PROXY protocol header could not be built or sent.
    #[error("PROXY protocol header: {0}")]
    ProxyHeader(std::io::Error),
    /// The node's STARTTLS negotiation went wrong (no offer, no `<proceed/>`, I/O).
    #[error("STARTTLS: {0}")]
    Starttls(String),
    /// The TLS handshake failed: a certificate that does not verify, a protocol mismatch.
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// The name to verify the node's certificate against is not a valid one.
    #[error("{0:?} cannot be checked against a certificate")]
    ServerName(String),
}

/// Connect `backend` for a client of `domain` coming from `origin`, within `timeout`, the
/// whole link included. Successes and failures are measured per backend; the caller decides
/// what to try next.
pub async fn connect(
    backend: &Backend,
    link: &Link,
    domain: &str,
    origin: &Origin,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<BackendStream, LinkError> {
    let started = Instant::now();
    let deadline = started + timeout;
    match open(backend.address, link, domain, Some(origin), deadline).await {
        Ok(stream) => {
            metrics
                .backend_connect_seconds
                .with_label_values(&[&backend.name])
                .observe(started.elapsed().as_secs_f64());
            Ok(stream)
        }
        Err(e) => {
            metrics
                .backend_connect_failures_total
                .with_label_values(&[&backend.name])
                .inc();
            Err(e)
        }
    }
}

/// Open the link to `address` by `deadline`, in the order the node expects: TCP, the PROXY
/// header (naming `origin`, or the proxy itself for its own probes when `None`), then TLS.
pub async fn open(
    address: SocketAddr,
    link: &Link,
    domain: &str,
    origin: Option<&Origin>,
    deadline: Instant,
) -> Result<BackendStream, LinkError> {
    let steps = async {
        let mut tcp = TcpStream::connect(address)
            .await
            .map_err(LinkError::Connect)?;
        // Stanzas are small and latency-bound: never wait to coalesce them.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%address, error = %e, "set_nodelay failed");
        }
        crate::socket::keepalive(&tcp);
        send_proxy_header(&mut tcp, link, origin).await?;
        match link.config.tls {
            BackendTls::None => Ok(BackendStream::Plain(tcp)),
            BackendTls::Direct => handshake(link, tcp, domain).await,
            BackendTls::Starttls => {
                let tcp = starttls(tcp, domain, deadline).await?;
                handshake(link, tcp, domain).await
            }
        }
    };
    tokio::time::timeout_at(deadline, steps)
        .await
        .unwrap_or(Err(LinkError::Timeout))
}

/// The PROXY protocol header, if the link has one: first bytes on the wire, before any TLS.
async fn send_proxy_header(
    tcp: &mut TcpStream,
    link: &Link,
    origin: Option<&Origin>,
) -> Result<(), LinkError> {
    let own;
    let probing = origin.is_none();
    let origin = match origin {
        Some(o) => o,
        None => {
            let local = tcp.local_addr().map_err(LinkError::ProxyHeader)?;
            let node = tcp.peer_addr().map_err(LinkError::ProxyHeader)?;
            own = Origin::own(local, node);
            &own
        }
    };
    // A connection of the proxy's own (a probe) presents random bindings of every type, so
    // that the node offers it what it offers a client with channel binding.
    let probe;
    let bindings = match (link.config.channel_binding, &origin.channel_binding) {
        (ChannelBinding::Off, _) => None,
        (ChannelBinding::Pass, Some(b)) => Some(&**b),
        (ChannelBinding::Pass, None) if probing => {
            probe = Bindings::for_probe();
            Some(&probe)
        }
        (ChannelBinding::Pass, None) => None,
    };
    if let Some(header) = proxy_protocol::encode_with(link.config.proxy_protocol, origin, bindings)
        .map_err(LinkError::ProxyHeader)?
    {
        tcp.write_all(&header)
            .await
            .map_err(LinkError::ProxyHeader)?;
    }
    Ok(())
}

/// RFC 6120 STARTTLS as a client of `domain`: a stream header, the node's features must offer
/// `<starttls/>`, then `<starttls/>` and `<proceed/>`. The stream the proxy opened here is
/// never used: after TLS the client's own header starts a fresh one.
async fn starttls(tcp: TcpStream, domain: &str, deadline: Instant) -> Result<TcpStream, LinkError> {
    let failed = |what: String| LinkError::Starttls(what);
    // Negotiation elements are small; this bound only guards against a runaway node.
    let mut framed = Framed::new(tcp, 65536);
    let limit = deadline.saturating_duration_since(Instant::now());
    framed
        .send(
            crate::backend::preamble::client_header(domain).as_bytes(),
            limit,
        )
        .await
        .map_err(|e| failed(format!("write: {e}")))?;
    let (kind, bytes) = framed
        .next_non_ws(deadline)
        .await
        .map_err(|e| failed(format!("reading the node's header: {e}")))?;
    if kind != FrameKind::Header {
        return Err(failed(format!("expected a stream header, got {kind:?}")));
    }
    let ns: NsContext = StreamHeader::parse(&bytes)
        .map_err(|e| failed(format!("node header: {e}")))?
        .ns;
    let (_, bytes) = framed
        .next_non_ws(deadline)
        .await
        .map_err(|e| failed(format!("reading the node's features: {e}")))?;
    let features = Element::parse(&bytes, &ns).map_err(|e| failed(e.to_string()))?;
    if features.child("starttls", NS_TLS).is_none() {
        return Err(failed(format!(
            "the node does not offer STARTTLS (sent <{}/>)",
            features.name
        )));
    }
    framed
        .send(
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            deadline.saturating_duration_since(Instant::now()),
        )
        .await
        .map_err(|e| failed(format!("write: {e}")))?;
    let (_, bytes) = framed
        .next_non_ws(deadline)
        .await
        .map_err(|e| failed(format!("waiting for <proceed/>: {e}")))?;
    let answer = Element::parse(&bytes, &ns).map_err(|e| failed(e.to_string()))?;
    if !answer.is("proceed", NS_TLS) {
        return Err(failed(format!("the node answered <{}/>", answer.name)));
    }
    let (tcp, ahead) = framed.into_parts();
    // The TLS handshake comes next; clear text the node sent after <proceed/> would be an
    // injection, never part of the stream.
    if !ahead.is_empty() {
        return Err(failed("the node sent data after <proceed/>".into()));
    }
    Ok(tcp)
}

/// The TLS handshake, verifying the node's certificate against the link's server name (by
/// default the XMPP domain, which is what an XMPP server's certificate names).
async fn handshake(link: &Link, tcp: TcpStream, domain: &str) -> Result<BackendStream, LinkError> {
    let connector = link
        .connector
        .as_ref()
        .ok_or_else(|| LinkError::Tls(std::io::Error::other("no TLS configuration")))?;
    let name = link
        .config
        .server_name
        .clone()
        .unwrap_or_else(|| domain.to_string());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| LinkError::ServerName(name))?;
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(LinkError::Tls)?;
    Ok(BackendStream::Tls(Box::new(tls)))
}
