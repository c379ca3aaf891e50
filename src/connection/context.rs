//! What every phase of a connection may look at: the listener, the runtime snapshot, the
//! client's addresses and age. A leaf of `connection`: the phases depend on it, it on none of
//! them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

use crate::config::TlsMode;
use crate::prefixed::Prefixed;
use crate::proxy_protocol::Origin;
use crate::runtime::{Runtime, Shared};
use crate::xmpp::element::NsContext;
use crate::xmpp::features::{self, FilteredFeatures};
use crate::xmpp::header::STREAM_NS;

/// What a connection needs to know about the listener that accepted it (its PROXY protocol
/// settings are read from the runtime snapshot, so that a reload can change the trusted
/// networks).
pub struct ListenerCtx {
    /// Listener name (logs, metric labels, and the key of its TLS acceptor in the runtime).
    pub name: String,
    /// How TLS starts on it.
    pub tls: TlsMode,
}

/// The client side once TLS is up.
pub(crate) type ClientTls = tokio_rustls::server::TlsStream<Prefixed<TcpStream>>;

/// How long the proxy waits to deliver its own short messages (errors, challenges).
pub(crate) const SEND_LIMIT: Duration = Duration::from_secs(5);

/// A connection as it was accepted: by which listener, from where, when, and the
/// configuration it lives by.
pub(crate) struct Arrival<'a> {
    /// Process-wide state.
    pub(crate) shared: &'a Shared,
    /// The configuration snapshot this connection lives by.
    pub(crate) rt: &'a Runtime,
    /// The listener that accepted it.
    pub(crate) listener: &'a ListenerCtx,
    /// The socket's peer (a front balancer, or the client itself).
    pub(crate) socket_peer: SocketAddr,
    /// When it was accepted.
    pub(crate) started: Instant,
}

/// Where a connection stands: shared state, its runtime snapshot, its addresses and age.
pub(crate) struct At<'a> {
    /// Process-wide state.
    pub(crate) shared: &'a Shared,
    /// The configuration snapshot this connection lives by.
    pub(crate) rt: &'a Runtime,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The proxy's address the client reached (for `<see-other-host/>` back at the proxy).
    pub(crate) local: SocketAddr,
    /// When the connection was accepted.
    pub(crate) started: Instant,
    /// What the PROXY protocol header to a node says about the client.
    pub(crate) origin: Origin,
}

impl At<'_> {
    /// The channel-binding types the nodes of `domain` get for this client (none unless
    /// their links pass channel binding): what the client may be shown of `-PLUS`.
    pub(crate) fn bound(&self, domain: &str) -> Vec<&'static str> {
        match &self.origin.channel_binding {
            Some(b) if self.rt.passes_channel_binding(domain) => b.types(),
            _ => Vec::new(),
        }
    }

    /// `domain`'s cached features (as its nodes offer them to a client with every binding
    /// type, when they get channel binding) as the node will offer them to this client:
    /// without the binding types its TLS session lacks, and without `-PLUS` if it has none.
    pub(crate) fn features_for(
        &self,
        domain: &str,
        cached: Arc<FilteredFeatures>,
    ) -> Arc<FilteredFeatures> {
        if !self.rt.passes_channel_binding(domain) {
            return cached;
        }
        let bound = self.bound(domain);
        if bound.len() == 2 {
            return cached;
        }
        // The cached bytes follow the proxy's own stream header, which declares these.
        let ns = NsContext {
            default_ns: "jabber:client".into(),
            prefixes: vec![("stream".into(), STREAM_NS.into())],
        };
        match features::filter_bound(&cached.bytes, &ns, &bound) {
            Ok(f) => Arc::new(f),
            // The bytes were parsed once already; keep them rather than fail the login.
            Err(_) => cached,
        }
    }
}
