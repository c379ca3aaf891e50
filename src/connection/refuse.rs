//! How a connection ends before (or instead of) the relay, and the one place a refusal is
//! written to the client.

use super::transport::{ClientGone, ElementTransport};
use crate::framed::FrameError;
use crate::metrics::Metrics;
use crate::xmpp::element::XmlError;
use crate::xmpp::header::HeaderError;
use crate::xmpp::scanner::ScanError;
use crate::xmpp::stream_error::{Condition, render};

/// How a connection ends before (or instead of) the relay.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Tell the client with a stream error, then close.
    Refuse(Condition, String),
    /// The client closed its stream (`</stream:stream>`) where the proxy speaks for the
    /// server (before routing, or where a stream restart was due): close ours too.
    ClientClosedStream,
    /// The transport is gone or broken: close without a word.
    Quiet(&'static str),
    /// The proxy refuses the connection before any XMPP (a PROXY protocol header that is
    /// missing, invalid or not allowed): close without a word, counted under `reason`.
    Reject(&'static str, String),
    /// Refused by a per-source limit (named): counted, and logged rate-limited by the
    /// per-source table rather than once per connection.
    Limited(&'static str),
}

impl Failure {
    /// The `reason` and `side` labels of `xmpp_lb_connections_closed_total`.
    pub(crate) fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Failure::Refuse(c, _) => (c.as_str(), "proxy"),
            Failure::ClientClosedStream => ("closed_in_negotiation", "client"),
            Failure::Quiet(_) => ("client_gone", "client"),
            Failure::Reject(reason, _) => (reason, "proxy"),
            Failure::Limited(_) => ("source_limit", "proxy"),
        }
    }

    /// What the access log says about it.
    pub(crate) fn detail(&self) -> &str {
        match self {
            Failure::Refuse(_, text) | Failure::Reject(_, text) => text,
            Failure::Quiet(why) | Failure::Limited(why) => why,
            Failure::ClientClosedStream => "",
        }
    }
}

impl From<ClientGone> for Failure {
    fn from(_: ClientGone) -> Failure {
        Failure::Quiet("client write failed")
    }
}

/// Tell the client why, if there is anything to tell, and close. `domain` is who the proxy
/// speaks for when it must open the stream first (a stream error needs a header before it).
pub(crate) async fn refuse<C: ElementTransport>(
    client: &mut C,
    domain: &str,
    failure: &Failure,
    metrics: &Metrics,
) {
    let words = match failure {
        Failure::Refuse(condition, text) => {
            metrics
                .stream_errors_total
                .with_label_values(&[condition.as_str()])
                .inc();
            render(condition, Some(text))
        }
        Failure::ClientClosedStream => b"</stream:stream>".to_vec(),
        Failure::Quiet(_) | Failure::Reject(..) | Failure::Limited(_) => Vec::new(),
    };
    // A close answers the stream the client closed, whose header it had: never a new stream's
    // header, even where a restart was due and the client closed instead of restarting.
    let closing = matches!(failure, Failure::ClientClosedStream);
    if !words.is_empty() {
        let _unsent = if client.is_open() || closing {
            client.send(&words).await
        } else {
            client.open(domain, &words).await
        };
    }
    client.close().await;
}

/// A client frame that could not be read.
pub(crate) fn client_frame_failure(e: FrameError) -> Failure {
    match e {
        FrameError::Eof => Failure::Quiet("client closed"),
        FrameError::Io(_) => Failure::Quiet("client i/o error"),
        FrameError::Timeout => Failure::Refuse(
            Condition::ConnectionTimeout,
            "too slow to negotiate the stream".into(),
        ),
        FrameError::Scan(ScanError::TooLarge) => Failure::Refuse(
            Condition::PolicyViolation,
            "element too large at this stage".into(),
        ),
        FrameError::Scan(ScanError::TooDeep) => Failure::Refuse(
            Condition::PolicyViolation,
            "elements nested too deeply".into(),
        ),
        FrameError::Scan(ScanError::Restricted(why)) => {
            Failure::Refuse(Condition::RestrictedXml, why.into())
        }
        FrameError::Scan(ScanError::NotWellFormed(why)) => {
            Failure::Refuse(Condition::NotWellFormed, why.into())
        }
    }
}

/// A client element that could not be parsed.
pub(crate) fn client_xml_failure(e: XmlError) -> Failure {
    match e {
        XmlError::Restricted(why) => Failure::Refuse(Condition::RestrictedXml, why),
        XmlError::Limit(why) => Failure::Refuse(Condition::PolicyViolation, why),
        other => Failure::Refuse(Condition::NotWellFormed, other.to_string()),
    }
}

/// A client stream header that could not be parsed.
pub(crate) fn client_header_failure(e: HeaderError) -> Failure {
    match e {
        HeaderError::InvalidNamespace(why) => Failure::Refuse(Condition::InvalidNamespace, why),
        HeaderError::Restricted(why) => Failure::Refuse(Condition::RestrictedXml, why),
        HeaderError::NotWellFormed(why) => Failure::Refuse(Condition::NotWellFormed, why),
    }
}

/// A node frame that could not be read.
pub(crate) fn backend_frame_failure(e: FrameError) -> Failure {
    match e {
        FrameError::Timeout => Failure::Refuse(
            Condition::ConnectionTimeout,
            "the server node did not answer in time".into(),
        ),
        _ => backend_lost(),
    }
}

/// The node's connection broke or said something unusable.
pub(crate) fn backend_lost() -> Failure {
    Failure::Refuse(
        Condition::RemoteConnectionFailed,
        "lost the connection to the server node".into(),
    )
}
