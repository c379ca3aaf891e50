//! How the proxy reaches one node: the choices of a [`LinkConfig`] made ready to use (the TLS
//! connector is built once, when the configuration is put into service, so a bad CA file is
//! a refused reload rather than a failed login), and the stream it gives.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{BackendTls, LinkConfig, ProxyProtocol};
use crate::tls::{ALPN_XMPP_CLIENT, TlsError};

/// A link ready to open connections with.
pub struct Link {
    /// What was configured.
    pub config: LinkConfig,
    /// The TLS client side, when the link uses TLS.
    pub connector: Option<TlsConnector>,
}

impl Link {
    /// Load what `config` needs (the CA certificates).
    pub fn build(config: LinkConfig) -> Result<Link, TlsError> {
        // XEP-0368 asks for ALPN `xmpp-client` on direct TLS; STARTTLS has no use for it.
        let connector = match config.tls {
            BackendTls::None => None,
            BackendTls::Starttls => Some(crate::tls::connector(
                config.ca.as_deref(),
                config.verify,
                None,
            )?),
            BackendTls::Direct => Some(crate::tls::connector(
                config.ca.as_deref(),
                config.verify,
                Some(ALPN_XMPP_CLIENT),
            )?),
        };
        Ok(Link { config, connector })
    }

    /// Plain TCP, no header: the link of a node nobody configured anything for.
    pub fn plain() -> Link {
        Link {
            config: LinkConfig {
                proxy_protocol: ProxyProtocol::Off,
                tls: BackendTls::None,
                server_name: None,
                ca: None,
                verify: true,
                channel_binding: crate::config::ChannelBinding::Off,
            },
            connector: None,
        }
    }
}

/// An open connection to a node.
pub enum BackendStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: a TLS session is far larger than a socket).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A backend as a member of one domain's pool: who to probe, where, and over which link.
#[derive(Clone)]
pub struct Member {
    /// The backend's name.
    pub name: String,
    /// Its address.
    pub address: std::net::SocketAddr,
    /// How it is reached for this domain.
    pub link: std::sync::Arc<Link>,
}
