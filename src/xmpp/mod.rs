//! Wire pieces of XMPP the proxy must understand: framing (`scanner`), elements, the stream
//! header, stream features, SASL messages and stream errors. Pure code, no I/O.

pub mod element;
pub mod features;
pub mod framing;
pub mod header;
pub mod sasl;
pub mod scanner;
pub(crate) mod sm;
pub(crate) mod stream_error;
pub(crate) mod tracker;
