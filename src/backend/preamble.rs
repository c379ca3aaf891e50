//! The opening of a client stream to a node, at the bottom of `backend`: the header the
//! proxy sends as a fresh client would, and reading the node's header and first features.
//! Both opening a link (STARTTLS) and probing a node's features start this way.

use tokio::time::Instant;

use crate::framed::{FrameError, Framed};
use crate::xmpp::element::XmlError;
use crate::xmpp::features::{self, FilteredFeatures};
use crate::xmpp::header::{HeaderError, StreamHeader};
use crate::xmpp::scanner::FrameKind;

/// Why a node's preamble (header, then features) was not usable.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// The node did not answer with a header and features in time, or closed.
    #[error("reading the node's preamble: {0}")]
    Read(#[from] FrameError),
    /// The node's header was unusable.
    #[error("node header: {0}")]
    Header(#[from] HeaderError),
    /// The node's features were unusable.
    #[error("node features: {0}")]
    Features(#[from] XmlError),
    /// The node sent something else than features after its header.
    #[error("node sent {0} instead of <stream:features/>")]
    Unexpected(String),
    /// The node answered with a stream error.
    #[error("node sent a stream error")]
    StreamError,
}

/// The client header the proxy sends when it opens a stream of its own (what a fresh client
/// would send).
pub fn client_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        crate::xmpp::element::escape(domain)
    )
}

/// Read a node's header and first features from `framed` (the header already sent), the
/// features filtered for a client whose channel binding of the types `bound` the node got.
pub async fn read_preamble<S>(
    framed: &mut Framed<S>,
    deadline: Instant,
    bound: &[&str],
) -> Result<(StreamHeader, FilteredFeatures), PreambleError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (kind, bytes) = framed.next_non_ws(deadline).await?;
    if kind != FrameKind::Header {
        return Err(PreambleError::Unexpected(format!("{kind:?}")));
    }
    let header = StreamHeader::parse(&bytes)?;
    let (kind, bytes) = framed.next_non_ws(deadline).await?;
    if kind != FrameKind::Element {
        return Err(PreambleError::Unexpected(format!("{kind:?}")));
    }
    let filtered = features::filter_bound(&bytes, &header.ns, bound)?;
    let root = crate::xmpp::element::Element::parse(&bytes, &header.ns)?;
    if root.local_name() == "error" {
        return Err(PreambleError::StreamError);
    }
    if root.local_name() != "features" {
        return Err(PreambleError::Unexpected(root.name));
    }
    Ok((header, filtered))
}
