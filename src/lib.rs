//! xmpp-lb: a protocol-aware load balancer for XMPP client connections.
//!
//! The path of one connection, top to bottom:
//! 1. [`server`] binds the listeners and accepts; each connection runs [`connection::handle`],
//!    which first reads a front balancer's PROXY header where the listener expects one
//!    ([`proxy_protocol`]).
//! 2. Direct TLS (XEP-0368) is accepted at once; STARTTLS reads the clear-text header first
//!    and upgrades ([`tls`] picks the certificate by SNI). On a WebSocket listener, HTTP
//!    (ALPN `http/1.1`, or a request line) goes to [`websocket`]: discovery files, the
//!    handshake, then the WebSocket seen as a byte stream ([`xmpp::framing`] translates
//!    `<open/>`, `<close/>` and one element per message), which steps 3 to 7 serve alike.
//! 3. The post-TLS stream header is read by the incremental [`xmpp::scanner`] through
//!    [`framed::Framed`] and parsed by [`xmpp::header`].
//! 4. The routing key is learned: the header's `from`, else the username in the first SASL
//!    message ([`xmpp::sasl`]) after showing the backends' own features ([`backend::probe`]),
//!    else the client's subnet ([`route::key`]).
//! 5. The ring ([`route::ring`], through [`route::pool`]) picks the node; [`backend::connect`]
//!    opens its link ([`backend::link`]: TCP, a PROXY header, STARTTLS or direct TLS), or the
//!    next distinct node's if that fails. Where the node's link passes channel binding,
//!    the header carries the client's TLS binding data ([`channel_binding`]).
//!    A SASL2 `<authenticate/>` that resumes a session inline goes to the node its verified
//!    stream-management id names instead ([`route::resume`], [`resumption`]).
//! 6. The client's header and SASL element are replayed byte-exact; the node's duplicate
//!    header and features are swallowed; parsing continues until authentication ends.
//! 7. [`relay`] copies bytes both ways until either side closes, rewriting XEP-0198 ids in
//!    flight so that any proxy of the fleet can route a resume; [`metrics`] counts it all,
//!    and one access-log line per connection ([`logging`]) says how it went.

pub mod admin;
pub mod backend;
pub mod channel_binding;
pub mod config;
pub(crate) mod connection;
pub mod discovery;
pub(crate) mod framed;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod overload;
pub(crate) mod prefixed;
pub mod proxy_protocol;
pub(crate) mod relay;
pub(crate) mod resumption;
pub mod route;
pub mod runtime;
pub mod secrets;
pub mod server;
pub(crate) mod socket;
pub mod sources;
pub(crate) mod tls;
pub(crate) mod trim;
pub(crate) mod websocket;
pub mod xmpp;

pub use config::Config;
pub use server::{Server, run};
pub use tokio_util::sync::CancellationToken;
